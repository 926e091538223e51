"""Entrance counters: cumulative totals into exact increments, and the visitor day.

A people counter reports ``in``/``out`` totals since it booted. What the
center wants is how many people came in and went out, hour by hour, with
nothing lost and nothing counted twice, whatever the network does to the
messages. What can happen, and what each reading means:

- **Increase** (both totals at or above the last accepted ones, the *mark*):
  the difference is new; a missed message only makes it bigger.
- **Duplicate** (equal to the mark): nothing.
- **Lower** totals (either one below the mark) are either a *late* message
  (sent before the mark, delivered after it) or a *restart* of the counter
  (its totals begin again at 0). Which one is told by which it is nearer to:
  a late message lies just below the mark, a restarted counter just above
  zero. So a lower reading whose size (``in + out``) is at least its distance
  from the mark is late and counts nothing; a smaller one is a *suspected
  restart*, held:

  - the next reading at or above the old mark shows it was late after all
    (it counts nothing, the next reading counts from the mark);
  - the next reading below the old mark that continues the suspected run
    (at or above the suspect, and nearer to it than to the old mark)
    confirms the restart: the suspect counts in full, in the hour it
    arrived, and the new reading counts its increment from it;
  - any other reading meanwhile (a late message of either run) counts nothing;
  - when one reporting interval passes without a reading at or above the
    old mark, the restart is confirmed by time.

  For one reporting interval after a confirmed restart the old run's mark is
  kept as a *guard*: a reading nearer to it than to the new run's mark is a
  late message of the old run. Below the old mark it counts nothing; above
  it, it carries the old run's last people (who were never counted) and
  moves the old mark up. And while the guard lasts, a reading below the new
  run's mark is one of the new run's late messages, not another restart
  (its totals are near zero too, so they would look like one).

Ignoring a reading never loses anything: the totals are cumulative, so the
next accepted reading of the same run carries whatever the ignored one had.
This is exact as long as every message arrives within one reporting
interval of being sent and a counter is not silent for a whole interval
right after a late message (tests/rules/test_visitors_rules.py goes through
every such delivery order of a reboot). It can go wrong when a message is
later than that, when a counter's totals are within a few people of zero (a
restart and a late message then look alike), or when a restarted counter
passes its old totals before its first report; the last two are far from
the thousands a running entrance counter shows.

The day: entries and exits per local hour, and the people inside, which is
entries minus exits, clamped at zero at every step, and reset at local
midnight. Everything here is pure: times are arguments, nothing reads a clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, tzinfo

DEFAULT_INTERVAL = timedelta(seconds=30)
"""A counter's reporting interval when the site file gives none."""

HOURS_PER_DAY = 24


@dataclass(frozen=True, slots=True)
class Totals:
    """A counter's cumulative entries and exits since it booted."""

    entries: int
    exits: int

    def covers(self, other: Totals) -> bool:
        """Both totals at or above ``other``'s: no sign of going back."""
        return self.entries >= other.entries and self.exits >= other.exits

    def minus(self, other: Totals) -> Totals:
        return Totals(self.entries - other.entries, self.exits - other.exits)

    def distance(self, other: Totals) -> int:
        return abs(self.entries - other.entries) + abs(self.exits - other.exits)

    @property
    def size(self) -> int:
        """How far from a freshly booted counter (0, 0)."""
        return self.entries + self.exits


@dataclass(frozen=True, slots=True)
class Suspect:
    """Lower totals that look like a restart, held until confirmed or shown late."""

    totals: Totals
    time: datetime
    deadline: datetime


@dataclass(frozen=True, slots=True)
class Guard:
    """The previous run's mark, kept for a while after a confirmed restart."""

    mark: Totals
    until: datetime


@dataclass(frozen=True, slots=True)
class CounterState:
    """What the controller knows of one counter. ``mark`` None: no baseline yet."""

    mark: Totals | None = None
    suspect: Suspect | None = None
    guard: Guard | None = None


class Verdict(enum.StrEnum):
    BASELINE = "baseline"  # the first totals: they count nothing by themselves
    COUNTED = "counted"  # an increase, counted
    UNCHANGED = "unchanged"  # the same totals again
    LATE = "late"  # an older message (or one that fits no run): nothing counted
    SUSPECTED = "suspected"  # lower totals that look like a restart: held
    CONFIRMED = "confirmed"  # a restart confirmed by this reading
    RETAINED = "retained"  # the broker's stored last value: never counts


@dataclass(frozen=True, slots=True)
class Increment:
    """People counted, and the moment whose hour they belong to."""

    entries: int
    exits: int
    time: datetime


