"""Rooms over their capacity: the over_capacity alarm, published and sent as a webhook.

A room with a capacity and a known head count (an mmWave or camera sensor
that counts) raises ``over_capacity`` when more people are in it than its
capacity allows, and clears it once the count is ``capacity_hysteresis``
below the capacity (default 1: back within it), so a count wavering at the
limit does not raise and clear the alarm again and again. While it is
active, a new peak updates the alarm (its details show the peak) without a
new event or webhook; the booking system gets one ``room.over_capacity``
webhook per raise.

An unknown count (the sensor is offline, or counts nobody) neither raises
nor clears: not knowing is not "back within capacity". Nothing here is held
in timers or memory that a restart would lose: the active alarms are in the
alarm book, and every room is evaluated again at start and on every change.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from controller.alarms import AlarmBook, AlarmState
from controller.bus import EventBus, Unsubscribe
from controller.clock import Clock
from controller.event_log import Severity
from controller.events import RoomStateChanged
from controller.site import Room, Site
from controller.state import LiveState
from controller.webhooks import WebhookQueue

ALARM_KIND = "over_capacity"
WEBHOOK_TYPE = "room.over_capacity"


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
        self._hysteresis = site.rules.capacity_hysteresis
        self._rooms: dict[str, Room] = {
            room.id: room for room in site.rooms if room.capacity is not None
        }
        # The peak count of each room whose alarm is active; filled from the
        # alarm book at start, so a restart neither repeats a webhook nor forgets a peak.
        self._peaks: dict[str, int] = {}
        self._unsubscribe: Unsubscribe | None = None

    def start(self) -> None:
        """Pick up the alarms still active, then evaluate every room once."""
        self._peaks = {}
        for alarm in self._alarms.query(state=AlarmState.ACTIVE, kind=ALARM_KIND, limit=10_000):
            if alarm.source in self._rooms:
                peak = alarm.details.get("peak", alarm.details.get("count", 0))
                self._peaks[alarm.source] = int(peak) if isinstance(peak, int) else 0
        if self._unsubscribe is None:
            self._unsubscribe = self._bus.subscribe(RoomStateChanged, self._on_room)
        now = self._clock.now()
        for room_id in self._rooms:
            self._evaluate(room_id, now)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def status(self) -> dict[str, Any]:
        """For ``/api/health``: the rooms over capacity now."""
        return {
            "over_capacity": [
                {
                    "room": room_id,
                    "count": self._state.room(room_id).count,
                    "capacity": self._rooms[room_id].capacity,
                    "peak": peak,
                }
                for room_id, peak in sorted(self._peaks.items())
            ]
        }

    def _on_room(self, event: RoomStateChanged) -> None:
        if event.room_id in self._rooms:
            self._evaluate(event.room_id, event.time)

    def _evaluate(self, room_id: str, now: datetime) -> None:
        room = self._rooms[room_id]
        capacity = room.capacity
        count = self._state.room(room_id).count
        if capacity is None or count is None:
            return  # unknown: neither raise nor clear
        label = room.name_en or room.name
        peak = self._peaks.get(room_id)
        if count > capacity:
            if peak is not None and count <= peak:
                return  # still over, no new peak: the alarm already says so
            details = {"count": count, "capacity": capacity, "peak": count}
            first = peak is None
            message = (
                f"{label} over capacity: {count} people, capacity {capacity}"
                if first
                else f"{label} over capacity: up to {count} people, capacity {capacity}"
            )
            # One commit: the alarm and (on a new raise) its webhook, or neither.
            with self._alarms.transaction():
                self._alarms.raise_alarm(
                    ALARM_KIND,
                    room_id,
                    message,
                    severity=Severity.WARNING,
                    room=room_id,
                    details=details,
                )
                if first:
                    self._webhooks.enqueue(
                        WEBHOOK_TYPE,
                        {
                            "room": room_id,
                            "count": count,
                            "capacity": capacity,
                            "time": now.isoformat(),
                        },
                        time=now,
                    )
            if first:
                self._logger.warning("%s", message)
            self._peaks[room_id] = count
        elif peak is not None and count <= capacity - self._hysteresis:
            self._alarms.clear(
                ALARM_KIND,
                room_id,
                f"{label} back within capacity: {count} people, capacity {capacity} (peak {peak})",
            )
            del self._peaks[room_id]
            self._logger.info("%s back within capacity (%d of %d)", label, count, capacity)
