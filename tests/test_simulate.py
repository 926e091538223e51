"""``centerctl simulate`` against a real Mosquitto, with the controller watching it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from controller.site import load_site
from tests.conftest import CHANGBAI, ROOT, Broker, controller_settings, start_controller, wait_until

pytestmark = pytest.mark.broker


def start_simulate(broker: Broker, output: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "CENTER_MQTT_URL": broker.url}
    with output.open("w") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "controller", "simulate", "--site", str(CHANGBAI), *extra],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )


async def test_the_controller_sees_every_simulated_device_of_changbai_online(
    broker: Broker, tmp_path: Path
) -> None:
    site = load_site(CHANGBAI)
    output = tmp_path / "simulate.out"
    simulator = start_simulate(broker, output, "--scenario", "busy-saturday", "--start", "10:00")
    controller = await start_controller(controller_settings(broker), site)
    try:

        def offline_or_unheard() -> list[str]:
            devices = controller.service.state.devices
            return sorted(d for d, state in devices.items() if state.online is not True)

        await wait_until(
            lambda: not offline_or_unheard() or simulator.poll() is not None,
            timeout=30,
            message="every device online",
        )
        assert simulator.poll() is None, output.read_text()
        assert offline_or_unheard() == []
        # Modbus and MQTT readings both arrived through the real protocols.
        modbus = controller.service.health()["modbus"]["devices"]
        assert all(device["polls"] > 0 for device in modbus.values())
        assert controller.service.state.room("love-room").temperature is not None
        simulator.send_signal(signal.SIGINT)
        assert simulator.wait(timeout=10) == 0
        assert "Traceback" not in output.read_text()
        # A clean stop says so: every MQTT device publishes offline.
        await wait_until(
            lambda: all(
                controller.service.state.device(d.id).online is False
                for d in site.devices
                if d.is_mqtt
            ),
            timeout=10,
            message="simulated devices announced offline",
        )
    finally:
        if simulator.poll() is None:
            simulator.kill()
            simulator.wait()
        await controller.shutdown()


def test_simulate_refuses_faults_that_do_not_fit_the_site() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller",
            "simulate",
            "--site",
            str(CHANGBAI),
            "--faults",
            "jam=occ-library",
        ],
        cwd=ROOT,
        env={**os.environ, "CENTER_MQTT_URL": "mqtt://127.0.0.1:1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "jam" in result.stderr
    assert "occ-library" in result.stderr
    assert "Traceback" not in result.stderr
