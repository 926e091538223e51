"""Reports: the utilization table, room and device history, visitors' peaks.

Everything here reads what is already stored: bookings (in memory, from the
booking store) and the time-series rollups (through the embedded store's
:class:`~controller.timeseries.embedded.HistoryReader`, which works the same
whether InfluxDB is configured or not). The figures themselves are computed
by :mod:`rules.utilization`. :class:`Reports` is the face the web handlers
and the command line see; it gathers the utilization table and delegates:

- ``controller.report_period``: the days a report covers, as people type them;
- ``controller.report_queries``: what the table asks the store for;
- ``controller.report_output``: the table as JSON, CSV and text;
- ``controller.history``: room and device history, and the visitors' peaks;
- ``controller.report_sources``: the bookings and series it reads.

The store's queries block, so the service runs them on a worker thread
(``asyncio.to_thread``); the bookings are gathered on the event loop first,
where the booking store lives. The command line calls the same blocking code
directly (``centerctl report``), with the daemon running or not. The rooms
are read on a few threads at once: the store's queries spend their time in
SQLite, which lets other threads run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime

from controller.clock import Clock
from controller.history import DeviceHistoryBucket, RoomHistoryBucket, SiteHistory
from controller.report_output import UtilizationReport
from controller.report_queries import read_room
from controller.report_sources import BookingSource, History
from controller.site import Device, Room, Site
from rules.bookings import Booking
from rules.utilization import (
    Usage,
    booked_intervals,
    cut_off,
    intersect,
    open_intervals,
    period,
    room_usage,
    total_usage,
)

QUERY_THREADS = 4


class Reports:
    """The reports of one site: utilization computed here, history read by :class:`SiteHistory`."""

    def __init__(self, site: Site, clock: Clock, bookings: BookingSource, history: History) -> None:
        """``history``: the time-series store's reader; ``bookings``: the booking service."""
        self._site = site
        self._clock = clock
        self._bookings = bookings
        self._history = history
        self._site_history = SiteHistory(site, history)
        self._zone = site.site.zone
        self._site_id = site.site.id

    def today(self) -> date:
        return self._clock.now().astimezone(self._zone).date()

    # -- utilization --------------------------------------------------------------

    async def utilization(self, first: date, last: date) -> UtilizationReport:
        """The table for the local days ``first`` to ``last``, up to now."""
        now = self._clock.now()
        bookings = self._bookings_of(first, last)
        return await asyncio.to_thread(self._compute_utilization, first, last, now, bookings)

    def utilization_blocking(self, first: date, last: date, now: datetime) -> UtilizationReport:
        """The same, on the calling thread (the command line)."""
        return self._compute_utilization(first, last, now, self._bookings_of(first, last))

    def _bookings_of(self, first: date, last: date) -> list[Booking]:
        start, end = period(first, last, self._zone)
        return self._bookings.between(start, end)

    def _compute_utilization(
        self, first: date, last: date, now: datetime, bookings: Sequence[Booking]
    ) -> UtilizationReport:
        start, _ = period(first, last, self._zone)
        until = cut_off(first, last, self._zone, now)
        by_room: dict[str, list[Booking]] = {}
        for booking in bookings:
            by_room.setdefault(booking.room, []).append(booking)

        def usage(room: Room) -> Usage:
            return self._room_usage(room, first, last, start, until, now, by_room.get(room.id, []))

        with ThreadPoolExecutor(QUERY_THREADS, thread_name_prefix="report") as pool:
            rooms = list(zip(self._site.rooms, pool.map(usage, self._site.rooms), strict=True))
        return UtilizationReport(
            first=first,
            last=last,
            timezone=self._site.site.timezone,
            until=until.astimezone(self._zone),
            rooms=tuple(rooms),
            total=total_usage(usage for _, usage in rooms),
        )

    def _room_usage(
        self,
        room: Room,
        first: date,
        last: date,
        start: datetime,
        until: datetime,
        now: datetime,
        bookings: Sequence[Booking],
    ) -> Usage:
        hours = None if room.always_open else self._site.site.hours
        open_time = open_intervals(first, last, self._zone, hours, until)
        booked = intersect(booked_intervals(bookings), open_time)
        tags = {"site": self._site_id, "room": room.id}
        return room_usage(
            open_time,
            bookings,
            start=start,
            until=until,
            occupied=read_room(self._history, tags, "occupied", open_time, now=now),
            count=read_room(self._history, tags, "count", open_time, now=now),
            booked_occupied=read_room(self._history, tags, "occupied", booked, minutes=True),
        )

    # -- history and visitors ---------------------------------------------------------

    async def room_history(
        self, room: Room, start: datetime, end: datetime, step: int
    ) -> list[RoomHistoryBucket]:
        return await asyncio.to_thread(self._site_history.room_history, room, start, end, step)

    async def device_history(
        self, device: Device, field: str, start: datetime, end: datetime, step: int
    ) -> list[DeviceHistoryBucket]:
        """Raises :class:`~controller.history.UnknownField` for a field the device's
        measurement lacks."""
        return await asyncio.to_thread(
            self._site_history.device_history, device, field, start, end, step
        )

    async def peak_inside(self, first: date, last: date) -> dict[date, int]:
        """The most people inside on each local day, as the counters' points tell."""
        return await asyncio.to_thread(self._site_history.peak_inside, first, last)
