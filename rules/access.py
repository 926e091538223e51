"""Who may walk into a room now: the lock decision for one room.

:func:`decide` is a pure function of the room's facts (its bookings, its
occupancy, a staff override, the fire latch) and the time. It answers with an
intent for the room's locks, the reason people will read in the event log, and
the next moment at which the answer could change by time alone. The
controller calls it on every relevant event and at those moments; nothing
here holds a timer, so a restart can neither skip nor repeat a deadline.

Precedence, strongest first:

1. the fire latch: every lock open, nothing else is even asked;
2. a staff unlock, until it expires;
3. a staff lock, which holds against every reason to unlock that began before
   it (the booking in progress, today's opening) and yields to the next one
   (the next booking's unlock window, tomorrow's opening) or a staff unlock;
4. the room's own rule: a 24-hour room is open; a bookable room is open from
   ``unlock_before`` ahead of a booking to its end, and after the end until it
   is empty (at the latest ``relock_grace``), locked otherwise, even in center
   hours; any other lockable room follows the center hours.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo

from controller.site import Hours, Room, Rules
from rules.bookings import Booking


class LockIntent(enum.StrEnum):
    LOCK = "LOCK"
    UNLOCK = "UNLOCK"


class Cause(enum.StrEnum):
    """Why a room's locks should be as decided; stored with every command."""

    FIRE_ALARM = "fire_alarm"
    STAFF_UNLOCK = "staff_unlock"
    STAFF_LOCK = "staff_lock"
    ALWAYS_OPEN = "always_open"
    BOOKING = "booking"
    OVERRUN = "overrun"  # the booking ended, people are still inside, grace not over
    NO_BOOKING = "no_booking"
    CENTER_HOURS = "center_hours"
    OUTSIDE_HOURS = "outside_hours"


@dataclass(frozen=True, slots=True)
class StaffOverride:
    """The last staff action on a room's locks.

    An unlock holds until ``until``; a lock has no end of its own (see the
    module docstring for what ends it).
    """

    room: str
    intent: LockIntent
    at: datetime
    until: datetime | None = None
    reason: str = ""
    by: str = ""

    def active(self, now: datetime) -> bool:
        if self.intent is LockIntent.UNLOCK:
            return self.until is not None and self.at <= now < self.until
        return self.at <= now


@dataclass(frozen=True, slots=True)
class RoomFacts:
    """What the rule knows about a room at the moment of deciding.

    ``occupied_since`` is when the occupancy last changed to its current value.
    ``bookings`` are the room's bookings that can matter now: any that have not
    finished more than ``relock_grace`` ago, and the next one to come; extra
    ones change nothing.
    """

    room: Room
    occupied: bool | None
    occupied_since: datetime | None
    bookings: Sequence[Booking]
    override: StaffOverride | None
    fire_latched: bool


@dataclass(frozen=True, slots=True)
class Decision:
    intent: LockIntent
    cause: Cause
    booking_id: str | None = None
    until: datetime | None = None  # when the cause ends by itself, where known
    next_check: datetime | None = None  # the next moment the decision may change by time
    overstay: str | None = None  # a booking whose grace is over with people inside

    def describe(self) -> str:
        """A sentence for the event log."""
        text = _DESCRIPTIONS[self.cause]
        if self.booking_id is not None:
            text = f"{text} ({self.booking_id})"
        if self.until is not None:
            text = f"{text} until {self.until.isoformat()}"
        return text


_DESCRIPTIONS = {
    Cause.FIRE_ALARM: "fire alarm: every door unlocked until staff reset",
    Cause.STAFF_UNLOCK: "unlocked by staff",
    Cause.STAFF_LOCK: "locked by staff",
    Cause.ALWAYS_OPEN: "24-hour room",
    Cause.BOOKING: "booked",
    Cause.OVERRUN: "booking over, people still inside",
    Cause.NO_BOOKING: "no booking holds the room",
    Cause.CENTER_HOURS: "center open",
    Cause.OUTSIDE_HOURS: "center closed",
}


@dataclass(frozen=True, slots=True)
class _Reason:
    """A reason to unlock, and when it began (None: always)."""

    cause: Cause
    since: datetime | None
    until: datetime | None
    booking_id: str | None = None


