"""The climate controller wired as the controller wires it, on a virtual clock, without Modbus.

Everything is real (LiveState, the bus, SQLite, the event log, alarms, the
climate rule and its controller) except the Modbus link: a
:class:`FakeAirConditioners` writer stands in for
:class:`~controller.modbus_poller.ModbusDevices`. It records every write and
answers like a unit behind the poller does: the new registers come back at
once as a reading on the bus. Sensors are put on the bus as the MQTT ingest
would. Tests against the real poller and the pymodbus simulator are in
``test_climate_live.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from controller.alarms import Alarm, AlarmBook
from controller.bus import EventBus
from controller.climate import ClimateController
from controller.clock import VirtualClock
from controller.database import open_database
from controller.event_log import EventLog, LoggedEvent
from controller.events import (
    AvailabilityChanged,
    AvailabilitySource,
    CommandUnconfirmed,
    ReadingReceived,
)
from controller.modbus_poller import PointWrite, WriteFailed
from controller.readings import AcMode, AirConditionerReading, ClimateReading, OccupancyReading
from controller.site import DeviceKind, Site
from controller.state import LiveState


@dataclass
class FakeAc:
    """An air conditioner's registers, in physical units."""

    power: bool = False
    mode: AcMode = AcMode.AUTO
    setpoint: float = 24.0
    room_temperature: float | None = 25.0
    fault: int = 0

    def reading(self) -> AirConditionerReading:
        return AirConditionerReading(
            power=self.power,
            mode=self.mode,
            setpoint=self.setpoint,
            room_temperature=self.room_temperature,
            fault=self.fault,
        )

    @property
    def setting(self) -> tuple[bool, AcMode, float]:
        return (self.power, self.mode, self.setpoint)


@dataclass(frozen=True)
class Change:
    """What a unit did at a moment: by a command or by hand."""

    time: datetime
    power: bool
    mode: AcMode
    setpoint: float
    by: str  # "controller" | "remote"


class FakeAirConditioners:
    """A DeviceWriter that answers like the units behind the Modbus poller.

    A write changes the unit's registers and publishes its new reading at once
    (the poller's fresh poll after a confirmed write); a unit in ``failing``
    refuses, as an unconfirmed write does (CommandUnconfirmed, then WriteFailed).
    """

    def __init__(self, bus: EventBus, clock: VirtualClock, units: dict[str, FakeAc]) -> None:
        self._bus = bus
        self._clock = clock
        self.units = units
        self.writes: list[tuple[datetime, str, tuple[PointWrite, ...]]] = []
        self.failing: set[str] = set()
        self.changes: dict[str, list[Change]] = {device: [] for device in units}

    async def write(self, device_id: str, writes: Sequence[PointWrite]) -> None:
        now = self._clock.now()
        self.writes.append((now, device_id, tuple(writes)))
        if device_id in self.failing:
            self._bus.publish(CommandUnconfirmed(device_id, "...", "no answer", 3, now))
            raise WriteFailed(f"{device_id}: no answer")
        unit = self.units[device_id]
        for write in writes:
            if write.point == "power":
                assert isinstance(write.value, bool)
                unit.power = write.value
            elif write.point == "mode":
                unit.mode = AcMode(str(write.value))
            elif write.point == "setpoint":
                assert isinstance(write.value, float | int)
                unit.setpoint = float(write.value)
            else:
                raise ValueError(f"unexpected point {write.point}")
        self._changed(device_id, "controller")
        self.poll(device_id)

    def poll(self, device_id: str) -> None:
        """The unit's registers as the poller would publish them now."""
        reading = self.units[device_id].reading()
        self._bus.publish(ReadingReceived(device_id, reading, self._clock.now()))

    def by_hand(self, device_id: str, **registers: Any) -> None:
        """Someone uses the remote control (the next poll shows it)."""
        unit = self.units[device_id]
        for name, value in registers.items():
            setattr(unit, name, value)
        self._changed(device_id, "remote")
        self.poll(device_id)

    def writes_to(self, device_id: str) -> list[tuple[datetime, tuple[str, ...]]]:
        return [
            (at, tuple(str(write) for write in writes))
            for at, device, writes in self.writes
            if device == device_id
        ]

    def _changed(self, device_id: str, by: str) -> None:
        unit = self.units[device_id]
        history = self.changes[device_id]
        now = self._clock.now()
        if history and (history[-1].power, history[-1].mode, history[-1].setpoint) == unit.setting:
            return
        history.append(Change(now, unit.power, unit.mode, unit.setpoint, by))


