"""Modbus polling benchmark: do 200 devices polled every second keep their schedule?

Run by hand, not by pytest, with the project's venv, as a script (it imports its
neighbour ``bench/ingest.py`` for the broker and controller helpers)::

    .venv/bin/python bench/modbus.py                          # 200 ACs, 1 s, 30 s, then 20 dead
    .venv/bin/python bench/modbus.py --devices 200 --seconds 30 --dead 20 --json
    .venv/bin/python bench/modbus.py --dead 20 --refused 20    # also 20 refusing connections
    .venv/bin/python bench/modbus.py --vary                   # every poll reads a new temperature
    .venv/bin/python bench/modbus.py --profile /tmp/modbus.txt  # py-spy both phases
    .venv/bin/python bench/pyspy_top.py /tmp/modbus.txt        # ... where the time went

Targets (from the issue): every device's poll interval stays within 10 % of its
schedule, with the controller under 50 % of one core; and with 20 devices dead, the
live ones still keep schedule.

What it does, sharing nothing with the controller but Modbus TCP, MQTT and HTTP:

1. starts the device servers in their own process(es) (``--servers``, default 1), so
   that the controller's CPU is measured alone: this file re-invokes itself with the
   hidden ``serve`` command, which runs N :class:`~simulators.modbus_server.ModbusDeviceServer`
   (profile ``generic-ac``, each on its own free loopback port, so one hub and one
   connection per device in the controller) on one event loop, and talks to the bench
   in JSON lines over its stdin/stdout. It stops when its stdin closes (also when the
   bench is killed) or on SIGTERM;
2. starts a private Mosquitto (the controller needs a broker) and writes a site file
   with the N air conditioners (``poll = --period``, ``timeout = --timeout``, ten
   devices a room), then runs ``python -m controller run`` on it as a subprocess
   (broker and controller as in ``bench/ingest.py``, whose helpers this reuses);
3. waits until /api/health reports every device online, warms up (``--warmup``), and
   measures over ``--seconds``:

   - **poll intervals, server-side**: every device server time-stamps
     (``time.monotonic()``, one clock for all processes on Linux) each holding-register
     read (function code 3), which is the first request of every poll of a
     ``generic-ac``; an interval is the time between two consecutive polls of one
     device, as the device sees it. Reported: mean, p50, p99, min and max of all
     intervals, the share within +-10 % of the period, intervals out of it, slots
     skipped (an interval of about 2 periods), the per-device mean interval and the
     worst device (the largest mean |interval - period|), and polls counted against
     ``window / period`` per device;
   - the controller's own view from two /api/health snapshots (``modbus.devices``):
     polls, failures, and ``late`` (polls > 10 % after their predecessor's slot);
   - CPU of the controller, broker and device-server processes (psutil ``cpu_times``
     delta / wall time, in % of one core), the controller's RSS and VmHWM, and the
     server processes' event-loop lag (a 10 ms timer's overshoot), which says whether
     their time stamps can be trusted (a busy server delays its own stamps);
4. phase 2 (``--dead``, default 20; ``--refused``, default 0): makes ``--dead`` devices
   silent (they accept requests and never answer, so every request times out) and
   ``--refused`` ones dead (connection refused), spread over the rooms, and measures
   the live devices again over the same window, starting at the moment of the fault
   (the transition, when the dead ones still time out every period before the
   controller declares them offline, is included). At the end, /api/health must list
   every dead device offline and no live one.

Pass criteria, per phase: controller CPU < ``--cpu-target`` (50) % of one core; every
interval of every measured device within +-``--tolerance`` (10 %) of the period; no
poll missing (polls counted >= floor(window / period) per device); in phase 2, every
dead device offline and every live one online.

Exit status: 0 when every target is met, 1 when one is not (the failed ones are
printed), 2 when the benchmark could not run, 130 on Ctrl-C. Everything started here
(device servers, broker, controller, py-spy) is stopped on exit, Ctrl-C and SIGTERM.

``--profile`` samples the controller with py-spy (which pauses it briefly for every
sample): the timings of a profiled run are not the benchmark's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil  # type: ignore[import-untyped, unused-ignore]
from ingest import (
    BenchError,
    Broker,
    Controller,
    peak_rss_bytes,
    percentile,
    start_py_spy,
    stop_process,
    stop_py_spy,
    wait_for,
)

SITE_ID = "bench-modbus"
PROFILE = "generic-ac"
HOST = "127.0.0.1"
DEVICES_PER_ROOM = 10
ROOM_CAPACITY = 20
HOLDING_READ = 3  # function code: the first request of every generic-ac poll
INPUT_READ = 4
LAG_TICK = 0.01  # seconds: the device-server loop-lag probe's timer
SERVER_REPLY_TIMEOUT = 60.0


# --------------------------------------------------------------------------- device servers
# The ``serve`` side: runs in its own process, imports the simulator only there.


async def serve() -> None:
    """Run the device servers named on the first stdin line; answer commands until EOF."""
    from pymodbus.pdu import ModbusPDU

    from controller.clock import SystemClock
    from controller.site import Device
    from drivers.modbus_profile import load_profiles
    from simulators.modbus_server import ModbusDeviceServer

    class TimedDevice(ModbusDeviceServer):
        """A device server that time-stamps every poll (holding read) it receives."""

        def __init__(self, device: Device, step: int, *, vary: bool) -> None:
            super().__init__(device, profile, host=HOST, port=0, clock=SystemClock())
            self.polls: list[float] = []
            self.vary = vary
            self.step = step

        def request_received(
            self, connection: Any, request: ModbusPDU, addr: tuple[Any, ...] | None
        ) -> None:
            code = request.function_code
            if code == HOLDING_READ:
                self.polls.append(time.monotonic())
            elif code == INPUT_READ and self.vary and not self.silent:
                # A new room temperature for every poll: each reading changes its room.
                self.step += 1
                self.set("room_temperature", 22.0 + (self.step % 60) / 10)
            super().request_received(connection, request, addr)

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    config = orjson.loads(await reader.readline())
    profile = load_profiles()[PROFILE]
    lag = LagProbe()
    async with contextlib.AsyncExitStack() as stack:
        servers: dict[str, TimedDevice] = {}
        for step, device_id in enumerate(config["devices"]):
            device = Device.model_validate(
                {
                    "id": device_id,
                    "kind": profile.kind.value,
                    "room": "bench",
                    "host": HOST,
                    "port": 1,  # replaced by the free port the server picks
                    "profile": PROFILE,
                }
            )
            server = TimedDevice(device, step * 7, vary=bool(config["vary"]))
            await stack.enter_async_context(server)
            servers[device_id] = server
        lag_task = asyncio.create_task(lag.run())
        stack.callback(lag_task.cancel)
        _reply({"ports": {device_id: server.port for device_id, server in servers.items()}})
        since = time.monotonic()
        while line := await reader.readline():
            command = orjson.loads(line)
            op = command["op"]
            if op == "reset":
                for server in servers.values():
                    server.polls.clear()
                lag.lags.clear()
                since = time.monotonic()
                writes = {device_id: server.writes for device_id, server in servers.items()}
                _reply({"at": since, "writes": writes})
            elif op == "fault":
                for device_id in command["silent"]:
                    servers[device_id].set_silent(True)
                for device_id in command["refused"]:
                    await servers[device_id].set_dead(True)
                _reply({"at": time.monotonic()})
            elif op == "dump":
                lags = sorted(lag.lags)
                _reply(
                    {
                        "since": since,
                        "at": time.monotonic(),
                        "polls": {device_id: s.polls for device_id, s in servers.items()},
                        "writes": {device_id: s.writes for device_id, s in servers.items()},
                        "lag_p99": percentile(lags, 0.99) if lags else 0.0,
                        "lag_max": lags[-1] if lags else 0.0,
                    }
                )
            else:
                _reply({"error": f"unknown op {op!r}"})


class LagProbe:
    """How late a 10 ms timer fires on this loop: the loop's own scheduling delay."""

    def __init__(self) -> None:
        self.lags: list[float] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_TICK)
            self.lags.append(max(0.0, loop.time() - before - LAG_TICK))


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
    sys.stdout.buffer.flush()


