#!/usr/bin/env python
"""Fire-alarm benchmark: from the panel's alarm to the last UNLOCK command, under load.

Run by hand, not by pytest, with the project's venv, as a script (it imports its
neighbours ``bench/ingest.py`` and ``bench/common.py``)::

    .venv/bin/python bench/fire.py                       # 50 trials at 5,000 and 20,000 msg/s
    .venv/bin/python bench/fire.py --trials 50 --rates 5000,20000 --json
    .venv/bin/python bench/fire.py --rates 20000 --profile /tmp/fire.txt   # py-spy each rate
    .venv/bin/python bench/pyspy_top.py /tmp/fire-20000.txt                # ... where the time went

Target (issue 4, "Performance"): with 20 locks, p99 of alarm -> last UNLOCK under
10 ms with 5,000 sensor messages/s of background, and under 50 ms with 20,000 msg/s.

What it does, sharing nothing with the controller but MQTT and HTTP:

1. starts its own Mosquitto on a free loopback port (``bench/ingest.py``'s
   :class:`Broker`: never drops a message itself; ``set_tcp_nodelay true`` as
   ``scripts/broker`` and README's deployment notes have it, ``--no-broker-nodelay``
   for Mosquitto's stock setting, whose Nagle delays add tens of ms on the alarm's
   way in and the commands' way out) and writes a site: 20 bookable rooms, each with a
   lock, an occupancy and a climate sensor; ``--extra-rooms`` more rooms with an
   occupancy and a climate sensor each (background traffic); the fire panel. Time
   zone UTC, hours 00:00-23:59, no bookings: the rules want every lock LOCKED at
   any time of day;
2. plays every lock (:class:`common.LockEmulator`, a paho client on its own
   thread): retained ``UNLOCKED`` at first, then each ``/set`` command is
   time-stamped on receipt and answered with the new state, retained, as a real
   lock does. Starts ``centerctl run`` as a subprocess (its own CPU, its own event
   loop), reports the panel quiet and waits until the controller has locked all 20
   locks and seen them confirm;
3. per background rate: a publisher process writes pre-encoded QoS 0 sensor
   messages (occupancy counts and climate values, every message a new value) at the
   rate, paced every 2 ms, and counts what it sent; after ``--settle`` seconds,
   ``--warmup`` + ``--trials`` trials, each:

   - a random pause (``--gap``), so that alarms do not fall in step with anything;
   - ``perf_counter()`` just before the panel's ``{"alarm": true}`` (QoS 1, from a
     raw socket with TCP_NODELAY) is written; latency = the receipt of the last of
     the 20 UNLOCK commands by the paho lock client minus that (the target's
     measure). The first UNLOCK is reported too;
   - the same commands are also stamped by :class:`common.WireProbe`, a raw-socket
     subscriber that only reads: the "wire" figure is when the broker's copy of the
     20th UNLOCK reached this machine's socket, without the lock client's own
     per-message cost (one paho client parses and answers all 20 in turn);
   - ``{"alarm": false}``, then ``POST /api/fire/reset`` with a staff token until
     it answers 200 (409 while the controller still sees the alarm), then wait
     until all 20 locks got LOCK and /api/health shows them confirmed;
   - where the time went (:data:`STAGES`), from the controller's own records on the
     same machine and wall clock: the fire latch's time is the ingest's stamp of the
     MQTT batch that held the alarm; each ``lock_command`` event carries the time its
     command was written to the socket; the ``fire_alarm`` alarm is raised last in the
     fire handler. Stages: to_batch (broker, sockets, sensor messages queued ahead),
     send (batch begun -> the 20th UNLOCK written), out (written -> the wire probe saw
     the broker's copy), client (wire probe -> paho lock client); and, beside the
     path, rest (20th UNLOCK written -> handler done: rooms re-decided, all logged).

The first (``--warmup``) trial of each rate is not in the percentiles; it is shown as
"cold": the first alarm of a phase.

Also reported: the rate the publisher achieved, the rate the controller ingested
(``/api/health`` counters) and the largest backlog seen before an alarm, CPU of the
controller, broker and publisher processes over the trials (psutil, % of one core).

Exit status: 0 when every rate with a target met it, 1 when one did not (or an
alarm did not unlock every lock), 2 when the benchmark could not run, 130 on
Ctrl-C. Everything started here is stopped on exit, Ctrl-C, SIGTERM and errors.
``--profile`` runs py-spy (``--nonblocking``, ``--profile-rate`` samples a second) on
the controller during each rate's trials; py-spy takes CPU of its own on the same
machine, so the figures of a profiled run are not the benchmark's.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
from common import (
    READ_TOKEN,
    STAFF_TOKEN,
    CenterCtl,
    Command,
    CpuWatch,
    LockEmulator,
    WireProbe,
    bench_main,
    device_entry,
    distribution,
    every_lock,
    fmt_ms,
    machine_facts,
    progress,
    room_entry,
    start_profiler,
)
from ingest import (
    DISCONNECT,
    BenchError,
    Broker,
    PacketStream,
    build_stream,
    connect_packet,
    publish_packet,
    stop_py_spy,
    wait_for,
)

SITE_ID = "bench-fire"
PREFIX = f"center/{SITE_ID}"
PANEL = "fire-panel"
PANEL_TOPIC = f"{PREFIX}/{PANEL}/state"
ROOM_CAPACITY = 50
ROUNDS = 20  # background values cycle through 20 rounds: every message is a new value
SLICE_SECONDS = 0.002  # background pacing granularity
TRIAL_TIMEOUT = 10.0  # seconds for 20 UNLOCKs (or 20 LOCKs after a reset)


# --------------------------------------------------------------------------- site


@dataclass(frozen=True)
class Layout:
    bookable: list[str]  # rooms with a lock
    locks: list[str]  # locks[i] is in bookable[i]
    sensors: list[tuple[str, str, str]]  # (device, kind, room), in background order
    rooms: list[str]  # every room with sensors


def make_layout(locks: int, extra_rooms: int) -> Layout:
    width = max(2, len(str(locks)))
    bookable = [f"room-{i:0{width}d}" for i in range(1, locks + 1)]
    lock_ids = [f"lock-{i:0{width}d}" for i in range(1, locks + 1)]
    extra_width = max(3, len(str(extra_rooms)))
    extra = [f"hall-{i:0{extra_width}d}" for i in range(1, extra_rooms + 1)]
    sensors: list[tuple[str, str, str]] = []
    for room in bookable + extra:
        suffix = room.split("-", 1)[1]
        prefix = "r" if room.startswith("room-") else "h"
        sensors.append((f"occ-{prefix}{suffix}", "occupancy", room))
        sensors.append((f"clim-{prefix}{suffix}", "climate", room))
    return Layout(bookable, lock_ids, sensors, bookable + extra)


def site_toml(layout: Layout) -> str:
    parts = [
        "[site]",
        f'id = "{SITE_ID}"',
        'name = "Fire-alarm benchmark"',
        'timezone = "UTC"',
        'hours = { open = "00:00", close = "23:59" }',
        "",
    ]
    for room in layout.bookable:
        parts += room_entry(room, capacity=ROOM_CAPACITY, bookable=True)
    for room in layout.rooms[len(layout.bookable) :]:
        parts += room_entry(room, capacity=ROOM_CAPACITY, bookable=False)
    for lock, room in zip(layout.locks, layout.bookable, strict=True):
        parts += device_entry(lock, "lock", room, "1h")  # silent between commands
    for device, kind, room in layout.sensors:
        parts += device_entry(device, kind, room, "30s")
    parts += device_entry(PANEL, "fire_alarm", None, "1h")
    return "\n".join(parts)


def background_stream(layout: Layout) -> PacketStream:
    """ROUNDS rounds over every sensor, each round a new value for each (as in ingest.py)."""
    packets: list[bytes] = []
    for round_ in range(ROUNDS):
        for index, (device, kind, _) in enumerate(layout.sensors):
            if kind == "occupancy":
                payload = b'{"occupied":true,"count":%d}' % (1 + round_)
            else:
                temperature = 20.0 + round_ * 0.1 + (index % 7) * 0.5
                humidity = 40.0 + round_ * 0.5
                payload = b'{"temperature":%.1f,"humidity":%.1f}' % (temperature, humidity)
            packets.append(publish_packet(f"{PREFIX}/{device}/state", payload))
    return build_stream(packets)


# --------------------------------------------------------------------------- background


@dataclass(frozen=True)
class BackgroundSpec:
    port: int
    stream: PacketStream
    rate: float


@dataclass
class BackgroundResult:
    sent: int = 0
    first_send: float = 0.0  # time.monotonic()
    last_send: float = 0.0
    error: str | None = None

    @property
    def achieved_rate(self) -> float:
        return self.sent / max(self.last_send - self.first_send, 1e-9)


def background_main(
    spec: BackgroundSpec, stop: EventType, sent: Synchronized[int], conn: Connection
) -> None:
    """The publisher process: connect, say ready, wait for go, send at the rate until stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    result = BackgroundResult()
    try:
        with socket.create_connection(("127.0.0.1", spec.port), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(connect_packet(f"bench-background-{os.getpid()}"))
            connack = _recv_exactly(sock, 4)
            if connack[0] != 0x20 or connack[3] != 0:
                raise BenchError(f"broker refused the publisher: {connack.hex()}")
            conn.send("ready")
            conn.recv()  # go
            _send_until(sock, spec, stop, sent, result)
            sock.sendall(DISCONNECT)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):  # the broker closes once it has read everything
                pass
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


