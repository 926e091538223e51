"""Rollups: minute and hour summaries of a series' fields, and their arithmetic.

A summary is ``[weight, total, minimum, maximum]``. How a point becomes one
depends on what the measurement's points mean (:class:`Aggregation`):

- ``STEP`` (``room``, ``lock``): each point is the series' whole state from its
  time on, so a value counts for as long as it was held. Weight is the seconds
  the value was known, total the integral of value over time, so the mean of
  ``occupied`` over a day is the fraction of the known time the room was
  occupied, and the mean of ``count`` is the time-weighted mean count.
- ``SAMPLE`` (everything else): each point's fields are samples, counted in the
  minute of their timestamp. Weight is the number of samples, total their sum,
  so the total of ``people.entries`` is the number of entries.

Booleans count as 1 and 0; strings are not rolled up. Summaries merge exactly
(weights and totals add, minimum of minima, maximum of maxima), which is what
lets a late point, a flushed partial minute or sixty minutes becoming an hour
all be a plain addition.

Minute buckets start on the UTC epoch minute, hour buckets on the epoch hour.
Every zone a site uses is a whole number of hours from UTC (Shanghai is UTC+8
and has no daylight saving time), so local hours and local days are whole
hour buckets too.

Nothing here does I/O; ``embedded`` stores what this module computes. A write's
changes are gathered in a :class:`RollupBatch` and applied to the
:class:`OpenRollups` only once the write has committed, so a failed write
leaves memory as it was and the same points can be given again.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

from controller.timeseries.points import Fields

NS = 1_000_000_000
MINUTE = 60
HOUR = 3600
MINUTE_NS = MINUTE * NS

Summary = list[float]
"""``[weight, total, minimum, maximum]``, mutable while its bucket is open."""

OpenMinutes = dict[int, dict[tuple[int, str], Summary]]
"""Minute start (epoch ns) -> (series id, field) -> summary."""

Row = tuple[int, str, int, float, float, float, float]
"""A stored rollup: ``(series, field, bucket start in epoch s, weight, total, min, max)``."""

Numeric = list[tuple[str, float]]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class Aggregation(enum.Enum):
    STEP = "step"
    """The measurement reports its whole state at each point (room, lock): time-weighted."""
    SAMPLE = "sample"
    """Samples (climate, ac, occupancy, cabinet, fire) and increments (people)."""


STEP_MEASUREMENTS = frozenset({"room", "lock"})


def aggregation_of(measurement: str) -> Aggregation:
    return Aggregation.STEP if measurement in STEP_MEASUREMENTS else Aggregation.SAMPLE


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket of one field: how much is known about it, and its summary."""

    start: datetime  # UTC, aware
    seconds: int  # bucket length (60, 3600, or the requested step)
    weight: float  # STEP: seconds the value was known within the bucket; SAMPLE: number of samples
    total: float  # STEP: ∫ value dt in value·seconds; SAMPLE: sum of samples (bool = 1/0)
    minimum: float
    maximum: float

    @property
    def mean(self) -> float | None:
        return None if self.weight == 0 else self.total / self.weight


class Held(NamedTuple):
    """What a STEP series is known to hold, and up to when it has been rolled up.

    ``values`` holds from ``since_ns`` on; everything before ``since_ns`` is
    already in the minute summaries. ``last_ns`` is the time of the latest point:
    an older point cannot change the past, so it is ignored for rollups.
    """

    since_ns: int
    last_ns: int
    values: tuple[tuple[str, float], ...]


def numeric_fields(fields: Fields, names: set[str]) -> Numeric | str:
    """The fields to roll up, as floats; or why the point cannot be stored at all.

    Integers must fit in 64 bits (InfluxDB's limit too) and floats be finite.
    ``names`` holds the field names already known to be storable text; new ones
    are checked once and added.
    """
    numeric: Numeric = []
    for name, value in fields:
        if name not in names:
            if not storable(name):
                return f"field name {name!r} cannot be stored"
            names.add(name)
        if type(value) is float:
            if value - value != 0.0:  # NaN or infinite
                return f"field {name} is {value}"
            numeric.append((name, value))
        elif type(value) is bool:
            numeric.append((name, 1.0 if value else 0.0))
        elif type(value) is int:
            if not INT64_MIN <= value <= INT64_MAX:
                return f"field {name} does not fit in 64 bits"
            numeric.append((name, float(value)))
        elif type(value) is not str:
            return f"field {name} is a {type(value).__name__}"
    return numeric


def storable(text: object) -> bool:
    """Whether ``text`` is a string SQLite and JSON can hold (no lone surrogates)."""
    if not isinstance(text, str):
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def add_sample(minutes: OpenMinutes, minute_ns: int, series: int, name: str, value: float) -> None:
    summaries = minutes.get(minute_ns)
    if summaries is None:
        summaries = minutes[minute_ns] = {}
    key = (series, name)
    summary = summaries.get(key)
    if summary is None:
        summaries[key] = [1.0, value, value, value]
        return
    summary[0] += 1.0
    summary[1] += value
    if value < summary[2]:
        summary[2] = value
    elif value > summary[3]:
        summary[3] = value


