"""Bookings, door locks and the fire latch, the way the center lives them.

Each test is a short story at the Changbai center (hours 08:30-21:00
Asia/Shanghai; bookable rooms: the HUI Xin Room, the convergence hall and the
practice hall; the main entrance and the gym follow the center hours) told on
a virtual clock: hours pass in milliseconds, nothing sleeps. The controller's
parts are the real ones (SQLite, event log, alarms, webhook queue, lock
commander, rules) wired by :class:`tests.access_rig.AccessRig`; only the MQTT
side is replaced, and the locks here obey their commands as real locks do
(a state report right after the command), unless a test says otherwise.

What is asserted is what people notice: which lock got which command and
when, a booking's status, the webhooks queued for the booking system, the
alarms staff see and the events in the log.
"""

from __future__ import annotations

import asyncio
import time as wallclock
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

import orjson
import pytest

from controller.access import AccessRefused
from controller.bookings import BookingRefused
from controller.clock import VirtualClock
from controller.locks import FireLatched
from controller.readings import DoorState, LockReading, LockState
from controller.site import DeviceKind, Site, parse_site
from rules.access import LockIntent
from tests.access_rig import AccessRig

ZONE = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 23)
WEBHOOK_URL = "http://127.0.0.1:9/hooks"  # never called: the queue is read from SQLite
BOOKABLE = ("hui-xin-room", "convergence-hall", "practice-hall")
# Every controlled lock, in the site file's room order.
LOCKS = (
    "lock-main",
    "lock-hui-xin-room",
    "lock-convergence-hall",
    "lock-practice-hall",
    "lock-gym",
)
HOURS_LOCKS = ("lock-main", "lock-gym")
HUI, CONV, PRACTICE = BOOKABLE
LOCK_OF = {room: f"lock-{room}" for room in BOOKABLE}
LOCKED, UNLOCKED, JAMMED = LockState.LOCKED, LockState.UNLOCKED, LockState.JAMMED


def at(hour: int, minute: int = 0, second: int = 0, *, day: int = 0) -> datetime:
    return datetime.combine(DAY + timedelta(days=day), time(hour, minute, second), tzinfo=ZONE)


# --- the rig, with locks that answer and commands that carry their time ---------------------


@dataclass
class Rig(AccessRig):
    """The access rig, plus when each command left and how far the event log was then.

    ``obedient`` locks report the commanded state right after a command (on
    the next turn of the loop, at the same virtual moment).
    """

    obedient: bool = True
    log: list[tuple[datetime, str, str]] = field(default_factory=list)
    log_ids_at_send: list[int | None] = field(default_factory=list)

    def send(self, topic: str, payload: bytes) -> bool:
        accepted = super().send(topic, payload)
        device, command = self.sent[-1]
        self.log.append((self.clock.now(), device, command))
        self.log_ids_at_send.append(self.events.latest_id())
        if self.obedient:
            asyncio.get_running_loop().call_soon(self._obey, device, command)
        return accepted

    def _obey(self, device: str, command: str) -> None:
        self.lock_reports(device, LOCKED if command == "LOCK" else UNLOCKED)

    def timed(self, device: str, since: int = 0) -> list[tuple[datetime, str]]:
        """The commands ``device`` got (from command number ``since`` on), with their times."""
        return [(moment, command) for moment, dev, command in self.log[since:] if dev == device]

    def hooks(self) -> list[tuple[str, str, datetime]]:
        """Queued webhooks, in order: (type, booking id, when it became true)."""
        rows = self.db.execute("SELECT body FROM webhook_deliveries ORDER BY seq").fetchall()
        found = []
        for row in rows:
            body = orjson.loads(row[0])
            found.append(
                (body["type"], body["data"]["booking"]["id"], datetime.fromisoformat(body["time"]))
            )
        return found

    def hooks_of(self, booking_id: str) -> list[str]:
        return [kind for kind, booking, _ in self.hooks() if booking == booking_id]

    def event_kinds(self, since: datetime | None = None) -> list[str]:
        return [event.kind for event in self.events.query(since=since or at(0), limit=100_000)]

    def alarm_active(self, kind: str, source: str) -> bool:
        return self.alarms.is_active(kind, source)


