"""Bus events in, points out: what devices said and what rooms are, as CONTRACT §6 names them.

One point per live reading (a retained message is an old value the broker kept:
it was recorded when it was new, so it is not recorded again with a new time),
one ``people`` point per increment the visitor counter counted, and one ``room``
point whenever a room's occupancy, count or booking changes. A room point
carries the room's whole state: a field left out is unknown from that moment
(the rollups stop carrying it), which is how an offline sensor shows in history.

Everything here runs on the event loop for every message, so it does the least
it can: the series of each device and room are built once, and a point is one
small tuple handed to the writer, which encodes it on its own thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from controller.bus import EventBus, Unsubscribe
from controller.event_log import LoggedEvent
from controller.events import ReadingReceived, RoomStateChanged, VisitorsCounted
from controller.readings import (
    AirConditionerReading,
    CabinetReading,
    ClimateReading,
    DoorState,
    FireAlarmReading,
    LockReading,
    LockState,
    OccupancyReading,
    Reading,
)
from controller.site import Device, DeviceKind, Site
from controller.state import LiveState
from controller.timeseries.points import Fields, Point, Series, make_fields, time_ns
from rules.bookings import Booking, BookingStatus

PointSink = Callable[[Point], None]

# Which measurement a device's readings are stored in (CONTRACT §6, plus fire).
MEASUREMENTS: Mapping[DeviceKind, str] = {
    DeviceKind.OCCUPANCY: "occupancy",
    DeviceKind.PEOPLE_COUNTER: "people",
    DeviceKind.CLIMATE: "climate",
    DeviceKind.LOCK: "lock",
    DeviceKind.FIRE_ALARM: "fire",
    DeviceKind.AIR_CONDITIONER: "ac",
    DeviceKind.DOCUMENT_CABINET: "cabinet",
}
# Booking kinds of the event log that change whether a room is held by a booking now.
_BOOKING_HELD = {"booking_started"}
_BOOKING_RELEASED = {"booking_ended", "booking_no_show"}
_HOLDING = (BookingStatus.ACTIVE, BookingStatus.CHECKED_IN)

RoomFields = tuple[bool | None, int | None, bool]


class PointRecorder:
    def __init__(self, site: Site, state: LiveState, bus: EventBus, sink: PointSink) -> None:
        self._state = state
        self._bus = bus
        self._sink = sink
        site_id = site.site.id
        self._device_series = {
            device.id: Series.of(
                MEASUREMENTS[device.kind],
                {"site": site_id, "room": _room_tag(device), "device": device.id},
            )
            for device in site.devices
            if device.kind in MEASUREMENTS
        }
        self._room_series = {
            room.id: Series.of("room", {"site": site_id, "room": room.id}) for room in site.rooms
        }
        self._held: dict[str, set[str]] = {room.id: set() for room in site.rooms}
        self._last_room: dict[str, RoomFields] = {}
        self._unsubscribe: list[Unsubscribe] = []

    def start(self, running: Iterable[Booking], now: datetime) -> None:
        """Listen, and record every room's state as it is now (bookings already running)."""
        for booking in running:
            if booking.status in _HOLDING and booking.room in self._held:
                self._held[booking.room].add(booking.id)
        self._unsubscribe = [
            self._bus.subscribe(ReadingReceived, self._on_reading),
            self._bus.subscribe(RoomStateChanged, self._on_room),
            self._bus.subscribe(VisitorsCounted, self._on_visitors),
        ]
        for room_id in self._room_series:
            self._record_room(room_id, now)

    def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    def on_logged_event(self, event: LoggedEvent) -> None:
        """Follow bookings through the event log: a room is booked while one runs."""
        if event.booking_id is None or event.room not in self._held:
            return
        if event.kind in _BOOKING_HELD:
            self._held[event.room].add(event.booking_id)
        elif event.kind in _BOOKING_RELEASED:
            self._held[event.room].discard(event.booking_id)
        else:
            return
        self._record_room(event.room, event.time)

    # -- events ----------------------------------------------------------------

    def _on_reading(self, event: ReadingReceived) -> None:
        if event.retained:
            return
        series = self._device_series.get(event.device_id)
        if series is None or series.measurement == "people":
            return  # counters are recorded as increments, by _on_visitors
        fields = reading_fields(event.reading)
        if fields:
            self._sink(Point(series, fields, time_ns(event.time)))

    def _on_visitors(self, event: VisitorsCounted) -> None:
        series = self._device_series.get(event.device_id)
        if series is not None:
            fields: Fields = (
                ("entries", event.entries),
                ("exits", event.exits),
                ("inside", event.inside),
            )
            self._sink(Point(series, fields, time_ns(event.time)))

    def _on_room(self, event: RoomStateChanged) -> None:
        if event.room_id in self._room_series:
            self._record_room(event.room_id, event.time)

    def _record_room(self, room_id: str, moment: datetime) -> None:
        room = self._state.room(room_id)
        current: RoomFields = (room.occupied, room.count, bool(self._held[room_id]))
        if self._last_room.get(room_id) == current:
            return
        self._last_room[room_id] = current
        occupied, count, booked = current
        fields: Fields = (("booked", booked),)
        if count is not None:
            fields = (("count", count), *fields)
        if occupied is not None:
            fields = (("occupied", occupied), *fields)
        self._sink(Point(self._room_series[room_id], fields, time_ns(moment)))


def reading_fields(reading: Reading) -> Fields:
    """A device reading's fields in physical units; unknown values are left out."""
    if isinstance(reading, OccupancyReading):
        if reading.count is None:
            return (("occupied", reading.occupied),)
        return (("occupied", reading.occupied), ("count", reading.count))
    if isinstance(reading, ClimateReading):
        if reading.humidity is None:
            return make_fields({"temperature": reading.temperature})
        if reading.temperature is None:
            return (("humidity", reading.humidity),)
        return (("temperature", reading.temperature), ("humidity", reading.humidity))
    if isinstance(reading, LockReading):
        door = None if reading.door is None else reading.door is DoorState.OPEN
        return make_fields({"locked": reading.state is LockState.LOCKED, "door_open": door})
    if isinstance(reading, AirConditionerReading):
        return make_fields(
            {
                "power": reading.power,
                "mode": reading.mode.value if reading.mode is not None else None,
                "setpoint": reading.setpoint,
                "room_temperature": reading.room_temperature,
                "fault": reading.fault,
            }
        )
    if isinstance(reading, CabinetReading):
        return (
            ("occupied_compartments", sum(reading.items_present)),
            ("open_doors", sum(reading.doors_open)),
        )
    if isinstance(reading, FireAlarmReading):
        return (("alarm", reading.alarm),)
    return ()


def _room_tag(device: Device) -> str | None:
    """The contract's ``people`` and ``cabinet`` series have no room tag: a counter
    counts the building, a cabinet serves it."""
    if device.kind in (DeviceKind.PEOPLE_COUNTER, DeviceKind.DOCUMENT_CABINET):
        return None
    return device.room
