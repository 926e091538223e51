"""HTTP routes: visitors, the day's entries and exits from the entrance counters."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from controller.settings import Scope
from controller.visitors import VisitorDay
from web.app_keys import SITE, STATE
from web.auth import requires
from web.bodies import read_query
from web.errors import ApiError
from web.openapi import operation
from web.services import SERVICES


class VisitorQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    date: str | None = Field(
        default=None,
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        description="a day in the site's zone, YYYY-MM-DD; default: today",
    )


class HourOut(BaseModel):
    start: datetime = Field(description="the local hour's start, with its offset")
    entries: int
    exits: int


class TotalsOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    in_: int = Field(alias="in")
    out: int


class CounterOut(BaseModel):
    device: str
    room: str | None
    online: bool | None = Field(description="None until the counter is first heard of")
    last_seen: datetime | None
    entries: int = Field(description="what this counter added on the day")
    exits: int
    totals: TotalsOut | None = Field(description="its last accepted cumulative totals")
    restart_pending: bool = Field(description="lower totals held until a restart is confirmed")


class VisitorsOut(BaseModel):
    date: date
    timezone: str
    entries: int
    exits: int
    inside: int = Field(description="people inside now (today); 0 for a past day, reset at its end")
    inside_at_close: int | None = Field(
        description="for a past day: the people still counted inside at its end, before the reset"
    )
    closed: bool = Field(description="the day has ended")
    hours: list[HourOut] = Field(description="the day's 24 local hours")
    counters: list[CounterOut]


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/visitors", get_visitors)


@requires(Scope.READ)
@operation(
    "The day's entries and exits, hour by hour, and the people inside now",
    query=VisitorQuery,
    response=VisitorsOut,
    responses={200: "the day's visitors", 422: "invalid query: not a date, or a future day"},
    tags=["visitors"],
)
async def get_visitors(request: web.Request) -> web.Response:
    query = read_query(request, VisitorQuery)
    visitors = request.app[SERVICES].visitors
    today = visitors.today()
    day = today if query.date is None else _day(query.date)
    if day > today:
        raise ApiError(
            422,
            "invalid",
            "that day has not begun yet",
            [{"field": "date", "message": f"is after today ({today.isoformat()})"}],
        )
    return web.json_response(_visitors_json(request, visitors.day(day)))


def _day(text: str) -> date:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ApiError(
            422, "invalid", "the query is invalid", [{"field": "date", "message": "not a date"}]
        ) from None
    if not 2000 <= day.year <= 2200:
        raise ApiError(
            422,
            "invalid",
            "the query is invalid",
            [{"field": "date", "message": "must be between the years 2000 and 2200"}],
        )
    return day


def _visitors_json(request: web.Request, day: VisitorDay) -> dict[str, Any]:
    state = request.app[STATE]
    counters = []
    for counter in day.counters:
        device = state.device(counter.device)
        counters.append(
            {
                "device": counter.device,
                "room": counter.room,
                "online": device.online,
                "last_seen": _iso(device.last_seen),
                "entries": counter.entries,
                "exits": counter.exits,
                "totals": (
                    None
                    if counter.totals is None
                    else {"in": counter.totals.entries, "out": counter.totals.exits}
                ),
                "restart_pending": counter.restart_pending,
            }
        )
    return {
        "date": day.day.isoformat(),
        "timezone": request.app[SITE].site.timezone,
        "entries": day.entries,
        "exits": day.exits,
        "inside": day.inside,
        "inside_at_close": day.inside_at_close,
        "closed": day.closed,
        "hours": [
            {"start": hour.start.isoformat(), "entries": hour.entries, "exits": hour.exits}
            for hour in day.hours
        ],
        "counters": counters,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
