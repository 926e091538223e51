"""Retained room state on MQTT: ``{prefix}/room/{room}/state``.

Changes are coalesced: a room that changes ten times while the loop works
through one batch of messages is published once, with its latest state, when
the batch is done. After every (re)connect the whole set is published again,
because a restarted broker without persistence has forgotten every retained
message and subscribers would otherwise see nothing until each room changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson

from controller.bus import EventBus, Unsubscribe
from controller.events import RoomStateChanged
from controller.state import LiveState

Publish = Callable[[str, bytes], None]


def room_payload(room_id: str, state: LiveState) -> dict[str, Any]:
    updated = state.room_updated(room_id)
    return {
        "room": room_id,
        **state.room(room_id).to_json(),
        "updated": updated.isoformat() if updated else None,
    }


class RoomStatePublisher:
    def __init__(
        self,
        state: LiveState,
        bus: EventBus,
        prefix: str,
        room_ids: list[str],
        *,
        logger: logging.Logger | None = None,
    ) -> None:
        self._state = state
        self._bus = bus
        self._prefix = prefix
        self._room_ids = room_ids
        self._logger = logger or logging.getLogger("controller.rooms")
        self._dirty: set[str] = set()
        self._flush_scheduled = False
        self._publish: Publish | None = None
        self._unsubscribe: Unsubscribe | None = None
        self.published = 0

    def start(self) -> None:
        self._unsubscribe = self._bus.subscribe(RoomStateChanged, self.on_room_changed)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def attach(self, publish: Publish) -> None:
        """A connection is up: publish every room now, and changes from here on."""
        self._publish = publish
        self._dirty.update(self._room_ids)
        self.flush()

    def detach(self) -> None:
        """The connection is gone: keep collecting changes for the next one."""
        self._publish = None

    def topic(self, room_id: str) -> str:
        return f"{self._prefix}/room/{room_id}/state"

    def on_room_changed(self, event: RoomStateChanged) -> None:
        self._dirty.add(event.room_id)
        if not self._flush_scheduled and self._publish is not None:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        publish = self._publish
        if publish is None:
            return
        failed: set[str] = set()
        while self._dirty:
            room_id = self._dirty.pop()
            try:
                publish(self.topic(room_id), orjson.dumps(room_payload(room_id, self._state)))
            except Exception:
                if not failed:  # one traceback per flush is enough to see the cause
                    self._logger.exception("cannot publish the state of room %s", room_id)
                failed.add(room_id)
            else:
                self.published += 1
        self._dirty |= failed  # retried on the next change or reconnect
