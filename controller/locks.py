"""Driving door locks to what the rules want, and knowing whether they got there.

For each lock the commander holds a *target* (LOCK or UNLOCK, with the
reason). A command is done only when the lock's own state report says so:
the controller never assumes a state it did not read. Unconfirmed after
``timeout`` it is sent again, ``tries`` times in all, then the
``lock_unconfirmed`` alarm is raised. A ``JAMMED`` report raises
``lock_jammed`` at once.

A lock already in the wanted state gets no command at all, which is what makes
a restart safe: the retained state the broker hands back is read first (for
``settle`` seconds after connecting), and only locks that differ are driven.

Commands go out without awaiting anything (QoS 1, queued on the connection),
so twenty locks told to unlock on a fire alarm are twenty publishes in one
pass of the loop, not twenty round trips one after the other.

While the fire latch is set the commander refuses to send LOCK to anything,
whatever asks: the rules already never ask, and this is the second wall.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from controller.alarms import AlarmBook
from controller.bus import EventBus, Unsubscribe
from controller.clock import Clock, sleep_or_wake
from controller.event_log import EventLog, Severity
from controller.events import ReadingReceived
from controller.ingest import command_topic
from controller.readings import LockReading, LockState
from controller.site import Device, DeviceKind, Site
from controller.state import LiveState
from rules.access import LockIntent

# Sends one command; False when there is no connection to send it on.
Send = Callable[[str, bytes], bool]

_WANTED_STATE = {LockIntent.LOCK: LockState.LOCKED, LockIntent.UNLOCK: LockState.UNLOCKED}


class FireLatched(Exception):
    """A LOCK was asked for while the fire latch holds every door open."""


@dataclass(slots=True)
class _Target:
    intent: LockIntent
    reason: str
    room: str | None
    set_at: datetime
    attempts: int = 0
    deadline: float | None = None  # when the last send counts as unconfirmed
    confirmed: bool = False
    force: bool = False  # send even if the lock already reports the wanted state
    failed: bool = False  # every try spent; waits for a reading, a reconnect or a new target


class LockCommander:
    def __init__(
        self,
        site: Site,
        prefix: str,
        state: LiveState,
        bus: EventBus,
        clock: Clock,
        events: EventLog,
        alarms: AlarmBook,
        *,
        fire_latched: Callable[[], bool],
        timeout: float = 5.0,
        tries: int = 3,
        settle: float = 1.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self._locks: dict[str, Device] = {
            device.id: device for device in site.devices if device.kind is DeviceKind.LOCK
        }
        self._topics = {device.id: command_topic(device, prefix) for device in self._locks.values()}
        self._state = state
        self._bus = bus
        self._clock = clock
        self._events = events
        self._alarms = alarms
        self._fire_latched = fire_latched
        self._timeout = timeout
        self._tries = tries
        self._settle = settle
        self._logger = logger or logging.getLogger("controller.locks")
        self._send: Send | None = None
        self._ready_at: float | None = None  # monotonic time from which unread locks are driven
        self._targets: dict[str, _Target] = {}
        self._wake = asyncio.Event()
        self._unsubscribe: Unsubscribe | None = None
        self._batching = 0
        self._sent: list[tuple[str, LockIntent, int, str, str | None, datetime]] = []
        self.commands_sent = 0
        self.confirmations = 0

    @property
    def lock_ids(self) -> list[str]:
        return list(self._locks)

    def locks_in(self, room_id: str) -> list[str]:
        return [device.id for device in self._locks.values() if device.room == room_id]

    def start(self) -> None:
        self._unsubscribe = self._bus.subscribe(ReadingReceived, self._on_reading)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    # -- the connection ----------------------------------------------------

    def connected(self, send: Send) -> None:
        """The MQTT link is up: retained lock states arrive now; drive after ``settle``."""
        self._send = send
        self._ready_at = self._clock.monotonic() + self._settle
        for target in self._targets.values():
            if not target.confirmed:
                target.failed = False
                target.attempts = 0
                target.deadline = self._ready_at  # driven then, with what was read by then
        self._wake.set()

    def disconnected(self) -> None:
        self._send = None

    # -- targets -----------------------------------------------------------

    def want(self, device_id: str, intent: LockIntent, reason: str, *, force: bool = False) -> None:
        """Drive ``device_id`` to ``intent``; nothing is sent if it is there already,
        unless ``force`` (the fire alarm: a report may be old, a command costs nothing)."""
        if intent is LockIntent.LOCK and self._fire_latched():
            raise FireLatched(f"{device_id}: no lock may be locked while the fire latch is set")
        current = self._targets.get(device_id)
        if current is not None and current.intent is intent and not force:
            return
        device = self._locks[device_id]
        target = _Target(intent, reason, device.room, self._clock.now(), force=force)
        self._targets[device_id] = target
        self._drive(device_id, target)

    def target(self, device_id: str) -> LockIntent | None:
        target = self._targets.get(device_id)
        return target.intent if target is not None else None

    def pending(self) -> list[str]:
        return [lock for lock, target in self._targets.items() if not target.confirmed]

    def _read(self, device_id: str) -> LockState | None:
        device_state = self._state.device(device_id)
        reading = device_state.reading
        if not device_state.usable or not isinstance(reading, LockReading):
            return None
        return reading.state

    def _drive(self, device_id: str, target: _Target) -> None:
        read = self._read(device_id)
        if read is _WANTED_STATE[target.intent] and not target.force:
            self._confirm(device_id, target)
            return
        target.confirmed = False
        if target.failed:
            return
        send = self._send
        now = self._clock.monotonic()
        if send is None:
            return  # sent by connected()
        if read is None and self._ready_at is not None and now < self._ready_at:
            target.deadline = self._ready_at  # its retained state may still be on its way
            self._wake.set()
            return
        payload = orjson.dumps({"state": target.intent.value})
        if not send(self._topics[device_id], payload):
            return
        target.force = False
        target.attempts += 1
        target.deadline = now + self._timeout
        self.commands_sent += 1
        self._wake.set()
        self._sent.append(
            (
                device_id,
                target.intent,
                target.attempts,
                target.reason,
                target.room,
                self._clock.now(),
            )
        )
        if not self._batching:
            self._log_sent()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Send every command asked for inside, then write their log entries.

        The fire rule unlocks all locks in one batch: the last command leaves
        before the first log write. Each entry keeps the time its command was sent.
        """
        self._batching += 1
        try:
            yield
        finally:
            self._batching -= 1
            if not self._batching:
                self._log_sent()

    def _log_sent(self) -> None:
        sent, self._sent = self._sent, []
        for device_id, intent, attempt, reason, room, sent_at in sent:
            self._events.record(
                "lock_command",
                f"{intent.value} sent to {device_id} (try {attempt}): {reason}",
                room=room,
                device=device_id,
                details={"command": intent.value, "try": attempt, "reason": reason},
                time=sent_at,  # when it left, though logged after the batch
            )

    def _confirm(self, device_id: str, target: _Target) -> None:
        if target.confirmed:
            return
        target.confirmed = True
        target.failed = False
        target.deadline = None
        if target.attempts:
            self.confirmations += 1
            self._events.record(
                "lock_confirmed",
                f"{device_id} reports {_WANTED_STATE[target.intent].value}",
                room=target.room,
                device=device_id,
                details={"command": target.intent.value, "tries": target.attempts},
            )
        self._alarms.clear("lock_unconfirmed", device_id)

    def _on_reading(self, event: ReadingReceived) -> None:
        reading = event.reading
        if not isinstance(reading, LockReading) or event.device_id not in self._locks:
            return
        device_id = event.device_id
        device = self._locks[device_id]
        if reading.state is LockState.JAMMED:
            self._alarms.raise_alarm(
                "lock_jammed",
                device_id,
                f"{device_id} reports JAMMED",
                severity=Severity.CRITICAL,
                room=device.room,
                device=device_id,
            )
        elif self._alarms.is_active("lock_jammed", device_id):
            self._alarms.clear("lock_jammed", device_id, f"{device_id} reports {reading.state}")
        target = self._targets.get(device_id)
        if target is None:
            return
        if reading.state is _WANTED_STATE[target.intent]:
            self._confirm(device_id, target)
        elif target.confirmed:
            # It was where we wanted it and moved (a key, a reboot): drive it back.
            target.confirmed = False
            target.attempts = 0
            target.failed = False
            self._drive(device_id, target)
        elif target.failed:
            target.failed = False  # a sign of life: one more round of tries
            target.attempts = 0
            self._drive(device_id, target)

    # -- deadlines ---------------------------------------------------------

    async def run(self) -> None:
        """Resend unconfirmed commands and raise alarms at their deadlines."""
        while True:
            self._wake.clear()
            now = self._clock.monotonic()
            deadlines = []
            for device_id, target in list(self._targets.items()):
                if target.confirmed or target.failed or target.deadline is None:
                    continue
                if target.deadline <= now:
                    self._expired(device_id, target)
                if target.deadline is not None and not target.confirmed and not target.failed:
                    deadlines.append(target.deadline)
            wait = min(deadlines, default=now + 3600.0) - self._clock.monotonic()
            await sleep_or_wake(self._clock, self._wake, max(wait, 0.0))

    def _expired(self, device_id: str, target: _Target) -> None:
        target.deadline = None
        if target.attempts and self._read(device_id) is _WANTED_STATE[target.intent]:
            self._confirm(device_id, target)  # it is there, and said so before our command
            return
        if target.attempts < self._tries:
            self._drive(device_id, target)
            return
        target.failed = True
        read = self._read(device_id)
        message = (
            f"{device_id} did not confirm {target.intent.value} after {target.attempts} tries"
            f" ({self._timeout:g} s each); it reports {read.value if read else 'nothing'}"
        )
        self._logger.error("%s", message)
        self._alarms.raise_alarm(
            "lock_unconfirmed",
            device_id,
            message,
            severity=Severity.CRITICAL if target.intent is LockIntent.UNLOCK else Severity.ALARM,
            room=target.room,
            device=device_id,
            details={"command": target.intent.value, "tries": target.attempts},
        )

    def status(self) -> dict[str, Any]:
        return {
            "locks": {
                device_id: {
                    "target": target.intent.value,
                    "reason": target.reason,
                    "confirmed": target.confirmed,
                    "failed": target.failed,
                    "tries": target.attempts,
                    "reported": (read.value if (read := self._read(device_id)) else None),
                }
                for device_id, target in self._targets.items()
            },
            "commands_sent": self.commands_sent,
            "confirmations": self.confirmations,
        }