def _send_until(
    sock: socket.socket,
    spec: BackgroundSpec,
    stop: EventType,
    sent_counter: Synchronized[int],
    result: BackgroundResult,
) -> None:
    stream = spec.stream
    view = memoryview(stream.data)
    offsets = stream.offsets
    cycle = stream.messages
    sent = 0
    start = result.first_send = time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - start) * spec.rate) + 1
        while sent < due:
            count = min(due - sent, 1000, cycle)
            position = sent % cycle
            end = position + count
            if end <= cycle:
                sock.sendall(view[offsets[position] : offsets[end]])
            else:
                sock.sendall(view[offsets[position] :])
                sock.sendall(view[: offsets[end - cycle]])
            sent += count
        sent_counter.value = sent
        result.sent = sent
        result.last_send = time.monotonic()
        wake = max(start + sent / spec.rate, time.monotonic() + SLICE_SECONDS)
        pause = wake - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # pacing to the target rate, not waiting for a condition


class Background:
    """The publisher process, started ready, told to go, stopped with its result."""

    def __init__(self, spec: BackgroundSpec) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self.sent: Synchronized[int] = context.Value("q", 0)
        self._pipe, child = context.Pipe()
        self.process = context.Process(
            target=background_main, args=(spec, self._stop, self.sent, child), daemon=True
        )
        self.process.start()
        child.close()
        self.result: BackgroundResult | None = None
        if not self._pipe.poll(30):
            self.close()
            raise BenchError("the background publisher did not connect within 30 s")
        message = self._pipe.recv()
        if isinstance(message, BackgroundResult):
            self.close()
            raise BenchError(f"background publisher failed: {message.error}")

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def go(self) -> None:
        self._pipe.send("go")

    def finish(self) -> BackgroundResult:
        self._stop.set()
        if not self._pipe.poll(60):
            raise BenchError("the background publisher did not stop within 60 s")
        result = self._pipe.recv()
        assert isinstance(result, BackgroundResult)
        if result.error:
            raise BenchError(f"background publisher failed: {result.error}")
        self.result = result
        return result

    def close(self) -> None:
        self._stop.set()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._pipe.close()


