"""Room utilization: open hours, bookings and occupancy rollups into the monthly table.

The four centers publish a "space utilization table" every month: per room,
how long it was open, booked and occupied, and how much booked time stood
empty. Everything here is a function of plain data (the room's open time, its
bookings, the occupancy rollups of its ``room`` series), with the period's
cut-off passed in, so the same code answers the API, the command line and a
test that works the figures out by hand.

What each figure means (also in docs/interfaces.md):

- Only the room's *open* time counts: center hours each day, or the whole day
  for a 24-hour room, and only up to the cut-off (``until``, normally now), so
  the morning of today is not diluted by an evening that has not happened.
- *Booked* time is the union of the bookings' scheduled time ``[start,
  effective end)`` inside the open time: a no-show counts in full (the slot was
  taken), a booking cancelled while running counts until the cancellation, one
  cancelled before it started not at all. Overlapping booked time (a walk-in
  taking the rest of a no-show's slot) counts once.
- *Bookings* and *no-shows* count the bookings that start inside the period
  (up to the cut-off) and were not cancelled before they started.
- *Occupied*, *unknown* and the count figures come from the rollups of the
  room's ``room`` series: the ``occupied`` field's total is the occupied
  seconds, its weight the seconds the occupancy was known; what is neither is
  unknown (a sensor offline, the controller down).
- *Booked but empty* is known-empty time inside booked time, at the rollups'
  resolution (a minute): a minute a booking covers only in part counts in
  proportion.

A rollup bucket the intervals cover only in part is pro-rated everywhere, so
the sums are exact for buckets that lie wholly inside or outside the open
time (which the caller arranges for coarse buckets) and as fair as the data
allows for a minute at the edge of a booking.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Protocol

from controller.site import Hours
from rules.bookings import Booking, BookingStatus

Interval = tuple[datetime, datetime]
"""``[start, end)``; lists of them are sorted, disjoint and in UTC."""

RESOLUTION_SECONDS = 60
"""The finest rollup: one minute."""

HOUR = 3600.0

FIGURES = (
    "open_hours",
    "bookings",
    "no_shows",
    "booked_hours",
    "occupied_hours",
    "booked_empty_hours",
    "unknown_hours",
    "peak_count",
    "mean_count",
    "utilization",
)
"""The figures of a row, in the order of the table's columns."""

Figure = int | float | None


class Rollup(Protocol):
    """One bucket of a rollup, as the time-series store answers it.

    For a step series (the room's state): ``total`` is the value integrated over
    the bucket (value-seconds; a bool is 1 or 0) and ``weight`` the seconds it
    was known. ``maximum`` is the largest value seen in the bucket.
    """

    @property
    def start(self) -> datetime: ...

    @property
    def seconds(self) -> int: ...

    @property
    def weight(self) -> float: ...

    @property
    def total(self) -> float: ...

    @property
    def maximum(self) -> float: ...


# --- Time -------------------------------------------------------------------------


def period(first: date, last: date, zone: tzinfo) -> Interval:
    """The local days ``first`` to ``last`` (inclusive) as one interval, in UTC."""
    return (_midnight(first, zone), _midnight(last + timedelta(days=1), zone))


def cut_off(first: date, last: date, zone: tzinfo, now: datetime) -> datetime:
    """Where a period's figures end: its end, or ``now`` (to the whole minute) if
    sooner; never before its start (a period that has not begun counts nothing)."""
    start, end = period(first, last, zone)
    now = now.astimezone(UTC)
    whole_minute = now - timedelta(seconds=now.second, microseconds=now.microsecond)
    return max(start, min(end, whole_minute))


