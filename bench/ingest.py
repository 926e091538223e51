"""MQTT ingest benchmark: how many device messages a second the controller takes, and how fast.

Run by hand, not by pytest::

    python bench/ingest.py                       # 1000 devices, 10,000 msg/s for 10 s
    python bench/ingest.py --rate 40000 --json   # machine-readable report
    python bench/ingest.py --rate 40000 --profile /tmp/ingest.txt   # py-spy the target phase
    python bench/pyspy_top.py /tmp/ingest.txt    # ... and read where the time went

What it does, sharing nothing with the controller but MQTT and HTTP:

1. starts its own Mosquitto on a free loopback port, configured so that the broker
   itself never drops a message: ``max_queued_messages 0`` (no limit). For QoS 0
   messages to a subscriber that reads slower than they arrive, mosquitto's only
   choices are "send" and "drop", and with no limit it always sends, queueing the
   backlog in memory. So a loss can only come from the controller itself;
2. writes a site file with N devices (one mmWave occupancy sensor with a count and
   one climate sensor per room, 2 devices a room) and starts
   ``python -m controller run`` on it as a subprocess;
3. throughput: a publisher process speaking raw MQTT 3.1.1 (pre-encoded QoS 0
   PUBLISH packets, written in ``sendall`` chunks every 2 ms) sends at the target
   rate, every message changing its device's value; the controller's
   ``/api/health`` counters are polled every 50 ms until every message is counted
   or the counter stops moving. Sustained rate = messages processed / (first publish
   -> the poll that saw the last one). Then "max" mode: a fixed number of messages
   written as fast as the broker takes them, so the controller works through a
   backlog at its own ceiling;
4. after each throughput phase, a marker message tells when every room state the
   controller published has come out of the broker (the room-state output lag);
5. latency: at a low rate, each occupancy message gives its room a new count, and a
   subscriber on ``center/<site>/room/+/state`` times publish -> room state. This
   includes the controller's own publish back through the broker, and with stock
   Mosquitto (``set_tcp_nodelay false``) Nagle's algorithm on the broker's sockets;
   ``--broker-nodelay`` shows the latency without it.

Exit status: 0 when the target-rate phase lost nothing, had no bad payloads and got
every room state out; 1 when it did not; 2 when the benchmark could not run; 130 on
Ctrl-C.

No wait sleeps for things to settle: every wait polls a condition against a deadline
(the publisher's pacing and the 50 ms poll period are the only sleeps). Everything
started here is stopped on exit, Ctrl-C, SIGTERM and errors included.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import paho.mqtt.client as paho
import psutil
from paho.mqtt.enums import CallbackAPIVersion

SITE_ID = "bench"
PREFIX = f"center/{SITE_ID}"
ROOM_CAPACITY = 50
# Occupancy counts: the throughput phases cycle through 1..THROUGHPUT_COUNTS and the
# latency phase uses the counts above, so its first message always changes the room.
THROUGHPUT_COUNTS = 20
LATENCY_COUNTS = range(THROUGHPUT_COUNTS + 1, ROOM_CAPACITY + 1)
POLL_INTERVAL = 0.05  # seconds between /api/health polls while measuring
CHUNK_MESSAGES = 1000  # most messages the publisher writes in one sendall


class BenchError(Exception):
    """The benchmark could not run (a process did not start, a deadline passed)."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(
    condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``condition`` until it returns something truthy; BenchError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout``."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def peak_rss_bytes(pid: int) -> int | None:
    """The kernel's high-water mark of a process's resident memory (VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------- broker


@dataclass
class Broker:
    """A private Mosquitto on a loopback port that never drops a message itself."""

    workdir: Path
    tcp_nodelay: bool = False
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def config(self) -> str:
        # max_queued_messages 0: no per-client limit. For QoS 0 messages to a client
        # that reads slower than they arrive, mosquitto's only choices are "send"
        # or "drop" (mosquitto.conf(5): QoS 0 is never queued for online clients);
        # with no limit it always sends, and the backlog waits in its output queue.
        # max_inflight_bytes / max_queued_bytes stay at 0 (no limit) by default.
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence false",
            "max_queued_messages 0",
            "log_dest none",
        ]
        if self.tcp_nodelay:
            lines.append("set_tcp_nodelay true")
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(binary):
            raise BenchError("mosquitto is not installed (apt-get install -y mosquitto)")
        config = self.workdir / "mosquitto.conf"
        config.write_text(self.config())
        self.process = subprocess.Popen(
            [binary, "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches only the bench, which stops us in order
        )

        def listening() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BenchError(f"mosquitto exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_for(listening, timeout=10, what="mosquitto to listen")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


# --------------------------------------------------------------------------- site


@dataclass(frozen=True)
class Layout:
    """The generated site: rooms, and devices in the order the publisher cycles through."""

    rooms: list[str]
    occupancy: list[str]  # occupancy[i] is the occupancy sensor in rooms[i]
    devices: list[tuple[str, str, str]]  # (device id, kind, room), occupancy/climate interleaved


def make_layout(device_count: int) -> Layout:
    """One occupancy and one climate sensor per room (an odd count: one room without climate)."""
    if device_count < 1:
        raise BenchError("--devices must be at least 1")
    room_count = (device_count + 1) // 2
    width = len(str(room_count))
    rooms = [f"room-{i:0{width}d}" for i in range(1, room_count + 1)]
    occupancy = [f"occ-{i:0{width}d}" for i in range(1, room_count + 1)]
    devices: list[tuple[str, str, str]] = []
    for i, room in enumerate(rooms):
        devices.append((occupancy[i], "occupancy", room))
        if len(devices) < device_count:
            devices.append((f"clim-{i + 1:0{width}d}", "climate", room))
    return Layout(rooms, occupancy, devices)


def site_toml(layout: Layout) -> str:
    """The site file for ``layout``, valid per controller.site."""
    parts = [
        "[site]",
        f'id = "{SITE_ID}"',
        'name = "Ingest benchmark"',
        'timezone = "Asia/Shanghai"',
        'hours = { open = "00:00", close = "23:59" }',
        "",
    ]
    for room in layout.rooms:
        parts += ["[[rooms]]", f'id = "{room}"', f'name = "{room}"', f"capacity = {ROOM_CAPACITY}"]
        parts.append("")
    for device, kind, room in layout.devices:
        parts += [
            "[[devices]]",
            f'id = "{device}"',
            f'kind = "{kind}"',
            f'room = "{room}"',
            'interval = "30s"',
            "",
        ]
    return "\n".join(parts)


# --------------------------------------------------------------------------- controller


@dataclass
class Controller:
    """``python -m controller run`` as a subprocess, watched through its HTTP API."""

    site: Path
    broker_url: str
    workdir: Path
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _http: http.client.HTTPConnection | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "controller.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("CENTER_")}
        env.update(
            CENTER_MQTT_URL=self.broker_url,
            CENTER_HTTP_HOST="127.0.0.1",
            CENTER_HTTP_PORT=str(self.http_port),
            CENTER_LOG_LEVEL="WARNING",
            CENTER_DATA_DIR=str(self.workdir / "data"),
        )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "controller", "run", "--site", str(self.site)],
                env=env,
                cwd=self.workdir,  # no stray .env from wherever the bench was started
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def health(self) -> dict[str, Any]:
        """GET /api/health (200 or 503, both JSON) over one kept-alive connection."""
        for attempt in (1, 2):
            if self._http is None:
                self._http = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
            try:
                self._http.request("GET", "/api/health")
                response = self._http.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                self._http.close()
                self._http = None
                if attempt == 2:
                    raise
                continue
            result: dict[str, Any] = orjson.loads(body)
            return result
        raise AssertionError("unreachable")

    def wait_connected(self, timeout: float = 30.0) -> None:
        """Poll /api/health until it reports the MQTT link up."""

        def connected() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BenchError(
                    f"controller exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                return bool(self.health()["mqtt"]["connected"])
            except (OSError, http.client.HTTPException, ValueError):
                return False

        wait_for(connected, timeout=timeout, what="the controller's MQTT link", interval=0.05)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self.process is not None:
            stop_process(self.process)


# --------------------------------------------------------------------------- MQTT packets


def _remaining_length(length: int) -> bytes:
    """MQTT's variable-length integer (1-4 bytes, 7 bits each)."""
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(out)


