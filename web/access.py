"""Staff actions on doors and the fire latch, and the event and alarm log."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from controller.access import AccessRefused
from controller.alarms import AlarmState
from controller.settings import Scope
from web.app_keys import SITE
from web.auth import principal, requires
from web.bodies import ApiTime, read_body, read_query
from web.errors import ApiError
from web.openapi import operation
from web.services import SERVICES


class UnlockBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    minutes: int = Field(ge=1, le=240, description="how long, then the rules relock")
    reason: str = Field(default="", max_length=200)


class LockBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: str = Field(default="", max_length=200)


class StaffActionOut(BaseModel):
    room: str
    intent: Literal["LOCK", "UNLOCK"]
    cause: str
    until: datetime | None
    locks: list[str] = Field(description="locks commanded; each confirms on its own")


class FireLatchOut(BaseModel):
    latched: bool
    latched_at: datetime | None
    reset_at: datetime | None
    reset_by: str | None


class EventQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: ApiTime | None = Field(default=None, description="events at or after this time")
    kind: str | None = Field(default=None, description="one kind, or several comma-separated")
    room: str | None = None
    limit: int = Field(default=200, ge=1, le=1000)


class AlarmQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: AlarmState | None = None
    acked: bool | None = None
    open: bool = Field(default=False, description="only open alarms (active or unacknowledged)")
    kind: str | None = None
    limit: int = Field(default=200, ge=1, le=1000)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/rooms/{room}/unlock", post_unlock)
    app.router.add_post("/api/rooms/{room}/lock", post_lock)
    app.router.add_post("/api/fire/reset", post_fire_reset)
    app.router.add_get("/api/events", get_events)
    app.router.add_get("/api/alarms", get_alarms)
    app.router.add_post("/api/alarms/{alarm_id}/ack", post_ack)


@requires(Scope.STAFF)
@operation(
    "Unlock a room now for some minutes, then relock",
    body=UnlockBody,
    response=StaffActionOut,
    responses={202: "commanded; the locks confirm on their own", 409: "the room has no lock"},
    tags=["staff"],
)
async def post_unlock(request: web.Request) -> web.Response:
    room = _room(request)
    body = await read_body(request, UnlockBody)
    access = request.app[SERVICES].access
    try:
        result = access.staff_unlock(room, body.minutes, body.reason, principal(request))
    except AccessRefused as refusal:
        raise ApiError(409, refusal.code, refusal.message) from None
    return web.json_response(result.to_json(), status=202)


@requires(Scope.STAFF)
@operation(
    "Lock a room now (until its next booking or opening, or a staff unlock)",
    body=LockBody,
    response=StaffActionOut,
    responses={
        202: "commanded; the locks confirm on their own",
        409: "refused: the fire alarm is active, or the room has no lock",
    },
    tags=["staff"],
)
async def post_lock(request: web.Request) -> web.Response:
    room = _room(request)
    body = await read_body(request, LockBody, optional=True)
    access = request.app[SERVICES].access
    try:
        result = access.staff_lock(room, body.reason, principal(request))
    except AccessRefused as refusal:
        raise ApiError(409, refusal.code, refusal.message) from None
    return web.json_response(result.to_json(), status=202)


@requires(Scope.STAFF)
@operation(
    "Release the fire latch once the panel reports no alarm",
    response=FireLatchOut,
    responses={
        200: "released (or was not set)",
        409: "the panel still reports an alarm, or its state is unknown",
    },
    tags=["staff"],
)
async def post_fire_reset(request: web.Request) -> web.Response:
    access = request.app[SERVICES].access
    try:
        latch = access.fire_reset(principal(request))
    except AccessRefused as refusal:
        raise ApiError(409, refusal.code, refusal.message) from None
    return web.json_response(
        {
            "latched": latch.latched,
            "latched_at": _iso(latch.latched_at),
            "reset_at": _iso(latch.reset_at),
            "reset_by": latch.reset_by,
        }
    )


@requires(Scope.READ)
@operation(
    "The event and alarm log, oldest first",
    query=EventQuery,
    responses={200: "events", 422: "invalid query"},
    tags=["events"],
)
async def get_events(request: web.Request) -> web.Response:
    query = read_query(request, EventQuery)
    if query.room is not None and query.room not in request.app[SITE].room_by_id:
        raise ApiError(
            422, "invalid", "no such room", [{"field": "room", "message": "no such room"}]
        )
    events = request.app[SERVICES].events.query(
        since=query.since, kind=query.kind, room=query.room, limit=query.limit
    )
    return web.json_response({"events": [event.to_json() for event in events]})


@requires(Scope.READ)
@operation(
    "Alarms, newest first",
    query=AlarmQuery,
    responses={200: "alarms", 422: "invalid query"},
    tags=["events"],
)
async def get_alarms(request: web.Request) -> web.Response:
    query = read_query(request, AlarmQuery)
    alarms = request.app[SERVICES].alarms.query(
        state=query.state,
        acked=query.acked,
        kind=query.kind,
        open_only=query.open,
        limit=query.limit,
    )
    return web.json_response({"alarms": [alarm.to_json() for alarm in alarms]})


@requires(Scope.STAFF)
@operation(
    "Acknowledge an alarm",
    responses={200: "the alarm, acknowledged"},
    tags=["events"],
)
async def post_ack(request: web.Request) -> web.Response:
    raw = request.match_info["alarm_id"]
    alarms = request.app[SERVICES].alarms
    alarm_id = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else None
    if alarm_id is None or alarms.get(alarm_id) is None:
        raise ApiError(404, "not_found", "no such alarm", {"alarm_id": raw})
    alarm = alarms.ack(alarm_id, principal(request))
    return web.json_response(alarm.to_json())


def _room(request: web.Request) -> str:
    room = request.match_info["room"]
    if room not in request.app[SITE].room_by_id:
        raise ApiError(404, "not_found", "no such room", {"room": room})
    return room


def _iso(value: datetime | None) -> Any:
    return value.isoformat() if value is not None else None
