"""The document cabinet: staff deposits, kiosk pickups by code, and its alarms."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any

from controller.alarms import AlarmBook
from controller.bus import EventBus
from controller.clock import Clock
from controller.device_writes import DeviceWriter
from controller.event_log import EventLog
from controller.site import Site
from controller.state import LiveState


class CabinetService:
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
        self._db = db
        self._events = events
        self._alarms = alarms
        self._writer = writer
        self._logger = logger or logging.getLogger("controller.cabinet")

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    async def run(self) -> None:
        await asyncio.Event().wait()

    def status(self) -> dict[str, Any]:
        return {}
