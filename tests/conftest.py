"""Shared fixtures: a real Mosquitto per test, an independent MQTT probe, a running controller.

Nothing here sleeps to wait: every wait polls a condition against a deadline.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from controller.clock import SystemClock
from controller.service import ControllerService
from controller.settings import Settings
from controller.site import Site, load_site

ROOT = Path(__file__).resolve().parent.parent
CHANGBAI = ROOT / "sites" / "changbai.toml"
PREFIX = "center/changbai"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )
    if found is None:
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (see .ci/run)")
    return found


async def wait_until(
    condition: Callable[[], Any], *, timeout: float = 5.0, message: str = "condition"
) -> Any:
    """Poll ``condition`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        await asyncio.sleep(0.01)


@dataclass
class Broker:
    """A Mosquitto process on a loopback port, restartable on the same port."""

    config: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.config.with_suffix(".log")
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                [_mosquitto_binary(), "-c", str(self.config)],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                said = log.read_text(errors="replace").strip()
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {said}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    # No persistence: a restart forgets every retained message, the case the
    # controller must recover from by republishing.
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 100000\nset_tcp_nodelay true\n"
    )
    instance = Broker(config, port)
    instance.start()
    yield instance
    instance.stop()


@dataclass
class Probe:
    """An MQTT client independent of the controller's own driver (paho's threaded loop)."""

    port: int
    client: paho.Client = field(init=False)
    messages: list[paho.MQTTMessage] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    def connect(self) -> None:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def subscribe(self, topic: str) -> None:
        result, _ = self.client.subscribe(topic, qos=1)
        assert result == paho.MQTT_ERR_SUCCESS

    def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(5)

    def received(self, topic: str) -> list[bytes]:
        with self._changed:
            return [bytes(message.payload) for message in self.messages if message.topic == topic]

    def wait_blocking(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait on the calling thread, holding up its event loop on purpose, until
        ``predicate`` holds; False at the deadline. Only what was already written
        to a socket can arrive meanwhile (paho's own thread receives it)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    async def next_payload(
        self, topic: str, predicate: Callable[[bytes], bool] = lambda _: True, timeout: float = 5.0
    ) -> bytes:
        def find() -> bytes | None:
            for payload in self.received(topic):
                if predicate(payload):
                    return payload
            return None

        found: bytes = await wait_until(find, timeout=timeout, message=f"a message on {topic}")
        return found


@pytest.fixture
def probe(broker: Broker) -> Iterator[Probe]:
    client = Probe(broker.port)
    client.connect()
    yield client
    client.close()


@pytest.fixture
def site() -> Site:
    return load_site(CHANGBAI)


def controller_settings(broker: Broker, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "mqtt_url": broker.url,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "mqtt_reconnect_min": 0.05,
        "mqtt_reconnect_max": 0.5,
        "mqtt_keepalive": 5,
        # Next to the broker's files: each test gets its own durable state.
        "data_dir": broker.config.parent / "controller-data",
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@dataclass
class RunningController:
    service: ControllerService
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.service.http_port}"

    async def shutdown(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 10)


async def start_controller(settings: Settings, site: Site) -> RunningController:
    service = ControllerService(settings, site, SystemClock(site.site.zone))
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(service.run(stop, ready))
    await wait_until(lambda: ready.is_set() or task.done(), message="controller start")
    if task.done():
        task.result()
    await wait_until(lambda: service.link.status.connected, message="controller connected")
    return RunningController(service, stop, task)


@pytest.fixture
async def controller(broker: Broker, site: Site) -> AsyncIterator[RunningController]:
    running = await start_controller(controller_settings(broker), site)
    yield running
    if not running.task.done():
        await running.shutdown()


def centerctl_run(site_file: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``centerctl run`` as an operator starts it: a real process, settings in ``env``."""
    return subprocess.Popen(
        [sys.executable, "-m", "controller", "run", "--site", str(site_file)],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Controller processes a test starts; killed and reaped after it."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


# The `victoria` fixture (a real VictoriaMetrics), registered for every test module;
# imported last because tests.victoria uses free_port from this module.
from tests.victoria import victoria_fixture  # noqa: E402, F401
