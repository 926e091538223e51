"""The embedded time-series store: rollups a report can trust, retention, and reading back.

Real SQLite files in ``tmp_path``; time is explicit nanoseconds handed to each
call, as the writer's worker thread does, so nothing here reads a clock.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.timeseries.embedded import (
    Bucket,
    EmbeddedStore,
    HistoryReader,
    Maintenance,
)
from controller.timeseries.points import Point, Series, time_ns
from controller.timeseries.rollups import Aggregation, aggregation_of

DAY0 = datetime(2024, 7, 1, tzinfo=UTC)
SITE = "changbai"
ROOM = Series.of("room", {"site": SITE, "room": "hall"})
CLIMATE = Series.of("climate", {"site": SITE, "room": "hall", "device": "th-1"})
CLIMATE_2 = Series.of("climate", {"site": SITE, "room": "hall", "device": "th-2"})
OCCUPANCY = Series.of("occupancy", {"site": SITE, "room": "hall", "device": "pir-1"})
HALL = {"site": SITE, "room": "hall"}


def at(hour: int, minute: int = 0, second: int = 0, *, day: int = 0) -> datetime:
    return DAY0 + timedelta(days=day, hours=hour, minutes=minute, seconds=second)


def ns(moment: datetime) -> int:
    return time_ns(moment)


def open_store(path: Path, *, keep_raw: bool = True, retention_days: int = 30) -> EmbeddedStore:
    return EmbeddedStore(
        path,
        keep_raw=keep_raw,
        retention=timedelta(days=retention_days),
        history=timedelta(days=730),
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "timeseries.sqlite3"


@pytest.fixture
def store(path: Path) -> Iterator[EmbeddedStore]:
    opened = open_store(path)
    yield opened
    opened.close()


def feed(
    store: EmbeddedStore,
    points: Sequence[Point],
    start: datetime,
    end: datetime,
    every: timedelta = timedelta(seconds=10),
) -> None:
    """Write as the writer does: every ``every``, the points stamped before that moment."""
    pending = sorted(points, key=lambda point: point.time_ns)
    now = start
    while now <= end:
        due = [point for point in pending if point.time_ns < ns(now)]
        pending = pending[len(due) :]
        store.write(due, ns(now))
        now += every
    assert not pending, "feed() ended before every point was due"


def by_start(buckets: list[Bucket]) -> dict[datetime, Bucket]:
    return {bucket.start: bucket for bucket in buckets}


def room_point(moment: datetime, **fields: bool | int) -> Point:
    return Point(ROOM, tuple(fields.items()), ns(moment))


def climate_point(moment: datetime, temperature: float, series: Series = CLIMATE) -> Point:
    return Point(series, (("temperature", temperature),), ns(moment))


def table(path: Path, name: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return sorted(db.execute(f"SELECT * FROM {name}").fetchall())


def execute(path: Path, statement: str) -> None:
    """A statement from another connection, as a second process would run it."""
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(statement)


# --- STEP: a room's state holds until the next point -----------------------------------


def test_a_room_occupied_from_10_00_30_to_12_15_counts_exactly_the_seconds_it_was(
    store: EmbeddedStore, path: Path
) -> None:
    points = [
        room_point(at(10, 0, 30), occupied=True, count=2, booked=True),
        room_point(at(11, 0, 20), occupied=True, count=5, booked=True),
        room_point(at(12, 15), occupied=False, count=0, booked=False),
    ]
    feed(store, points, at(10), at(12, 20))
    reader = HistoryReader(path)

    occupied = by_start(reader.buckets("room", HALL, "occupied", at(9), at(13)))
    assert occupied[at(10)] == Bucket(at(10), 60, 30.0, 30.0, 1.0, 1.0)
    assert occupied[at(10)].mean == 1.0
    for minute in range(1, 135):  # 10:01 .. 12:14, each a whole minute occupied
        assert occupied[at(10, minute)] == Bucket(at(10, minute), 60, 60.0, 60.0, 1.0, 1.0)
    for minute in range(15, 20):  # empty from 12:15 on, and known to be
        assert occupied[at(12, minute)] == Bucket(at(12, minute), 60, 60.0, 0.0, 0.0, 0.0)
    assert sorted(occupied) == [at(10, minute) for minute in range(140)]  # nothing before 10:00

    count = by_start(reader.buckets("room", HALL, "count", at(9), at(13)))
    assert count[at(10)].mean == 2.0
    assert count[at(10, 59)] == Bucket(at(10, 59), 60, 60.0, 120.0, 2.0, 2.0)
    # 11:00: 20 s at 2 then 40 s at 5
    assert count[at(11)] == Bucket(at(11), 60, 60.0, 2 * 20 + 5 * 40, 2.0, 5.0)
    assert count[at(11)].mean == 4.0
    assert count[at(12, 14)].maximum == 5.0
    assert count[at(12, 15)].maximum == 0.0

    hourly = by_start(reader.buckets("room", HALL, "occupied", at(10), at(13), step=3600))
    assert [(b.weight, b.total) for b in hourly.values()] == [
        (3570.0, 3570.0),
        (3600.0, 3600.0),
        (1200.0, 900.0),
    ]


def test_a_room_point_without_a_field_makes_it_unknown_from_then(
    store: EmbeddedStore, path: Path
) -> None:
    points = [
        room_point(at(10), occupied=True, booked=True),
        room_point(at(10, 5, 30), booked=False),  # occupancy no longer known
    ]
    feed(store, points, at(10), at(10, 10))
    reader = HistoryReader(path)

    occupied = reader.buckets("room", HALL, "occupied", at(10), at(11))
    assert [(b.start, b.weight) for b in occupied] == [
        *[(at(10, minute), 60.0) for minute in range(5)],
        (at(10, 5), 30.0),
    ]
    booked = by_start(reader.buckets("room", HALL, "booked", at(10), at(11)))
    assert booked[at(10, 5)] == Bucket(at(10, 5), 60, 60.0, 30.0, 0.0, 1.0)
    assert booked[at(10, 9)] == Bucket(at(10, 9), 60, 60.0, 0.0, 0.0, 0.0)


def test_a_room_point_older_than_the_latest_is_stored_raw_but_not_rolled_up(
    store: EmbeddedStore, path: Path
) -> None:
    store.write([room_point(at(10), occupied=True)], ns(at(10, 0, 1)))
    store.write([room_point(at(10, 0, 40), occupied=False)], ns(at(10, 0, 41)))
    store.write([room_point(at(10, 0, 20), occupied=False)], ns(at(10, 0, 42)))  # late
    store.write([], ns(at(10, 1, 1)))

    assert store.points_out_of_order == 1
    reader = HistoryReader(path)
    assert reader.buckets("room", HALL, "occupied", at(10), at(11)) == [
        Bucket(at(10), 60, 60.0, 40.0, 0.0, 1.0)
    ]
    assert len(reader.points("room", at(10), at(11))) == 3


def test_a_lock_toggling_within_one_minute_counts_each_state_for_its_seconds(
    store: EmbeddedStore, path: Path
) -> None:
    door = Series.of("lock", {"site": SITE, "room": "hall", "device": "lock-1"})
    store.write(
        [
            Point(door, (("locked", True), ("door_open", False)), ns(at(10))),
            Point(door, (("locked", False), ("door_open", False)), ns(at(10, 0, 15))),
            Point(door, (("locked", False), ("door_open", True)), ns(at(10, 0, 20))),
            Point(door, (("locked", True), ("door_open", False)), ns(at(10, 0, 45))),
        ],
        ns(at(10, 1, 5)),
    )
    reader = HistoryReader(path)

    assert reader.buckets("lock", HALL, "locked", at(10), at(11)) == [
        Bucket(at(10), 60, 60.0, 15.0 + 15.0, 0.0, 1.0)
    ]
    assert reader.buckets("lock", HALL, "door_open", at(10), at(11)) == [
        Bucket(at(10), 60, 60.0, 25.0, 0.0, 1.0)
    ]


def test_a_restart_carries_nothing_until_the_rooms_next_point(path: Path) -> None:
    first = open_store(path)
    first.write([room_point(at(10), occupied=True)], ns(at(10, 0, 1)))
    first.flush(ns(at(10, 0, 30)))
    first.close()

    second = open_store(path)
    second.write([], ns(at(10, 3, 1)))  # the room's state is unknown after the restart
    second.write([room_point(at(10, 3, 15), occupied=True)], ns(at(10, 3, 16)))
    second.write([], ns(at(10, 4, 1)))
    second.close()

    occupied = HistoryReader(path).buckets("room", HALL, "occupied", at(10), at(11))
    assert [(b.start, b.weight, b.total) for b in occupied] == [
        (at(10), 30.0, 30.0),
        (at(10, 3), 45.0, 45.0),
    ]


# --- SAMPLE: each point's fields are samples of its minute -----------------------------


def test_climate_samples_give_mean_minimum_and_maximum_per_minute(
    store: EmbeddedStore, path: Path
) -> None:
    points = [
        climate_point(at(10, 0, 5), 20.0),
        climate_point(at(10, 0, 25), 22.0),
        climate_point(at(10, 0, 45), 24.5),
        climate_point(at(10, 1, 10), 26.0),
        Point(OCCUPANCY, (("occupied", True), ("count", 3)), ns(at(10, 0, 10))),
        Point(OCCUPANCY, (("occupied", False), ("count", 0)), ns(at(10, 0, 40))),
        Point(OCCUPANCY, (("occupied", False), ("count", 0)), ns(at(10, 0, 50))),
    ]
    feed(store, points, at(10), at(10, 2, 30))
    reader = HistoryReader(path)

    temperature = reader.buckets("climate", dict(CLIMATE.tags), "temperature", at(10), at(11))
    assert temperature == [
        Bucket(at(10), 60, 3.0, 66.5, 20.0, 24.5),
        Bucket(at(10, 1), 60, 1.0, 26.0, 26.0, 26.0),
    ]
    assert temperature[0].mean == pytest.approx(66.5 / 3)
    occupied = reader.buckets("occupancy", HALL, "occupied", at(10), at(11))
    assert occupied == [Bucket(at(10), 60, 3.0, 1.0, 0.0, 1.0)]
    assert reader.buckets("occupancy", HALL, "count", at(10), at(11))[0].maximum == 3.0
    assert aggregation_of("climate") is Aggregation.SAMPLE
    assert aggregation_of("lock") is Aggregation.STEP


def test_a_late_sample_merges_into_its_written_minute(store: EmbeddedStore, path: Path) -> None:
    store.write([climate_point(at(10, 0, 5), 20.0)], ns(at(10, 0, 6)))
    store.write([], ns(at(10, 1, 1)))  # the 10:00 minute is written
    assert table(path, "rollup_minute") == [(1, "temperature", ns(at(10)) // 10**9, 1, 20, 20, 20)]

    store.write([climate_point(at(10, 0, 50), 30.0)], ns(at(10, 1, 2)))

    assert table(path, "rollup_minute") == [(1, "temperature", ns(at(10)) // 10**9, 2, 50, 20, 30)]


# --- flush and restart ----------------------------------------------------------------


def test_flush_and_reopen_mid_minute_loses_nothing_and_counts_nothing_twice(path: Path) -> None:
    first = open_store(path)
    first.write(
        [
            room_point(at(10), occupied=True),
            climate_point(at(10, 0, 10), 20.0),
            climate_point(at(10, 0, 20), 21.0),
        ],
        ns(at(10, 0, 25)),
    )
    first.flush(ns(at(10, 0, 30)))
    first.close()

    second = open_store(path)
    second.write([climate_point(at(10, 0, 40), 23.0)], ns(at(10, 0, 45)))
    second.write([room_point(at(10, 0, 45), occupied=True)], ns(at(10, 0, 50)))
    second.flush(ns(at(10, 0, 55)))  # a second flush in the same minute
    second.write([climate_point(at(10, 0, 58), 24.0)], ns(at(10, 0, 59)))
    second.write([], ns(at(10, 1, 0)))
    second.write([], ns(at(10, 1, 5)))
    second.close()

    reader = HistoryReader(path)
    assert reader.buckets("climate", HALL, "temperature", at(10), at(11)) == [
        Bucket(at(10), 60, 4.0, 88.0, 20.0, 24.0)
    ]
    # 10:00:00-10:00:30 before the restart, 10:00:45-10:01:00 after it
    assert reader.buckets("room", HALL, "occupied", at(10), at(11)) == [
        Bucket(at(10), 60, 45.0, 45.0, 1.0, 1.0)
    ]
    assert len(reader.points("climate", at(10), at(11))) == 4


def test_close_without_flush_says_what_it_did_not_write(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(path)
    store.write([climate_point(at(10, 0, 10), 20.0)], ns(at(10, 0, 11)))
    with caplog.at_level(logging.WARNING):
        store.close()
    assert "1 rollups not flushed" in caplog.text


# --- retention and downsampling -------------------------------------------------------


def day0_points() -> list[Point]:
    """2.5 hours of a hall: a sample every 20 s (exact binary values) and a room's day."""
    climate = [
        climate_point(at(10) + timedelta(seconds=20 * i), 20.0 + (i % 8) * 0.25)
        for i in range(3 * 60 * 3 - 90)  # 10:00:00 .. 12:29:40
    ]
    room = [
        room_point(at(10, 0, 30), occupied=True, count=3),
        room_point(at(10, 40), occupied=True, count=5),
        room_point(at(11, 15), occupied=False, count=0),
        room_point(at(12, 30), booked=False),  # occupancy unknown from here
    ]
    return climate + room