# --------------------------------------------------------------------------- the panel


class Panel:
    """The fire panel: a raw MQTT connection that writes QoS 1 PUBLISH packets at once."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.sendall(connect_packet(f"bench-panel-{os.getpid()}"))
        connack = _recv_exactly(self._sock, 4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise BenchError(f"broker refused the panel: {connack.hex()}")
        self._packet_id = 0
        self._packets = {
            alarm: {
                pid: _qos1_publish(
                    PANEL_TOPIC, b'{"alarm":%s}' % (b"true" if alarm else b"false"), pid
                )
                for pid in (1, 2)
            }
            for alarm in (True, False)
        }
        self.published = 0

    def publish(self, alarm: bool) -> float:
        """Write the state; returns ``perf_counter()`` taken just before the write."""
        self._packet_id = 1 if self._packet_id == 2 else 2
        packet = self._packets[alarm][self._packet_id]
        stamp = time.perf_counter()
        self._sock.sendall(packet)
        self.published += 1
        return stamp

    def puback(self) -> None:
        """Read the broker's PUBACK of the last publish."""
        ack = _recv_exactly(self._sock, 4)
        if ack[0] != 0x40 or int.from_bytes(ack[2:4], "big") != self._packet_id:
            raise BenchError(f"unexpected answer to the panel's publish: {ack.hex()}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendall(DISCONNECT)
        self._sock.close()


def _qos1_publish(topic: str, payload: bytes, packet_id: int) -> bytes:
    name = topic.encode()
    body = len(name).to_bytes(2, "big") + name + packet_id.to_bytes(2, "big") + payload
    return b"\x32" + bytes([len(body)]) + body  # bodies here are < 128 bytes


# --------------------------------------------------------------------------- trials


@dataclass
class Trial:
    index: int
    warmup: bool
    unlocks: int  # UNLOCK commands received in the trial window (one per lock expected)
    last_ms: float | None  # alarm -> last lock's first UNLOCK received; None: not all came
    first_ms: float | None
    wire_last_ms: float | None  # the same, as the wire probe saw the broker send them
    wire_first_ms: float | None
    backlog: int | None  # sensor messages sent but not yet ingested, just before the alarm
    # Where the time went (ms), from the controller's event log; see controller_breakdown.
    stages: dict[str, float] | None
    resets_refused: int  # 409s before the reset was taken
    relock_ms: float  # alarm false -> every lock LOCKed again and confirmed


@dataclass
class RateResult:
    rate: float
    achieved_rate: float
    ingested_rate: float  # controller's ingest counter over the trial window
    trials: list[Trial]
    max_backlog: int | None
    drain_seconds: float | None  # publisher stopped -> controller ingested everything
    cpu_percent: dict[str, float]
    controller_rss_mb: float
    target_ms: float | None
    latency: dict[str, float] = field(default_factory=dict)  # of measured last_ms
    first_unlock: dict[str, float] = field(default_factory=dict)
    wire_latency: dict[str, float] = field(default_factory=dict)  # of measured wire_last_ms
    cold_ms: float | None = None
    breakdown: dict[str, float | None] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    profile: str | None = None


class Counters:
    """Messages the controller should have ingested, against what /api/health counts."""

    def __init__(
        self, controller: CenterCtl, background: Background, emulator: LockEmulator, panel: Panel
    ) -> None:
        self._controller = controller
        self._background = background
        self._emulator = emulator
        self._panel = panel
        self._base_ingested = self.ingested()
        self._base_other = self.other()

    def ingested(self) -> int:
        return int(self._controller.health()["ingest"]["messages"])

    def other(self) -> int:
        # Lock reports and panel states also reach the controller's ingest.
        return len(self._emulator.commands) + self._panel.published

    def expected(self) -> int:
        return int(self._background.sent.value) + self.other() - self._base_other

    def backlog(self) -> int:
        return max(0, self.expected() - (self.ingested() - self._base_ingested))

    def ingested_since_start(self) -> int:
        return self.ingested() - self._base_ingested


def run_trial(
    index: int,
    *,
    warmup: bool,
    controller: CenterCtl,
    emulator: LockEmulator,
    probe: WireProbe,
    panel: Panel,
    counters: Counters,
    locks: list[str],
    gap: tuple[float, float],
) -> Trial:
    backlog = counters.backlog()
    time.sleep(random.uniform(*gap))  # spacing between alarms, not a wait for a condition
    mark = emulator.mark()
    wire_mark = probe.mark()
    wall0 = time.time()
    t0 = panel.publish(True)
    all_unlocked = every_lock(locks, "UNLOCK")
    commands = emulator.wait(all_unlocked, mark, TRIAL_TIMEOUT)
    wire = probe.wait(all_unlocked, wire_mark, 1.0 if commands is not None else 0.0)
    panel.puback()
    received = commands if commands is not None else emulator.since(mark)
    unlocks = [command for command in received if command.state == "UNLOCK"]
    first = first_unlocks(unlocks)
    wire_first = first_unlocks(wire or [])
    last_ms = first_ms = wire_last_ms = wire_first_ms = None
    stages = None
    if commands is not None:
        stamps = [command.perf for command in first.values()]
        last_ms = 1000 * (max(stamps) - t0)
        first_ms = 1000 * (min(stamps) - t0)
    if wire is not None:
        stamps = [command.perf for command in wire_first.values()]
        wire_last_ms = 1000 * (max(stamps) - t0)
        wire_first_ms = 1000 * (min(stamps) - t0)
        stages = controller_breakdown(
            controller, wall0, max(command.wall for command in wire_first.values())
        )
        if stages is not None and last_ms is not None:
            stages["client"] = last_ms - wire_last_ms
    # Back to normal: panel quiet, staff reset, every lock locked and confirmed.
    relock_start = time.perf_counter()
    panel.publish(False)
    panel.puback()
    refused = 0
    deadline = time.monotonic() + TRIAL_TIMEOUT
    while True:
        status, body = controller.call("POST", "/api/fire/reset", token=STAFF_TOKEN, body={})
        if status == 200:
            break
        if status != 409 or time.monotonic() > deadline:
            raise BenchError(f"POST /api/fire/reset answered {status}: {body}")
        refused += 1
        time.sleep(0.005)  # poll period of the reset, not a wait for a condition
    wait_for(
        lambda: controller.locks_settled(locks, "LOCK"),
        timeout=TRIAL_TIMEOUT,
        what="every lock to be locked again after the reset",
        interval=0.005,
    )
    relock_ms = 1000 * (time.perf_counter() - relock_start)
    return Trial(
        index=index,
        warmup=warmup,
        unlocks=len(unlocks),
        last_ms=last_ms,
        first_ms=first_ms,
        wire_last_ms=wire_last_ms,
        wire_first_ms=wire_first_ms,
        backlog=backlog,
        stages=stages,
        resets_refused=refused,
        relock_ms=relock_ms,
    )


STAGES = {
    "to_batch": "alarm published -> the controller begins the MQTT batch holding it",
    "send": "batch begun -> the 20th UNLOCK written to the socket (its lock_command time)",
    "out": "20th UNLOCK written -> the wire probe saw the broker's copy",
    "client": "wire probe -> the paho lock client's own receipt of the last UNLOCK (the "
    "two subscribers wake separately: can be slightly negative)",
    "rest": "20th UNLOCK written -> fire handler done (rooms re-decided, events logged, "
    "fire_alarm raised; off the path)",
}


def first_unlocks(commands: list[Command]) -> dict[str, Command]:
    """Each lock's first UNLOCK among ``commands``."""
    first: dict[str, Command] = {}
    for command in commands:
        if command.state == "UNLOCK":
            first.setdefault(command.lock, command)
    return first


def controller_breakdown(
    controller: CenterCtl, alarm_wall: float, last_receipt_wall: float
) -> dict[str, float] | None:
    """Split one alarm's latency into STAGES, in ms, from the controller's own records.

    The fire latch's time is the ingest's time stamp of the batch that held the alarm;
    each ``lock_command`` event carries the time its command was written; the
    ``fire_alarm`` alarm is raised last in the fire handler. Same machine, same wall
    clock as the bench's.
    """
    latched = controller.health()["access"].get("fire_latched_at")
    if not latched:
        return None
    latched_at = datetime.fromisoformat(latched).timestamp()
    status, body = controller.call(
        "GET",
        f"/api/events?kind=lock_command,fire_alarm&limit=200&since={quote(latched)}",
        token=READ_TOKEN,
    )
    if status != 200:
        return None
    sent: list[float] = []
    handled: float | None = None
    for event in body["events"]:
        at = datetime.fromisoformat(event["time"]).timestamp()
        if event["kind"] == "lock_command":
            if event.get("details", {}).get("command") == "UNLOCK":
                sent.append(at)
        elif event.get("state") == "active" and handled is None:
            handled = at
    if not sent or handled is None:
        return None
    last = max(sent)
    return {
        "to_batch": 1000 * (latched_at - alarm_wall),
        "send": 1000 * (last - latched_at),
        "out": 1000 * (last_receipt_wall - last),
        "rest": 1000 * (handled - last),
    }


def run_rate(
    rate: float,
    *,
    args: argparse.Namespace,
    layout: Layout,
    broker: Broker,
    controller: CenterCtl,
    emulator: LockEmulator,
    probe: WireProbe,
    panel: Panel,
    stream: PacketStream,
    target_ms: float | None,
) -> RateResult:
    background = Background(BackgroundSpec(broker.port, stream, rate))
    profiler: subprocess.Popen[bytes] | None = None
    profile_path: Path | None = None
    try:
        counters = Counters(controller, background, emulator, panel)
        assert broker.process is not None
        cpu = CpuWatch(
            {
                "controller": controller.pid,
                "broker": broker.process.pid,
                "publisher": background.pid,
                "bench": os.getpid(),
            }
        )
        background.go()
        progress(f"{rate:,.0f} msg/s: background on, settling {args.settle:g} s")
        time.sleep(args.settle)  # the settling period itself, not a wait for a condition
        controller.check_alive()
        if args.profile is not None:
            profile_path = args.profile.with_name(
                f"{args.profile.stem}-{rate:.0f}{args.profile.suffix or '.txt'}"
            )
            profiler = start_profiler(controller.pid, profile_path, args.profile_rate)
        cpu.begin()
        window_start = time.monotonic()
        ingested_start = counters.ingested_since_start()
        trials: list[Trial] = []
        total = args.warmup + args.trials
        for index in range(total):
            trial = run_trial(
                index,
                warmup=index < args.warmup,
                controller=controller,
                emulator=emulator,
                probe=probe,
                panel=panel,
                counters=counters,
                locks=layout.locks,
                gap=(args.gap_min, args.gap_max),
            )
            trials.append(trial)
            if (index + 1) % 10 == 0 or index + 1 == total:
                progress(f"{rate:,.0f} msg/s: {index + 1}/{total} trials")
        ingested = counters.ingested_since_start() - ingested_start
        window = time.monotonic() - window_start
        cpu_percent = cpu.end()
        if profiler is not None:
            stop_py_spy(profiler)
            profiler = None
        result = background.finish()
        drain = measure_drain(counters)
        rss = float(psutil.Process(controller.pid).memory_info().rss) / 2**20
    finally:
        if profiler is not None:
            stop_py_spy(profiler)
        background.close()
    return summarise(
        rate,
        trials,
        achieved=result.achieved_rate,
        ingested_rate=ingested / window,
        drain=drain,
        cpu_percent=cpu_percent,
        rss=rss,
        target_ms=target_ms,
        profile=str(profile_path) if profile_path else None,
        locks=len(layout.locks),
    )


def measure_drain(counters: Counters, idle: float = 3.0) -> float | None:
    """Seconds until the controller ingested all that was sent; None if it stopped short."""
    start = time.monotonic()
    expected = counters.expected()
    last = counters.ingested_since_start()
    moved = time.monotonic()
    while True:
        ingested = counters.ingested_since_start()
        now = time.monotonic()
        if ingested >= expected:
            return now - start
        if ingested != last:
            last, moved = ingested, now
        elif now - moved > idle:
            return None
        time.sleep(0.02)  # poll period, not a wait for a condition


def summarise(
    rate: float,
    trials: list[Trial],
    *,
    achieved: float,
    ingested_rate: float,
    drain: float | None,
    cpu_percent: dict[str, float],
    rss: float,
    target_ms: float | None,
    profile: str | None,
    locks: int,
) -> RateResult:
    measured = [trial for trial in trials if not trial.warmup]
    cold = [trial for trial in trials if trial.warmup]
    last = [trial.last_ms for trial in measured if trial.last_ms is not None]
    first = [trial.first_ms for trial in measured if trial.first_ms is not None]
    wire = [trial.wire_last_ms for trial in measured if trial.wire_last_ms is not None]

    def median(values: list[float | None]) -> float | None:
        present = sorted(value for value in values if value is not None)
        return present[len(present) // 2] if present else None

    backlogs = [trial.backlog for trial in trials if trial.backlog is not None]
    result = RateResult(
        rate=rate,
        achieved_rate=achieved,
        ingested_rate=ingested_rate,
        trials=trials,
        max_backlog=max(backlogs) if backlogs else None,
        drain_seconds=drain,
        cpu_percent=cpu_percent,
        controller_rss_mb=rss,
        target_ms=target_ms,
        latency=distribution(last),
        first_unlock=distribution(first),
        wire_latency=distribution(wire),
        cold_ms=cold[0].last_ms if cold else None,
        breakdown={
            **{
                f"{stage}_ms": median(
                    [trial.stages.get(stage) if trial.stages else None for trial in measured]
                )
                for stage in STAGES
            },
            "relock_ms": median([trial.relock_ms for trial in measured]),
        },
        profile=profile,
    )
    missing = [trial.index for trial in trials if trial.last_ms is None]
    if missing:
        result.failures.append(
            f"{rate:,.0f} msg/s: not every lock got UNLOCK within {TRIAL_TIMEOUT:g} s in "
            f"trials {missing}"
        )
    extra = sum(trial.unlocks for trial in trials) - len(trials) * locks
    if extra:
        result.failures.append(f"{rate:,.0f} msg/s: {extra} UNLOCK commands more than one a lock")
    p99 = result.latency.get("p99")
    if target_ms is not None and (p99 is None or p99 >= target_ms):
        over = "" if p99 is None else f" by {p99 - target_ms:,.1f} ms ({p99 / target_ms:.1f}x)"
        result.failures.append(
            f"{rate:,.0f} msg/s: p99 {fmt_ms(p99)} ms, target < {target_ms:g} ms: missed{over}"
        )
    return result


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    machine: str
    locks: int
    sensors: int
    rooms: int
    broker_tcp_nodelay: bool
    trials: int
    warmup: int
    rates: list[RateResult]
    controller_vm_hwm_mb: float | None
    controller_log: str

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "failures": self.failures}

    @property
    def failures(self) -> list[str]:
        return [failure for rate in self.rates for failure in rate.failures]


def format_report(report: Report) -> str:
    lines = [
        f"Fire alarm -> last UNLOCK received from the broker: {report.locks} locks, "
        f"{report.sensors} sensors in {report.rooms} rooms; {report.trials} trials a rate "
        f"(+{report.warmup} cold, not counted); broker set_tcp_nodelay "
        f"{'true' if report.broker_tcp_nodelay else 'false'}",
        f"Machine: {report.machine}",
        "",
        f"{'background':>11} {'achieved':>9} {'ingested':>9} {'p50':>7} {'p95':>7} {'p99':>7} "
        f"{'max':>7} {'target':>9} {'cold':>7} {'first':>6} {'wire p50':>8} {'wire p99':>8}"
        "  CPU % ctrl/broker/pub",
    ]
    for rate in report.rates:
        latency = rate.latency
        target = "-" if rate.target_ms is None else f"<{rate.target_ms:g}"
        met = ""
        if rate.target_ms is not None:
            met = " ok" if latency.get("p99", math.inf) < rate.target_ms else " MISS"
        cpu = rate.cpu_percent
        lines.append(
            f"{rate.rate:>9,.0f}/s {rate.achieved_rate:>7,.0f}/s {rate.ingested_rate:>7,.0f}/s "
            f"{fmt_ms(latency.get('p50')):>7} {fmt_ms(latency.get('p95')):>7} "
            f"{fmt_ms(latency.get('p99')):>7} {fmt_ms(latency.get('max')):>7} "
            f"{target + met:>9} {fmt_ms(rate.cold_ms):>7} "
            f"{fmt_ms(rate.first_unlock.get('p50')):>6} "
            f"{fmt_ms(rate.wire_latency.get('p50')):>8} {fmt_ms(rate.wire_latency.get('p99')):>8}"
            f"  {cpu.get('controller', 0):.0f}/{cpu.get('broker', 0):.0f}/"
            f"{cpu.get('publisher', 0):.0f}"
        )
    lines += [
        "  Latencies in ms, panel publish -> the 20th lock's UNLOCK received by the paho lock",
        "  client (p50..max, the target's measure); 'first': the first lock's (p50); 'cold': the",
        "  first alarm of the phase (not in the percentiles); 'wire': the 20th UNLOCK as a raw",
        "  socket subscriber saw it leave the broker. 'ingested': the controller's own rate.",
        "",
        "Where the time goes (medians, ms; controller-side times from its own event log):",
        f"{'background':>11} {'to_batch':>9} {'send':>7} {'out':>7} {'client':>7} {'rest':>7} "
        f"{'max backlog':>12} {'drain s':>8} {'relock':>7} {'RSS MB':>7}",
    ]
    for rate in report.rates:
        b = rate.breakdown
        lines.append(
            f"{rate.rate:>9,.0f}/s "
            + " ".join(
                f"{fmt_ms(b.get(f'{stage}_ms'), 2):>{width}}"
                for stage, width in zip(STAGES, (9, 7, 7, 7, 7), strict=True)
            )
            + f" {'-' if rate.max_backlog is None else f'{rate.max_backlog:,}':>12} "
            f"{'never' if rate.drain_seconds is None else f'{rate.drain_seconds:.2f}':>8} "
            f"{fmt_ms(b.get('relock_ms')):>7} {rate.controller_rss_mb:>7.1f}"
        )
    for rate in report.rates:
        measured = [t for t in rate.trials if not t.warmup and t.last_ms is not None]
        if measured:
            worst = max(measured, key=lambda trial: trial.last_ms or 0.0)
            stages = worst.stages or {}
            lines.append(
                f"{rate.rate:>9,.0f}/s slowest trial, {fmt_ms(worst.last_ms)} ms: "
                + ", ".join(f"{stage} {fmt_ms(stages.get(stage), 2)}" for stage in STAGES)
            )
    lines += [f"  {stage}: {meaning}" for stage, meaning in STAGES.items()]
    lines += [
        "  max backlog: sensor messages sent but not yet ingested just before an alarm;",
        "  drain: publisher stopped -> controller ingested all; relock: alarm false ->",
        "  reset accepted -> 20 LOCKs confirmed.",
        f"Controller VmHWM {fmt_ms(report.controller_vm_hwm_mb)} MB",
    ]
    for rate in report.rates:
        if rate.profile:
            lines.append(
                f"py-spy profile ({rate.rate:,.0f} msg/s): {rate.profile} (timings skewed)"
            )
    if report.controller_log.strip():
        lines += ["", "The controller logged (WARNING and up):", report.controller_log]
    lines.append("")
    if report.failures:
        lines.append("TARGETS MISSED:")
        lines += [f"  - {failure}" for failure in report.failures]
    else:
        lines.append("Targets met.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_targets(text: str) -> dict[float, float]:
    targets: dict[float, float] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        rate, _, limit = part.partition("=")
        targets[float(rate)] = float(limit)
    return targets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the fire alarm: panel alarm -> last UNLOCK, under sensor load.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--trials", type=int, default=50, help="measured trials per rate")
    parser.add_argument(
        "--warmup", type=int, default=1, help="first trials per rate, reported as cold only"
    )
    parser.add_argument(
        "--rates", default="5000,20000", help="background sensor msg/s, comma-separated"
    )
    parser.add_argument(
        "--targets",
        default="5000=10,20000=50",
        help="p99 limit in ms per background rate (RATE=MS, comma-separated)",
    )
    parser.add_argument("--locks", type=int, default=20, help="locks, one per bookable room")
    parser.add_argument(
        "--extra-rooms",
        type=int,
        default=80,
        help="rooms without a lock, each with an occupancy and a climate sensor",
    )
    parser.add_argument("--settle", type=float, default=3.0, help="seconds of load before trials")
    parser.add_argument("--gap-min", type=float, default=0.05, help="pause before an alarm, s")
    parser.add_argument("--gap-max", type=float, default=0.25, help="pause before an alarm, s")
    parser.add_argument(
        "--broker-nodelay",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="set_tcp_nodelay true in the broker (as deployed); --no-broker-nodelay: stock",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the controller during each rate's trials; NAME-RATE.EXT per rate",
    )
    parser.add_argument("--profile-rate", type=int, default=1000, help="py-spy samples a second")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        args.rate_list = [float(part) for part in args.rates.split(",") if part.strip()]
        args.target_map = parse_targets(args.targets)
    except ValueError:
        parser.error("--rates and --targets take numbers: 5000,20000 and 5000=10,20000=50")
    if not args.rate_list or any(rate <= 0 for rate in args.rate_list):
        parser.error("--rates must be positive numbers")
    if args.trials < 1 or args.warmup < 0 or args.locks < 1 or args.extra_rooms < 0:
        parser.error("--trials and --locks must be at least 1, --warmup and --extra-rooms >= 0")
    if not 0 <= args.gap_min <= args.gap_max:
        parser.error("need 0 <= --gap-min <= --gap-max")
    return args


def run(args: argparse.Namespace) -> Report:
    from controller.site import parse_site

    machine = machine_facts()
    layout = make_layout(args.locks, args.extra_rooms)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fire-")))
        broker = Broker(workdir, tcp_nodelay=args.broker_nodelay)
        stack.callback(broker.stop)
        broker.start()
        text = site_toml(layout)
        parse_site(text, "generated site")  # a mistake here, not in the controller's log
        site = workdir / "site.toml"
        site.write_text(text)
        emulator = LockEmulator(broker.port, PREFIX, layout.locks)
        stack.callback(emulator.stop)
        emulator.start(initial="UNLOCKED")  # retained: the controller must lock them
        probe = WireProbe(broker.port, PREFIX, layout.locks)
        stack.callback(probe.stop)
        controller = CenterCtl(site, broker.url, workdir)
        stack.callback(controller.stop)
        controller.start()
        controller.wait_connected()
        panel = Panel(broker.port)
        stack.callback(panel.close)
        panel.publish(False)
        panel.puback()
        wait_for(
            lambda: controller.health()["access"]["panel_alarm"] is False,
            timeout=10,
            what="the controller to see the panel quiet",
        )
        wait_for(
            lambda: controller.locks_settled(layout.locks, "LOCK"),
            timeout=30,
            what="the controller to lock every lock",
            interval=0.05,
        )
        progress(
            f"broker :{broker.port}, controller pid {controller.pid}: {len(layout.locks)} "
            "locks locked and confirmed"
        )
        stream = background_stream(layout)
        results = [
            run_rate(
                rate,
                args=args,
                layout=layout,
                broker=broker,
                controller=controller,
                emulator=emulator,
                probe=probe,
                panel=panel,
                stream=stream,
                target_ms=args.target_map.get(rate),
            )
            for rate in args.rate_list
        ]
        hwm = None
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{controller.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) / 1024
        return Report(
            machine=machine,
            locks=len(layout.locks),
            sensors=len(layout.sensors),
            rooms=len(layout.rooms),
            broker_tcp_nodelay=args.broker_nodelay,
            trials=args.trials,
            warmup=args.warmup,
            rates=results,
            controller_vm_hwm_mb=hwm,
            controller_log=controller.log_tail(20),
        )


def main(argv: list[str] | None = None) -> int:
    return bench_main(parse_args(argv), run, format_report)


if __name__ == "__main__":
    sys.exit(main())
