"""Visitors: entrance counters' cumulative totals become the day's exact counts."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any

from controller.bus import EventBus
from controller.clock import Clock
from controller.event_log import EventLog
from controller.site import Site


class VisitorCounter:
    def __init__(
        self,
        site: Site,
        bus: EventBus,
        clock: Clock,
        *,
        db: sqlite3.Connection,
        events: EventLog,
        logger: logging.Logger | None = None,
    ) -> None:
        self._site = site
        self._bus = bus
        self._clock = clock
        self._db = db
        self._events = events
        self._logger = logger or logging.getLogger("controller.visitors")

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    async def run(self) -> None:
        await asyncio.Event().wait()

    def status(self) -> dict[str, Any]:
        return {}
