"""``centerctl`` as an operator runs it: a real process, real signals, a real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CHANGBAI, PREFIX, ROOT, Broker, Probe, free_port, wait_until

pytestmark = pytest.mark.broker

AVAILABILITY = f"{PREFIX}/controller/availability"


def centerctl(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "controller", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def daemon(broker: Broker, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    process = centerctl(
        "run",
        "--site",
        str(CHANGBAI),
        env={
            "CENTER_MQTT_URL": broker.url,
            "CENTER_HTTP_HOST": "127.0.0.1",
            "CENTER_HTTP_PORT": str(port),
            "CENTER_DATA_DIR": str(tmp_path / "data"),
            "CENTER_LOG_FORMAT": "json",
        },
    )
    yield process, port
    if process.poll() is None:
        process.kill()
    process.communicate()


def mqtt_connected(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1) as reply:
            return bool(json.load(reply)["mqtt"]["connected"])
    except OSError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_stops_cleanly_within_5s_and_announces_offline(
    daemon: tuple[subprocess.Popen[str], int], probe: Probe, signum: int
) -> None:
    process, port = daemon
    probe.subscribe(AVAILABILITY)
    await wait_until(lambda: mqtt_connected(port), timeout=15, message="daemon connected")
    await probe.next_payload(AVAILABILITY, lambda body: body == b"online")

    started = time.monotonic()
    process.send_signal(signum)
    await wait_until(lambda: process.poll() is not None, timeout=5, message="exit")
    assert time.monotonic() - started < 5
    assert process.returncode == 0
    await probe.next_payload(AVAILABILITY, lambda body: body == b"offline")
    _, stderr = process.communicate()
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(line["message"] == "stopped" for line in lines), stderr


async def test_killed_controller_is_announced_offline_by_its_last_will(
    daemon: tuple[subprocess.Popen[str], int], probe: Probe
) -> None:
    process, port = daemon
    probe.subscribe(AVAILABILITY)
    await wait_until(lambda: mqtt_connected(port), timeout=15, message="daemon connected")
    await probe.next_payload(AVAILABILITY, lambda body: body == b"online")
    process.kill()
    # The broker notices the dead socket at once (the kernel closes it) and publishes the will.
    await probe.next_payload(AVAILABILITY, lambda body: body == b"offline", timeout=10)


def test_check_prints_a_summary_of_the_example_site() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "controller", "check", str(CHANGBAI)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "changbai" in result.stdout
    assert "love-room" in result.stdout


def test_check_reports_every_error_without_a_traceback(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(
        CHANGBAI.read_text(encoding="utf-8")
        .replace("capacity = 16", "capacity = 0")
        .replace('timezone = "Asia/Shanghai"', 'timezone = "Mars/Olympus"'),
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "controller", "check", str(broken)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "capacity: must be > 0" in result.stderr
    assert "site.timezone: unknown time zone" in result.stderr
    assert "Traceback" not in result.stderr
