"""The visitor counter on a virtual clock: real SQLite, the event log, the deadline loop.

The centrepiece is a busy Saturday at the Changbai center: visitors arrive
and leave at random (seeded) times, the entrance counter reports its totals
every 10 s over a network that drops, repeats and delays messages, the
counter reboots at noon, and the controller itself restarts mid-afternoon.
The day's numbers must still equal what passed the door, hour by hour.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from controller.clock import VirtualClock
from controller.readings import CounterReading, OccupancyReading
from controller.site import Site
from controller.visitors import VisitorCounter
from tests.visitors_rig import VisitorRig, with_side_counter

SH = ZoneInfo("Asia/Shanghai")
SATURDAY = date(2026, 11, 28)
SUNDAY = SATURDAY + timedelta(days=1)


def at(hour: int, minute: int = 0, second: float = 0, *, day: date = SATURDAY) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=SH) + timedelta(
        seconds=second
    )


OPENING = at(8)
REBOOT = at(12)
CONTROLLER_DOWN = at(15, 0, 5)
CONTROLLER_UP = at(15, 3)
SUNDAY_2AM = at(2, day=SUNDAY)

MakeRig = Callable[..., Awaitable[VisitorRig]]


@pytest.fixture
async def make_rig(site: Site, tmp_path: Path) -> AsyncIterator[MakeRig]:
    made: list[VisitorRig] = []

    async def make(*, start: datetime = OPENING, on: Site | None = None) -> VisitorRig:
        rig = VisitorRig(on or site, VirtualClock(start), data_dir=tmp_path / f"data{len(made)}")
        await rig.start()
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.stop()


async def tick(rig: VisitorRig, seconds: float = 10) -> None:
    await rig.clock.advance(seconds)


# --- A busy Saturday ----------------------------------------------------------------------


@dataclass
class Saturday:
    """What really passed the entrance, and what the counter reported of it."""

    seed: int
    reboot: datetime = REBOOT
    restart_down: datetime = CONTROLLER_DOWN  # the controller stops ...
    restart_up: datetime = CONTROLLER_UP  # ... and comes back
    end: datetime = SUNDAY_2AM
    entries: list[datetime] = field(default_factory=list)  # sorted
    exits: list[datetime] = field(default_factory=list)  # sorted

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        stay_late = 2  # two people still inside at midnight, leaving at 00:30
        moment = at(8, 30)
        while moment < at(20, 30):
            hour = moment.hour
            rate = 1.6 if hour in (9, 10, 14, 15) else 0.9 if hour < 19 else 0.4  # per minute
            moment += timedelta(seconds=rng.expovariate(rate / 60))
            arrival = moment
            if self._quiet(arrival) or arrival >= at(20, 30):
                continue
            departure = arrival + timedelta(minutes=rng.uniform(3, 100))
            if stay_late:
                stay_late -= 1
                departure = at(0, 30, rng.uniform(0, 600), day=SUNDAY)
            elif departure >= at(20, 57):
                departure = at(20, 40, rng.uniform(0, 600))
            while self._quiet(departure):
                departure += timedelta(minutes=3)
            self.entries.append(arrival)
            self.exits.append(departure)
        self.entries.sort()
        self.exits.sort()

    @staticmethod
    def _quiet(moment: datetime) -> bool:
        # Nobody passes in the last two minutes of an hour, so every hour ends
        # with several reports that already carry all of its people: a dropped or
        # late report then cannot move a person into the next hour.
        return moment.astimezone(SH).minute >= 58

    def passed(self, until: datetime, since: datetime | None = None) -> tuple[int, int]:
        """Entries and exits in ``[since, until)``."""
        low_in = bisect.bisect_left(self.entries, since) if since else 0
        low_out = bisect.bisect_left(self.exits, since) if since else 0
        return (
            bisect.bisect_left(self.entries, until) - low_in,
            bisect.bisect_left(self.exits, until) - low_out,
        )

    def hour(self, day: date, hour: int) -> tuple[int, int]:
        start = at(hour, day=day)
        return self.passed(start + timedelta(hours=1), start)

    def totals(self, moment: datetime) -> CounterReading:
        """The counter's report at ``moment``: since it booted (it rebooted at noon)."""
        if moment < self.reboot:
            entries, exits = self.passed(moment)
            return CounterReading(31_842 + entries, 31_842 + exits)
        entries, exits = self.passed(moment, self.reboot)
        return CounterReading(entries, exits)

    def deliveries(self) -> list[tuple[datetime, CounterReading]]:
        """Reports every 10 s, as they arrive: 5 % dropped, 3 % repeated, 2 % late by
        15-25 s, and the old run's last report arriving after the new run's first."""
        rng = random.Random(self.seed + 1)
        arrivals: list[tuple[datetime, int, CounterReading]] = []
        sent = at(8)
        index = 0
        while sent < self.end:
            reading = self.totals(sent)
            fate = rng.random()
            if sent == self.reboot - timedelta(seconds=10):
                arrivals.append((sent + timedelta(seconds=25), index, reading))
            elif fate < 0.05:
                pass  # dropped
            elif fate < 0.08:
                arrivals.append((sent, index, reading))
                arrivals.append((sent + timedelta(seconds=2), index, reading))
            elif fate < 0.10:
                delay = timedelta(seconds=rng.uniform(15, 25))
                arrivals.append((sent + delay, index, reading))
            else:
                arrivals.append((sent, index, reading))
            sent += timedelta(seconds=10)
            index += 1
        arrivals.sort(key=lambda arrival: (arrival[0], arrival[1]))
        return [(moment, reading) for moment, _, reading in arrivals]