def _utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def connect_packet(client_id: str) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session, keepalive off (the publisher never idles long)."""
    body = _utf8("MQTT") + bytes([4, 0x02]) + (0).to_bytes(2, "big") + _utf8(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes) -> bytes:
    """PUBLISH at QoS 0, not retained."""
    body = _utf8(topic) + payload
    return b"\x30" + _remaining_length(len(body)) + body


DISCONNECT = b"\xe0\x00"


@dataclass(frozen=True)
class PacketStream:
    """Pre-encoded PUBLISH packets back to back; message i is at offsets[i % n]."""

    data: bytes
    offsets: list[int]  # n + 1 entries: start of each packet, then the end

    @property
    def messages(self) -> int:
        return len(self.offsets) - 1


def build_stream(packets: list[bytes]) -> PacketStream:
    offsets = [0]
    for packet in packets:
        offsets.append(offsets[-1] + len(packet))
    return PacketStream(b"".join(packets), offsets)


def state_topic(device: str) -> str:
    return f"{PREFIX}/{device}/state"


def throughput_stream(layout: Layout) -> PacketStream:
    """THROUGHPUT_COUNTS rounds over every device; each round gives every device a new value.

    Occupancy and climate messages alternate; the cycle repeats seamlessly, since the
    last round's values differ from the first's, so every message changes its device.
    """
    packets: list[bytes] = []
    for round_ in range(THROUGHPUT_COUNTS):
        for index, (device, kind, _) in enumerate(layout.devices):
            if kind == "occupancy":
                payload = b'{"occupied":true,"count":%d}' % (1 + round_)
            else:
                temperature = 20.0 + round_ * 0.1 + (index % 7) * 0.5
                humidity = 40.0 + round_ * 0.5
                payload = b'{"temperature":%.1f,"humidity":%.1f}' % (temperature, humidity)
            packets.append(publish_packet(state_topic(device), payload))
    return build_stream(packets)


def latency_plan(layout: Layout, total: int) -> list[tuple[str, int]]:
    """(room, count) per latency message: rooms round-robin, each time with a new count."""
    plan: list[tuple[str, int]] = []
    rooms = len(layout.rooms)
    for j in range(total):
        visit = j // rooms
        plan.append((layout.rooms[j % rooms], LATENCY_COUNTS[visit % len(LATENCY_COUNTS)]))
    return plan


def latency_stream(layout: Layout, plan: list[tuple[str, int]]) -> PacketStream:
    occupancy_of = dict(zip(layout.rooms, layout.occupancy, strict=True))
    return build_stream(
        [
            publish_packet(state_topic(occupancy_of[room]), b'{"occupied":true,"count":%d}' % count)
            for room, count in plan
        ]
    )


# --------------------------------------------------------------------------- publisher


@dataclass(frozen=True)
class PublishSpec:
    port: int
    stream: PacketStream
    total: int  # messages to send (the stream repeats if it is shorter)
    rate: float | None  # messages per second; None = as fast as possible
    slice_seconds: float  # pacing granularity; 0 = wake up for every message
    record_times: bool  # return each message's send time (latency phase)


@dataclass
class PublishResult:
    sent: int = 0
    first_send: float = 0.0  # time.monotonic() just before the first sendall
    last_send: float = 0.0  # just after the last sendall returned
    drained: float = 0.0  # the broker closed the connection after our DISCONNECT
    send_times: list[float] = field(default_factory=list)
    error: str | None = None


def publisher_main(spec: PublishSpec, conn: Connection) -> None:
    """Entry point of the publisher process: connect, say ready, wait for go, send, report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    result = PublishResult()
    try:
        with socket.create_connection(("127.0.0.1", spec.port), timeout=30) as sock:
            # No Nagle: a lone message (latency phase) must leave at once, not wait
            # for the broker's delayed ACK of the previous one.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(connect_packet(f"bench-publisher-{os.getpid()}"))
            connack = _recv_exactly(sock, 4)
            if connack[0] != 0x20 or connack[3] != 0:
                raise BenchError(f"broker refused the publisher: {connack.hex()}")
            conn.send("ready")
            conn.recv()  # go
            _send(sock, spec, result)
            sock.sendall(DISCONNECT)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):  # the broker closes once it has read everything
                pass
            result.drained = time.monotonic()
    except Exception as error:
        result.error = f"{type(error).__name__}: {error}"
    conn.send(result)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise BenchError("broker closed the connection")
        data += chunk
    return data


