"""HTTP routes: visitors, the day's entries and exits from the entrance counters.

``?date=`` is one day hour by hour; ``?from=&to=`` is a range of days, one
total each (with the day's peak of people inside, from the time series).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, RootModel

from controller.report_period import PeriodError, parse_period
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
    from_: str | None = Field(
        default=None,
        alias="from",
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        description="with to, instead of date: totals per day from this day (YYYY-MM-DD)",
    )
    to: str | None = Field(
        default=None,
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        description="the last day (inclusive; at most 366 days; days after today are left out)",
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


class VisitorDayOut(BaseModel):
    date: date
    entries: int
    exits: int
    peak_inside: int | None = Field(
        description="the most people inside at once, as recorded in the time series; null if none"
    )
    inside: int = Field(description="people inside now (today); 0 for a past day")
    inside_at_close: int | None
    closed: bool


class VisitorHistoryOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: date = Field(alias="from")
    to: date
    timezone: str
    entries: int = Field(description="all the days together")
    exits: int
    days: list[VisitorDayOut] = Field(description="from from to to, or to today if sooner")


class VisitorsAnswer(RootModel[VisitorsOut | VisitorHistoryOut]):
    """One day hour by hour (``date``), or days (``from`` and ``to``)."""


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/visitors", get_visitors)


@requires(Scope.READ)
@operation(
    "The day's entries and exits, hour by hour, and the people inside now; or days' totals",
    description="?date= gives one day hour by hour; ?from=&to= gives a total per day.",
    query=VisitorQuery,
    response=VisitorsAnswer,
    responses={
        200: "the day's visitors, or the days' totals",
        422: "invalid query: not a date, a future day, date with from/to, over 366 days",
    },
    tags=["visitors"],
)
async def get_visitors(request: web.Request) -> web.Response:
    query = read_query(request, VisitorQuery)
    visitors = request.app[SERVICES].visitors
    today = visitors.today()
    if query.from_ is not None or query.to is not None:
        if query.date is not None:
            raise ApiError(
                422,
                "invalid",
                "give either date, or from and to",
                [{"field": "date", "message": "not together with from and to"}],
            )
        return await _history(request, query.from_, query.to, today)
    day = today if query.date is None else _day(query.date)
    if day > today:
        raise ApiError(
            422,
            "invalid",
            "that day has not begun yet",
            [{"field": "date", "message": f"is after today ({today.isoformat()})"}],
        )
    return web.json_response(_visitors_json(request, visitors.day(day)))


async def _history(
    request: web.Request, first_text: str | None, last_text: str | None, today: date
) -> web.Response:
    try:
        first, last = parse_period(first_text, last_text, today)
    except PeriodError as error:
        raise ApiError(422, "invalid", "the query is invalid", error.problems) from None
    services = request.app[SERVICES]
    last_shown = min(last, today)  # days that have not begun have nothing to show
    peaks = await services.reports.peak_inside(first, last_shown)
    days = [
        services.visitors.day(first + timedelta(days=offset))
        for offset in range((last_shown - first).days + 1)
    ]
    return web.json_response(
        {
            "from": first.isoformat(),
            "to": last.isoformat(),
            "timezone": request.app[SITE].site.timezone,
            "entries": sum(found.entries for found in days),
            "exits": sum(found.exits for found in days),
            "days": [
                {
                    "date": found.day.isoformat(),
                    "entries": found.entries,
                    "exits": found.exits,
                    "peak_inside": peaks.get(found.day),
                    "inside": found.inside,
                    "inside_at_close": found.inside_at_close,
                    "closed": found.closed,
                }
                for found in days
            ],
        }
    )


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
