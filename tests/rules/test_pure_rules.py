"""The pure rules, table by table: bookings, room access and the fire latch.

Nothing here touches a clock, a database or a bus: each case is the facts a
rule is given, the moment it is asked, and the answer a facility manager
would expect. Times are in the Changbai center's zone (Asia/Shanghai); the
rule timings are the site file's (unlock 10 min before, no-show after 15 min,
relock grace 15 min), hours 08:30-21:00.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from controller.site import Room, Site, load_site
from rules.access import (
    Cause,
    Decision,
    LockIntent,
    RoomFacts,
    StaffOverride,
    decide,
    opening,
    within_hours,
)
from rules.bookings import (
    Booking,
    BookingStatus,
    Step,
    Transition,
    apply,
    next_deadline,
    transitions,
)
from rules.fire import FireLatch, reset_refusal, should_latch
from tests.conftest import CHANGBAI

ZONE = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 23)
NO_SHOW_AFTER = timedelta(minutes=15)
SITE: Site = load_site(CHANGBAI)
HUI = SITE.room_by_id["hui-xin-room"]  # bookable
ENTRANCE = SITE.room_by_id["entrance"]  # follows the center hours
SELF_SERVICE = SITE.room_by_id["self-service"]  # 24-hour


def at(hour: int, minute: int = 0, second: int = 0, *, day: int = 0) -> datetime:
    return datetime.combine(DAY + timedelta(days=day), time(hour, minute, second), tzinfo=ZONE)


def booking(
    booking_id: str = "b1",
    start: datetime | None = None,
    end: datetime | None = None,
    **facts: datetime | None,
) -> Booking:
    """A booking of the HUI Xin Room, 10:00-11:00 unless told otherwise, with ``facts``."""
    return Booking(
        id=booking_id,
        room=HUI.id,
        start=start or at(10),
        end=end or at(11),
        **facts,  # type: ignore[arg-type]
    )


# --- Booking.status and what it implies -------------------------------------------------

STATUS_CASES = [
    pytest.param({}, BookingStatus.SCHEDULED, id="nothing-happened-yet"),
    pytest.param({"started_at": at(10)}, BookingStatus.ACTIVE, id="started"),
    pytest.param(
        {"started_at": at(10), "checked_in_at": at(10, 3)},
        BookingStatus.CHECKED_IN,
        id="checked-in",
    ),
    pytest.param(
        {"started_at": at(10), "no_show_at": at(10, 15)}, BookingStatus.NO_SHOW, id="no-show"
    ),
    pytest.param({"started_at": at(10), "ended_at": at(11)}, BookingStatus.ENDED, id="ended"),
    pytest.param(
        {"started_at": at(10), "checked_in_at": at(10, 3), "ended_at": at(11)},
        BookingStatus.ENDED,
        id="checked-in-then-ended",
    ),
    pytest.param({"cancelled_at": at(9)}, BookingStatus.CANCELLED, id="cancelled-before-start"),
    pytest.param(
        {"started_at": at(10), "checked_in_at": at(10, 3), "cancelled_at": at(10, 20)},
        BookingStatus.CHECKED_IN,
        id="cancelled-while-running-runs-until-its-end-is-recorded",
    ),
]


@pytest.mark.parametrize(("facts", "expected"), STATUS_CASES)
def test_a_bookings_status_follows_from_its_facts(
    facts: dict[str, datetime], expected: BookingStatus
) -> None:
    assert booking().with_facts(**facts).status is expected


FACTS_FOR = {
    BookingStatus.SCHEDULED: {},
    BookingStatus.ACTIVE: {"started_at": at(10)},
    BookingStatus.CHECKED_IN: {"started_at": at(10), "checked_in_at": at(10, 3)},
    BookingStatus.NO_SHOW: {"started_at": at(10), "no_show_at": at(10, 15)},
    BookingStatus.ENDED: {"started_at": at(10), "ended_at": at(11)},
    BookingStatus.CANCELLED: {"cancelled_at": at(9)},
}


@pytest.mark.parametrize(
    ("status", "holds_slot", "finished"),
    [
        (BookingStatus.SCHEDULED, True, False),
        (BookingStatus.ACTIVE, True, False),
        (BookingStatus.CHECKED_IN, True, False),
        (BookingStatus.NO_SHOW, False, True),
        (BookingStatus.ENDED, False, True),
        (BookingStatus.CANCELLED, False, True),
    ],
)
def test_only_a_booking_still_to_run_or_running_holds_its_slot(
    status: BookingStatus, holds_slot: bool, finished: bool
) -> None:
    subject = booking().with_facts(**FACTS_FOR[status])
    assert subject.status is status
    assert (subject.holds_slot, subject.finished) == (holds_slot, finished)


def test_a_running_booking_cancelled_stops_holding_the_room_at_the_cancellation() -> None:
    running = booking(started_at=at(10), cancelled_at=at(10, 20))
    assert running.effective_end == at(10, 20)
    assert booking(cancelled_at=at(9)).effective_end == at(11)  # never ran: nothing cut short
    assert booking().effective_end == at(11)


@pytest.mark.parametrize(
    ("step", "field_name"),
    [
        (Step(Transition.STARTED, at(10)), "started_at"),
        (Step(Transition.CHECKED_IN, at(10, 4)), "checked_in_at"),
        (Step(Transition.NO_SHOW, at(10, 15)), "no_show_at"),
        (Step(Transition.ENDED, at(11)), "ended_at"),
    ],
)
def test_apply_records_one_fact_and_nothing_else(step: Step, field_name: str) -> None:
    before = booking()
    after = apply(before, step)
    assert getattr(after, field_name) == step.at
    assert after.with_facts(**{field_name: None}) == before


# --- transitions --------------------------------------------------------------------------

STARTED = {"started_at": at(10)}
CHECKED_IN = {"started_at": at(10), "checked_in_at": at(10, 4)}

TRANSITION_CASES = [
    # (facts, occupied, now, expected steps)
    pytest.param({}, True, at(9, 55), [], id="before-start-nothing-even-if-people-came-early"),
    pytest.param({}, None, at(10), [(Transition.STARTED, at(10))], id="start-occupancy-unknown"),
    pytest.param({}, False, at(10), [(Transition.STARTED, at(10))], id="start-room-empty"),
    pytest.param(
        {},
        True,
        at(10),
        [(Transition.STARTED, at(10)), (Transition.CHECKED_IN, at(10))],
        id="people-who-came-early-check-in-at-the-start",
    ),
    pytest.param(
        STARTED, True, at(10, 7), [(Transition.CHECKED_IN, at(10, 7))], id="first-occupancy"
    ),
    pytest.param(STARTED, False, at(10, 14, 59), [], id="empty-just-before-no-show-deadline"),
    pytest.param(
        STARTED, False, at(10, 15), [(Transition.NO_SHOW, at(10, 15))], id="no-show-at-deadline"
    ),
    pytest.param(STARTED, None, at(10, 15), [], id="unknown-occupancy-releases-nobody"),
    pytest.param(STARTED, None, at(10, 59), [], id="still-unknown-later-releases-nobody"),
    pytest.param(CHECKED_IN, False, at(10, 30), [], id="checked-in-then-left-is-no-no-show"),
    pytest.param(CHECKED_IN, True, at(10, 30), [], id="checked-in-only-once"),
    pytest.param(CHECKED_IN, False, at(11), [(Transition.ENDED, at(11))], id="end"),
    pytest.param(CHECKED_IN, True, at(11, 5), [(Transition.ENDED, at(11))], id="end-is-its-end"),
    pytest.param(
        STARTED,
        False,
        at(11),
        [(Transition.ENDED, at(11))],
        id="never-released-because-unknown-it-simply-ends",
    ),
    pytest.param(
        {},
        None,
        at(11, 30),
        [(Transition.STARTED, at(10)), (Transition.ENDED, at(11))],
        id="restart-after-a-booking-that-ran-while-down",
    ),
    pytest.param(
        {},
        True,
        at(11, 30),
        [(Transition.STARTED, at(10)), (Transition.ENDED, at(11))],
        id="restart-after-end-people-inside-is-no-check-in",
    ),
    pytest.param(
        {},
        False,
        at(10, 30),
        [(Transition.STARTED, at(10))],  # nobody could see the room at 10:15
        id="restart-after-deadline-room-empty-now-releases-nobody",
    ),
    pytest.param(
        {},
        True,
        at(10, 30),
        [(Transition.STARTED, at(10)), (Transition.CHECKED_IN, at(10, 30))],
        id="restart-mid-booking-people-inside",
    ),
    pytest.param({"cancelled_at": at(9)}, True, at(10, 30), [], id="cancelled-before-start"),
    pytest.param(
        {"started_at": at(10), "no_show_at": at(10, 15)},
        False,
        at(11, 30),
        [],
        id="a-no-show-does-not-end-again",
    ),
    pytest.param(
        {"started_at": at(10), "ended_at": at(11)}, True, at(11, 30), [], id="ended-is-final"
    ),
]


@pytest.mark.parametrize(("facts", "occupied", "now", "expected"), TRANSITION_CASES)
def test_transitions_say_what_became_true_and_when(
    facts: dict[str, datetime],
    occupied: bool | None,
    now: datetime,
    expected: list[tuple[Transition, datetime]],
    request: pytest.FixtureRequest,
) -> None:
    # The room has been seen as it is since 09:50; after a restart, only since now.
    since = now if "restart" in request.node.callspec.id else at(9, 50)
    steps = transitions(
        booking().with_facts(**facts),
        occupied,
        now,
        no_show_after=NO_SHOW_AFTER,
        occupied_since=since,
    )
    assert [(step.transition, step.at) for step in steps] == expected


def test_a_booking_shorter_than_the_no_show_time_is_never_released() -> None:
    short = booking(start=at(10), end=at(10, 10), started_at=at(10))
    assert transitions(short, False, at(10, 5), no_show_after=NO_SHOW_AFTER) == []
    steps = transitions(short, False, at(10, 10), no_show_after=NO_SHOW_AFTER)
    assert [(step.transition, step.at) for step in steps] == [(Transition.ENDED, at(10, 10))]


def test_a_running_booking_cancelled_ends_at_the_cancellation() -> None:
    cancelled = booking(started_at=at(10), checked_in_at=at(10, 4), cancelled_at=at(10, 20))
    steps = transitions(cancelled, True, at(10, 20), no_show_after=NO_SHOW_AFTER)
    assert [(step.transition, step.at) for step in steps] == [(Transition.ENDED, at(10, 20))]


def test_replaying_transitions_step_by_step_reaches_the_same_facts() -> None:
    """The live controller (every minute) and a catch-up (once) agree."""
    live = booking()
    for minute in range(0, 91):  # 09:30 to 11:00
        now = at(9, 30) + timedelta(minutes=minute)
        occupied = at(10, 6) <= now < at(10, 50)
        for step in transitions(live, occupied, now, no_show_after=NO_SHOW_AFTER):
            live = apply(live, step)
    assert (live.started_at, live.checked_in_at, live.no_show_at, live.ended_at) == (
        at(10),
        at(10, 6),
        None,
        at(11),
    )
    assert live.status is BookingStatus.ENDED


# --- next_deadline ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("facts", "now", "expected"),
    [
        pytest.param({}, at(9), at(10), id="scheduled-next-is-the-start"),
        pytest.param(STARTED, at(10, 5), at(10, 15), id="started-next-is-the-no-show-deadline"),
        pytest.param(STARTED, at(10, 15), at(11), id="strictly-after-now"),
        pytest.param(CHECKED_IN, at(10, 5), at(11), id="checked-in-next-is-the-end"),
        pytest.param(CHECKED_IN, at(11), None, id="nothing-after-the-end"),
        pytest.param({"cancelled_at": at(9)}, at(9), None, id="cancelled-before-start"),
        pytest.param({"started_at": at(10), "no_show_at": at(10, 15)}, at(10, 15), None, id="ns"),
        pytest.param({"started_at": at(10), "ended_at": at(11)}, at(11), None, id="ended"),
    ],
)
def test_next_deadline_is_the_next_moment_time_alone_can_change_the_answer(
    facts: dict[str, datetime], now: datetime, expected: datetime | None
) -> None:
    subject = booking().with_facts(**facts)
    assert next_deadline(subject, now, no_show_after=NO_SHOW_AFTER) == expected


def test_at_each_deadline_transitions_answer_differently() -> None:
    """Asked only at next_deadline's moments, the booking still lives its whole life."""
    subject, now, seen = booking(), at(9), []
    while (moment := next_deadline(subject, now, no_show_after=NO_SHOW_AFTER)) is not None:
        now = moment
        for step in transitions(
            subject, False, now, no_show_after=NO_SHOW_AFTER, occupied_since=at(9)
        ):
            subject = apply(subject, step)
            seen.append((step.transition, step.at))
    assert seen == [(Transition.STARTED, at(10)), (Transition.NO_SHOW, at(10, 15))]


