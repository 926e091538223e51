"""Shared parts of ``bench/fire.py`` and ``bench/bookings.py`` (not a benchmark itself).

Both benchmarks run ``centerctl run`` as a subprocess (:class:`CenterCtl`) against a
private Mosquitto (the broker and the HTTP health helpers come from
``bench/ingest.py``), play every lock of the generated site with
:class:`LockEmulator`, and talk to the controller's HTTP API with bearer tokens.
:class:`WireProbe` is a passive raw-socket subscriber in its own process that
time-stamps lock commands as they leave the broker; :class:`CpuWatch` measures CPU
of processes; :func:`start_profiler` runs py-spy without pausing the controller.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TypeVar

import orjson
import paho.mqtt.client as paho
import psutil
from ingest import BenchError, Controller, percentile
from paho.mqtt.enums import CallbackAPIVersion

STAFF_TOKEN = "bench-staff-token"
BOOKING_TOKEN = "bench-booking-token"
READ_TOKEN = "bench-read-token"
TOKENS = {STAFF_TOKEN: ["staff"], BOOKING_TOKEN: ["booking"], READ_TOKEN: ["read"]}


# --------------------------------------------------------------------------- machine


def machine_facts() -> str:
    """``2 CPUs (nproc), AMD EPYC, load 0.05`` for the report's first line."""
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cpus = len(os.sched_getaffinity(0))
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{cpus} CPUs (nproc), {model}; load average before: {load}"


