"""``GET /metrics``: what an operator's Prometheus would see.

The live tests run the whole controller against a real Mosquitto, on a small
site with MQTT devices only (no Modbus device failing its polls in the
background), with API tokens configured so that "no token needed" means
something. Every scrape is parsed with prometheus-client's own parser, which
also checks that no metric name appears twice. The time-series store is not
built yet, so its metrics are checked at unit level, with a stub health report
that has the ``store`` key of the design.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from controller.bus import EventBus
from controller.metrics import CenterCollector
from controller.site import Site, parse_site
from controller.state import LiveState
from tests.conftest import Broker, Probe, RunningController, controller_settings, start_controller
from web.metrics import latency_middleware

READ_TOKEN = "rd-metrics-9Kq2Lx7Vb"
SITE = """
[site]
id = "metered"
name = "计量站"
timezone = "Asia/Shanghai"
hours = { open = "08:30", close = "21:00" }

[[rooms]]
id = "hall"
name = "大厅"

[[rooms]]
id = "library"
name = "图书室"

[[devices]]
id = "occ-hall"
kind = "occupancy"
room = "hall"
interval = "30s"

[[devices]]
id = "occ-library"
kind = "occupancy"
room = "library"
interval = "30s"

[[devices]]
id = "lock-hall"
kind = "lock"
room = "hall"
interval = "60s"
"""
PREFIX = "center/metered"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY = "center_http_request_duration_seconds"


@dataclass(frozen=True)
class Scrape:
    text: str
    samples: tuple[Sample, ...]

    def value(self, name: str, **labels: str) -> float | None:
        """The one sample called ``name`` whose labels include ``labels``; None if none."""
        found = [
            sample
            for sample in self.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        ]
        assert len(found) <= 1, f"{name}{labels} matches {found}"
        return found[0].value if found else None

    def series(self, name: str, **labels: str) -> list[Sample]:
        return [
            sample
            for sample in self.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        ]


def parse(text: str) -> Scrape:
    """Parse like Prometheus would, failing on a metric name that appears twice."""
    families = list(text_string_to_metric_families(text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), f"duplicate metric names: {names}"
    return Scrape(text, tuple(sample for family in families for sample in family.samples))


async def get(controller: RunningController, path: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{controller.base_url}{path}", headers=headers) as response,
    ):
        await response.read()
        return response.status


async def scrape(controller: RunningController) -> Scrape:
    """``GET /metrics`` the way Prometheus does: no token."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{controller.base_url}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"] == CONTENT_TYPE
        text = await response.text()
    assert READ_TOKEN not in text
    return parse(text)


