"""``/api/cabinets``: the document cabinet for staff (deposits, clearing) and the kiosk (pickup)."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Literal

from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from controller.cabinet import CabinetRefused, DepositRequest
from controller.settings import Scope
from web.auth import principal, requires
from web.bodies import read_body
from web.errors import ApiError
from web.openapi import operation
from web.services import SERVICES


def _printable(value: str) -> str:
    """Staff type these and they are printed on slips and shown on screens."""
    if not value.strip():
        raise PydanticCustomError("blank", "must not be blank")
    if any(unicodedata.category(character) == "Cc" for character in value):
        raise PydanticCustomError("control", "must not contain control characters")
    return value


Text = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_printable)]


class DepositBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    recipient: Text = Field(description="who collects it (shown to staff, never to the kiosk)")
    reference: Text = Field(description="the document's reference, e.g. a case number")
    hold_hours: int = Field(ge=1, le=720, description="collectable this long after the deposit")
    compartment: int | None = Field(
        default=None, ge=0, description="0-based; default: the lowest free compartment"
    )


class DepositOut(BaseModel):
    deposit_id: int
    compartment: int
    label: str = Field(description="as printed on the door: compartment + 1")
    code: str = Field(description="the 6-digit pickup code; shown this once, never again")
    expires: datetime
    reference: str
    recipient: str


class PickupBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    code: str = Field(pattern=r"^[0-9]{6}$", description="exactly 6 digits")


class PickupOut(BaseModel):
    compartment: int
    label: str


class ClearBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: str = Field(default="", max_length=200)


class ClearOut(BaseModel):
    compartment: int
    label: str
    deposit_id: int | None = Field(description="the deposit cleared, if there was one")
    state: Literal["clearing"]


CompartmentState = Literal[
    "free", "pending", "holding", "collecting", "clearing", "expired", "open", "fault", "unknown"
]


class CompartmentOut(BaseModel):
    compartment: int
    label: str
    state: CompartmentState
    since: datetime | None
    deposit_id: int | None
    expires: datetime | None
    reference: str | None
    recipient: str | None
    door_open: bool | None
    item_present: bool | None


class CabinetOut(BaseModel):
    id: str
    room: str | None
    online: bool
    compartments: list[CompartmentOut]


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/cabinets/{cabinet}", get_cabinet)
    app.router.add_post("/api/cabinets/{cabinet}/deposits", post_deposit)
    app.router.add_post("/api/cabinets/{cabinet}/pickup", post_pickup)
    app.router.add_post("/api/cabinets/{cabinet}/compartments/{compartment}/clear", post_clear)


@requires(Scope.STAFF)
@operation(
    "A cabinet's compartments with their deposits (never a code)",
    response=CabinetOut,
    responses={200: "the cabinet"},
    tags=["cabinet"],
)
async def get_cabinet(request: web.Request) -> web.Response:
    cabinets = request.app[SERVICES].cabinets
    try:
        view = cabinets.view(request.match_info["cabinet"])
    except CabinetRefused as refusal:
        raise _api_error(refusal) from None
    return web.json_response(view)


@requires(Scope.STAFF)
@operation(
    "Deposit a document: open a free compartment and return its pickup code once",
    description=(
        "Answers when the door has opened and closed again with the document inside"
        " (at most the site's deposit_timeout). The deposit completes even if the client"
        " goes away; a code lost that way cannot be shown again: clear the compartment"
        " and deposit again."
    ),
    body=DepositBody,
    response=DepositOut,
    responses={
        201: "deposited; the code is in this answer only",
        409: "compartment_busy (the one asked for is not free), cabinet_full, or"
        " deposit_failed (details.reason: closed_empty, timed_out, unlock_failed)",
        422: "invalid body, or no such compartment",
        503: "the cabinet is offline or not read yet",
    },
    tags=["cabinet"],
)
async def post_deposit(request: web.Request) -> web.Response:
    cabinets = request.app[SERVICES].cabinets
    cabinet = _cabinet(request)
    body = await read_body(request, DepositBody)
    deposit = DepositRequest(
        recipient=body.recipient,
        reference=body.reference,
        hold_hours=body.hold_hours,
        compartment=body.compartment,
    )
    try:
        receipt = await cabinets.deposit(cabinet, deposit, principal(request))
    except CabinetRefused as refusal:
        raise _api_error(refusal) from None
    response = web.json_response(receipt.to_json(), status=201)
    response.headers["Cache-Control"] = "no-store"  # the code must not linger in a cache
    return response


@requires(Scope.KIOSK)
@operation(
    "Collect a document with its code: opens the compartment",
    description=(
        "Wrong, used and expired codes get the same 403. After the site's wrong_codes"
        " wrong codes within wrong_code_window from one kiosk token, every pickup from it"
        " is 429 for lockout, even with a right code (Retry-After says how long)."
    ),
    body=PickupBody,
    response=PickupOut,
    responses={
        200: "the compartment is opening",
        403: "a wrong, used or expired code (or a token without the kiosk scope)",
        422: "the code is not exactly 6 digits",
        429: "too many wrong codes from this kiosk: wait Retry-After seconds",
        503: "the cabinet is offline, or the compartment did not open (the code still works)",
    },
    tags=["cabinet"],
)
async def post_pickup(request: web.Request) -> web.Response:
    cabinets = request.app[SERVICES].cabinets
    cabinet = _cabinet(request)
    body = await read_body(request, PickupBody)
    try:
        opened = await cabinets.pickup(cabinet, body.code, principal(request))
    except CabinetRefused as refusal:
        if refusal.retry_after is None:
            raise _api_error(refusal) from None
        response = web.json_response(
            {
                "error": {
                    "code": refusal.code,
                    "message": refusal.message,
                    "details": refusal.details,
                }
            },
            status=refusal.status,
        )
        response.headers["Retry-After"] = str(refusal.retry_after)
        return response
    return web.json_response(opened)


@requires(Scope.STAFF)
@operation(
    "Take back what a compartment holds: its deposit ends (code dead) and the door opens",
    body=ClearBody,
    response=ClearOut,
    responses={
        200: "cleared; the compartment is opening",
        409: "compartment_busy (a deposit, pickup or clear in progress) or nothing_to_clear",
        503: "the cabinet is offline, or the compartment did not open",
    },
    tags=["cabinet"],
)
async def post_clear(request: web.Request) -> web.Response:
    cabinets = request.app[SERVICES].cabinets
    cabinet = _cabinet(request)
    raw = request.match_info["compartment"]
    count = cabinets.compartments(cabinet) or 0
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4 and int(raw) < count):
        raise ApiError(404, "not_found", "no such compartment", {"compartment": raw})
    body = await read_body(request, ClearBody, optional=True)
    try:
        result = await cabinets.clear(cabinet, int(raw), principal(request), body.reason)
    except CabinetRefused as refusal:
        raise _api_error(refusal) from None
    return web.json_response(result)


def _cabinet(request: web.Request) -> str:
    cabinet = request.match_info["cabinet"]
    if request.app[SERVICES].cabinets.compartments(cabinet) is None:
        raise ApiError(404, "not_found", "no such cabinet", {"cabinet": cabinet})
    return cabinet


def _api_error(refusal: CabinetRefused) -> ApiError:
    return ApiError(refusal.status, refusal.code, refusal.message, refusal.details)