async def test_a_busy_saturday_with_a_counter_reboot_at_noon(make_rig: MakeRig) -> None:
    day = Saturday(seed=20261128)
    assert len(day.entries) > 700  # a busy day indeed
    rig = await make_rig(start=at(8))
    checkpoints = [at(hour, 59, 30) for hour in range(8, 24)] + [
        at(hour, 59, 30, day=SUNDAY) for hour in range(2)
    ]
    restarted = False
    for moment, reading in day.deliveries():
        while checkpoints and checkpoints[0] <= moment:
            await rig.clock.advance(checkpoints.pop(0) - rig.clock.now())
            entries, exits = day.passed(rig.clock.now(), at(0, day=rig.visitors.today()))
            inside = max(0, entries - exits)
            assert rig.visitors.inside == inside, rig.clock.now()
            assert rig.visitors.status()["today"]["inside"] == inside
        await rig.clock.advance(moment - rig.clock.now())
        if day.restart_down <= moment < day.restart_up:
            if rig.running:
                await rig.stop()  # the controller is down: these reports are lost
            continue
        if not rig.running:
            await rig.restart()
            restarted = True
        rig.report("counter-entrance", reading)
        assert rig.visitors.inside >= 0
    await rig.clock.advance(day.end - rig.clock.now())
    assert restarted

    saturday = rig.day(SATURDAY)
    assert [(hour.entries, hour.exits) for hour in saturday.hours] == [
        day.hour(SATURDAY, hour) for hour in range(24)
    ]
    assert [hour.start for hour in saturday.hours] == [at(hour) for hour in range(24)]
    assert (saturday.entries, saturday.exits) == (len(day.entries), len(day.exits) - 2)
    assert saturday.inside == 0  # reset at midnight
    assert saturday.inside_at_close == 2  # the two who stayed late
    assert saturday.closed
    sunday = rig.day(SUNDAY)
    assert (sunday.entries, sunday.exits) == (0, 2)
    assert [(hour.entries, hour.exits) for hour in sunday.hours[:2]] == [(0, 2), (0, 0)]
    assert sunday.inside == 0  # the two leaving after midnight do not make it negative

    (reset,) = rig.logged_kinds("counter_reset")
    assert reset.device == "counter-entrance"
    assert reset.details["new"]["in"] < 50
    assert reset.details["old"] == {
        "in": 31_842 + day.passed(day.reboot)[0],
        "out": 31_842 + day.passed(day.reboot)[1],
    }
    (closed,) = rig.logged_kinds("visitors_day_closed")
    assert closed.time == at(0, day=SUNDAY)
    assert closed.details == {
        "date": "2026-11-28",
        "entries": len(day.entries),
        "exits": len(day.exits) - 2,
        "inside_at_close": 2,
    }


# --- Restarts, baselines and retained readings --------------------------------------------


async def test_the_first_reading_is_a_baseline_and_a_restart_keeps_it(make_rig: MakeRig) -> None:
    rig = await make_rig(start=at(9))
    rig.count(10412, 10377)
    assert (rig.day().entries, rig.day().exits) == (0, 0)
    await tick(rig)
    rig.count(10420, 10380)
    assert (rig.day().entries, rig.day().exits, rig.visitors.inside) == (8, 3, 5)
    await rig.restart()
    await tick(rig, 600)
    # People came in while the controller was down: the first reading counts them.
    rig.count(10431, 10382)
    assert (rig.day().entries, rig.day().exits, rig.visitors.inside) == (19, 5, 14)
    assert rig.day().hours[9].entries == 19


