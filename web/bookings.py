"""``/api/bookings``: the booking system's side of the API."""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from controller.bookings import BookingRefused, BookingRequest, booking_json
from controller.settings import Scope
from web.app_keys import SITE
from web.auth import requires
from web.bodies import ApiTime, read_body, read_query
from web.errors import ApiError
from web.openapi import operation
from web.services import SERVICES

BOOKING_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
MAX_QUERY_SPAN = timedelta(days=93)


class BookingBody(BaseModel):
    """A booking as the booking system sends it; times need a UTC offset."""

    model_config = ConfigDict(extra="forbid", strict=True)

    room: str = Field(min_length=1, max_length=64, description="a bookable room's id")
    start: ApiTime
    end: ApiTime
    title: str = Field(default="", max_length=200)
    organizer: str = Field(default="", max_length=200)
    expected_attendees: int | None = Field(default=None, ge=0, le=100_000)


class BookingQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    room: str | None = Field(default=None, description="only this room")
    from_: ApiTime | None = Field(
        default=None, alias="from", description="default: today's start in the site's zone"
    )
    to: ApiTime | None = Field(default=None, description="default: one day after from")


class BookingOut(BaseModel):
    id: str
    room: str
    start: datetime
    end: datetime
    title: str
    organizer: str
    expected_attendees: int | None
    status: str = Field(description="scheduled, active, checked_in, no_show, ended or cancelled")
    created: datetime | None
    updated: datetime | None
    started_at: datetime | None
    checked_in_at: datetime | None
    no_show_at: datetime | None
    ended_at: datetime | None
    cancelled_at: datetime | None


class BookingList(BaseModel):
    bookings: list[BookingOut]


def add_routes(app: web.Application) -> None:
    app.router.add_put("/api/bookings/{booking_id}", put_booking)
    app.router.add_delete("/api/bookings/{booking_id}", delete_booking)
    app.router.add_get("/api/bookings", get_bookings)


@requires(Scope.BOOKING)
@operation(
    "Create or replace a booking (idempotent)",
    body=BookingBody,
    response=BookingOut,
    responses={
        200: "replaced (or unchanged)",
        201: "created",
        409: "overlaps another booking of the room (named in details), or the booking is over",
        422: "invalid: end <= start, room unknown or not bookable, over 24 h, in the past,"
        " or outside center hours",
    },
    tags=["bookings"],
)
async def put_booking(request: web.Request) -> web.Response:
    booking_id = request.match_info["booking_id"]
    body = await read_body(request, BookingBody)
    if not _valid_id(booking_id):
        raise ApiError(
            422,
            "invalid",
            "booking ids are 1-128 letters, digits and . _ : -",
            [{"field": "booking_id", "message": "invalid booking id"}],
        )
    services = request.app[SERVICES]
    booking_request = BookingRequest(
        room=body.room,
        start=body.start,
        end=body.end,
        title=body.title,
        organizer=body.organizer,
        expected_attendees=body.expected_attendees,
    )
    try:
        booking, created = services.bookings.put(booking_id, booking_request, services.clock.now())
    except BookingRefused as refusal:
        raise ApiError(refusal.status, refusal.code, refusal.message, refusal.details) from None
    response = web.json_response(booking_json(booking), status=201 if created else 200)
    if created:
        response.headers["Location"] = f"/api/bookings/{booking_id}"
    return response


@requires(Scope.BOOKING)
@operation(
    "Cancel a booking; a running booking ends now",
    response=BookingOut,
    responses={200: "the booking after cancelling (unchanged if it was already over)"},
    tags=["bookings"],
)
async def delete_booking(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    try:
        booking = services.bookings.cancel(request.match_info["booking_id"], services.clock.now())
    except BookingRefused as refusal:
        raise ApiError(refusal.status, refusal.code, refusal.message, refusal.details) from None
    return web.json_response(booking_json(booking))


@requires(Scope.READ)
@operation(
    "Bookings with their status",
    query=BookingQuery,
    response=BookingList,
    responses={200: "bookings overlapping [from, to), by start", 422: "invalid query"},
    tags=["bookings"],
)
async def get_bookings(request: web.Request) -> web.Response:
    query = read_query(request, BookingQuery)
    services = request.app[SERVICES]
    site = request.app[SITE]
    if query.room is not None and query.room not in site.room_by_id:
        raise ApiError(
            422, "invalid", "no such room", [{"field": "room", "message": "no such room"}]
        )
    start = query.from_
    if start is None:
        start = datetime.combine(
            services.clock.now().astimezone(site.site.zone).date(), time(), site.site.zone
        )
    end = query.to or start + timedelta(days=1)
    if end <= start:
        raise ApiError(422, "invalid", "to must be after from", [{"field": "to"}])
    if end - start > MAX_QUERY_SPAN:
        raise ApiError(422, "invalid", "ask for at most 93 days at once", [{"field": "to"}])
    bookings = services.bookings.between(start, end, query.room)
    return web.json_response({"bookings": [booking_json(booking) for booking in bookings]})


def _valid_id(booking_id: str) -> bool:
    return re.fullmatch(BOOKING_ID_PATTERN, booking_id) is not None
