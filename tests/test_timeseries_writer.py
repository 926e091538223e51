"""The time-series writer with the embedded store: batches off the loop, nothing lost on stop.

The writer runs on a virtual clock (its flush interval), its worker thread on
real SQLite; waits poll the store with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.alarms import AlarmBook
from controller.clock import VirtualClock
from controller.database import open_database
from controller.event_log import EventLog
from controller.timeseries.embedded import HistoryReader
from controller.timeseries.points import Point, Series, time_ns
from controller.timeseries.writer import TIMESERIES_FILE, TimeSeriesWriter, WriterOptions
from tests.conftest import wait_until

T = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
CLIMATE = Series.of("climate", {"site": "changbai", "room": "love-room", "device": "t1"})


def writer_for(data_dir: Path, clock: VirtualClock, **options: object) -> TimeSeriesWriter:
    db = open_database(data_dir)
    events = EventLog(db, clock)
    return TimeSeriesWriter(
        data_dir,
        clock,
        alarms=AlarmBook(db, events, clock),
        events=events,
        influx=None,
        spool_max_bytes=1 << 20,
        options=WriterOptions(**options),  # type: ignore[arg-type]
    )


def stored(data_dir: Path) -> list[float]:
    points = HistoryReader(data_dir / TIMESERIES_FILE).points(
        "climate", T - timedelta(days=1), T + timedelta(days=1)
    )
    return [float(dict(point.fields)["temperature"]) for point in points]


async def test_points_reach_the_embedded_store_each_flush_interval(tmp_path: Path) -> None:
    clock = VirtualClock(T)
    writer = writer_for(tmp_path, clock, flush_interval=1.0, batch_size=1000)
    writer.start()
    runner = asyncio.create_task(writer.run())
    for i in range(10):
        # Distinct timestamps: two points of one series at one instant are one point.
        writer.add(Point(CLIMATE, (("temperature", 20.0 + i),), time_ns(clock.now()) + i))
    assert stored(tmp_path) == []  # still on the loop: nothing written synchronously
    await clock.advance(1.0)
    await wait_until(lambda: len(stored(tmp_path)) == 10, message="ten points stored")
    # The store process reports its figures a few times a second.
    await wait_until(lambda: writer.status()["points_written"] == 10, message="reported")
    assert writer.status()["backend"] == "embedded"
    runner.cancel()
    await writer.stop()


async def test_a_full_batch_goes_at_once_and_stop_keeps_the_rest(tmp_path: Path) -> None:
    clock = VirtualClock(T)
    writer = writer_for(tmp_path, clock, flush_interval=60.0, batch_size=100)
    writer.start()
    for i in range(150):
        writer.add(Point(CLIMATE, (("temperature", float(i)),), time_ns(T) + i))
    # 100 points fill a batch: it leaves without waiting for the interval.
    await wait_until(lambda: len(stored(tmp_path)) == 100, message="the full batch")
    await writer.stop()  # the last 50 are handed over and stored before the thread ends
    assert sorted(stored(tmp_path)) == [float(i) for i in range(150)]


async def test_the_store_keeps_history_across_a_restart(tmp_path: Path) -> None:
    clock = VirtualClock(T)
    first = writer_for(tmp_path, clock)
    first.start()
    first.add(Point(CLIMATE, (("temperature", 21.5),), time_ns(T)))
    await first.stop()
    second = writer_for(tmp_path, clock)
    second.start()
    second.add(Point(CLIMATE, (("temperature", 22.5),), time_ns(T) + 1))
    await second.stop()
    assert stored(tmp_path) == [21.5, 22.5]


async def test_retention_and_downsampling_run_on_the_clock(tmp_path: Path) -> None:
    """A month on: raw points past the retention are gone, their hour's rollup stays."""
    clock = VirtualClock(T)
    writer = writer_for(
        tmp_path,
        clock,
        flush_interval=3600.0,
        retention=timedelta(days=30),
        history=timedelta(days=60),
    )
    writer.start()
    runner = asyncio.create_task(writer.run())
    for minute, temperature in enumerate((30.0, 32.0, 34.0)):
        writer.add(
            Point(CLIMATE, (("temperature", temperature),), time_ns(T) + minute * 60 * 10**9)
        )
    await clock.advance(3600)
    await wait_until(lambda: len(stored(tmp_path)) == 3, message="the day's points")
    reader = HistoryReader(tmp_path / TIMESERIES_FILE)

    def hour_of_t() -> list[tuple[float, float, float | None]]:
        return [
            (bucket.minimum, bucket.maximum, bucket.mean)
            for bucket in reader.buckets(
                "climate", {"device": "t1"}, "temperature", T, T + timedelta(hours=1), step=3600
            )
        ]

    assert hour_of_t() == [(30.0, 34.0, 32.0)]
    await clock.advance(timedelta(days=29))
    assert len(stored(tmp_path)) == 3  # within the retention: kept

    await clock.advance(timedelta(days=2))
    await wait_until(lambda: stored(tmp_path) == [], message="raw points past the retention")
    assert hour_of_t() == [(30.0, 34.0, 32.0)]  # downsampled, not lost

    await clock.advance(timedelta(days=30))
    await wait_until(lambda: hour_of_t() == [], message="hour rollups past the history")
    runner.cancel()
    await writer.stop()


