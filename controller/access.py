"""Room access: runs the booking and lock rules and carries out what they decide.

The rules in ``rules/`` decide; this module gathers their facts (bookings,
occupancy, staff overrides, the fire latch), records what they decided, and
acts through the lock commander and the webhook queue. Every fact is stored
before the action it justifies.

It re-decides a room whenever something the rules read changes (its
occupancy, a booking, a staff action, the fire alarm) and at the moments the
rules name (an unlock window opening, a no-show deadline, an override
expiring). Those moments are recomputed from stored facts after a restart,
so none is skipped or repeated; a restart starts with :meth:`reconcile`,
which catches up on bookings that ran while the controller was down and
drives every lock to what the rules want now.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from controller.access_store import AccessStore
from controller.alarms import AlarmBook
from controller.booking_store import BookingStore
from controller.bookings import booking_json
from controller.bus import EventBus, Unsubscribe
from controller.clock import Clock, sleep_or_wake
from controller.event_log import EventLog, Severity
from controller.events import DeviceStateChanged, FireAlarmChanged, RoomStateChanged
from controller.locks import LockCommander
from controller.site import DeviceKind, Room, Site
from controller.state import LiveState
from controller.webhooks import WebhookQueue
from rules.access import Cause, Decision, LockIntent, RoomFacts, StaffOverride, decide
from rules.bookings import Booking, Step, Transition, next_deadline, transitions
from rules.fire import FireLatch, reset_refusal, should_latch

_WEBHOOKS = {
    Transition.STARTED: "booking.started",
    Transition.CHECKED_IN: "booking.checked_in",
    Transition.NO_SHOW: "booking.no_show",
    Transition.ENDED: "booking.ended",
}
_MESSAGES = {
    Transition.STARTED: "started",
    Transition.CHECKED_IN: "checked in: first occupancy seen",
    Transition.NO_SHOW: "released as a no-show: nobody came",
    Transition.ENDED: "ended",
}


class AccessRefused(Exception):
    """A staff action the rules do not allow now (409), with the reason to show."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class StaffResult:
    room: str
    decision: Decision
    locks: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "intent": self.decision.intent.value,
            "cause": self.decision.cause.value,
            "until": self.decision.until.isoformat() if self.decision.until else None,
            "locks": self.locks,
        }


