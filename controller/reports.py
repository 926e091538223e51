"""Reports: the utilization table, room and device history, visitors' peaks.

Everything here reads what is already stored: bookings (in memory, from the
booking store) and the time-series rollups (through the embedded store's
:class:`~controller.timeseries.embedded.HistoryReader`, which works the same
whether InfluxDB is configured or not). The figures themselves are computed
by :mod:`rules.utilization`; this module decides what to ask the store for.

The store's queries block, so the service runs them on a worker thread
(``asyncio.to_thread``); the bookings are gathered on the event loop first,
where the booking store lives. The command line calls the same blocking code
directly (``centerctl report``), with the daemon running or not.

What to ask for: a month of one room's state is 44,640 minute rows per
field, and the table needs only their sums over open hours. So each day's
open time is one query on the coarsest grid its boundaries allow (half hours
for an 08:30 opening, one bucket for a 24-hour room), widened to whole hours
so that older time, which the store keeps as hour rows, is read too; minute
buckets only around booked time, where booked-but-empty needs them. The
rooms are read on a few threads at once: the store's queries spend their time
in SQLite, which lets other threads run.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import math
import re
import sqlite3
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Protocol

from controller.booking_store import BookingStore
from controller.clock import Clock
from controller.site import Device, DeviceKind, Room, Site
from controller.timeseries.rollups import Aggregation, Bucket, aggregation_of
from rules.bookings import Booking
from rules.utilization import (
    FIGURES,
    RESOLUTION_SECONDS,
    Figure,
    Interval,
    Usage,
    booked_intervals,
    cut_off,
    intersect,
    open_intervals,
    period,
    room_usage,
    total_usage,
    union,
)

MAX_DAYS = 366
MAX_HISTORY_BUCKETS = 2000
DEFAULT_HISTORY = timedelta(hours=24)
DEFAULT_STEP = 300
HOUR_SECONDS = 3600
QUERY_THREADS = 4
# Older than this, the store keeps hour rows only (its retention, 30 days by
# default): a month of them is read in one query instead of one per day.
MINUTE_ROWS_KEPT = timedelta(days=31)
COARSE_CHUNK = timedelta(days=31)

# Which measurement a device's readings are stored in (CONTRACT §6), and the
# fields of it that are numbers (booleans count as 1 and 0).
MEASUREMENTS: Mapping[DeviceKind, str] = {
    DeviceKind.OCCUPANCY: "occupancy",
    DeviceKind.PEOPLE_COUNTER: "people",
    DeviceKind.CLIMATE: "climate",
    DeviceKind.LOCK: "lock",
    DeviceKind.FIRE_ALARM: "fire",
    DeviceKind.AIR_CONDITIONER: "ac",
    DeviceKind.DOCUMENT_CABINET: "cabinet",
}
NUMERIC_FIELDS: Mapping[str, tuple[str, ...]] = {
    "occupancy": ("occupied", "count"),
    "people": ("entries", "exits", "inside"),
    "climate": ("temperature", "humidity"),
    "lock": ("locked", "door_open"),
    "fire": ("alarm",),
    "ac": ("power", "setpoint", "room_temperature", "fault"),
    "cabinet": ("occupied_compartments", "open_doors"),
}
# What a device's history shows when no field is named.
DEFAULT_FIELDS: Mapping[str, str] = {
    "occupancy": "occupied",
    "people": "entries",
    "climate": "temperature",
    "lock": "locked",
    "fire": "alarm",
    "ac": "room_temperature",
    "cabinet": "occupied_compartments",
}
# Where a room's temperature is measured: its climate sensors and its air conditioners.
_TEMPERATURE_FIELDS = {
    DeviceKind.CLIMATE: "temperature",
    DeviceKind.AIR_CONDITIONER: "room_temperature",
}

COLUMNS = ("room", "name", "name_en", "bookable", *FIGURES)
"""The utilization table's columns, in JSON and CSV alike."""


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


