"""Taking bookings from the booking system: validate, store, and tell the rules.

The booking system owns who has a room when; this module makes sure what it
sends can be honoured (a bookable room, a sane time, inside what the room
allows, no double booking) and stores it durably before the rules act on it.
A refusal changes nothing and says exactly why, with the field or the other
booking involved.

Choices where the contract is silent (also in docs/interfaces.md):

- A new booking may start at most ``PAST_TOLERANCE`` before now (a walk-in
  booked at the desk, clocks a little apart); one that ends in the past is
  refused.
- A room that is not open 24 hours can be booked only inside center hours,
  start and end on the same day.
- A booking that has started keeps its room and start; its end may move
  (extended or shortened). A booking that is over (ended, released as a
  no-show, cancelled) cannot be replaced: the booking system makes a new one.
- Cancelling a booking that has not started marks it cancelled; cancelling a
  running one ends it now (status ``ended``, webhook ``booking.ended``).
  Cancelling one that is already over changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from controller.booking_store import MAX_BOOKING, BookingStore
from controller.event_log import EventLog
from controller.site import Site
from rules.access import opening
from rules.bookings import Booking

PAST_TOLERANCE = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class BookingRequest:
    room: str
    start: datetime
    end: datetime
    title: str = ""
    organizer: str = ""
    expected_attendees: int | None = None


class BookingRefused(Exception):
    """A booking that cannot be taken: ``status`` 404, 409 or 422 with details."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def booking_json(booking: Booking) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": booking.id,
        "room": booking.room,
        "start": booking.start.isoformat(),
        "end": booking.end.isoformat(),
        "title": booking.title,
        "organizer": booking.organizer,
        "expected_attendees": booking.expected_attendees,
        "status": booking.status.value,
        "created": iso(booking.created),
        "updated": iso(booking.updated),
        "started_at": iso(booking.started_at),
        "checked_in_at": iso(booking.checked_in_at),
        "no_show_at": iso(booking.no_show_at),
        "ended_at": iso(booking.ended_at),
        "cancelled_at": iso(booking.cancelled_at),
    }


class BookingService:
    def __init__(
        self,
        site: Site,
        store: BookingStore,
        events: EventLog,
        *,
        changed: Callable[[str], None],
    ) -> None:
        """``changed(room)`` is called after every stored change, so the rules re-decide."""
        self._site = site
        self._store = store
        self._events = events
        self._changed = changed

    def get(self, booking_id: str) -> Booking | None:
        return self._store.get(booking_id)

    def between(self, start: datetime, end: datetime, room: str | None = None) -> list[Booking]:
        return self._store.between(start, end, room)

    def put(self, booking_id: str, request: BookingRequest, now: datetime) -> tuple[Booking, bool]:
        """Create or replace; returns the stored booking and whether it is new."""
        existing = self._store.get(booking_id)
        self._check(request, existing, now)
        if existing is not None and _same(existing, request):
            return existing, False  # idempotent: nothing changed, nothing to tell
        for other in self._store.overlapping(request.room, request.start, request.end):
            if other.id != booking_id and other.holds_slot:
                raise BookingRefused(
                    409,
                    "overlap",
                    f"the room is already booked from {other.start.isoformat()}"
                    f" to {other.end.isoformat()} by booking {other.id}",
                    {
                        "booking_id": other.id,
                        "start": other.start.isoformat(),
                        "end": other.end.isoformat(),
                    },
                )
        booking = Booking(
            id=booking_id,
            room=request.room,
            start=request.start,
            end=request.end,
            title=request.title,
            organizer=request.organizer,
            expected_attendees=request.expected_attendees,
            created=existing.created if existing is not None else now,
            updated=now,
            started_at=existing.started_at if existing is not None else None,
            checked_in_at=existing.checked_in_at if existing is not None else None,
        )
        self._store.put(booking)
        self._events.record(
            "booking_created" if existing is None else "booking_replaced",
            f"booking {booking_id} for {request.room}"
            f" {request.start.isoformat()} to {request.end.isoformat()}",
            room=request.room,
            booking_id=booking_id,
            details={"title": request.title, "organizer": request.organizer},
        )
        if existing is not None and existing.room != booking.room:
            self._changed(existing.room)
        self._changed(booking.room)
        # As the rules left it: a walk-in booking is already active.
        return self._store.get(booking_id) or booking, existing is None

    def cancel(self, booking_id: str, now: datetime) -> Booking:
        booking = self._store.get(booking_id)
        if booking is None:
            raise BookingRefused(404, "not_found", "no such booking", {"booking_id": booking_id})
        if booking.finished or booking.cancelled_at is not None:
            return booking
        if booking.started_at is None and booking.start <= now:
            # Its start is due but not yet recorded: record it first, so that
            # cancelling a booking that is running ends it rather than voids it.
            self._changed(booking.room)
            booking = self._store.get(booking_id) or booking
            if booking.finished:
                return booking
        cancelled = self._store.cancel(booking, now)
        running = booking.started_at is not None
        self._events.record(
            "booking_cancelled",
            f"booking {booking_id} cancelled" + (" while running: it ends now" if running else ""),
            room=booking.room,
            booking_id=booking_id,
        )
        self._changed(booking.room)
        return self._store.get(booking_id) or cancelled

    def _check(self, request: BookingRequest, existing: Booking | None, now: datetime) -> None:
        problems: list[dict[str, str]] = []
        room = self._site.room_by_id.get(request.room)
        if room is None:
            problems.append({"field": "room", "message": f"no room with id {request.room!r}"})
        elif not room.bookable:
            problems.append({"field": "room", "message": f"room {room.id!r} is not bookable"})
        if request.end <= request.start:
            problems.append({"field": "end", "message": "must be after start"})
        elif request.end - request.start > MAX_BOOKING:
            problems.append({"field": "end", "message": "a booking may last at most 24 h"})
        if request.end <= now:
            problems.append({"field": "end", "message": "is in the past"})
        started = existing is not None and existing.started_at is not None
        moved = existing is None or request.start != existing.start
        if moved and request.start < now - PAST_TOLERANCE:
            problems.append({"field": "start", "message": "is in the past"})
        if started and existing is not None:
            if request.room != existing.room:
                problems.append(
                    {"field": "room", "message": "a booking that has started keeps its room"}
                )
            if request.start != existing.start:
                problems.append(
                    {"field": "start", "message": "a booking that has started keeps its start"}
                )
        if room is not None and room.bookable and not room.always_open and not problems:
            problems += self._outside_hours(request)
        if existing is not None and (existing.finished or existing.cancelled_at is not None):
            raise BookingRefused(
                409,
                "booking_over",
                f"booking {existing.id} is {existing.status.value}; make a new booking",
                {"booking_id": existing.id, "status": existing.status.value},
            )
        if problems:
            raise BookingRefused(422, "invalid", "the booking cannot be taken", problems)

    def _outside_hours(self, request: BookingRequest) -> list[dict[str, str]]:
        info = self._site.site
        opens, closes = opening(request.start, info.hours, info.zone)
        if opens <= request.start and request.end <= closes:
            return []
        hours = f"{info.hours.open:%H:%M}-{info.hours.close:%H:%M}"
        return [
            {
                "field": "start" if request.start < opens or request.start >= closes else "end",
                "message": f"outside center hours ({hours} {info.timezone}, same day)",
            }
        ]


def _same(booking: Booking, request: BookingRequest) -> bool:
    return (
        booking.room == request.room
        and booking.start == request.start
        and booking.end == request.end
        and booking.title == request.title
        and booking.organizer == request.organizer
        and booking.expected_attendees == request.expected_attendees
    )