async def test_a_suspected_restart_survives_a_controller_restart(make_rig: MakeRig) -> None:
    rig = await make_rig(start=at(9))
    rig.count(10412, 10377)
    await tick(rig)
    rig.count(3, 1)  # the counter rebooted
    assert rig.visitors.status()["restarts_pending"] == ["counter-entrance"]
    assert rig.day().counters[0].restart_pending
    await rig.restart()
    assert rig.visitors.status()["restarts_pending"] == ["counter-entrance"]
    await tick(rig, 31)  # the deadline loop of the new controller confirms it by time
    assert rig.visitors.status()["restarts_pending"] == []
    assert (rig.day().entries, rig.day().exits) == (3, 1)
    assert len(rig.logged_kinds("counter_reset")) == 1


async def test_a_restart_is_confirmed_by_time_and_logged(make_rig: MakeRig) -> None:
    rig = await make_rig(start=at(9, 59, 50))
    rig.count(10412, 10377)
    await tick(rig)  # 10:00:00
    rig.count(4, 2)
    await tick(rig, 29)
    assert rig.day().entries == 0  # held
    await tick(rig, 1)
    assert (rig.day().entries, rig.day().exits, rig.visitors.inside) == (4, 2, 2)
    assert rig.day().hours[10].entries == 4
    (reset,) = rig.logged_kinds("counter_reset")
    assert reset.details == {
        "old": {"in": 10412, "out": 10377},
        "new": {"in": 4, "out": 2},
        "first_reading_at": at(10).isoformat(),
    }
    assert reset.room == "entrance"
    assert reset.time == at(10, 0, 30)


async def test_late_and_repeated_reports_count_nothing(make_rig: MakeRig) -> None:
    rig = await make_rig(start=at(9))
    rig.count(10400, 10370)
    await tick(rig)
    rig.count(10412, 10377)
    rig.count(10412, 10377)
    await tick(rig, 1)
    rig.count(10410, 10376)  # late
    await tick(rig, 60)
    rig.count(10413, 10377)
    assert (rig.day().entries, rig.day().exits) == (13, 7)
    assert rig.logged_kinds("counter_reset") == []


async def test_retained_readings_never_count(make_rig: MakeRig) -> None:
    rig = await make_rig(start=at(9))
    rig.report("counter-entrance", CounterReading(500, 480), retained=True)  # a baseline
    await tick(rig)
    rig.count(505, 481)
    await tick(rig)
    rig.report("counter-entrance", CounterReading(900, 900), retained=True)
    rig.report("counter-entrance", CounterReading(0, 0), retained=True)
    await tick(rig, 60)
    rig.count(506, 481)
    assert (rig.day().entries, rig.day().exits) == (6, 1)
    assert rig.visitors.status()["restarts_pending"] == []


async def test_two_entrance_counters_add_up(make_rig: MakeRig, site: Site) -> None:
    rig = await make_rig(start=at(9), on=with_side_counter(site))
    rig.count(10400, 10370)
    rig.count(20, 20, device="counter-side")
    await tick(rig)
    rig.count(10410, 10372)
    rig.count(23, 20, device="counter-side")
    await tick(rig)
    rig.count(1, 0, device="counter-side")  # the side counter rebooted
    await tick(rig)
    rig.count(2, 1, device="counter-side")
    day = rig.day()
    assert (day.entries, day.exits, rig.visitors.inside) == (10 + 3 + 2, 2 + 1, 12)
    by_device = {counter.device: (counter.entries, counter.exits) for counter in day.counters}
    assert by_device == {"counter-entrance": (10, 2), "counter-side": (5, 1)}
    assert rig.visitors.status()["counters"] == 2


async def test_readings_of_other_devices_change_nothing(make_rig: MakeRig) -> None:
    rig = await make_rig(start=at(9))
    rig.count(100, 90)
    await tick(rig)
    rig.report("occ-gym", OccupancyReading(True, 3))
    rig.report("occ-gym", CounterReading(500, 0))  # a counter reading from a room sensor
    rig.report("no-such-device", CounterReading(5000, 0))
    rig.count(101, 90)
    assert (rig.day().entries, rig.day().exits) == (1, 0)


# --- The people inside and the day's end ----------------------------------------------------


async def test_the_people_inside_never_go_below_zero(make_rig: MakeRig) -> None:
    rig = await make_rig(start=at(9))
    rig.count(100, 100)
    await tick(rig)
    rig.count(101, 104)  # three who were inside before counting began leave
    assert rig.visitors.inside == 0
    await tick(rig)
    rig.count(103, 104)
    assert rig.visitors.inside == 2
    assert (rig.day().entries, rig.day().exits) == (3, 4)