class PeriodError(ValueError):
    """Dates that do not make a period: every problem as ``{"field", "message"}``."""

    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{p['field']}: {p['message']}" for p in problems))
        self.problems = problems


def parse_period(
    first: str | None,
    last: str | None,
    today: date,
    *,
    names: tuple[str, str] = ("from", "to"),
    defaults: bool = False,
) -> tuple[date, date]:
    """``YYYY-MM-DD`` days, inclusive: ``from`` <= ``to``, at most 366 days, begun by today.

    With ``defaults``, a missing ``to`` is today and a missing ``from`` the first
    of ``to``'s month (so no dates at all is this month so far).
    """
    problems: list[dict[str, str]] = []

    def day_of(name: str, text: str | None) -> date | None:
        day = _date(text)
        if text is None:
            problems.append({"field": name, "message": "required, YYYY-MM-DD"})
        elif day is None:
            problems.append({"field": name, "message": "not a date (YYYY-MM-DD)"})
        elif not 2000 <= day.year <= 2200:
            problems.append({"field": name, "message": "must be between the years 2000 and 2200"})
            return None
        return day

    end = today if defaults and last is None else day_of(names[1], last)
    if defaults and first is None:
        start = end.replace(day=1) if end is not None else None
    else:
        start = day_of(names[0], first)
    if start is not None and end is not None and not problems:
        if end < start:
            problems.append({"field": names[1], "message": f"must not be before {names[0]}"})
        elif (end - start).days + 1 > MAX_DAYS:
            problems.append({"field": names[1], "message": f"at most {MAX_DAYS} days at once"})
        elif start > today:
            problems.append({"field": names[0], "message": f"is after today ({today.isoformat()})"})
    if problems or start is None or end is None:
        raise PeriodError(problems)
    return start, end


def _date(text: str | None) -> date | None:
    if text is None or re.fullmatch(r"\d{4}-\d{2}-\d{2}", text, re.ASCII) is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


# --- The utilization table --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UtilizationReport:
    first: date
    last: date
    timezone: str
    until: datetime
    rooms: tuple[tuple[Room, Usage], ...]
    total: Usage

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.first.isoformat(),
            "to": self.last.isoformat(),
            "timezone": self.timezone,
            "until": self.until.isoformat(),
            "resolution_seconds": RESOLUTION_SECONDS,
            "rooms": [
                {
                    "room": room.id,
                    "name": room.name,
                    "name_en": room.name_en,
                    "bookable": room.bookable,
                    **usage.figures(),
                }
                for room, usage in self.rooms
            ],
            "total": self.total.figures(),
        }

    def rows(self) -> list[list[str]]:
        """The table as text cells: the header, one row per room, then ``total``."""
        rows = [list(COLUMNS)]
        for room, usage in self.rooms:
            cells = [room.id, room.name, room.name_en, "true" if room.bookable else "false"]
            rows.append(cells + [_cell(value) for value in usage.figures().values()])
        total = self.total.figures()
        rows.append(["total", "", "", ""] + [_cell(value) for value in total.values()])
        return rows

    def to_csv(self) -> str:
        """CSV with a byte-order mark, so a spreadsheet reads 汇心室 as UTF-8."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerows(self.rows())
        return "\ufeff" + buffer.getvalue()

    def to_table(self) -> str:
        """An aligned text table for a terminal (wide characters count twice)."""
        rows = [list(COLUMNS)]
        for room, usage in self.rooms:
            cells = [room.id, room.name, room.name_en, "yes" if room.bookable else "no"]
            rows.append(cells + [_shown(*item) for item in usage.figures().items()])
        total = self.total.figures()
        rows.append(["total", "", "", ""] + [_shown(*item) for item in total.items()])
        widths = [max(_width(row[column]) for row in rows) for column in range(len(COLUMNS))]
        numeric = {index for index, name in enumerate(COLUMNS) if name in FIGURES}
        lines = [
            f"Utilization {self.first.isoformat()} to {self.last.isoformat()} "
            f"({self.timezone}), figures up to {self.until.isoformat()}"
        ]
        for row in rows:
            cells = [
                _pad(cell, widths[index], right=index in numeric) for index, cell in enumerate(row)
            ]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines) + "\n"


def _shown(name: str, value: Figure) -> str:
    """A figure as the table shows it: fixed decimals, ``-`` for none."""
    if value is None:
        return "-"
    if name == "utilization":
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _cell(value: Figure) -> str:
    if value is None:
        return ""
    return str(value)


def _width(text: str) -> int:
    """Terminal columns: East Asian wide and full-width characters take two."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def _pad(text: str, width: int, *, right: bool) -> str:
    padding = " " * (width - _width(text))
    return padding + text if right else text + padding


