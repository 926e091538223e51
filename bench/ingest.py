"""MQTT ingest benchmark: readings in through Mosquitto, out into the time-series store.

Run by hand, not by pytest::

    python bench/ingest.py                       # 1000 devices, 10,000 msg/s for 10 s
    python bench/ingest.py --store victoria --rate 25000 --seconds 20   # into VictoriaMetrics
    python bench/ingest.py --rate 40000 --json   # machine-readable report
    python bench/ingest.py --rate 40000 --profile /tmp/ingest.txt   # py-spy the target phase
    python bench/pyspy_top.py /tmp/ingest.txt    # ... and read where the time went

What it does, sharing nothing with the controller but MQTT, HTTP and the store:

1. starts its own Mosquitto on a free loopback port, configured so that the broker
   itself never drops a message: ``max_queued_messages 0`` (no limit). For QoS 0
   messages to a subscriber that reads slower than they arrive, mosquitto's only
   choices are "send" and "drop", and with no limit it always sends, queueing the
   backlog in memory. So a loss can only come from the controller itself;
2. the store (``--store``): ``embedded`` (the default, what ``centerctl run`` does
   without ``CENTER_INFLUX_URL``: every point in ``timeseries.sqlite3``) or
   ``victoria``: its own VictoriaMetrics (``bench/store.py``) on a free loopback port
   and a temporary data directory, which the controller writes to through the
   InfluxDB v2 API (``CENTER_INFLUX_URL``/``BUCKET``; ``CENTER_INFLUX_RETRY_MAX``
   from ``--retry-max``; every other store setting is the product default). There
   is no "no store" mode: the controller always records its points;
3. writes a site file with N devices (one mmWave occupancy sensor with a count and
   one climate sensor per room, 2 devices a room) and starts
   ``python -m controller run`` on it as a subprocess;
4. throughput: a publisher process speaking raw MQTT 3.1.1 (pre-encoded QoS 0
   PUBLISH packets, written in ``sendall`` chunks every 2 ms) sends at the target
   rate, every message changing its device's value; the controller's
   ``/api/health`` counters are polled every 50 ms until every message is counted
   and every point it made is stored (``store.points_written``; nothing waiting, the
   spool empty), or a counter stops moving. Sustained rates = messages processed
   (points stored) / (first publish -> the poll that saw the last one). Then "max"
   mode: a fixed number of messages written as fast as the broker takes them, so
   the controller works through a backlog at its own ceiling;
5. after each throughput phase the points are counted *in the store*: VictoriaMetrics'
   export API (after ``/internal/force_flush``), or the embedded ``raw`` table on a
   read-only connection, per measurement (``occupancy``, ``climate``, ``room``), and
   compared with the messages the publisher sent of each kind and with the
   controller's counter. Samples of one series with the same timestamp are counted
   apart (VictoriaMetrics keeps both; the embedded store merges them, as InfluxDB
   would, so there they can only show as a row fewer);
6. after each throughput phase, a marker message tells when every room state the
   controller published has come out of the broker (the room-state output lag);
7. latency: at a low rate, each occupancy message gives its room a new count, and a
   subscriber on ``center/<site>/room/+/state`` times publish -> room state. This
   includes the controller's own publish back through the broker, and with stock
   Mosquitto (``set_tcp_nodelay false``) Nagle's algorithm on the broker's sockets;
   ``--broker-nodelay`` shows the latency without it;
8. replay (``--store victoria``, ``--replay N``): VictoriaMetrics is stopped, messages
   are published flat out until the controller's spool holds N points, it is started
   again on the same data directory and port, and the time from its first answer
   to ``spool_points`` 0 gives the replay rate; the points are counted in it again.

Exit status: 0 when the target-rate phase lost nothing (no message, no point in the
store), had no bad payloads and got every room state out, and the replay lost
nothing; 1 when it did not; 2 when the benchmark could not run; 130 on Ctrl-C.
Whether the rates reach ``--points-target`` and ``--replay-target`` is reported,
not part of the exit status (it depends on the ``--rate`` asked for).

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
from collections import Counter
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
from store import COUNTED_FIELDS, StoredCount, StoreError, VictoriaMetrics, count_embedded

SITE_ID = "bench"
PREFIX = f"center/{SITE_ID}"
ROOM_CAPACITY = 50
# Occupancy counts: the throughput phases cycle through 1..THROUGHPUT_COUNTS and the
# latency phase uses the counts above, so its first message always changes the room.
THROUGHPUT_COUNTS = 20
LATENCY_COUNTS = range(THROUGHPUT_COUNTS + 1, ROOM_CAPACITY + 1)
POLL_INTERVAL = 0.05  # seconds between /api/health polls while measuring
# A store keeps up when its last point is in this long after the last message: the
# writer hands over a batch at least every flush interval (1 s), and the sender looks
# at the spool every quarter of it.
STORE_LAG_LIMIT = 2.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # units of the CPU times in /proc/*/stat
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
    environment: dict[str, str] = field(default_factory=dict)  # more CENTER_* settings

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

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
            CENTER_DATA_DIR=str(self.data_dir),
        )
        env.update(self.environment)
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
    kinds: tuple[str, ...] = ()  # the measurement each packet's device point goes to

    @property
    def messages(self) -> int:
        return len(self.offsets) - 1

    def kind_counts(self, sent: int) -> dict[str, int]:
        """Messages of each measurement among the first ``sent`` (the stream repeating)."""
        if not self.kinds:
            return {}
        rounds, rest = divmod(sent, self.messages)
        counts = Counter(self.kinds[:rest])
        for kind, count in Counter(self.kinds).items():
            counts[kind] += rounds * count
        return dict(counts)


def build_stream(packets: list[bytes], kinds: list[str] | None = None) -> PacketStream:
    offsets = [0]
    for packet in packets:
        offsets.append(offsets[-1] + len(packet))
    return PacketStream(b"".join(packets), offsets, tuple(kinds or ()))


def state_topic(device: str) -> str:
    return f"{PREFIX}/{device}/state"


def throughput_stream(layout: Layout) -> PacketStream:
    """THROUGHPUT_COUNTS rounds over every device; each round gives every device a new value.

    Occupancy and climate messages alternate; the cycle repeats seamlessly, since the
    last round's values differ from the first's, so every message changes its device.
    """
    packets: list[bytes] = []
    kinds: list[str] = []
    for round_ in range(THROUGHPUT_COUNTS):
        for index, (device, kind, _) in enumerate(layout.devices):
            kinds.append(kind)
            if kind == "occupancy":
                payload = b'{"occupied":true,"count":%d}' % (1 + round_)
            else:
                temperature = 20.0 + round_ * 0.1 + (index % 7) * 0.5
                humidity = 40.0 + round_ * 0.5
                payload = b'{"temperature":%.1f,"humidity":%.1f}' % (temperature, humidity)
            packets.append(publish_packet(state_topic(device), payload))
    return build_stream(packets, kinds)


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
        ],
        ["occupancy"] * len(plan),
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


# --------------------------------------------------------------------------- store


@dataclass(frozen=True)
class StoreCounters:
    """``/api/health`` -> ``store``: what the controller says became of its points."""

    written: int  # victoria: written to VictoriaMetrics; embedded: stored in SQLite
    waiting: int  # made, not yet taken by the store worker (in memory)
    spool_points: int  # victoria: spooled, not yet written
    spool_bytes: int
    dropped: int
    retried: int
    rejected: int

    @classmethod
    def of(cls, health: dict[str, Any]) -> StoreCounters:
        store = health["store"]
        return cls(
            written=int(store["points_written"]),
            waiting=int(store["points_waiting"]),
            spool_points=int(store["spool_points"]),
            spool_bytes=int(store["spool_bytes"]),
            dropped=int(store["points_dropped"]),
            retried=int(store["points_retried"]),
            rejected=int(store["points_rejected"]),
        )

    @property
    def idle(self) -> bool:
        """Nothing waiting in memory or in the spool: every point made so far is stored."""
        return self.waiting == 0 and self.spool_points == 0


@dataclass
class BenchStore:
    """The store the controller writes to, and how the bench counts what is in it."""

    backend: str  # "embedded" or "victoria"
    timeseries_path: Path
    victoria: VictoriaMetrics | None = None
    retry_max: float | None = None
    victoria_peak_rss: int = 0  # VmHWM of every VictoriaMetrics process so far

    def environment(self) -> dict[str, str]:
        """The CENTER_* settings the controller gets for this store (beyond the defaults)."""
        if self.victoria is None:
            return {}
        settings = {"CENTER_INFLUX_URL": self.victoria.url, "CENTER_INFLUX_BUCKET": SITE_ID}
        if self.retry_max is not None:
            settings["CENTER_INFLUX_RETRY_MAX"] = f"{self.retry_max:g}"
        return settings

    def count(self, since_ns: int, until_ns: int | None = None) -> dict[str, StoredCount]:
        """Points per measurement in the store, stamped from ``since_ns`` to before ``until_ns``."""
        if self.victoria is not None:
            until_ms = None if until_ns is None else until_ns // 1_000_000
            return self.victoria.count(SITE_ID, since_ns // 1_000_000, until_ms)
        return count_embedded(self.timeseries_path, SITE_ID, since_ns, until_ns)

    def watch(self) -> ProcessWatch | None:
        if self.victoria is None or self.victoria.process is None:
            return None
        return ProcessWatch(psutil.Process(self.victoria.pid))

    def note_victoria_rss(self) -> None:
        """Keep VictoriaMetrics' VmHWM (call before it stops: the number goes with it)."""
        if self.victoria is not None and self.victoria.process is not None:
            hwm = peak_rss_bytes(self.victoria.pid)
            self.victoria_peak_rss = max(self.victoria_peak_rss, hwm or 0)


