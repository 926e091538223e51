"""Bookings and their life: scheduled -> active -> checked in -> ended, or no-show.

A booking's status is never stored as such: it is derived from the facts
recorded about it (when it started, when somebody was first seen, when it was
released or ended, when it was cancelled). The rule :func:`transitions` says
which new facts hold at a given moment, so the same function serves the live
controller, a restart that catches up on hours it missed, and a test that
replays a whole day on the virtual clock.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from datetime import datetime, timedelta


class BookingStatus(enum.StrEnum):
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    CHECKED_IN = "checked_in"
    NO_SHOW = "no_show"
    ENDED = "ended"
    CANCELLED = "cancelled"


class Transition(enum.StrEnum):
    """A fact that becomes true once, in this order at most: the webhook names."""

    STARTED = "started"
    CHECKED_IN = "checked_in"
    NO_SHOW = "no_show"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class Booking:
    """A reservation of a room, as the booking system sent it, plus what happened.

    ``cancelled_at`` set before ``started_at`` means the booking never ran;
    set after, it ended the booking early (a running booking ends now).
    """

    id: str
    room: str
    start: datetime
    end: datetime
    title: str = ""
    organizer: str = ""
    expected_attendees: int | None = None
    created: datetime | None = None
    updated: datetime | None = None
    started_at: datetime | None = None
    checked_in_at: datetime | None = None
    no_show_at: datetime | None = None
    ended_at: datetime | None = None
    cancelled_at: datetime | None = None

    @property
    def status(self) -> BookingStatus:
        if self.no_show_at is not None:
            return BookingStatus.NO_SHOW
        if self.ended_at is not None:
            return BookingStatus.ENDED
        if self.cancelled_at is not None and self.started_at is None:
            return BookingStatus.CANCELLED
        # Cancelled while running: it runs until its end is recorded, at once.
        if self.checked_in_at is not None:
            return BookingStatus.CHECKED_IN
        if self.started_at is not None:
            return BookingStatus.ACTIVE
        return BookingStatus.SCHEDULED

    @property
    def holds_slot(self) -> bool:
        """Whether the room's time is still taken: not released, cancelled or over."""
        return self.status in (
            BookingStatus.SCHEDULED,
            BookingStatus.ACTIVE,
            BookingStatus.CHECKED_IN,
        )

    @property
    def finished(self) -> bool:
        """No transition can follow any more."""
        return self.status in (BookingStatus.NO_SHOW, BookingStatus.ENDED, BookingStatus.CANCELLED)

    @property
    def effective_end(self) -> datetime:
        """When the booking stops holding the room: its end, or earlier if cut short."""
        if self.started_at is not None and self.cancelled_at is not None:
            return min(self.end, self.cancelled_at)
        return self.end

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return self.start < end and start < self.end

    def with_facts(self, **facts: datetime | None) -> Booking:
        return dataclasses.replace(self, **facts)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Step:
    """One transition and the moment it became true (not when it was noticed)."""

    transition: Transition
    at: datetime


def transitions(
    booking: Booking,
    occupied: bool | None,
    now: datetime,
    *,
    no_show_after: timedelta,
    occupied_since: datetime | None = None,
) -> list[Step]:
    """The transitions that hold at ``now`` and have not been recorded yet, in order.

    ``occupied`` is the room's occupancy now, None when no sensor can say;
    ``occupied_since`` when it last changed to that value (None: unknown).

    - started: at ``start``, unless cancelled before.
    - checked in: the room is occupied at some moment between start and the
      effective end. People who came early are checked in at the start.
    - no-show: nobody was seen by ``start + no_show_after``, and the room was
      known to be empty at that moment (empty since before it, and still).
      With the occupancy unknown then (sensor offline, or the controller was
      down) nobody is released, even if the room is seen empty later: locking
      out people who did come is worse than holding an empty room until its end.
    - ended: at the effective end (the end, or the cancellation of a running
      booking). A no-show does not end again.

    Several may hold at once when the controller catches up after a restart;
    each is reported with the time it became true, capped by ``now``.
    """
    if booking.finished:
        return []
    steps: list[Step] = []
    started = booking.started_at
    if started is None:
        if booking.cancelled_at is not None or now < booking.start:
            return []
        started = booking.start
        steps.append(Step(Transition.STARTED, started))
    end = booking.effective_end
    if booking.checked_in_at is None:
        if occupied is True and now < end:
            steps.append(Step(Transition.CHECKED_IN, max(now, booking.start)))
            checked_in = True
        else:
            checked_in = False
        deadline = booking.start + no_show_after
        if (
            not checked_in
            and occupied is False
            and occupied_since is not None
            and occupied_since <= deadline <= now < end
        ):
            steps.append(Step(Transition.NO_SHOW, deadline))
            return steps
    if now >= end:
        steps.append(Step(Transition.ENDED, end))
    return steps


def apply(booking: Booking, step: Step) -> Booking:
    """The booking with ``step`` recorded."""
    field = {
        Transition.STARTED: "started_at",
        Transition.CHECKED_IN: "checked_in_at",
        Transition.NO_SHOW: "no_show_at",
        Transition.ENDED: "ended_at",
    }[step.transition]
    return booking.with_facts(**{field: step.at})


def next_deadline(booking: Booking, now: datetime, *, no_show_after: timedelta) -> datetime | None:
    """The next moment after ``now`` at which :func:`transitions` may answer
    differently by time alone (occupancy changes are events of their own)."""
    if booking.finished or (booking.started_at is None and booking.cancelled_at is not None):
        return None
    moments = [booking.start, booking.effective_end]
    if booking.checked_in_at is None:
        moments.append(booking.start + no_show_after)
    return min((moment for moment in moments if moment > now), default=None)
