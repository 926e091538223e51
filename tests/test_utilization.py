"""The utilization table for a simulated week, every figure worked out by hand.

The week is Monday 2026-11-23 to Sunday 2026-11-29 at the Changbai center
(open 08:30-21:00, 12.5 h a day, Asia/Shanghai). Three rooms:

- 汇心室 (hui-xin-room), bookable, with a counting occupancy sensor. Its
  state over the week (empty with count 0 unless said otherwise):

  ======  ============================================================================
  Mon     booking A 14:00-16:00; occupied 14:15-15:00 (6 people), 15:00-15:30 (8);
          a walk-in group 19:00-20:00 (3)
  Tue     booking B 10:00-12:00, a no-show; the sensor offline 16:00-18:30
  Wed     booking C 09:00-11:00 cancelled the day before; booking D 13:00-17:00,
          occupied 13:00-14:00 (10), cancelled while running at 14:30
  Thu     booking E 18:00-19:00; occupied 18:00-19:30 (4), half an hour over
  Fri     the controller down 11:00-13:00 (no rollups at all)
  Sat     occupied all day 08:30-21:00: 5 people, 12 from 10:00 to 11:00
  Sun     booking F 09:00-11:00, occupied 09:10-11:00 (2);
          booking G 15:00-16:00, occupied 15:00-16:00 (3)
  ======  ============================================================================

- 24小时自助服务区 (self-service), open 24 hours, no counting sensor: occupied
  only Wednesday 22:00 to Thursday 02:00, outside center hours.
- 长卷书房 (library): no data at all (its sensor never reported).

The rollups are built minute by minute from those timelines, as the embedded
store would (a step series: weight = seconds known, total = occupied seconds
or count·seconds, maximum = the largest value).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from controller.site import Hours
from rules.bookings import Booking
from rules.utilization import (
    FIGURES,
    Usage,
    cut_off,
    integrate,
    open_intervals,
    period,
    room_usage,
    total_usage,
    union,
)

SH = ZoneInfo("Asia/Shanghai")
HOURS = Hours.model_validate({"open": "08:30", "close": "21:00"})
MONDAY = date(2026, 11, 23)
SUNDAY = date(2026, 11, 29)
WEEK_START, WEEK_END = period(MONDAY, SUNDAY, SH)


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    """``day`` 0 is Monday 23 November 2026."""
    return datetime(2026, 11, 23 + day, hour, minute, second, tzinfo=SH)


MON, TUE, WED, THU, FRI, SAT, SUN = range(7)


@dataclass(frozen=True, slots=True)
class Minute:
    """A rollup bucket as the store answers it."""

    start: datetime
    seconds: int
    weight: float
    total: float
    minimum: float
    maximum: float


# (from, occupied, count): the room's whole state from that moment; None is unknown.
# GAP: no rollups from then on (the controller was down) until the next entry.
State = tuple[datetime, bool | None, int | None]
GAP = object()


def rollups(
    timeline: Sequence[State | tuple[datetime, object]], start: datetime, end: datetime
) -> tuple[list[Minute], list[Minute]]:
    """Minute rollups of ``occupied`` and ``count`` for a step timeline (empty ones left out)."""
    changes: list[tuple[datetime, bool | None, int | None, bool]] = []
    for entry in timeline:
        if len(entry) == 2:
            changes.append((entry[0], None, None, True))
        else:
            moment, occupied, count = entry  # type: ignore[misc]
            changes.append((moment, occupied, count, False))
    occupied_out: list[Minute] = []
    count_out: list[Minute] = []
    minute = start
    index = -1
    while minute < end:
        following = minute + timedelta(minutes=1)
        pieces: list[tuple[float, bool | None, int | None]] = []
        cursor = minute
        while cursor < following:
            while index + 1 < len(changes) and changes[index + 1][0] <= cursor:
                index += 1
            upto = following
            if index + 1 < len(changes) and changes[index + 1][0] < following:
                upto = changes[index + 1][0]
            if index >= 0 and not changes[index][3]:
                _, occupied, count, _ = changes[index]
                pieces.append(((upto - cursor).total_seconds(), occupied, count))
            cursor = upto
        for out, values in (
            (occupied_out, [(s, None if o is None else float(o)) for s, o, _ in pieces]),
            (count_out, [(s, None if c is None else float(c)) for s, _, c in pieces]),
        ):
            known = [(s, v) for s, v in values if v is not None]
            if known:
                out.append(
                    Minute(
                        minute.astimezone(UTC),
                        60,
                        sum(s for s, _ in known),
                        sum(s * v for s, v in known),
                        min(v for _, v in known),
                        max(v for _, v in known),
                    )
                )
        minute = following
    return occupied_out, count_out


HUI_XIN_TIMELINE: list[State | tuple[datetime, object]] = [
    (at(MON, 0), False, 0),
    (at(MON, 14, 15), True, 6),
    (at(MON, 15), True, 8),
    (at(MON, 15, 30), False, 0),
    (at(MON, 19), True, 3),
    (at(MON, 20), False, 0),
    (at(TUE, 16), None, None),  # the sensor offline
    (at(TUE, 18, 30), False, 0),
    (at(WED, 13), True, 10),
    (at(WED, 14), False, 0),
    (at(THU, 18), True, 4),
    (at(THU, 19, 30), False, 0),
    (at(FRI, 11), GAP),  # the controller down
    (at(FRI, 13), False, 0),
    (at(SAT, 8, 30), True, 5),
    (at(SAT, 10), True, 12),
    (at(SAT, 11), True, 5),
    (at(SAT, 21), False, 0),
    (at(SUN, 9, 10), True, 2),
    (at(SUN, 11), False, 0),
    (at(SUN, 15), True, 3),
    (at(SUN, 16), False, 0),
]

SELF_SERVICE_TIMELINE: list[State | tuple[datetime, object]] = [
    (at(MON, 0), False, None),
    (at(WED, 22), True, None),
    (at(THU, 2), False, None),
]


def booking(name: str, start: datetime, end: datetime, **facts: datetime) -> Booking:
    return Booking(id=name, room="hui-xin-room", start=start, end=end, **facts)


HUI_XIN_BOOKINGS = [
    booking(
        "A",
        at(MON, 14),
        at(MON, 16),
        started_at=at(MON, 14),
        checked_in_at=at(MON, 14, 15),
        ended_at=at(MON, 16),
    ),
    booking("B", at(TUE, 10), at(TUE, 12), started_at=at(TUE, 10), no_show_at=at(TUE, 10, 15)),
    booking("C", at(WED, 9), at(WED, 11), cancelled_at=at(TUE, 17)),
    booking(
        "D",
        at(WED, 13),
        at(WED, 17),
        started_at=at(WED, 13),
        checked_in_at=at(WED, 13),
        cancelled_at=at(WED, 14, 30),
        ended_at=at(WED, 14, 30),
    ),
    booking(
        "E",
        at(THU, 18),
        at(THU, 19),
        started_at=at(THU, 18),
        checked_in_at=at(THU, 18),
        ended_at=at(THU, 19),
    ),
    booking(
        "F",
        at(SUN, 9),
        at(SUN, 11),
        started_at=at(SUN, 9),
        checked_in_at=at(SUN, 9, 10),
        ended_at=at(SUN, 11),
    ),
    booking(
        "G",
        at(SUN, 15),
        at(SUN, 16),
        started_at=at(SUN, 15),
        checked_in_at=at(SUN, 15),
        ended_at=at(SUN, 16),
    ),
]


def as_of(bookings: list[Booking], now: datetime) -> list[Booking]:
    """The bookings as stored at ``now``: facts after it not yet recorded."""
    found = []
    for item in bookings:
        facts = {
            name: None
            for name in ("started_at", "checked_in_at", "no_show_at", "ended_at", "cancelled_at")
            if (value := getattr(item, name)) is not None and value > now
        }
        found.append(item.with_facts(**facts))
    return found


def week(now: datetime) -> dict[str, Usage]:
    until = cut_off(MONDAY, SUNDAY, SH, now)
    hui_occupied, hui_count = rollups(HUI_XIN_TIMELINE, WEEK_START, until)
    self_occupied, self_count = rollups(SELF_SERVICE_TIMELINE, WEEK_START, until)
    return {
        "hui-xin-room": room_usage(
            open_intervals(MONDAY, SUNDAY, SH, HOURS, until),
            as_of(HUI_XIN_BOOKINGS, now),
            start=WEEK_START,
            until=until,
            occupied=hui_occupied,
            count=hui_count,
        ),
        "self-service": room_usage(
            open_intervals(MONDAY, SUNDAY, SH, None, until),
            [],
            start=WEEK_START,
            until=until,
            occupied=self_occupied,
            count=self_count,
        ),
        "library": room_usage(
            open_intervals(MONDAY, SUNDAY, SH, HOURS, until),
            [],
            start=WEEK_START,
            until=until,
            occupied=[],
            count=[],
        ),
    }


def test_the_whole_week_by_hand() -> None:
    rooms = week(now=at(SUN, 0) + timedelta(days=1, hours=9))  # Monday 30th, 09:00
    assert rooms["hui-xin-room"].figures() == {
        "open_hours": 87.5,  # 7 days x 12.5 h
        "bookings": 6,  # A B D E F G (C was cancelled before it started)
        "no_shows": 1,  # B
        # A 2 + B 2 (a no-show holds its slot) + D 1.5 (13:00 to the cancel at 14:30)
        # + E 1 + F 2 + G 1
        "booked_hours": 9.5,
        # Mon 0.75 + 0.5 + 1 = 2.25; Wed 1; Thu 1.5 (overstay counts); Sat 12.5;
        # Sun 09:10-11:00 1.8333 + 1 = 2.8333 -> 20.0833
        "occupied_hours": 20.08,
        # A: 14:00-14:15 0.25 + 15:30-16:00 0.5 = 0.75; B 2; D 14:00-14:30 0.5; E 0;
        # F 09:00-09:10 0.1667; G 0 -> 3.4167
        "booked_empty_hours": 3.42,
        "unknown_hours": 4.5,  # Tue 16:00-18:30 offline 2.5 + Fri 11:00-13:00 down 2
        "peak_count": 12,  # Saturday 10:00-11:00
        # count-hours: Mon 6x0.75 + 8x0.5 + 3x1 = 11.5; Wed 10x1 = 10; Thu 4x1.5 = 6;
        # Sat 5x11.5 + 12x1 = 69.5; Sun 2x1.8333 + 3x1 = 6.6667 -> 103.6667
        # / 20.0833 occupied hours = 5.1618
        "mean_count": 5.16,
        "utilization": 0.230,  # 20.0833 / 87.5 = 0.22952
    }
    assert rooms["self-service"].figures() == {
        "open_hours": 168.0,  # 7 x 24 h: a 24-hour room is open all night
        "bookings": 0,
        "no_shows": 0,
        "booked_hours": 0.0,
        "occupied_hours": 4.0,  # Wed 22:00 - Thu 02:00, outside center hours
        "booked_empty_hours": 0.0,
        "unknown_hours": 0.0,
        "peak_count": None,  # no counting sensor
        "mean_count": None,
        "utilization": 0.024,  # 4 / 168 = 0.0238
    }
    assert rooms["library"].figures() == {
        "open_hours": 87.5,
        "bookings": 0,
        "no_shows": 0,
        "booked_hours": 0.0,
        "occupied_hours": 0.0,
        "booked_empty_hours": 0.0,
        "unknown_hours": 87.5,  # never heard from: all of it unknown
        "peak_count": None,
        "mean_count": None,
        "utilization": 0.0,
    }
    assert total_usage(rooms.values()).figures() == {
        "open_hours": 343.0,  # 87.5 + 168 + 87.5
        "bookings": 6,
        "no_shows": 1,
        "booked_hours": 9.5,
        "occupied_hours": 24.08,  # 20.0833 + 4
        "booked_empty_hours": 3.42,
        "unknown_hours": 92.0,  # 4.5 + 87.5
        "peak_count": 12,
        "mean_count": 5.16,  # only the counted room: 103.6667 / 20.0833
        "utilization": 0.070,  # 24.0833 / 343 = 0.070214
    }


def test_a_week_cut_at_now_sunday_morning() -> None:
    now = at(SUN, 10, 30, 45)  # figures end at 10:30, the last whole minute
    assert cut_off(MONDAY, SUNDAY, SH, now) == at(SUN, 10, 30)
    rooms = week(now)
    assert rooms["hui-xin-room"].figures() == {
        "open_hours": 77.0,  # 6 x 12.5 + Sunday 08:30-10:30 2 (not the whole of Sunday)
        "bookings": 5,  # A B D E F; G starts at 15:00, after now
        "no_shows": 1,
        "booked_hours": 8.0,  # 2 + 2 + 1.5 + 1 + F 09:00-10:30 1.5 (running)
        # 2.25 + 1 + 1.5 + 12.5 + Sun 09:10-10:30 1.3333 -> 18.5833
        "occupied_hours": 18.58,
        "booked_empty_hours": 3.42,  # unchanged: 0.75 + 2 + 0.5 + 0 + 0.1667
        "unknown_hours": 4.5,
        "peak_count": 12,
        # 11.5 + 10 + 6 + 69.5 + 2x1.3333 = 99.6667 count-hours / 18.5833 = 5.3632
        "mean_count": 5.36,
        "utilization": 0.241,  # 18.5833 / 77 = 0.24134
    }
    assert rooms["self-service"].figures()["open_hours"] == 154.5  # 6 x 24 + 10.5
    assert rooms["self-service"].figures()["utilization"] == 0.026  # 4 / 154.5 = 0.02589


def test_a_period_not_begun_counts_nothing() -> None:
    now = at(MON, 8)
    until = cut_off(date(2026, 11, 24), date(2026, 11, 30), SH, now)
    assert until == period(date(2026, 11, 24), date(2026, 11, 30), SH)[0]
    usage = room_usage(
        open_intervals(date(2026, 11, 24), date(2026, 11, 30), SH, HOURS, until),
        HUI_XIN_BOOKINGS,
        start=until,
        until=until,
        occupied=[],
        count=[],
    )
    assert usage.figures()["open_hours"] == 0.0
    assert usage.figures()["bookings"] == 0
    assert usage.figures()["utilization"] is None  # no open time: not 0 %


def test_a_minute_a_booking_covers_in_part_counts_in_proportion() -> None:
    # Booking 18:00:30-18:02:00; the room is occupied 18:00:20-18:01:00, then empty.
    start = at(THU, 18)
    occupied, _ = rollups(
        [(start, False, 0), (at(THU, 18, 0, 20), True, 1), (at(THU, 18, 1), False, 0)],
        start,
        at(THU, 18, 5),
    )
    usage = room_usage(
        [(start, at(THU, 18, 5))],
        [booking("P", at(THU, 18, 0, 30), at(THU, 18, 2), started_at=at(THU, 18, 0, 30))],
        start=start,
        until=at(THU, 18, 5),
        occupied=occupied,
        count=[],
    )
    # 18:00 minute: known 60 s, occupied 40 s -> 20 s empty, the booking covers 30 of
    # its 60 s -> 10 s; 18:01 minute: 60 s empty, all booked -> 60 s. 70 s in all.
    assert usage.booked_empty_seconds == pytest.approx(70.0)
    assert usage.booked_seconds == 90.0  # 18:00:30-18:02:00
    assert usage.occupied_seconds == 40.0  # 18:00:20-18:01:00


def test_coarse_buckets_sum_like_minutes() -> None:
    """The service reads half-hour buckets for open-hour totals: same answer as minutes."""
    until = at(SUN, 0) + timedelta(days=1)
    occupied, count = rollups(HUI_XIN_TIMELINE, WEEK_START, until)

    def coarse(buckets: list[Minute]) -> list[Minute]:
        grouped: dict[datetime, list[Minute]] = {}
        for bucket in buckets:
            epoch = int(bucket.start.timestamp())
            key = datetime.fromtimestamp(epoch - epoch % 1800, UTC)
            grouped.setdefault(key, []).append(bucket)
        return [
            Minute(
                key,
                1800,
                sum(b.weight for b in group),
                sum(b.total for b in group),
                min(b.minimum for b in group),
                max(b.maximum for b in group),
            )
            for key, group in sorted(grouped.items())
        ]

    open_time = open_intervals(MONDAY, SUNDAY, SH, HOURS, until)
    by_minute = room_usage(
        open_time, HUI_XIN_BOOKINGS, start=WEEK_START, until=until, occupied=occupied, count=count
    )
    by_half_hour = room_usage(
        open_time,
        HUI_XIN_BOOKINGS,
        occupied=coarse(occupied),
        booked_occupied=occupied,
        start=WEEK_START,
        until=until,
        count=coarse(count),
    )
    assert by_half_hour == by_minute


def test_open_intervals_follow_center_hours_in_the_site_zone() -> None:
    until = WEEK_END
    days = open_intervals(MONDAY, MONDAY + timedelta(days=1), SH, HOURS, until)
    assert days == [
        (at(MON, 8, 30).astimezone(UTC), at(MON, 21).astimezone(UTC)),
        (at(TUE, 8, 30).astimezone(UTC), at(TUE, 21).astimezone(UTC)),
    ]
    assert open_intervals(MONDAY, SUNDAY, SH, None, at(TUE, 3)) == [
        (at(MON, 0).astimezone(UTC), at(TUE, 3).astimezone(UTC))
    ]
    # Cut in the middle of a day's hours: the day ends at the cut.
    assert open_intervals(MONDAY, SUNDAY, SH, HOURS, at(MON, 12))[-1][1] == at(MON, 12)


def test_union_and_integrate_edge_cases() -> None:
    # Touching and overlapping booked time counts once.
    assert union([(at(MON, 10), at(MON, 11)), (at(MON, 11), at(MON, 12))]) == [
        (at(MON, 10).astimezone(UTC), at(MON, 12).astimezone(UTC))
    ]
    assert union([(at(MON, 10), at(MON, 12)), (at(MON, 10, 30), at(MON, 11))]) == [
        (at(MON, 10).astimezone(UTC), at(MON, 12).astimezone(UTC))
    ]
    # An empty bucket's maximum is no peak.
    empty = Minute(at(MON, 10), 60, 0.0, 0.0, 0.0, 99.0)
    assert integrate([empty], union([(at(MON, 9), at(MON, 11))])).maximum is None


def test_figures_columns() -> None:
    assert tuple(Usage().figures()) == FIGURES