def _send(sock: socket.socket, spec: PublishSpec, result: PublishResult) -> None:
    """Send ``spec.total`` messages, paced in time slices (or flat out), counting exactly."""
    stream = spec.stream
    view = memoryview(stream.data)
    offsets = stream.offsets
    cycle = stream.messages
    chunk = min(CHUNK_MESSAGES, cycle)
    times = result.send_times
    sent = 0
    start = time.monotonic()
    result.first_send = start
    while sent < spec.total:
        if spec.rate is None:
            due = spec.total
        else:
            due = min(spec.total, int((time.monotonic() - start) * spec.rate) + 1)
        while sent < due:
            count = min(due - sent, chunk)
            position = sent % cycle
            end = position + count
            stamp = time.monotonic()
            if end <= cycle:
                sock.sendall(view[offsets[position] : offsets[end]])
            else:
                sock.sendall(view[offsets[position] :])
                sock.sendall(view[: offsets[end - cycle]])
            if spec.record_times:
                times.extend([stamp] * count)
            sent += count
            result.sent = sent
        if spec.rate is not None and sent < spec.total:
            wake = max(start + sent / spec.rate, time.monotonic() + spec.slice_seconds)
            pause = wake - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing to the target rate, not waiting for a condition
    result.last_send = time.monotonic()