@dataclass(frozen=True, slots=True)
class Restart:
    """A confirmed counter restart: the old run's mark, the new run's first totals."""

    old: Totals
    new: Totals
    time: datetime  # when the new run's first reading arrived


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of one reading (or of time passing): the new state and what to count."""

    state: CounterState
    verdict: Verdict
    increments: tuple[Increment, ...] = ()
    restart: Restart | None = None


def observe(
    state: CounterState,
    totals: Totals,
    at: datetime,
    *,
    interval: timedelta = DEFAULT_INTERVAL,
    retained: bool = False,
) -> Step:
    """Judge one reading of a counter, received at ``at``.

    ``interval`` is the counter's reporting interval: how long a suspected
    restart is held and how long the old run's guard lasts. A suspect whose
    interval ran out before ``at`` is confirmed first (its counts come with
    this step).
    """
    if retained:
        # Stored by the broker some time ago: a baseline at best, never a count.
        if state.mark is None:
            return Step(replace(state, mark=totals), Verdict.BASELINE)
        return Step(state, Verdict.RETAINED)
    increments: tuple[Increment, ...] = ()
    restart: Restart | None = None
    expired = expire(state, at, interval=interval)
    if expired is not None:
        state, increments, restart = expired.state, expired.increments, expired.restart
    if state.guard is not None and at >= state.guard.until:
        state = replace(state, guard=None)
    if state.mark is None:
        return Step(replace(state, mark=totals), Verdict.BASELINE, increments, restart)
    step = _judge(state, state.mark, totals, at, interval)
    return Step(
        step.state,
        step.verdict,
        increments + step.increments,
        step.restart if step.restart is not None else restart,
    )


def expire(
    state: CounterState, now: datetime, *, interval: timedelta = DEFAULT_INTERVAL
) -> Step | None:
    """Confirm a suspected restart whose interval passed with no reading at or above
    the old mark; None when there is nothing to confirm at ``now``."""
    suspect = state.suspect
    if suspect is None or state.mark is None or now < suspect.deadline:
        return None
    return _confirm(state.mark, suspect, suspect.totals, now, interval)


def next_deadline(state: CounterState) -> datetime | None:
    """When :func:`expire` will next have something to do for this counter."""
    return state.suspect.deadline if state.suspect is not None else None


def _judge(
    state: CounterState, mark: Totals, totals: Totals, at: datetime, interval: timedelta
) -> Step:
    suspect = state.suspect
    if suspect is not None:
        if totals.covers(mark):
            # Back at or above the old mark: the suspect was a late message.
            state = replace(state, suspect=None)
        elif totals.covers(suspect.totals) and totals.distance(suspect.totals) < totals.distance(
            mark
        ):
            return _confirm(mark, suspect, totals, at, interval)
        else:
            return Step(state, Verdict.LATE)
    guard = state.guard
    if guard is not None and totals.distance(guard.mark) < totals.distance(mark):
        # Nearer the run before the restart: one of its messages, delivered late.
        # What it adds to that run is real (it was never counted); below its mark, nothing.
        if totals.covers(guard.mark) and totals != guard.mark:
            increase = totals.minus(guard.mark)
            return Step(
                replace(state, guard=replace(guard, mark=totals)),
                Verdict.COUNTED,
                (Increment(increase.entries, increase.exits, at),),
            )
        return Step(state, Verdict.LATE)
    if totals.covers(mark):
        if totals == mark:
            return Step(state, Verdict.UNCHANGED)
        increase = totals.minus(mark)
        return Step(
            replace(state, mark=totals),
            Verdict.COUNTED,
            (Increment(increase.entries, increase.exits, at),),
        )
    if guard is None and totals.size < totals.distance(mark):
        # (Right after a restart the new run is itself near zero: a lower reading
        # then is one of its late messages, not a second restart.)
        held = Suspect(totals, at, at + interval)
        return Step(replace(state, suspect=held), Verdict.SUSPECTED)
    return Step(state, Verdict.LATE)


def _confirm(
    mark: Totals,
    suspect: Suspect,
    latest: Totals,
    at: datetime,
    interval: timedelta,
) -> Step:
    """The restart is real: the suspect counts in full in its own hour, then the
    increase from it to ``latest`` (the reading that confirmed it) at ``at``."""
    increments = [Increment(suspect.totals.entries, suspect.totals.exits, suspect.time)]
    if latest != suspect.totals:
        increase = latest.minus(suspect.totals)
        increments.append(Increment(increase.entries, increase.exits, at))
    return Step(
        CounterState(mark=latest, guard=Guard(mark, at + interval)),
        Verdict.CONFIRMED,
        tuple(increments),
        Restart(mark, suspect.totals, suspect.time),
    )


# --- The visitor day ---------------------------------------------------------


def add_inside(inside: int, entries: int, exits: int) -> int:
    """People inside after a step: never below zero (a counter that missed an
    entry must not leave the building with minus one person in it)."""
    return max(0, inside + entries - exits)


def local_day(moment: datetime, zone: tzinfo) -> date:
    """The day ``moment`` falls on in the site's zone."""
    return moment.astimezone(zone).date()


def local_hour(moment: datetime, zone: tzinfo) -> int:
    """The hour of the local day (0..23) ``moment`` belongs to."""
    return moment.astimezone(zone).hour


def day_start(day: date, zone: tzinfo) -> datetime:
    """Local midnight at the start of ``day``."""
    return datetime.combine(day, time(0), tzinfo=zone)


def next_midnight(moment: datetime, zone: tzinfo) -> datetime:
    """The first local midnight after ``moment``: when the visitor day closes."""
    return day_start(local_day(moment, zone) + timedelta(days=1), zone)


def hour_starts(day: date, zone: tzinfo) -> list[datetime]:
    """The starts of the day's 24 local hours.

    A zone with daylight saving would make one day 23 or 25 hours long; the
    buckets follow the local clock (the repeated hour shares its bucket, the
    skipped one stays empty). Asia/Shanghai has no such days.
    """
    return [datetime.combine(day, time(hour), tzinfo=zone) for hour in range(HOURS_PER_DAY)]