# --- rules.access.decide -------------------------------------------------------------------


def unlock(at_: datetime, until: datetime, room: Room = HUI) -> StaffOverride:
    return StaffOverride(room.id, LockIntent.UNLOCK, at_, until, "meeting", "staff-1")


def lock(at_: datetime, room: Room = HUI) -> StaffOverride:
    return StaffOverride(room.id, LockIntent.LOCK, at_, None, "cleaning", "staff-1")


B1 = booking("b1", at(10), at(11))
B1_RUNNING = booking("b1", at(10), at(11), started_at=at(10), checked_in_at=at(10, 5))
B1_ENDED = B1_RUNNING.with_facts(ended_at=at(11))
B1_NO_SHOW = booking("b1", at(10), at(11), started_at=at(10), no_show_at=at(10, 15))
B2 = booking("b2", at(11), at(12))
B2_LATER = booking("b2", at(11, 30), at(12, 30))


@dataclass(frozen=True)
class Case:
    now: datetime
    intent: LockIntent
    cause: Cause
    room: Room = HUI
    bookings: Sequence[Booking] = ()
    occupied: bool | None = False
    since: datetime | None = None
    override: StaffOverride | None = None
    fire: bool = False
    booking_id: str | None = None
    until: datetime | None = None
    next_check: datetime | None = None
    overstay: str | None = None