@contextlib.contextmanager
def publisher(spec: PublishSpec) -> Iterator[Connection]:
    """A connected, ready publisher process; yields the pipe to send "go" and get the result."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=publisher_main, args=(spec, child), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(30):
            raise BenchError("the publisher did not connect within 30 s")
        message = parent.recv()
        if isinstance(message, PublishResult):
            raise BenchError(f"publisher failed: {message.error}")
        yield parent
    finally:
        if process.is_alive():
            process.terminate()
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
        parent.close()


# --------------------------------------------------------------------------- throughput


@dataclass
class ProcessWatch:
    """CPU time and peak memory of one process, sampled at every health poll."""

    process: psutil.Process
    cpu_start: float = 0.0
    cpu_marked: float = 0.0  # CPU time at the last mark (when the counter last moved)
    peak_rss: int = 0

    def _cpu(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def begin(self) -> None:
        self.cpu_start = self.cpu_marked = self._cpu()
        self.sample(mark=False)

    def sample(self, *, mark: bool) -> None:
        """Track peak RSS; with ``mark``, note the CPU time used so far."""
        with contextlib.suppress(psutil.Error):
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            if mark:
                self.cpu_marked = self._cpu()

    def cpu_seconds(self) -> float:
        """CPU time from begin() to the last mark."""
        return self.cpu_marked - self.cpu_start


@dataclass
class ThroughputResult:
    mode: str  # "target" or "max"
    target_rate: float | None
    sent: int
    received: int
    lost: int
    bad_payloads: int
    handler_errors: int
    room_states_published: int
    publish_seconds: float  # first sendall to the broker having read the last byte
    publish_rate: float
    backlog_at_publish_end: int  # sent but not yet counted at the last sendall (50 ms polls)
    drain_seconds: float  # from the last sendall to the last message processed
    processing_seconds: float  # first publish to last message processed
    sustained_rate: float
    kept_up: bool | None  # sustained >= 95 % of the target, drained within 1 s (None: max)
    controller_cpu_percent: float  # of one core, from "go" to the last message processed
    broker_cpu_percent: float
    controller_peak_rss_mb: float
    # Last message ingested -> every room state it caused delivered; None: not within
    # --marker-timeout (the controller's room-state output fell behind or lost some).
    room_state_lag_seconds: float | None
    # /api/health round trips while the phase ran: how long the event loop made HTTP wait.
    health_p50_ms: float
    health_max_ms: float


@dataclass
class Measurement:
    """What the health poller saw while one phase ran."""

    started: float = 0.0  # when the publisher was told to go
    received: int = 0
    done_at: float = 0.0  # when the counter was last seen moving (or reached the total)
    backlog_at_publish_end: int = 0
    publish: PublishResult = field(default_factory=PublishResult)
    samples: list[tuple[float, int]] = field(default_factory=list)  # (time, received)
    health_seconds: list[float] = field(default_factory=list)  # each /api/health round trip

    def received_by(self, moment: float) -> int:
        """Messages counted at the last poll at or before ``moment``."""
        counted = 0
        for at, received in self.samples:
            if at > moment:
                break
            counted = received
        return counted


def ingest_counters(health: dict[str, Any]) -> tuple[int, int, int, int]:
    ingest = health["ingest"]
    return (
        int(ingest["messages"]),
        int(ingest["bad_payloads"]),
        int(ingest["room_states_published"]),
        int(ingest["event_handler_errors"]),
    )


def measure(
    controller: Controller,
    spec: PublishSpec,
    watches: list[ProcessWatch],
    *,
    idle_timeout: float,
    deadline_seconds: float,
    on_go: Callable[[], None] | None = None,
) -> tuple[Measurement, tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Run one publisher and poll health every 50 ms until all is counted or nothing moves.

    Returns the measurement and the counters before and after.
    """
    measurement = Measurement()
    with publisher(spec) as pipe:
        before = ingest_counters(controller.health())
        for watch in watches:
            watch.begin()
        if on_go is not None:
            on_go()
        pipe.send("go")
        last_change = measurement.started = measurement.done_at = time.monotonic()
        deadline = last_change + deadline_seconds
        published: PublishResult | None = None
        counters = before
        while True:
            tick = time.monotonic()
            counters = ingest_counters(controller.health())
            now = time.monotonic()
            measurement.health_seconds.append(now - tick)
            received = counters[0] - before[0]
            moved = received != measurement.received
            for watch in watches:
                watch.sample(mark=moved)
            measurement.samples.append((now, received))
            if moved:
                measurement.received = received
                measurement.done_at = now
                last_change = now
            if published is None and pipe.poll():
                published = pipe.recv()
                assert isinstance(published, PublishResult)
                if published.error:
                    raise BenchError(f"publisher failed: {published.error}")
                measurement.publish = published
            if published is not None and (
                received >= published.sent or now - last_change > idle_timeout
            ):
                break
            if now > deadline:
                raise BenchError(f"phase did not finish within {deadline_seconds:.0f} s")
            pause = tick + POLL_INTERVAL - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # the poll period, not a wait for a condition
    assert published is not None
    measurement.backlog_at_publish_end = published.sent - measurement.received_by(
        published.last_send
    )
    return measurement, before, counters


