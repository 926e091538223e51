"""``GET /api/stream``: Server-Sent Events of what changes, for the status page.

Every connection starts with a ``snapshot`` (every room, the site, every
device, the alarm counts), then gets ``room``, ``device``, ``site`` and
``event`` messages as things happen, and a ``heartbeat`` (with the site's time)
after 15 s of quiet, so proxies keep the connection and the page can tell a
silent stream from a dead one. A reconnect (the browser's
EventSource does it by itself) starts with a new snapshot, so no change missed
while disconnected stays on screen.

Each viewer has a mailbox that *coalesces*: it remembers which rooms and
devices changed, not each change, and renders their latest state when it
writes. So a room whose count changes forty times a second costs a slow viewer
one message, memory is bounded by the number of rooms and devices, and the
bus handlers (which run on the ingest path) only add an id to a set. Logged
events are kept in order up to ``MAX_EVENTS``; a viewer that falls further
behind gets a fresh snapshot instead. The hub listens to the bus only while
someone watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from controller.bus import EventBus, Unsubscribe
from controller.event_log import EventLog, LoggedEvent
from controller.events import (
    DeviceStateChanged,
    FireAlarmChanged,
    RoomStateChanged,
    VisitorsCounted,
)
from controller.settings import Scope
from web.app_keys import SITE, STATE
from web.auth import AUTH, IDENTITY, requires
from web.errors import ApiError
from web.openapi import operation
from web.rooms import room_json
from web.services import SERVICES

HEARTBEAT = 15.0  # seconds between heartbeats when nothing else is said
MAX_EVENTS = 500  # logged events a viewer may fall behind before it gets a snapshot
RETRY_MS = 2000  # how soon the browser reconnects after losing the stream


class Viewer:
    """What one connection has still to be told."""

    def __init__(self) -> None:
        self.rooms: dict[str, None] = {}  # ordered sets of ids
        self.devices: dict[str, None] = {}
        self.site = False
        self.events: list[LoggedEvent] = []
        self.resync = True  # the first thing every viewer gets is a snapshot
        self.wake = asyncio.Event()
        self.closed = False

    def pending(self) -> bool:
        return bool(self.resync or self.rooms or self.devices or self.site or self.events)


class StreamHub:
    """Fans changes out to every viewer's mailbox; subscribed while anyone watches."""

    def __init__(self, bus: EventBus, events: EventLog) -> None:
        self._bus = bus
        self._events = events
        self._viewers: set[Viewer] = set()
        self._unsubscribe: list[Unsubscribe] = []
        self.closing = False

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def open(self) -> Viewer:
        viewer = Viewer()
        if not self._viewers:
            self._unsubscribe = [
                self._bus.subscribe(RoomStateChanged, self._on_room),
                self._bus.subscribe(DeviceStateChanged, self._on_device),
                self._bus.subscribe(FireAlarmChanged, self._on_site),
                self._bus.subscribe(VisitorsCounted, self._on_site),
                self._events.listen(self._on_logged),
            ]
        self._viewers.add(viewer)
        return viewer

    def close(self, viewer: Viewer) -> None:
        viewer.closed = True
        self._viewers.discard(viewer)
        if not self._viewers:
            for unsubscribe in self._unsubscribe:
                unsubscribe()
            self._unsubscribe = []

    def shut_down(self) -> None:
        """The server is stopping: every stream ends now (browsers reconnect later)."""
        self.closing = True
        for viewer in self._viewers:
            viewer.wake.set()

    # -- bus handlers: only mark what changed ------------------------------------------

    def _on_room(self, event: RoomStateChanged) -> None:
        self._mark(lambda viewer: viewer.rooms.setdefault(event.room_id))

    def _on_device(self, event: DeviceStateChanged) -> None:
        self._mark(lambda viewer: viewer.devices.setdefault(event.device_id))

    def _on_site(self, event: FireAlarmChanged | VisitorsCounted) -> None:
        def site(viewer: Viewer) -> None:
            viewer.site = True

        self._mark(site)

    def _on_logged(self, event: LoggedEvent) -> None:
        alarm = event.alarm_id is not None  # the header's alarm counts change with it

        def log(viewer: Viewer) -> None:
            viewer.site = viewer.site or alarm
            if len(viewer.events) >= MAX_EVENTS:
                viewer.events.clear()
                viewer.resync = True
            else:
                viewer.events.append(event)

        self._mark(log)

    def _mark(self, change: Callable[[Viewer], object]) -> None:
        for viewer in self._viewers:
            change(viewer)
            viewer.wake.set()