UNLOCK, LOCK = LockIntent.UNLOCK, LockIntent.LOCK

DECIDE_CASES = [
    # 1. The fire latch beats everything and asks nothing else.
    pytest.param(
        Case(at(3), UNLOCK, Cause.FIRE_ALARM, room=ENTRANCE, fire=True), id="fire-outside-hours"
    ),
    pytest.param(
        Case(at(12), UNLOCK, Cause.FIRE_ALARM, override=lock(at(11, 59)), fire=True),
        id="fire-beats-staff-lock",
    ),
    pytest.param(
        Case(
            at(11, 20),
            UNLOCK,
            Cause.FIRE_ALARM,
            bookings=[B1_ENDED],
            occupied=True,
            since=at(10, 5),
            fire=True,
        ),
        id="fire-beats-overstay",
    ),
    # 2. A staff unlock holds until it expires, whatever the room rule says.
    pytest.param(
        Case(
            at(14, 10),
            UNLOCK,
            Cause.STAFF_UNLOCK,
            override=unlock(at(14), at(14, 30)),
            until=at(14, 30),
            next_check=at(14, 30),
        ),
        id="staff-unlock-of-a-bookable-room",
    ),
    pytest.param(
        Case(at(14, 30), LOCK, Cause.NO_BOOKING, override=unlock(at(14), at(14, 30))),
        id="staff-unlock-expired",
    ),
    pytest.param(
        Case(
            at(22, 5),
            UNLOCK,
            Cause.STAFF_UNLOCK,
            room=ENTRANCE,
            override=unlock(at(22), at(22, 15), ENTRANCE),
            until=at(22, 15),
            next_check=at(22, 15),
        ),
        id="staff-unlock-of-the-entrance-at-night",
    ),
    pytest.param(
        Case(
            at(22, 15),
            LOCK,
            Cause.OUTSIDE_HOURS,
            room=ENTRANCE,
            override=unlock(at(22), at(22, 15), ENTRANCE),
            next_check=at(8, 30, day=1),
        ),
        id="staff-unlock-of-the-entrance-expired",
    ),
    pytest.param(
        Case(
            at(10, 40),
            UNLOCK,
            Cause.BOOKING,
            bookings=[B1_RUNNING],
            occupied=True,
            since=at(10, 5),
            override=unlock(at(10), at(10, 30)),
            booking_id="b1",
            until=at(11),
            next_check=at(11),
        ),
        id="staff-unlock-expired-during-a-booking",
    ),
    # 3. A staff lock holds against reasons that began before it, yields to later ones.
    pytest.param(
        Case(
            at(10, 30),
            LOCK,
            Cause.STAFF_LOCK,
            bookings=[B1_RUNNING, B2_LATER],
            occupied=True,
            since=at(10, 5),
            override=lock(at(10, 20)),
            next_check=at(11),
        ),
        id="staff-lock-during-a-booking",
    ),
    pytest.param(
        Case(
            at(11, 5),
            LOCK,
            Cause.STAFF_LOCK,
            bookings=[B1_ENDED, B2_LATER],
            occupied=True,
            since=at(10, 5),
            override=lock(at(10, 20)),
            next_check=at(11, 15),
        ),
        id="staff-lock-beats-the-overrun-of-the-booking-it-interrupted",
    ),
    pytest.param(
        Case(
            at(11, 20),
            UNLOCK,
            Cause.BOOKING,
            bookings=[B1_ENDED, B2_LATER],
            override=lock(at(10, 20)),
            booking_id="b2",
            until=at(12, 30),
            next_check=at(12, 30),
        ),
        id="staff-lock-yields-to-the-next-bookings-window",
    ),
    pytest.param(
        Case(
            at(9, 50),
            UNLOCK,
            Cause.BOOKING,
            bookings=[B1],
            override=lock(at(9)),
            booking_id="b1",
            until=at(11),
            next_check=at(11),
        ),
        id="staff-lock-before-a-booking-window-yields-to-it",
    ),
    pytest.param(
        Case(
            at(12),
            LOCK,
            Cause.STAFF_LOCK,
            room=ENTRANCE,
            override=lock(at(11), ENTRANCE),
            next_check=at(21),
        ),
        id="staff-lock-of-the-entrance-in-hours",
    ),
    pytest.param(
        Case(
            at(8, 30, day=1),
            UNLOCK,
            Cause.CENTER_HOURS,
            room=ENTRANCE,
            override=lock(at(11), ENTRANCE),
            until=at(21, day=1),
            next_check=at(21, day=1),
        ),
        id="staff-lock-of-the-entrance-yields-to-tomorrows-opening",
    ),
    # 4. The room's own rule. A 24-hour room is open, always.
    pytest.param(Case(at(3), UNLOCK, Cause.ALWAYS_OPEN, room=SELF_SERVICE), id="24h-at-night"),
    pytest.param(
        Case(at(12), UNLOCK, Cause.ALWAYS_OPEN, room=SELF_SERVICE, occupied=None), id="24h-day"
    ),
    # Rooms that follow the center hours (08:30-21:00).
    pytest.param(
        Case(at(0, 30), LOCK, Cause.OUTSIDE_HOURS, room=ENTRANCE, next_check=at(8, 30)),
        id="hours-after-midnight",
    ),
    pytest.param(
        Case(at(8, 29, 59), LOCK, Cause.OUTSIDE_HOURS, room=ENTRANCE, next_check=at(8, 30)),
        id="hours-just-before-opening",
    ),
    pytest.param(
        Case(at(8, 30), UNLOCK, Cause.CENTER_HOURS, room=ENTRANCE, until=at(21), next_check=at(21)),
        id="hours-opening",
    ),
    pytest.param(
        Case(
            at(20, 59, 59),
            UNLOCK,
            Cause.CENTER_HOURS,
            room=ENTRANCE,
            until=at(21),
            next_check=at(21),
        ),
        id="hours-just-before-closing",
    ),
    pytest.param(
        Case(at(21), LOCK, Cause.OUTSIDE_HOURS, room=ENTRANCE, next_check=at(8, 30, day=1)),
        id="hours-closing",
    ),
    pytest.param(
        Case(
            at(21),
            LOCK,
            Cause.OUTSIDE_HOURS,
            room=ENTRANCE,
            bookings=[B1],
            occupied=True,
            next_check=at(8, 30, day=1),
        ),
        id="hours-rooms-ignore-bookings-and-people",
    ),
    # Bookable rooms: locked unless a booking holds them, even in center hours.
    pytest.param(Case(at(12), LOCK, Cause.NO_BOOKING), id="bookable-no-booking-in-hours"),
    pytest.param(
        Case(
            at(12),
            LOCK,
            Cause.NO_BOOKING,
            bookings=[booking("b3", at(15), at(16))],
            next_check=at(14, 50),
        ),
        id="bookable-next-check-is-the-unlock-window",
    ),
    pytest.param(
        Case(at(9, 49, 59), LOCK, Cause.NO_BOOKING, bookings=[B1], next_check=at(9, 50)),
        id="booking-window-not-open-yet",
    ),
    pytest.param(
        Case(
            at(9, 50),
            UNLOCK,
            Cause.BOOKING,
            bookings=[B1],
            booking_id="b1",
            until=at(11),
            next_check=at(11),
        ),
        id="booking-window-opens-unlock-before-the-start",
    ),
    pytest.param(
        Case(
            at(10, 30),
            UNLOCK,
            Cause.BOOKING,
            bookings=[B1_RUNNING],
            occupied=True,
            since=at(10, 5),
            booking_id="b1",
            until=at(11),
            next_check=at(11),
        ),
        id="booking-running",
    ),
    pytest.param(
        Case(at(9, 55), LOCK, Cause.NO_BOOKING, bookings=[booking(cancelled_at=at(9, 52))]),
        id="booking-cancelled-before-start",
    ),
    pytest.param(
        Case(at(10, 15), LOCK, Cause.NO_BOOKING, bookings=[B1_NO_SHOW], next_check=at(10, 30)),
        id="no-show-locks",
    ),
    pytest.param(
        Case(
            at(10, 20),
            LOCK,
            Cause.NO_BOOKING,
            bookings=[B1_NO_SHOW],
            occupied=True,
            since=at(10, 18),
            next_check=at(10, 30),
        ),
        id="no-show-has-no-overrun",
    ),
    pytest.param(
        Case(
            at(11),
            UNLOCK,
            Cause.BOOKING,
            bookings=[B1_ENDED, B2],
            booking_id="b2",
            until=at(12),
            next_check=at(11, 15),
        ),
        id="back-to-back-no-gap",
    ),
    # After the end: open while the people of the booking are inside, at most the grace.
    pytest.param(
        Case(
            at(11),
            LOCK,
            Cause.NO_BOOKING,
            bookings=[B1_ENDED],
            since=at(10, 50),
            next_check=at(11, 15),
        ),
        id="end-empty-locks",
    ),
    pytest.param(
        Case(
            at(11),
            UNLOCK,
            Cause.OVERRUN,
            bookings=[B1_ENDED],
            occupied=True,
            since=at(10, 5),
            booking_id="b1",
            until=at(11, 15),
            next_check=at(11, 15),
        ),
        id="overrun-people-inside",
    ),
    pytest.param(
        Case(
            at(11, 10),
            UNLOCK,
            Cause.OVERRUN,
            bookings=[B1_ENDED],
            occupied=None,
            booking_id="b1",
            until=at(11, 15),
            next_check=at(11, 15),
        ),
        id="overrun-occupancy-unknown-until-grace",
    ),
    pytest.param(
        Case(
            at(11, 10),
            LOCK,
            Cause.NO_BOOKING,
            bookings=[B1_ENDED],
            since=at(11, 6),
            next_check=at(11, 15),
        ),
        id="overrun-ends-when-empty",
    ),
    pytest.param(
        Case(
            at(11, 10),
            LOCK,
            Cause.NO_BOOKING,
            bookings=[B1_ENDED],
            occupied=True,
            since=at(11, 6),
            next_check=at(11, 15),
        ),
        id="somebody-new-after-the-end-is-no-overrun",
    ),
    pytest.param(
        Case(
            at(11, 15),
            LOCK,
            Cause.NO_BOOKING,
            bookings=[B1_ENDED],
            occupied=True,
            since=at(10, 5),
            overstay="b1",
        ),
        id="grace-over-people-inside-overstay",
    ),
    pytest.param(
        Case(at(11, 15), LOCK, Cause.NO_BOOKING, bookings=[B1_ENDED], occupied=None),
        id="grace-over-occupancy-unknown-no-overstay",
    ),
    pytest.param(
        Case(
            at(10, 40),
            UNLOCK,
            Cause.OVERRUN,
            bookings=[booking(started_at=at(10), checked_in_at=at(10, 5), cancelled_at=at(10, 30))],
            occupied=True,
            since=at(10, 5),
            booking_id="b1",
            until=at(10, 45),
            next_check=at(10, 45),
        ),
        id="cancelled-mid-booking-people-inside-overrun",
    ),
    pytest.param(
        Case(
            at(10, 30),
            LOCK,
            Cause.NO_BOOKING,
            bookings=[booking(started_at=at(10), cancelled_at=at(10, 30))],
            next_check=at(10, 45),
        ),
        id="cancelled-mid-booking-empty-locks-now",
    ),
]


