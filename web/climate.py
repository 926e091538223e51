"""Air conditioners: what each does, what the climate rule wants, and staff overrides."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from controller.readings import AcMode
from controller.settings import Scope
from rules.climate import AcSetting
from web.auth import principal, requires
from web.bodies import read_body
from web.errors import ApiError
from web.openapi import operation
from web.services import SERVICES

ModeName = Literal["cool", "heat", "fan", "dry", "auto"]


class OverrideBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    power: bool
    mode: ModeName | None = Field(default=None, description="only with power true")
    setpoint: float | None = Field(
        default=None, ge=16.0, le=30.0, allow_inf_nan=False, description="°C, only with power true"
    )
    hours: float = Field(gt=0, le=72, allow_inf_nan=False, description="then the rule takes over")
    reason: str = Field(default="", max_length=200)


class AcReadingOut(BaseModel):
    power: bool | None
    mode: str | None
    setpoint: float | None
    room_temperature: float | None
    fault: int | None


class RuleOut(BaseModel):
    power: bool | None = Field(description="null: the rule leaves the unit as it is")
    mode: str | None
    setpoint: float | None
    cause: str
    next_change: datetime | None = Field(description="when the answer may change by time alone")


class OverrideOut(BaseModel):
    power: bool
    mode: str | None
    setpoint: float | None
    since: datetime
    until: datetime
    reason: str
    by: str


class AirConditionerOut(BaseModel):
    id: str
    room: str
    managed: bool = Field(description="whether the climate rule runs this unit")
    online: bool | None
    stale: bool
    reading: AcReadingOut | None
    rule: RuleOut
    min_off_until: datetime | None = Field(description="the compressor may not start before this")
    override: OverrideOut | None


class AirConditionersOut(BaseModel):
    air_conditioners: list[AirConditionerOut]


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/air-conditioners", get_air_conditioners)
    app.router.add_put("/api/air-conditioners/{device}/override", put_ac_override)
    app.router.add_delete("/api/air-conditioners/{device}/override", delete_ac_override)


@requires(Scope.READ)
@operation(
    "Every air conditioner: its reading, what the climate rule wants and why, overrides",
    response=AirConditionersOut,
    responses={200: "the air conditioners"},
    tags=["climate"],
)
async def get_air_conditioners(request: web.Request) -> web.Response:
    climate = request.app[SERVICES].climate
    return web.json_response({"air_conditioners": climate.entries()})


@requires(Scope.STAFF)
@operation(
    "Set an air conditioner for some hours, then the rule takes over again",
    description="The compressor's minimum off time still holds. Replaces any earlier override.",
    body=OverrideBody,
    response=AirConditionerOut,
    responses={200: "the air conditioner with its override", 404: "no such air conditioner"},
    tags=["climate"],
)
async def put_ac_override(request: web.Request) -> web.Response:
    device = _device(request)
    body = await read_body(request, OverrideBody)
    problems = [
        {"field": name, "message": "only with power true"}
        for name in ("mode", "setpoint")
        if getattr(body, name) is not None and not body.power
    ]
    if problems:
        raise ApiError(422, "invalid", "the request body is invalid", problems)
    setting = AcSetting(
        power=body.power,
        mode=None if body.mode is None else AcMode(body.mode),
        # The register holds tenths of a degree: ask for what the unit can hold.
        setpoint=None if body.setpoint is None else round(body.setpoint, 1),
    )
    climate = request.app[SERVICES].climate
    entry = climate.set_override(device, setting, body.hours, body.reason, principal(request))
    return web.json_response(entry)


@requires(Scope.STAFF)
@operation(
    "End an air conditioner's override now: the rule takes over",
    response=AirConditionerOut,
    responses={200: "the air conditioner, without override", 404: "no such air conditioner"},
    tags=["climate"],
)
async def delete_ac_override(request: web.Request) -> web.Response:
    device = _device(request)
    entry = request.app[SERVICES].climate.clear_override(device, principal(request))
    return web.json_response(entry)


def _device(request: web.Request) -> str:
    device = request.match_info["device"]
    if not request.app[SERVICES].climate.has(device):
        raise ApiError(404, "not_found", "no such air conditioner", {"device": device})
    return device