class AccessController:
    def __init__(
        self,
        site: Site,
        state: LiveState,
        bus: EventBus,
        clock: Clock,
        *,
        bookings: BookingStore,
        access: AccessStore,
        locks: LockCommander,
        events: EventLog,
        alarms: AlarmBook,
        webhooks: WebhookQueue,
        logger: logging.Logger | None = None,
    ) -> None:
        self._site = site
        self._state = state
        self._bus = bus
        self._clock = clock
        self._bookings = bookings
        self._access = access
        self._locks = locks
        self._events = events
        self._alarms = alarms
        self._webhooks = webhooks
        self._logger = logger or logging.getLogger("controller.access")
        self._rules = site.rules
        self._zone = site.site.zone
        self._panels = {
            device.id for device in site.devices if device.kind is DeviceKind.FIRE_ALARM
        }
        self._rooms: dict[str, Room] = {
            room.id: room for room in site.rooms if room.bookable or locks.locks_in(room.id)
        }
        self._room_locks = {room_id: locks.locks_in(room_id) for room_id in self._rooms}
        self._decisions: dict[str, Decision] = {}
        self._next_check: dict[str, datetime] = {}
        self._occupancy: dict[str, tuple[bool | None, datetime | None]] = {}
        self._wake = asyncio.Event()
        self._unsubscribe: list[Unsubscribe] = []

    def start(self) -> None:
        self._unsubscribe = [
            self._bus.subscribe(FireAlarmChanged, self._on_fire),
            self._bus.subscribe(RoomStateChanged, self._on_room),
            self._bus.subscribe(DeviceStateChanged, self._on_device),
        ]

    def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    # -- queries -----------------------------------------------------------

    @property
    def fire_latched(self) -> bool:
        return self._access.latch.latched

    def decision(self, room_id: str) -> Decision | None:
        return self._decisions.get(room_id)

    def status(self) -> dict[str, Any]:
        latch = self._access.latch
        return {
            "fire_latched": latch.latched,
            "fire_latched_at": latch.latched_at.isoformat() if latch.latched_at else None,
            "panel_alarm": self._state.site_state.fire_alarm,
            "rooms": {
                room_id: {
                    "intent": decision.intent.value,
                    "cause": decision.cause.value,
                    "booking_id": decision.booking_id,
                    "next_check": (
                        self._next_check[room_id].isoformat()
                        if room_id in self._next_check
                        else None
                    ),
                }
                for room_id, decision in self._decisions.items()
            },
        }

    # -- the rules, applied ------------------------------------------------

    def reconcile(self) -> None:
        """Catch up and drive every lock to what the rules want now (at start)."""
        now = self._clock.now()
        latch = self._access.latch
        if latch.latched:
            self._logger.warning(
                "the fire latch is set since %s: every lock stays unlocked until reset",
                latch.latched_at.isoformat() if latch.latched_at else "?",
            )
        # Bookings that ran entirely while the controller was down are past
        # what evaluate() looks at: bring their facts up to date first. Their
        # occupancy was not watched, so none becomes a no-show.
        for booking in self._bookings.unfinished():
            if booking.room in self._rooms and booking.effective_end <= now:
                for step in transitions(
                    booking, None, now, no_show_after=self._rules.no_show_after
                ):
                    booking = self._record(booking, step)
        with self._locks.batch():
            for room_id in self._rooms:
                self.evaluate(room_id, now)

    def room_changed(self, room_id: str) -> None:
        """Something the rules read about ``room_id`` changed (a booking, an override)."""
        if room_id in self._rooms:
            self.evaluate(room_id, self._clock.now())

    def evaluate(self, room_id: str, now: datetime) -> Decision:
        """Re-decide one room: booking transitions first, then its locks."""
        room = self._rooms[room_id]
        room_state = self._state.room(room_id)
        occupied = room_state.occupied
        lookback = self._rules.relock_grace
        relevant = self._bookings.relevant(room_id, now, lookback=lookback)
        moments: list[datetime] = []
        updated: list[Booking] = []
        for booking in relevant:
            steps = transitions(
                booking,
                occupied,
                now,
                no_show_after=self._rules.no_show_after,
                occupied_since=room_state.since,
            )
            for step in steps:
                booking = self._record(booking, step)
            updated.append(booking)
            deadline = next_deadline(booking, now, no_show_after=self._rules.no_show_after)
            if deadline is not None:
                moments.append(deadline)
        facts = RoomFacts(
            room=room,
            occupied=occupied,
            occupied_since=room_state.since,
            bookings=updated,
            override=self._access.override(room_id),
            fire_latched=self._access.latch.latched,
        )
        decision = decide(
            facts, now, hours=self._site.site.hours, zone=self._zone, rules=self._rules
        )
        if decision.next_check is not None:
            moments.append(decision.next_check)
        upcoming = [moment for moment in moments if moment > now]
        if upcoming:
            self._next_check[room_id] = min(upcoming)
        else:
            self._next_check.pop(room_id, None)
        self._wake.set()
        self._apply(room_id, decision)
        self._overstay(room_id, decision)
        return decision

    def _record(self, booking: Booking, step: Step) -> Booking:
        """Store a transition and queue its webhook in one transaction, then log it."""
        with self._events.transaction():
            updated = self._bookings.record(booking, step)
            self._webhooks.enqueue(
                _WEBHOOKS[step.transition],
                {"booking": booking_json(updated), "at": step.at.isoformat()},
                time=step.at,
            )
            self._events.record(
                f"booking_{step.transition.value}",
                f"booking {booking.id} {_MESSAGES[step.transition]}",
                severity=Severity.WARNING
                if step.transition is Transition.NO_SHOW
                else Severity.INFO,
                room=booking.room,
                booking_id=booking.id,
                time=step.at,
            )
        return updated

    def _apply(self, room_id: str, decision: Decision) -> None:
        previous = self._decisions.get(room_id)
        self._decisions[room_id] = decision
        changed = previous is None or (previous.intent, previous.cause, previous.booking_id) != (
            decision.intent,
            decision.cause,
            decision.booking_id,
        )
        for device_id in self._room_locks[room_id]:
            self._locks.want(device_id, decision.intent, decision.describe())
        if changed and self._room_locks[room_id]:
            self._events.record(
                "access_decision",
                f"{room_id}: {decision.intent.value}: {decision.describe()}",
                room=room_id,
                booking_id=decision.booking_id,
                details={"intent": decision.intent.value, "cause": decision.cause.value},
            )

    def _overstay(self, room_id: str, decision: Decision) -> None:
        if decision.overstay is not None:
            self._alarms.raise_alarm(
                "overstay",
                room_id,
                f"people are still inside {room_id} after booking {decision.overstay}"
                " and its grace time; the door was locked",
                room=room_id,
                booking_id=decision.overstay,
            )
        elif self._state.room(room_id).occupied is not True and self._alarms.is_active(
            "overstay", room_id
        ):
            self._alarms.clear("overstay", room_id, f"{room_id} is empty")

    # -- events --------------------------------------------------------------

    def _on_room(self, event: RoomStateChanged) -> None:
        room_id = event.room_id
        if room_id not in self._rooms:
            return
        state = self._state.room(room_id)
        occupancy = (state.occupied, state.since)
        if self._occupancy.get(room_id) == occupancy:
            return  # a change the rules do not read (temperature, the lock itself)
        self._occupancy[room_id] = occupancy
        self.evaluate(room_id, event.time)

    def _on_fire(self, event: FireAlarmChanged) -> None:
        latch = self._access.latch
        if should_latch(latch, event.alarm):
            self._access.set_latch(FireLatch(latched_at=event.time))
            # First every lock is told, even one that reports unlocked already,
            # with nothing else in between (each command is on the wire when
            # want() returns); then the rooms are re-decided and everything is
            # logged, in one transaction: one commit instead of one per event.
            reason = Decision(LockIntent.UNLOCK, Cause.FIRE_ALARM).describe()
            with self._events.transaction():
                with self._locks.batch():
                    for device_id in self._locks.lock_ids:
                        self._locks.want(device_id, LockIntent.UNLOCK, reason, force=True)
                    for room_id in self._rooms:
                        self.evaluate(room_id, event.time)
                self._alarms.raise_alarm(
                    "fire_alarm",
                    "site",
                    "fire alarm: every controlled door is unlocked and stays so until staff reset",
                    severity=Severity.CRITICAL,
                )
        elif event.alarm is True:
            self._alarms.raise_alarm(
                "fire_alarm", "site", "the fire panel reports an alarm", severity=Severity.CRITICAL
            )
        elif event.alarm is False and self._alarms.is_active("fire_alarm", "site"):
            self._alarms.clear(
                "fire_alarm",
                "site",
                "the fire panel reports no alarm; doors stay unlocked until staff reset",
            )

    def _on_device(self, event: DeviceStateChanged) -> None:
        if event.device_id not in self._panels:
            return
        online = self._state.device(event.device_id).online
        if online is False:
            self._alarms.raise_alarm(
                "fire_panel_offline",
                event.device_id,
                f"lost the fire panel {event.device_id}: fire alarms cannot be seen;"
                " no door was unlocked because of it",
                severity=Severity.CRITICAL,
                device=event.device_id,
            )
        elif online is True and self._alarms.is_active("fire_panel_offline", event.device_id):
            self._alarms.clear("fire_panel_offline", event.device_id, "the fire panel is back")

    # -- staff actions --------------------------------------------------------

    def staff_unlock(self, room_id: str, minutes: int, reason: str, by: str) -> StaffResult:
        now = self._clock.now()
        self._require_locks(room_id)
        override = StaffOverride(
            room_id, LockIntent.UNLOCK, now, now + timedelta(minutes=minutes), reason, by
        )
        self._access.set_override(override)
        self._events.record(
            "staff_unlock",
            f"{room_id} unlocked by staff for {minutes} min" + (f": {reason}" if reason else ""),
            room=room_id,
            details={"minutes": minutes, "reason": reason, "by": by},
        )
        decision = self.evaluate(room_id, now)
        return StaffResult(room_id, decision, self._room_locks[room_id])

    def staff_lock(self, room_id: str, reason: str, by: str) -> StaffResult:
        now = self._clock.now()
        self._require_locks(room_id)
        if self.fire_latched or self._state.site_state.fire_alarm is True:
            self._events.record(
                "access_refused",
                f"staff lock of {room_id} refused: fire alarm active",
                severity=Severity.WARNING,
                room=room_id,
                details={"by": by, "action": "lock"},
            )
            raise AccessRefused("fire_alarm", "locked out: fire alarm active")
        self._access.set_override(StaffOverride(room_id, LockIntent.LOCK, now, None, reason, by))
        self._events.record(
            "staff_lock",
            f"{room_id} locked by staff" + (f": {reason}" if reason else ""),
            room=room_id,
            details={"reason": reason, "by": by},
        )
        decision = self.evaluate(room_id, now)
        return StaffResult(room_id, decision, self._room_locks[room_id])

    def fire_reset(self, by: str) -> FireLatch:
        now = self._clock.now()
        latch = self._access.latch
        refusal = reset_refusal(latch, self._state.site_state.fire_alarm)
        if refusal is not None:
            self._events.record(
                "access_refused",
                f"fire reset refused: {refusal}",
                severity=Severity.WARNING,
                details={"by": by, "action": "fire_reset"},
            )
            code = (
                "fire_alarm_active"
                if self._state.site_state.fire_alarm is True
                else "fire_panel_unknown"
            )
            raise AccessRefused(code, f"cannot reset: {refusal}")
        if not latch.latched:
            return latch
        released = FireLatch(latched_at=None, reset_at=now, reset_by=by)
        self._access.set_latch(released)
        self._events.record(
            "fire_reset",
            "fire latch reset by staff: the rules decide the doors again",
            severity=Severity.WARNING,
            details={
                "by": by,
                "latched_at": latch.latched_at.isoformat() if latch.latched_at else None,
            },
        )
        with self._locks.batch():
            for room_id in self._rooms:
                self.evaluate(room_id, now)
        return released

    def _require_locks(self, room_id: str) -> None:
        if not self._room_locks.get(room_id):
            raise AccessRefused("no_lock", f"room {room_id} has no controlled lock")

    # -- deadlines -------------------------------------------------------------

    async def run(self) -> None:
        """Re-decide each room at the moments its rules named."""
        while True:
            self._wake.clear()
            now = self._clock.now()
            due = [room for room, moment in self._next_check.items() if moment <= now]
            if due:
                with self._locks.batch():
                    for room_id in due:
                        self.evaluate(room_id, now)
                continue
            nearest = min(self._next_check.values(), default=None)
            wait = 3600.0 if nearest is None else (nearest - now).total_seconds()
            await sleep_or_wake(self._clock, self._wake, max(wait, 0.0))