async def settle(rounds: int = 25) -> None:
    """Let every task woken so far run until it waits again (no time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


@dataclass
class Center:
    rig: Rig
    tasks: list[asyncio.Task[None]]

    @property
    def clock(self) -> VirtualClock:
        return self.rig.clock

    async def until(self, moment: datetime) -> None:
        """Let the center live until ``moment``, stopping at every moment a rule named.

        Time moves from one deadline to the next, read from what the
        controller shows (each room's next check; one second at a time while a
        lock command waits for its confirmation), and the loops settle at
        each, so every step of the story can be checked where it happens.
        """
        while True:
            await settle()
            now = self.clock.now()
            if now >= moment:
                return
            step = moment
            rooms = self.rig.access.status()["rooms"].values()
            for check in (room["next_check"] for room in rooms if room["next_check"]):
                step = min(step, max(datetime.fromisoformat(check), now))
            locks = self.rig.locks.status()["locks"].values()
            if any(not lock["confirmed"] and not lock["failed"] for lock in locks):
                step = min(step, now + timedelta(seconds=1))
            await self.clock.advance(max(step - now, timedelta(0)))
            if step == now:  # a check due now that the loop has not made yet
                await settle()
                if self.clock.now() == now and self._overdue(now):
                    raise AssertionError(f"the access loop did not run its check due at {now}")

    def _overdue(self, now: datetime) -> bool:
        rooms = self.rig.access.status()["rooms"].values()
        return any(
            room["next_check"] and datetime.fromisoformat(room["next_check"]) <= now
            for room in rooms
        )

    async def wait(self, seconds: float | timedelta) -> None:
        delta = seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)
        await self.until(self.clock.now() + delta)

    async def shutdown(self) -> None:
        """Stop the loops and close the database (as a stop or a kill would)."""
        if not self.tasks:
            return
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        self.rig.stop()


class OpenCenter(Protocol):
    def __call__(
        self,
        start: datetime,
        *,
        data_dir: Path | None = ...,
        site: Site | None = ...,
        locks: Mapping[str, LockState | None] | None = ...,
        empty: Iterable[str] = ...,
        panel: bool | None = ...,
        obedient: bool = ...,
    ) -> Awaitable[Center]: ...


def default_lock_states(site: Site, start: datetime) -> dict[str, LockState | None]:
    """What the locks report when a test begins: what the rules would have left them in."""
    open_now = time(8, 30) <= start.astimezone(ZONE).time() < time(21)
    states: dict[str, LockState | None] = {}
    for device in site.devices:
        if device.kind is DeviceKind.LOCK:
            follows_hours = device.id in HOURS_LOCKS
            states[device.id] = UNLOCKED if follows_hours and open_now else LOCKED
    return states


@pytest.fixture
async def open_center(site: Site) -> AsyncIterator[OpenCenter]:
    """Start the access rules at ``start``, as the controller starts them.

    The locks' retained states arrive first (``locks``; by default what the
    rules would have left them in), then the fire panel and the occupancy
    sensors of ``empty`` rooms report, then the MQTT link is up and the
    deadline loops run.
    """
    centers: list[Center] = []

    async def open_(
        start: datetime,
        *,
        data_dir: Path | None = None,
        site: Site | None = site,
        locks: Mapping[str, LockState | None] | None = None,
        empty: Iterable[str] = BOOKABLE,
        panel: bool | None = False,
        obedient: bool = True,
    ) -> Center:
        assert site is not None
        clock = VirtualClock(start)
        rig = Rig(
            site,
            clock,
            data_dir=data_dir,
            webhook_url=WEBHOOK_URL,
            connected=False,
            obedient=obedient,
        )
        rig.start()
        states = default_lock_states(site, start) if locks is None else locks
        for device, state in states.items():
            if state is not None:
                rig.report(device, LockReading(state, DoorState.CLOSED), retained=True)
        if panel is not None:
            rig.fire(panel)
        for room in empty:
            rig.occupancy(room, False, 0)
        rig.locks.connected(rig.send)
        tasks = [
            asyncio.create_task(rig.access.run()),
            asyncio.create_task(rig.locks.run()),
        ]
        center = Center(rig, tasks)
        centers.append(center)
        await center.wait(0)
        return center

    yield open_
    for center in centers:
        await center.shutdown()


def lock_states(rig: Rig) -> dict[str, LockState | None]:
    """What each lock reports now (kept across a restart as the broker keeps it)."""
    return {lock: rig.lock_state(lock) for lock in LOCKS}


def no_lock_since(rig: Rig, mark: int) -> list[tuple[datetime, str, str]]:
    """Any LOCK command sent since command number ``mark`` (there must be none)."""
    return [entry for entry in rig.log[mark:] if entry[2] == "LOCK"]


# --- a day of bookings --------------------------------------------------------------------


async def test_a_whole_day_of_bookings_replays_in_milliseconds(open_center: OpenCenter) -> None:
    began = wallclock.perf_counter()
    center = await open_center(at(7))
    rig = center.rig
    assert rig.log == []  # every lock already where the rules want it at 07:00
    # (booking, room, start, end, people arrive, people leave)
    day = [
        ("p1", PRACTICE, at(8, 30), at(9, 30), at(8, 25), at(9, 20)),  # early, leave early
        ("h1", HUI, at(9), at(10, 30), at(9, 7), at(10, 36)),  # overrun 6 min
        ("c1", CONV, at(10), at(12), at(9, 55), at(12)),  # leave right at the end
        ("h2", HUI, at(14), at(15), at(14, 10), at(14, 50)),
        ("p2", PRACTICE, at(16), at(17, 30), at(16, 14, 59), at(17, 40)),  # just in time
        ("c2", CONV, at(19), at(21), at(18, 55), at(21, 4)),  # past closing
    ]
    for booking_id, room, start, end, _, _ in day:
        rig.book(booking_id, room, start, end, title=f"meeting {booking_id}", organizer="居委会")
    people = sorted(
        [(arrive, room, True) for _, room, _, _, arrive, _ in day]
        + [(leave, room, False) for _, room, _, _, _, leave in day]
    )
    for moment, room, occupied in people:
        await center.until(moment)
        rig.occupancy(room, occupied, 6 if occupied else 0)
    await center.until(at(23, 59))

    expected_locks: dict[str, list[tuple[datetime, str]]] = {lock: [] for lock in LOCKS}
    for _, room, start, end, _, leave in day:
        expected_locks[LOCK_OF[room]] += [
            (start - timedelta(minutes=10), "UNLOCK"),
            (max(end, leave), "LOCK"),
        ]
    for lock in HOURS_LOCKS:
        expected_locks[lock] = [(at(8, 30), "UNLOCK"), (at(21), "LOCK")]
    assert {lock: rig.timed(lock) for lock in LOCKS} == expected_locks
    # Obeyed at once: every command was sent exactly once.
    assert len(rig.sent) == sum(len(commands) for commands in expected_locks.values())

    for booking_id, _, start, end, arrive, _ in day:
        assert rig.status(booking_id) == "ended", booking_id
        assert [(kind, moment) for kind, b, moment in rig.hooks() if b == booking_id] == [
            ("booking.started", start),
            ("booking.checked_in", max(start, arrive)),
            ("booking.ended", end),
        ], booking_id
    assert rig.alarms.query(state=None, open_only=True) == []
    assert wallclock.perf_counter() - began < 2.0


async def test_one_long_advance_of_the_virtual_clock_keeps_every_deadline(
    open_center: OpenCenter,
) -> None:
    """What a test naturally writes: one jump of the clock over a morning."""
    center = await open_center(at(7))
    rig = center.rig
    rig.book("b1", HUI, at(10), at(11))
    await settle()
    await center.clock.advance(at(12) - center.clock.now())
    assert rig.timed("lock-main") == [(at(8, 30), "UNLOCK")]
    assert rig.timed("lock-hui-xin-room") == [(at(9, 50), "UNLOCK"), (at(10, 15), "LOCK")]


async def test_back_to_back_bookings_keep_the_door_open_in_between(
    open_center: OpenCenter,
) -> None:
    center = await open_center(at(9))
    rig = center.rig
    rig.book("morning", HUI, at(10), at(11))
    rig.book("late-morning", HUI, at(11), at(12))
    await center.until(at(10, 5))
    rig.occupancy(HUI, True, 8)
    await center.until(at(10, 58))
    rig.occupancy(HUI, False, 0)  # the first group leaves before the second arrives
    await center.until(at(11, 6))
    rig.occupancy(HUI, True, 5)
    await center.until(at(11, 55))
    rig.occupancy(HUI, False, 0)
    await center.until(at(13))

    assert rig.timed("lock-hui-xin-room") == [(at(9, 50), "UNLOCK"), (at(12), "LOCK")]
    assert (rig.status("morning"), rig.status("late-morning")) == ("ended", "ended")
    assert rig.hooks_of("late-morning") == [
        "booking.started",
        "booking.checked_in",
        "booking.ended",
    ]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        pytest.param(at(10, 30), at(11, 30), id="overlaps-the-end"),
        pytest.param(at(9), at(10, 1), id="overlaps-the-start"),
        pytest.param(at(9), at(12), id="encloses-it"),
        pytest.param(at(10, 15), at(10, 45), id="inside-it"),
        pytest.param(at(10), at(11), id="same-time"),
    ],
)
async def test_a_booking_overlapping_another_is_refused_and_changes_nothing(
    open_center: OpenCenter, start: datetime, end: datetime
) -> None:
    center = await open_center(at(8))
    rig = center.rig
    first = rig.book("b-first", HUI, at(10), at(11), title="calligraphy class")
    events_before = rig.events.latest_id()

    with pytest.raises(BookingRefused) as refused:
        rig.book("b-second", HUI, start, end, title="choir")

    assert refused.value.status == 409
    assert refused.value.code == "overlap"
    assert "b-first" in refused.value.message
    assert refused.value.details["booking_id"] == "b-first"
    assert rig.booking_store.get("b-second") is None
    assert rig.booking_store.get("b-first") == first
    assert len(rig.booking_store) == 1
    assert rig.events.latest_id() == events_before  # not even a log line
    await center.until(at(12))
    # b-first lived its life undisturbed (nobody came: released at 10:15).
    assert rig.timed("lock-hui-xin-room") == [(at(9, 50), "UNLOCK"), (at(10, 15), "LOCK")]
    assert rig.hooks_of("b-second") == []
    # Touching is not overlapping, and another room is free.
    rig.book("b-after", HUI, at(12), at(13))
    rig.book("b-elsewhere", CONV, start.replace(day=24), end.replace(day=24))


# --- no-shows -----------------------------------------------------------------------------


async def test_nobody_by_start_plus_15_minutes_releases_the_booking(
    open_center: OpenCenter,
) -> None:
    center = await open_center(at(9))
    rig = center.rig
    rig.book("b1", HUI, at(10), at(11), organizer="王阿姨")
    await center.until(at(10, 14, 59))
    assert rig.status("b1") == "active"
    assert rig.timed("lock-hui-xin-room") == [(at(9, 50), "UNLOCK")]

    await center.until(at(10, 15))
    assert rig.status("b1") == "no_show"
    assert rig.timed("lock-hui-xin-room") == [(at(9, 50), "UNLOCK"), (at(10, 15), "LOCK")]
    assert rig.hooks() == [
        ("booking.started", "b1", at(10)),
        ("booking.no_show", "b1", at(10, 15)),
    ]
    assert "booking_no_show" in rig.event_kinds()

    # The slot is free: the desk books the rest of it for a walk-in group.
    await center.until(at(10, 17))
    rig.book("walk-in", HUI, at(10, 20), at(11))
    assert rig.timed("lock-hui-xin-room")[-1] == (at(10, 17), "UNLOCK")  # window already open
    await center.until(at(12))
    assert rig.status("walk-in") == "no_show"  # nobody came either, at 10:35
    assert rig.status("b1") == "no_show"
    assert rig.hooks_of("b1") == ["booking.started", "booking.no_show"]  # never "ended"


async def test_with_the_sensor_never_heard_from_nobody_is_released(
    open_center: OpenCenter,
) -> None:
    center = await open_center(at(9), empty=[])  # the room's sensor never reported
    rig = center.rig
    rig.book("b1", HUI, at(10), at(11))
    await center.until(at(10, 59))
    assert rig.status("b1") == "active"
    assert rig.timed("lock-hui-xin-room") == [(at(9, 50), "UNLOCK")]
    await center.until(at(12))
    assert rig.status("b1") == "ended"
    assert rig.hooks_of("b1") == ["booking.started", "booking.ended"]
    # Nobody known to be inside or out: held open to the latest relock, no overstay alarm.
    assert rig.timed("lock-hui-xin-room")[1:] == [(at(11, 15), "LOCK")]
    assert not rig.alarm_active("overstay", HUI)


async def test_with_the_sensor_offline_at_the_deadline_nobody_is_released(
    open_center: OpenCenter,
) -> None:
    center = await open_center(at(9))
    rig = center.rig
    rig.book("b1", HUI, at(10), at(11))
    await center.until(at(10, 5))
    rig.availability("occ-hui-xin-room", False)  # its LWT: the last "empty" is stale now
    await center.until(at(10, 45))
    assert rig.status("b1") == "active"
    assert rig.timed("lock-hui-xin-room") == [(at(9, 50), "UNLOCK")]
    assert "booking.no_show" not in rig.hooks_of("b1")


@pytest.mark.parametrize("unknown", ["controller-down", "sensor-offline"])
async def test_a_no_show_deadline_passed_unknown_holds_the_room_until_its_end(
    open_center: OpenCenter, tmp_path: Path, unknown: str
) -> None:
    center = await open_center(at(9), data_dir=tmp_path)
    center.rig.book("b1", HUI, at(10), at(11))
    if unknown == "controller-down":
        await center.until(at(9, 30))
        states = lock_states(center.rig)
        await center.shutdown()
        center = await open_center(at(10, 30), data_dir=tmp_path, locks=states, empty=[])
        unlocked_at = at(10, 30)
    else:
        await center.until(at(10, 5))
        center.rig.availability("occ-hui-xin-room", False)
        unlocked_at = at(9, 50)
    rig = center.rig
    await center.until(at(10, 40))
    rig.occupancy(HUI, False, 0)  # back: the group may only be out for a tea break
    await center.until(at(12))
    assert rig.status("b1") == "ended"
    assert rig.hooks_of("b1") == ["booking.started", "booking.ended"]
    assert rig.timed("lock-hui-xin-room") == [(unlocked_at, "UNLOCK"), (at(11), "LOCK")]


# --- overrun and overstay -------------------------------------------------------------------


async def test_people_still_inside_after_the_end_keep_the_door_open_until_they_leave(
    open_center: OpenCenter,
) -> None:
    center = await open_center(at(9))
    rig = center.rig
    rig.book("b1", HUI, at(10), at(11))
    await center.until(at(10, 2))
    rig.occupancy(HUI, True, 12)
    await center.until(at(11, 9))
    assert rig.status("b1") == "ended"
    assert rig.timed("lock-hui-xin-room") == [(at(9, 50), "UNLOCK")]
    rig.occupancy(HUI, False, 0)
    await center.until(at(12))
    assert rig.timed("lock-hui-xin-room") == [(at(9, 50), "UNLOCK"), (at(11, 9), "LOCK")]
    assert not rig.alarm_active("overstay", HUI)
    assert rig.alarms.query(kind="overstay") == []


async def test_people_inside_at_the_end_of_the_grace_are_locked_and_an_overstay_raised(
    open_center: OpenCenter,
) -> None:
    center = await open_center(at(9))
    rig = center.rig
    rig.book("b1", HUI, at(10), at(11))
    await center.until(at(10, 2))
    rig.occupancy(HUI, True, 12)
    await center.until(at(11, 14, 59))
    assert rig.timed("lock-hui-xin-room") == [(at(9, 50), "UNLOCK")]
    assert not rig.alarm_active("overstay", HUI)

    await center.until(at(11, 15))
    assert rig.timed("lock-hui-xin-room") == [(at(9, 50), "UNLOCK"), (at(11, 15), "LOCK")]
    assert rig.alarm_active("overstay", HUI)
    (alarm,) = rig.alarms.query(kind="overstay")
    assert (alarm.room, alarm.booking_id) == (HUI, "b1")

    await center.until(at(11, 40))
    assert rig.alarm_active("overstay", HUI)  # still inside: still raised
    rig.occupancy(HUI, False, 0)
    await center.wait(1)
    assert not rig.alarm_active("overstay", HUI)
    (alarm,) = rig.alarms.query(kind="overstay")
    assert alarm.state.value == "cleared"
    assert rig.timed("lock-hui-xin-room") == [(at(9, 50), "UNLOCK"), (at(11, 15), "LOCK")]


# --- cancellations --------------------------------------------------------------------------


async def test_a_booking_cancelled_before_its_start_never_unlocks_the_room(
    open_center: OpenCenter,
) -> None:
    center = await open_center(at(8))
    rig = center.rig
    rig.book("b1", HUI, at(10), at(11))
    await center.until(at(9))
    rig.bookings.cancel("b1", center.clock.now())
    await center.until(at(12))
    assert rig.status("b1") == "cancelled"
    assert rig.timed("lock-hui-xin-room") == []
    assert rig.hooks_of("b1") == []
    assert "booking_cancelled" in rig.event_kinds()
    # Its slot is free again.
    rig.book("b2", HUI, at(12, 30), at(13))


async def test_a_booking_cancelled_inside_its_unlock_window_locks_the_room_again(
    open_center: OpenCenter,
) -> None:
    center = await open_center(at(9))
    rig = center.rig
    rig.book("b1", HUI, at(10), at(11))
    await center.until(at(9, 55))
    rig.bookings.cancel("b1", center.clock.now())
    await center.until(at(12))
    assert rig.status("b1") == "cancelled"
    assert rig.timed("lock-hui-xin-room") == [(at(9, 50), "UNLOCK"), (at(9, 55), "LOCK")]
    assert rig.hooks_of("b1") == []


async def test_a_running_booking_cancelled_ends_now_and_locks_once_empty(
    open_center: OpenCenter,
) -> None:
    center = await open_center(at(9))
    rig = center.rig
    rig.book("b1", HUI, at(10), at(11))
    await center.until(at(10, 3))
    rig.occupancy(HUI, True, 4)
    await center.until(at(10, 20))
    rig.bookings.cancel("b1", center.clock.now())
    await center.wait(1)
    assert rig.status("b1") == "ended"
    assert rig.timed("lock-hui-xin-room") == [(at(9, 50), "UNLOCK")]  # people still inside
    await center.until(at(10, 25))
    rig.occupancy(HUI, False, 0)
    await center.until(at(12))
    assert rig.timed("lock-hui-xin-room") == [(at(9, 50), "UNLOCK"), (at(10, 25), "LOCK")]
    assert rig.status("b1") == "ended"
    # The rest of its slot is free.
    rig.book("b2", HUI, at(12, 30), at(13))


async def test_a_running_booking_cancelled_tells_the_booking_system_it_ended(
    open_center: OpenCenter,
) -> None:
    center = await open_center(at(9))
    rig = center.rig
    rig.book("b1", HUI, at(10), at(11))
    await center.until(at(10, 3))
    rig.occupancy(HUI, True, 4)
    await center.until(at(10, 20))
    rig.bookings.cancel("b1", center.clock.now())
    await center.until(at(12))
    assert rig.hooks() == [
        ("booking.started", "b1", at(10)),
        ("booking.checked_in", "b1", at(10, 3)),
        ("booking.ended", "b1", at(10, 20)),
    ]
    stored = rig.booking_store.get("b1")
    assert stored is not None
    assert stored.ended_at == at(10, 20)
    assert "booking_ended" in rig.event_kinds()


# --- center hours and 24-hour rooms -----------------------------------------------------------


async def test_the_entrance_and_the_gym_follow_the_center_hours_and_nothing_else(
    open_center: OpenCenter,
) -> None:
    center = await open_center(at(6))
    rig = center.rig
    # Bookings elsewhere, one running past closing with people inside, one a no-show.
    rig.book("evening", CONV, at(19), at(21))
    rig.book("morning", HUI, at(8, 30), at(9, 30))
    await center.until(at(19, 5))
    rig.occupancy(CONV, True, 30)
    await center.until(at(21, 10))
    rig.occupancy(CONV, False, 0)
    await center.until(at(9, day=2))

    for lock in HOURS_LOCKS:
        assert rig.timed(lock) == [
            (at(8, 30), "UNLOCK"),
            (at(21), "LOCK"),
            (at(8, 30, day=1), "UNLOCK"),
            (at(21, day=1), "LOCK"),
            (at(8, 30, day=2), "UNLOCK"),
        ], lock
    assert rig.timed("lock-convergence-hall") == [(at(18, 50), "UNLOCK"), (at(21, 10), "LOCK")]
    assert rig.timed("lock-hui-xin-room") == [(at(8, 20), "UNLOCK"), (at(8, 45), "LOCK")]


ALWAYS_OPEN_SITE = """
[site]
id = "tiny"
name = "Tiny center"
timezone = "Asia/Shanghai"
hours = { open = "08:30", close = "21:00" }

