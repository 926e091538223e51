"""Bad input, counted and reported without flooding anyone.

Every rejected message is counted per device and reason (visible in
``/api/health``). The log and the ``bad_payload`` diagnostic on the events
topic get the first occurrence of each (device, reason) and then at most one
line per interval with how many were suppressed, so a sensor spewing garbage
10 times a second cannot bury the one line that matters.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from controller.bus import EventBus, Unsubscribe
from controller.events import BadPayload

# Unknown device ids come from outside; keep at most this many apart and pool the rest.
MAX_UNKNOWN_DEVICES = 256
OTHER_UNKNOWN = "(other unknown devices)"

Report = Callable[[dict[str, Any]], None]


class BadPayloadLog:
    def __init__(
        self,
        bus: EventBus,
        known_devices: frozenset[str],
        *,
        report: Report | None = None,
        interval: float = 60.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self._bus = bus
        self._known = known_devices
        self._report = report
        self._interval = interval
        self._logger = logger or logging.getLogger("controller.ingest")
        self._counts: defaultdict[str, defaultdict[str, int]] = defaultdict(
            lambda: defaultdict(int)
        )
        self._unknown_ids: set[str] = set()
        self._last_reported: dict[tuple[str, str], datetime] = {}
        self._suppressed: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._unsubscribe: Unsubscribe | None = None

    def start(self) -> None:
        self._unsubscribe = self._bus.subscribe(BadPayload, self.on_bad_payload)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    @property
    def total(self) -> int:
        return sum(sum(reasons.values()) for reasons in self._counts.values())

    def counts(self) -> dict[str, dict[str, int]]:
        """Device id -> reason -> messages rejected since start."""
        return {device: dict(reasons) for device, reasons in self._counts.items()}

    def on_bad_payload(self, event: BadPayload) -> None:
        device = self._bucket(event.device_id)
        self._counts[device][event.reason] += 1
        key = (device, event.reason)
        last = self._last_reported.get(key)
        if last is not None and (event.time - last).total_seconds() < self._interval:
            self._suppressed[key] += 1
            return
        suppressed = self._suppressed.pop(key, 0)
        self._last_reported[key] = event.time
        self._logger.warning(
            "rejected a message from %s: %s (%s)%s",
            event.device_id,
            event.reason,
            event.detail,
            f"; {suppressed} more like it not logged" if suppressed else "",
            extra={"device": event.device_id, "reason": event.reason, "topic": event.topic},
        )
        if self._report is not None:
            self._report(
                {
                    "kind": "bad_payload",
                    "time": event.time.isoformat(),
                    "device": event.device_id,
                    "reason": event.reason,
                    "message": event.detail,
                    "topic": event.topic,
                    "suppressed": suppressed,
                }
            )

    def _bucket(self, device_id: str) -> str:
        if device_id in self._known or device_id in self._unknown_ids:
            return device_id
        if len(self._unknown_ids) < MAX_UNKNOWN_DEVICES:
            self._unknown_ids.add(device_id)
            return device_id
        return OTHER_UNKNOWN
