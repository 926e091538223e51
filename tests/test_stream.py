"""GET /api/stream: what a status page sees live, through a real broker and controller."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from controller.site import Site
from tests.conftest import (
    PREFIX,
    Broker,
    Probe,
    RunningController,
    controller_settings,
    start_controller,
    wait_until,
)

pytestmark = pytest.mark.broker

READ_TOKEN = "read-token-for-the-wall-screen"


@dataclass
class Stream:
    """An SSE client reading in the background; ``messages`` holds (event, data)."""

    response: aiohttp.ClientResponse
    messages: list[tuple[str, Any]] = field(default_factory=list)
    ended: bool = False

    async def read(self) -> None:
        kind, data = "message", ""
        try:
            async for raw in self.response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif not line and data:
                    self.messages.append((kind, json.loads(data)))
                    kind, data = "message", ""
        except aiohttp.ClientError:
            pass
        self.ended = True

    def of(self, kind: str) -> list[Any]:
        return [data for event, data in self.messages if event == kind]


@contextlib.asynccontextmanager
async def stream(controller: RunningController, token: str = READ_TOKEN) -> AsyncIterator[Stream]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{controller.base_url}/api/stream", headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        reader = Stream(response)
        task = asyncio.create_task(reader.read())
        try:
            await wait_until(lambda: reader.of("snapshot"), message="the snapshot")
            yield reader
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
async def controller(broker: Broker, site: Site) -> AsyncIterator[RunningController]:
    settings = controller_settings(broker, api_tokens=json.dumps({READ_TOKEN: ["read"]}))
    running = await start_controller(settings, site)
    yield running
    if not running.task.done():
        await running.shutdown()


async def test_a_viewer_gets_a_snapshot_then_each_change(
    controller: RunningController, probe: Probe
) -> None:
    async with stream(controller) as viewer:
        (snapshot,) = viewer.of("snapshot")
        names = {room["id"]: room["name"] for room in snapshot["rooms"]}
        assert len(names) == 11
        assert names["hui-xin-room"] == "汇心室"

        probe.publish(f"{PREFIX}/occ-hui-xin-room/state", b'{"occupied": true, "count": 4}')

        def hui_xin() -> dict[str, Any] | None:
            rooms = [room for room in viewer.of("room") if room["id"] == "hui-xin-room"]
            return rooms[-1] if rooms else None

        room = await wait_until(hui_xin, timeout=2, message="the room's change within 2 s")
        assert room["state"]["occupied"] is True
        assert room["state"]["count"] == 4

        probe.publish(f"{PREFIX}/occ-gym/availability", b"offline", retain=True)
        device = await wait_until(
            lambda: [d for d in viewer.of("device") if d["id"] == "occ-gym"],
            message="the device's change",
        )
        assert device[-1]["online"] is False
        event = await wait_until(
            lambda: [e for e in viewer.of("event") if e["kind"] == "device_offline"],
            message="the alarm in the event log",
        )
        assert event[0]["device"] == "occ-gym"


async def test_a_burst_of_changes_reaches_a_viewer_coalesced_and_ends_on_the_truth(
    controller: RunningController, probe: Probe
) -> None:
    async with stream(controller) as viewer:
        for count in range(1, 201):
            probe.publish(
                f"{PREFIX}/occ-library/state",
                json.dumps({"occupied": True, "count": count}),
                qos=0,
            )

        def library_counts() -> list[int]:
            return [r["state"]["count"] for r in viewer.of("room") if r["id"] == "library"]

        await wait_until(
            lambda: library_counts() and library_counts()[-1] == 200,
            message="the last count on screen",
        )
        counts = library_counts()
        assert counts == sorted(counts)  # never back to an older state
        assert len(counts) <= 200


async def test_the_stream_needs_a_read_token(controller: RunningController) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{controller.base_url}/api/stream") as response,
    ):
        assert response.status == 401


async def test_a_stopping_controller_ends_the_stream(controller: RunningController) -> None:
    async with stream(controller) as viewer:
        await controller.shutdown()
        await wait_until(lambda: viewer.ended, message="the stream to end")


async def test_a_reconnect_starts_with_a_fresh_snapshot(
    controller: RunningController, probe: Probe
) -> None:
    async with stream(controller):
        pass  # the browser lost the connection
    probe.publish(f"{PREFIX}/occ-coffee/state", b'{"occupied": true, "count": 2}')
    await wait_until(
        lambda: controller.service.state.room("coffee").count == 2, message="the change"
    )
    async with stream(controller) as viewer:
        (snapshot,) = viewer.of("snapshot")
        coffee = next(room for room in snapshot["rooms"] if room["id"] == "coffee")
        assert coffee["state"]["count"] == 2  # the change made while away is on screen