def serve_main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bench stops us, in order
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        # Two sockets a device (listening + the controller's connection).
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(serve())
    return 0


@dataclass
class DeviceServers:
    """One ``serve`` process: its devices, their ports, and a JSON-lines pipe to it."""

    devices: list[str]
    vary: bool
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    _buffer: bytearray = field(default_factory=bytearray)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                bufsize=0,
                start_new_session=True,  # Ctrl-C reaches only the bench, which stops us
            )
        self.ports = {
            device: int(port)
            for device, port in self.call({"devices": self.devices, "vary": self.vary})[
                "ports"
            ].items()
        }

    def call(self, command: dict[str, Any], timeout: float = SERVER_REPLY_TIMEOUT) -> Any:
        """Send one command line, return the reply line (decoded)."""
        assert self.process is not None
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(orjson.dumps(command) + b"\n")
        except BrokenPipeError:
            raise BenchError(f"the device-server process died:\n{self.log_tail()}") from None
        reply = orjson.loads(self._read_line(timeout))
        if isinstance(reply, dict) and "error" in reply:
            raise BenchError(f"device-server process: {reply['error']}")
        return reply

    def _read_line(self, timeout: float) -> bytes:
        assert self.process is not None
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"the device-server process did not answer in {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise BenchError(f"the device-server process exited:\n{self.log_tail()}")
                self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Close stdin (the process stops its servers and exits), then insist."""
        if self.process is None:
            return
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            stop_process(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()


# --------------------------------------------------------------------------- site


def device_ids(count: int) -> list[str]:
    width = len(str(count))
    return [f"ac-{i:0{width}d}" for i in range(1, count + 1)]


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def site_toml(ports: dict[str, int], *, period: float, timeout: float) -> str:
    """The site file: the devices in ``ports`` order, ten to a room."""
    ids = list(ports)
    room_count = math.ceil(len(ids) / DEVICES_PER_ROOM)
    width = len(str(room_count))
    rooms = [f"room-{i:0{width}d}" for i in range(1, room_count + 1)]
    parts = [
        "[site]",
        f'id = "{SITE_ID}"',
        'name = "Modbus polling benchmark"',
        'timezone = "Asia/Shanghai"',
        'hours = { open = "00:00", close = "23:59" }',
        "",
    ]
    for room in rooms:
        parts += ["[[rooms]]", f'id = "{room}"', f'name = "{room}"', f"capacity = {ROOM_CAPACITY}"]
        parts.append("")
    for index, device in enumerate(ids):
        parts += [
            "[[devices]]",
            f'id = "{device}"',
            'kind = "air_conditioner"',
            f'room = "{rooms[index // DEVICES_PER_ROOM]}"',
            'protocol = "modbus"',
            f'host = "{HOST}"',
            f"port = {ports[device]}",
            "unit = 1",
            f'profile = "{PROFILE}"',
            f'poll = "{_duration(period)}"',
            f'timeout = "{_duration(timeout)}"',
            "",
        ]
    return "\n".join(parts)


def pick_faulted(ids: Sequence[str], dead: int, refused: int) -> tuple[list[str], list[str]]:
    """Devices to silence and to refuse connections, spread evenly over the list (rooms)."""
    total = dead + refused
    if total == 0:
        return [], []
    positions = [int((k + 0.5) * len(ids) / total) for k in range(total)]
    faulted = [ids[position] for position in positions]
    return faulted[:dead], faulted[dead:]


# --------------------------------------------------------------------------- measuring


@dataclass
class IntervalStats:
    """Poll intervals of the measured devices, as the devices saw them (server-side)."""

    devices: int
    window_seconds: float
    polls: int  # holding reads received in the window
    expected_polls: float  # devices * window / period
    devices_missing_polls: int  # fewer polls than floor(window / period)
    intervals: int
    mean_s: float | None
    p50_s: float | None
    p99_s: float | None
    min_s: float | None
    max_s: float | None
    within_share: float | None  # of intervals within +-tolerance of the period
    out_of_tolerance: int
    devices_out_of_tolerance: int
    skipped_slots: int  # sum of round(interval / period) - 1 over intervals
    device_mean_min_s: float | None
    device_mean_max_s: float | None
    worst_device: str | None  # the largest mean |interval - period|
    worst_device_mean_abs_deviation_s: float | None
    worst_device_mean_s: float | None
    worst_device_max_s: float | None
    per_device_mean_s: dict[str, float | None]


def interval_stats(
    stamps: dict[str, list[float]],
    windows: dict[str, float],
    *,
    period: float,
    tolerance: float,
) -> IntervalStats:
    all_intervals: list[float] = []
    means: dict[str, float | None] = {}
    deviations: dict[str, float] = {}
    out = devices_out = skipped = missing = polls = 0
    expected = 0.0
    for device, times in stamps.items():
        window = windows[device]
        expected += window / period
        polls += len(times)
        if len(times) < math.floor(window / period):
            missing += 1
        intervals = [b - a for a, b in itertools.pairwise(times)]
        all_intervals += intervals
        bad = sum(1 for value in intervals if abs(value - period) > tolerance * period)
        out += bad
        devices_out += bool(bad)
        skipped += sum(max(0, round(value / period) - 1) for value in intervals)
        if intervals:
            means[device] = sum(intervals) / len(intervals)
            deviations[device] = sum(abs(value - period) for value in intervals) / len(intervals)
        else:
            means[device] = None
    ordered = sorted(all_intervals)
    known = [mean for mean in means.values() if mean is not None]
    worst = max(deviations, key=lambda device: deviations[device]) if deviations else None
    worst_intervals = [b - a for a, b in itertools.pairwise(stamps[worst])] if worst else []

    def pick(fraction: float) -> float | None:
        return percentile(ordered, fraction) if ordered else None

    return IntervalStats(
        devices=len(stamps),
        window_seconds=max(windows.values()) if windows else 0.0,
        polls=polls,
        expected_polls=expected,
        devices_missing_polls=missing,
        intervals=len(ordered),
        mean_s=sum(ordered) / len(ordered) if ordered else None,
        p50_s=pick(0.50),
        p99_s=pick(0.99),
        min_s=ordered[0] if ordered else None,
        max_s=ordered[-1] if ordered else None,
        within_share=(len(ordered) - out) / len(ordered) if ordered else None,
        out_of_tolerance=out,
        devices_out_of_tolerance=devices_out,
        skipped_slots=skipped,
        device_mean_min_s=min(known) if known else None,
        device_mean_max_s=max(known) if known else None,
        worst_device=worst,
        worst_device_mean_abs_deviation_s=deviations[worst] if worst else None,
        worst_device_mean_s=means[worst] if worst else None,
        worst_device_max_s=max(worst_intervals) if worst_intervals else None,
        per_device_mean_s=means,
    )


@dataclass
class HealthDelta:
    """The controller's own counters for the measured devices, between two snapshots."""

    polls: int
    failures: int
    late: int  # polls > 10 % after their predecessor's slot


