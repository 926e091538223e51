"""Reading requests strictly: a body or a query either fits its model or is refused.

Malformed JSON is 400; JSON of the wrong shape is 422 with every problem
located (``{"field": "end", "message": "..."}``); an oversized body is 413
(aiohttp enforces ``client_max_size`` while reading). Nothing half-read ever
reaches a rule.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypeVar

from aiohttp import web
from pydantic import AfterValidator, AwareDatetime, BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from web.errors import ApiError

M = TypeVar("M", bound=BaseModel)


def _plausible(value: datetime) -> datetime:
    # Far-off years are typing errors, and arithmetic near year 1 or 9999 overflows.
    if not 2000 <= value.year <= 2200:
        raise PydanticCustomError("time_range", "must be between the years 2000 and 2200")
    return value


ApiTime = Annotated[AwareDatetime, AfterValidator(_plausible)]
"""A time on the API: with its UTC offset, in a plausible range."""


async def read_body(request: web.Request, model: type[M], *, optional: bool = False) -> M:
    """The request's JSON body as ``model``; an empty body is ``{}`` when ``optional``."""
    raw = await request.read()
    if not raw.strip():
        if not optional:
            raise ApiError(400, "malformed", "a JSON body is required")
        raw = b"{}"
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        if any(detail["type"] == "json_invalid" for detail in error.errors()):
            raise ApiError(400, "malformed", "the body is not valid JSON") from None
        if any(detail["type"] == "model_type" and not detail["loc"] for detail in error.errors()):
            raise ApiError(400, "malformed", "the body must be a JSON object") from None
        raise ApiError(422, "invalid", "the request body is invalid", problems(error)) from None


def read_query(request: web.Request, model: type[M]) -> M:
    """The query string as ``model`` (each parameter once; unknown ones refused)."""
    values: dict[str, Any] = {}
    for key in request.query:
        found = request.query.getall(key)
        if len(found) > 1:
            raise ApiError(422, "invalid", f"give {key!r} once", [{"field": key}])
        values[key] = found[0]
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise ApiError(422, "invalid", "the query is invalid", problems(error)) from None


def problems(error: ValidationError) -> list[dict[str, str]]:
    found = []
    for detail in error.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in detail["loc"]) or "(body)"
        message = detail["msg"]
        if detail["type"] == "extra_forbidden":
            message = "unknown field"
        elif detail["type"] == "timezone_aware":
            message = "needs a UTC offset, e.g. 2026-11-23T14:00:00+08:00"
        found.append({"field": field, "message": message})
    return found
