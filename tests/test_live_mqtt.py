"""The controller against a real Mosquitto: readings in, room state out over MQTT and HTTP."""

from __future__ import annotations

import json

import aiohttp
import pytest

from controller.site import Site, parse_site
from tests.conftest import (
    CHANGBAI,
    PREFIX,
    Broker,
    Probe,
    RunningController,
    controller_settings,
    start_controller,
    wait_until,
)

pytestmark = pytest.mark.broker


async def get_json(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


def room_topic(room: str) -> str:
    return f"{PREFIX}/room/{room}/state"


async def room_state(controller: RunningController, room: str) -> dict[str, object]:
    status, body = await get_json(f"{controller.base_url}/api/rooms/{room}")
    assert status == 200
    state = body["state"]
    assert isinstance(state, dict)
    return state


async def test_controller_announces_itself_online_retained(
    controller: RunningController, broker: Broker
) -> None:
    late = Probe(broker.port)
    late.connect()
    try:
        late.subscribe(f"{PREFIX}/controller/availability")
        assert await late.next_payload(f"{PREFIX}/controller/availability") == b"online"
    finally:
        late.close()


async def test_occupancy_reading_updates_room_over_http_and_retained_topic(
    controller: RunningController, probe: Probe, broker: Broker
) -> None:
    probe.publish(f"{PREFIX}/occ-hui-xin-room/state", b'{"occupied": true, "count": 3}')

    async def occupied() -> bool:
        return (await room_state(controller, "hui-xin-room"))["count"] == 3

    await wait_until_async(occupied)
    state = await room_state(controller, "hui-xin-room")
    assert state["occupied"] is True
    assert str(state["since"]).endswith("+08:00")  # the site's own time zone

    probe.subscribe(room_topic("hui-xin-room"))
    await probe.next_payload(
        room_topic("hui-xin-room"), lambda body: json.loads(body)["count"] == 3
    )

    # A client that connects afterwards gets the room's state from the retained topic.
    late = Probe(broker.port)
    late.connect()
    try:
        late.subscribe(room_topic("hui-xin-room"))
        payload = await late.next_payload(room_topic("hui-xin-room"))
        assert json.loads(payload)["count"] == 3
        assert json.loads(payload)["occupied"] is True
        assert late.messages[0].retain
    finally:
        late.close()


async def test_climate_lock_and_fire_alarm_readings_reach_room_state(
    controller: RunningController, probe: Probe
) -> None:
    probe.publish(f"{PREFIX}/temp-love-room/state", b'{"temperature": 27.4, "humidity": 61}')
    probe.publish(
        f"{PREFIX}/lock-practice-hall/state", b'{"state": "UNLOCKED", "door": "open"}', retain=True
    )
    probe.publish(f"{PREFIX}/fire-panel/state", b'{"alarm": true}')

    async def settled() -> bool:
        love = await room_state(controller, "love-room")
        hall = await room_state(controller, "practice-hall")
        return love["temperature"] == 27.4 and hall["door"] == "open" and hall["fire_alarm"] is True

    await wait_until_async(settled)
    hall = await room_state(controller, "practice-hall")
    assert hall["locked"] is False
    assert hall["lock_state"] == "UNLOCKED"
    love = await room_state(controller, "love-room")
    assert love["humidity"] == 61
    assert love["fire_alarm"] is True


async def test_device_lwt_offline_makes_its_reading_stop_counting(
    controller: RunningController, probe: Probe
) -> None:
    probe.publish(f"{PREFIX}/occ-gym/state", b'{"occupied": true}')

    async def occupied() -> bool:
        return (await room_state(controller, "gym"))["occupied"] is True

    await wait_until_async(occupied)
    probe.publish(f"{PREFIX}/occ-gym/availability", b"offline", retain=True)

    async def unknown() -> bool:
        return (await room_state(controller, "gym"))["occupied"] is None

    await wait_until_async(unknown)
    status, body = await get_json(f"{controller.base_url}/api/health")
    assert body["devices"]["offline"] == ["occ-gym"]  # type: ignore[index]
    assert body["status"] == "degraded"
    assert status == 200


async def test_zigbee2mqtt_devices_work_without_a_bridge(broker: Broker, probe: Probe) -> None:
    text = CHANGBAI.read_text(encoding="utf-8").replace(
        'id = "lock-gym"\nkind = "lock"',
        'id = "lock-gym"\nkind = "lock"\n'
        'state_topic = "zigbee2mqtt/gym door"\nformat = "zigbee2mqtt"',
    )
    assert "zigbee2mqtt/gym door" in text, "the lock-gym entry of changbai.toml changed shape"
    site: Site = parse_site(text)
    running = await start_controller(controller_settings(broker), site)
    try:
        probe.publish(
            "zigbee2mqtt/gym door",
            b'{"state": "LOCK", "lock_state": "locked", "battery": 97, "linkquality": 120}',
        )

        async def locked() -> bool:
            return (await room_state(running, "gym"))["locked"] is True

        await wait_until_async(locked)
        probe.publish("zigbee2mqtt/gym door/availability", b'{"state": "offline"}')

        async def unknown() -> bool:
            return (await room_state(running, "gym"))["locked"] is None

        await wait_until_async(unknown)
    finally:
        await running.shutdown()


async def test_reconnects_after_broker_restart_and_republishes_retained_state(
    controller: RunningController, broker: Broker
) -> None:
    first = Probe(broker.port)
    first.connect()
    first.publish(f"{PREFIX}/occ-library/state", b'{"occupied": true, "count": 12}')

    async def counted() -> bool:
        return (await room_state(controller, "library"))["count"] == 12

    await wait_until_async(counted)
    first.close()
    connects = controller.service.link.status.connects

    broker.stop()  # no persistence: every retained message is gone
    await wait_until(lambda: not controller.service.link.status.connected, message="link down")
    broker.start()
    await wait_until(
        lambda: controller.service.link.status.connects > connects, timeout=10, message="reconnect"
    )

    after = Probe(broker.port)
    after.connect()
    try:
        after.subscribe(f"{PREFIX}/controller/availability")
        after.subscribe(room_topic("library"))
        assert await after.next_payload(f"{PREFIX}/controller/availability") == b"online"
        payload = await after.next_payload(room_topic("library"))
        assert json.loads(payload)["count"] == 12

        # Subscriptions are back too: a new reading is applied.
        after.publish(f"{PREFIX}/occ-library/state", b'{"occupied": true, "count": 20}')

        async def recounted() -> bool:
            return (await room_state(controller, "library"))["count"] == 20

        await wait_until_async(recounted)
    finally:
        after.close()


async def test_clean_stop_publishes_offline(controller: RunningController, probe: Probe) -> None:
    probe.subscribe(f"{PREFIX}/controller/availability")
    await probe.next_payload(f"{PREFIX}/controller/availability", lambda body: body == b"online")
    await controller.shutdown()
    await probe.next_payload(f"{PREFIX}/controller/availability", lambda body: body == b"offline")


async def wait_until_async(check: object, timeout: float = 5.0) -> None:
    """Like wait_until, for an async check (an HTTP request per poll)."""
    import asyncio
    import time

    assert callable(check)
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {check.__name__}")
        await asyncio.sleep(0.01)


async def test_a_burst_is_ingested_completely_and_in_order(
    controller: RunningController, probe: Probe
) -> None:
    """Thousands of back-to-back messages share socket reads and split across them."""
    burst = 5000
    for count in range(1, burst + 1):
        # Payload sizes vary so packet boundaries fall everywhere in a read.
        padding = "x" * (count % 300)
        probe.client.publish(
            f"{PREFIX}/occ-corridor/state",
            f'{{"occupied": true, "count": {count % 40}, "note": "{padding}"}}',
            qos=0,
        )
    probe.publish(f"{PREFIX}/occ-corridor/state", b'{"occupied": true, "count": 39}')
    await wait_until(
        lambda: controller.service.ingest.stats.readings == burst + 1,
        timeout=15,
        message=f"{burst + 1} readings",
    )
    assert controller.service.ingest.stats.bad == 0
    assert (await room_state(controller, "corridor"))["count"] == 39


async def test_a_site_without_modbus_devices_keeps_running(broker: Broker, probe: Probe) -> None:
    site = parse_site(
        """
[site]
id = "small"
name = "小站"
hours = { open = "08:30", close = "21:00" }

[[rooms]]
id = "hall"
name = "大厅"

[[devices]]
id = "occ-hall"
kind = "occupancy"
room = "hall"
interval = "30s"
"""
    )
    running = await start_controller(controller_settings(broker), site)
    try:
        probe.publish("center/small/occ-hall/state", b'{"occupied": true, "count": 2}')
        await wait_until(lambda: running.service.state.room("hall").count == 2)
        assert not running.task.done()
    finally:
        await running.shutdown()