def hourly_sums(points: list[Point], field: str) -> dict[int, list[float]]:
    """Per hour (epoch s): [count, sum, min, max] of the samples, computed here."""
    hours: dict[int, list[float]] = {}
    for point in points:
        value = dict(point.fields)[field]
        assert isinstance(value, float)
        hour = point.time_ns // 10**9 // 3600 * 3600
        now = hours.setdefault(hour, [0.0, 0.0, value, value])
        now[0] += 1
        now[1] += value
        now[2] = min(now[2], value)
        now[3] = max(now[3], value)
    return hours


def test_maintain_on_day_31_and_731_downsamples_exactly_and_forgets_old_rows(path: Path) -> None:
    day0 = day0_points()
    store = open_store(path)
    feed(store, day0, at(10), at(12, 31), every=timedelta(seconds=30))
    store.flush(ns(at(12, 31)))
    store.close()
    minute_rows = table(path, "rollup_minute")

    store = open_store(path)  # a restart; a little of day 30 to keep
    recent = [
        climate_point(at(12, 0, 10, day=30), 25.0),
        climate_point(at(12, 1, 10, day=30), 26.0),
    ]
    feed(store, recent, at(12, day=30), at(12, 2, day=30))

    done = store.maintain(ns(at(6, day=31)))

    assert done == Maintenance(
        raw_deleted=len(day0),
        minutes_downsampled=len(minute_rows),
        minutes_deleted=len(minute_rows),
        hours_deleted=0,
    )
    day30 = ns(at(0, day=30)) // 10**9
    assert [row[2] for row in table(path, "rollup_minute")] == [
        day30 + 12 * 3600,
        day30 + 12 * 3600 + 60,
    ]
    reader = HistoryReader(path)
    assert reader.points("climate", at(0), at(0, day=60)) == recent
    assert reader.points("room", at(0), at(0, day=60)) == []

    # every hour row is the exact merge of its minute rows
    expected: dict[tuple[object, ...], list[float]] = {}
    for series, field, bucket, weight, total, low, high in minute_rows:
        assert isinstance(bucket, int)
        key = (series, field, bucket // 3600 * 3600)
        summary = expected.get(key)
        row = [float(weight), float(total), float(low), float(high)]  # type: ignore[arg-type]
        expected[key] = (
            row
            if summary is None
            else [
                summary[0] + row[0],
                summary[1] + row[1],
                min(summary[2], row[2]),
                max(summary[3], row[3]),
            ]
        )
    assert {row[:3]: list(row[3:]) for row in table(path, "rollup_hour")} == expected

    # and equals what the samples and the room's day say, computed independently
    climate_day0 = [point for point in day0 if point.series == CLIMATE]
    temperature = reader.buckets("climate", HALL, "temperature", at(0), at(0, day=1), step=3600)
    assert {
        ns(b.start) // 10**9: [b.weight, b.total, b.minimum, b.maximum] for b in temperature
    } == (hourly_sums(climate_day0, "temperature"))
    occupied = reader.buckets("room", HALL, "occupied", at(0), at(0, day=1), step=3600)
    assert [(b.start, b.seconds, b.weight, b.total) for b in occupied] == [
        (at(10), 3600, 3570.0, 3570.0),
        (at(11), 3600, 3600.0, 900.0),
        (at(12), 3600, 1800.0, 0.0),
    ]
    count = reader.buckets("room", HALL, "count", at(0), at(0, day=1), step=3600)
    assert [(b.total, b.minimum, b.maximum) for b in count] == [
        (3 * 2370 + 5 * 1200, 3.0, 5.0),
        (5 * 900, 0.0, 5.0),
        (0.0, 0.0, 0.0),
    ]

    before = {name: table(path, name) for name in ("raw", "rollup_minute", "rollup_hour", "meta")}
    assert store.maintain(ns(at(6, day=31))) == Maintenance(0, 0, 0, 0)
    assert {name: table(path, name) for name in before} == before

    day0_hours = len(table(path, "rollup_hour"))
    done = store.maintain(ns(at(6, day=731)))
    assert done == Maintenance(
        raw_deleted=2, minutes_downsampled=2, minutes_deleted=2, hours_deleted=day0_hours
    )
    assert table(path, "raw") == []
    assert table(path, "rollup_minute") == []
    assert {row[2] for row in table(path, "rollup_hour")} == {day30 + 12 * 3600}
    assert reader.buckets("climate", HALL, "temperature", at(0), at(0, day=60), step=3600) == [
        Bucket(at(12, day=30), 3600, 2.0, 51.0, 25.0, 26.0)
    ]
    assert store.maintain(ns(at(6, day=731))) == Maintenance(0, 0, 0, 0)
    store.close()


# --- reading ----------------------------------------------------------------------------


def test_buckets_span_hour_only_and_minute_data_at_any_step(path: Path) -> None:
    store = open_store(path, retention_days=1)
    samples = [
        climate_point(at(20) + timedelta(minutes=i, seconds=30), 18.0 + (i % 16) * 0.5)
        for i in range(8 * 60)  # 20:00 on day 0 .. 04:00 on day 1, one sample a minute
    ]
    feed(store, samples, at(20), at(4, 1, day=1), every=timedelta(minutes=1))
    store.maintain(ns(at(2, 30, day=2)))  # minutes from 02:00 on day 1, hours before
    store.close()
    reader = HistoryReader(path)
    start, end = at(22), at(3, day=1)

    def expected(first: datetime, last: datetime) -> list[float]:
        values = [
            dict(point.fields)["temperature"]
            for point in samples
            if ns(first) <= point.time_ns < ns(last)
        ]
        numbers = [float(value) for value in values]
        return [float(len(numbers)), sum(numbers), min(numbers), max(numbers)]

    def summary(bucket: Bucket) -> list[float]:
        return [bucket.weight, bucket.total, bucket.minimum, bucket.maximum]

    hours = [at(22), at(23), at(0, day=1), at(1, day=1)]
    by_minute = reader.buckets("climate", HALL, "temperature", start, end, step=60)
    assert [(b.start, b.seconds) for b in by_minute] == [(hour, 3600) for hour in hours] + [
        (at(2, minute, day=1), 60) for minute in range(60)
    ]
    for bucket in by_minute:
        last = bucket.start + timedelta(seconds=bucket.seconds)
        assert summary(bucket) == expected(bucket.start, last)

    quarters = reader.buckets("climate", HALL, "temperature", start, end, step=900)
    assert [(b.start, b.seconds) for b in quarters] == [(hour, 3600) for hour in hours] + [
        (at(2, minute, day=1), 900) for minute in (0, 15, 30, 45)
    ]
    assert [b.weight for b in quarters[4:]] == [15.0] * 4
    assert summary(quarters[5]) == expected(at(2, 15, day=1), at(2, 30, day=1))

    hourly = reader.buckets("climate", HALL, "temperature", start, end, step=3600)
    assert [(b.start, b.seconds) for b in hourly] == [
        (hour, 3600) for hour in [*hours, at(2, day=1)]
    ]
    for bucket in hourly:
        assert summary(bucket) == expected(bucket.start, bucket.start + timedelta(hours=1))

    whole = reader.buckets("climate", HALL, "temperature", start, end, step=5 * 3600)
    assert [summary(bucket) for bucket in whole] == [expected(start, end)]

    with pytest.raises(ValueError, match="multiple of 60"):
        reader.buckets("climate", HALL, "temperature", start, end, step=90)


def test_buckets_merge_every_series_whose_tags_contain_the_query(
    store: EmbeddedStore, path: Path
) -> None:
    store.write(
        [climate_point(at(10, 0, 10), 20.0), climate_point(at(10, 0, 20), 24.0, CLIMATE_2)],
        ns(at(10, 1, 1)),
    )
    reader = HistoryReader(path)

    both = reader.buckets("climate", HALL, "temperature", at(10), at(11))
    one = reader.buckets("climate", dict(CLIMATE_2.tags), "temperature", at(10), at(11))
    other_room = reader.buckets("climate", {"room": "gym"}, "temperature", at(10), at(11))

    assert both == [Bucket(at(10), 60, 2.0, 44.0, 20.0, 24.0)]
    assert one == [Bucket(at(10), 60, 1.0, 24.0, 24.0, 24.0)]
    assert other_room == []
    assert reader.buckets("climate", HALL, "humidity", at(10), at(11)) == []
    assert reader.series("climate") == [CLIMATE, CLIMATE_2]


def test_points_come_back_with_every_field_type_exactly(store: EmbeddedStore, path: Path) -> None:
    fields = (
        ("on", True),
        ("off", False),
        ("zero", 0),
        ("negative", -5),
        ("largest", 2**63 - 1),
        ("smallest", -(2**63)),
        ("whole", 21.0),
        ("negative_zero", -0.0),
        ("tenth", 0.1),
        ("tiny", 5e-324),
        ("huge", 1.7976931348623157e308),
        ("mode", "cool"),
        ("text", 'a "quote", a \\, a\nnew line, 中文 and 🙂'),
        ("empty", ""),
    )
    ac = Series.of("ac", {"site": SITE, "room": "hall", "device": "ac-1"})
    written = [Point(ac, fields, ns(at(10, 0, 1))), Point(ac, (("mode", "heat"),), ns(at(10)))]
    store.write(written, ns(at(10, 0, 2)))

    got = HistoryReader(path).points("ac", at(10), at(11))

    assert got == sorted(written, key=lambda point: point.time_ns)
    assert [(name, type(value), value) for name, value in got[1].fields] == [
        (name, type(value), value) for name, value in fields
    ]
    assert str(got[1].fields[7][1]) == "-0.0"


def test_the_same_series_and_nanosecond_is_one_raw_point_with_merged_fields(
    store: EmbeddedStore, path: Path
) -> None:
    store.write(
        [Point(CLIMATE, (("temperature", 20.0), ("humidity", 40.0)), ns(at(10)))], ns(at(10))
    )
    store.write([Point(CLIMATE, (("temperature", 21.0),), ns(at(10)))], ns(at(10)))

    (point,) = HistoryReader(path).points("climate", at(10), at(11))
    assert dict(point.fields) == {"temperature": 21.0, "humidity": 40.0}


def test_without_raw_points_only_rollups_are_kept(path: Path) -> None:
    store = open_store(path, keep_raw=False)
    store.write([climate_point(at(10, 0, 10), 20.0)], ns(at(10, 1, 1)))
    store.close()
    reader = HistoryReader(path)

    assert reader.points("climate", at(10), at(11)) == []
    assert reader.buckets("climate", HALL, "temperature", at(10), at(11)) == [
        Bucket(at(10), 60, 1.0, 20.0, 20.0, 20.0)
    ]


def test_a_reader_before_the_store_exists_answers_empty(tmp_path: Path) -> None:
    reader = HistoryReader(tmp_path / "not-yet.sqlite3")
    assert reader.buckets("room", HALL, "occupied", at(10), at(11)) == []
    assert reader.points("room", at(10), at(11)) == []
    assert reader.series("room") == []
    assert not (tmp_path / "not-yet.sqlite3").exists()


# --- bad input --------------------------------------------------------------------------


def test_a_point_that_cannot_be_stored_is_rejected_whole_and_the_rest_are_kept(
    store: EmbeddedStore, path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    counter = Series.of("people", {"site": SITE, "device": "gate"})
    bad = [
        Point(counter, (("entries", 2**63),), ns(at(10, 0, 2))),  # beyond InfluxDB's int64
        Point(counter, (("entries", -(2**63) - 1),), ns(at(10, 0, 3))),
        Point(CLIMATE, (("temperature", float("nan")),), ns(at(10, 0, 4))),
        Point(CLIMATE, (("temperature", float("inf")),), ns(at(10, 0, 5))),
        Point(CLIMATE, (("te\ud800mp", 1.0),), ns(at(10, 0, 6))),
        Point(ROOM, (("occupied", True),), ns(at(12))),  # two hours ahead of now
        Point(ROOM, (("occupied", True),), ns(at(10, day=-31))),  # older than retention
    ]
    good = [
        Point(counter, (("entries", 3), ("inside", 2**63 - 1)), ns(at(10, 0, 1))),
        climate_point(at(10, 0, 7), 22.0),
    ]
    with caplog.at_level(logging.WARNING):
        store.write([bad[0], good[0], *bad[1:], good[1]], ns(at(10, 0, 10)))
        store.write([], ns(at(10, 1, 1)))

    assert store.points_rejected == len(bad)
    assert "does not fit in 64 bits" in caplog.text
    reader = HistoryReader(path)
    assert reader.points("people", at(10), at(11)) == [good[0]]
    assert reader.points("climate", at(0), at(13)) == [good[1]]
    assert reader.points("room", at(0, day=-40), at(13)) == []
    assert reader.buckets("people", {}, "entries", at(10), at(11)) == [
        Bucket(at(10), 60, 1.0, 3.0, 3.0, 3.0)
    ]
    assert reader.buckets("climate", HALL, "temperature", at(10), at(11))[0].weight == 1.0


def test_odd_tags_are_stored_and_found_and_unstorable_ones_rejected(
    store: EmbeddedStore, path: Path
) -> None:
    odd_tags = {"site": SITE, "room": 'a,b=c d"e\\f\n活动室', "device": "=,"}
    odd = Series.of("climate", odd_tags)
    broken = Series.of("climate", {"site": SITE, "room": "hall", "device": "bad\ud800"})
    store.write(
        [
            climate_point(at(10, 0, 1), 20.0, odd),
            climate_point(at(10, 0, 2), 21.0, broken),
            climate_point(at(10, 0, 3), 22.0, broken),
            climate_point(at(10, 0, 4), 23.0),
        ],
        ns(at(10, 1, 1)),
    )
    store.write([climate_point(at(10, 1, 5), 24.0, broken)], ns(at(10, 1, 6)))

    assert store.points_rejected == 3
    reader = HistoryReader(path)
    assert reader.series("climate") == [odd, CLIMATE]
    assert reader.buckets("climate", odd_tags, "temperature", at(10), at(11)) == [
        Bucket(at(10), 60, 1.0, 20.0, 20.0, 20.0)
    ]
    assert reader.buckets("climate", HALL, "temperature", at(10), at(11)) == [
        Bucket(at(10), 60, 1.0, 23.0, 23.0, 23.0)
    ]


def test_a_failed_write_changes_nothing_so_the_same_batch_can_be_given_again(
    store: EmbeddedStore, path: Path
) -> None:
    store.write([room_point(at(10), occupied=True)], ns(at(10, 0, 1)))
    batch = [
        climate_point(at(10, 0, 30), 20.0),
        climate_point(at(10, 1, 30), 21.0),
        room_point(at(10, 1, 40), occupied=False),
    ]
    execute(  # the disk "fails" on the rollup insert, after the raw points went in
        path,
        "CREATE TRIGGER refuse BEFORE INSERT ON rollup_minute "
        "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END",
    )
    with pytest.raises(sqlite3.Error, match="disk I/O error"):
        store.write(batch, ns(at(10, 2, 5)))
    assert len(table(path, "raw")) == 1  # the batch's raw points were rolled back too
    execute(path, "DROP TRIGGER refuse")

    store.write(batch, ns(at(10, 2, 5)))
    store.write([], ns(at(10, 3, 1)))

    reader = HistoryReader(path)
    assert len(reader.points("climate", at(10), at(11))) == 2
    assert [b.weight for b in reader.buckets("climate", HALL, "temperature", at(10), at(11))] == [
        1.0,
        1.0,
    ]
    occupied = reader.buckets("room", HALL, "occupied", at(10), at(11))
    assert [(b.weight, b.total) for b in occupied] == [(60.0, 60.0), (60.0, 40.0), (60.0, 0.0)]


def test_a_file_from_a_newer_schema_is_refused(path: Path) -> None:
    open_store(path).close()
    execute(path, "UPDATE meta SET value = '99' WHERE key = 'schema_version'")

    with pytest.raises(RuntimeError, match="schema version 99"):
        open_store(path)


def test_settings_that_would_delete_history_before_it_is_downsampled_are_refused(
    path: Path,
) -> None:
    with pytest.raises(ValueError, match="history at least retention"):
        EmbeddedStore(path, keep_raw=True, retention=timedelta(days=30), history=timedelta(days=7))


def test_a_room_occupied_for_three_hours_without_a_point_gets_180_full_minutes(
    store: EmbeddedStore, path: Path
) -> None:
    store.write([room_point(at(10), occupied=True, count=4)], ns(at(10, 0, 1)))
    store.write([], ns(at(13, 0, 0, day=0)))  # the writer stalled; no point meanwhile

    occupied = HistoryReader(path).buckets("room", HALL, "occupied", at(0), at(0, day=1))
    assert len(occupied) == 180
    assert {(b.seconds, b.weight, b.total) for b in occupied} == {(60, 60.0, 60.0)}
    hours = HistoryReader(path).buckets("room", HALL, "count", at(0), at(0, day=1), step=3600)
    assert [(b.weight, b.mean) for b in hours] == [(3600.0, 4.0)] * 3


def test_readers_in_other_threads_see_whole_commits_while_the_store_writes(
    store: EmbeddedStore, path: Path
) -> None:
    reader = HistoryReader(path)
    stop = threading.Event()
    views: list[list[float]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def read(seen: list[float]) -> None:
        try:
            while not stop.is_set():
                buckets = reader.buckets("climate", HALL, "temperature", at(0), at(0, day=1))
                assert all(bucket.weight == 2.0 for bucket in buckets)  # never half a commit
                seen.append(sum(bucket.weight for bucket in buckets))
        except BaseException as error:  # reported by the test below
            errors.append(error)

    threads = [threading.Thread(target=read, args=(seen,)) for seen in views]
    for thread in threads:
        thread.start()
    for minute in range(120):
        start = at(10) + timedelta(minutes=minute)
        store.write(
            [
                climate_point(start + timedelta(seconds=10), 20.0),
                climate_point(start + timedelta(seconds=40), 21.0),
            ],
            ns(start + timedelta(seconds=61)),
        )
    stop.set()
    for thread in threads:
        thread.join()

    assert errors == []
    assert all(seen == sorted(seen) for seen in views)  # each thread's view only grows
    assert all(seen for seen in views)
    final = reader.buckets("climate", HALL, "temperature", at(0), at(0, day=1))
    assert (len(final), final[-1].start) == (120, at(11, 59))
