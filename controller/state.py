"""What is true in the building right now, derived from what devices said.

:class:`LiveState` keeps each device's last reading and availability and
derives each room's state from the devices in it. It is the one place that
decides what "occupied" or "locked" means when a room has several sensors, or
when a sensor has gone offline: an offline sensor's last word is not the
truth any more, so it stops counting, and a room whose only sensor is offline
is *unknown* (``None``), never silently "empty".

A room state change is published on the bus only when a published field
really changed, so the retained MQTT topic and the page update exactly when
the answer changes, and a sensor repeating itself costs nothing downstream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from controller.bus import EventBus, Unsubscribe
from controller.events import (
    AvailabilityChanged,
    AvailabilitySource,
    DeviceStateChanged,
    FireAlarmChanged,
    ReadingReceived,
    RoomStateChanged,
)
from controller.readings import (
    AirConditionerReading,
    ClimateReading,
    DoorState,
    FireAlarmReading,
    LockReading,
    LockState,
    OccupancyReading,
    Reading,
)
from controller.site import Device, DeviceKind, Site

_LOCK_SEVERITY = {LockState.LOCKED: 0, LockState.UNLOCKED: 1, LockState.JAMMED: 2}


@dataclass(slots=True)
class DeviceState:
    """One device as the controller knows it. ``online`` is None until it is first heard of.

    ``last_seen`` is the last live reading; ``last_heard`` also counts an
    ``online`` announcement, so a device that just came back gets a full
    reporting interval before silence counts against it. A reading from before
    the device went offline is ``stale``: it stays visible but no longer
    describes the room until a fresh one arrives.
    """

    device: Device
    online: bool | None = None
    availability_source: AvailabilitySource | None = None
    last_seen: datetime | None = None
    last_heard: datetime | None = None
    reading: Reading | None = None
    stale: bool = False
    offline_since: datetime | None = None

    @property
    def usable(self) -> bool:
        """Whether this device's last reading still describes the room."""
        return self.reading is not None and self.online is not False and not self.stale

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.device.id,
            "kind": self.device.kind.value,
            "room": self.device.room,
            "protocol": self.device.protocol.value if self.device.protocol else None,
            "online": self.online,
            "availability_source": self.availability_source,
            "offline_since": _iso(self.offline_since),
            "last_seen": _iso(self.last_seen),
            "reading": _reading_json(self.reading),
            "reading_stale": self.stale,
        }


@dataclass(frozen=True, slots=True)
class RoomState:
    """The derived state of one room; None means the controller does not know."""

    occupied: bool | None = None
    count: int | None = None
    since: datetime | None = None
    locked: bool | None = None
    lock_state: LockState | None = None
    door: DoorState | None = None
    temperature: float | None = None
    humidity: float | None = None
    fire_alarm: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "occupied": self.occupied,
            "count": self.count,
            "since": _iso(self.since),
            "locked": self.locked,
            "lock_state": self.lock_state,
            "door": self.door,
            "temperature": self.temperature,
            "humidity": self.humidity,
            "fire_alarm": self.fire_alarm,
        }


@dataclass(frozen=True, slots=True)
class SiteState:
    """Site-wide facts: the outdoor climate and the fire-alarm panel."""

    outdoor_temperature: float | None = None
    outdoor_humidity: float | None = None
    fire_alarm: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "outdoor_temperature": self.outdoor_temperature,
            "outdoor_humidity": self.outdoor_humidity,
            "fire_alarm": self.fire_alarm,
        }


@dataclass(slots=True)
class _Room:
    devices: list[DeviceState] = field(default_factory=list)
    state: RoomState = RoomState()
    updated: datetime | None = None


