"""Where the reports read from: the bookings and the time-series store.

Reports only read. In the controller the bookings come from the booking
service and the series from the embedded store's
:class:`~controller.timeseries.embedded.HistoryReader`; on the command line
(``centerctl report``) the same reader and a read-only view of the
controller's database stand in, with the daemon running or not. The two
protocols here are all the reports know of either.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Protocol

from controller.booking_store import BookingStore
from controller.timeseries.rollups import Bucket
from rules.bookings import Booking


class History(Protocol):
    """What the reports read from the time-series store (``HistoryReader``)."""

    def buckets(
        self,
        measurement: str,
        tags: Mapping[str, str],
        field: str,
        start: datetime,
        end: datetime,
        *,
        step: int = 60,
    ) -> list[Bucket]: ...


class BookingSource(Protocol):
    """``BookingService`` in the controller, a read-only ``BookingStore`` on the command line."""

    def between(self, start: datetime, end: datetime, room: str | None = None) -> list[Booking]: ...


class _NoBookings:
    """A data directory without a controller database has no bookings."""

    def between(self, start: datetime, end: datetime, room: str | None = None) -> list[Booking]:
        return []


@contextmanager
def read_only_bookings(path: Path) -> Iterator[BookingSource]:
    """The bookings of a controller database, opened read-only: the daemon may be
    running and writing it (WAL lets both go on), and a report must change nothing."""
    if not path.exists():
        yield _NoBookings()
        return
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=5000")
        table = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'bookings'"
        ).fetchone()
        yield BookingStore(db) if table is not None else _NoBookings()
    finally:
        db.close()