@dataclass
class StoreCheck:
    """The points of one phase counted in the store itself, against what caused them."""

    sent: dict[str, int]  # messages the publisher sent, per measurement of their device point
    in_store: dict[str, int]  # distinct samples (rows) that appeared, per measurement
    duplicates: dict[str, int | None]  # samples sharing series and timestamp; None: not visible
    points_written: int  # the controller's counter over the phase
    missing_device_points: int  # messages sent whose point is not in the store
    unaccounted: int  # counter - store: > 0 the counter says stored, the store lacks them
    counts: int = 1  # how many times the store was counted until it held everything
    count_seconds: float = 0.0  # from the first count to the last one
    first_in_store: dict[str, int] | None = None  # the first count, when it came up short

    @property
    def total(self) -> int:
        return sum(self.in_store.values())

    @property
    def zero_loss(self) -> bool:
        return self.missing_device_points == 0 and self.unaccounted == 0


def check_store(
    before: dict[str, StoredCount],
    after: dict[str, StoredCount],
    sent: dict[str, int],
    points_written: int,
) -> StoreCheck:
    in_store = {name: after[name].distinct - before[name].distinct for name in COUNTED_FIELDS}
    duplicates: dict[str, int | None] = {}
    for name in COUNTED_FIELDS:
        was, now = before[name].duplicates, after[name].duplicates
        duplicates[name] = None if was is None or now is None else now - was
    missing = sum(max(0, count - in_store.get(kind, 0)) for kind, count in sent.items())
    return StoreCheck(
        sent=dict(sent),
        in_store=in_store,
        duplicates=duplicates,
        points_written=points_written,
        missing_device_points=missing,
        unaccounted=points_written - sum(in_store.values()),
    )