[[rooms]]
id = "self-service"
name = "24-hour self-service area"
always_open = true

[[rooms]]
id = "hall"
name = "Hall"

[[devices]]
id = "lock-self-service"
kind = "lock"
room = "self-service"
interval = "60s"

[[devices]]
id = "lock-hall"
kind = "lock"
room = "hall"
interval = "60s"

[[devices]]
id = "fire-panel"
kind = "fire_alarm"
interval = "30s"
"""


async def test_a_24_hour_room_is_never_locked_by_a_rule(open_center: OpenCenter) -> None:
    tiny = parse_site(ALWAYS_OPEN_SITE, "tiny.toml")
    center = await open_center(
        at(22), site=tiny, locks={"lock-self-service": LOCKED, "lock-hall": LOCKED}, empty=[]
    )
    rig = center.rig
    await center.wait(1)
    assert rig.timed("lock-self-service") == [(at(22), "UNLOCK")]  # found locked: opened
    await center.until(at(10, day=1))
    # A staff unlock expiring, and a fire alarm reset, do not lock it either.
    rig.access.staff_unlock("self-service", 5, "delivery", "staff-1")
    await center.until(at(10, 30, day=1))
    rig.fire(True)
    await center.wait(60)
    rig.fire(False)
    rig.access.fire_reset("staff-1")
    await center.until(at(12, day=3))

    assert rig.timed("lock-self-service") == [
        (at(22), "UNLOCK"),
        (at(10, 30, day=1), "UNLOCK"),  # the fire alarm tells every lock
    ]
    # The other room of that site follows the center hours.
    assert rig.timed("lock-hall") == [
        (at(8, 30, day=1), "UNLOCK"),
        (at(10, 30, day=1), "UNLOCK"),
        (at(21, day=1), "LOCK"),
        (at(8, 30, day=2), "UNLOCK"),
        (at(21, day=2), "LOCK"),
        (at(8, 30, day=3), "UNLOCK"),
    ]


# --- staff -----------------------------------------------------------------------------------


async def test_staff_unlock_a_room_for_half_an_hour_then_it_relocks(
    open_center: OpenCenter,
) -> None:
    center = await open_center(at(14))
    rig = center.rig
    result = rig.access.staff_unlock(HUI, 30, "setting up chairs", "staff-1")
    assert result.to_json() == {
        "room": HUI,
        "intent": "UNLOCK",
        "cause": "staff_unlock",
        "until": at(14, 30).isoformat(),
        "locks": ["lock-hui-xin-room"],
    }
    await center.until(at(15))
    assert rig.timed("lock-hui-xin-room") == [(at(14), "UNLOCK"), (at(14, 30), "LOCK")]
    assert "staff_unlock" in rig.event_kinds()


async def test_staff_unlock_the_entrance_at_night_then_it_relocks(
    open_center: OpenCenter,
) -> None:
    center = await open_center(at(22))
    rig = center.rig
    rig.access.staff_unlock("entrance", 15, "late delivery", "guard")
    await center.until(at(8, 0, day=1))
    assert rig.timed("lock-main") == [(at(22), "UNLOCK"), (at(22, 15), "LOCK")]
    assert rig.timed("lock-gym") == []


async def test_a_staff_lock_during_a_booking_holds_until_the_next_bookings_window(
    open_center: OpenCenter,
) -> None:
    center = await open_center(at(9))
    rig = center.rig
    rig.book("b1", HUI, at(10), at(11))
    rig.book("b2", HUI, at(11, 30), at(12, 30))
    await center.until(at(10, 5))
    rig.occupancy(HUI, True, 6)
    await center.until(at(10, 20))
    result = rig.access.staff_lock(HUI, "water leak", "staff-2")
    assert (result.decision.intent, result.decision.cause.value) == (LockIntent.LOCK, "staff_lock")
    await center.until(at(10, 40))
    rig.occupancy(HUI, False, 0)  # everybody out, the booking runs on (on paper)
    await center.until(at(11, 35))
    rig.occupancy(HUI, True, 3)
    await center.until(at(12, 25))
    rig.occupancy(HUI, False, 0)
    await center.until(at(13))

    assert rig.timed("lock-hui-xin-room") == [
        (at(9, 50), "UNLOCK"),
        (at(10, 20), "LOCK"),
        (at(11, 20), "UNLOCK"),  # the next booking's window
        (at(12, 30), "LOCK"),
    ]
    assert (rig.status("b1"), rig.status("b2")) == ("ended", "ended")
    assert rig.hooks_of("b1") == ["booking.started", "booking.checked_in", "booking.ended"]


async def test_a_staff_lock_of_the_gym_holds_until_the_next_opening(
    open_center: OpenCenter,
) -> None:
    center = await open_center(at(12))
    rig = center.rig
    rig.access.staff_lock("gym", "broken treadmill", "staff-2")
    await center.until(at(12, day=1))
    assert rig.timed("lock-gym") == [(at(12), "LOCK"), (at(8, 30, day=1), "UNLOCK")]


# --- lock confirmation ---------------------------------------------------------------------


async def test_an_unanswered_lock_command_is_resent_twice_then_alarmed(
    open_center: OpenCenter,
) -> None:
    center = await open_center(at(8, 29), obedient=False)
    rig = center.rig
    await center.until(at(8, 30, 14))
    assert rig.timed("lock-main") == [
        (at(8, 30), "UNLOCK"),
        (at(8, 30, 5), "UNLOCK"),
        (at(8, 30, 10), "UNLOCK"),
    ]
    assert not rig.alarm_active("lock_unconfirmed", "lock-main")

    await center.until(at(8, 30, 15))
    assert rig.alarm_active("lock_unconfirmed", "lock-main")
    assert rig.alarm_active("lock_unconfirmed", "lock-gym")
    await center.until(at(9))
    assert len(rig.timed("lock-main")) == 3  # three tries in all

    rig.lock_reports("lock-main", UNLOCKED)  # somebody fixed it
    await center.wait(1)
    assert not rig.alarm_active("lock_unconfirmed", "lock-main")
    assert rig.alarm_active("lock_unconfirmed", "lock-gym")
    assert "lock_confirmed" in rig.event_kinds()


async def test_a_lock_that_answers_after_the_first_retry_raises_nothing(
    open_center: OpenCenter,
) -> None:
    center = await open_center(at(8, 29), obedient=False)
    rig = center.rig
    await center.until(at(8, 30, 7))
    rig.lock_reports("lock-main", UNLOCKED)
    await center.until(at(9))
    assert rig.timed("lock-main") == [(at(8, 30), "UNLOCK"), (at(8, 30, 5), "UNLOCK")]
    assert not rig.alarm_active("lock_unconfirmed", "lock-main")


async def test_a_jammed_lock_raises_lock_jammed(open_center: OpenCenter) -> None:
    center = await open_center(at(12), obedient=False)
    rig = center.rig
    rig.lock_reports("lock-hui-xin-room", JAMMED)
    await center.wait(1)
    assert rig.alarm_active("lock_jammed", "lock-hui-xin-room")
    (alarm,) = rig.alarms.query(kind="lock_jammed")
    assert (alarm.severity.value, alarm.room, alarm.device) == (
        "critical",
        HUI,
        "lock-hui-xin-room",
    )
    # It is told to lock again (three tries), and stays jammed.
    await center.until(at(12, 1))
    assert rig.timed("lock-hui-xin-room") == [
        (at(12), "LOCK"),
        (at(12, 0, 5), "LOCK"),
        (at(12, 0, 10), "LOCK"),
    ]
    assert rig.alarm_active("lock_unconfirmed", "lock-hui-xin-room")
    rig.lock_reports("lock-hui-xin-room", LOCKED)  # the caretaker freed the bolt
    await center.wait(1)
    assert not rig.alarm_active("lock_jammed", "lock-hui-xin-room")
    assert not rig.alarm_active("lock_unconfirmed", "lock-hui-xin-room")


async def test_locks_already_in_the_wanted_state_get_no_command(
    open_center: OpenCenter, site: Site
) -> None:
    states = default_lock_states(site, at(12))
    states["lock-practice-hall"] = UNLOCKED  # left open: the only one that needs a command
    center = await open_center(at(12), locks=states)
    rig = center.rig
    await center.wait(60)
    assert rig.log == [(at(12), "lock-practice-hall", "LOCK")]


async def test_a_lock_that_moves_by_itself_is_driven_back(open_center: OpenCenter) -> None:
    center = await open_center(at(12))
    rig = center.rig
    await center.until(at(12, 10))
    rig.lock_reports("lock-hui-xin-room", UNLOCKED)  # a key, a reboot
    rig.lock_reports("lock-main", LOCKED)
    await center.wait(1)
    assert rig.log == [
        (at(12, 10), "lock-hui-xin-room", "LOCK"),
        (at(12, 10), "lock-main", "UNLOCK"),
    ]
    await center.until(at(13))
    assert len(rig.log) == 2  # they obeyed: no retries
    assert (rig.lock_state("lock-hui-xin-room"), rig.lock_state("lock-main")) == (
        LOCKED,
        UNLOCKED,
    )


# --- fire --------------------------------------------------------------------------------------


async def test_a_fire_alarm_unlocks_every_lock_in_one_pass(open_center: OpenCenter) -> None:
    center = await open_center(at(14))
    rig = center.rig
    rig.book("b1", HUI, at(14, 5), at(15))
    await center.until(at(14, 30))  # HUI open for its booking; the other halls locked
    mark = len(rig.sent)

    rig.fire(True)
    during_the_call = rig.sent[mark:]

    assert during_the_call == [(lock, "UNLOCK") for lock in LOCKS]  # even those already open
    assert rig.access.fire_latched
    assert rig.alarm_active("fire_alarm", "site")
    (alarm,) = rig.alarms.query(kind="fire_alarm")
    assert alarm.severity.value == "critical"
    await center.wait(30)
    assert rig.sent[mark:] == during_the_call  # obeyed: nothing sent again
    assert {lock: rig.lock_state(lock) for lock in LOCKS} == dict.fromkeys(LOCKS, UNLOCKED)


async def test_a_fire_alarm_sends_every_unlock_before_the_first_log_write(
    open_center: OpenCenter,
) -> None:
    center = await open_center(at(14))
    rig = center.rig
    await center.wait(1)
    mark, log_before = len(rig.sent), rig.events.latest_id()

    rig.fire(True)

    assert [device for device, _ in rig.sent[mark:]] == list(LOCKS)
    assert rig.log_ids_at_send[mark:] == [log_before] * len(LOCKS)
    assert rig.events.latest_id() != log_before  # and the log was written after


async def test_nothing_can_lock_a_door_while_the_fire_latch_holds(
    open_center: OpenCenter, tmp_path: Path
) -> None:
    center = await open_center(at(9), data_dir=tmp_path)
    rig = center.rig
    rig.book("ends", HUI, at(10), at(11))
    rig.book("no-show", CONV, at(11), at(12))
    rig.book("cancel-running", PRACTICE, at(10), at(12))
    rig.book("cancel-early", PRACTICE, at(13), at(14))
    await center.until(at(10, 5))
    rig.occupancy(HUI, True, 5)
    rig.occupancy(PRACTICE, True, 9)
    await center.until(at(10, 20))
    mark = len(rig.log)
    rig.fire(True)
    assert rig.sent[mark:] == [(lock, "UNLOCK") for lock in LOCKS]

    def check(path: str) -> None:
        assert no_lock_since(rig, mark) == [], f"a LOCK was sent after: {path}"

    # A member of staff tries to lock a room.
    with pytest.raises(AccessRefused) as refused:
        rig.access.staff_lock(HUI, "keep people out", "staff-1")
    assert refused.value.code == "fire_alarm"
    check("staff lock")
    # Nor can anything in the code ask the commander directly.
    with pytest.raises(FireLatched):
        rig.locks.want("lock-gym", LockIntent.LOCK, "a test asking directly")
    check("a direct LockCommander.want(LOCK)")
    # A staff unlock that expires.
    rig.access.staff_unlock(CONV, 5, "firefighters", "staff-1")
    await center.until(at(10, 30))
    check("a staff unlock expiring")
    # The panel stops reporting the alarm, then drops off the network.
    rig.fire(False)
    await center.wait(1)
    assert not rig.alarm_active("fire_alarm", "site")
    check("the panel going back to no alarm")
    rig.availability("fire-panel", False)
    await center.wait(1)
    assert rig.alarm_active("fire_panel_offline", "fire-panel")
    check("the panel going offline")
    # The booking's end with the room emptied, a no-show, cancellations.
    await center.until(at(10, 50))
    rig.occupancy(HUI, False, 0)
    await center.until(at(11, 30))
    assert rig.status("ends") == "ended"
    check("a booking's end, room empty")
    assert rig.status("no-show") == "no_show"
    check("a no-show")
    rig.bookings.cancel("cancel-running", center.clock.now())
    rig.occupancy(PRACTICE, False, 0)
    rig.bookings.cancel("cancel-early", center.clock.now())
    await center.wait(60)
    assert (rig.status("cancel-running"), rig.status("cancel-early")) == ("ended", "cancelled")
    check("cancellations")
    # The center closes.
    await center.until(at(21, 30))
    check("closing time at 21:00")
    assert rig.access.fire_latched

    # A restart (after a crash) on the same data.
    states = lock_states(rig)
    assert states == dict.fromkeys(LOCKS, UNLOCKED)
    await center.shutdown()
    center = await open_center(at(22), data_dir=tmp_path, locks=states, panel=None)
    rig = center.rig
    mark = 0
    assert rig.access.fire_latched
    await center.until(at(9, day=1))
    check("a restart")
    with pytest.raises(AccessRefused):
        rig.access.staff_lock(HUI, "after the restart", "staff-1")
    with pytest.raises(FireLatched):
        rig.locks.want("lock-main", LockIntent.LOCK, "after the restart")
    await center.until(at(22, day=1))
    check("the next day's closing, after the restart")
    assert rig.log == []  # every lock reported unlocked: nothing even needed sending


async def test_the_fire_latch_is_reset_only_once_the_panel_says_the_alarm_is_over(
    open_center: OpenCenter,
) -> None:
    center = await open_center(at(20))
    rig = center.rig
    rig.fire(True)
    await center.wait(30)
    with pytest.raises(AccessRefused) as refused:
        rig.access.fire_reset("staff-1")
    assert refused.value.code == "fire_alarm_active"
    rig.availability("fire-panel", False)  # state unknown
    await center.wait(30)
    with pytest.raises(AccessRefused):
        rig.access.fire_reset("staff-1")
    assert rig.access.fire_latched
    assert rig.event_kinds().count("access_refused") == 2
    await center.until(at(21, 30))
    assert no_lock_since(rig, 0) == []

    rig.fire(False)  # back, and no alarm
    await center.until(at(21, 31))
    assert not rig.alarm_active("fire_panel_offline", "fire-panel")
    mark = len(rig.log)
    latch = rig.access.fire_reset("staff-1")
    assert not latch.latched
    assert latch.reset_by == "staff-1"
    # The rules decide again: after hours, every door locks.
    assert sorted(rig.sent[mark:]) == sorted((lock, "LOCK") for lock in LOCKS)
    assert "fire_reset" in rig.event_kinds()
    await center.until(at(9, day=1))
    assert rig.timed("lock-main", mark) == [(at(21, 31), "LOCK"), (at(8, 30, day=1), "UNLOCK")]
    # And a staff lock works again.
    rig.access.staff_lock("gym", "cleaning", "staff-1")
    assert rig.timed("lock-gym")[-1] == (at(9, day=1), "LOCK")


async def test_after_a_reset_the_bookings_decide_the_doors_again(open_center: OpenCenter) -> None:
    center = await open_center(at(9))
    rig = center.rig
    rig.book("b1", HUI, at(10), at(11))
    await center.until(at(9, 30))
    rig.fire(True)
    await center.until(at(10, 5))
    rig.occupancy(HUI, True, 4)
    await center.until(at(10, 30))
    rig.fire(False)
    rig.access.fire_reset("staff-1")
    await center.wait(1)
    assert rig.timed("lock-convergence-hall")[-1] == (at(10, 30), "LOCK")
    assert rig.timed("lock-practice-hall")[-1] == (at(10, 30), "LOCK")
    assert rig.timed("lock-hui-xin-room") == [(at(9, 30), "UNLOCK")]  # booked: stays open
    await center.until(at(11, 5))
    rig.occupancy(HUI, False, 0)
    await center.until(at(12))
    assert rig.timed("lock-hui-xin-room") == [(at(9, 30), "UNLOCK"), (at(11, 5), "LOCK")]
    assert rig.timed("lock-main") == [(at(9, 30), "UNLOCK")]  # in hours: stays open
    assert rig.status("b1") == "ended"
    assert rig.hooks_of("b1") == ["booking.started", "booking.checked_in", "booking.ended"]


async def test_losing_the_fire_panel_raises_an_alarm_and_unlocks_nothing(
    open_center: OpenCenter,
) -> None:
    center = await open_center(at(22))
    rig = center.rig
    rig.availability("fire-panel", False)
    await center.wait(60)
    assert rig.alarm_active("fire_panel_offline", "fire-panel")
    (alarm,) = rig.alarms.query(kind="fire_panel_offline")
    assert alarm.severity.value == "critical"
    assert rig.log == []
    assert not rig.access.fire_latched

    rig.availability("fire-panel", True)
    await center.wait(60)
    assert not rig.alarm_active("fire_panel_offline", "fire-panel")
    assert rig.log == []


# --- restarts ----------------------------------------------------------------------------------


async def test_a_restart_in_the_middle_of_a_booking_sends_nothing_twice(
    open_center: OpenCenter, tmp_path: Path
) -> None:
    center = await open_center(at(9), data_dir=tmp_path)
    rig = center.rig
    rig.book("b1", HUI, at(10), at(11))
    await center.until(at(10, 5))
    rig.occupancy(HUI, True, 7)
    await center.until(at(10, 20))
    assert rig.hooks_of("b1") == ["booking.started", "booking.checked_in"]
    states = lock_states(rig)
    await center.shutdown()

    center = await open_center(at(10, 40), data_dir=tmp_path, locks=states, empty=[])
    rig = center.rig
    rig.occupancy(HUI, True, 7)  # the sensor is heard again
    await center.wait(60)
    assert rig.log == []  # every lock already where the rules want it
    assert rig.status("b1") == "checked_in"
    await center.until(at(10, 55))
    rig.occupancy(HUI, False, 0)
    await center.until(at(12))
    assert rig.log == [(at(11), "lock-hui-xin-room", "LOCK")]
    assert rig.status("b1") == "ended"
    assert rig.hooks_of("b1") == ["booking.started", "booking.checked_in", "booking.ended"]


async def test_a_booking_that_ended_while_the_controller_was_down_ends_and_is_no_no_show(
    open_center: OpenCenter, tmp_path: Path
) -> None:
    center = await open_center(at(9), data_dir=tmp_path)
    center.rig.book("b1", HUI, at(10), at(11))
    await center.until(at(9, 30))
    states = lock_states(center.rig)
    await center.shutdown()

    # Back at 11:10, within the relock grace; the room's sensor reports empty as it connects.
    center = await open_center(at(11, 10), data_dir=tmp_path, locks=states, empty=[HUI])
    rig = center.rig
    await center.wait(60)
    assert rig.status("b1") == "ended"
    assert rig.hooks() == [("booking.started", "b1", at(10)), ("booking.ended", "b1", at(11))]
    assert rig.log == []  # nothing to catch up on at the doors: it is over
    await center.until(at(12))
    assert rig.log == []
    assert rig.hooks_of("b1") == ["booking.started", "booking.ended"]


async def test_a_booking_that_ran_long_before_the_restart_is_caught_up(
    open_center: OpenCenter, tmp_path: Path
) -> None:
    center = await open_center(at(9), data_dir=tmp_path)
    center.rig.book("b1", HUI, at(10), at(11))
    await center.until(at(9, 30))
    states = lock_states(center.rig)
    await center.shutdown()

    center = await open_center(at(13), data_dir=tmp_path, locks=states, empty=[])
    rig = center.rig
    await center.wait(60)
    assert rig.log == []
    assert rig.status("b1") == "ended"
    assert rig.hooks() == [("booking.started", "b1", at(10)), ("booking.ended", "b1", at(11))]


async def test_a_booking_that_started_while_the_controller_was_down_runs_on(
    open_center: OpenCenter, tmp_path: Path
) -> None:
    center = await open_center(at(9), data_dir=tmp_path)
    center.rig.book("b1", HUI, at(10), at(11))
    await center.until(at(9, 30))
    states = lock_states(center.rig)
    await center.shutdown()

    # Back at 10:30, past the no-show deadline, with no sensor heard from yet.
    center = await open_center(at(10, 30), data_dir=tmp_path, locks=states, empty=[])
    rig = center.rig
    await center.wait(1)
    assert rig.status("b1") == "active"
    assert rig.log == [(at(10, 30), "lock-hui-xin-room", "UNLOCK")]
    await center.until(at(12))
    assert rig.status("b1") == "ended"
    assert rig.hooks_of("b1") == ["booking.started", "booking.ended"]


async def test_a_restart_replays_no_webhook(open_center: OpenCenter, tmp_path: Path) -> None:
    center = await open_center(at(9), data_dir=tmp_path)
    rig = center.rig
    rig.book("b1", HUI, at(10), at(11))
    rig.book("b2", CONV, at(10), at(11))
    await center.until(at(10, 5))
    rig.occupancy(HUI, True, 3)
    await center.until(at(10, 20))  # b2 released as a no-show at 10:15
    before = rig.hooks()
    assert [kind for kind, _, _ in before] == [
        "booking.started",
        "booking.started",
        "booking.checked_in",
        "booking.no_show",
    ]
    states = lock_states(rig)
    await center.shutdown()

    for restart_at in (at(10, 21), at(10, 22)):  # two restarts in a row
        center = await open_center(restart_at, data_dir=tmp_path, locks=states, empty=[CONV])
        rig = center.rig
        rig.occupancy(HUI, True, 3)
        await center.wait(30)
        assert rig.hooks() == before
        assert rig.log == []
        assert (rig.status("b1"), rig.status("b2")) == ("checked_in", "no_show")
        states = lock_states(rig)
        await center.shutdown()


async def test_staff_overrides_survive_a_restart(open_center: OpenCenter, tmp_path: Path) -> None:
    center = await open_center(at(12), data_dir=tmp_path)
    rig = center.rig
    rig.access.staff_lock("gym", "broken treadmill", "staff-2")
    rig.access.staff_unlock(HUI, 60, "setting up an exhibition", "staff-2")
    await center.until(at(12, 10))
    states = lock_states(rig)
    assert (states["lock-gym"], states["lock-hui-xin-room"]) == (LOCKED, UNLOCKED)
    await center.shutdown()

    center = await open_center(at(12, 20), data_dir=tmp_path, locks=states)
    rig = center.rig
    await center.wait(60)
    # In center hours the gym would be open, and the HUI Xin Room locked without
    # a booking: both staff actions still hold, so nothing is sent.
    assert rig.log == []
    await center.until(at(12, day=1))
    assert rig.timed("lock-hui-xin-room") == [(at(13), "LOCK")]
    assert rig.timed("lock-gym") == [(at(8, 30, day=1), "UNLOCK")]  # locked until reopening


async def test_the_fire_latch_survives_a_restart_and_then_can_be_reset(
    open_center: OpenCenter, tmp_path: Path
) -> None:
    center = await open_center(at(20), data_dir=tmp_path)
    center.rig.fire(True)
    await center.wait(30)
    states = lock_states(center.rig)
    await center.shutdown()

    center = await open_center(at(22), data_dir=tmp_path, locks=states, panel=None)
    rig = center.rig
    await center.wait(30)
    assert rig.access.fire_latched
    assert rig.alarm_active("fire_alarm", "site")
    assert rig.log == []
    with pytest.raises(AccessRefused):
        rig.access.fire_reset("staff-1")  # the panel not heard from since the restart
    rig.fire(False)
    rig.access.fire_reset("staff-1")
    await center.wait(1)
    assert sorted(rig.sent) == sorted((lock, "LOCK") for lock in LOCKS)