def open_intervals(
    first: date, last: date, zone: tzinfo, hours: Hours | None, until: datetime
) -> list[Interval]:
    """The room's open time on the local days ``first`` to ``last``, cut at ``until``.

    ``hours`` None is a 24-hour room: the whole period is one interval.
    """
    start, end = period(first, last, zone)
    if hours is None:
        return clip([(start, end)], start, until)
    found: list[Interval] = []
    day = first
    while day <= last:
        opens = datetime.combine(day, hours.open, tzinfo=zone).astimezone(UTC)
        closes = datetime.combine(day, hours.close, tzinfo=zone).astimezone(UTC)
        found.append((opens, closes))
        day += timedelta(days=1)
    return clip(found, start, until)


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint, in UTC; intervals that touch or overlap become one."""
    merged: list[Interval] = []
    for start, end in sorted((s.astimezone(UTC), e.astimezone(UTC)) for s, e in intervals):
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def intersect(first: Sequence[Interval], second: Sequence[Interval]) -> list[Interval]:
    """The time in both (each sorted and disjoint)."""
    found: list[Interval] = []
    i = j = 0
    while i < len(first) and j < len(second):
        start = max(first[i][0], second[j][0])
        end = min(first[i][1], second[j][1])
        if start < end:
            found.append((start, end))
        if first[i][1] < second[j][1]:
            i += 1
        else:
            j += 1
    return found


def clip(intervals: Sequence[Interval], start: datetime, end: datetime) -> list[Interval]:
    return intersect(union(intervals), union([(start, end)]))


def seconds(intervals: Iterable[Interval]) -> float:
    return sum((end - start).total_seconds() for start, end in intervals)


# --- Bookings ---------------------------------------------------------------------


def counted(booking: Booking) -> bool:
    """A booking that took its slot: not cancelled before it started."""
    return booking.status is not BookingStatus.CANCELLED


def booked_intervals(bookings: Iterable[Booking]) -> list[Interval]:
    """The time the bookings held (no-shows in full, a running cancel until then)."""
    return union((booking.start, booking.effective_end) for booking in bookings if counted(booking))


# --- Rollups ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Integral:
    """Rollup buckets summed over some intervals (pro-rated at their edges)."""

    weight: float = 0.0
    total: float = 0.0
    maximum: float | None = None  # over the buckets the intervals touch at all


def integrate(buckets: Iterable[Rollup], intervals: Sequence[Interval]) -> Integral:
    """Sum ``buckets`` (non-overlapping) over ``intervals`` (sorted, disjoint).

    A bucket counts in proportion to how much of it the intervals cover.
    """
    starts = [start for start, _ in intervals]
    weight = total = 0.0
    maximum: float | None = None
    for bucket in buckets:
        begin = bucket.start.astimezone(UTC)
        end = begin + timedelta(seconds=bucket.seconds)
        covered = _covered(intervals, starts, begin, end)
        if covered <= 0.0:
            continue
        share = covered / bucket.seconds
        weight += bucket.weight * share
        total += bucket.total * share
        if bucket.weight > 0 and (maximum is None or bucket.maximum > maximum):
            maximum = bucket.maximum
    return Integral(weight, total, maximum)


def _covered(
    intervals: Sequence[Interval], starts: Sequence[datetime], begin: datetime, end: datetime
) -> float:
    index = max(0, bisect.bisect_right(starts, begin) - 1)
    covered = 0.0
    while index < len(intervals) and intervals[index][0] < end:
        low = max(intervals[index][0], begin)
        high = min(intervals[index][1], end)
        if high > low:
            covered += (high - low).total_seconds()
        index += 1
    return covered


# --- The table --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    """A room's (or all rooms') figures in seconds, before rounding."""

    open_seconds: float = 0.0
    bookings: int = 0
    no_shows: int = 0
    booked_seconds: float = 0.0
    occupied_seconds: float = 0.0
    booked_empty_seconds: float = 0.0
    unknown_seconds: float = 0.0
    # Count: only rooms with a counting sensor; Σ count·s and the occupied
    # seconds it is averaged over.
    count_seconds: float | None = None
    count_occupied_seconds: float = 0.0
    peak_count: int | None = None

    def figures(self) -> dict[str, Figure]:
        """The row as published: hours to 2 decimals, utilization to 3."""
        mean = None
        if self.count_seconds is not None and self.count_occupied_seconds > 0:
            mean = round(self.count_seconds / self.count_occupied_seconds, 2)
        utilization = None
        if self.open_seconds > 0:
            utilization = round(self.occupied_seconds / self.open_seconds, 3)
        return {
            "open_hours": _hours(self.open_seconds),
            "bookings": self.bookings,
            "no_shows": self.no_shows,
            "booked_hours": _hours(self.booked_seconds),
            "occupied_hours": _hours(self.occupied_seconds),
            "booked_empty_hours": _hours(self.booked_empty_seconds),
            "unknown_hours": _hours(self.unknown_seconds),
            "peak_count": self.peak_count,
            "mean_count": mean,
            "utilization": utilization,
        }


def room_usage(
    open_time: Sequence[Interval],
    bookings: Iterable[Booking],
    *,
    start: datetime,
    until: datetime,
    occupied: Iterable[Rollup],
    count: Iterable[Rollup],
    booked_occupied: Iterable[Rollup] | None = None,
) -> Usage:
    """One room's figures for the period ``[start, until)``.

    ``open_time``: the room's open intervals inside the period (see
    :func:`open_intervals`). ``bookings``: the room's bookings that overlap the
    period, as stored (cancelled ones are left out here). ``occupied`` and
    ``count``: rollups of the ``room`` series' fields covering the open time, at
    any resolution whose buckets lie wholly inside or outside it.
    ``booked_occupied``: minute rollups of ``occupied`` covering the booked
    time; None when ``occupied`` already is minute rollups of everything.
    """
    bookings = list(bookings)
    open_time = clip(open_time, start, until)
    starting = [
        booking
        for booking in bookings
        if counted(booking) and start <= booking.start.astimezone(UTC) < until
    ]
    booked = intersect(booked_intervals(bookings), open_time)
    occupied = list(occupied)
    occupancy = integrate(occupied, open_time)
    inside_bookings = integrate(occupied if booked_occupied is None else booked_occupied, booked)
    people = integrate(count, open_time)
    has_count = people.maximum is not None
    open_seconds = seconds(open_time)
    return Usage(
        open_seconds=open_seconds,
        bookings=len(starting),
        no_shows=sum(1 for booking in starting if booking.no_show_at is not None),
        booked_seconds=seconds(booked),
        occupied_seconds=occupancy.total,
        booked_empty_seconds=max(0.0, inside_bookings.weight - inside_bookings.total),
        unknown_seconds=max(0.0, open_seconds - occupancy.weight),
        count_seconds=people.total if has_count else None,
        count_occupied_seconds=occupancy.total if has_count else 0.0,
        peak_count=round(people.maximum) if people.maximum is not None else None,
    )


def total_usage(rooms: Iterable[Usage]) -> Usage:
    """All rooms together: sums, the largest peak, the mean count of counted rooms."""
    rooms = list(rooms)
    counted_rooms = [room for room in rooms if room.count_seconds is not None]
    peaks = [room.peak_count for room in rooms if room.peak_count is not None]
    return Usage(
        open_seconds=sum(room.open_seconds for room in rooms),
        bookings=sum(room.bookings for room in rooms),
        no_shows=sum(room.no_shows for room in rooms),
        booked_seconds=sum(room.booked_seconds for room in rooms),
        occupied_seconds=sum(room.occupied_seconds for room in rooms),
        booked_empty_seconds=sum(room.booked_empty_seconds for room in rooms),
        unknown_seconds=sum(room.unknown_seconds for room in rooms),
        count_seconds=(
            sum(room.count_seconds or 0.0 for room in counted_rooms) if counted_rooms else None
        ),
        count_occupied_seconds=sum(room.count_occupied_seconds for room in counted_rooms),
        peak_count=max(peaks) if peaks else None,
    )


def _hours(value: float) -> float:
    return round(value / HOUR, 2)


def _midnight(day: date, zone: tzinfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