def run_throughput(
    controller: Controller,
    broker: Broker,
    stream: PacketStream,
    *,
    mode: str,
    rate: float | None,
    total: int,
    idle_timeout: float,
    marker: RoomStateMarker,
    marker_timeout: float,
    profile: Path | None = None,
) -> ThroughputResult:
    """One throughput phase (paced at ``rate``, or flat out when ``rate`` is None)."""
    assert broker.process is not None
    controller_watch = ProcessWatch(psutil.Process(controller.pid))
    broker_watch = ProcessWatch(psutil.Process(broker.process.pid))
    spec = PublishSpec(
        port=broker.port,
        stream=stream,
        total=total,
        rate=rate,
        slice_seconds=0.002,
        record_times=False,
    )
    profiler: subprocess.Popen[bytes] | None = None

    def start_profiler() -> None:
        nonlocal profiler
        if profile is not None:
            profiler = start_py_spy(controller.pid, profile)

    expected = total / rate if rate else total / 20_000
    try:
        measurement, before, after = measure(
            controller,
            spec,
            [controller_watch, broker_watch],
            idle_timeout=idle_timeout,
            deadline_seconds=60 + 5 * expected,
            on_go=start_profiler,
        )
        controller_cpu = controller_watch.cpu_seconds()
        broker_cpu = broker_watch.cpu_seconds()
    finally:
        if profiler is not None:
            stop_py_spy(profiler)
    room_states_out = marker.sync(marker_timeout)
    published = measurement.publish
    received = measurement.received
    processing = max(measurement.done_at - published.first_send, 1e-9)
    window = max(measurement.done_at - measurement.started, 1e-9)
    publish_seconds = max(published.drained - published.first_send, 1e-9)
    drain = max(measurement.done_at - published.last_send, 0.0)
    sustained = received / processing
    return ThroughputResult(
        mode=mode,
        target_rate=rate,
        sent=published.sent,
        received=received,
        lost=published.sent - received,
        bad_payloads=after[1] - before[1],
        handler_errors=after[3] - before[3],
        room_states_published=after[2] - before[2],
        publish_seconds=publish_seconds,
        publish_rate=published.sent / publish_seconds,
        backlog_at_publish_end=measurement.backlog_at_publish_end,
        drain_seconds=drain,
        processing_seconds=processing,
        sustained_rate=sustained,
        kept_up=None if rate is None else sustained >= 0.95 * rate and drain < 1.0,
        controller_cpu_percent=100 * controller_cpu / window,
        broker_cpu_percent=100 * broker_cpu / window,
        controller_peak_rss_mb=controller_watch.peak_rss / 2**20,
        room_state_lag_seconds=(
            None if room_states_out is None else max(room_states_out - measurement.done_at, 0.0)
        ),
        health_p50_ms=1000 * percentile(sorted(measurement.health_seconds), 0.5),
        health_max_ms=1000 * max(measurement.health_seconds),
    )


