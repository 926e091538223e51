"""What the utilization table asks the time-series store for, and how little.

A month of one room's state is 44,640 minute rows per field, and the table
needs only their sums over open hours. So each day's open time is one query
on the coarsest grid its boundaries allow (half hours for an 08:30 opening,
one bucket for a 24-hour room), widened to whole hours so that older time,
which the store keeps as hour rows, is read too; minute buckets only around
booked time, where booked-but-empty needs them.

The store's hour rows are also why history reads the hour its grid starts in
on its own (:mod:`controller.history`); both take the hour boundaries from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from controller.report_sources import History
from controller.timeseries.rollups import Bucket
from rules.utilization import RESOLUTION_SECONDS, Interval, union

HOUR_SECONDS = 3600
# Older than this, the store keeps hour rows only (its retention, 30 days by
# default): a month of them is read in one query instead of one per day.
MINUTE_ROWS_KEPT = timedelta(days=31)
COARSE_CHUNK = timedelta(days=31)


def read_room(
    history: History,
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
        for bucket in history.buckets("room", tags, field, start, end, step=step):
            # An hour rollup of older data can answer two neighbouring queries.
            found.setdefault((bucket.start, bucket.seconds), bucket)
    return list(found.values())


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
        (floor_to(start, HOUR_SECONDS), ceil_to(end, HOUR_SECONDS)) for start, end in intervals
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


def floor_to(moment: datetime, seconds: int) -> datetime:
    """The last boundary of ``seconds`` (since the epoch, in UTC) at or before ``moment``."""
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)


def ceil_to(moment: datetime, seconds: int) -> datetime:
    """The first boundary of ``seconds`` at or after ``moment``."""
    floored = floor_to(moment, seconds)
    return floored if floored >= moment else floored + timedelta(seconds=seconds)
