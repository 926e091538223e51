"""Time series end to end: Mosquitto -> controller -> spool -> a real VictoriaMetrics.

VictoriaMetrics speaks the InfluxDB v2 write API influxdb-client uses, and its
export API reads the points back, so these tests see exactly what a dashboard
on the database would see: every measurement with its tags, nothing lost in an
outage or a ``kill -9``, nothing written twice, and a refusal that keeps the
points and raises an alarm.
"""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from controller.site import Site
from tests.conftest import (
    CHANGBAI,
    PREFIX,
    Broker,
    Probe,
    centerctl_run,
    controller_settings,
    free_port,
    start_controller,
    wait_until,
)
from tests.victoria import VictoriaMetrics

pytestmark = pytest.mark.broker

READINGS = 1000


def store_settings(broker: Broker, victoria: VictoriaMetrics, **overrides: Any) -> Any:
    return controller_settings(
        broker,
        influx_url=victoria.url,
        influx_token="any-token",
        influx_org="changbai",
        influx_bucket="center",
        influx_flush_interval=0.2,
        influx_timeout=2.0,
        influx_retry_max=0.5,
        **overrides,
    )


def love_room_temperatures(victoria: VictoriaMetrics) -> list[tuple[float, int]]:
    return sorted(
        (value, stamp)
        for labels, field, value, stamp in victoria.points("climate")
        if field == "temperature" and labels.get("device") == "temp-love-room"
    )


def publish_temperatures(probe: Probe, first: int, count: int) -> list[float]:
    """``count`` readings with distinct temperatures, so each point can be told apart."""
    values = [round(10 + (first + i) / 100, 2) for i in range(count)]
    for value in values:
        probe.publish(f"{PREFIX}/temp-love-room/state", json.dumps({"temperature": value}))
    return values


async def test_every_reading_and_room_state_lands_with_its_tags(
    broker: Broker, probe: Probe, victoria: VictoriaMetrics, site: Site
) -> None:
    running = await start_controller(store_settings(broker, victoria), site)
    probe.publish(f"{PREFIX}/occ-hui-xin-room/state", b'{"occupied": true, "count": 3}')
    probe.publish(f"{PREFIX}/temp-love-room/state", b'{"temperature": 27.4, "humidity": 61}')
    probe.publish(f"{PREFIX}/lock-gym/state", b'{"state": "LOCKED", "door": "closed"}')
    probe.publish(f"{PREFIX}/fire-panel/state", b'{"alarm": false}')
    probe.publish(f"{PREFIX}/counter-entrance/state", b'{"in": 100, "out": 90}')
    probe.publish(f"{PREFIX}/counter-entrance/state", b'{"in": 104, "out": 91}')

    expected = {
        ("occupancy", "occupied", (("device", "occ-hui-xin-room"), ("room", "hui-xin-room"))): 1,
        ("occupancy", "count", (("device", "occ-hui-xin-room"), ("room", "hui-xin-room"))): 3,
        ("climate", "temperature", (("device", "temp-love-room"), ("room", "love-room"))): 27.4,
        ("climate", "humidity", (("device", "temp-love-room"), ("room", "love-room"))): 61,
        ("lock", "locked", (("device", "lock-gym"), ("room", "gym"))): 1,
        ("lock", "door_open", (("device", "lock-gym"), ("room", "gym"))): 0,
        ("fire", "alarm", (("device", "fire-panel"),)): 0,
        ("people", "entries", (("device", "counter-entrance"),)): 4,
        ("people", "exits", (("device", "counter-entrance"),)): 1,
        ("room", "occupied", (("room", "hui-xin-room"),)): 1,
        ("room", "count", (("room", "hui-xin-room"),)): 3,
        ("room", "booked", (("room", "hui-xin-room"),)): 0,
    }

    def landed() -> dict[tuple[str, str, tuple[tuple[str, str], ...]], float]:
        found = {}
        for measurement in {key[0] for key in expected}:
            for labels, field, value, _ in victoria.points(measurement):
                assert labels.get("site") == "changbai", labels
                tags = tuple(sorted((k, v) for k, v in labels.items() if k in ("device", "room")))
                found[(measurement, field, tags)] = value
        return found

    found = await wait_until(
        lambda: (f := landed()) and all(key in f for key in expected) and f,
        timeout=15,
        message="every measurement in VictoriaMetrics",
    )
    assert {key: found[key] for key in expected} == expected
    health = running.service.health()["store"]
    assert health["backend"] == "influxdb"
    assert health["status"] == "ok"
    await running.shutdown()


