"""Retained room state on MQTT: ``{prefix}/room/{room}/state``.

Changes are coalesced in three ways, so that a room whose count changes forty
times a second costs the broker and the controller a few messages, while the
first change after a quiet spell still goes out at once:

- a room that changes many times while the loop works through one batch of
  messages is published once, with its latest state, when the batch is done;
- a room may publish a burst of ``burst`` states at once, then one per
  ``min_interval`` (a token bucket): sporadic changes always go out at once,
  and a room changing many times a second is sent, with its latest state, a
  few times a second;
- a room's next state waits until the broker has acknowledged its previous
  one, so the QoS 1 messages held for the broker are at most one per room,
  however slow the broker (without this, a busy center once held 200 MB of
  unacknowledged room states).

After every (re)connect the whole set is published again, because a restarted
broker without persistence has forgotten every retained message and
subscribers would otherwise see nothing until each room changes.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from controller.bus import EventBus, Unsubscribe
from controller.events import RoomStateChanged
from controller.state import LiveState

# How soon to look again at a room whose previous state is not acknowledged yet.
_UNACKNOWLEDGED_RETRY = 0.05


class Delivery(Protocol):
    def is_published(self) -> bool: ...


Publish = Callable[[str, bytes], Delivery | None]


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
        min_interval: float = 0.25,
        burst: int = 4,
        logger: logging.Logger | None = None,
    ) -> None:
        self._state = state
        self._bus = bus
        self._prefix = prefix
        self._room_ids = room_ids
        self._logger = logger or logging.getLogger("controller.rooms")
        self._min_interval = min_interval
        self._burst = float(burst)
        self._dirty: set[str] = set()
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._buckets: dict[str, tuple[float, float]] = {}  # room -> (tokens, when counted)
        self._unacknowledged: dict[str, Delivery] = {}
        self._publish: Publish | None = None
        self._unsubscribe: Unsubscribe | None = None
        self.published = 0

    def start(self) -> None:
        self._unsubscribe = self._bus.subscribe(RoomStateChanged, self.on_room_changed)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._cancel_timer()

    def attach(self, publish: Publish) -> None:
        """A connection is up: publish every room now, and changes from here on."""
        self._publish = publish
        self._buckets.clear()
        self._unacknowledged.clear()  # the old connection's messages are gone with it
        self._dirty.update(self._room_ids)
        self.flush()

    def detach(self) -> None:
        """The connection is gone: keep collecting changes for the next one."""
        self._publish = None
        self._cancel_timer()

    def topic(self, room_id: str) -> str:
        return f"{self._prefix}/room/{room_id}/state"

    def on_room_changed(self, event: RoomStateChanged) -> None:
        self._dirty.add(event.room_id)
        if not self._flush_scheduled and self._publish is not None:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Publish every changed room that is due; come back for the others when they are."""
        self._flush_scheduled = False
        publish = self._publish
        if publish is None or not self._dirty:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        next_due = math.inf
        failed = False
        for room_id in list(self._dirty):
            previous = self._unacknowledged.get(room_id)
            if previous is not None and not previous.is_published():
                next_due = min(next_due, now + _UNACKNOWLEDGED_RETRY)
                continue
            tokens = self._tokens(room_id, now)
            if tokens < 1.0:
                next_due = min(next_due, now + (1.0 - tokens) * self._min_interval)
                continue
            try:
                delivery = publish(
                    self.topic(room_id), orjson.dumps(room_payload(room_id, self._state))
                )
            except Exception:
                if not failed:  # one traceback per flush is enough to see the cause
                    self._logger.exception("cannot publish the state of room %s", room_id)
                failed = True  # stays dirty: retried on the next change or reconnect
                continue
            self._dirty.discard(room_id)
            self._buckets[room_id] = (tokens - 1.0, now)
            if delivery is not None:
                self._unacknowledged[room_id] = delivery
            self.published += 1
        if next_due < math.inf:
            self._schedule(loop, next_due)

    def _tokens(self, room_id: str, now: float) -> float:
        """Publishes the room may make now: the bucket refills one per ``min_interval``."""
        bucket = self._buckets.get(room_id)
        if bucket is None or self._min_interval <= 0:
            return self._burst
        tokens, counted = bucket
        return min(self._burst, tokens + (now - counted) / self._min_interval)

    def _schedule(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