STREAM_HUB = web.AppKey("stream_hub", StreamHub)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/stream", get_stream)
    app.on_shutdown.append(_shut_down)


async def _shut_down(app: web.Application) -> None:
    if STREAM_HUB in app:
        app[STREAM_HUB].shut_down()


@requires(Scope.READ)
@operation(
    "Live changes as Server-Sent Events",
    description=(
        "First a `snapshot` (rooms, site, devices, alarms), then `room`, `device`, "
        "`site` and `event` messages as they happen; a `heartbeat` after 15 s of quiet. Each "
        "reconnect starts with a new snapshot. A stream opened with the page's session "
        "ends with a `session_ended` message when the session does."
    ),
    responses={200: "text/event-stream", 503: "no live stream in this server"},
    tags=["live"],
    media_type="text/event-stream",
)
async def get_stream(request: web.Request) -> web.StreamResponse:
    hub = request.app.get(STREAM_HUB)
    if hub is None:
        raise ApiError(503, "unavailable", "this server has no live stream")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # a reverse proxy must not hold the stream back
        }
    )
    await response.prepare(request)
    await response.write(f"retry: {RETRY_MS}\n\n".encode())
    viewer = hub.open()
    ids = itertools.count(1)
    loop = asyncio.get_running_loop()
    checked = loop.time()
    try:
        while not hub.closing:
            if loop.time() - checked >= HEARTBEAT:
                checked = loop.time()
                if not _still_allowed(request):
                    await response.write(_message("session_ended", {}, next(ids)))
                    break
            if viewer.pending():
                for kind, body in _drain(request, viewer):
                    await response.write(_message(kind, body, next(ids)))
                continue
            viewer.wake.clear()
            try:
                async with asyncio.timeout(HEARTBEAT):
                    await viewer.wake.wait()
            except TimeoutError:
                now = request.app[SERVICES].clock.now().isoformat()
                await response.write(_message("heartbeat", {"time": now}, next(ids)))
    finally:
        hub.close(viewer)
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


def _drain(request: web.Request, viewer: Viewer) -> list[tuple[str, Any]]:
    """Everything the viewer has still to be told, rendered now (the latest state)."""
    if viewer.resync:
        viewer.resync = False
        viewer.rooms.clear()
        viewer.devices.clear()
        viewer.site = False
        viewer.events.clear()
        return [("snapshot", _snapshot(request))]
    app = request.app
    site, state, services = app[SITE], app[STATE], app[SERVICES]
    messages: list[tuple[str, Any]] = []
    rooms, viewer.rooms = viewer.rooms, {}
    for room_id in rooms:
        room = site.room_by_id.get(room_id)
        if room is not None:
            messages.append(("room", room_json(room, state, services, with_devices=False)))
    devices, viewer.devices = viewer.devices, {}
    messages.extend(("device", state.device(device_id).to_json()) for device_id in devices)
    if viewer.site:
        viewer.site = False
        messages.append(("site", _site_json(request)))
    events, viewer.events = viewer.events, []
    messages.extend(("event", event.to_json()) for event in events)
    return messages


def _snapshot(request: web.Request) -> dict[str, Any]:
    app = request.app
    site, state, services = app[SITE], app[STATE], app[SERVICES]
    return {
        "site": {"id": site.site.id, "timezone": site.site.timezone, **_site_json(request)},
        "rooms": [room_json(room, state, services, with_devices=False) for room in site.rooms],
        "devices": [device.to_json() for device in state.devices.values()],
        "alarms": services.alarms.counts(),
        "time": services.clock.now().isoformat(),
    }


def _site_json(request: web.Request) -> dict[str, Any]:
    """The building as a whole: fire latch, outdoor climate, alarm counts, visitors today."""
    services = request.app[SERVICES]
    return {
        **request.app[STATE].site_state.to_json(),
        "alarms": services.alarms.counts(),
        "visitors": services.visitors.status()["today"],
    }


def _still_allowed(request: web.Request) -> bool:
    """A stream opened with the page's session ends with the session (logout, expiry).

    Checked every heartbeat, which also keeps an open page's session
    in use, so a screen left on all day stays logged in.
    """
    identity = request.get(IDENTITY)
    if identity is None or identity.session_id is None:
        return True
    sessions = request.app[AUTH].sessions
    return sessions is not None and sessions.get(identity.session_id) is not None


def _message(kind: str, body: Any, number: int) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (number, kind.encode(), orjson.dumps(body))
