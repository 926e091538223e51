"""Bookings, durable in SQLite and indexed in memory by room and start.

Every booking and every fact about it (started, checked in, released,
ended, cancelled) is committed before anything acts on it. The in-memory
index answers the questions the rules ask many times a second ("which
bookings of this room matter now?") without a query; it is rebuilt from the
table at start, so the table is the truth.
"""

from __future__ import annotations

import bisect
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta

from controller.database import transaction
from rules.bookings import Booking, Step, Transition, apply

# No booking is longer than this (the API refuses longer ones): bounds how far
# back a search for bookings overlapping a moment must look.
MAX_BOOKING = timedelta(hours=24)

_FACTS = {
    Transition.STARTED: "started_at",
    Transition.CHECKED_IN: "checked_in_at",
    Transition.NO_SHOW: "no_show_at",
    Transition.ENDED: "ended_at",
}

_COLUMNS = (
    "id",
    "room",
    "start",
    "end",
    "title",
    "organizer",
    "expected_attendees",
    "created",
    "updated",
    "started_at",
    "checked_in_at",
    "no_show_at",
    "ended_at",
    "cancelled_at",
)


class BookingStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        db.execute(
            """CREATE TABLE IF NOT EXISTS bookings (
                id TEXT PRIMARY KEY,
                room TEXT NOT NULL,
                start TEXT NOT NULL,
                "end" TEXT NOT NULL,
                title TEXT NOT NULL DEFAULT '',
                organizer TEXT NOT NULL DEFAULT '',
                expected_attendees INTEGER,
                created TEXT,
                updated TEXT,
                started_at TEXT,
                checked_in_at TEXT,
                no_show_at TEXT,
                ended_at TEXT,
                cancelled_at TEXT
            )"""
        )
        self._by_id: dict[str, Booking] = {}
        self._by_room: dict[str, list[tuple[datetime, str]]] = {}
        columns = ", ".join(f'"{column}"' for column in _COLUMNS)
        for row in db.execute(f"SELECT {columns} FROM bookings"):
            self._index(_from_row(row))

    # -- queries ----------------------------------------------------------

    @property
    def database(self) -> sqlite3.Connection:
        """The connection, for callers that commit a booking fact with other writes."""
        return self._db

    def get(self, booking_id: str) -> Booking | None:
        return self._by_id.get(booking_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def overlapping(self, room: str, start: datetime, end: datetime) -> Iterator[Booking]:
        """The room's bookings whose time overlaps ``[start, end)``, by start."""
        entries = self._by_room.get(room, [])
        first = bisect.bisect_left(entries, (start - MAX_BOOKING, ""))
        for booking_start, booking_id in entries[first:]:
            if booking_start >= end:
                break
            booking = self._by_id[booking_id]
            if booking.overlaps(start, end):
                yield booking

    def relevant(self, room: str, now: datetime, *, lookback: timedelta) -> list[Booking]:
        """The room's bookings that can matter at ``now``: any that ended less
        than ``lookback`` ago or run now, and every one up to the next to start."""
        entries = self._by_room.get(room, [])
        first = bisect.bisect_left(entries, (now - MAX_BOOKING - lookback, ""))
        found: list[Booking] = []
        for booking_start, booking_id in entries[first:]:
            booking = self._by_id[booking_id]
            if booking.effective_end + lookback < now:
                continue
            found.append(booking)
            if booking_start > now and booking.holds_slot:
                break  # the next one to come; later ones cannot matter before it
        return found

    def unfinished(self) -> list[Booking]:
        return [booking for booking in self._by_id.values() if not booking.finished]

    def between(self, start: datetime, end: datetime, room: str | None = None) -> list[Booking]:
        rooms = [room] if room is not None else list(self._by_room)
        found = [booking for name in rooms for booking in self.overlapping(name, start, end)]
        return sorted(found, key=lambda booking: (booking.start, booking.room, booking.id))

    # -- changes ----------------------------------------------------------

    def put(self, booking: Booking) -> None:
        """Create or replace a booking (and its facts) durably."""
        values = [_to_column(column, getattr(booking, column)) for column in _COLUMNS]
        columns = ", ".join(f'"{column}"' for column in _COLUMNS)
        marks = ", ".join("?" for _ in _COLUMNS)
        with transaction(self._db):
            self._db.execute(
                f"INSERT OR REPLACE INTO bookings ({columns}) VALUES ({marks})", values
            )
        self._unindex(booking.id)
        self._index(booking)

    def record(self, booking: Booking, step: Step) -> Booking:
        """Record one transition durably; returns the booking with it."""
        column = _FACTS[step.transition]
        with transaction(self._db):
            self._db.execute(
                f"UPDATE bookings SET {column} = ? WHERE id = ?", (step.at.isoformat(), booking.id)
            )
        updated = apply(booking, step)
        self._by_id[booking.id] = updated
        return updated

    def cancel(self, booking: Booking, at: datetime) -> Booking:
        with transaction(self._db):
            self._db.execute(
                "UPDATE bookings SET cancelled_at = ?, updated = ? WHERE id = ?",
                (at.isoformat(), at.isoformat(), booking.id),
            )
        updated = booking.with_facts(cancelled_at=at, updated=at)
        self._by_id[booking.id] = updated
        return updated

    def _index(self, booking: Booking) -> None:
        self._by_id[booking.id] = booking
        bisect.insort(self._by_room.setdefault(booking.room, []), (booking.start, booking.id))

    def _unindex(self, booking_id: str) -> None:
        old = self._by_id.pop(booking_id, None)
        if old is None:
            return
        entries = self._by_room[old.room]
        index = bisect.bisect_left(entries, (old.start, old.id))
        if index < len(entries) and entries[index] == (old.start, old.id):
            del entries[index]


def _to_column(column: str, value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _from_row(row: sqlite3.Row) -> Booking:
    def when(column: str) -> datetime | None:
        value = row[column]
        return datetime.fromisoformat(value) if value is not None else None

    return Booking(
        id=row["id"],
        room=row["room"],
        start=datetime.fromisoformat(row["start"]),
        end=datetime.fromisoformat(row["end"]),
        title=row["title"],
        organizer=row["organizer"],
        expected_attendees=row["expected_attendees"],
        created=when("created"),
        updated=when("updated"),
        started_at=when("started_at"),
        checked_in_at=when("checked_in_at"),
        no_show_at=when("no_show_at"),
        ended_at=when("ended_at"),
        cancelled_at=when("cancelled_at"),
    )
