"""The document cabinet's rules: the wrong-code throttle, compartment choice,
what a door's movements mean for a deposit or pickup, and which alarms a
compartment should have.

Pure functions of facts and a moment: the controller gathers the facts
(the deposit, the visit in progress, the last reading) and carries out the
answers.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from controller.site import CabinetRules

# -- the wrong-code throttle ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KioskThrottle:
    """One kiosk identity's recent wrong codes, and the lockout they earned.

    ``failures`` are the times of wrong codes that still count (inside the
    window and not yet punished by a lockout).
    """

    failures: tuple[datetime, ...] = ()
    locked_until: datetime | None = None

    def locked(self, now: datetime) -> bool:
        return self.locked_until is not None and now < self.locked_until

    def retry_after(self, now: datetime) -> int:
        """Whole seconds until the lockout ends (at least 1 while locked, else 0)."""
        if self.locked_until is None or now >= self.locked_until:
            return 0
        return max(1, math.ceil((self.locked_until - now).total_seconds()))

    def forgotten(self, now: datetime, rules: CabinetRules) -> KioskThrottle:
        """The same throttle with what no longer counts at ``now`` dropped."""
        horizon = now - rules.wrong_code_window
        failures = tuple(moment for moment in self.failures if moment > horizon)
        locked_until = self.locked_until if self.locked(now) else None
        return KioskThrottle(failures, locked_until)

    @property
    def empty(self) -> bool:
        return not self.failures and self.locked_until is None


def record_wrong_code(throttle: KioskThrottle, now: datetime, rules: CabinetRules) -> KioskThrottle:
    """A wrong (or used, or expired) code at ``now``.

    The ``wrong_codes``-th wrong code inside ``wrong_code_window`` locks the
    identity out for ``lockout`` from that moment. The wrong codes that earned
    a lockout are then spent: after it, the count starts again from zero, so a
    resident who mistypes once after a lockout is not locked out again at once.
    A right code forgives nothing (otherwise one valid code would reset a
    guessing run).
    """
    current = throttle.forgotten(now, rules)
    if current.locked(now):
        return current  # refused before any code was looked at; nothing to count
    failures = (*current.failures, now)
    if len(failures) >= rules.wrong_codes:
        return KioskThrottle((), now + rules.lockout)
    return KioskThrottle(failures, None)


# -- choosing a compartment -----------------------------------------------------------


class NoCompartment(enum.StrEnum):
    BUSY = "compartment_busy"  # the one asked for is not free
    FULL = "cabinet_full"  # none is free


def choose_compartment(free: Sequence[bool], wanted: int | None) -> int | NoCompartment:
    """The compartment asked for if it is free, else the lowest free one.

    Lowest first keeps deposits together near the top of the cabinet, where
    staff look first, and makes the choice predictable for them.
    """
    if wanted is not None:
        if 0 <= wanted < len(free) and free[wanted]:
            return wanted
        return NoCompartment.BUSY
    for index, is_free in enumerate(free):
        if is_free:
            return index
    return NoCompartment.FULL


# -- what a visit to a compartment came to ----------------------------------------------


class VisitKind(enum.StrEnum):
    DEPOSIT = "deposit"  # staff put a document in
    PICKUP = "pickup"  # a resident takes it out with the code
    CLEAR = "clear"  # staff take a deposit back


class Outcome(enum.StrEnum):
    DEPOSITED = "deposited"  # door closed with an item inside
    CLOSED_EMPTY = "closed_empty"  # a deposit's door closed with nothing inside
    COLLECTED = "collected"  # a pickup's door closed with the item gone
    LEFT_INSIDE = "left_inside"  # a pickup's door closed with the item still there
    CLOSED = "closed"  # a clear's door opened and closed again
    TIMED_OUT = "timed_out"  # the deadline passed (never opened; a deposit not finished)
    UNLOCK_FAILED = "unlock_failed"  # the cabinet did not confirm the unlock pulse


def visit_outcome(
    kind: VisitKind,
    opened: bool,
    door_open: bool,
    item_present: bool,
    item_at_start: bool | None,
) -> Outcome | None:
    """What a reading means for a visit in progress; None while it goes on.

    A visit ends when its door, seen open since the pulse (``opened``), is
    closed again. A door that opened and closed between two polls is never
    seen open, so a change of the contents since the visit began
    (``item_at_start``, None when unknown) ends it too: an item now in an
    empty compartment, or gone from a full one. Contents that are just as
    they were end nothing, even when they are what the visit came for (a
    clear or a pickup of a compartment whose document is already gone): the
    visit waits for its door or its deadline, so a door pulled open a moment
    after the pulse is still the visit's, not tamper.
    """
    if door_open:
        return None
    changed = item_at_start is not None and item_present != item_at_start
    if not (opened or changed):
        return None
    if kind is VisitKind.DEPOSIT:
        return Outcome.DEPOSITED if item_present else Outcome.CLOSED_EMPTY
    if kind is VisitKind.PICKUP:
        return Outcome.LEFT_INSIDE if item_present else Outcome.COLLECTED
    return Outcome.CLOSED


def visit_deadline(
    kind: VisitKind, started: datetime, opened: bool, rules: CabinetRules
) -> datetime | None:
    """When a visit is given up, or None while it waits for a door to close.

    A deposit has ``deposit_timeout`` to finish, open door or not (staff are at
    the cabinet and see the answer). A pickup or a clear only has to *open*
    within its timeout; once open, it lasts until the door closes (a door left
    open is ``door_left_open``'s business).
    """
    if kind is VisitKind.DEPOSIT:
        return started + rules.deposit_timeout
    if opened:
        return None
    return started + (rules.pickup_timeout if kind is VisitKind.PICKUP else rules.deposit_timeout)


# -- alarms ---------------------------------------------------------------------------


class Holding(enum.StrEnum):
    """What a compartment's deposit asks of it, from the alarms' point of view."""

    NONE = "none"  # no deposit: it should be empty
    PENDING = "pending"  # a deposit is being made
    HOLDING = "holding"  # a collectable deposit: its item should be inside
    EXPIRED = "expired"  # uncollected past its expiry: staff must clear it


@dataclass(frozen=True, slots=True)
class CompartmentFacts:
    holding: Holding
    visit: VisitKind | None  # a deposit, pickup or clear in progress
    door_open: bool | None  # None: unknown (no reading, or the cabinet is offline)
    item_present: bool | None
    open_since: datetime | None  # when the door was first seen open
    unexplained_open: bool  # it opened with no visit in progress (until it closes)


@dataclass(frozen=True, slots=True)
class WantedAlarms:
    """Each alarm kind: True raise, False clear, None leave as it is (facts unknown)."""

    door_left_open: bool | None
    cabinet_tamper: bool | None
    uncollected: bool | None


def wanted_alarms(facts: CompartmentFacts, now: datetime, open_after: timedelta) -> WantedAlarms:
    """The alarms a compartment should have now.

    - ``door_left_open``: the door has been open longer than ``open_after``.
    - ``cabinet_tamper``: the door opened with no deposit, pickup or clear in
      progress (until it closes), or a deposit's item is gone with no pickup.
    - ``uncollected``: the deposit expired uncollected, or an item lies in a
      compartment that no deposit accounts for (a deposit that failed or was
      interrupted, a clear that left the item). Such an item's alarm ends with
      a clear, or once the door is seen closed with the compartment empty.
    """
    door, item = facts.door_open, facts.item_present
    if door is None:
        door_left_open = None
    else:
        door_left_open = (
            door and facts.open_since is not None and now - facts.open_since >= open_after
        )
    idle_closed = None if door is None or item is None else (facts.visit is None and not door)
    expects_item = facts.holding in (Holding.HOLDING, Holding.EXPIRED)
    missing = None if idle_closed is None else idle_closed and expects_item and item is False
    if facts.unexplained_open:
        tamper: bool | None = True
    else:
        tamper = missing
    if facts.holding is Holding.EXPIRED:
        uncollected: bool | None = True
    elif facts.holding is not Holding.NONE:
        uncollected = False
    elif door is None or item is None or (door and facts.visit is None):
        # Unknown, or open with nothing under way: whether the item is taken
        # shows when the door closes, so the alarm stays as it is until then.
        uncollected = None
    else:
        uncollected = facts.visit is None and item
    return WantedAlarms(door_left_open, tamper, uncollected)


# -- what staff see -----------------------------------------------------------------


class CompartmentState(enum.StrEnum):
    FREE = "free"  # closed, empty, no deposit: takes the next deposit
    PENDING = "pending"  # a deposit is being made
    HOLDING = "holding"  # a collectable deposit is inside
    COLLECTING = "collecting"  # a pickup is under way
    CLEARING = "clearing"  # staff are taking it back
    EXPIRED = "expired"  # not collected in time: staff must clear it
    OPEN = "open"  # the door is open with nothing under way
    FAULT = "fault"  # an item nobody accounts for, or a deposit's item gone
    UNKNOWN = "unknown"  # no usable reading of the cabinet


_VISIT_STATES = {
    VisitKind.DEPOSIT: CompartmentState.PENDING,
    VisitKind.PICKUP: CompartmentState.COLLECTING,
    VisitKind.CLEAR: CompartmentState.CLEARING,
}


def compartment_state(
    holding: Holding, visit: VisitKind | None, door_open: bool | None, item_present: bool | None
) -> CompartmentState:
    """One word for a compartment: what is under way, else what the door and contents say."""
    if visit is not None:
        return _VISIT_STATES[visit]
    if door_open:
        return CompartmentState.OPEN
    if holding in (Holding.HOLDING, Holding.EXPIRED):
        if door_open is False and item_present is False:
            return CompartmentState.FAULT
        return CompartmentState.HOLDING if holding is Holding.HOLDING else CompartmentState.EXPIRED
    if holding is Holding.PENDING:
        return CompartmentState.PENDING
    if door_open is None or item_present is None:
        return CompartmentState.UNKNOWN
    return CompartmentState.FAULT if item_present else CompartmentState.FREE
