"""What a device said, decoded into physical units and independent of protocol.

Drivers turn bytes (an MQTT payload, a block of Modbus registers) into these
small immutable values; everything downstream (room state, rules, storage)
reads only these, so a new payload format or register map never touches a rule.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class LockState(enum.StrEnum):
    LOCKED = "LOCKED"
    UNLOCKED = "UNLOCKED"
    JAMMED = "JAMMED"


class DoorState(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class OccupancyReading:
    """Presence in a room; ``count`` only from sensors that count (mmWave, camera)."""

    occupied: bool
    count: int | None = None


@dataclass(frozen=True, slots=True)
class CounterReading:
    """Cumulative entries and exits since the counter last booted."""

    entries_total: int
    exits_total: int


@dataclass(frozen=True, slots=True)
class ClimateReading:
    """Temperature in °C and relative humidity in %; a sensor may report either alone."""

    temperature: float | None = None
    humidity: float | None = None


@dataclass(frozen=True, slots=True)
class LockReading:
    """A lock's own report; ``door`` is None when the lock has no door contact."""

    state: LockState
    door: DoorState | None = None


@dataclass(frozen=True, slots=True)
class FireAlarmReading:
    alarm: bool


class AcMode(enum.StrEnum):
    AUTO = "auto"
    COOL = "cool"
    HEAT = "heat"
    FAN = "fan"
    DRY = "dry"


class FanSpeed(enum.StrEnum):
    AUTO = "auto"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


@dataclass(frozen=True, slots=True)
class AirConditionerReading:
    """An air conditioner's registers in physical units.

    A field is None when the device's profile does not have that point, or
    the device reported a value its profile gives no meaning to (an unknown
    mode code, "no sensor fitted"): unknown, never a guess.
    """

    power: bool | None
    mode: AcMode | None
    setpoint: float | None
    fan: FanSpeed | None = None
    room_temperature: float | None = None
    fault: int | None = None


@dataclass(frozen=True, slots=True)
class CabinetReading:
    """A document cabinet's compartments, index i = compartment i."""

    doors_open: tuple[bool, ...]
    items_present: tuple[bool, ...]


Reading = (
    OccupancyReading
    | CounterReading
    | ClimateReading
    | LockReading
    | FireAlarmReading
    | AirConditionerReading
    | CabinetReading
)