def decide(
    facts: RoomFacts, now: datetime, *, hours: Hours, zone: tzinfo, rules: Rules
) -> Decision:
    """The lock intent for ``facts.room`` at ``now``; see the module docstring."""
    if facts.fire_latched:
        return Decision(LockIntent.UNLOCK, Cause.FIRE_ALARM)
    moments: list[datetime] = []
    reasons, base_lock, overstay = _room_rule(facts, now, hours, zone, rules, moments)
    override = facts.override
    decision: Decision | None = None
    if override is not None and override.until is not None:
        moments.append(override.until)
    if override is not None and override.active(now):
        if override.intent is LockIntent.UNLOCK:
            decision = Decision(LockIntent.UNLOCK, Cause.STAFF_UNLOCK, until=override.until)
        else:
            reasons = [r for r in reasons if r.since is not None and r.since > override.at]
            if not reasons:
                decision = Decision(LockIntent.LOCK, Cause.STAFF_LOCK)
    if decision is None:
        if reasons:
            first = reasons[0]
            decision = Decision(LockIntent.UNLOCK, first.cause, first.booking_id, first.until)
        else:
            decision = Decision(LockIntent.LOCK, base_lock)
    upcoming = [moment for moment in moments if moment > now]
    return Decision(
        decision.intent,
        decision.cause,
        decision.booking_id,
        decision.until,
        min(upcoming, default=None),
        overstay,
    )


def _room_rule(
    facts: RoomFacts,
    now: datetime,
    hours: Hours,
    zone: tzinfo,
    rules: Rules,
    moments: list[datetime],
) -> tuple[list[_Reason], Cause, str | None]:
    """The room's own reasons to be unlocked now, the cause of locking when
    there are none, and an overstaying booking; collects future moments."""
    room = facts.room
    if room.always_open:
        return [_Reason(Cause.ALWAYS_OPEN, None, None)], Cause.ALWAYS_OPEN, None
    if not room.bookable:
        opens, closes = opening(now, hours, zone)
        moments.extend(_hours_boundaries(now, hours, zone))
        if opens <= now < closes:
            return [_Reason(Cause.CENTER_HOURS, opens, closes)], Cause.OUTSIDE_HOURS, None
        return [], Cause.OUTSIDE_HOURS, None
    reasons: list[_Reason] = []
    overstay: str | None = None
    for booking in facts.bookings:
        window = _booking_window(booking, rules)
        if window is None:
            continue
        opens, closes = window
        grace_over = closes + rules.relock_grace
        moments.extend((opens, closes, grace_over))
        if opens <= now < closes:
            reasons.append(_Reason(Cause.BOOKING, opens, closes, booking.id))
        elif closes <= now and booking.no_show_at is None:
            inside_since_end = facts.occupied is not False and (
                facts.occupied is None
                or facts.occupied_since is None
                or facts.occupied_since <= closes
            )
            if now < grace_over and inside_since_end:
                reasons.append(_Reason(Cause.OVERRUN, opens, grace_over, booking.id))
            elif now >= grace_over and facts.occupied is True and inside_since_end:
                overstay = booking.id
    reasons.sort(key=lambda reason: (reason.cause is not Cause.BOOKING, reason.since or now))
    return reasons, Cause.NO_BOOKING, overstay


def _booking_window(booking: Booking, rules: Rules) -> tuple[datetime, datetime] | None:
    """When a booking holds its room unlocked, or None if it never will again."""
    if booking.cancelled_at is not None and booking.started_at is None:
        return None
    opens = booking.start - rules.unlock_before
    if booking.no_show_at is not None:
        return opens, booking.no_show_at
    return opens, booking.effective_end


def opening(now: datetime, hours: Hours, zone: tzinfo) -> tuple[datetime, datetime]:
    """Today's opening and closing time (in the site's zone) for the day of ``now``."""
    day = now.astimezone(zone).date()
    return _at(day, hours.open, zone), _at(day, hours.close, zone)


def within_hours(now: datetime, hours: Hours, zone: tzinfo) -> bool:
    opens, closes = opening(now, hours, zone)
    return opens <= now < closes


def _hours_boundaries(now: datetime, hours: Hours, zone: tzinfo) -> Iterable[datetime]:
    day = now.astimezone(zone).date()
    tomorrow = day + timedelta(days=1)
    return (
        _at(day, hours.open, zone),
        _at(day, hours.close, zone),
        _at(tomorrow, hours.open, zone),
    )


def _at(day: date, clock_time: time, zone: tzinfo) -> datetime:
    return datetime.combine(day, clock_time, tzinfo=zone)
