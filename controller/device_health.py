"""Device health: every device online or offline, with an alarm while it is offline.

:class:`~controller.state.LiveState` already decides when a device is offline
(its LWT, silence for ``offline_after_missed`` reporting intervals, or failed
Modbus polls) and marks its last reading stale. This turns each change into
the contract's alarm: ``device_offline`` when it goes, cleared by a
``device_online`` event when it comes back. The fire panel has its own,
sharper alarm (``fire_panel_offline``, raised by the access rules), so it is
not reported twice.

A device that has never been heard from since start is *unknown*, not
offline, until the silence watch has given it its full reporting allowance.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from controller.alarms import AlarmBook
from controller.bus import EventBus, Unsubscribe
from controller.event_log import Severity
from controller.events import AvailabilitySource, DeviceStateChanged
from controller.site import DeviceKind
from controller.state import LiveState

_REASONS = {
    AvailabilitySource.LWT: "its availability topic says offline",
    AvailabilitySource.SILENCE: "it has been silent for too many reporting intervals",
    AvailabilitySource.POLL: "its Modbus polls fail",
}


class DeviceHealth:
    def __init__(self, state: LiveState, bus: EventBus, alarms: AlarmBook) -> None:
        self._state = state
        self._bus = bus
        self._alarms = alarms
        self._unsubscribe: Unsubscribe | None = None

    def start(self) -> None:
        self._unsubscribe = self._bus.subscribe(DeviceStateChanged, self.on_device)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def on_device(self, event: DeviceStateChanged) -> None:
        device_state = self._state.device(event.device_id)
        device = device_state.device
        if device.kind is DeviceKind.FIRE_ALARM:
            return
        if device_state.online is False:
            source = device_state.availability_source
            reason = _REASONS.get(source, "it is offline") if source else "it is offline"
            self._alarms.raise_alarm(
                "device_offline",
                device.id,
                f"{device.id} is offline: {reason}",
                severity=Severity.WARNING,
                room=device.room,
                device=device.id,
                details={"source": source.value if source else None},
            )
        elif device_state.online is True:
            self._alarms.clear(
                "device_offline",
                device.id,
                f"{device.id} is back online",
                event_kind="device_online",
            )

    def summary(self) -> dict[str, Any]:
        """For ``/api/health``: devices by health and by kind, and which are offline."""
        by_health: Counter[str] = Counter()
        offline: list[dict[str, Any]] = []
        unknown: list[str] = []
        for device_state in self._state.devices.values():
            if device_state.online is True:
                by_health["online"] += 1
            elif device_state.online is False:
                by_health["offline"] += 1
                source = device_state.availability_source
                offline.append(
                    {
                        "id": device_state.device.id,
                        "kind": device_state.device.kind.value,
                        "room": device_state.device.room,
                        "since": _iso(device_state.offline_since),
                        "reason": source.value if source else None,
                        "last_seen": _iso(device_state.last_seen),
                    }
                )
            else:
                by_health["unknown"] += 1
                unknown.append(device_state.device.id)
        offline.sort(key=lambda entry: str(entry["id"]))
        return {
            "status": "degraded" if offline else "ok",
            "total": len(self._state.devices),
            "online": by_health["online"],
            "offline": [entry["id"] for entry in offline],
            "offline_details": offline,
            "not_heard_yet": sorted(unknown),
        }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
