"""The entrance counter rule: cumulative totals into increments, message by message.

Each case feeds :func:`rules.visitors.observe` the readings in the order the
controller would receive them and checks what is counted, when, and that the
sum is exactly what passed the door: never lost, never counted twice. The
last tests go through every delivery order of a counter reboot that a
network can produce (late, dropped, duplicated messages) and check the sum.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from rules.visitors import (
    CounterState,
    Guard,
    Increment,
    Restart,
    Step,
    Suspect,
    Totals,
    Verdict,
    add_inside,
    day_start,
    expire,
    hour_starts,
    local_day,
    local_hour,
    next_deadline,
    next_midnight,
    observe,
)

SH = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 28, 10, 0, tzinfo=SH)
INTERVAL = timedelta(seconds=30)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass
class Feed:
    """One counter's state, fed readings as the controller receives them."""

    state: CounterState = field(default_factory=CounterState)
    increments: list[Increment] = field(default_factory=list)
    restarts: list[Restart] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)

    def read(self, entries: int, exits: int, seconds: float, *, retained: bool = False) -> Verdict:
        step = observe(
            self.state, Totals(entries, exits), at(seconds), interval=INTERVAL, retained=retained
        )
        return self._take(step).verdict

    def wait(self, seconds: float) -> Step | None:
        """Time passes to ``seconds`` with no reading: a suspect may be confirmed."""
        step = expire(self.state, at(seconds), interval=INTERVAL)
        if step is not None:
            self._take(step)
        return step

    def _take(self, step: Step) -> Step:
        self.state = step.state
        self.increments.extend(step.increments)
        if step.restart is not None:
            self.restarts.append(step.restart)
        self.verdicts.append(step.verdict)
        return step

    @property
    def counted(self) -> tuple[int, int]:
        return (
            sum(increment.entries for increment in self.increments),
            sum(increment.exits for increment in self.increments),
        )


# --- One reading at a time -----------------------------------------------------------


def test_the_first_reading_sets_the_baseline_and_counts_nothing() -> None:
    feed = Feed()
    assert feed.read(10412, 10377, 0) is Verdict.BASELINE
    assert feed.counted == (0, 0)
    assert feed.state.mark == Totals(10412, 10377)


def test_a_stored_baseline_counts_the_first_reading_in_full() -> None:
    # After a controller restart the stored mark is there: what came in meanwhile counts.
    feed = Feed(CounterState(mark=Totals(10412, 10377)))
    assert feed.read(10430, 10390, 0) is Verdict.COUNTED
    assert feed.counted == (18, 13)


def test_increases_count_and_missed_messages_carry_the_difference() -> None:
    feed = Feed()
    feed.read(100, 90, 0)
    feed.read(103, 91, 10)
    # 20 s and 30 s never arrived: 40 s carries their people too.
    feed.read(111, 97, 40)
    assert feed.counted == (11, 7)
    assert [(i.entries, i.exits, i.time) for i in feed.increments] == [
        (3, 1, at(10)),
        (8, 6, at(40)),
    ]


def test_a_duplicate_counts_nothing() -> None:
    feed = Feed()
    feed.read(100, 90, 0)
    feed.read(103, 91, 10)
    assert feed.read(103, 91, 11) is Verdict.UNCHANGED
    assert feed.counted == (3, 1)


def test_a_late_message_counts_nothing_and_the_next_counts_from_the_mark() -> None:
    feed = Feed()
    feed.read(10400, 10370, 0)
    feed.read(10412, 10377, 20)
    assert feed.read(10410, 10376, 21) is Verdict.LATE  # sent at 10 s, delivered after 20 s
    assert feed.state.suspect is None
    feed.read(10413, 10377, 30)
    assert feed.counted == (13, 7)


@pytest.mark.parametrize(
    "late",
    [
        [(10408, 10374), (10409, 10375), (10410, 10376)],  # oldest first
        [(10410, 10376), (10409, 10375), (10408, 10374)],  # newest first
        [(10409, 10375), (10409, 10375), (10408, 10374)],  # with a duplicate
    ],
)
def test_a_batch_of_late_messages_counts_nothing(late: list[tuple[int, int]]) -> None:
    feed = Feed()
    feed.read(10400, 10370, 0)
    feed.read(10412, 10377, 40)
    for second, (entries, exits) in enumerate(late, start=41):
        assert feed.read(entries, exits, second) is Verdict.LATE
    # No new reading for longer than the interval: nothing was held, nothing confirmed.
    assert feed.wait(200) is None
    feed.read(10415, 10380, 210)
    assert feed.counted == (15, 10)
    assert feed.restarts == []