def distribution(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/max (nearest rank) of ``values``, in the same unit; empty -> {}."""
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "p50": percentile(ordered, 0.50),
        "p95": percentile(ordered, 0.95),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1],
        "min": ordered[0],
        "mean": sum(ordered) / len(ordered),
    }


def fmt_ms(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# --------------------------------------------------------------------------- site


def device_entry(device: str, kind: str, room: str | None, interval: str) -> list[str]:
    lines = ["[[devices]]", f'id = "{device}"', f'kind = "{kind}"']
    if room is not None:
        lines.append(f'room = "{room}"')
    return [*lines, f'interval = "{interval}"', ""]


def room_entry(room: str, *, capacity: int, bookable: bool) -> list[str]:
    lines = ["[[rooms]]", f'id = "{room}"', f'name = "{room}"', f"capacity = {capacity}"]
    if bookable:
        lines.append("bookable = true")
    return [*lines, ""]


# --------------------------------------------------------------------------- controller


def centerctl_command() -> list[str]:
    """``.venv/bin/centerctl`` next to this interpreter, else ``python -m controller``."""
    script = Path(sys.executable).parent / "centerctl"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "controller"]


@dataclass
class CenterCtl(Controller):
    """``centerctl run --site FILE`` as a subprocess, with API tokens; HTTP helpers."""

    tokens: dict[str, list[str]] = field(default_factory=lambda: dict(TOKENS))
    _api: http.client.HTTPConnection | None = None

    def start(self) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("CENTER_")}
        env.update(
            CENTER_MQTT_URL=self.broker_url,
            CENTER_HTTP_HOST="127.0.0.1",
            CENTER_HTTP_PORT=str(self.http_port),
            CENTER_LOG_LEVEL="WARNING",
            CENTER_DATA_DIR=str(self.workdir / "data"),
            CENTER_API_TOKENS=json.dumps(self.tokens),
        )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*centerctl_command(), "run", "--site", str(self.site)],
                env=env,
                cwd=self.workdir,  # no stray .env from wherever the bench was started
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only the bench, which stops us
            )

    def call(
        self, method: str, path: str, *, token: str | None = None, body: Any = None
    ) -> tuple[int, Any]:
        """One API request over a kept-alive connection: (status, decoded JSON or None)."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = orjson.dumps(body) if body is not None else None
        for attempt in (1, 2):
            if self._api is None:
                self._api = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
            try:
                self._api.request(method, path, body=data, headers=headers)
                response = self._api.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException):
                self._api.close()
                self._api = None
                if attempt == 2:
                    raise
                continue
            try:
                decoded = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                decoded = raw.decode(errors="replace")
            return response.status, decoded
        raise AssertionError("unreachable")

    def locks_settled(self, locks: list[str], intent: str) -> bool:
        """/api/health says every lock in ``locks`` has ``intent`` as target, confirmed."""
        status = self.health()["locks"]["locks"]
        return all(
            lock in status and status[lock]["target"] == intent and status[lock]["confirmed"]
            for lock in locks
        )

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise BenchError(
                f"controller exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None
        super().stop()


def start_profiler(pid: int, output: Path, rate: int) -> subprocess.Popen[bytes]:
    """py-spy record (raw collapsed stacks), non-blocking: the controller is not paused."""
    binary = shutil.which("py-spy")
    if binary is None:
        raise BenchError("--profile needs py-spy on PATH (pip install py-spy)")
    return subprocess.Popen(
        [
            *(binary, "record", "--pid", str(pid), "--rate", str(rate), "--nonblocking"),
            *("--format", "raw", "--output", str(output)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


@dataclass
class CpuWatch:
    """CPU time of some processes between :meth:`begin` and :meth:`end`, in % of one core."""

    pids: dict[str, int]
    _start: dict[str, float] = field(default_factory=dict)
    _began: float = 0.0
    result: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def _cpu(pid: int) -> float:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system)

    def begin(self) -> None:
        self._began = time.monotonic()
        self._start = {name: self._cpu(pid) for name, pid in self.pids.items()}

    def end(self) -> dict[str, float]:
        wall = max(time.monotonic() - self._began, 1e-9)
        self.result = {
            name: 100 * (self._cpu(pid) - self._start[name]) / wall
            for name, pid in self.pids.items()
        }
        return self.result


def rss_mb(pid: int) -> float:
    try:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except psutil.Error:
        return 0.0


# --------------------------------------------------------------------------- locks


@dataclass(frozen=True, slots=True)
class Command:
    """One command a lock received: when (both clocks), which lock, LOCK or UNLOCK."""

    perf: float  # time.perf_counter() on receipt
    wall: float  # time.time() on receipt
    lock: str
    state: str


_REPORTED = {"LOCK": "LOCKED", "UNLOCK": "UNLOCKED"}


class LockEmulator:
    """Every lock of the site, as one paho client with its own network thread.

    It subscribes to ``{prefix}/+/set``, time-stamps each command the moment paho
    hands it over (before anything else is done with it), and answers like a real
    lock: the new state, retained, QoS 1, on ``{prefix}/{lock}/state``, so that the
    controller sees its command confirmed.
    """

    def __init__(self, port: int, prefix: str, locks: list[str]) -> None:
        self.port = port
        self.prefix = prefix
        self.locks = list(locks)
        self._known = frozenset(locks)
        self.commands: list[Command] = []
        self.unknown = 0  # messages on a /set topic that are not one of our locks
        self.bad = 0  # payloads that are not a lock command
        self.state = dict.fromkeys(locks, "UNLOCKED")
        self._condition = threading.Condition()
        self._subscribed = threading.Event()
        self._client: paho.Client | None = None

    def start(self, initial: str) -> None:
        """Connect, subscribe, and publish every lock's retained ``initial`` state."""
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"bench-locks-{os.getpid()}",
        )
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.on_message = self._on_message
        client.on_subscribe = lambda *_: self._subscribed.set()
        client.connect("127.0.0.1", self.port, keepalive=60)
        # paho leaves Nagle on; a lock's reply must not wait for the broker's delayed ACK.
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.loop_start()
        self._client = client
        client.subscribe(f"{self.prefix}/+/set", qos=1)
        if not self._subscribed.wait(10):
            raise BenchError("the lock emulator's subscription was not acknowledged")
        infos = [self._report(lock, initial) for lock in self.locks]
        for info in infos:
            info.wait_for_publish(10)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish something else through this client (sensor values a bench needs)."""
        assert self._client is not None
        self._client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    def _report(self, lock: str, state: str) -> paho.MQTTMessageInfo:
        assert self._client is not None
        self.state[lock] = state
        payload = orjson.dumps({"state": state, "door": "closed"})
        return self._client.publish(f"{self.prefix}/{lock}/state", payload, qos=1, retain=True)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        perf = time.perf_counter()
        wall = time.time()
        parts = message.topic.split("/")
        lock = parts[-2] if len(parts) >= 2 else ""
        if lock not in self._known:
            self.unknown += 1
            return
        try:
            command = orjson.loads(message.payload)["state"]
            reported = _REPORTED[command]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.bad += 1
            return
        with self._condition:
            self.commands.append(Command(perf, wall, lock, command))
            self._condition.notify_all()
        self._report(lock, reported)

    def mark(self) -> int:
        """A position in the command log; pass it to :meth:`since` / :meth:`wait`."""
        with self._condition:
            return len(self.commands)

    def since(self, mark: int) -> list[Command]:
        with self._condition:
            return self.commands[mark:]

    def wait(
        self, predicate: Callable[[list[Command]], bool], mark: int, timeout: float
    ) -> list[Command] | None:
        """Wait until ``predicate(commands since mark)``; the commands, or None at the deadline."""
        with self._condition:
            done = self._condition.wait_for(lambda: predicate(self.commands[mark:]), timeout)
            return self.commands[mark:] if done else None

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None


class WireProbe:
    """A second, passive subscriber to ``{prefix}/+/set`` that only time-stamps.

    It runs in its own process (a thread here would wait for the GIL behind the
    lock client's callbacks and stamp late): a raw MQTT connection, QoS 0
    subscription (nothing to acknowledge), read in 64 KiB chunks; each command is
    stamped when the chunk holding it comes out of ``recv`` (``perf_counter`` is
    CLOCK_MONOTONIC, one clock for every process on Linux), so its time is when the
    broker's copy reached this machine's socket, without a full MQTT client's
    per-message cost. Against :class:`LockEmulator`'s stamps it shows what the
    measuring client itself adds to the last of 20 commands (one client parses and
    answers all 20 in turn, where 20 real locks would each parse one).
    """

    def __init__(self, port: int, prefix: str, locks: list[str]) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe(duplex=False)
        self.process = context.Process(
            target=_probe_main, args=(port, prefix, locks, child), daemon=True
        )
        self.process.start()
        child.close()
        self.commands: list[Command] = []
        if not self._pipe.poll(30):
            self.stop()
            raise BenchError("the wire probe did not subscribe within 30 s")
        message = self._pipe.recv()
        if message != "ready":
            self.stop()
            raise BenchError(f"wire probe: {message}")

    def _take(self, timeout: float) -> None:
        """Move what the probe process sent into :attr:`commands` (waiting up to ``timeout``)."""
        with contextlib.suppress(EOFError, OSError):
            while self._pipe.poll(timeout):
                batch = self._pipe.recv()
                if isinstance(batch, str):
                    raise BenchError(f"wire probe: {batch}")
                self.commands.extend(Command(*item) for item in batch)
                timeout = 0.0

    def mark(self) -> int:
        self._take(0.0)
        return len(self.commands)

    def wait(
        self, predicate: Callable[[list[Command]], bool], mark: int, timeout: float
    ) -> list[Command] | None:
        deadline = time.monotonic() + timeout
        while True:
            self._take(0.0)
            if predicate(self.commands[mark:]):
                return self.commands[mark:]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._take(remaining)
            if predicate(self.commands[mark:]):
                return self.commands[mark:]
            if time.monotonic() >= deadline:
                return None

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._pipe.close()


def _probe_main(port: int, prefix: str, locks: list[str], conn: Connection) -> None:
    """The wire probe's process: subscribe, then send each chunk's commands as tuples."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    known = frozenset(locks)
    buffer = bytearray()
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(_connect_packet(f"bench-wire-{os.getpid()}"))

        def read_packet() -> tuple[int, bytes]:
            while (packet := _take_packet(buffer)) is None:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("broker closed the connection")
                buffer.extend(chunk)
            return packet

        if read_packet()[0] >> 4 != 2:
            raise BenchError("no CONNACK")
        topic = f"{prefix}/+/set".encode()
        body = (1).to_bytes(2, "big") + len(topic).to_bytes(2, "big") + topic + b"\x00"
        sock.sendall(b"\x82" + _varint(len(body)) + body)
        if read_packet()[0] >> 4 != 9:
            raise BenchError("the subscription was not acknowledged")
        sock.settimeout(None)
    except Exception as error:
        conn.send(f"{type(error).__name__}: {error}")
        return
    conn.send("ready")
    with contextlib.suppress(OSError, ConnectionError, BrokenPipeError):
        while chunk := sock.recv(65536):
            perf = time.perf_counter()
            wall = time.time()
            buffer.extend(chunk)
            found: list[tuple[float, float, str, str]] = []
            while (packet := _take_packet(buffer)) is not None:
                first, data = packet
                if first >> 4 != 3:
                    continue
                length = int.from_bytes(data[:2], "big")
                parts = data[2 : 2 + length].decode(errors="replace").split("/")
                lock = parts[-2] if len(parts) >= 2 else ""
                if lock not in known:
                    continue
                try:
                    state = orjson.loads(data[2 + length :])["state"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue
                found.append((perf, wall, lock, str(state)))
            if found:
                conn.send(found)


def _varint(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(out)


def _connect_packet(client_id: str) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session, keepalive off."""
    name = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + len(name).to_bytes(2, "big") + name
    return b"\x10" + _varint(len(body)) + body


def _take_packet(buffer: bytearray) -> tuple[int, bytes] | None:
    """Remove and return the first whole MQTT packet in ``buffer``; None if incomplete."""
    if len(buffer) < 2:
        return None
    length = 0
    shift = 0
    position = 1
    while True:
        if position >= len(buffer):
            return None
        byte = buffer[position]
        length |= (byte & 0x7F) << shift
        position += 1
        if not byte & 0x80:
            break
        shift += 7
    end = position + length
    if len(buffer) < end:
        return None
    first = buffer[0]
    body = bytes(buffer[position:end])
    del buffer[:end]
    return first, body


def every_lock(locks: list[str], state: str) -> Callable[[list[Command]], bool]:
    """A :meth:`LockEmulator.wait` predicate: each of ``locks`` got ``state`` at least once."""
    wanted = frozenset(locks)

    def predicate(commands: list[Command]) -> bool:
        return wanted <= {command.lock for command in commands if command.state == state}

    return predicate


class BenchReport(Protocol):
    @property
    def failures(self) -> list[str]: ...

    def to_json(self) -> dict[str, Any]: ...


ReportT = TypeVar("ReportT", bound=BenchReport)


def bench_main(
    args: Any, run: Callable[[Any], ReportT], format_report: Callable[[ReportT], str]
) -> int:
    """Run a benchmark and print its report; the exit status the module docs promise:
    0 targets met, 1 missed, 2 could not run, 130 interrupted (Ctrl-C or SIGTERM)."""
    with signals_as_interrupt():
        try:
            report = run(args)
        except BenchError as error:
            print(f"bench: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("bench: interrupted; everything it started is stopped", file=sys.stderr)
            return 130
    print(json.dumps(report.to_json(), indent=2) if args.json else format_report(report))
    return 1 if report.failures else 0


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, raise_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