async def test_a_failing_embedded_store_alarms_and_loses_nothing(tmp_path: Path) -> None:
    """The store's file cannot be opened (here: a directory stands in its place): the
    points wait, store_unavailable is raised, and all are stored once it can be."""
    blocker = tmp_path / TIMESERIES_FILE
    blocker.mkdir()
    clock = VirtualClock(T)
    db = open_database(tmp_path)
    events = EventLog(db, clock)
    alarms = AlarmBook(db, events, clock)
    writer = TimeSeriesWriter(
        tmp_path,
        clock,
        alarms=alarms,
        events=events,
        influx=None,
        spool_max_bytes=1 << 20,
        options=WriterOptions(retry_min=0.01, retry_max=0.05, alarm_after=5.0),
    )
    writer.start()
    runner = asyncio.create_task(writer.run())
    for i in range(3):
        writer.add(Point(CLIMATE, (("temperature", 20.0 + i),), time_ns(T) + i))
    await clock.advance(1)
    await wait_until(lambda: writer.status()["status"] == "degraded", message="degraded")
    assert not alarms.is_active("store_unavailable", "timeseries-embedded")  # not yet a minute
    await clock.advance(6)

    async def alarmed() -> bool:
        await clock.advance(1)  # the writer looks at the store's report each flush interval
        return alarms.is_active("store_unavailable", "timeseries-embedded")

    deadline = asyncio.get_running_loop().time() + 5
    while not await alarmed():
        assert asyncio.get_running_loop().time() < deadline, "no store_unavailable"
    assert "timeseries.sqlite3" in (writer.status()["last_error"] or "")

    blocker.rmdir()
    await wait_until(lambda: len(stored(tmp_path)) == 3, message="the waiting points stored")
    await wait_until(lambda: writer.status()["status"] == "ok", message="reported ok")
    await clock.advance(1)
    assert not alarms.is_active("store_unavailable", "timeseries-embedded")
    runner.cancel()
    await writer.stop()


async def test_a_store_process_that_dies_is_alarmed_and_started_again(tmp_path: Path) -> None:
    clock = VirtualClock(T)
    db = open_database(tmp_path)
    events = EventLog(db, clock)
    alarms = AlarmBook(db, events, clock)
    writer = TimeSeriesWriter(
        tmp_path, clock, alarms=alarms, events=events, influx=None, spool_max_bytes=1 << 20
    )
    writer.start()
    runner = asyncio.create_task(writer.run())
    writer.add(Point(CLIMATE, (("temperature", 20.0),), time_ns(T)))
    await clock.advance(1)
    await wait_until(lambda: stored(tmp_path) == [20.0], message="the first point")
    first = writer.store_process_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)

    async def restarted() -> bool:
        await clock.advance(1)
        pid = writer.store_process_pid
        return pid not in (None, first) and writer.status()["status"] == "ok"

    deadline = asyncio.get_running_loop().time() + 10
    seen_alarm = False
    while not await restarted():
        seen_alarm |= alarms.is_active("store_unavailable", "timeseries-process")
        assert asyncio.get_running_loop().time() < deadline, "not started again"
    assert seen_alarm
    writer.add(Point(CLIMATE, (("temperature", 21.0),), time_ns(T) + 1))
    await clock.advance(1)
    await wait_until(lambda: stored(tmp_path) == [20.0, 21.0], message="stored after restart")
    assert not alarms.is_active("store_unavailable", "timeseries-process")
    runner.cancel()
    await writer.stop()