async def test_midnight_resets_the_people_inside_and_closes_the_day(make_rig: MakeRig) -> None:
    rig = await make_rig(start=at(23, 50))
    rig.count(100, 90)
    await tick(rig)
    rig.count(110, 95)
    assert rig.visitors.inside == 5
    await rig.clock.advance(at(0, 0, day=SUNDAY) - rig.clock.now())
    assert rig.visitors.inside == 0
    assert rig.visitors.today() == SUNDAY
    (closed,) = rig.logged_kinds("visitors_day_closed")
    assert closed.details == {"date": "2026-11-28", "entries": 10, "exits": 5, "inside_at_close": 5}
    saturday = rig.day(SATURDAY)
    assert (saturday.inside, saturday.inside_at_close, saturday.closed) == (0, 5, True)
    await tick(rig, 60)
    rig.count(111, 99)
    assert rig.visitors.inside == 0  # the late ones left: nobody counted inside, not minus 3
    assert (rig.day().entries, rig.day().exits) == (1, 4)


async def test_a_clock_jumping_over_several_days_closes_each_one(make_rig: MakeRig) -> None:
    rig = await make_rig(start=at(20))
    rig.count(100, 90)
    await tick(rig)
    rig.count(130, 100)
    await rig.clock.advance(timedelta(days=3, hours=1))
    closed = rig.logged_kinds("visitors_day_closed")
    assert [event.details["date"] for event in closed] == [
        "2026-11-28",
        "2026-11-29",
        "2026-11-30",
    ]
    assert [event.time for event in closed] == [
        at(0, day=SATURDAY + timedelta(days=n)) for n in (1, 2, 3)
    ]
    assert [event.details["entries"] for event in closed] == [30, 0, 0]
    assert rig.visitors.inside == 0
    assert rig.visitors.today() == date(2026, 12, 1)
    rig.count(131, 100)
    assert (rig.day().entries, rig.visitors.inside) == (1, 1)


async def test_a_day_that_ended_while_the_controller_was_down_is_closed_at_start(
    make_rig: MakeRig, site: Site, tmp_path: Path
) -> None:
    rig = await make_rig(start=at(21))
    rig.count(100, 90)
    await tick(rig)
    rig.count(104, 91)
    await rig.stop()
    # Back two days later, on the same data directory.
    later = VirtualClock(at(8, day=SATURDAY + timedelta(days=2)))
    revived = VisitorRig(site, later, data_dir=rig.data_dir)
    await revived.start()
    try:
        assert revived.visitors.inside == 0
        closed = revived.logged_kinds("visitors_day_closed")
        assert [event.details for event in closed] == [
            {"date": "2026-11-28", "entries": 4, "exits": 1, "inside_at_close": 3}
        ]
        assert revived.visitors.day(SATURDAY).inside_at_close == 3
        assert revived.visitors.day(SUNDAY).entries == 0  # it was down: no record, no event
        revived.count(109, 93)  # what came in meanwhile counts today, from the stored totals
        assert (revived.day().entries, revived.day().exits) == (5, 2)
    finally:
        await revived.stop()


async def test_a_restart_confirmed_after_midnight_counts_in_the_day_before(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(start=at(23, 59, 40))
    rig.count(10412, 10377)
    await tick(rig)  # 23:59:50
    rig.count(6, 1)  # rebooted; confirmed by time at 00:00:20
    await rig.clock.advance(40)
    saturday = rig.day(SATURDAY)
    assert (saturday.hours[23].entries, saturday.hours[23].exits) == (6, 1)
    assert (rig.day().entries, rig.visitors.inside) == (0, 0)  # not Sunday's
    await tick(rig)
    rig.count(8, 1)
    assert (rig.day().entries, rig.visitors.inside) == (2, 2)


async def test_status_for_the_health_report(make_rig: MakeRig) -> None:
    rig = await make_rig(start=at(9))
    assert rig.visitors.status() == {
        "counters": 1,
        "last_reading": None,
        "restarts_pending": [],
        "today": {"date": "2026-11-28", "entries": 0, "exits": 0, "inside": 0},
    }
    rig.count(10, 10)
    await tick(rig)
    rig.count(14, 11)
    assert rig.visitors.status() == {
        "counters": 1,
        "last_reading": at(9, 0, 10).isoformat(),
        "restarts_pending": [],
        "today": {"date": "2026-11-28", "entries": 4, "exits": 1, "inside": 3},
    }


def test_the_counter_and_the_event_log_must_share_a_connection(site: Site) -> None:
    from controller.bus import EventBus
    from controller.database import open_database
    from controller.event_log import EventLog

    clock = VirtualClock(at(9))
    first, second = open_database(None), open_database(None)
    try:
        with pytest.raises(ValueError, match="one connection"):
            VisitorCounter(site, EventBus(), clock, db=first, events=EventLog(second, clock))
    finally:
        first.close()
        second.close()
