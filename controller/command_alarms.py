"""Commands a device never confirmed: logged by the driver, announced here.

Until the alarm list of the API exists, every unconfirmed command goes out as
an ``alarm`` event on ``{prefix}/events`` (QoS 1, the same topic as other
events) and the most recent ones are kept for ``/api/health``, so that a
failure to confirm a command is never silent.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from controller.bus import EventBus, Unsubscribe
from controller.events import CommandUnconfirmed

Report = Callable[[dict[str, Any]], None]

KEEP_RECENT = 50


class CommandAlarms:
    def __init__(self, bus: EventBus, report: Report | None = None) -> None:
        self._bus = bus
        self._report = report
        self._recent: deque[dict[str, Any]] = deque(maxlen=KEEP_RECENT)
        self._total = 0
        self._unsubscribe: Unsubscribe | None = None

    def start(self) -> None:
        self._unsubscribe = self._bus.subscribe(CommandUnconfirmed, self.on_unconfirmed)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def on_unconfirmed(self, event: CommandUnconfirmed) -> None:
        self._total += 1
        alarm = {
            "kind": "command_unconfirmed",
            "severity": "alarm",
            "time": event.time.isoformat(),
            "device": event.device_id,
            "command": event.command,
            "attempts": event.attempts,
            "message": event.reason,
        }
        self._recent.append(alarm)
        if self._report is not None:
            self._report(alarm)

    def to_json(self) -> dict[str, Any]:
        return {"total": self._total, "recent": list(self._recent)}