# --- History ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    """One history bucket of one quantity; None where nothing was known."""

    weight: float = 0.0
    total: float = 0.0
    minimum: float | None = None
    maximum: float | None = None

    @property
    def mean(self) -> float | None:
        return None if self.weight <= 0 else self.total / self.weight

    def add(self, weight: float, total: float, minimum: float, maximum: float) -> Summary:
        return Summary(
            self.weight + weight,
            self.total + total,
            minimum if self.minimum is None else min(self.minimum, minimum),
            maximum if self.maximum is None else max(self.maximum, maximum),
        )


@dataclass(frozen=True, slots=True)
class RoomHistoryBucket:
    start: datetime
    occupied: Summary  # mean: the fraction of the known time the room was occupied
    count: Summary
    temperature: Summary

    def to_json(self, zone: tzinfo) -> dict[str, Any]:
        return {
            "start": self.start.astimezone(zone).isoformat(),
            "occupied": _rounded(self.occupied.mean, 3),
            "known_seconds": round(self.occupied.weight),
            "count_mean": _rounded(self.count.mean, 2),
            "count_max": _integer(self.count.maximum),
            "temperature_mean": _rounded(self.temperature.mean, 2),
            "temperature_min": _rounded(self.temperature.minimum, 2),
            "temperature_max": _rounded(self.temperature.maximum, 2),
        }


@dataclass(frozen=True, slots=True)
class DeviceHistoryBucket:
    start: datetime
    value: Summary
    step_series: bool  # a state held over time (lock), not samples

    def to_json(self, zone: tzinfo) -> dict[str, Any]:
        return {
            "start": self.start.astimezone(zone).isoformat(),
            "mean": _rounded(self.value.mean, 3),
            "min": self.value.minimum,
            "max": self.value.maximum,
            "samples": None if self.step_series else round(self.value.weight),
            "sum": None if self.step_series or self.value.weight <= 0 else self.value.total,
        }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _integer(value: float | None) -> int | None:
    return None if value is None else round(value)


class UnknownField(ValueError):
    """A device field that its measurement does not have (or is not a number)."""

    def __init__(self, device: Device, field: str, fields: Sequence[str]) -> None:
        super().__init__(f"{device.id} has no numeric field {field!r}; it has {', '.join(fields)}")
        self.fields = list(fields)


def history_grid(start: datetime, end: datetime, step: int) -> list[datetime]:
    """The starts of the ``step`` buckets from ``start`` until ``end``."""
    count = math.ceil((end - start).total_seconds() / step)
    return [start + timedelta(seconds=step * index) for index in range(count)]


def device_fields(device: Device) -> tuple[str, ...]:
    measurement = MEASUREMENTS.get(device.kind)
    return NUMERIC_FIELDS.get(measurement, ()) if measurement is not None else ()


# --- The service ---------------------------------------------------------------------