def health_delta(
    before: dict[str, Any], after: dict[str, Any], devices: Sequence[str]
) -> HealthDelta:
    def total(snapshot: dict[str, Any], key: str) -> int:
        return sum(int(snapshot[device][key]) for device in devices)

    return HealthDelta(
        polls=total(after, "polls") - total(before, "polls"),
        failures=total(after, "failures") - total(before, "failures"),
        late=total(after, "late") - total(before, "late"),
    )


class CpuWatch:
    """CPU seconds of a set of processes between begin() and end()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._start: dict[str, float] = {}
        self._started = 0.0

    @staticmethod
    def _cpu(process: Any) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    def begin(self) -> None:
        self._started = time.monotonic()
        self._start = {name: self._cpu(process) for name, process in self._processes.items()}

    def end(self) -> dict[str, float]:
        """% of one core per process since begin()."""
        wall = max(time.monotonic() - self._started, 1e-9)
        return {
            name: 100 * (self._cpu(process) - self._start[name]) / wall
            for name, process in self._processes.items()
        }


@dataclass
class Phase:
    name: str
    measured: list[str]  # live devices whose intervals count
    silent: list[str]
    refused: list[str]
    intervals: IntervalStats
    controller_view: HealthDelta
    controller_cpu_percent: float
    controller_rss_mb: float
    broker_cpu_percent: float
    server_cpu_percent: list[float]  # per device-server process
    server_loop_lag_p99_ms: float
    server_loop_lag_max_ms: float
    room_states_published: int  # by the controller in the window (MQTT)
    device_writes: int  # writes the devices received in the window (expected: none)
    dead_failures: dict[str, int]  # per dead device: failed polls in the window (/api/health)
    dead_not_offline: list[str]  # at the end: dead devices /api/health does not list offline
    live_not_online: list[str]  # at the end: live devices not online


def wait_all_online(controller: Controller, devices: Sequence[str], timeout: float) -> None:
    wanted = set(devices)

    def online() -> bool:
        status = controller.health()["modbus"]["devices"]
        return all(status[device]["online"] is True for device in wanted)

    wait_for(online, timeout=timeout, what="every Modbus device to be online", interval=0.2)


def measure_phase(
    name: str,
    *,
    controller: Controller,
    servers: list[DeviceServers],
    cpu: CpuWatch,
    live: list[str],
    silent: list[str],
    refused: list[str],
    args: argparse.Namespace,
    profile: Path | None,
) -> Phase:
    """Apply the faults (if any), then measure for ``args.seconds`` from that moment."""
    owner = {device: server for server in servers for device in server.devices}
    if silent or refused:
        for server in servers:
            mine = set(server.devices)
            server.call(
                {
                    "op": "fault",
                    "silent": [device for device in silent if device in mine],
                    "refused": [device for device in refused if device in mine],
                }
            )
    health_before = controller.health()
    before = health_before["modbus"]["devices"]
    resets = {id(server): server.call({"op": "reset"}) for server in servers}
    cpu.begin()
    profiler = start_py_spy(controller.pid, profile) if profile is not None else None
    try:
        deadline = time.monotonic() + args.seconds
        while (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(remaining, 1.0))  # the measurement window itself
            assert controller.process is not None
            if controller.process.poll() is not None:
                raise BenchError(f"the controller exited:\n{controller.log_tail()}")
    finally:
        if profiler is not None:
            stop_py_spy(profiler)
    usage = cpu.end()
    rss = psutil.Process(controller.pid).memory_info().rss
    dumps = {id(server): server.call({"op": "dump"}) for server in servers}
    health_after = controller.health()
    status = health_after["modbus"]["devices"]
    stamps: dict[str, list[float]] = {}
    windows: dict[str, float] = {}
    for device in live:
        dump = dumps[id(owner[device])]
        stamps[device] = [float(stamp) for stamp in dump["polls"][device]]
        windows[device] = float(dump["at"]) - float(dump["since"])
    writes = sum(
        int(count) - int(resets[id(server)]["writes"][device])
        for server in servers
        for device, count in dumps[id(server)]["writes"].items()
    )
    dead = silent + refused
    return Phase(
        name=name,
        measured=live,
        silent=silent,
        refused=refused,
        intervals=interval_stats(stamps, windows, period=args.period, tolerance=args.tolerance),
        controller_view=health_delta(before, status, live),
        controller_cpu_percent=usage["controller"],
        controller_rss_mb=rss / 2**20,
        broker_cpu_percent=usage["broker"],
        server_cpu_percent=[usage[f"server-{i}"] for i in range(len(servers))],
        server_loop_lag_p99_ms=1000 * max(float(d["lag_p99"]) for d in dumps.values()),
        server_loop_lag_max_ms=1000 * max(float(d["lag_max"]) for d in dumps.values()),
        room_states_published=int(health_after["ingest"]["room_states_published"])
        - int(health_before["ingest"]["room_states_published"]),
        device_writes=writes,
        dead_failures={
            device: int(status[device]["failures"]) - int(before[device]["failures"])
            for device in dead
        },
        dead_not_offline=[device for device in dead if status[device]["online"] is not False],
        live_not_online=[device for device in live if status[device]["online"] is not True],
    )


def phase_failures(phase: Phase, args: argparse.Namespace) -> list[str]:
    """The targets this phase missed, as sentences."""
    failures: list[str] = []
    stats = phase.intervals
    label = phase.name
    if phase.controller_cpu_percent >= args.cpu_target:
        failures.append(
            f"{label}: controller CPU {phase.controller_cpu_percent:.1f} % of one core "
            f"(target < {args.cpu_target:g} %)"
        )
    if stats.out_of_tolerance:
        failures.append(
            f"{label}: {stats.out_of_tolerance} of {stats.intervals} poll intervals "
            f"({stats.devices_out_of_tolerance} devices) outside +-{100 * args.tolerance:g} % "
            f"of {args.period:g} s (min {_s(stats.min_s)}, max {_s(stats.max_s)})"
        )
    if stats.devices_missing_polls:
        failures.append(
            f"{label}: {stats.devices_missing_polls} devices had fewer polls than "
            f"floor(window / period)"
        )
    if not stats.intervals:
        failures.append(f"{label}: no poll intervals measured")
    if phase.dead_not_offline:
        failures.append(
            f"{label}: {len(phase.dead_not_offline)} dead devices not offline in /api/health: "
            + ", ".join(phase.dead_not_offline[:5])
        )
    if phase.live_not_online:
        failures.append(
            f"{label}: {len(phase.live_not_online)} live devices not online: "
            + ", ".join(phase.live_not_online[:5])
        )
    return failures


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    devices: int
    period_s: float
    timeout_s: float
    seconds: float
    warmup_s: float
    tolerance: float
    cpu_target_percent: float
    vary: bool
    server_processes: int
    cpus: int | None
    load_average_before: tuple[float, float, float]
    phases: list[Phase]
    controller_vm_hwm_mb: float | None
    failures: list[str]
    profile: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _ms_dev(value: float | None, period: float) -> str:
    return "-" if value is None else f"{1000 * (value - period):+.1f} ms"


def _phase_lines(phase: Phase, report: Report) -> list[str]:
    stats = phase.intervals
    period = report.period_s
    view = phase.controller_view
    title = f"{phase.name}: {len(phase.measured)} live devices measured"
    if phase.silent or phase.refused:
        title += f"; {len(phase.silent)} silent, {len(phase.refused)} refusing connections"
    share = "-" if stats.within_share is None else f"{100 * stats.within_share:.2f} %"
    lines = [
        title,
        f"  window             {stats.window_seconds:.1f} s",
        f"  polls              {stats.polls:,} of {stats.expected_polls:,.0f} expected "
        f"(window / period per device); devices short of polls: {stats.devices_missing_polls}",
        f"  intervals          {stats.intervals:,}: mean {_s(stats.mean_s)}  "
        f"p50 {_s(stats.p50_s)}  p99 {_s(stats.p99_s)}  min {_s(stats.min_s)}  "
        f"max {_s(stats.max_s)}",
        f"  within +-{100 * report.tolerance:g} %      {share}; {stats.out_of_tolerance} "
        f"outside, on {stats.devices_out_of_tolerance} devices; skipped slots "
        f"{stats.skipped_slots}",
        f"  per-device mean    {_s(stats.device_mean_min_s)} .. {_s(stats.device_mean_max_s)}",
        f"  worst device       {stats.worst_device or '-'}: mean |interval - period| "
        f"{_ms(stats.worst_device_mean_abs_deviation_s)}, mean interval "
        f"{_ms_dev(stats.worst_device_mean_s, period)} off, max {_s(stats.worst_device_max_s)}",
        f"  controller's view  polls {view.polls:,}, failures {view.failures:,}, "
        f"late (> 10 %) {view.late:,}   (/api/health, live devices)",
        f"  controller CPU     {phase.controller_cpu_percent:.1f} % of one core, "
        f"RSS {phase.controller_rss_mb:.1f} MB; room states published "
        f"{phase.room_states_published:,}",
        f"  other CPU          broker {phase.broker_cpu_percent:.1f} %, device servers "
        + ", ".join(f"{value:.1f} %" for value in phase.server_cpu_percent)
        + f" (loop lag p99 {phase.server_loop_lag_p99_ms:.1f} ms, "
        f"max {phase.server_loop_lag_max_ms:.1f} ms)",
    ]
    if phase.device_writes:
        lines.append(f"  device writes      {phase.device_writes} (the rules wrote to devices)")
    dead = phase.silent + phase.refused
    if dead:
        tried = sorted(phase.dead_failures.values())
        lines.append(
            f"  dead devices       {len(dead) - len(phase.dead_not_offline)} of {len(dead)} "
            f"offline at the end; failed polls on each in the window: "
            f"{tried[0]}..{tried[-1]} (offline after a few, then backoff)"
        )
        if phase.live_not_online:
            lines.append(f"  live not online    {', '.join(phase.live_not_online)}")
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{1000 * value:.1f} ms"


def format_report(report: Report) -> str:
    load = ", ".join(f"{value:.2f}" for value in report.load_average_before)
    lines = [
        f"Controller Modbus polling: {report.devices} generic-ac devices, poll "
        f"{report.period_s:g} s, timeout {report.timeout_s:g} s, one connection each; "
        f"{report.server_processes} device-server process(es); {report.cpus or '?'} CPUs "
        f"(load average before: {load})",
        f"Intervals are measured by the devices (time between two holding-register reads); "
        f"{'every poll reads a new temperature' if report.vary else 'values do not change'}",
    ]
    for phase in report.phases:
        lines += ["", *_phase_lines(phase, report)]
    lines += ["", f"Controller VmHWM {report.controller_vm_hwm_mb or 0:.1f} MB"]
    if report.profile:
        lines.append(f"py-spy profiles: {report.profile} (timings of a profiled run are skewed)")
    lines.append("")
    if report.failures:
        lines.append("TARGETS MISSED:")
        lines += [f"  - {failure}" for failure in report.failures]
    else:
        lines.append(
            f"Targets met: every interval within +-{100 * report.tolerance:g} %, controller "
            f"under {report.cpu_target_percent:g} % of one core"
            + (", dead devices offline" if len(report.phases) > 1 else "")
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the controller's Modbus polling schedule.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=200, help="air conditioners polled")
    parser.add_argument("--period", type=float, default=1.0, help="poll period, seconds")
    parser.add_argument(
        "--timeout", type=float, help="request timeout, seconds (default: half the period)"
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="each phase's window")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before phase 1")
    parser.add_argument(
        "--dead",
        type=int,
        default=20,
        help="phase 2: devices made silent (with --refused 0 too, there is no phase 2)",
    )
    parser.add_argument(
        "--refused", type=int, default=0, help="phase 2: devices refusing connections"
    )
    parser.add_argument(
        "--servers", type=int, default=1, help="device-server processes to spread devices over"
    )
    parser.add_argument(
        "--vary", action="store_true", help="every poll reads a new room temperature"
    )
    parser.add_argument("--tolerance", type=float, default=0.10, help="allowed interval error")
    parser.add_argument(
        "--cpu-target", type=float, default=50.0, help="controller CPU limit, %% of one core"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the controller in each phase; raw collapsed stacks here "
        "(phase 2: NAME-dead.EXT)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.devices < 1 or args.period <= 0 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--devices, --period and --seconds must be positive")
    if args.timeout is None:
        args.timeout = args.period / 2
    if not 0 < args.timeout < args.period:
        parser.error("--timeout must be positive and shorter than --period")
    if args.dead < 0 or args.refused < 0 or args.dead + args.refused >= args.devices:
        parser.error("--dead + --refused must leave at least one live device")
    if not 1 <= args.servers <= args.devices:
        parser.error("--servers must be between 1 and --devices")
    return args


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> Report:
    """Start servers, broker and controller, run both phases, stop everything."""
    from controller.site import parse_site

    ids = device_ids(args.devices)
    load_before = os.getloadavg()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-modbus-")))
        servers: list[DeviceServers] = []
        for index in range(args.servers):
            server = DeviceServers(
                ids[index :: args.servers], args.vary, workdir / f"servers-{index}.log"
            )
            stack.callback(server.stop)
            server.start()
            servers.append(server)
        ports = {device: port for server in servers for device, port in server.ports.items()}
        ports = {device: ports[device] for device in ids}
        progress(f"{len(ports)} device servers in {len(servers)} process(es)")
        broker = Broker(workdir)
        stack.callback(broker.stop)
        broker.start()
        site_text = site_toml(ports, period=args.period, timeout=args.timeout)
        parse_site(site_text, "generated site")  # a mistake here, not in the controller's log
        site = workdir / "site.toml"
        site.write_text(site_text)
        controller = Controller(site, broker.url, workdir)
        stack.callback(controller.stop)
        controller.start()
        controller.wait_connected()
        wait_all_online(controller, ids, timeout=30 + 2 * args.period)
        progress(f"controller pid {controller.pid}: all {len(ids)} devices online")
        assert broker.process is not None
        pids = {"controller": controller.pid, "broker": broker.process.pid}
        pids.update({f"server-{i}": server.pid for i, server in enumerate(servers)})
        cpu = CpuWatch(pids)
        if args.warmup:
            progress(f"warming up {args.warmup:g} s")
            time.sleep(args.warmup)  # the warm-up period itself, not a wait for a condition
        phases: list[Phase] = []
        profile = args.profile
        progress(f"phase 1: all {len(ids)} devices live, {args.seconds:g} s")
        phases.append(
            measure_phase(
                "Phase 1",
                controller=controller,
                servers=servers,
                cpu=cpu,
                live=ids,
                silent=[],
                refused=[],
                args=args,
                profile=profile,
            )
        )
        if args.dead or args.refused:
            silent, refused = pick_faulted(ids, args.dead, args.refused)
            dead = set(silent + refused)
            progress(f"phase 2: {len(silent)} silent, {len(refused)} refusing, {args.seconds:g} s")
            phases.append(
                measure_phase(
                    "Phase 2",
                    controller=controller,
                    servers=servers,
                    cpu=cpu,
                    live=[device for device in ids if device not in dead],
                    silent=silent,
                    refused=refused,
                    args=args,
                    profile=(
                        profile.with_name(f"{profile.stem}-dead{profile.suffix}")
                        if profile
                        else None
                    ),
                )
            )
        hwm = peak_rss_bytes(controller.pid)
        failures = [failure for phase in phases for failure in phase_failures(phase, args)]
        return Report(
            devices=len(ids),
            period_s=args.period,
            timeout_s=args.timeout,
            seconds=args.seconds,
            warmup_s=args.warmup,
            tolerance=args.tolerance,
            cpu_target_percent=args.cpu_target,
            vary=args.vary,
            server_processes=len(servers),
            cpus=os.cpu_count(),
            load_average_before=load_before,
            phases=phases,
            controller_vm_hwm_mb=hwm / 2**20 if hwm is not None else None,
            failures=failures,
            profile=str(profile) if profile else None,
        )


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["serve"]:
        return serve_main()
    args = parse_args(arguments)
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
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