def count_in_store(
    store: BenchStore,
    window: tuple[int, int | None],
    before: dict[str, StoredCount],
    sent: dict[str, int],
    points_written: int,
    *,
    timeout: float,
) -> StoreCheck:
    """Count the store until it holds every point the counter says it took, or ``timeout``.

    An embedded count is final at once (a committed SQLite transaction is there for
    every reader). VictoriaMetrics makes what it acknowledged searchable after
    ``/internal/force_flush``, yet a count has come up short once in a while and
    complete when asked again, so a short count is asked again until the deadline;
    how many counts it took is reported, and what is still missing then is a loss.
    """
    began = time.monotonic()
    counts = 0
    first: dict[str, int] | None = None
    while True:
        counts += 1
        check = check_store(before, store.count(*window), sent, points_written)
        check.counts = counts
        check.count_seconds = time.monotonic() - began
        check.first_in_store = first
        if check.zero_loss or store.victoria is None or check.count_seconds > timeout:
            return check
        if first is None:
            first = dict(check.in_store)
            progress(f"the store holds fewer points than expected: {first}; counting again")
        time.sleep(0.5)  # the pause between counts of the wait above, with its deadline


def wait_store_idle(controller: Controller, *, timeout: float = 60.0) -> StoreCounters:
    """Poll until every point the controller made is stored and the counter stands still."""
    last: list[StoreCounters] = []

    def idle() -> StoreCounters | None:
        counters = StoreCounters.of(controller.health())
        steady = bool(last) and last[-1].written == counters.written
        last[:] = [counters]
        return counters if counters.idle and steady else None

    counters: StoreCounters = wait_for(
        idle, timeout=timeout, what="the store to take every point", interval=POLL_INTERVAL
    )
    return counters


# --------------------------------------------------------------------------- throughput