def add_held(
    minutes: OpenMinutes,
    series: int,
    values: tuple[tuple[str, float], ...],
    start_ns: int,
    end_ns: int,
) -> None:
    """Count ``values`` as held over ``[start_ns, end_ns)``, split at minute boundaries."""
    moment = start_ns
    while moment < end_ns:
        minute = moment - moment % MINUTE_NS
        stop = min(end_ns, minute + MINUTE_NS)
        seconds = (stop - moment) / NS
        summaries = minutes.get(minute)
        if summaries is None:
            summaries = minutes[minute] = {}
        for name, value in values:
            key = (series, name)
            summary = summaries.get(key)
            if summary is None:
                summaries[key] = [seconds, value * seconds, value, value]
                continue
            summary[0] += seconds
            summary[1] += value * seconds
            if value < summary[2]:
                summary[2] = value
            if value > summary[3]:
                summary[3] = value
        moment = stop


def merged(first: Summary, second: Summary) -> Summary:
    """The exact merge of two summaries of the same field (neither is changed)."""
    return [
        first[0] + second[0],
        first[1] + second[1],
        min(first[2], second[2]),
        max(first[3], second[3]),
    ]


def merge_into(target: OpenMinutes, source: OpenMinutes) -> None:
    """Add every summary of ``source`` to ``target`` (``target`` changes)."""
    for minute, summaries in source.items():
        existing = target.get(minute)
        if existing is None:
            target[minute] = summaries
            continue
        for key, summary in summaries.items():
            mine = existing.get(key)
            existing[key] = summary if mine is None else merged(mine, summary)


@dataclass(slots=True)
class RollupBatch:
    """One write's rollup changes, kept apart until the write commits."""

    held: dict[int, Held] = field(default_factory=dict)
    minutes: OpenMinutes = field(default_factory=dict)
    out_of_order: int = 0


class OpenRollups:
    """What is rolled up but not yet stored: the STEP values held and the open minutes.

    Memory only: after a restart a STEP series is unknown until its next point,
    which is the honest answer (the controller was not watching meanwhile).
    """

    def __init__(self) -> None:
        self.held: dict[int, Held] = {}
        self.minutes: OpenMinutes = {}

    @property
    def pending(self) -> int:
        return sum(len(summaries) for summaries in self.minutes.values())

    def step(self, batch: RollupBatch, series: int, moment: int, numeric: Numeric) -> None:
        """A STEP point: the values held so far count up to ``moment``, its own from then.

        A point older than the series' latest cannot change the past: it is only
        counted. A point inside minutes already stored takes effect from their end.
        """
        held = batch.held.get(series) or self.held.get(series)
        if held is None:
            batch.held[series] = Held(moment, moment, tuple(numeric))
            return
        if moment < held.last_ns:
            batch.out_of_order += 1
            return
        since = held.since_ns
        if moment > since:
            add_held(batch.minutes, series, held.values, since, moment)
            since = moment
        batch.held[series] = Held(since, moment, tuple(numeric))

    def carry(self, batch: RollupBatch, carry_to: int) -> None:
        """Count every STEP value as held up to ``carry_to``: no point means no change."""
        for series, held in {**self.held, **batch.held}.items():
            if held.values and held.since_ns < carry_to:
                add_held(batch.minutes, series, held.values, held.since_ns, carry_to)
                batch.held[series] = held._replace(since_ns=carry_to)

    def closed_rows(self, batch: RollupBatch, close_before: int | None) -> list[Row]:
        """The rows of every minute before ``close_before`` (all when None), this batch's
        summaries merged with those gathered before it."""
        rows: list[Row] = []
        for minute in self.minutes.keys() | batch.minutes.keys():
            if close_before is not None and minute >= close_before:
                continue
            combined = dict(self.minutes.get(minute, {}))
            for key, summary in batch.minutes.get(minute, {}).items():
                mine = combined.get(key)
                combined[key] = summary if mine is None else merged(mine, summary)
            bucket = minute // NS
            rows.extend(
                (series, name, bucket, weight, total, low, high)
                for (series, name), (weight, total, low, high) in combined.items()
            )
        return rows

    def apply(self, batch: RollupBatch, close_before: int | None) -> None:
        """Take in a committed batch: its closed minutes are stored, the rest stay open."""
        self.held.update(batch.held)
        if close_before is None:
            self.minutes.clear()
            return
        for minute in [minute for minute in self.minutes if minute < close_before]:
            del self.minutes[minute]
        merge_into(
            self.minutes,
            {minute: open_ for minute, open_ in batch.minutes.items() if minute >= close_before},
        )


def to_buckets(
    rows: Iterable[tuple[int, int, float, float, float, float]], start: int, step: int
) -> list[Bucket]:
    """Merge rows ``(bucket, seconds, weight, total, minimum, maximum)`` into buckets.

    Step buckets start at ``start`` (epoch seconds) and every ``step`` seconds
    after. A row whose length does not divide that grid (an hour row when the
    step is finer than an hour, or when ``start`` is not on an hour) is returned
    as a bucket of its own length rather than split by a guess.
    """
    merged_rows: dict[tuple[int, int], Summary] = {}
    for bucket, seconds, weight, total, minimum, maximum in rows:
        if step % seconds == 0 and start % seconds == 0:
            key = (start + (bucket - start) // step * step, step)
        else:
            key = (bucket, seconds)
        summary = merged_rows.get(key)
        row = [weight, total, minimum, maximum]
        merged_rows[key] = row if summary is None else merged(summary, row)
    return [
        Bucket(
            start=datetime.fromtimestamp(bucket, UTC),
            seconds=seconds,
            weight=summary[0],
            total=summary[1],
            minimum=summary[2],
            maximum=summary[3],
        )
        for (bucket, seconds), summary in sorted(merged_rows.items())
    ]
