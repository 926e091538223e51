"""VirtualClock, and SilenceWatch judging devices that stopped talking.

Time moves only through ``VirtualClock.advance``: nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from controller.bus import EventBus
from controller.clock import VirtualClock
from controller.events import AvailabilityChanged, AvailabilitySource, ReadingReceived
from controller.readings import OccupancyReading, Reading
from controller.silence import SilenceWatch
from controller.site import Site, parse_site
from controller.state import LiveState

START = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)

# --- VirtualClock ----------------------------------------------------------------------


def test_default_start_is_aware_and_time_stands_still() -> None:
    clock = VirtualClock()

    assert clock.now().tzinfo is not None
    assert clock.monotonic() == 0.0
    assert clock.now() == clock.now()


async def test_advance_moves_now_and_monotonic() -> None:
    clock = VirtualClock(START)

    await clock.advance(90)

    assert clock.now() == START + timedelta(seconds=90)
    assert clock.monotonic() == 90.0

    await clock.advance(timedelta(minutes=5))

    assert clock.now() == START + timedelta(seconds=390)
    assert clock.monotonic() == 390.0


async def test_time_does_not_go_backwards() -> None:
    clock = VirtualClock(START)
    await clock.advance(10)

    with pytest.raises(ValueError, match="backwards"):
        await clock.advance(-1)
    with pytest.raises(ValueError, match="backwards"):
        await clock.advance(timedelta(seconds=-1))

    assert clock.monotonic() == 10.0


def test_a_naive_start_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        VirtualClock(datetime(2026, 11, 23, 9, 0))  # naive on purpose


async def test_sleepers_wake_in_deadline_order_at_their_own_time() -> None:
    clock = VirtualClock(START)
    woke: list[tuple[str, datetime]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    tasks = [
        asyncio.create_task(sleeper(name, seconds))
        for name, seconds in (("c", 30), ("a", 10), ("d", 500), ("b", 20))
    ]
    await clock.advance(0)
    assert clock.pending == 4

    await clock.advance(100)  # far past three of them in one jump

    assert woke == [
        ("a", START + timedelta(seconds=10)),
        ("b", START + timedelta(seconds=20)),
        ("c", START + timedelta(seconds=30)),
    ]
    assert clock.now() == START + timedelta(seconds=100)
    assert clock.pending == 1

    await clock.advance(400)

    assert woke[-1] == ("d", START + timedelta(seconds=500))
    await asyncio.gather(*tasks)


async def test_a_sleeper_that_sleeps_again_is_woken_within_the_same_advance() -> None:
    clock = VirtualClock(START)
    ticks: list[float] = []

    async def every_ten_seconds() -> None:
        while True:
            await clock.sleep(10)
            ticks.append(clock.monotonic())

    task = asyncio.create_task(every_ten_seconds())
    await clock.advance(35)

    assert ticks == [10.0, 20.0, 30.0]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_sleeper_is_not_woken_before_its_deadline() -> None:
    clock = VirtualClock(START)
    sleeper = asyncio.create_task(clock.sleep(60))

    await clock.advance(59.9)
    assert not sleeper.done()

    await clock.advance(0.1)
    assert sleeper.done()


async def test_a_cancelled_sleeper_does_not_stop_the_others() -> None:
    clock = VirtualClock(START)
    cancelled = asyncio.create_task(clock.sleep(5))
    kept = asyncio.create_task(clock.sleep(10))
    await clock.advance(0)
    cancelled.cancel()

    await clock.advance(10)

    assert cancelled.cancelled()
    assert kept.done()
    assert clock.pending == 0


# --- SilenceWatch ----------------------------------------------------------------------

# A sensor reporting every 10 s, a lock every 60 s, and a Modbus device that is
# polled (no reporting interval, so silence never applies to it).
SILENCE_SITE = """
[site]
id = "quiet"
name = "Quiet center"
hours = { open = "08:00", close = "20:00" }

[rules]
offline_after_missed = 3

[[rooms]]
id = "hall"
name = "Hall"

[[devices]]
id = "occ-hall"
kind = "occupancy"
room = "hall"
interval = "10s"

[[devices]]
id = "lock-hall"
kind = "lock"
room = "hall"
interval = "60s"