@dataclass
class ProcessWatch:
    """CPU time and peak memory of one process, sampled at every health poll.

    Children count too (the controller's store process and its forkserver). The
    main thread's CPU time is kept apart (for the controller: the event loop,
    where every message is handled; the rest is the store process, the pipe
    thread and executor threads), read from ``/proc/<pid>/task/<pid>/stat``, whose thread id
    is the process id.
    """

    process: psutil.Process
    cpu_start: float = 0.0
    cpu_marked: float = 0.0  # CPU time at the last mark (when a counter last moved)
    main_start: float = 0.0
    main_marked: float = 0.0  # the main thread's, at the same moments
    peak_rss: int = 0

    def _cpu(self) -> float:
        """The process's CPU time and its children's (the controller's store process)."""
        total = 0.0
        for process in (self.process, *self.process.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def _main_cpu(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/stat").read_text()
        utime, stime = fields.rpartition(")")[2].split()[11:13]
        return (int(utime) + int(stime)) / CLOCK_TICKS

    def begin(self) -> None:
        self.cpu_start = self.cpu_marked = self._cpu()
        with contextlib.suppress(OSError):
            self.main_start = self.main_marked = self._main_cpu()
        self.sample(mark=False)

    def sample(self, *, mark: bool) -> None:
        """Track peak RSS; with ``mark``, note the CPU time used so far."""
        with contextlib.suppress(psutil.Error, OSError):
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            if mark:
                self.cpu_marked = self._cpu()
                self.main_marked = self._main_cpu()

    def cpu_seconds(self) -> float:
        """CPU time from begin() to the last mark."""
        return self.cpu_marked - self.cpu_start

    def main_cpu_seconds(self) -> float:
        """The main thread's CPU time from begin() to the last mark."""
        return self.main_marked - self.main_start


@dataclass
class StorePhase:
    """What became of the points one throughput phase made."""

    backend: str
    points_written: int  # the controller's counter over the phase
    points_made: int  # written + dropped + still waiting or spooled at the end
    points_per_message: float  # made / messages received
    stored_seconds: float  # first publish -> the poll that saw the last point stored
    stored_rate: float  # points_written / stored_seconds
    store_lag_seconds: float  # last message processed -> last point stored
    settled: bool  # nothing left waiting or spooled when the phase ended
    # The messages kept up and the last point was stored within STORE_LAG_LIMIT of the
    # last message processed (None: max mode, where nothing is paced).
    kept_up: bool | None
    peak_points_waiting: int
    peak_spool_points: int
    points_dropped: int
    points_retried: int
    points_rejected: int
    check: StoreCheck
    victoria_cpu_percent: float | None
    victoria_peak_rss_mb: float | None

    @property
    def zero_loss(self) -> bool:
        return self.settled and self.points_dropped == 0 and self.check.zero_loss


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
    # Of one core, from "go" to the last message processed or point stored.
    controller_cpu_percent: float
    controller_loop_cpu_percent: float  # of it, the main thread's (the event loop)
    loop_us_per_message: float  # the event loop's CPU time per message
    other_threads_us_per_point: float  # the other threads' CPU time per point stored
    broker_cpu_percent: float
    controller_peak_rss_mb: float
    # Last message ingested -> every room state it caused delivered; None: not within
    # --marker-timeout (the controller's room-state output fell behind or lost some).
    room_state_lag_seconds: float | None
    # /api/health round trips while the phase ran: how long the event loop made HTTP wait.
    health_p50_ms: float
    health_max_ms: float
    store: StorePhase


@dataclass
class Measurement:
    """What the health poller saw while one phase ran."""

    started: float = 0.0  # when the publisher was told to go
    received: int = 0
    done_at: float = 0.0  # when the message counter was last seen moving (or reached the total)
    stored: int = 0  # points written since the phase began
    stored_at: float = 0.0  # when the points counter was last seen moving
    active_at: float = 0.0  # when either counter was last seen moving
    store_settled: bool = False  # every point made was stored before the phase ended
    backlog_at_publish_end: int = 0
    peak_waiting: int = 0
    peak_spool: int = 0
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


@dataclass(frozen=True)
class Counters:
    ingest: tuple[int, int, int, int]
    store: StoreCounters

    @classmethod
    def of(cls, health: dict[str, Any]) -> Counters:
        return cls(ingest_counters(health), StoreCounters.of(health))


def measure(
    controller: Controller,
    spec: PublishSpec,
    watches: list[ProcessWatch],
    *,
    idle_timeout: float,
    deadline_seconds: float,
    on_go: Callable[[], None] | None = None,
    wait_store: bool = False,
) -> tuple[Measurement, Counters, Counters]:
    """Run one publisher and poll health every 50 ms until all is counted or nothing moves.

    With ``wait_store`` it goes on until every point the controller made is stored
    too (nothing waiting, the spool empty, the counter steady between two polls),
    or the points counter has not moved for ``idle_timeout``. Returns the
    measurement and the counters before and after.
    """
    measurement = Measurement()
    with publisher(spec) as pipe:
        before = Counters.of(controller.health())
        for watch in watches:
            watch.begin()
        if on_go is not None:
            on_go()
        pipe.send("go")
        last_change = measurement.started = time.monotonic()
        measurement.done_at = measurement.stored_at = measurement.active_at = last_change
        deadline = last_change + deadline_seconds
        published: PublishResult | None = None
        counters = before
        while True:
            tick = time.monotonic()
            counters = Counters.of(controller.health())
            now = time.monotonic()
            measurement.health_seconds.append(now - tick)
            received = counters.ingest[0] - before.ingest[0]
            stored = counters.store.written - before.store.written
            moved = received != measurement.received
            store_moved = stored != measurement.stored
            for watch in watches:
                watch.sample(mark=moved or (wait_store and store_moved))
            measurement.samples.append((now, received))
            measurement.peak_waiting = max(measurement.peak_waiting, counters.store.waiting)
            measurement.peak_spool = max(measurement.peak_spool, counters.store.spool_points)
            if moved:
                measurement.received = received
                measurement.done_at = last_change = now
            if store_moved:
                measurement.stored = stored
                measurement.stored_at = now
            if moved or (wait_store and store_moved):
                measurement.active_at = now
            if published is None and pipe.poll():
                published = pipe.recv()
                assert isinstance(published, PublishResult)
                if published.error:
                    raise BenchError(f"publisher failed: {published.error}")
                measurement.publish = published
            if published is not None and (
                received >= published.sent or now - last_change > idle_timeout
            ):
                if not wait_store:
                    break
                if counters.store.idle and not store_moved:
                    measurement.store_settled = True
                    break
                if now - max(measurement.stored_at, last_change) > idle_timeout:
                    break  # the store stopped taking points: what is missing is reported
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
    store: BenchStore,
    stream: PacketStream,
    *,
    mode: str,
    rate: float | None,
    total: int,
    idle_timeout: float,
    marker: RoomStateMarker,
    marker_timeout: float,
    count_timeout: float = 30.0,
    profile: Path | None = None,
    profile_gil: bool = False,
) -> ThroughputResult:
    """One throughput phase (paced at ``rate``, or flat out when ``rate`` is None)."""
    assert broker.process is not None
    wait_store_idle(controller)  # the marker's points of the phase before are in
    since_ns = time.time_ns() - 1_000_000_000
    in_store_before = store.count(since_ns)  # only what is in the store already: no "until"
    controller_watch = ProcessWatch(psutil.Process(controller.pid))
    broker_watch = ProcessWatch(psutil.Process(broker.process.pid))
    store_watch = store.watch()
    watches = [controller_watch, broker_watch] + ([store_watch] if store_watch else [])
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
            profiler = start_py_spy(controller.pid, profile, gil=profile_gil)

    expected = total / rate if rate else total / 20_000
    try:
        measurement, before, after = measure(
            controller,
            spec,
            watches,
            idle_timeout=idle_timeout,
            deadline_seconds=60 + 5 * expected,
            on_go=start_profiler,
            wait_store=True,
        )
    finally:
        if profiler is not None:
            stop_py_spy(profiler)
    # Every point of the phase is stamped by now; the marker's come later and are left out.
    until_ns = time.time_ns()
    room_states_out = marker.sync(marker_timeout)
    published = measurement.publish
    check = count_in_store(
        store,
        (since_ns, until_ns),
        in_store_before,
        stream.kind_counts(published.sent),
        measurement.stored,
        timeout=count_timeout,
    )
    received = measurement.received
    processing = max(measurement.done_at - published.first_send, 1e-9)
    window = max(measurement.active_at - measurement.started, 1e-9)
    publish_seconds = max(published.drained - published.first_send, 1e-9)
    drain = max(measurement.done_at - published.last_send, 0.0)
    sustained = received / processing
    stored_seconds = max(measurement.stored_at - published.first_send, 1e-9)
    store.note_victoria_rss()
    dropped = after.store.dropped - before.store.dropped
    made = measurement.stored + dropped + after.store.waiting + after.store.spool_points
    store_phase = StorePhase(
        backend=store.backend,
        points_written=measurement.stored,
        points_made=made,
        points_per_message=made / received if received else 0.0,
        stored_seconds=stored_seconds,
        stored_rate=measurement.stored / stored_seconds,
        store_lag_seconds=max(measurement.stored_at - measurement.done_at, 0.0),
        settled=measurement.store_settled,
        kept_up=(
            None
            if rate is None
            else sustained >= 0.95 * rate
            and drain < 1.0
            and measurement.stored_at - measurement.done_at <= STORE_LAG_LIMIT
        ),
        peak_points_waiting=measurement.peak_waiting,
        peak_spool_points=measurement.peak_spool,
        points_dropped=dropped,
        points_retried=after.store.retried - before.store.retried,
        points_rejected=after.store.rejected - before.store.rejected,
        check=check,
        victoria_cpu_percent=(
            100 * store_watch.cpu_seconds() / window if store_watch is not None else None
        ),
        victoria_peak_rss_mb=store_watch.peak_rss / 2**20 if store_watch is not None else None,
    )
    return ThroughputResult(
        mode=mode,
        target_rate=rate,
        sent=published.sent,
        received=received,
        lost=published.sent - received,
        bad_payloads=after.ingest[1] - before.ingest[1],
        handler_errors=after.ingest[3] - before.ingest[3],
        room_states_published=after.ingest[2] - before.ingest[2],
        publish_seconds=publish_seconds,
        publish_rate=published.sent / publish_seconds,
        backlog_at_publish_end=measurement.backlog_at_publish_end,
        drain_seconds=drain,
        processing_seconds=processing,
        sustained_rate=sustained,
        kept_up=None if rate is None else sustained >= 0.95 * rate and drain < 1.0,
        controller_cpu_percent=100 * controller_watch.cpu_seconds() / window,
        controller_loop_cpu_percent=100 * controller_watch.main_cpu_seconds() / window,
        loop_us_per_message=1e6 * controller_watch.main_cpu_seconds() / max(received, 1),
        other_threads_us_per_point=1e6
        * (controller_watch.cpu_seconds() - controller_watch.main_cpu_seconds())
        / max(measurement.stored, 1),
        broker_cpu_percent=100 * broker_watch.cpu_seconds() / window,
        controller_peak_rss_mb=controller_watch.peak_rss / 2**20,
        room_state_lag_seconds=(
            None if room_states_out is None else max(room_states_out - measurement.done_at, 0.0)
        ),
        health_p50_ms=1000 * percentile(sorted(measurement.health_seconds), 0.5),
        health_max_ms=1000 * max(measurement.health_seconds),
        store=store_phase,
    )


def start_py_spy(pid: int, output: Path, *, gil: bool = False) -> subprocess.Popen[bytes]:
    """py-spy record (raw collapsed stacks) on the controller; stopped with SIGINT.

    With ``gil``, only the thread holding the GIL is sampled, each stack under its
    thread id: for a process bound by the GIL, where its one core goes, by thread.
    """
    binary = shutil.which("py-spy")
    if binary is None:
        raise BenchError("--profile needs py-spy on PATH (pip install py-spy)")
    process = subprocess.Popen(
        [
            *(binary, "record", "--pid", str(pid), "--rate", "200"),
            *("--format", "raw", "--output", str(output)),
            *(("--gil", "--threads") if gil else ()),
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


# --------------------------------------------------------------------------- replay


@dataclass
class ReplayResult:
    points: int  # spool_points when VictoriaMetrics started again
    spool_bytes: int
    bytes_per_point: float
    fill_messages: int
    fill_seconds: float  # VictoriaMetrics stopped -> the spool held the points
    victoria_start_seconds: float  # its process started -> /health answered
    first_write_seconds: float | None  # /health answered -> first poll that saw points written
    replay_seconds: float  # /health answered -> the poll that saw spool_points 0
    replay_rate: float  # points / replay_seconds
    points_written: int  # the controller's counter from the stop to the end
    settled: bool  # the spool emptied before --idle-timeout without progress
    controller_cpu_percent: float  # of one core, while replaying
    controller_loop_cpu_percent: float  # of it, the main thread's (the event loop)
    victoria_cpu_percent: float
    check: StoreCheck

    @property
    def zero_loss(self) -> bool:
        return self.settled and self.check.zero_loss


def fill_spool(
    controller: Controller,
    broker: Broker,
    stream: PacketStream,
    *,
    points: int,
    points_per_message: float,
    idle_timeout: float,
) -> tuple[int, Counter[str]]:
    """Publish flat out until the spool holds ``points``; the messages sent, by kind."""
    sent: Counter[str] = Counter()
    messages = 0
    while True:
        spooled = StoreCounters.of(controller.health()).spool_points
        if spooled >= points:
            return messages, sent
        total = max(1000, math.ceil((points - spooled) / max(points_per_message, 1.0)))
        spec = PublishSpec(
            port=broker.port,
            stream=stream,
            total=total,
            rate=None,
            slice_seconds=0.0,
            record_times=False,
        )
        measurement, _, _ = measure(
            controller, spec, [], idle_timeout=idle_timeout, deadline_seconds=60 + total / 5000
        )
        messages += measurement.publish.sent
        sent.update(stream.kind_counts(measurement.publish.sent))
        wait_for(
            lambda: StoreCounters.of(controller.health()).waiting == 0,
            timeout=60,
            what="the writer to spool every point",
            interval=POLL_INTERVAL,
        )


def run_replay(
    controller: Controller,
    broker: Broker,
    store: BenchStore,
    stream: PacketStream,
    *,
    points: int,
    points_per_message: float,
    idle_timeout: float,
    count_timeout: float,
    profile: Path | None,
    profile_gil: bool = False,
) -> ReplayResult:
    """Stop VictoriaMetrics, spool ``points``, start it again and time the spool emptying."""
    victoria = store.victoria
    assert victoria is not None
    wait_store_idle(controller)
    since_ns = time.time_ns() - 1_000_000_000
    in_store_before = store.count(since_ns)
    written_before = StoreCounters.of(controller.health()).written
    store.note_victoria_rss()
    victoria.stop()
    progress(f"replay: VictoriaMetrics stopped; publishing until {points:,} points are spooled")
    fill_began = time.monotonic()
    messages, sent = fill_spool(
        controller,
        broker,
        stream,
        points=points,
        points_per_message=points_per_message,
        idle_timeout=idle_timeout,
    )
    spool = StoreCounters.of(controller.health())
    fill_seconds = time.monotonic() - fill_began
    progress(
        f"replay: {spool.spool_points:,} points ({spool.spool_bytes / 1e6:,.1f} MB) spooled "
        f"in {fill_seconds:.1f} s; starting VictoriaMetrics again"
    )
    controller_watch = ProcessWatch(psutil.Process(controller.pid))
    started_in = victoria.start()
    ready = time.monotonic()
    controller_watch.begin()
    victoria_watch = ProcessWatch(psutil.Process(victoria.pid))
    victoria_watch.begin()
    watches = [controller_watch, victoria_watch]
    profiler = start_py_spy(controller.pid, profile, gil=profile_gil) if profile else None
    first_write: float | None = None
    done_at: float | None = None
    last_written, last_move = spool.written, ready
    deadline = ready + 120 + spool.spool_points / 5000
    try:
        while True:
            tick = time.monotonic()
            counters = StoreCounters.of(controller.health())
            now = time.monotonic()
            moved = counters.written != last_written
            for watch in watches:
                watch.sample(mark=moved)
            if moved:
                last_written, last_move = counters.written, now
                if first_write is None:
                    first_write = now
            if counters.idle:
                done_at = now
                break
            if first_write is not None and now - last_move > idle_timeout:
                break  # the sender stopped writing: what is left is reported
            if now > deadline:
                break
            pause = tick + POLL_INTERVAL - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # the poll period, not a wait for a condition
    finally:
        if profiler is not None:
            stop_py_spy(profiler)
    settled = done_at is not None
    final = wait_store_idle(controller) if settled else StoreCounters.of(controller.health())
    window = max((done_at or time.monotonic()) - ready, 1e-9)
    points_written = final.written - written_before
    check = count_in_store(
        store, (since_ns, None), in_store_before, sent, points_written, timeout=count_timeout
    )
    store.note_victoria_rss()
    return ReplayResult(
        points=spool.spool_points,
        spool_bytes=spool.spool_bytes,
        bytes_per_point=spool.spool_bytes / spool.spool_points if spool.spool_points else 0.0,
        fill_messages=messages,
        fill_seconds=fill_seconds,
        victoria_start_seconds=started_in,
        first_write_seconds=None if first_write is None else first_write - ready,
        replay_seconds=window,
        replay_rate=spool.spool_points / window if settled else 0.0,
        points_written=points_written,
        settled=settled,
        controller_cpu_percent=100 * controller_watch.cpu_seconds() / window,
        controller_loop_cpu_percent=100 * controller_watch.main_cpu_seconds() / window,
        victoria_cpu_percent=100 * victoria_watch.cpu_seconds() / window,
        check=check,
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
    store: str  # "embedded" or "victoria"
    store_settings: dict[str, str]  # the CENTER_* store settings the bench set (else defaults)
    points_target: float  # points/s the target phase should store, with zero loss
    replay_target: float  # points/s the replay should reach
    replay: ReplayResult | None
    victoria_peak_rss_mb: float | None  # VmHWM, the highest of its processes
    profile: str | None = None
    replay_profile: str | None = None

    def to_json(self) -> dict[str, Any]:
        result = asdict(self)
        for name, phase in (("target", self.target), ("max", self.max)):
            if phase is not None:
                result[name]["store"]["zero_loss"] = phase.store.zero_loss
        if self.replay is not None:
            result["replay"]["zero_loss"] = self.replay.zero_loss
        result["points_target_met"] = self.points_target_met
        result["replay_target_met"] = self.replay_target_met
        return result

    @property
    def points_target_met(self) -> bool:
        store = self.target.store
        return store.zero_loss and self.target.lost == 0 and store.stored_rate >= self.points_target

    @property
    def replay_target_met(self) -> bool | None:
        if self.replay is None:
            return None
        return self.replay.zero_loss and self.replay.replay_rate >= self.replay_target


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
        f"(broker {result.broker_cpu_percent:.0f} %): event loop thread "
        f"{result.controller_loop_cpu_percent:.0f} %, the rest "
        f"{result.controller_cpu_percent - result.controller_loop_cpu_percent:.0f} %",
        f"  CPU per item       event loop {result.loop_us_per_message:.1f} us a message, "
        f"the rest (the store process, threads) {result.other_threads_us_per_point:.1f} us "
        "a point stored",
        f"  controller RSS     {result.controller_peak_rss_mb:.1f} MB peak (polled)",
        f"  /api/health        p50 {result.health_p50_ms:.1f} ms, "
        f"max {result.health_max_ms:.0f} ms (HTTP waiting for the busy event loop)",
    ]
    if result.target_rate:
        lines.append(f"  kept up            {'yes' if result.kept_up else 'NO'}")
    return lines + _store_lines(result.store)


_STORED_AS = {"victoria": "written to VictoriaMetrics", "embedded": "stored in SQLite"}


def _yes(value: bool) -> str:
    return "yes" if value else "NO"


def _check_lines(check: StoreCheck) -> list[str]:
    """What the store itself holds, against the messages sent and the controller's counter."""
    parts = []
    for name in COUNTED_FIELDS:
        found = check.in_store.get(name, 0)
        if name in check.sent:
            parts.append(f"{name} {found:,} of {check.sent[name]:,} sent")
        else:
            parts.append(f"{name} {found:,}")
    visible = [count for count in check.duplicates.values() if count is not None]
    if len(visible) == len(check.duplicates):
        collisions = (
            f"{sum(visible):,} samples sharing series and millisecond with another "
            "(VictoriaMetrics keeps both)"
        )
    else:
        collisions = (
            "not visible: the raw table keeps one row a series and nanosecond, "
            "so they would show as counter - store > 0"
        )
    recounted = ""
    if check.first_in_store is not None:
        first = sum(check.first_in_store.values())
        recounted = (
            f" (counted {check.counts} times in {check.count_seconds:.1f} s; "
            f"the first count found {first:,})"
        )
    return [
        f"  in the store       {', '.join(parts)}{recounted}",
        f"                     {check.total:,} in all; counter - store = {check.unaccounted:,}; "
        f"device points missing {check.missing_device_points:,}",
        f"  collisions         {collisions}",
    ]


def _store_lines(store: StorePhase) -> list[str]:
    lines = [
        f"  points stored      {store.points_written:,} of {store.points_made:,} made "
        f"({store.points_per_message:.2f} a message), "
        f"{_STORED_AS.get(store.backend, store.backend)}",
        f"  stored rate        {store.stored_rate:,.0f} points/s sustained (first publish -> "
        f"last point stored, {store.stored_seconds:.2f} s); last point "
        f"{store.store_lag_seconds:.2f} s after the last message",
        *_check_lines(store.check),
        f"  store backlog      peak {store.peak_points_waiting:,} points waiting in memory, "
        f"{store.peak_spool_points:,} in the spool; dropped {store.points_dropped:,}, "
        f"retried {store.points_retried:,}, rejected {store.points_rejected:,}",
    ]
    if store.victoria_cpu_percent is not None:
        lines.append(
            f"  VictoriaMetrics    CPU {store.victoria_cpu_percent:.0f} % of one core, "
            f"RSS {_fmt(store.victoria_peak_rss_mb)} MB peak (polled)"
        )
    if store.kept_up is not None:
        lines.append(
            f"  store kept up      {_yes(store.kept_up)} (messages kept up, last point stored "
            f"within {STORE_LAG_LIMIT:.0f} s of the last message)"
        )
    settled = "" if store.settled else " (the store stopped taking points: see above)"
    lines.append(f"  zero loss          {_yes(store.zero_loss)}{settled}")
    return lines


def _replay_lines(replay: ReplayResult, target: float) -> list[str]:
    first = (
        "-" if replay.first_write_seconds is None else f"{replay.first_write_seconds:.2f} s later"
    )
    return [
        f"Replay: VictoriaMetrics stopped while {replay.points:,} points were spooled, "
        "then started again on its data",
        f"  spool              {replay.points:,} points, {replay.spool_bytes / 1e6:,.1f} MB "
        f"({replay.bytes_per_point:.1f} bytes a point), filled by {replay.fill_messages:,} "
        f"messages in {replay.fill_seconds:.1f} s",
        f"  VictoriaMetrics    answered {replay.victoria_start_seconds:.2f} s after its start; "
        f"first points written {first}",
        f"  replayed           {replay.points_written:,} points written in "
        f"{replay.replay_seconds:.2f} s: {replay.replay_rate:,.0f} points/s "
        "(its first answer -> spool_points 0)",
        *_check_lines(replay.check),
        f"  CPU                controller {replay.controller_cpu_percent:.0f} % (event loop "
        f"thread {replay.controller_loop_cpu_percent:.0f} %), "
        f"VictoriaMetrics {replay.victoria_cpu_percent:.0f} % of one core",
        f"  zero loss          {_yes(replay.zero_loss)}",
        f"  >= {target:,.0f} points/s {_yes(replay.zero_loss and replay.replay_rate >= target)}",
    ]


def format_report(report: Report) -> str:
    settings = ", ".join(
        f"{key}={value}"
        for key, value in report.store_settings.items()
        if key != "CENTER_INFLUX_URL"
    )
    lines = [
        f"Controller MQTT ingest: {report.devices:,} devices in {report.rooms:,} rooms, "
        f"{report.cpus or '?'} CPUs, "
        f"broker set_tcp_nodelay {'true' if report.broker_tcp_nodelay else 'false'}",
        f"Store: {report.store}"
        + (f" ({settings}; other store settings: the product defaults)" if settings else ""),
        "",
        *_throughput_lines(report.target),
        f"  >= {report.points_target:,.0f} points/s stored with zero loss: "
        + _yes(report.points_target_met),
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
    if report.replay is not None:
        lines += ["", *_replay_lines(report.replay, report.replay_target)]
    lines += [
        "",
        f"Controller peak RSS {report.controller_peak_rss_mb:.1f} MB (polled), "
        f"VmHWM {_fmt(report.controller_vm_hwm_mb)} MB",
    ]
    if report.victoria_peak_rss_mb is not None:
        lines.append(f"VictoriaMetrics VmHWM {report.victoria_peak_rss_mb:.1f} MB")
    if report.profile:
        lines.append(f"py-spy profile of the target phase: {report.profile}")
    if report.replay_profile:
        lines.append(f"py-spy profile of the replay: {report.replay_profile}")
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
        "--count-timeout",
        type=float,
        default=30.0,
        help="how long VictoriaMetrics may take to show every point it acknowledged "
        "(counted again while short) before the missing ones count as lost",
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
    parser.add_argument(
        "--store",
        choices=("embedded", "victoria"),
        default="embedded",
        help="where the controller stores its points: the embedded SQLite store (what "
        "centerctl run does without CENTER_INFLUX_URL) or a VictoriaMetrics the bench starts "
        "(/usr/bin/victoria-metrics) written through the InfluxDB v2 API",
    )
    parser.add_argument(
        "--replay",
        type=int,
        default=1_000_000,
        help="with --store victoria: stop it, spool this many points, start it again and "
        "time the replay (0 skips it)",
    )
    parser.add_argument(
        "--retry-max",
        type=float,
        default=1.0,
        help="with --store victoria: CENTER_INFLUX_RETRY_MAX, the longest wait between "
        "retries of a failed write (product default 30 s: the replay would start up to "
        "that long after the store is back)",
    )
    parser.add_argument(
        "--points-target",
        type=float,
        default=35_000,
        help="points/s the target phase should store with zero loss (reported)",
    )
    parser.add_argument(
        "--replay-target",
        type=float,
        default=50_000,
        help="points/s the replay should reach (reported)",
    )
    parser.add_argument(
        "--profile-replay",
        type=Path,
        help="py-spy the controller during the replay; raw collapsed stacks here",
    )
    parser.add_argument(
        "--profile-gil",
        action="store_true",
        help="profiles sample only the thread holding the GIL, under its thread id "
        "(py-spy --gil --threads): where the controller's one Python core goes",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.latency_rate <= 0:
        parser.error("--rate, --seconds and --latency-rate must be positive")
    if args.replay < 0 or args.retry_max <= 0:
        parser.error("--replay must not be negative, --retry-max must be positive")
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
        store = BenchStore(args.store, controller.data_dir / "timeseries.sqlite3")
        if args.store == "victoria":
            store.victoria = VictoriaMetrics(workdir / "victoria-metrics")
            store.retry_max = args.retry_max
            stack.callback(store.victoria.stop)
            store.victoria.start()
            progress(f"VictoriaMetrics pid {store.victoria.pid} on :{store.victoria.port}")
        controller.environment = store.environment()
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
            store,
            stream,
            mode="target",
            rate=args.rate,
            total=total,
            idle_timeout=args.idle_timeout,
            marker=marker,
            marker_timeout=args.marker_timeout,
            count_timeout=args.count_timeout,
            profile=args.profile,
            profile_gil=args.profile_gil,
        )
        maximum = None
        if args.max_messages > 0:
            progress(f"max phase: {args.max_messages:,} messages as fast as possible")
            maximum = run_throughput(
                controller,
                broker,
                store,
                stream,
                mode="max",
                rate=None,
                total=args.max_messages,
                idle_timeout=args.idle_timeout,
                marker=marker,
                marker_timeout=args.marker_timeout,
                count_timeout=args.count_timeout,
            )
        latency = None
        if args.latency_seconds > 0:
            progress(f"latency phase: {args.latency_rate:,.0f} msg/s for {args.latency_seconds} s")
            latency = run_latency(
                controller, broker, layout, rate=args.latency_rate, seconds=args.latency_seconds
            )
        replay = None
        if store.victoria is not None and args.replay > 0:
            replay = run_replay(
                controller,
                broker,
                store,
                stream,
                points=args.replay,
                points_per_message=target.store.points_per_message,
                idle_timeout=args.idle_timeout,
                count_timeout=args.count_timeout,
                profile=args.profile_replay,
                profile_gil=args.profile_gil,
            )
        hwm = peak_rss_bytes(controller.pid)
        store.note_victoria_rss()
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
            store=args.store,
            store_settings=store.environment(),
            points_target=args.points_target,
            replay_target=args.replay_target,
            replay=replay,
            victoria_peak_rss_mb=(
                store.victoria_peak_rss / 2**20 if store.victoria is not None else None
            ),
            profile=str(args.profile) if args.profile else None,
            replay_profile=str(args.profile_replay) if replay and args.profile_replay else None,
        )


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        report = run(args)
    except (BenchError, StoreError) as error:
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
    failed = (
        target.lost
        or target.bad_payloads
        or target.room_state_lag_seconds is None
        or not target.store.zero_loss
        or (report.replay is not None and not report.replay.zero_loss)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
