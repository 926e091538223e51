"""Reports over HTTP: the utilization table (JSON or CSV) and room and device history."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from controller.history import (
    DEFAULT_FIELDS,
    DEFAULT_HISTORY,
    DEFAULT_STEP,
    MAX_HISTORY_BUCKETS,
    UnknownField,
)
from controller.report_period import PeriodError, parse_period
from controller.settings import Scope
from controller.timeseries.recorder import MEASUREMENTS
from web.app_keys import SITE
from web.auth import requires
from web.bodies import ApiTime, read_query
from web.errors import ApiError
from web.openapi import operation
from web.services import SERVICES

DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
CSV_TYPE = "text/csv"
MAX_STEP = 366 * 86400


class UtilizationQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_: str | None = Field(
        default=None,
        alias="from",
        pattern=DATE_PATTERN,
        description="first day, YYYY-MM-DD in the site's zone; default: the first of to's month",
    )
    to: str | None = Field(
        default=None,
        pattern=DATE_PATTERN,
        description="last day (inclusive), at most 366 days after from; default: today",
    )
    format: Literal["json", "csv"] | None = Field(
        default=None,
        description="csv for a spreadsheet; default JSON (or CSV for Accept: text/csv)",
    )


class FiguresOut(BaseModel):
    open_hours: float = Field(description="center hours (24 h for a 24-hour room), up to until")
    bookings: int = Field(description="bookings starting in the period, not cancelled beforehand")
    no_shows: int
    booked_hours: float = Field(description="scheduled time of those bookings inside open hours")
    occupied_hours: float
    booked_empty_hours: float = Field(description="known-empty time inside booked time")
    unknown_hours: float = Field(description="open time with no occupancy known")
    peak_count: int | None = Field(description="null without a counting sensor")
    mean_count: float | None = Field(description="time-weighted mean count while occupied")
    utilization: float | None = Field(description="occupied_hours / open_hours")


class RoomFiguresOut(FiguresOut):
    room: str
    name: str
    name_en: str
    bookable: bool


class UtilizationOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from")
    to: str
    timezone: str
    until: datetime = Field(description="the figures end here: the period's end, or now")
    resolution_seconds: int
    rooms: list[RoomFiguresOut]
    total: FiguresOut


class HistoryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_: ApiTime | None = Field(
        default=None, alias="from", description="default: 24 h before to (to the whole minute)"
    )
    to: ApiTime | None = Field(default=None, description="default: now")
    step: int = Field(
        default=DEFAULT_STEP,
        ge=60,
        le=MAX_STEP,
        description="seconds per bucket, a multiple of 60 (at most 366 days)",
    )


class DeviceHistoryQuery(HistoryQuery):
    field: str | None = Field(
        default=None,
        min_length=1,
        description="a numeric field of the device's measurement; default: its main one"
        " (temperature, occupied, entries, locked, alarm, room_temperature,"
        " occupied_compartments)",
    )


class RoomBucketOut(BaseModel):
    start: datetime
    occupied: float | None = Field(description="fraction of the known time it was occupied")
    known_seconds: int = Field(description="seconds of the bucket whose occupancy is known")
    count_mean: float | None
    count_max: int | None
    temperature_mean: float | None = Field(description="°C, of the room's climate sensors and ACs")
    temperature_min: float | None
    temperature_max: float | None


class RoomHistoryOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    room: str
    from_: datetime = Field(alias="from")
    to: datetime
    step: int
    buckets: list[RoomBucketOut]


class DeviceBucketOut(BaseModel):
    start: datetime
    mean: float | None
    min: float | None
    max: float | None
    samples: int | None = Field(description="readings in the bucket (null for a held state)")
    sum: float | None = Field(description="sum of the readings, e.g. entries counted")


class DeviceHistoryOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    device: str
    measurement: str
    field: str
    from_: datetime = Field(alias="from")
    to: datetime
    step: int
    buckets: list[DeviceBucketOut]


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/utilization", get_utilization)
    app.router.add_get("/api/rooms/{room}/history", get_room_history)
    app.router.add_get("/api/devices/{device}/history", get_device_history)


@requires(Scope.READ)
@operation(
    "Room utilization per room for a period of days, as JSON or CSV",
    description="Open, booked, occupied, booked-but-empty and unknown hours, bookings, "
    "no-shows, peak and mean count, utilization = occupied / open hours; a total row. "
    "CSV (UTF-8 with a byte-order mark) with ?format=csv or Accept: text/csv.",
    query=UtilizationQuery,
    response=UtilizationOut,
    responses={
        200: "the table (JSON, or CSV as an attachment)",
        422: "invalid query: not dates, to before from, over 366 days, or from after today",
    },
    tags=["reports"],
)
async def get_utilization(request: web.Request) -> web.Response:
    query = read_query(request, UtilizationQuery)
    reports = request.app[SERVICES].reports
    try:
        first, last = parse_period(query.from_, query.to, reports.today(), defaults=True)
    except PeriodError as error:
        raise ApiError(422, "invalid", "the query is invalid", error.problems) from None
    report = await reports.utilization(first, last)
    wants_csv = query.format == "csv" or (
        query.format is None and CSV_TYPE in request.headers.get("Accept", "")
    )
    if not wants_csv:
        return web.json_response(report.to_json())
    filename = f"utilization-{first.isoformat()}-{last.isoformat()}.csv"
    return web.Response(
        body=report.to_csv().encode("utf-8"),
        content_type=CSV_TYPE,
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@requires(Scope.READ)
@operation(
    "A room's occupancy, count and temperature over time, in buckets",
    query=HistoryQuery,
    response=RoomHistoryOut,
    responses={200: "every bucket from from to to", 422: "invalid query"},
    tags=["rooms"],
)
async def get_room_history(request: web.Request) -> web.Response:
    name = request.match_info["room"]
    room = request.app[SITE].room_by_id.get(name)
    if room is None:
        raise ApiError(404, "not_found", "no such room", {"room": name})
    query = read_query(request, HistoryQuery)
    services = request.app[SERVICES]
    start, end = _span(query, services.clock.now())
    buckets = await services.reports.room_history(room, start, end, query.step)
    zone = request.app[SITE].site.zone
    return web.json_response(
        {
            "room": room.id,
            "from": start.astimezone(zone).isoformat(),
            "to": end.astimezone(zone).isoformat(),
            "step": query.step,
            "buckets": [bucket.to_json(zone) for bucket in buckets],
        }
    )


@requires(Scope.READ)
@operation(
    "One numeric field of a device over time, in buckets",
    description="E.g. the outdoor sensor's temperature: ?field=temperature.",
    query=DeviceHistoryQuery,
    response=DeviceHistoryOut,
    responses={200: "every bucket from from to to", 422: "invalid query, or no such field"},
    tags=["devices"],
)
async def get_device_history(request: web.Request) -> web.Response:
    name = request.match_info["device"]
    device = request.app[SITE].device_by_id.get(name)
    if device is None:
        raise ApiError(404, "not_found", "no such device", {"device": name})
    query = read_query(request, DeviceHistoryQuery)
    services = request.app[SERVICES]
    start, end = _span(query, services.clock.now())
    field = query.field or DEFAULT_FIELDS[MEASUREMENTS[device.kind]]
    try:
        buckets = await services.reports.device_history(device, field, start, end, query.step)
    except UnknownField as error:
        raise ApiError(
            422,
            "invalid",
            str(error),
            [{"field": "field", "message": f"one of {', '.join(error.fields)}"}],
        ) from None
    zone = request.app[SITE].site.zone
    return web.json_response(
        {
            "device": device.id,
            "measurement": MEASUREMENTS[device.kind],
            "field": field,
            "from": start.astimezone(zone).isoformat(),
            "to": end.astimezone(zone).isoformat(),
            "step": query.step,
            "buckets": [bucket.to_json(zone) for bucket in buckets],
        }
    )


def _span(query: HistoryQuery, now: datetime) -> tuple[datetime, datetime]:
    """The query's ``[from, to)``, from taken to the whole minute, checked."""
    end = query.to or now
    start = query.from_ or end - DEFAULT_HISTORY
    start -= timedelta(seconds=start.second, microseconds=start.microsecond)
    problems = []
    if query.step % 60:
        problems.append({"field": "step", "message": "must be a multiple of 60 seconds"})
    if end <= start:
        problems.append({"field": "to", "message": "must be after from"})
    elif (end - start).total_seconds() > query.step * MAX_HISTORY_BUCKETS:
        problems.append(
            {
                "field": "step",
                "message": f"at most {MAX_HISTORY_BUCKETS} buckets: ask for a larger step"
                " or a shorter span",
            }
        )
    if problems:
        raise ApiError(422, "invalid", "the query is invalid", problems)
    return start, end
