"""The access rules wired as the controller wires them, on a virtual clock, without a broker.

Everything is real (SQLite, the event log, alarms, the webhook queue, the
lock commander, the rules) except the MQTT connection: commands are recorded
instead of published, and device reports are put on the bus as the ingest
would. Tests through a real broker and the lock simulators are in
``test_access_live.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from controller.access_parts import build_access
from controller.alarms import AlarmBook
from controller.bookings import BookingRequest
from controller.bus import EventBus
from controller.cabinet import CabinetService
from controller.climate import ClimateController
from controller.clock import VirtualClock
from controller.database import open_database
from controller.event_log import EventLog
from controller.events import AvailabilityChanged, AvailabilitySource, ReadingReceived
from controller.ingest import command_topic
from controller.modbus_poller import PointWrite, WriteFailed
from controller.readings import FireAlarmReading, LockReading, LockState, OccupancyReading
from controller.reports import Reports
from controller.site import DeviceKind, Site
from controller.state import LiveState
from controller.timeseries.embedded import HistoryReader
from controller.visitors import VisitorCounter
from controller.webhooks import WebhookQueue
from rules.bookings import Booking
from web.services import Services

PREFIX = "center/changbai"


@dataclass
class AccessRig:
    site: Site
    clock: VirtualClock
    data_dir: Path | None
    webhook_url: str | None = None
    connected: bool = True
    timeseries: Path | None = None  # the reports' time-series file; None: no history
    sent: list[tuple[str, str]] = field(default_factory=list)  # (device, LOCK|UNLOCK)

    def __post_init__(self) -> None:
        site, clock = self.site, self.clock
        self.bus = EventBus()
        self.state = LiveState(site, self.bus)
        self.db = open_database(self.data_dir)
        self.events = EventLog(self.db, clock)
        self.alarms = AlarmBook(self.db, self.events, clock)
        self.webhooks = WebhookQueue(
            self.db,
            clock,
            url=self.webhook_url,
            secret="s3cret" if self.webhook_url else None,
            site_id=site.site.id,
        )
        parts = build_access(
            site,
            PREFIX,
            self.state,
            self.bus,
            clock,
            db=self.db,
            events=self.events,
            alarms=self.alarms,
            webhooks=self.webhooks,
            settle=0.0,
        )
        self.access_store = parts.access_store
        self.booking_store = parts.booking_store
        self.locks = parts.locks
        self.access = parts.access
        self.bookings = parts.bookings
        self._topics = {
            command_topic(device, PREFIX): device.id
            for device in site.devices
            if device.kind is DeviceKind.LOCK
        }

    def start(self) -> None:
        self.state.start()
        self.locks.start()
        self.access.start()
        self.access.reconcile()
        if self.connected:
            self.locks.connected(self.send)

    def stop(self) -> None:
        self.access.stop()
        self.locks.stop()
        self.state.stop()
        self.db.close()

    def services(self) -> Services:
        writer = _NoModbus()
        common = (self.site, self.state, self.bus, self.clock)
        return Services(
            bookings=self.bookings,
            access=self.access,
            events=self.events,
            alarms=self.alarms,
            clock=self.clock,
            visitors=VisitorCounter(
                self.site, self.bus, self.clock, db=self.db, events=self.events
            ),
            climate=ClimateController(
                *common, db=self.db, events=self.events, alarms=self.alarms, writer=writer
            ),
            cabinets=CabinetService(
                *common, db=self.db, events=self.events, alarms=self.alarms, writer=writer
            ),
            reports=Reports(
                self.site, self.clock, self.bookings, HistoryReader(self.timeseries or _NO_FILE)
            ),
        )

    # -- the MQTT side ------------------------------------------------------

    def send(self, topic: str, payload: bytes) -> bool:
        command = orjson.loads(payload)["state"]
        self.sent.append((self._topics[topic], command))
        return True

    def commands(self, device_id: str) -> list[str]:
        return [command for device, command in self.sent if device == device_id]

    def report(self, device_id: str, reading: Any, *, retained: bool = False) -> None:
        self.bus.publish(ReadingReceived(device_id, reading, self.clock.now(), retained))

    def lock_reports(self, device_id: str, state: LockState, door: str = "closed") -> None:
        from controller.readings import DoorState

        self.report(device_id, LockReading(state, DoorState(door)))

    def obey_locks(self) -> None:
        """Every lock reports the state its last command asked for."""
        latest: dict[str, str] = {}
        for device, command in self.sent:
            latest[device] = command
        for device, command in latest.items():
            wanted = LockState.LOCKED if command == "LOCK" else LockState.UNLOCKED
            reading = self.state.device(device).reading
            if not isinstance(reading, LockReading) or reading.state is not wanted:
                self.lock_reports(device, wanted)

    def occupancy(self, room: str, occupied: bool, count: int | None = None) -> None:
        self.report(f"occ-{room}", OccupancyReading(occupied, count))

    def fire(self, alarm: bool) -> None:
        self.report("fire-panel", FireAlarmReading(alarm))

    def availability(self, device_id: str, online: bool) -> None:
        self.bus.publish(
            AvailabilityChanged(device_id, online, AvailabilitySource.LWT, self.clock.now())
        )

    # -- bookings -------------------------------------------------------------

    def book(
        self, booking_id: str, room: str, start: datetime, end: datetime, **extra: Any
    ) -> Booking:
        booking, _ = self.bookings.put(
            booking_id, BookingRequest(room=room, start=start, end=end, **extra), self.clock.now()
        )
        return booking

    def status(self, booking_id: str) -> str:
        booking = self.booking_store.get(booking_id)
        assert booking is not None
        return booking.status.value

    def lock_state(self, device_id: str) -> LockState | None:
        reading = self.state.device(device_id).reading
        return reading.state if isinstance(reading, LockReading) else None

    def webhook_types(self) -> list[str]:
        rows = self.db.execute("SELECT body FROM webhook_deliveries ORDER BY seq").fetchall()
        return [orjson.loads(row[0])["type"] for row in rows]


_NO_FILE = Path("/nonexistent/timeseries.sqlite3")  # a reader of it answers nothing


class _NoModbus:
    """The access rig has no Modbus devices: every write fails as unconfirmed."""

    async def write(self, device_id: str, writes: Sequence[PointWrite]) -> None:
        raise WriteFailed(f"{device_id}: no Modbus devices in the access rig")