async def test_an_outage_loses_nothing_and_writes_nothing_twice(
    broker: Broker, probe: Probe, victoria: VictoriaMetrics, site: Site
) -> None:
    running = await start_controller(store_settings(broker, victoria), site)
    before = publish_temperatures(probe, 0, 10)
    await wait_until(
        lambda: len(love_room_temperatures(victoria)) == 10, timeout=15, message="first points"
    )

    victoria.stop()
    during = publish_temperatures(probe, 10, READINGS)
    store = running.service.timeseries
    await wait_until(
        lambda: store.status()["spool_points"] >= READINGS,
        timeout=30,
        message="1,000 readings in the spool",
    )
    await wait_until(
        lambda: store.status()["points_retried"] > 0, timeout=10, message="a retried write"
    )
    victoria.start()  # the same data directory

    await wait_until(
        lambda: store.status()["spool_points"] == 0, timeout=30, message="spool replayed"
    )
    points = await wait_until(
        lambda: (p := love_room_temperatures(victoria)) and len(p) >= 10 + READINGS and p,
        timeout=15,
        message="every point in VictoriaMetrics",
    )
    assert len(points) == 10 + READINGS  # exactly: none lost, none twice
    assert sorted(value for value, _ in points) == sorted(before + during)
    assert store.status()["points_dropped"] == 0
    await running.shutdown()


async def test_a_refused_token_keeps_the_points_and_raises_an_alarm(
    broker: Broker, probe: Probe, tmp_path: Path, site: Site
) -> None:
    guarded = VictoriaMetrics(tmp_path / "vm-auth", username="center", password="right")
    guarded.start()
    try:
        running = await start_controller(store_settings(broker, guarded), site)
        publish_temperatures(probe, 0, 50)
        alarms = running.service.alarms
        await wait_until(
            lambda: alarms.is_active("store_unavailable", "timeseries"),
            timeout=15,
            message="store_unavailable",
        )
        writer = running.service.timeseries
        await wait_until(
            lambda: writer.status()["spool_points"] >= 50, message="every reading kept"
        )
        store = writer.status()
        assert store["status"] == "down"
        assert store["points_dropped"] == 0
        assert "401" in (store["last_error"] or "")
        assert running.service.health()["status"] == "degraded"
        await running.shutdown()
    finally:
        guarded.stop()


# --- kill -9 during an outage: a real process ---------------------------------------


def store_health(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1) as reply:
            health: dict[str, Any] = json.load(reply)
    except OSError:
        return None
    return health if health["mqtt"]["connected"] else None


async def test_kill_9_during_an_outage_still_delivers_everything(
    broker: Broker,
    probe: Probe,
    victoria: VictoriaMetrics,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    port = free_port()
    env = {
        "CENTER_MQTT_URL": broker.url,
        "CENTER_HTTP_HOST": "127.0.0.1",
        "CENTER_HTTP_PORT": str(port),
        "CENTER_DATA_DIR": str(tmp_path / "data"),
        "CENTER_INFLUX_URL": victoria.url,
        "CENTER_INFLUX_BUCKET": "center",
        "CENTER_INFLUX_FLUSH_INTERVAL": "0.2",
        "CENTER_INFLUX_TIMEOUT": "2",
        "CENTER_INFLUX_RETRY_MAX": "0.5",
    }
    first = centerctl_run(CHANGBAI, env)
    processes.append(first)
    await wait_until(lambda: store_health(port), timeout=20, message="controller up")

    victoria.stop()
    values = publish_temperatures(probe, 0, READINGS)
    await wait_until(
        lambda: (h := store_health(port)) and h["store"]["spool_points"] >= READINGS,
        timeout=30,
        message="1,000 readings in the spool",
    )
    first.send_signal(signal.SIGKILL)
    first.wait(10)

    victoria.start()
    second = centerctl_run(CHANGBAI, env)
    processes.append(second)
    points = await wait_until(
        lambda: (p := love_room_temperatures(victoria)) and len(p) >= READINGS and p,
        timeout=30,
        message="the spooled points in VictoriaMetrics after the restart",
    )
    assert sorted(value for value, _ in points) == sorted(values)
    assert len(points) == READINGS