class Reports:
    def __init__(self, site: Site, clock: Clock, bookings: BookingSource, history: History) -> None:
        """``history``: the time-series store's reader; ``bookings``: the booking service."""
        self._site = site
        self._clock = clock
        self._bookings = bookings
        self._history = history
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
            occupied=self._read(tags, "occupied", open_time, now=now),
            count=self._read(tags, "count", open_time, now=now),
            booked_occupied=self._read(tags, "occupied", booked, minutes=True),
        )

    def _read(
        self,
        tags: Mapping[str, str],
        field: str,
        intervals: Sequence[Interval],
        *,
        minutes: bool = False,
        now: datetime | None = None,
    ) -> list[Bucket]:
        """The ``room`` series' buckets covering ``intervals``, none twice."""
        found: dict[tuple[datetime, int], Bucket] = {}
        coarse_before = None if now is None else now - MINUTE_ROWS_KEPT
        for start, end, step in query_plan(intervals, minutes=minutes, coarse_before=coarse_before):
            for bucket in self._history.buckets("room", tags, field, start, end, step=step):
                # An hour rollup of older data can answer two neighbouring queries.
                found.setdefault((bucket.start, bucket.seconds), bucket)
        return list(found.values())

    # -- history ---------------------------------------------------------------------

    async def room_history(
        self, room: Room, start: datetime, end: datetime, step: int
    ) -> list[RoomHistoryBucket]:
        return await asyncio.to_thread(self._room_history, room, start, end, step)

    def _room_history(
        self, room: Room, start: datetime, end: datetime, step: int
    ) -> list[RoomHistoryBucket]:
        grid = history_grid(start, end, step)
        tags = {"site": self._site_id, "room": room.id}
        occupied = self._gridded(grid, step, [("room", tags, "occupied")], end)
        count = self._gridded(grid, step, [("room", tags, "count")], end)
        sources = [
            (MEASUREMENTS[device.kind], self._device_tags(device), field)
            for device in self._site.devices_in(room.id)
            if (field := _TEMPERATURE_FIELDS.get(device.kind)) is not None
        ]
        temperature = self._gridded(grid, step, sources, end)
        return [
            RoomHistoryBucket(moment, occupied[index], count[index], temperature[index])
            for index, moment in enumerate(grid)
        ]

    async def device_history(
        self, device: Device, field: str, start: datetime, end: datetime, step: int
    ) -> list[DeviceHistoryBucket]:
        """Raises :class:`UnknownField` for a field the device's measurement lacks."""
        fields = device_fields(device)
        if field not in fields:
            raise UnknownField(device, field, fields)
        measurement = MEASUREMENTS[device.kind]
        step_series = aggregation_of(measurement) is Aggregation.STEP
        grid = history_grid(start, end, step)
        source = [(measurement, self._device_tags(device), field)]
        values = await asyncio.to_thread(self._gridded, grid, step, source, end)
        return [
            DeviceHistoryBucket(moment, values[index], step_series)
            for index, moment in enumerate(grid)
        ]

    def _device_tags(self, device: Device) -> dict[str, str]:
        """The device's series tags as the recorder writes them (people have no room)."""
        tags = {"site": self._site_id, "device": device.id}
        if device.room is not None and device.kind is not DeviceKind.PEOPLE_COUNTER:
            tags["room"] = device.room
        return tags

    def _gridded(
        self,
        grid: Sequence[datetime],
        step: int,
        sources: Iterable[tuple[str, Mapping[str, str], str]],
        end: datetime,
    ) -> list[Summary]:
        """Several series' buckets merged onto one grid (a coarser stored bucket
        that spans grid buckets is shared out in proportion)."""
        summaries = [Summary() for _ in grid]
        if not grid:
            return summaries
        origin = grid[0]
        # Older time is kept in hour rows, and a query returns the rows that start
        # in it: the hour the grid starts in comes from a query of its own.
        queries = [(origin, end, step)]
        if (lead_in := _floor(origin, HOUR_SECONDS)) < origin:
            queries.append((lead_in, origin, RESOLUTION_SECONDS))
        for (measurement, tags, field), (first_at, last_at, size) in itertools.product(
            sources, queries
        ):
            for bucket in self._history.buckets(
                measurement, tags, field, first_at, last_at, step=size
            ):
                begin = (bucket.start - origin).total_seconds()
                finish = begin + bucket.seconds
                first = max(0, int(begin // step))
                last = min(len(grid), math.ceil(finish / step))
                for index in range(first, last):
                    low, high = max(begin, index * step), min(finish, (index + 1) * step)
                    if high <= low:
                        continue
                    share = (high - low) / bucket.seconds
                    summaries[index] = summaries[index].add(
                        bucket.weight * share, bucket.total * share, bucket.minimum, bucket.maximum
                    )
        return summaries

    # -- visitors --------------------------------------------------------------------

    async def peak_inside(self, first: date, last: date) -> dict[date, int]:
        """The most people inside on each local day, as the counters' points tell."""
        return await asyncio.to_thread(self._peak_inside, first, last)

    def _peak_inside(self, first: date, last: date) -> dict[date, int]:
        start, end = period(first, last, self._zone)
        peaks: dict[date, int] = {}
        for device in self._site.devices:
            if device.kind is not DeviceKind.PEOPLE_COUNTER:
                continue
            for bucket in self._history.buckets(
                "people", self._device_tags(device), "inside", start, end, step=86400
            ):
                if bucket.weight <= 0:
                    continue
                day = bucket.start.astimezone(self._zone).date()
                peaks[day] = max(peaks.get(day, 0), round(bucket.maximum))
        return peaks


def query_plan(
    intervals: Sequence[Interval],
    *,
    minutes: bool = False,
    coarse_before: datetime | None = None,
) -> list[tuple[datetime, datetime, int]]:
    """``(start, end, step)`` queries whose buckets cover ``intervals``, none twice.

    Each query is widened to whole hours, because the store answers older time
    from hour rows, and an hour row counts only in a query that contains its
    start. With ``minutes``: minute buckets, neighbouring spans less than an
    hour apart read in one query. Otherwise one query per day's open time, on
    the coarsest grid every boundary falls on (the 08:30 opening makes half
    hours; a 24-hour room is one bucket), so the store sums the minutes
    itself; before ``coarse_before``, where the store keeps only hour rows,
    up to a month of days in one query (nights included: a few rows each).
    """
    blocks = union(
        (_floor(start, HOUR_SECONDS), _ceil(end, HOUR_SECONDS)) for start, end in intervals
    )
    if minutes:
        merged: list[Interval] = []
        for start, end in blocks:
            if merged and (start - merged[-1][1]).total_seconds() <= HOUR_SECONDS:
                merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        return [(start, end, RESOLUTION_SECONDS) for start, end in merged]
    chunks: list[Interval] = []
    for start, end in blocks:
        if (
            chunks
            and coarse_before is not None
            and end <= coarse_before
            and end - chunks[-1][0] <= COARSE_CHUNK
        ):
            chunks[-1] = (chunks[-1][0], end)
        else:
            chunks.append((start, end))
    plan: list[tuple[datetime, datetime, int]] = []
    index = 0
    ordered = union(intervals)
    for start, end in chunks:
        offsets = [int((end - start).total_seconds()) // RESOLUTION_SECONDS]
        while index < len(ordered) and ordered[index][0] < end:
            for moment in ordered[index]:
                offsets.append(int((moment - start).total_seconds()) // RESOLUTION_SECONDS)
            index += 1
        plan.append((start, end, RESOLUTION_SECONDS * max(1, math.gcd(*offsets))))
    return plan


def _floor(moment: datetime, seconds: int) -> datetime:
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)


def _ceil(moment: datetime, seconds: int) -> datetime:
    floored = _floor(moment, seconds)
    return floored if floored >= moment else floored + timedelta(seconds=seconds)
