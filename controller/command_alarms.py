"""Commands a device never confirmed become ``command_unconfirmed`` alarms.

The Modbus driver reports a write it could not confirm after every try as a
:class:`~controller.events.CommandUnconfirmed` event; this turns it into an
alarm (one open alarm per device, a repeat updates it), which also goes to the
event log, ``{prefix}/events`` and ``/api/alarms``. Door locks have their own,
``lock_unconfirmed``, raised by the lock commander.
"""

from __future__ import annotations

from controller.alarms import AlarmBook
from controller.bus import EventBus, Unsubscribe
from controller.events import CommandUnconfirmed


class CommandAlarms:
    def __init__(self, bus: EventBus, alarms: AlarmBook) -> None:
        self._bus = bus
        self._alarms = alarms
        self._unsubscribe: Unsubscribe | None = None

    def start(self) -> None:
        self._unsubscribe = self._bus.subscribe(CommandUnconfirmed, self.on_unconfirmed)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def on_unconfirmed(self, event: CommandUnconfirmed) -> None:
        self._alarms.raise_alarm(
            "command_unconfirmed",
            event.device_id,
            f"{event.device_id} did not confirm {event.command} after {event.attempts} tries:"
            f" {event.reason}",
            device=event.device_id,
            details={"command": event.command, "attempts": event.attempts},
        )