@dataclass
class ClimateRig:
    site: Site
    clock: VirtualClock
    data_dir: Path | None = None
    units: dict[str, FakeAc] | None = None  # carried over for a restart
    task: asyncio.Task[None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        site, clock = self.site, self.clock
        self.bus = EventBus()
        self.state = LiveState(site, self.bus)
        self.db = open_database(self.data_dir)
        self.events = EventLog(self.db, clock)
        self.alarms = AlarmBook(self.db, self.events, clock)
        if self.units is None:
            self.units = {
                device.id: FakeAc()
                for device in site.devices
                if device.kind is DeviceKind.AIR_CONDITIONER
            }
        self.acs = FakeAirConditioners(self.bus, clock, self.units)
        self.climate = ClimateController(
            site,
            self.state,
            self.bus,
            clock,
            db=self.db,
            events=self.events,
            alarms=self.alarms,
            writer=self.acs,
        )

    async def start(self) -> None:
        self.state.start()
        self.climate.start()
        self.task = asyncio.create_task(self.climate.run(), name="climate")
        await self.clock.advance(0)

    async def stop(self) -> None:
        """Stop as the controller does (a restart then opens the same data_dir)."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        self.climate.stop()
        self.state.stop()
        self.db.close()

    async def walk(self, to: datetime, *, step: float = 60.0) -> None:
        """Advance to ``to`` in steps (a minute by default), polling every unit each step."""
        while self.clock.now() < to:
            seconds = min(step, (to - self.clock.now()).total_seconds())
            await self.clock.advance(seconds)
            self.poll_all()
            await self.clock.advance(0)

    def poll_all(self) -> None:
        for device_id in self.acs.units:
            if self.state.device(device_id).online is not False:
                self.acs.poll(device_id)

    # -- sensors --------------------------------------------------------------------

    def report(self, device_id: str, reading: Any) -> None:
        self.bus.publish(ReadingReceived(device_id, reading, self.clock.now()))

    def occupancy(self, room: str, occupied: bool, count: int | None = None) -> None:
        self.report(f"occ-{room}", OccupancyReading(occupied, count))

    def temperature(self, room: str, celsius: float) -> None:
        self.report(f"temp-{room}", ClimateReading(temperature=celsius, humidity=55.0))

    def outdoor(self, celsius: float) -> None:
        self.report("temp-outdoor", ClimateReading(temperature=celsius, humidity=70.0))

    def availability(self, device_id: str, online: bool) -> None:
        source = AvailabilitySource.POLL if device_id.startswith("ac-") else AvailabilitySource.LWT
        self.bus.publish(AvailabilityChanged(device_id, online, source, self.clock.now()))

    # -- what happened ------------------------------------------------------------------

    def ac(self, device_id: str) -> FakeAc:
        assert self.units is not None
        return self.units[device_id]

    def changes(self, device_id: str) -> list[Change]:
        return self.acs.changes[device_id]

    def logged(self, kind: str) -> list[LoggedEvent]:
        return self.events.query(kind=kind, limit=10_000)

    def alarm(self, kind: str, source: str) -> Alarm | None:
        found = [alarm for alarm in self.alarms.query(kind=kind) if alarm.source == source]
        return found[0] if found else None


def timeline(changes: Sequence[Change]) -> list[tuple[str, bool, str, float]]:
    """``(HH:MM, power, mode, setpoint)`` for each change, for readable assertions."""
    return [
        (change.time.strftime("%H:%M"), change.power, change.mode.value, change.setpoint)
        for change in changes
    ]
