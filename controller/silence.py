"""Devices that stop talking are offline, whether or not their last will says so.

A sensor whose battery died or whose Wi-Fi dropped does not always get an LWT
out. After ``offline_after_missed`` reporting intervals without a message, the
device is marked offline (and its readings stop counting towards its room).
Devices never heard from since start are judged from the controller's start.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from controller.bus import EventBus
from controller.clock import Clock
from controller.events import AvailabilityChanged, AvailabilitySource
from controller.state import LiveState


class SilenceWatch:
    def __init__(
        self,
        state: LiveState,
        bus: EventBus,
        clock: Clock,
        *,
        missed: int,
        logger: logging.Logger | None = None,
    ) -> None:
        self._state = state
        self._bus = bus
        self._clock = clock
        self._missed = missed
        self._logger = logger or logging.getLogger("controller.devices")
        self._started: datetime | None = None

    def check(self) -> None:
        """Mark every device silent for too long as offline."""
        now = self._clock.now()
        if self._started is None:
            self._started = now
        for device_id, device_state in self._state.devices.items():
            interval = device_state.device.interval
            if interval is None or device_state.online is False:
                continue
            heard = device_state.last_heard or self._started
            if now - heard >= interval * self._missed:
                self._logger.warning(
                    "%s silent since %s: marking offline",
                    device_id,
                    heard.isoformat(),
                    extra={"device": device_id},
                )
                self._bus.publish(
                    AvailabilityChanged(device_id, False, AvailabilitySource.SILENCE, now)
                )

    def tick(self) -> timedelta:
        """How often to check: a tenth of the shortest deadline, between 0.1 s and 1 s."""
        deadlines = [
            state.device.interval * self._missed
            for state in self._state.devices.values()
            if state.device.interval is not None
        ]
        shortest = min(deadlines, default=timedelta(seconds=10))
        return max(timedelta(milliseconds=100), min(shortest / 10, timedelta(seconds=1)))

    async def run(self) -> None:
        period = self.tick().total_seconds()
        while True:
            self.check()
            await self._clock.sleep(period)
