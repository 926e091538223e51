"""The climate rule's runner: air conditioners commanded over Modbus as rules.climate decides.

The rule in ``rules/climate.py`` decides; this module gathers its facts (the
room's occupancy and temperature, the outdoor temperature, the rule's memory,
the compressor's last switch-off, staff overrides), keeps the durable ones in
:class:`~controller.climate_store.ClimateStore`, and carries out the decision
through the :class:`~controller.device_writes.DeviceWriter`.

When it decides:

- on every reading of an air conditioner, on every change of its room's
  state, and on every reading of a site-wide climate sensor (the live state
  publishes nothing when only the outdoor temperature changes);
- when an air conditioner or the outdoor sensor goes offline or comes back;
- at the next moment the rule names (an empty room's off time, the end of the
  compressor's rest, an override's expiry, the center opening or closing);
- when a failed command may be tried again.

What it writes: only to an air conditioner it has heard from and that is
online, only the points that differ from the unit's last reading, one command
at a time per unit, and, after a confirmed command, nothing more until a
reading taken after it has arrived (so an old reading never starts a second
identical command). A command that fails is tried again after a backoff (30 s,
doubling to 10 min), never in a loop: the writer has already raised a
``command_unconfirmed`` alarm.

Every switch from on to off that it sees in a reading (its own commands, staff,
or someone with the remote) is stored, and the rule keeps the compressor off
for ``min_off`` after it, across restarts too.

Faults: a non-zero fault code in any air conditioner's reading (managed by the
rule or not) raises ``ac_fault``; a zero clears it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from controller.alarms import AlarmBook
from controller.bus import EventBus, Unsubscribe
from controller.climate_store import ClimateStore
from controller.clock import Clock, sleep_or_wake
from controller.device_writes import DeviceWriter
from controller.event_log import EventLog
from controller.events import DeviceStateChanged, ReadingReceived, RoomStateChanged
from controller.modbus_poller import PointWrite, WriteFailed
from controller.readings import AirConditionerReading
from controller.site import Device, DeviceKind, Site
from controller.state import LiveState
from rules.climate import (
    AcSetting,
    ClimateDecision,
    ClimateFacts,
    ClimateOverride,
    decide,
    may_start_at,
)

# After a failed command: wait this long before the next try, doubling up to the cap.
RETRY_FIRST = 30.0
RETRY_MAX = 600.0
# Setpoints closer than this are the same (the register holds tenths of a degree).
_SETPOINT_TOLERANCE = 0.05
# With nothing scheduled the loop still looks every hour (overrides, the clock).
_IDLE_WAIT = 3600.0


class UnknownAirConditioner(KeyError):
    """No air conditioner of the site has this id."""


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """The last command sent to a unit, and what became of it."""

    at: datetime
    setting: AcSetting
    cause: str
    writes: tuple[str, ...]
    result: str = "sent"  # sent | confirmed | failed
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            **self.setting.to_json(),
            "cause": self.cause,
            "writes": list(self.writes),
            "result": self.result,
            "error": self.error,
        }


@dataclass(slots=True)
class _Unit:
    """One air conditioner as the controller runs it."""

    device: Device
    room: str
    managed: bool
    decision: ClimateDecision | None = None
    empty_since: datetime | None = None  # kept while occupancy is unknown
    fault: int | None = None  # the last fault code seen
    pending: bool = False  # a command is due: the run loop sends it
    writing: bool = False
    confirmed_at: datetime | None = None  # no new command before a reading after this
    failures: int = 0  # failed commands in a row
    retry_at: float | None = None  # monotonic: no command before this
    last_command: CommandRecord | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class ClimateController:
    def __init__(
        self,
        site: Site,
        state: LiveState,
        bus: EventBus,
        clock: Clock,
        *,
        db: sqlite3.Connection,
        events: EventLog,
        alarms: AlarmBook,
        writer: DeviceWriter,
        logger: logging.Logger | None = None,
    ) -> None:
        self._site = site
        self._state = state
        self._bus = bus
        self._clock = clock
        self._events = events
        self._alarms = alarms
        self._writer = writer
        self._logger = logger or logging.getLogger("controller.climate")
        self._rules = site.rules.climate
        self._hours = site.site.hours
        self._zone = site.site.zone
        self._store = ClimateStore(db)
        managed = {device.id for device in site.climate_air_conditioners}
        self._units: dict[str, _Unit] = {
            device.id: _Unit(device, device.room, device.id in managed)
            for device in site.devices
            if device.kind is DeviceKind.AIR_CONDITIONER and device.room is not None
        }
        self._outdoor = {
            device.id
            for device in site.devices
            if device.kind is DeviceKind.CLIMATE and device.room is None
        }
        self._wake = asyncio.Event()
        self._unsubscribe: list[Unsubscribe] = []

    def start(self) -> None:
        self._unsubscribe = [
            self._bus.subscribe(ReadingReceived, self._on_reading),
            self._bus.subscribe(RoomStateChanged, self._on_room),
            self._bus.subscribe(DeviceStateChanged, self._on_device),
        ]

    def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    # -- queries -------------------------------------------------------------

    @property
    def device_ids(self) -> list[str]:
        """Every air conditioner of the site, in site-file order."""
        return list(self._units)

    def has(self, device_id: str) -> bool:
        """Whether ``device_id`` is an air conditioner of the site."""
        return device_id in self._units

    def override(self, device_id: str) -> ClimateOverride | None:
        """The override in force for ``device_id`` now, if any."""
        self._require(device_id)
        override = self._store.override(device_id)
        if override is None or not override.active(self._clock.now()):
            return None
        return override

    def entry(self, device_id: str) -> dict[str, Any]:
        """One air conditioner as the API shows it, with the rule's answer of this instant."""
        unit = self._require(device_id)
        now = self._clock.now()
        facts = self._facts(unit, now)
        decision = self._decide(facts, now)
        device = self._state.device(device_id)
        reading = _ac_reading(device.reading)
        min_off_until = may_start_at(facts, self._rules.min_off)
        override = self.override(device_id)
        return {
            "id": device_id,
            "room": unit.room,
            "managed": unit.managed,
            "online": device.online,
            "stale": device.stale,
            "reading": None
            if reading is None
            else {
                "power": reading.power,
                "mode": None if reading.mode is None else reading.mode.value,
                "setpoint": reading.setpoint,
                "room_temperature": reading.room_temperature,
                "fault": reading.fault,
            },
            "rule": {
                **(
                    decision.want.to_json()
                    if decision.want is not None
                    else {"power": None, "mode": None, "setpoint": None}
                ),
                "cause": decision.cause.value,
                "next_change": _iso(decision.next_change),
            },
            "min_off_until": _iso(min_off_until if min_off_until and min_off_until > now else None),
            "override": None if override is None else _override_json(override),
        }

    def entries(self) -> list[dict[str, Any]]:
        return [self.entry(device_id) for device_id in self._units]

    def status(self) -> dict[str, Any]:
        """For ``/api/health``: each unit's last decision and command."""
        now = self._clock.now()
        units: dict[str, Any] = {}
        for device_id, unit in self._units.items():
            decision = unit.decision
            facts = self._facts(unit, now)
            min_off_until = may_start_at(facts, self._rules.min_off)
            override = self._store.override(device_id)
            units[device_id] = {
                "managed": unit.managed,
                "online": self._state.device(device_id).online,
                "cause": None if decision is None else decision.cause.value,
                "want": None
                if decision is None or decision.want is None
                else decision.want.to_json(),
                "next_change": None if decision is None else _iso(decision.next_change),
                "min_off_until": _iso(
                    min_off_until if min_off_until and min_off_until > now else None
                ),
                "override": None
                if override is None or not override.active(now)
                else _override_json(override),
                "fault": unit.fault,
                "last_command": None if unit.last_command is None else unit.last_command.to_json(),
                "failed_commands_in_a_row": unit.failures,
            }
        return {"air_conditioners": units}

    # -- staff overrides --------------------------------------------------------

    def set_override(
        self, device_id: str, setting: AcSetting, hours: float, reason: str, by: str
    ) -> dict[str, Any]:
        """Hold ``device_id`` at ``setting`` for ``hours`` (the compressor's rest still counts).

        Raises :class:`UnknownAirConditioner`, or ValueError for a setting the
        rule cannot carry out (a mode or setpoint with power off, hours <= 0).
        """
        unit = self._require(device_id)
        if not setting.power and (setting.mode is not None or setting.setpoint is not None):
            raise ValueError("a mode or setpoint needs power on")
        if not (math.isfinite(hours) and hours > 0):
            raise ValueError("hours must be > 0")
        now = self._clock.now()
        override = ClimateOverride(
            device_id, setting, now, now + timedelta(hours=hours), reason, by
        )
        with self._events.transaction():
            self._store.set_override(override)
            self._events.record(
                "ac_override",
                f"{device_id} set by staff to {_describe(setting)} until"
                f" {override.until.isoformat()}" + (f": {reason}" if reason else ""),
                room=unit.room,
                device=device_id,
                details={
                    "action": "set",
                    **setting.to_json(),
                    "hours": hours,
                    "until": override.until.isoformat(),
                    "reason": reason,
                    "by": by,
                },
            )
        self._evaluate(unit, now)
        return self.entry(device_id)

    def clear_override(self, device_id: str, by: str) -> dict[str, Any]:
        """End ``device_id``'s override now: the rule (if it runs the unit) takes over."""
        unit = self._require(device_id)
        now = self._clock.now()
        self._expire_override(unit, now)  # one that ran out already ended by itself
        current = self._store.override(device_id)
        if current is not None:
            with self._events.transaction():
                self._store.clear_override(device_id)
                if current.at <= now:
                    self._events.record(
                        "ac_override",
                        f"{device_id}: staff override cleared by staff",
                        room=unit.room,
                        device=device_id,
                        details={"action": "cleared", "by": by},
                    )
        self._evaluate(unit, now)
        return self.entry(device_id)

    # -- the rule, applied ---------------------------------------------------------

    def evaluate(self, device_id: str) -> ClimateDecision:
        """Re-decide one air conditioner now (and command it if the answer says so)."""
        return self._evaluate(self._require(device_id), self._clock.now())

    def _evaluate(self, unit: _Unit, now: datetime) -> ClimateDecision:
        self._expire_override(unit, now)
        facts = self._facts(unit, now)
        decision = self._decide(facts, now)
        if decision.activity is not facts.activity:
            self._store.update_unit(unit.device.id, activity=decision.activity)
        unit.decision = decision
        if self._command_for(unit):
            unit.pending = True
        self._wake.set()
        return decision

    def _decide(self, facts: ClimateFacts, now: datetime) -> ClimateDecision:
        return decide(facts, now, rules=self._rules, hours=self._hours, zone=self._zone)

    def _facts(self, unit: _Unit, now: datetime) -> ClimateFacts:
        room = self._state.room(unit.room)
        if room.occupied is False:
            unit.empty_since = room.since or now
        elif room.occupied is True:
            unit.empty_since = None
        reading = _ac_reading(self._state.device(unit.device.id).reading)
        memory = self._store.unit(unit.device.id)
        return ClimateFacts(
            managed=unit.managed,
            occupied=room.occupied,
            empty_since=unit.empty_since,
            room_temperature=room.temperature,
            outdoor_temperature=self._state.site_state.outdoor_temperature,
            running=None if reading is None else reading.power,
            activity=memory.activity,
            switched_off_at=memory.switched_off_at,
            override=self._store.override(unit.device.id),
        )

    def _expire_override(self, unit: _Unit, now: datetime) -> None:
        override = self._store.override(unit.device.id)
        if override is None or now < override.until:
            return
        after = "the rule takes over" if unit.managed else "the unit is left as it is"
        with self._events.transaction():
            self._store.clear_override(unit.device.id)
            self._events.record(
                "ac_override",
                f"{unit.device.id}: staff override expired; {after}",
                room=unit.room,
                device=unit.device.id,
                details={"action": "expired", "until": override.until.isoformat()},
                time=override.until,
            )

    def _command_for(self, unit: _Unit) -> tuple[AcSetting, list[PointWrite]] | None:
        """The command to send now, with the points that differ; None when none may go."""
        decision = unit.decision
        if decision is None or decision.command is None or unit.writing:
            return None
        if unit.retry_at is not None and self._clock.monotonic() < unit.retry_at:
            return None
        device = self._state.device(unit.device.id)
        reading = _ac_reading(device.reading)
        if reading is None or device.online is not True or device.stale:
            return None  # never heard from, or not there: nothing to compare, nobody to tell
        if unit.confirmed_at is not None and (
            device.last_seen is None or device.last_seen < unit.confirmed_at
        ):
            return None  # the reading after the last command is still to come
        writes = _writes(reading, decision.command)
        return (decision.command, writes) if writes else None

    async def _send(
        self, unit: _Unit, decision: ClimateDecision, setting: AcSetting, writes: list[PointWrite]
    ) -> None:
        device_id = unit.device.id
        now = self._clock.now()
        record = CommandRecord(now, setting, decision.cause.value, tuple(map(str, writes)))
        unit.last_command = record
        try:
            self._events.record(
                "ac_command",
                f"{device_id}: {', '.join(record.writes)} ({decision.describe()})",
                room=unit.room,
                device=device_id,
                details={**setting.to_json(), "cause": decision.cause.value},
            )
            self._logger.info(
                "%s: %s (%s)", device_id, ", ".join(record.writes), decision.cause.value
            )
            try:
                await self._writer.write(device_id, writes)
            except (WriteFailed, ValueError) as error:
                self._failed(unit, record, error)
            else:
                self._confirmed(unit, record)
        finally:
            unit.writing = False
            self._wake.set()
        self._evaluate(unit, self._clock.now())

    def _confirmed(self, unit: _Unit, record: CommandRecord) -> None:
        now = self._clock.now()
        if unit.failures:
            self._logger.info(
                "%s: commands are confirmed again after %d failures",
                unit.device.id,
                unit.failures,
            )
        unit.failures = 0
        unit.retry_at = None
        unit.confirmed_at = now
        unit.last_command = CommandRecord(
            record.at, record.setting, record.cause, record.writes, "confirmed"
        )
        if not record.setting.power:
            self._store.update_unit(unit.device.id, switched_off_at=now, last_power=False)

    def _failed(self, unit: _Unit, record: CommandRecord, error: Exception) -> None:
        unit.failures += 1
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** min(unit.failures - 1, 16))
        unit.retry_at = self._clock.monotonic() + delay
        unit.last_command = CommandRecord(
            record.at, record.setting, record.cause, record.writes, "failed", str(error)
        )
        log = self._logger.warning if unit.failures == 1 else self._logger.debug
        log(
            "%s: command %s failed (%s); next try in %.0f s",
            unit.device.id,
            ", ".join(record.writes),
            error,
            delay,
        )

    # -- events ----------------------------------------------------------------------

    def _on_reading(self, event: ReadingReceived) -> None:
        unit = self._units.get(event.device_id)
        if unit is not None:
            reading = _ac_reading(event.reading)
            if reading is not None and not event.retained:
                self._track_power(unit, reading, event.time)
                self._track_fault(unit, reading)
            self._evaluate(unit, self._clock.now())
        elif event.device_id in self._outdoor:
            self._evaluate_all()

    def _on_room(self, event: RoomStateChanged) -> None:
        now = self._clock.now()
        for unit in self._units.values():
            if unit.room == event.room_id:
                self._evaluate(unit, now)

    def _on_device(self, event: DeviceStateChanged) -> None:
        unit = self._units.get(event.device_id)
        if unit is not None:
            self._evaluate(unit, self._clock.now())
        elif event.device_id in self._outdoor:
            self._evaluate_all()

    def _evaluate_all(self) -> None:
        now = self._clock.now()
        for unit in self._units.values():
            self._evaluate(unit, now)

    def _track_power(self, unit: _Unit, reading: AirConditionerReading, at: datetime) -> None:
        """Store every switch from on to off, whoever made it (the rule, staff, a remote)."""
        if reading.power is None:
            return
        memory = self._store.unit(unit.device.id)
        if memory.last_power is True and reading.power is False:
            self._store.update_unit(unit.device.id, switched_off_at=at, last_power=False)
        elif memory.last_power is not reading.power:
            self._store.update_unit(unit.device.id, last_power=reading.power)

    def _track_fault(self, unit: _Unit, reading: AirConditionerReading) -> None:
        code = reading.fault
        if code is None or code == unit.fault:
            return
        device_id = unit.device.id
        if code != 0:
            self._alarms.raise_alarm(
                "ac_fault",
                device_id,
                f"air conditioner {device_id} in {unit.room} reports fault code {code}",
                room=unit.room,
                device=device_id,
                details={"code": code},
            )
        elif self._alarms.is_active("ac_fault", device_id):
            self._alarms.clear(
                "ac_fault", device_id, f"air conditioner {device_id} reports no fault"
            )
        unit.fault = code

    # -- deadlines and commands ----------------------------------------------------

    async def run(self) -> None:
        """Decide each unit at the moments its rule named, and send the commands."""
        try:
            self._evaluate_all()
            while True:
                self._wake.clear()
                now = self._clock.now()
                monotonic = self._clock.monotonic()
                for unit in self._units.values():
                    decision = unit.decision
                    due = decision is not None and (
                        decision.next_change is not None and decision.next_change <= now
                    )
                    retry = unit.retry_at is not None and unit.retry_at <= monotonic
                    if due or (retry and not unit.writing):
                        if retry:
                            unit.retry_at = None
                        self._evaluate(unit, now)
                for unit in self._units.values():
                    if unit.pending and not unit.writing:
                        self._launch(unit)
                await sleep_or_wake(self._clock, self._wake, self._wait(now, monotonic))
        finally:
            await self._cancel_commands()

    def _launch(self, unit: _Unit) -> None:
        unit.pending = False
        command = self._command_for(unit)
        if command is None or unit.decision is None:
            return
        # Marked at once, so that nothing starts a second command before this one ends.
        unit.writing = True
        task = asyncio.create_task(
            self._send(unit, unit.decision, *command), name=f"climate {unit.device.id}"
        )
        unit.tasks.add(task)
        task.add_done_callback(functools.partial(self._command_done, unit))

    def _command_done(self, unit: _Unit, task: asyncio.Task[None]) -> None:
        unit.tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            self._logger.error(
                "%s: sending a command failed unexpectedly", unit.device.id, exc_info=error
            )

    def _wait(self, now: datetime, monotonic: float) -> float:
        waits = [_IDLE_WAIT]
        for unit in self._units.values():
            if unit.decision is not None and unit.decision.next_change is not None:
                waits.append((unit.decision.next_change - now).total_seconds())
            if unit.retry_at is not None:
                waits.append(unit.retry_at - monotonic)
        return max(0.0, min(waits))

    async def _cancel_commands(self) -> None:
        tasks = [task for unit in self._units.values() for task in unit.tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _require(self, device_id: str) -> _Unit:
        unit = self._units.get(device_id)
        if unit is None:
            raise UnknownAirConditioner(device_id)
        return unit


def _ac_reading(reading: object) -> AirConditionerReading | None:
    return reading if isinstance(reading, AirConditionerReading) else None


def _writes(reading: AirConditionerReading, setting: AcSetting) -> list[PointWrite]:
    """The points of ``setting`` that differ from ``reading``: mode and setpoint before power,
    so a unit switched on starts in the right mode."""
    if not setting.power:
        return [] if reading.power is False else [PointWrite("power", False)]
    writes: list[PointWrite] = []
    if setting.mode is not None and reading.mode is not setting.mode:
        writes.append(PointWrite("mode", setting.mode.value))
    if setting.setpoint is not None and (
        reading.setpoint is None or abs(reading.setpoint - setting.setpoint) > _SETPOINT_TOLERANCE
    ):
        writes.append(PointWrite("setpoint", setting.setpoint))
    if reading.power is not True:
        writes.append(PointWrite("power", True))
    return writes


def _describe(setting: AcSetting) -> str:
    if not setting.power:
        return "off"
    parts = ["on"]
    if setting.mode is not None:
        parts.append(setting.mode.value)
    if setting.setpoint is not None:
        parts.append(f"{setting.setpoint:g} °C")
    return " ".join(parts)


def _override_json(override: ClimateOverride) -> dict[str, Any]:
    return {
        **override.setting.to_json(),
        "since": override.at.isoformat(),
        "until": override.until.isoformat(),
        "reason": override.reason,
        "by": override.by,
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