class LiveState:
    """Device and room state, fed by reading and availability events from the bus."""

    def __init__(self, site: Site, bus: EventBus) -> None:
        self._site = site
        self._bus = bus
        self._devices = {device.id: DeviceState(device) for device in site.devices}
        self._rooms = {room.id: _Room() for room in site.rooms}
        self._site_devices: list[DeviceState] = []
        for state in self._devices.values():
            if state.device.room is None:
                self._site_devices.append(state)
            else:
                self._rooms[state.device.room].devices.append(state)
        self._site_state = SiteState()
        self._unsubscribe: list[Unsubscribe] = []

    def start(self) -> None:
        self._unsubscribe = [
            self._bus.subscribe(ReadingReceived, self.on_reading),
            self._bus.subscribe(AvailabilityChanged, self.on_availability),
        ]

    def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    # -- queries ----------------------------------------------------------

    def room(self, room_id: str) -> RoomState:
        return self._rooms[room_id].state

    def room_updated(self, room_id: str) -> datetime | None:
        return self._rooms[room_id].updated

    @property
    def site_state(self) -> SiteState:
        return self._site_state

    def device(self, device_id: str) -> DeviceState:
        return self._devices[device_id]

    @property
    def devices(self) -> Mapping[str, DeviceState]:
        return self._devices

    def devices_in(self, room_id: str) -> Iterable[DeviceState]:
        return self._rooms[room_id].devices

    # -- updates ----------------------------------------------------------

    def on_reading(self, event: ReadingReceived) -> None:
        state = self._devices.get(event.device_id)
        if state is None:
            return
        if (
            not event.retained
            and state.online is True
            and not state.stale
            and state.reading == event.reading
        ):
            state.last_seen = state.last_heard = event.time  # a sensor repeating itself
            return
        state.reading = event.reading
        if event.retained:
            # Kept by the broker from some time ago: the last known value, but no
            # sign of life, and no truth about a device known to be offline.
            state.stale = state.online is False
        else:
            state.stale = False
            state.last_seen = state.last_heard = event.time
            if state.online is not True:
                state.online = True
                state.offline_since = None
                state.availability_source = AvailabilitySource.READING
                self._bus.publish(DeviceStateChanged(event.device_id, event.time))
        self._refresh(state.device, event.time)

    def on_availability(self, event: AvailabilityChanged) -> None:
        state = self._devices.get(event.device_id)
        if state is None:
            return
        if event.online:
            state.last_heard = event.time
        if state.online is event.online:
            return
        if not event.online:
            state.stale = state.reading is not None
        state.online = event.online
        state.offline_since = None if event.online else event.time
        state.availability_source = event.source
        self._bus.publish(DeviceStateChanged(event.device_id, event.time))
        self._refresh(state.device, event.time)

    def _refresh(self, device: Device, now: datetime) -> None:
        if device.room is None:
            previous_alarm = self._site_state.fire_alarm
            self._site_state = _derive_site(self._site_devices)
            if self._site_state.fire_alarm != previous_alarm:
                self._bus.publish(
                    FireAlarmChanged(self._site_state.fire_alarm, previous_alarm, now)
                )
                for room_id in self._rooms:
                    self._refresh_room(room_id, now)
        else:
            self._refresh_room(device.room, now)

    def _refresh_room(self, room_id: str, now: datetime) -> None:
        room = self._rooms[room_id]
        previous = room.state
        derived = _derive_room(room.devices, self._site_state.fire_alarm, previous, now)
        if derived != previous:
            room.state = derived
            room.updated = now
            self._bus.publish(RoomStateChanged(room_id, now))


def _derive_room(
    devices: Iterable[DeviceState],
    fire_alarm: bool | None,
    previous: RoomState,
    now: datetime,
) -> RoomState:
    """The room's state from its usable devices; ``since`` moves only when occupancy flips.

    The temperature is the mean of the room's climate sensors, or of its air
    conditioners' own sensors when no climate sensor is usable.

    One pass with plain accumulators: this runs for every reading on the
    ingest path, so it avoids intermediate lists and generators.
    """
    occupancy_seen = occupied_any = False
    count: int | None = None
    temperature_sum = humidity_sum = ac_temperature_sum = 0.0
    temperatures = humidities = ac_temperatures = 0
    lock_state: LockState | None = None
    door: DoorState | None = None
    for state in devices:
        if not state.usable:
            continue
        reading = state.reading
        if isinstance(reading, OccupancyReading):
            occupancy_seen = True
            occupied_any = occupied_any or reading.occupied
            if reading.count is not None:
                count = reading.count if count is None else count + reading.count
        elif isinstance(reading, ClimateReading):
            if reading.temperature is not None:
                temperature_sum += reading.temperature
                temperatures += 1
            if reading.humidity is not None:
                humidity_sum += reading.humidity
                humidities += 1
        elif isinstance(reading, LockReading):
            if lock_state is None or _LOCK_SEVERITY[reading.state] > _LOCK_SEVERITY[lock_state]:
                lock_state = reading.state
            if reading.door is DoorState.OPEN or (door is None and reading.door is not None):
                door = reading.door
        elif isinstance(reading, AirConditionerReading) and reading.room_temperature is not None:
            ac_temperature_sum += reading.room_temperature
            ac_temperatures += 1

    occupied = (occupied_any or bool(count)) if occupancy_seen else None
    if not temperatures:
        # No climate sensor to ask: an air conditioner's own return-air sensor
        # is the next best measure of the room (and better than nothing).
        temperature_sum, temperatures = ac_temperature_sum, ac_temperatures
    return RoomState(
        occupied,
        count,
        previous.since if occupied == previous.occupied else now,
        None if lock_state is None else lock_state is LockState.LOCKED,
        lock_state,
        door,
        round(temperature_sum / temperatures, 2) if temperatures else None,
        round(humidity_sum / humidities, 2) if humidities else None,
        fire_alarm,
    )


def _derive_site(devices: Iterable[DeviceState]) -> SiteState:
    climate: list[ClimateReading] = []
    alarms: list[bool | None] = []
    for state in devices:
        if state.device.kind is DeviceKind.FIRE_ALARM:
            # A panel that is offline or not heard from yet is not "no fire": unknown.
            panel = state.reading if state.usable else None
            alarms.append(panel.alarm if isinstance(panel, FireAlarmReading) else None)
        elif state.usable and isinstance(state.reading, ClimateReading):
            climate.append(state.reading)
    fire_alarm: bool | None
    if any(alarm is True for alarm in alarms):
        fire_alarm = True
    elif alarms and all(alarm is False for alarm in alarms):
        fire_alarm = False
    else:
        fire_alarm = None
    return SiteState(
        outdoor_temperature=_mean(reading.temperature for reading in climate),
        outdoor_humidity=_mean(reading.humidity for reading in climate),
        fire_alarm=fire_alarm,
    )


def _mean(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    if not present:
        return None
    return round(sum(present) / len(present), 2)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _reading_json(reading: Reading | None) -> dict[str, Any] | None:
    if reading is None:
        return None
    return {
        key: (value.value if hasattr(value, "value") else value)
        for key, value in dataclasses.asdict(reading).items()
    }