@pytest.mark.parametrize("case", DECIDE_CASES)
def test_decide(case: Case) -> None:
    facts = RoomFacts(
        room=case.room,
        occupied=case.occupied,
        occupied_since=case.since,
        bookings=case.bookings,
        override=case.override,
        fire_latched=case.fire,
    )
    decision = decide(facts, case.now, hours=SITE.site.hours, zone=ZONE, rules=SITE.rules)
    assert decision == Decision(
        case.intent,
        case.cause,
        case.booking_id,
        case.until,
        case.next_check,
        case.overstay,
    )


def test_a_decision_describes_itself_for_the_event_log() -> None:
    decision = Decision(LockIntent.UNLOCK, Cause.BOOKING, "b1", at(11))
    assert decision.describe() == "booked (b1) until 2026-11-23T11:00:00+08:00"
    assert Decision(LockIntent.UNLOCK, Cause.FIRE_ALARM).describe().startswith("fire alarm")


@pytest.mark.parametrize(
    ("override", "now", "active"),
    [
        (unlock(at(14), at(14, 30)), at(13, 59), False),
        (unlock(at(14), at(14, 30)), at(14), True),
        (unlock(at(14), at(14, 30)), at(14, 29, 59), True),
        (unlock(at(14), at(14, 30)), at(14, 30), False),
        (StaffOverride(HUI.id, LockIntent.UNLOCK, at(14)), at(14), False),  # no end: nothing
        (lock(at(14)), at(13), False),
        (lock(at(14)), at(14), True),
        (lock(at(14)), at(9, day=30), True),  # a lock has no end of its own
    ],
)
def test_staff_override_active(override: StaffOverride, now: datetime, active: bool) -> None:
    assert override.active(now) is active


