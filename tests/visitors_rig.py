"""The visitor counter and the capacity guard wired as the controller wires them, on a
virtual clock, without a broker.

Everything is real (SQLite in a data directory, the event log, the alarm book,
the webhook queue, the live state) except MQTT: readings are put on the bus as
the ingest would. ``restart()`` closes the database and builds new parts on
the same data directory, as a controller restart does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson

from controller.alarms import AlarmBook
from controller.bus import EventBus
from controller.capacity import CapacityGuard
from controller.clock import VirtualClock
from controller.database import open_database
from controller.event_log import EventLog, LoggedEvent
from controller.events import AvailabilityChanged, AvailabilitySource, ReadingReceived
from controller.readings import CounterReading, OccupancyReading
from controller.site import Device, DeviceKind, Site
from controller.state import LiveState
from controller.visitors import VisitorCounter, VisitorDay
from controller.webhooks import WebhookQueue

WEBHOOK_SECRET = "s3cret-for-the-booking-system"


def with_side_counter(site: Site, interval: timedelta = timedelta(seconds=10)) -> Site:
    """The site with a second entrance counter (a side door), for counts that add up."""
    side = Device(
        id="counter-side",
        kind=DeviceKind.PEOPLE_COUNTER,
        room="entrance",
        name="Side door people counter",
        interval=interval,
    )
    return site.model_copy(update={"devices": [*site.devices, side]})


@dataclass
class VisitorRig:
    site: Site
    clock: VirtualClock
    data_dir: Path | None
    webhook_url: str | None = None
    running: bool = False
    loop: asyncio.Task[None] | None = None
    logged: list[LoggedEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._build()

    def _build(self) -> None:
        self.bus = EventBus()
        self.state = LiveState(self.site, self.bus)
        self.db = open_database(self.data_dir)
        self.events = EventLog(self.db, self.clock)
        self.events.listen(self.logged.append)
        self.alarms = AlarmBook(self.db, self.events, self.clock)
        self.webhooks = WebhookQueue(
            self.db,
            self.clock,
            url=self.webhook_url,
            secret=WEBHOOK_SECRET if self.webhook_url else None,
            site_id=self.site.site.id,
        )
        self.visitors = VisitorCounter(
            self.site, self.bus, self.clock, db=self.db, events=self.events
        )
        self.capacity = CapacityGuard(
            self.site,
            self.state,
            self.bus,
            self.clock,
            alarms=self.alarms,
            webhooks=self.webhooks,
        )

    async def start(self) -> None:
        """Start as the controller does: live state, then the parts, then their loop."""
        self.state.start()
        self.visitors.start()
        self.capacity.start()
        self.loop = asyncio.create_task(self.visitors.run(), name="visitors")
        self.running = True
        await asyncio.sleep(0)

    async def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        if self.loop is not None:
            self.loop.cancel()
            (outcome,) = await asyncio.gather(self.loop, return_exceptions=True)
            assert isinstance(outcome, asyncio.CancelledError), outcome
            self.loop = None
        self.capacity.stop()
        self.visitors.stop()
        self.state.stop()
        self.db.close()

    async def restart(self) -> None:
        """Stop, and start new parts on the same data directory."""
        assert self.data_dir is not None, "a restart needs a data directory"
        await self.stop()
        self._build()
        await self.start()

    # -- what the devices say ---------------------------------------------------

    def count(self, entries: int, exits: int, device: str = "counter-entrance") -> None:
        self.report(device, CounterReading(entries, exits))

    def report(self, device: str, reading: Any, *, retained: bool = False) -> None:
        self.bus.publish(ReadingReceived(device, reading, self.clock.now(), retained))

    def occupancy(self, room: str, count: int | None, occupied: bool | None = None) -> None:
        self.report(
            f"occ-{room}", OccupancyReading(bool(count) if occupied is None else occupied, count)
        )

    def availability(self, device: str, online: bool) -> None:
        self.bus.publish(
            AvailabilityChanged(device, online, AvailabilitySource.LWT, self.clock.now())
        )

    # -- what came of it -------------------------------------------------------------

    def day(self, day: date | None = None) -> VisitorDay:
        return self.visitors.day(day or self.visitors.today())

    def logged_kinds(self, kind: str) -> list[LoggedEvent]:
        return [event for event in self.logged if event.kind == kind]

    def webhook_bodies(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT body FROM webhook_deliveries ORDER BY seq").fetchall()
        return [orjson.loads(row[0]) for row in rows]
