"""Rooms over their capacity: the over_capacity alarm, published and sent as a webhook."""

from __future__ import annotations

import logging
from typing import Any

from controller.alarms import AlarmBook
from controller.bus import EventBus
from controller.clock import Clock
from controller.site import Site
from controller.state import LiveState
from controller.webhooks import WebhookQueue


class CapacityGuard:
    def __init__(
        self,
        site: Site,
        state: LiveState,
        bus: EventBus,
        clock: Clock,
        *,
        alarms: AlarmBook,
        webhooks: WebhookQueue,
        logger: logging.Logger | None = None,
    ) -> None:
        self._site = site
        self._state = state
        self._bus = bus
        self._clock = clock
        self._alarms = alarms
        self._webhooks = webhooks
        self._logger = logger or logging.getLogger("controller.capacity")

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {}