@pytest.mark.parametrize(
    ("now", "inside"),
    [
        (at(8, 29, 59), False),
        (at(8, 30), True),
        (at(20, 59, 59), True),
        (at(21), False),
        (at(23, 59), False),
    ],
)
def test_center_hours(now: datetime, inside: bool) -> None:
    assert within_hours(now, SITE.site.hours, ZONE) is inside
    assert opening(now, SITE.site.hours, ZONE) == (at(8, 30), at(21))


def test_the_day_of_the_hours_is_the_sites_day_not_utcs() -> None:
    # 01:00 in Shanghai is still the previous day in UTC.
    utc_time = at(1).astimezone(ZoneInfo("UTC"))
    assert opening(utc_time, SITE.site.hours, ZONE) == (at(8, 30), at(21))


# --- rules.fire -----------------------------------------------------------------------------

LATCHED = FireLatch(latched_at=at(10))
RELEASED = FireLatch(latched_at=None, reset_at=at(11), reset_by="staff-1")


@pytest.mark.parametrize(
    ("latch", "panel", "expected"),
    [
        (FireLatch(), True, True),
        (FireLatch(), False, False),
        (FireLatch(), None, False),  # losing the panel's signal sets nothing
        (RELEASED, True, True),  # a new alarm after a reset latches again
        (LATCHED, True, False),  # already latched: nothing new
        (LATCHED, False, False),
        (LATCHED, None, False),
    ],
)
def test_should_latch(latch: FireLatch, panel: bool | None, expected: bool) -> None:
    assert should_latch(latch, panel) is expected


@pytest.mark.parametrize(
    ("latch", "panel", "refused"),
    [
        (LATCHED, True, True),  # the panel still reports the alarm
        (LATCHED, None, True),  # offline or not heard from is not "no fire"
        (LATCHED, False, False),
        (FireLatch(), True, False),  # nothing to reset: accepted, changes nothing
        (FireLatch(), None, False),
        (RELEASED, False, False),
    ],
)
def test_reset_refusal(latch: FireLatch, panel: bool | None, refused: bool) -> None:
    refusal = reset_refusal(latch, panel)
    assert (refusal is not None) is refused
    if refused:
        assert refusal  # a reason staff can read


def test_a_latch_is_latched_until_reset() -> None:
    assert LATCHED.latched
    assert not RELEASED.latched
    assert not FireLatch().latched