def test_a_reading_lower_in_one_total_only_is_late_and_the_next_carries_both() -> None:
    feed = Feed()
    feed.read(10400, 10370, 0)
    feed.read(10412, 10377, 10)
    # in up, out down: no run of one counter reads like that, so it is not counted.
    assert feed.read(10414, 10375, 20) is Verdict.LATE
    feed.read(10415, 10378, 30)
    assert feed.counted == (15, 8)


# --- Restarts ---------------------------------------------------------------------------


def test_a_restart_is_held_then_confirmed_by_the_next_lower_reading() -> None:
    feed = Feed()
    feed.read(10400, 10370, 0)
    feed.read(10412, 10377, 10)
    assert feed.read(3, 1, 20) is Verdict.SUSPECTED
    assert feed.counted == (12, 7)  # held: nothing yet
    assert next_deadline(feed.state) == at(50)
    assert feed.read(5, 2, 30) is Verdict.CONFIRMED
    # The suspect counts in full in its own time, then the increase from it.
    assert [(i.entries, i.exits, i.time) for i in feed.increments[-2:]] == [
        (3, 1, at(20)),
        (2, 1, at(30)),
    ]
    assert feed.counted == (17, 9)
    assert feed.restarts == [Restart(Totals(10412, 10377), Totals(3, 1), at(20))]
    assert feed.state.mark == Totals(5, 2)


def test_a_restart_is_confirmed_by_time_when_nothing_at_the_old_mark_comes() -> None:
    feed = Feed()
    feed.read(10412, 10377, 0)
    feed.read(4, 2, 10)
    assert feed.wait(39.9) is None  # not yet one interval
    step = feed.wait(40)
    assert step is not None
    assert step.verdict is Verdict.CONFIRMED
    assert feed.increments == [Increment(4, 2, at(10))]
    assert feed.state == CounterState(mark=Totals(4, 2), guard=Guard(Totals(10412, 10377), at(70)))


def test_a_reading_after_the_deadline_confirms_the_held_restart_first() -> None:
    # The deadline loop had not run yet: the reading itself confirms by time.
    feed = Feed()
    feed.read(10412, 10377, 0)
    feed.read(4, 2, 10)
    feed.read(9, 4, 45)
    assert feed.counted == (9, 4)
    assert feed.increments == [Increment(4, 2, at(10)), Increment(5, 2, at(45))]
    assert len(feed.restarts) == 1


def test_a_restart_to_zero_and_its_duplicate_confirm() -> None:
    feed = Feed()
    feed.read(10412, 10377, 0)
    assert feed.read(0, 0, 10) is Verdict.SUSPECTED
    assert feed.read(0, 0, 20) is Verdict.CONFIRMED
    feed.read(2, 0, 30)
    assert feed.counted == (2, 0)
    assert len(feed.restarts) == 1


def test_a_suspect_followed_by_a_reading_at_the_old_mark_was_late() -> None:
    # A young counter: a late (1, 0) looks like a restart until (7, 4) comes.
    feed = Feed()
    feed.read(0, 0, 0)
    feed.read(6, 4, 10)
    assert feed.read(1, 0, 11) is Verdict.SUSPECTED
    assert feed.read(7, 4, 20) is Verdict.COUNTED
    assert feed.state.suspect is None
    assert feed.counted == (7, 4)
    assert feed.restarts == []


def test_reset_then_a_late_message_of_the_old_run_before_confirmation() -> None:
    feed = Feed()
    feed.read(10400, 10370, 0)
    feed.read(10412, 10377, 10)
    feed.read(3, 1, 20)  # rebooted
    assert feed.read(10411, 10377, 21) is Verdict.LATE  # sent before the reboot
    assert feed.state.suspect is not None
    assert feed.read(5, 2, 30) is Verdict.CONFIRMED
    assert feed.counted == (12 + 5, 7 + 2)


def test_reset_then_a_late_message_of_the_old_run_after_confirmation() -> None:
    feed = Feed()
    feed.read(10400, 10370, 0)
    feed.read(10412, 10377, 10)
    feed.read(3, 1, 20)
    feed.read(5, 2, 30)
    assert feed.read(10411, 10377, 35) is Verdict.LATE
    feed.read(6, 2, 40)
    assert feed.counted == (12 + 6, 7 + 2)


def test_a_late_message_of_the_old_run_above_its_mark_counts_for_that_run() -> None:
    # The old run's last message (10414) arrives after the new run's first ones:
    # its two people came in before the reboot and were never counted.
    feed = Feed()
    feed.read(10400, 10370, 0)
    feed.read(10412, 10377, 10)
    feed.read(3, 1, 21)
    feed.read(5, 2, 30)  # confirmed
    assert feed.read(10414, 10378, 32) is Verdict.COUNTED
    assert feed.read(10414, 10378, 33) is Verdict.LATE  # its duplicate
    feed.read(6, 2, 40)
    assert feed.counted == (14 + 6, 8 + 2)
    assert feed.state.mark == Totals(6, 2)