def start_py_spy(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy record (raw collapsed stacks) on the controller; stopped with SIGINT."""
    binary = shutil.which("py-spy")
    if binary is None:
        raise BenchError("--profile needs py-spy on PATH (pip install py-spy)")
    process = subprocess.Popen(
        [
            *(binary, "record", "--pid", str(pid), "--rate", "200"),
            *("--format", "raw", "--output", str(output)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    return process


def stop_py_spy(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stderr is not None:
        errors = process.stderr.read().decode(errors="replace").strip()
        process.stderr.close()
        if process.returncode not in (0, None) and errors:
            print(f"py-spy: {errors}", file=sys.stderr)


# --------------------------------------------------------------------------- latency


@dataclass
class RoomStateListener:
    """A paho client (its own network thread) timing every live room-state message on ``topic``."""

    port: int
    topic: str
    received: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    messages: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _subscribed: threading.Event = field(default_factory=threading.Event)
    _client: paho.Client | None = None

    def start(self) -> None:
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"bench-listener-{os.getpid()}-{id(self)}",
        )
        client.on_message = self._on_message
        client.on_subscribe = lambda *_: self._subscribed.set()
        client.connect("127.0.0.1", self.port)
        client.subscribe(self.topic, qos=0)
        client.loop_start()
        self._client = client
        wait_for(self._subscribed.is_set, timeout=10, what="the room-state subscription")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        stamp = time.monotonic()
        if message.retain:
            return  # a retained copy sent on subscribe, not a live change
        try:
            state = orjson.loads(message.payload)
            key = (str(state["room"]), int(state["count"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return
        with self._lock:
            self.messages += 1
            self.received.setdefault(key, []).append(stamp)

    def count(self) -> int:
        with self._lock:
            return self.messages

    def arrivals(self, key: tuple[str, int]) -> list[float]:
        with self._lock:
            return list(self.received.get(key, ()))

    def publish(self, topic: str, payload: bytes) -> None:
        assert self._client is not None
        self._client.publish(topic, payload, qos=0)

    def snapshot(self) -> dict[tuple[str, int], list[float]]:
        with self._lock:
            return {key: list(times) for key, times in self.received.items()}

    def stop(self) -> None:
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
            self._client = None


@dataclass
class LatencyResult:
    rate: float
    sent: int
    matched: int
    room_states_received: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None


def match_latencies(
    plan: list[tuple[str, int]],
    send_times: list[float],
    received: dict[tuple[str, int], list[float]],
) -> list[float]:
    """Publish -> room state, per message: the first state with its (room, count) after it.

    A (room, count) can repeat in a long phase; a receipt only counts for the send it
    follows and before the same key is sent again.
    """
    sends: dict[tuple[str, int], list[float]] = {}
    for key, stamp in zip(plan, send_times, strict=True):
        sends.setdefault(key, []).append(stamp)
    latencies: list[float] = []
    for key, stamps in sends.items():
        arrivals = sorted(received.get(key, []))
        for i, sent_at in enumerate(stamps):
            following = stamps[i + 1] if i + 1 < len(stamps) else math.inf
            at = bisect_left(arrivals, sent_at)
            if at < len(arrivals) and arrivals[at] < following:
                latencies.append(arrivals[at] - sent_at)
    return latencies


@dataclass
class RoomStateMarker:
    """Tells when the controller's room-state output has caught up with its input.

    The marker empties the first room ({"occupied": false, "count": 0}), which
    changes its state whenever a throughput phase has filled it since the last
    marker, and waits for that state to come out of the broker. Room states leave
    through one connection, in order, so the rooms that were due before the marker
    have been delivered by then; a room held back by the controller's per-room
    pacing (a few states a second) may still follow within that pacing interval.
    """

    listener: RoomStateListener
    room: str
    device: str

    def sync(self, timeout: float) -> float | None:
        """Send the marker; return the time.monotonic() its room state arrived (None: never)."""
        key = (self.room, 0)
        sent_at = time.monotonic()
        self.listener.publish(state_topic(self.device), b'{"occupied":false,"count":0}')

        def arrived() -> float | None:
            later = [stamp for stamp in self.listener.arrivals(key) if stamp >= sent_at]
            return later[0] if later else None

        try:
            arrival: float = wait_for(arrived, timeout=timeout, what="the room-state marker")
        except BenchError:
            return None
        return arrival


def wait_room_output_quiet(controller: Controller, *, quiet: float = 0.5) -> None:
    """Poll until the controller has published no room state for ``quiet`` seconds.

    Rooms the pacing held back after a throughput phase go out within its interval;
    the latency phase must not start behind them.
    """
    last = ingest_counters(controller.health())[2]
    since = time.monotonic()

    def settled() -> bool:
        nonlocal last, since
        published = ingest_counters(controller.health())[2]
        if published != last:
            last, since = published, time.monotonic()
        return time.monotonic() - since >= quiet

    wait_for(settled, timeout=30, what="the room-state output to go quiet", interval=0.05)


def run_latency(
    controller: Controller, broker: Broker, layout: Layout, *, rate: float, seconds: float
) -> LatencyResult:
    """Occupancy messages at ``rate``, each giving its room a new count; time each change.

    Rooms are visited round-robin, so each room gets ``rate / rooms`` messages a
    second; keep that under the controller's per-room pacing (4 a second), or states
    are coalesced and fewer messages are matched.
    """
    wait_room_output_quiet(controller)
    total = max(1, round(rate * seconds))
    plan = latency_plan(layout, total)
    spec = PublishSpec(
        port=broker.port,
        stream=latency_stream(layout, plan),
        total=total,
        rate=rate,
        slice_seconds=0.0,  # one message per wake-up, so each send time is exact
        record_times=True,
    )
    listener = RoomStateListener(broker.port, f"{PREFIX}/room/+/state")
    listener.start()
    try:
        measurement, _, _ = measure(
            controller, spec, [], idle_timeout=3.0, deadline_seconds=60 + 5 * seconds
        )
        published = measurement.publish

        def all_arrived() -> bool:
            return len(match_latencies(plan, published.send_times, listener.snapshot())) >= total

        # Room states travel controller -> broker -> us after the ingest counted them.
        with contextlib.suppress(BenchError):
            wait_for(all_arrived, timeout=5, what="room states", interval=0.05)
        latencies = sorted(match_latencies(plan, published.send_times, listener.snapshot()))
        states = listener.count()
    finally:
        listener.stop()
    milliseconds = [value * 1000 for value in latencies]

    def pick(fraction: float) -> float | None:
        return percentile(milliseconds, fraction) if milliseconds else None

    return LatencyResult(
        rate=rate,
        sent=published.sent,
        matched=len(milliseconds),
        room_states_received=states,
        p50_ms=pick(0.50),
        p90_ms=pick(0.90),
        p99_ms=pick(0.99),
        max_ms=milliseconds[-1] if milliseconds else None,
        mean_ms=sum(milliseconds) / len(milliseconds) if milliseconds else None,
    )


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    devices: int
    rooms: int
    cpus: int | None
    target: ThroughputResult
    max: ThroughputResult | None
    latency: LatencyResult | None
    controller_peak_rss_mb: float
    controller_vm_hwm_mb: float | None
    broker_tcp_nodelay: bool
    profile: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _delivery(result: ThroughputResult) -> str:
    if result.room_state_lag_seconds is None:
        return "output STUCK: the marker's room state never came (see --marker-timeout)"
    return f"output caught up {result.room_state_lag_seconds:.2f} s after the last message in"


def _throughput_lines(result: ThroughputResult) -> list[str]:
    title = (
        f"Throughput at {result.target_rate:,.0f} msg/s"
        if result.target_rate
        else "Throughput, as fast as possible (max mode)"
    )
    lines = [
        title,
        f"  sent               {result.sent:,} in {result.publish_seconds:.2f} s "
        f"({result.publish_rate:,.0f} msg/s published)",
        f"  received           {result.received:,}",
        f"  lost               {result.lost:,}",
        f"  bad payloads       {result.bad_payloads:,}"
        + (f"   handler errors {result.handler_errors:,}" if result.handler_errors else ""),
        f"  room states out    {result.room_states_published:,}; " + _delivery(result),
        f"  sustained          {result.sustained_rate:,.0f} msg/s "
        f"(first publish -> last processed, {result.processing_seconds:.2f} s)",
        f"  backlog at end     {result.backlog_at_publish_end:,} messages, drained in "
        f"{result.drain_seconds:.2f} s",
        f"  controller CPU     {result.controller_cpu_percent:.0f} % of one core "
        f"(broker {result.broker_cpu_percent:.0f} %)",
        f"  controller RSS     {result.controller_peak_rss_mb:.1f} MB peak (polled)",
        f"  /api/health        p50 {result.health_p50_ms:.1f} ms, "
        f"max {result.health_max_ms:.0f} ms (HTTP waiting for the busy event loop)",
    ]
    if result.target_rate:
        lines.append(f"  kept up            {'yes' if result.kept_up else 'NO'}")
    return lines


def format_report(report: Report) -> str:
    lines = [
        f"Controller MQTT ingest: {report.devices:,} devices in {report.rooms:,} rooms, "
        f"{report.cpus or '?'} CPUs, "
        f"broker set_tcp_nodelay {'true' if report.broker_tcp_nodelay else 'false'}",
        "",
        *_throughput_lines(report.target),
    ]
    if report.max is not None:
        lines += ["", *_throughput_lines(report.max)]
    if report.latency is not None:
        latency = report.latency
        lines += [
            "",
            f"Latency at {latency.rate:,.0f} msg/s: publish -> room state received "
            "(includes the controller's publish back through the broker)",
            f"  matched            {latency.matched:,} of {latency.sent:,} "
            f"({latency.room_states_received:,} live room states received)",
            f"  p50 {_fmt(latency.p50_ms, 2)} ms   p90 {_fmt(latency.p90_ms, 2)} ms   "
            f"p99 {_fmt(latency.p99_ms, 2)} ms   max {_fmt(latency.max_ms, 2)} ms",
        ]
    lines += [
        "",
        f"Controller peak RSS {report.controller_peak_rss_mb:.1f} MB (polled), "
        f"VmHWM {_fmt(report.controller_vm_hwm_mb)} MB",
    ]
    if report.profile:
        lines.append(f"py-spy profile of the target phase: {report.profile}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the controller's MQTT ingest (throughput, loss, latency).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=1000, help="devices in the site")
    parser.add_argument("--rate", type=float, default=10_000, help="target msg/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="target-rate duration")
    parser.add_argument(
        "--max-messages",
        type=int,
        default=200_000,
        help="messages sent as fast as possible in max mode (0 skips max mode)",
    )
    parser.add_argument("--latency-rate", type=float, default=1000.0, help="msg/s")
    parser.add_argument(
        "--latency-seconds", type=float, default=3.0, help="latency duration (0 skips it)"
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=3.0,
        help="after publishing, give up when the counter has not moved for this long",
    )
    parser.add_argument(
        "--marker-timeout",
        type=float,
        default=60.0,
        help="after a throughput phase, how long the controller's room-state output may "
        "take to deliver everything before it counts as stuck",
    )
    parser.add_argument(
        "--broker-nodelay",
        action="store_true",
        help="set_tcp_nodelay true in the broker (stock mosquitto leaves Nagle on, which "
        "adds up to ~40 ms of delayed-ACK wait per hop to lone messages)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the controller during the target-rate phase; raw collapsed stacks here",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.latency_rate <= 0:
        parser.error("--rate, --seconds and --latency-rate must be positive")
    return args


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> Report:
    """Start broker and controller, run every phase, stop everything, return the report."""
    layout = make_layout(args.devices)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ingest-")))
        broker = Broker(workdir, tcp_nodelay=args.broker_nodelay)
        stack.callback(broker.stop)
        broker.start()
        site = workdir / "site.toml"
        site.write_text(site_toml(layout))
        controller = Controller(site, broker.url, workdir)
        stack.callback(controller.stop)
        controller.start()
        controller.wait_connected()
        progress(f"broker on :{broker.port}, controller pid {controller.pid} ready")
        first_room = RoomStateListener(broker.port, f"{PREFIX}/room/{layout.rooms[0]}/state")
        stack.callback(first_room.stop)
        first_room.start()
        marker = RoomStateMarker(first_room, layout.rooms[0], layout.occupancy[0])

        stream = throughput_stream(layout)
        total = round(args.rate * args.seconds)
        progress(f"target phase: {total:,} messages at {args.rate:,.0f} msg/s")
        target = run_throughput(
            controller,
            broker,
            stream,
            mode="target",
            rate=args.rate,
            total=total,
            idle_timeout=args.idle_timeout,
            marker=marker,
            marker_timeout=args.marker_timeout,
            profile=args.profile,
        )
        maximum = None
        if args.max_messages > 0:
            progress(f"max phase: {args.max_messages:,} messages as fast as possible")
            maximum = run_throughput(
                controller,
                broker,
                stream,
                mode="max",
                rate=None,
                total=args.max_messages,
                idle_timeout=args.idle_timeout,
                marker=marker,
                marker_timeout=args.marker_timeout,
            )
        latency = None
        if args.latency_seconds > 0:
            progress(f"latency phase: {args.latency_rate:,.0f} msg/s for {args.latency_seconds} s")
            latency = run_latency(
                controller, broker, layout, rate=args.latency_rate, seconds=args.latency_seconds
            )
        hwm = peak_rss_bytes(controller.pid)
        complaints = controller.log_tail(40)
        if complaints.strip():
            progress(f"the controller logged (level WARNING and up):\n{complaints}")
        peaks = [target.controller_peak_rss_mb] + (
            [maximum.controller_peak_rss_mb] if maximum else []
        )
        return Report(
            devices=len(layout.devices),
            rooms=len(layout.rooms),
            cpus=os.cpu_count(),
            target=target,
            max=maximum,
            latency=latency,
            controller_peak_rss_mb=max(peaks),
            controller_vm_hwm_mb=hwm / 2**20 if hwm is not None else None,
            broker_tcp_nodelay=args.broker_nodelay,
            profile=str(args.profile) if args.profile else None,
        )


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        report = run(args)
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_report(report))
    target = report.target
    failed = target.lost or target.bad_payloads or target.room_state_lag_seconds is None
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
