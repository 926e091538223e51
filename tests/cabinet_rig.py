"""The cabinet service wired as the controller wires it, on a virtual clock, with a model cabinet.

Everything is real (SQLite, the event log, the alarm book, live state, the
bus, the service and its deadline loop) except the Modbus cabinet:
:class:`ModelCabinet` takes the unlock pulses as the poller would (a pulse
opens the door and the fresh poll after the write reports it) and the test
decides when each door closes and what is inside then. Tests against the
real poller and the pymodbus cabinet simulator are in ``test_cabinet_live.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from controller.alarms import AlarmBook
from controller.bus import EventBus
from controller.cabinet import CabinetService, DepositReceipt, DepositRequest
from controller.clock import VirtualClock
from controller.database import open_database
from controller.event_log import EventLog
from controller.events import AvailabilityChanged, AvailabilitySource, ReadingReceived
from controller.modbus_poller import PointWrite, WriteFailed
from controller.pickup_codes import CodeHasher
from controller.readings import CabinetReading
from controller.site import Site
from controller.state import LiveState
from tests.conftest import wait_until

CABINET = "cabinet-1"
STAFF = "token:staff001"
# Tests make hundreds of codes: the scrypt cost of production is tested in test_pickup_codes.
CHEAP_HASHER = CodeHasher(n=16, r=1, p=1)


@dataclass
class ModelCabinet:
    """A 24-compartment cabinet the test drives; implements ``DeviceWriter``.

    A pulse on compartment *i* opens door *i* (unless :meth:`jam` said the
    next one sticks) and, like the poller's fresh poll after a confirmed
    write, reports the new state at once. Doors close only when the test says
    so, with what it says is inside.
    """

    bus: EventBus
    clock: VirtualClock
    device_id: str = CABINET
    count: int = 24
    doors: list[bool] = field(default_factory=list)
    items: list[bool] = field(default_factory=list)
    pulses: list[int] = field(default_factory=list)
    fail_writes: bool = False
    jammed: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.doors = [False] * self.count
        self.items = [False] * self.count

    async def write(self, device_id: str, writes: Sequence[PointWrite]) -> None:
        if device_id != self.device_id:
            raise ValueError(f"no Modbus device {device_id!r}")
        if self.fail_writes:
            raise WriteFailed(f"{device_id}: unlock not confirmed (model cabinet told to fail)")
        for write in writes:
            if write.point != "unlock" or write.value is not True or write.index is None:
                raise ValueError(f"the model cabinet only takes unlock pulses, not {write}")
            self.pulses.append(write.index)
            if write.index in self.jammed:
                self.jammed.discard(write.index)
            else:
                self.doors[write.index] = True
        self.report()

    def report(self) -> None:
        """One poll: the cabinet's state now, on the bus as the poller publishes it."""
        reading = CabinetReading(tuple(self.doors), tuple(self.items))
        self.bus.publish(ReadingReceived(self.device_id, reading, self.clock.now()))

    def close(self, index: int, *, item: bool) -> None:
        """Door ``index`` swings shut with (``item=True``) or without a document inside."""
        self.doors[index] = False
        self.items[index] = item
        self.report()

    def force_open(self, index: int) -> None:
        """Door ``index`` opens with no pulse (a master key, a crowbar)."""
        self.doors[index] = True
        self.report()

    def jam(self, index: int) -> None:
        """The next pulse on ``index`` is confirmed but the door does not open."""
        self.jammed.add(index)

    def offline(self) -> None:
        self.bus.publish(
            AvailabilityChanged(self.device_id, False, AvailabilitySource.POLL, self.clock.now())
        )


@dataclass(frozen=True)
class Parts:
    """What the cabinet service shares with the rest of the controller."""

    bus: EventBus
    state: LiveState
    events: EventLog
    alarms: AlarmBook

    @classmethod
    def fresh(cls, site: Site, clock: VirtualClock, data_dir: Path | None) -> Parts:
        bus = EventBus()
        events = EventLog(open_database(data_dir), clock)
        return cls(bus, LiveState(site, bus), events, AlarmBook(events.db, events, clock))