def test_a_late_message_of_the_new_run_while_the_restart_is_held() -> None:
    feed = Feed()
    feed.read(10412, 10377, 0)
    feed.read(5, 3, 10)  # the run's second message; its first is late
    assert feed.read(2, 1, 12) is Verdict.LATE
    assert feed.read(8, 3, 20) is Verdict.CONFIRMED
    assert feed.counted == (8, 3)


def test_after_the_guard_the_new_run_counts_normally() -> None:
    feed = Feed()
    feed.read(10412, 10377, 0)
    feed.read(3, 1, 10)
    feed.read(5, 2, 20)  # confirmed; the guard lasts until 50 s
    assert feed.state.guard is not None
    feed.read(9, 4, 60)
    assert feed.state.guard is None
    assert feed.counted == (9, 4)


def test_a_restart_where_one_total_stays_level() -> None:
    feed = Feed()
    feed.read(40, 0, 0)  # nobody has left yet
    assert feed.read(2, 0, 10) is Verdict.SUSPECTED
    assert feed.read(3, 0, 20) is Verdict.CONFIRMED
    assert feed.counted == (3, 0)


def test_a_stored_baseline_and_a_counter_that_restarted_meanwhile() -> None:
    # The controller was down while the counter rebooted: its first reading is lower.
    feed = Feed(CounterState(mark=Totals(10412, 10377)))
    assert feed.read(7, 5, 0) is Verdict.SUSPECTED
    feed.read(8, 5, 10)
    assert feed.counted == (8, 5)


# --- Retained readings -----------------------------------------------------------------


def test_a_retained_reading_sets_a_baseline_only_when_there_is_none() -> None:
    feed = Feed()
    assert feed.read(10400, 10370, 0, retained=True) is Verdict.BASELINE
    feed.read(10403, 10371, 10)
    assert feed.counted == (3, 1)
    assert feed.read(10500, 10400, 20, retained=True) is Verdict.RETAINED
    assert feed.read(1, 1, 21, retained=True) is Verdict.RETAINED  # nor a restart
    assert feed.state == CounterState(mark=Totals(10403, 10371))
    assert feed.counted == (3, 1)


def test_a_retained_reading_never_counts_even_with_a_stored_baseline() -> None:
    feed = Feed(CounterState(mark=Totals(100, 90)))
    assert feed.read(150, 120, 0, retained=True) is Verdict.RETAINED
    assert feed.counted == (0, 0)
    feed.read(151, 121, 10)
    assert feed.counted == (51, 31)  # the live reading carries all of it


# --- Two counters ------------------------------------------------------------------------


def test_two_counters_are_judged_apart_and_add_up() -> None:
    main, side = Feed(), Feed()
    main.read(10400, 10370, 0)
    side.read(500, 480, 1)
    main.read(10410, 10372, 10)
    side.read(2, 0, 11)  # the side door's counter rebooted
    main.read(10411, 10379, 20)
    side.read(3, 1, 21)
    assert main.counted == (11, 9)
    assert side.counted == (3, 1)
    assert main.restarts == []
    assert len(side.restarts) == 1


# --- Every delivery order of a reboot ---------------------------------------------------

PERIOD = 10.0  # the counter reports every 10 s; its interval is 30 s
RUN_1 = [(5000, 4990), (5002, 4990), (5005, 4993), (5005, 4995), (5009, 4997), (5012, 4998)]
RUN_2 = [(0, 0), (2, 1), (3, 3), (6, 4), (8, 5), (8, 7), (11, 9)]
SENT = [Totals(*value) for value in RUN_1 + RUN_2]
# What passed the door after the baseline: the rest of run 1, then all of run 2.
TRUTH = (RUN_1[-1][0] - RUN_1[0][0] + RUN_2[-1][0], RUN_1[-1][1] - RUN_1[0][1] + RUN_2[-1][1])
DELAYS = (0.0, 12.0, 25.0)  # every message arrives within 25 s, less than the interval


@dataclass(frozen=True)
class Fate:
    """What the network does to one message: its delays (none: dropped)."""

    delays: tuple[float, ...]


FATES = (
    *(Fate((delay,)) for delay in DELAYS),
    Fate(()),  # dropped
    Fate((0.0, 25.0)),  # duplicated, the copy late
)


