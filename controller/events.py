"""The events that flow through the controller's bus.

Drivers publish what devices said (:class:`ReadingReceived`,
:class:`AvailabilityChanged`, :class:`BadPayload`); the room-state model
publishes what that means (:class:`RoomStateChanged`,
:class:`DeviceStateChanged`). Rules, storage and the web layer only ever see
these frozen values, never a protocol.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from controller.readings import Reading


class AvailabilitySource(enum.StrEnum):
    LWT = "lwt"  # the device's own availability topic (its last will)
    SILENCE = "silence"  # missed too many reporting intervals
    READING = "reading"  # a reading arrived from a device thought offline
    POLL = "poll"  # Modbus poll results


@dataclass(frozen=True, slots=True)
class ReadingReceived:
    """A device's reading. ``retained`` readings were stored by the broker earlier:
    they tell the last known value, not that the device is alive now."""

    device_id: str
    reading: Reading
    time: datetime
    retained: bool = False


@dataclass(frozen=True, slots=True)
class AvailabilityChanged:
    device_id: str
    online: bool
    source: AvailabilitySource
    time: datetime


@dataclass(frozen=True, slots=True)
class BadPayload:
    """A message that changed nothing, and why; ``device_id`` may be unknown to the site."""

    device_id: str
    reason: str
    detail: str
    topic: str
    time: datetime


@dataclass(frozen=True, slots=True)
class RoomStateChanged:
    room_id: str
    time: datetime


@dataclass(frozen=True, slots=True)
class DeviceStateChanged:
    device_id: str
    time: datetime


@dataclass(frozen=True, slots=True)
class FireAlarmChanged:
    """The site's fire-alarm state changed: True alarm, False clear, None unknown
    (the panel is offline or not heard from). Published before the room states
    it changes, so the fire rule acts first."""

    alarm: bool | None
    previous: bool | None
    time: datetime


@dataclass(frozen=True, slots=True)
class CommandUnconfirmed:
    """A command to a device that could not be confirmed after every try: an alarm.

    ``command`` says what was asked (``power=true, setpoint=26.0``), ``reason``
    what went wrong the last time (no answer, an exception, a different value
    read back).
    """

    device_id: str
    command: str
    reason: str
    attempts: int
    time: datetime


@dataclass(frozen=True, slots=True)
class VisitorsCounted:
    """A people counter's reading, turned into exact increments by the visitor counter.

    ``inside`` is the people inside the whole building afterwards (all entrances),
    as the visitor counter keeps it: never negative, reset at local midnight.
    """

    device_id: str
    entries: int
    exits: int
    inside: int
    time: datetime


Event = (
    ReadingReceived
    | AvailabilityChanged
    | BadPayload
    | RoomStateChanged
    | DeviceStateChanged
    | FireAlarmChanged
    | CommandUnconfirmed
    | VisitorsCounted
)
