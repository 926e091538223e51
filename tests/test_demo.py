"""``centerctl demo`` as a newcomer runs it: nothing but the package, a real process, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, free_port, wait_until

ENV_TO_DROP = ("CENTER_MQTT_URL", "CENTER_API_TOKENS", "CENTER_HTTP_PORT", "CENTER_HTTP_HOST")


def get(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as reply:
            return json.load(reply)
    except (OSError, urllib.error.URLError):
        return None


def start_demo(port: int, output: Path, data_dir: Path) -> subprocess.Popen[str]:
    """``centerctl demo`` in a clean environment: no broker, no tokens configured."""
    env = {key: value for key, value in os.environ.items() if key not in ENV_TO_DROP}
    env["CENTER_DATA_DIR"] = str(data_dir)
    with output.open("w") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "controller", "demo", "--http-port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )


async def test_demo_runs_the_simulated_center_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    output = tmp_path / "demo.out"
    process = start_demo(port, output, tmp_path / "data")
    try:
        found = await wait_until(
            lambda: re.search(r"Staff token: (\S+)", output.read_text()),
            timeout=30,
            message="the demo's banner with a token",
        )
        token = found.group(1)
        assert f"http://127.0.0.1:{port}/api/rooms" in output.read_text()
        base = f"http://127.0.0.1:{port}"

        def every_device_online() -> bool:
            devices = get(f"{base}/api/devices", token)
            return bool(devices) and all(d["online"] for d in devices["devices"])

        await wait_until(every_device_online, timeout=60, message="every simulated device online")
        rooms = get(f"{base}/api/rooms", token)
        states = {room["id"]: room["state"] for room in rooms["rooms"]}
        # Simulated data from both protocols: MQTT occupancy and climate, Modbus AC.
        assert all(states[room]["occupied"] is not None for room in ("library", "love-room"))
        assert states["love-room"]["temperature"] is not None
        assert states["convergence-hall"]["temperature"] is not None  # from its AC
        assert rooms["site"]["state"]["fire_alarm"] is False
        # The API is protected by the printed token.
        assert get(f"{base}/api/rooms", "wrong-token") is None
        # The center's services answer: the cabinet (staff) with every compartment,
        # the day's visitors, the love room's AC under the climate rule.
        cabinet = get(f"{base}/api/cabinets/cabinet-1", token)
        assert len(cabinet["compartments"]) == 24
        assert get(f"{base}/api/visitors", token)["timezone"] == "Asia/Shanghai"
        units = {
            unit["id"]: unit
            for unit in get(f"{base}/api/air-conditioners", token)["air_conditioners"]
        }
        assert units["ac-love-room"]["managed"] is True
        assert units["ac-convergence-hall"]["managed"] is False
        assert re.search(r"Kiosk token: (\S+)", output.read_text()), "a kiosk token for pickups"

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        assert "Traceback" not in output.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