def deliver(fates: Sequence[Fate]) -> Feed:
    """Send SENT every PERIOD, deliver per ``fates``, feed in arrival order."""
    arrivals: list[tuple[float, int, Totals]] = []
    for index, (totals, fate) in enumerate(zip(SENT, fates, strict=True)):
        arrivals.extend((index * PERIOD + delay, index, totals) for delay in fate.delays)
    arrivals.sort(key=lambda arrival: (arrival[0], arrival[1]))
    feed = Feed()
    for moment, _, totals in arrivals:
        feed.wait(moment)  # the deadline loop runs between messages
        feed.read(totals.entries, totals.exits, moment)
    feed.wait(arrivals[-1][0] + 1000)
    return feed


def allowed(fates: Sequence[Fate]) -> bool:
    """The network the counter's interval is made for: nothing later than the interval,
    the first (baseline) and last messages arrive on time, the old run's last message
    arrives (else its last people are gone with the reboot), no two drops in a row."""
    dropped = [not fate.delays for fate in fates]
    return (
        fates[0] == Fate((0.0,))
        and fates[-1] == Fate((0.0,))
        and not dropped[len(RUN_1) - 1]
        and not any(a and b for a, b in itertools.pairwise(dropped))
    )


def orderings(count: int, seed: int) -> Iterable[tuple[Fate, ...]]:
    rng = random.Random(seed)
    around = range(len(RUN_1) - 3, len(RUN_1) + 3)  # the messages either side of the reboot
    # Every combination of fates around the reboot, the rest on time ...
    for combination in itertools.product(FATES, repeat=len(around)):
        fates = [Fate((0.0,))] * len(SENT)
        for index, fate in zip(around, combination, strict=True):
            fates[index] = fate
        if allowed(fates):
            yield tuple(fates)
    # ... and random fates for every message.
    produced = 0
    while produced < count:
        fates = [Fate((0.0,)), *(rng.choice(FATES) for _ in SENT[1:-1]), Fate((0.0,))]
        if allowed(fates):
            produced += 1
            yield tuple(fates)


def test_every_delivery_order_of_a_reboot_counts_exactly_what_passed() -> None:
    checked = 0
    for fates in orderings(3000, seed=20261128):
        feed = deliver(fates)
        assert feed.counted == TRUTH, [fate.delays for fate in fates]
        assert len(feed.restarts) == 1, [fate.delays for fate in fates]
        assert feed.state.suspect is None
        checked += 1
    assert checked > 6000


def test_every_delivery_order_without_a_reboot_counts_exactly_what_passed() -> None:
    run = [Totals(5000 + 3 * i, 4990 + 2 * i + i % 3) for i in range(12)]
    rng = random.Random(7)
    for _ in range(2000):
        fates = [Fate((0.0,)), *(rng.choice(FATES) for _ in run[1:-1]), Fate((0.0,))]
        arrivals = sorted(
            (i * PERIOD + delay, i, totals)
            for i, (totals, fate) in enumerate(zip(run, fates, strict=True))
            for delay in fate.delays
        )
        feed = Feed()
        for moment, _, totals in arrivals:
            feed.wait(moment)
            feed.read(totals.entries, totals.exits, moment)
        assert feed.counted == (run[-1].entries - 5000, run[-1].exits - 4990)
        assert feed.restarts == []


# --- The visitor day -----------------------------------------------------------------


def test_the_people_inside_are_never_below_zero() -> None:
    inside = 0
    inside = add_inside(inside, 3, 0)
    inside = add_inside(inside, 0, 5)  # two left who came in before counting began
    assert inside == 0
    assert add_inside(inside, 2, 1) == 1


def test_days_and_hours_are_local_to_the_site() -> None:
    late_evening_utc = datetime(2026, 11, 28, 16, 30, tzinfo=ZoneInfo("UTC"))  # 00:30 in Shanghai
    assert local_day(late_evening_utc, SH) == date(2026, 11, 29)
    assert local_hour(late_evening_utc, SH) == 0
    assert next_midnight(T0, SH) == datetime(2026, 11, 29, 0, 0, tzinfo=SH)
    assert next_midnight(day_start(date(2026, 11, 29), SH), SH) == datetime(2026, 11, 30, tzinfo=SH)
    starts = hour_starts(date(2026, 11, 28), SH)
    assert len(starts) == 24
    assert starts[0].isoformat() == "2026-11-28T00:00:00+08:00"
    assert starts[23].isoformat() == "2026-11-28T23:00:00+08:00"


def test_the_suspects_deadline_is_one_interval_after_it() -> None:
    state = CounterState(mark=Totals(50, 40), suspect=Suspect(Totals(1, 0), at(5), at(35)))
    assert next_deadline(state) == at(35)
    assert expire(state, at(34)) is None
    step = expire(state, at(35), interval=INTERVAL)
    assert step is not None
    assert step.increments == (Increment(1, 0, at(5)),)