class CabinetRig:
    """The service and a model cabinet; ``shared`` parts (another rig's bus, state
    and database) or None to make and own a fresh set."""

    def __init__(
        self,
        site: Site,
        clock: VirtualClock,
        data_dir: Path | None = None,
        *,
        shared: Parts | None = None,
    ) -> None:
        self.site = site
        self.clock = clock
        self._owns_parts = shared is None
        parts = shared or Parts.fresh(site, clock, data_dir)
        self.bus, self.state, self.events, self.alarms = (
            parts.bus,
            parts.state,
            parts.events,
            parts.alarms,
        )
        self.db = self.events.db
        self.task: asyncio.Task[None] | None = None
        self.cabinet = ModelCabinet(self.bus, clock)
        self.service = CabinetService(
            site,
            self.state,
            self.bus,
            clock,
            db=self.db,
            events=self.events,
            alarms=self.alarms,
            writer=self.cabinet,
            hasher=CHEAP_HASHER,
        )

    def start(self, *, report: bool = True) -> None:
        """Start as the controller does; ``report`` gives the service its first poll."""
        if self._owns_parts:
            self.state.start()
        self.service.start()
        self.task = asyncio.create_task(self.service.run(), name="cabinet-rig")
        if report:
            self.cabinet.report()

    async def stop(self) -> None:
        self.service.stop()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        if self._owns_parts:
            self.state.stop()
            self.db.close()

    # -- driving the clock --------------------------------------------------------

    async def walk(self, to: datetime, step: float = 60.0) -> None:
        """Advance to ``to`` in steps, so the deadline loop wakes at each of its moments."""
        while self.clock.now() < to:
            seconds = min(step, (to - self.clock.now()).total_seconds())
            await self.clock.advance(seconds)

    async def settle(self) -> None:
        await self.clock.advance(0)

    # -- what staff and residents do -------------------------------------------------

    async def deposit(
        self,
        reference: str,
        recipient: str = "Ms. Li",
        hold_hours: int = 24,
        *,
        compartment: int | None = None,
        seconds: float = 20.0,
        item: bool = True,
    ) -> DepositReceipt:
        """Staff deposit a document: the door opens, ``seconds`` later it closes."""
        pulses = len(self.cabinet.pulses)
        task = asyncio.create_task(
            self.service.deposit(
                CABINET,
                DepositRequest(recipient, reference, hold_hours, compartment),
                STAFF,
            )
        )
        await wait_until(
            lambda: len(self.cabinet.pulses) > pulses or task.done(), message="the deposit pulse"
        )
        if task.done():
            return task.result()  # refused before any pulse: raises
        index = self.cabinet.pulses[-1]
        await self.clock.advance(seconds)
        self.cabinet.close(index, item=item)
        return await task

    async def pickup(self, code: str, kiosk: str) -> dict[str, Any]:
        return await self.service.pickup(CABINET, code, kiosk)

    # -- what the log says -------------------------------------------------------------

    def event_kinds(self) -> list[str]:
        return [event.kind for event in self.events.query(limit=100_000)]

    def log_text(self) -> str:
        """Every event as JSON, for searching it for what must never be there."""
        return "\n".join(json.dumps(event.to_json()) for event in self.events.query(limit=100_000))

    def alarm_story(self) -> list[tuple[str, str, str, datetime]]:
        """(kind, source, state, time) of every alarm event of the cabinet, in order."""
        story = []
        for event in self.events.query(limit=100_000):
            if event.alarm_id is None or event.device != CABINET or event.state is None:
                continue
            alarm = self.alarms.get(event.alarm_id)
            assert alarm is not None
            story.append((event.kind, alarm.source, event.state, event.time))
        return story