async def scrape_until(
    controller: RunningController,
    condition: Callable[[Scrape], bool],
    *,
    timeout: float = 5.0,
    message: str = "the metrics",
) -> Scrape:
    deadline = time.monotonic() + timeout
    while True:
        result = await scrape(controller)
        if condition(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        await asyncio.sleep(0.01)


@pytest.fixture
def metered_site() -> Site:
    return parse_site(SITE)


@pytest.fixture
async def metered(broker: Broker, metered_site: Site) -> AsyncIterator[RunningController]:
    settings = controller_settings(broker, api_tokens=json.dumps({READ_TOKEN: ["read"]}))
    running = await start_controller(settings, metered_site)
    assert running.service.prefix == PREFIX
    yield running
    if not running.task.done():
        await running.shutdown()


# -- the live controller --------------------------------------------------------------


@pytest.mark.broker
async def test_metrics_need_no_token_while_the_api_does(metered: RunningController) -> None:
    assert await get(metered, "/api/rooms") == 401
    scraped = await scrape(metered)  # no token
    assert scraped.value("center_build_info", site="metered") == 1
    assert scraped.value("center_mqtt_connected") == 1
    assert scraped.value("center_status", status="down") == 0


@pytest.mark.broker
async def test_readings_through_the_broker_are_counted(
    metered: RunningController, probe: Probe
) -> None:
    # The controller's own retained "online" is the one message it receives first.
    before = await scrape_until(
        metered,
        lambda s: (s.value("center_mqtt_messages_received_total") or 0) >= 1,
        message="the controller's own availability message",
    )
    received = before.value("center_mqtt_messages_received_total")
    assert received is not None
    readings = 20
    for count in range(readings):
        probe.publish(f"{PREFIX}/occ-hall/state", json.dumps({"occupied": True, "count": count}))

    after = await scrape_until(
        metered,
        lambda s: s.value("center_mqtt_readings_total") == readings,
        message=f"{readings} readings",
    )
    assert after.value("center_mqtt_messages_received_total") == received + readings
    assert after.value("center_bad_payloads_total", reason="not_json") == 0


@pytest.mark.broker
async def test_a_garbage_payload_shows_under_its_reason(
    metered: RunningController, probe: Probe
) -> None:
    probe.publish(f"{PREFIX}/occ-hall/state", b"hello")
    probe.publish(f"{PREFIX}/occ-hall/state", b"hello again")
    probe.publish(f"{PREFIX}/occ-library/state", b"[1, 2]")
    probe.publish(f"{PREFIX}/stranger/state", b'{"occupied": true}')

    scraped = await scrape_until(
        metered,
        lambda s: s.value("center_bad_payloads_total", reason="unknown_device") == 1,
        message="the unknown device counted",
    )
    assert scraped.value("center_bad_payloads_total", reason="not_json") == 2
    assert scraped.value("center_bad_payloads_total", reason="not_object") == 1
    assert scraped.value("center_bad_payloads_total", reason="empty") == 0  # there from start
    assert scraped.value("center_mqtt_readings_total") == 0
    # Reasons only: the free-text detail and the device ids from outside stay out.
    assert "stranger" not in scraped.text
    assert "hello" not in scraped.text


@pytest.mark.broker
async def test_device_health_and_its_alarm(metered: RunningController, probe: Probe) -> None:
    first = await scrape(metered)
    assert first.value("center_device_online", device="occ-hall") is None  # not heard yet
    assert first.value("center_devices", health="not_heard") == 3
    assert first.series("center_alarms_active", kind="device_offline") == []

    sent = datetime.now().timestamp()
    probe.publish(f"{PREFIX}/occ-hall/state", b'{"occupied": true}')
    online = await scrape_until(
        metered,
        lambda s: s.value("center_device_online", device="occ-hall") == 1,
        message="occ-hall online",
    )
    assert online.value("center_device_online", device="occ-hall", kind="occupancy", room="hall")
    last_seen = online.value("center_device_last_seen_timestamp_seconds", device="occ-hall")
    assert last_seen is not None
    assert sent - 1 <= last_seen <= datetime.now().timestamp()
    assert online.value("center_device_online", device="occ-library") is None

    probe.publish(f"{PREFIX}/occ-hall/availability", b"offline")
    offline = await scrape_until(
        metered,
        lambda s: s.value("center_alarms_active", kind="device_offline") == 1,
        message="the device_offline alarm",
    )
    assert offline.value("center_device_online", device="occ-hall") == 0
    assert offline.value("center_devices", health="offline") == 1
    assert offline.value("center_alarms_unacknowledged") == 1
    assert offline.value("center_status", status="degraded") == 1

    probe.publish(f"{PREFIX}/occ-hall/availability", b"online")
    back = await scrape_until(
        metered,
        lambda s: s.value("center_device_online", device="occ-hall") == 1,
        message="occ-hall back online",
    )
    # The kind stays, at 0: a graph shows the alarm ending rather than a series vanishing.
    assert back.value("center_alarms_active", kind="device_offline") == 0


@pytest.mark.broker
async def test_lock_commands_and_their_confirmation(
    metered: RunningController, probe: Probe
) -> None:
    # The access rules give the lock a target at start; with no state read by the
    # end of the settle time, the commander sends it.
    sent = await scrape_until(
        metered,
        lambda s: (s.value("center_lock_commands_total") or 0) >= 1,
        message="a lock command",
    )
    assert sent.value("center_lock_confirmations_total") == 0
    assert sent.value("center_lock_confirmed", device="lock-hall") == 0

    target = metered.service.locks.target("lock-hall")
    assert target is not None
    state = {"LOCK": "LOCKED", "UNLOCK": "UNLOCKED"}[target.value]
    probe.publish(f"{PREFIX}/lock-hall/state", json.dumps({"state": state}))

    confirmed = await scrape_until(
        metered,
        lambda s: s.value("center_lock_confirmations_total") == 1,
        message="the lock's confirmation",
    )
    assert confirmed.value("center_lock_confirmed", device="lock-hall") == 1


@pytest.mark.broker
async def test_http_latency_is_one_series_per_route(metered: RunningController) -> None:
    assert await get(metered, "/api/rooms/hall", READ_TOKEN) == 200
    assert await get(metered, "/api/rooms/library", READ_TOKEN) == 200
    assert await get(metered, "/api/rooms/no-such-room", READ_TOKEN) == 404
    assert await get(metered, "/api/rooms/hall") == 401
    assert await get(metered, "/no/such/path") == 404

    scraped = await scrape(metered)
    rooms = scraped.series(f"{LATENCY}_count", route="/api/rooms/{room}")
    by_status = {sample.labels["status"]: sample.value for sample in rooms}
    assert by_status == {"200": 2, "404": 1, "401": 1}
    assert {sample.labels["method"] for sample in rooms} == {"GET"}
    assert (
        scraped.value(f"{LATENCY}_bucket", route="/api/rooms/{room}", status="200", le="+Inf") == 2
    )
    assert scraped.value(f"{LATENCY}_count", route="unmatched", status="404") == 1
    routes = {sample.labels["route"] for sample in scraped.series(f"{LATENCY}_count")}
    assert not any("hall" in route or "library" in route or "such" in route for route in routes)

    again = await scrape(metered)  # the first scrape is in the histogram now
    assert again.value(f"{LATENCY}_count", route="/metrics", status="200") == 1


# -- the collector, from a stub health report -----------------------------------------


def stub_health(store: Mapping[str, Any] | None) -> dict[str, Any]:
    report: dict[str, Any] = {
        "status": "ok",
        "site": "metered",
        "version": "1.2.3",
        "started": "2026-11-23T09:00:00+08:00",
        "mqtt": {"connected": True, "connects": 2},
        "ingest": {
            "messages": 10,
            "readings": 7,
            "availability": 1,
            "bad_payloads": 6,
            "bad_payloads_by_device": {
                "occ-hall": {"not_json": 2, "empty": 1},
                "occ-library": {"not_json": 3},
            },
        },
    }
    if store is not None:
        report["store"] = store
    return report


def collect(
    health: Callable[[], dict[str, Any]],
    site: Site,
    alarms: Callable[[], Mapping[str, int]] = dict,
) -> Callable[[], Scrape]:
    registry = CollectorRegistry()
    registry.register(CenterCollector(health, LiveState(site, EventBus()), alarms))
    return lambda: parse(generate_latest(registry).decode())


def test_store_metrics_from_the_store_section(metered_site: Site) -> None:
    store = {
        "backend": "influxdb",
        "status": "degraded",
        "points_written": 120_000,
        "points_dropped": 3,
        "points_retried": 5_000,
        "points_rejected": 7,
        "spool_points": 4_200,
        "spool_bytes": 262_144,
        "spool_max_bytes": 1_073_741_824,
        "write_lag_seconds": 12.5,
        "last_error": "HTTP 503 from http://127.0.0.1:8428",
        "last_write": "2026-11-23T09:30:00+08:00",
    }
    scraped = collect(lambda: stub_health(store), metered_site)()

    assert scraped.value("center_store_points_written_total") == 120_000
    assert scraped.value("center_store_points_dropped_total") == 3
    assert scraped.value("center_store_points_retried_total") == 5_000
    assert scraped.value("center_store_points_rejected_total") == 7
    assert scraped.value("center_store_spool_points") == 4_200
    assert scraped.value("center_store_spool_bytes") == 262_144
    assert scraped.value("center_store_spool_max_bytes") == 1_073_741_824
    assert scraped.value("center_store_write_lag_seconds") == 12.5
    assert scraped.value("center_store_up") == 1  # degraded still takes points
    assert scraped.value("center_store_status", status="degraded") == 1
    assert scraped.value("center_store_status", status="ok") == 0
    assert scraped.value("center_store_info", backend="influxdb") == 1
    assert scraped.value("center_store_last_write_timestamp_seconds") == (
        datetime.fromisoformat("2026-11-23T09:30:00+08:00").timestamp()
    )
    assert "HTTP 503" not in scraped.text  # free text stays in /api/health

    down = collect(
        lambda: stub_health({**store, "status": "down", "spool_max_bytes": None}), metered_site
    )()
    assert down.value("center_store_up") == 0
    assert down.value("center_store_spool_max_bytes") is None  # embedded: no bound, no sample


def test_no_store_section_no_store_metrics(metered_site: Site) -> None:
    scraped = collect(lambda: stub_health(None), metered_site)()

    assert not [sample for sample in scraped.samples if sample.name.startswith("center_store")]
    assert scraped.value("center_mqtt_messages_received_total") == 10
    assert scraped.value("center_start_time_seconds") == (
        datetime.fromisoformat("2026-11-23T09:00:00+08:00").timestamp()
    )


def test_bad_payloads_are_summed_over_devices_by_reason(metered_site: Site) -> None:
    scraped = collect(lambda: stub_health(None), metered_site)()

    assert scraped.value("center_bad_payloads_total", reason="not_json") == 5
    assert scraped.value("center_bad_payloads_total", reason="empty") == 1
    assert scraped.value("center_bad_payloads_total", reason="too_large") == 0
    assert scraped.series("center_bad_payloads_total", device="occ-hall") == []


def test_one_health_report_and_one_alarm_query_per_scrape(metered_site: Site) -> None:
    calls: list[str] = []

    def health() -> dict[str, Any]:
        calls.append("health")
        return stub_health(None)

    def alarms() -> dict[str, int]:
        calls.append("alarms")
        return {"lock_jammed": 2}

    scrape_once = collect(health, metered_site, alarms)
    scraped = scrape_once()
    assert calls == ["health", "alarms"]
    assert scraped.value("center_alarms_active", kind="lock_jammed") == 2
    scrape_once()
    assert calls == ["health", "alarms"] * 2


def test_each_app_has_its_own_registry() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    latency_middleware(first)
    latency_middleware(second)  # the same histogram name again: no clash, nothing global

    assert "center_" not in generate_latest(REGISTRY).decode()
    assert LATENCY in generate_latest(second).decode()