[[devices]]
id = "ac-hall"
kind = "air_conditioner"
room = "hall"
host = "127.0.0.1"
profile = "generic-ac"
"""

SENSOR_DEADLINE = 30  # 10 s interval x 3 missed
LOCK_DEADLINE = 180  # 60 s interval x 3 missed


@dataclass
class Watched:
    site: Site
    clock: VirtualClock
    bus: EventBus
    state: LiveState
    watch: SilenceWatch
    changes: list[AvailabilityChanged] = field(default_factory=list)

    def reading(self, device_id: str, reading: Reading) -> None:
        self.bus.publish(ReadingReceived(device_id, reading, self.clock.now()))

    def offline_by_silence(self) -> list[str]:
        return [
            change.device_id
            for change in self.changes
            if change.source is AvailabilitySource.SILENCE and not change.online
        ]


@pytest.fixture
def watched() -> Watched:
    site = parse_site(SILENCE_SITE, "quiet.toml")
    clock = VirtualClock(START)
    bus = EventBus()
    state = LiveState(site, bus)
    state.start()
    watch = SilenceWatch(state, bus, clock, missed=site.rules.offline_after_missed)
    result = Watched(site, clock, bus, state, watch)
    bus.subscribe(AvailabilityChanged, result.changes.append)
    return result


async def test_a_never_heard_device_is_judged_from_start(watched: Watched) -> None:
    watched.watch.check()  # the controller starts

    await watched.clock.advance(SENSOR_DEADLINE - 1)  # one tick short
    watched.watch.check()
    assert watched.changes == []
    assert watched.state.device("occ-hall").online is None

    await watched.clock.advance(1)
    watched.watch.check()

    assert watched.changes == [
        AvailabilityChanged(
            "occ-hall", False, AvailabilitySource.SILENCE, START + timedelta(seconds=30)
        )
    ]
    assert watched.state.device("occ-hall").online is False
    assert watched.state.device("occ-hall").availability_source is AvailabilitySource.SILENCE
    assert watched.state.device("lock-hall").online is None  # its deadline is 180 s


async def test_a_silent_device_goes_offline_after_the_missed_intervals(watched: Watched) -> None:
    watched.watch.check()
    await watched.clock.advance(5)
    watched.reading("occ-hall", OccupancyReading(occupied=True))
    assert watched.state.room("hall").occupied is True

    await watched.clock.advance(SENSOR_DEADLINE - 1)
    watched.watch.check()
    assert watched.state.device("occ-hall").online is True
    assert "occ-hall" not in watched.offline_by_silence()

    await watched.clock.advance(1)
    watched.watch.check()

    assert watched.offline_by_silence() == ["occ-hall"]
    assert watched.state.device("occ-hall").online is False
    assert watched.state.room("hall").occupied is None  # its last word no longer counts


async def test_an_offline_device_is_reported_once(watched: Watched) -> None:
    watched.watch.check()
    await watched.clock.advance(SENSOR_DEADLINE)
    watched.watch.check()
    await watched.clock.advance(SENSOR_DEADLINE)
    watched.watch.check()

    assert watched.offline_by_silence() == ["occ-hall"]


async def test_a_device_that_reports_again_is_online_again(watched: Watched) -> None:
    watched.watch.check()
    await watched.clock.advance(SENSOR_DEADLINE)
    watched.watch.check()
    assert watched.state.device("occ-hall").online is False

    await watched.clock.advance(3)
    watched.reading("occ-hall", OccupancyReading(occupied=False))
    watched.watch.check()

    assert watched.state.device("occ-hall").online is True
    assert watched.state.device("occ-hall").availability_source is AvailabilitySource.READING
    assert watched.state.room("hall").occupied is False

    # ...and is judged afresh from that reading.
    await watched.clock.advance(SENSOR_DEADLINE - 1)
    watched.watch.check()
    assert watched.state.device("occ-hall").online is True
    await watched.clock.advance(1)
    watched.watch.check()
    assert watched.offline_by_silence() == ["occ-hall", "occ-hall"]


async def test_polled_devices_are_never_judged_by_silence(watched: Watched) -> None:
    watched.watch.check()
    await watched.clock.advance(timedelta(days=1))
    watched.watch.check()

    assert sorted(watched.offline_by_silence()) == ["lock-hall", "occ-hall"]
    assert watched.state.device("ac-hall").online is None


def test_the_check_period_is_a_tenth_of_the_shortest_deadline_within_bounds(
    watched: Watched,
) -> None:
    # 30 s / 10 = 3 s, capped at 1 s.
    assert watched.watch.tick() == timedelta(seconds=1)


@pytest.fixture
async def running(watched: Watched) -> AsyncIterator[Watched]:
    task = asyncio.create_task(watched.watch.run())
    await watched.clock.advance(0)  # the loop makes its first check at start
    yield watched
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_the_run_loop_marks_silent_devices_offline(running: Watched) -> None:
    await running.clock.advance(SENSOR_DEADLINE - 1)
    assert running.offline_by_silence() == []

    await running.clock.advance(1)

    assert running.offline_by_silence() == ["occ-hall"]
    assert running.changes[0].time == START + timedelta(seconds=SENSOR_DEADLINE)

    running.reading("occ-hall", OccupancyReading(occupied=True))
    await running.clock.advance(LOCK_DEADLINE - SENSOR_DEADLINE - 1)
    assert running.offline_by_silence() == ["occ-hall", "occ-hall"]  # silent again after 30 s
    assert running.state.device("lock-hall").online is None

    await running.clock.advance(1)

    assert running.offline_by_silence() == ["occ-hall", "occ-hall", "lock-hall"]
    assert running.state.device("lock-hall").online is False


async def test_a_device_back_online_by_lwt_gets_a_fresh_deadline(watched: Watched) -> None:
    watched.watch.check()
    watched.reading("occ-hall", OccupancyReading(occupied=False))
    await watched.clock.advance(5)
    watched.bus.publish(
        AvailabilityChanged("occ-hall", False, AvailabilitySource.LWT, watched.clock.now())
    )
    await watched.clock.advance(timedelta(hours=1))
    watched.bus.publish(
        AvailabilityChanged("occ-hall", True, AvailabilitySource.LWT, watched.clock.now())
    )

    await watched.clock.advance(1)
    watched.watch.check()

    assert watched.state.device("occ-hall").online is True
    assert "occ-hall" not in watched.offline_by_silence()
