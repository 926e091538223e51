#!/usr/bin/env python
"""Bookings benchmark: 10,000 bookings over HTTP, and doors unlocked on time meanwhile.

Run by hand, not by pytest, with the project's venv, as a script (it imports its
neighbours ``bench/ingest.py`` and ``bench/common.py``)::

    .venv/bin/python bench/bookings.py                       # 10,000 bookings, 100 timed unlocks
    .venv/bin/python bench/bookings.py --bookings 10000 --concurrency 8 --json
    .venv/bin/python bench/bookings.py --profile /tmp/bookings.txt   # py-spy the PUT phases
    .venv/bin/python bench/pyspy_top.py /tmp/bookings.txt            # ... where the time went

Targets (issue 4, "Performance"): 10,000 bookings across the site's rooms with a
PUT p99 under 20 ms, and every unlock issued within 1 s of its scheduled time.

What it does, sharing nothing with the controller but MQTT and HTTP:

1. starts its own Mosquitto (``bench/ingest.py``'s :class:`Broker`) and writes a
   site: ``--rooms`` bookable rooms, each with a lock and an occupancy sensor;
   time zone UTC, hours 00:00-23:59; rules ``unlock_before`` (default 10 s),
   ``no_show_after`` and ``relock_grace`` short, so that a schedule of short
   bookings runs in real time within about a minute;
2. plays every lock (:class:`common.LockEmulator`: each command is time-stamped
   with ``time.time()`` on receipt and answered with the new state, retained) and
   reports every room empty; starts ``centerctl run`` as a subprocess and waits
   until it has locked every lock;
3. PUTs ``--bookings`` bookings with an aiohttp client, timing each request (send to
   whole response read):

   - first the ``--near`` near-term bookings, one after the other: short bookings
     (``--duration``) whose unlock moments (start - unlock_before) begin
     ``--lead`` seconds later and are spread over about a minute, each room's one
     after the other with the room locked in between (the previous booking has
     ended, the room is empty, so the controller relocks it), so that every one of
     them must produce an UNLOCK command;
   - then the rest, days ahead (from tomorrow, 11 one-hour slots a day and room):
     the first ``--sequential-share`` one at a time, the others with
     ``--concurrency`` requests in flight. The first near-term unlocks fall due
     while this runs (``--lead``, default 3 s, after the near-term PUTs);
   - then, until the last near-term booking has ended, it keeps replacing the
     days-ahead bookings (a new title each round: 200, "replaced"), ``--concurrency``
     in flight, so that every other unlock and relock also falls due under API load
     (``--no-replace-load``: an idle API instead). Reported as its own PUT phase;
     the "all" row and the RSS "after" are the 10,000 created bookings only;
4. waits until the last near-term booking has ended, then matches each scheduled
   unlock with the first UNLOCK its lock received after it (lateness = receipt -
   scheduled time, wall clock: the controller runs on the system clock) and each
   booking's end with the LOCK that followed (the room is empty: it locks at the
   end), grouped by what the API was doing at the scheduled moment. An UNLOCK
   earlier than scheduled counts as a miss too.

Also reported: bookings/s per phase, the controller's RSS before and after the
bookings (psutil) and its VmHWM, its CPU during the PUT phases.

The site's day is UTC: if the near-term schedule would cross 23:59 UTC (the end of
"hours"), the benchmark waits for the next day first and says so.

Exit status: 0 when every target is met, 1 when one is not, 2 when the benchmark
could not run, 130 on Ctrl-C. Everything started here is stopped on exit, Ctrl-C,
SIGTERM and errors. ``--profile`` runs py-spy (non-blocking) on the controller during
the PUT phases; its figures are then not the benchmark's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from common import (
    BOOKING_TOKEN,
    READ_TOKEN,
    CenterCtl,
    Command,
    CpuWatch,
    LockEmulator,
    bench_main,
    device_entry,
    distribution,
    fmt_ms,
    machine_facts,
    progress,
    room_entry,
    rss_mb,
    start_profiler,
)
from ingest import Broker, peak_rss_bytes, stop_py_spy, wait_for

SITE_ID = "bench-bookings"
PREFIX = f"center/{SITE_ID}"
ROOM_CAPACITY = 30
FAR_SLOTS = 11  # one-hour bookings a day and room, days ahead: 01:00, 03:00, ... 21:00
PUT_TARGET_MS = 20.0
UNLOCK_TARGET_MS = 1000.0
CLOSE = (23, 59)  # the site's hours end here (UTC)


# --------------------------------------------------------------------------- site


@dataclass(frozen=True)
class Layout:
    rooms: list[str]
    locks: list[str]  # locks[i] is in rooms[i]
    sensors: list[str]  # occupancy sensors, sensors[i] in rooms[i]


def make_layout(rooms: int) -> Layout:
    width = max(2, len(str(rooms)))
    numbers = [f"{i:0{width}d}" for i in range(1, rooms + 1)]
    return Layout(
        [f"room-{n}" for n in numbers],
        [f"lock-{n}" for n in numbers],
        [f"occ-{n}" for n in numbers],
    )


def _seconds(value: float) -> str:
    return f"{round(value * 1000)}ms"


def site_toml(layout: Layout, args: argparse.Namespace) -> str:
    parts = [
        "[site]",
        f'id = "{SITE_ID}"',
        'name = "Bookings benchmark"',
        'timezone = "UTC"',
        'hours = { open = "00:00", close = "23:59" }',
        "",
        "[rules]",
        f'unlock_before = "{_seconds(args.unlock_before)}"',
        f'no_show_after = "{_seconds(args.no_show_after)}"',
        f'relock_grace = "{_seconds(args.relock_grace)}"',
        "",
    ]
    for room in layout.rooms:
        parts += room_entry(room, capacity=ROOM_CAPACITY, bookable=True)
    for room, lock, sensor in zip(layout.rooms, layout.locks, layout.sensors, strict=True):
        parts += device_entry(lock, "lock", room, "1h")
        parts += device_entry(sensor, "occupancy", room, "1h")
    return "\n".join(parts)


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Booking:
    id: str
    room: str
    lock: str
    start: datetime
    end: datetime
    near: bool

    def body(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "title": "bench" if not self.near else "bench near-term",
            "organizer": "bench",
            "expected_attendees": 5,
        }


def near_schedule(
    layout: Layout, args: argparse.Namespace, origin: datetime
) -> tuple[list[Booking], float]:
    """The near-term bookings (unlock moments from ``origin + lead``) and the cycle, s.

    Each room's bookings follow one another with the room locked in between: a
    cycle is unlock_before + duration + gap; rooms are staggered over the cycle.
    """
    rooms = len(layout.rooms)
    cycle = args.unlock_before + args.duration + args.gap
    stagger = cycle / rooms
    bookings: list[Booking] = []
    for index in range(args.near):
        room, slot = index % rooms, index // rooms
        unlock = origin + timedelta(seconds=args.lead + slot * cycle + room * stagger)
        unlock = unlock.replace(microsecond=(unlock.microsecond // 1000) * 1000)
        start = unlock + timedelta(seconds=args.unlock_before)
        bookings.append(
            Booking(
                f"near-{index + 1:04d}",
                layout.rooms[room],
                layout.locks[room],
                start,
                start + timedelta(seconds=args.duration),
                near=True,
            )
        )
    return bookings, cycle


def far_schedule(layout: Layout, count: int, today: datetime) -> list[Booking]:
    """``count`` one-hour bookings from tomorrow, FAR_SLOTS a day and room, rooms in turn."""
    rooms = len(layout.rooms)
    midnight = today.replace(hour=0, minute=0, second=0, microsecond=0)
    bookings: list[Booking] = []
    for index in range(count):
        room, per_room = index % rooms, index // rooms
        day, slot = 1 + per_room // FAR_SLOTS, per_room % FAR_SLOTS
        start = midnight + timedelta(days=day, hours=1 + 2 * slot, minutes=room % 30)
        bookings.append(
            Booking(
                f"far-{index + 1:05d}",
                layout.rooms[room],
                layout.locks[room],
                start,
                start + timedelta(hours=1),
                near=False,
            )
        )
    return bookings


def wait_for_room_in_the_day(seconds_needed: float) -> None:
    """If the next ``seconds_needed`` would cross the site's close (23:59 UTC), wait."""
    now = datetime.now(UTC)
    close = now.replace(hour=CLOSE[0], minute=CLOSE[1], second=0, microsecond=0)
    if now + timedelta(seconds=seconds_needed) < close:
        return
    resume = close.replace(hour=0, minute=0) + timedelta(days=1, seconds=5)
    pause = (resume - now).total_seconds()
    progress(
        f"the near-term schedule ({seconds_needed:.0f} s) would cross 23:59 UTC, the end of "
        f"the site's hours: waiting {pause:.0f} s for the next day"
    )
    time.sleep(pause)  # waiting for the clock to pass midnight, not for a condition


# --------------------------------------------------------------------------- PUTs


@dataclass
class PutPhase:
    name: str
    expected_status: int = 201
    count: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)  # the first few non-201 answers
    started_wall: float = 0.0
    ended_wall: float = 0.0
    completed: dict[str, float] = field(default_factory=dict)  # booking -> time.time(), near

    def record(self, status: int, body: bytes, milliseconds: float) -> None:
        self.latencies_ms.append(milliseconds)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status != self.expected_status and len(self.refusals) < 5:
            self.refusals.append(f"{status}: {body[:300].decode(errors='replace')}")

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "count": self.count,
            "seconds": self.seconds,
            "bookings_per_second": self.rate,
            "latency_ms": distribution(self.latencies_ms),
            "statuses": self.statuses,
            "refusals": self.refusals,
        }


async def put_bookings(
    session: aiohttp.ClientSession,
    base: str,
    bookings: list[Booking],
    phase: PutPhase,
    concurrency: int,
) -> None:
    """PUT every booking, ``concurrency`` in flight, timing each request."""
    headers = {"Authorization": f"Bearer {BOOKING_TOKEN}"}
    queue: asyncio.Queue[Booking] = asyncio.Queue()
    for booking in bookings:
        queue.put_nowait(booking)

    async def worker() -> None:
        while not queue.empty():
            booking = queue.get_nowait()
            started = time.perf_counter()
            async with session.put(
                f"{base}/api/bookings/{booking.id}", json=booking.body(), headers=headers
            ) as response:
                body = await response.read()
            phase.record(response.status, body, 1000 * (time.perf_counter() - started))
            if booking.near:
                phase.completed[booking.id] = time.time()

    phase.started_wall = time.time()
    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.seconds = time.perf_counter() - began
    phase.ended_wall = time.time()
    phase.count = len(bookings)


async def replace_bookings(
    session: aiohttp.ClientSession,
    base: str,
    bookings: list[Booking],
    phase: PutPhase,
    concurrency: int,
    until: float,
) -> None:
    """Replace ``bookings`` in turn (a new title each round) until ``until`` (time.time())."""
    headers = {"Authorization": f"Bearer {BOOKING_TOKEN}"}
    turn = 0

    async def worker() -> None:
        nonlocal turn
        while time.time() < until:
            booking = bookings[turn % len(bookings)]
            body = {**booking.body(), "title": f"bench, replaced {turn // len(bookings) + 1}"}
            turn += 1
            started = time.perf_counter()
            async with session.put(
                f"{base}/api/bookings/{booking.id}", json=body, headers=headers
            ) as response:
                raw = await response.read()
            phase.record(response.status, raw, 1000 * (time.perf_counter() - started))
            phase.count += 1

    phase.started_wall = time.time()
    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.seconds = time.perf_counter() - began
    phase.ended_wall = time.time()


async def put_all(
    port: int,
    near: list[Booking],
    sequential: list[Booking],
    concurrent: list[Booking],
    concurrency: int,
    *,
    after_bookings: Callable[[], None],
    replace_until: float | None,
) -> list[PutPhase]:
    """The three creating phases, ``after_bookings()``, then replacements until the end."""
    base = f"http://127.0.0.1:{port}"
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    phases = [
        PutPhase("near-term, sequential"),
        PutPhase("days ahead, sequential"),
        PutPhase(f"days ahead, {concurrency} in flight"),
    ]
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for phase, bookings, width in zip(
            phases, (near, sequential, concurrent), (1, 1, concurrency), strict=True
        ):
            if bookings:
                progress(f"PUT {len(bookings):,} bookings: {phase.name}")
                await put_bookings(session, base, bookings, phase, width)
        after_bookings()
        ahead = sequential + concurrent
        if replace_until is not None and ahead and time.time() < replace_until:
            replace = PutPhase(f"replacing, {concurrency} in flight", expected_status=200)
            progress(
                f"replacing days-ahead bookings, {concurrency} in flight, until the last "
                f"near-term booking has ended ({replace_until - time.time():.0f} s)"
            )
            await replace_bookings(session, base, ahead, replace, concurrency, replace_until)
            phases.append(replace)
    return [phase for phase in phases if phase.count]


# --------------------------------------------------------------------------- timing


@dataclass
class Matched:
    booking: str
    lock: str
    scheduled: float  # wall clock, s
    received: float | None  # wall clock of the matching command, None: none came
    during: str  # what the API was doing at the scheduled moment

    @property
    def lateness_ms(self) -> float | None:
        return None if self.received is None else 1000 * (self.received - self.scheduled)


def match_commands(
    bookings: list[Booking],
    commands: Iterable[Command],
    state: str,
    moment: Callable[[Booking], float],
    phases: list[PutPhase],
    early_slack: float,
) -> list[Matched]:
    """Each booking's ``moment`` (wall clock, s) -> the first ``state`` command after it.

    A command counts for a booking if it came after the previous booking's moment in
    the same room (and at most ``early_slack`` s before this one's: a command that
    early is reported as early, a negative lateness).
    """
    by_lock: dict[str, list[float]] = {}
    for command in commands:
        if command.state == state:
            by_lock.setdefault(command.lock, []).append(command.wall)
    results: list[Matched] = []
    per_lock: dict[str, list[Booking]] = {}
    for booking in bookings:
        per_lock.setdefault(booking.lock, []).append(booking)
    for lock, own in per_lock.items():
        own.sort(key=lambda booking: booking.start)
        stamps = sorted(by_lock.get(lock, []))
        for booking in own:
            scheduled = moment(booking)
            received = next((stamp for stamp in stamps if stamp >= scheduled - early_slack), None)
            if received is not None:
                stamps.remove(received)
            results.append(
                Matched(booking.id, lock, scheduled, received, activity(scheduled, phases))
            )
    return sorted(results, key=lambda matched: matched.scheduled)


def activity(moment: float, phases: list[PutPhase]) -> str:
    for phase in phases:
        if phase.started_wall <= moment <= phase.ended_wall:
            return phase.name
    return "no PUTs running"


def lateness_summary(matched: list[Matched], limit_ms: float) -> dict[str, Any]:
    lateness = [value for item in matched if (value := item.lateness_ms) is not None]
    groups: dict[str, list[float]] = {}
    for item in matched:
        if (value := item.lateness_ms) is not None:
            groups.setdefault(item.during, []).append(value)
    return {
        "scheduled": len(matched),
        "issued": len(lateness),
        "missing": [item.booking for item in matched if item.received is None],
        "early": [item.booking for item in matched if (item.lateness_ms or 0) < 0],
        "late": [item.booking for item in matched if (item.lateness_ms or 0) > limit_ms],
        "lateness_ms": distribution(lateness),
        "by_activity": {
            name: {**distribution(values), "n": len(values)} for name, values in groups.items()
        },
    }


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    machine: str
    rooms: int
    bookings: int
    near: int
    unlock_before_s: float
    put_phases: list[dict[str, Any]]
    put_all: dict[str, float]
    unlocks: dict[str, Any]
    relocks: dict[str, Any]
    stored: int | None
    controller_rss_before_mb: float
    controller_rss_after_mb: float
    controller_vm_hwm_mb: float | None
    controller_cpu_percent: float
    controller_log: str
    failures: list[str]
    profile: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _row(name: str, count: int, rate: float | None, latency: dict[str, float]) -> str:
    return (
        f"  {name:<26} {count:>7,} {fmt_ms(latency.get('p50'), 2):>7} "
        f"{fmt_ms(latency.get('p95'), 2):>7} {fmt_ms(latency.get('p99'), 2):>7} "
        f"{fmt_ms(latency.get('max'), 2):>7} {'-' if rate is None else f'{rate:,.0f}':>10}"
    )


def _lateness_lines(title: str, summary: dict[str, Any]) -> list[str]:
    lateness = summary["lateness_ms"]
    lines = [
        f"{title}: {summary['issued']} of {summary['scheduled']} issued; lateness ms "
        f"p50 {fmt_ms(lateness.get('p50'))}  p99 {fmt_ms(lateness.get('p99'))}  "
        f"max {fmt_ms(lateness.get('max'))}  min {fmt_ms(lateness.get('min'))}"
    ]
    for name, values in summary["by_activity"].items():
        lines.append(
            f"  while {name + ':':<30} n {values['n']:>4}  p50 {fmt_ms(values.get('p50'))}  "
            f"p99 {fmt_ms(values.get('p99'))}  max {fmt_ms(values.get('max'))}"
        )
    return lines


def format_report(report: Report) -> str:
    lines = [
        f"Bookings: {report.bookings:,} PUT over HTTP ({report.near} near-term + "
        f"{report.bookings - report.near:,} days ahead) across {report.rooms} rooms; site "
        f"zone UTC; unlock_before {report.unlock_before_s:g} s",
        f"Machine: {report.machine}",
        "",
        f"  {'PUT /api/bookings/{id}':<26} {'n':>7} {'p50':>7} {'p95':>7} {'p99':>7} "
        f"{'max':>7} {'booking/s':>10}   (ms, send -> response read)",
    ]
    for phase in report.put_phases:
        lines.append(
            _row(phase["name"], phase["count"], phase["bookings_per_second"], phase["latency_ms"])
        )
    lines.append(_row("all created", report.bookings, None, report.put_all))
    statuses: dict[str, int] = {}
    for phase in report.put_phases:
        for status, count in phase["statuses"].items():
            statuses[str(status)] = statuses.get(str(status), 0) + count
    lines.append(
        "  statuses: "
        + ", ".join(f"{status}: {count:,}" for status, count in statuses.items())
        + (f"; stored (GET /api/bookings): {report.stored:,}" if report.stored is not None else "")
    )
    lines += ["", *_lateness_lines("Unlocks at start - unlock_before", report.unlocks)]
    lines += _lateness_lines("Relocks at the end (room empty)", report.relocks)
    lines += [
        "",
        f"Controller RSS {report.controller_rss_before_mb:.1f} MB before the bookings, "
        f"{report.controller_rss_after_mb:.1f} MB after {report.bookings:,}; VmHWM "
        f"{fmt_ms(report.controller_vm_hwm_mb)} MB; CPU during the PUTs "
        f"{report.controller_cpu_percent:.0f} % of one core",
    ]
    if report.profile:
        lines.append(f"py-spy profile of the PUT phases: {report.profile} (timings skewed)")
    if report.controller_log.strip():
        lines += ["", "The controller logged (WARNING and up):", report.controller_log]
    lines.append("")
    if report.failures:
        lines.append("TARGETS MISSED:")
        lines += [f"  - {failure}" for failure in report.failures]
    else:
        lines.append(
            f"Targets met: PUT p99 < {PUT_TARGET_MS:g} ms in every phase, every unlock issued "
            f"within {UNLOCK_TARGET_MS / 1000:g} s of its time (none early, none missing)"
        )
    return "\n".join(lines)


def failures_of(phases: list[PutPhase], unlocks: dict[str, Any]) -> list[str]:
    failures: list[str] = []
    for phase in phases:
        p99 = distribution(phase.latencies_ms).get("p99", math.inf)
        if p99 >= PUT_TARGET_MS:
            failures.append(
                f"PUT p99 {p99:.1f} ms in '{phase.name}', target < {PUT_TARGET_MS:g} ms "
                f"(over by {p99 - PUT_TARGET_MS:.1f} ms)"
            )
        refused = phase.count - phase.statuses.get(phase.expected_status, 0)
        if refused:
            failures.append(
                f"{refused} PUTs in '{phase.name}' not answered {phase.expected_status}: "
                f"{phase.refusals}"
            )
    if unlocks["missing"]:
        failures.append(f"no UNLOCK for {len(unlocks['missing'])}: {unlocks['missing'][:10]}")
    if unlocks["early"]:
        failures.append(f"UNLOCK before its time for {unlocks['early'][:10]}")
    if unlocks["late"]:
        worst = unlocks["lateness_ms"].get("max", 0.0)
        failures.append(
            f"{len(unlocks['late'])} UNLOCKs later than {UNLOCK_TARGET_MS:g} ms (worst "
            f"{worst:.0f} ms): {unlocks['late'][:10]}"
        )
    return failures


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark bookings: PUT latency for 10,000, and unlocks on time.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--bookings", type=int, default=10_000, help="bookings in all")
    parser.add_argument("--near", type=int, default=100, help="near-term bookings, timed")
    parser.add_argument("--rooms", type=int, default=20, help="bookable rooms, each with a lock")
    parser.add_argument("--concurrency", type=int, default=8, help="PUTs in flight, phase 3")
    parser.add_argument(
        "--sequential-share",
        type=float,
        default=0.5,
        help="share of the days-ahead bookings PUT one at a time (the rest concurrently)",
    )
    parser.add_argument("--unlock-before", type=float, default=10.0, help="rule, seconds")
    parser.add_argument("--no-show-after", type=float, default=30.0, help="rule, seconds")
    parser.add_argument("--relock-grace", type=float, default=5.0, help="rule, seconds")
    parser.add_argument(
        "--duration", type=float, default=1.0, help="near-term booking length, seconds"
    )
    parser.add_argument(
        "--gap", type=float, default=1.0, help="a room's booking end -> its next unlock, seconds"
    )
    parser.add_argument(
        "--lead",
        type=float,
        default=3.0,
        help="near-term PUTs -> first unlock, seconds (the first unlocks fall due while the "
        "days-ahead bookings are PUT)",
    )
    parser.add_argument(
        "--no-replace-load",
        dest="replace_load",
        action="store_false",
        help="after the bookings, do not keep replacing them until the schedule ends",
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy the controller during the PUTs (raw stacks here)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if not 0 < args.near <= args.bookings or args.rooms < 1 or args.concurrency < 1:
        parser.error("need 0 < --near <= --bookings, --rooms and --concurrency >= 1")
    if not 0 <= args.sequential_share <= 1:
        parser.error("--sequential-share is between 0 and 1")
    if min(args.unlock_before, args.duration, args.gap, args.lead) <= 0:
        parser.error("--unlock-before, --duration, --gap and --lead must be positive")
    if args.no_show_after <= args.duration:
        parser.error("--no-show-after must be longer than --duration (no no-shows wanted)")
    far_per_room = math.ceil((args.bookings - args.near) / args.rooms)
    if far_per_room / FAR_SLOTS > 300:
        parser.error("too many bookings for the rooms: more than 300 days ahead")
    return args


def run(args: argparse.Namespace) -> Report:
    from controller.site import parse_site

    machine = machine_facts()
    layout = make_layout(args.rooms)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-bookings-")))
        broker = Broker(workdir)
        stack.callback(broker.stop)
        broker.start()
        text = site_toml(layout, args)
        parse_site(text, "generated site")  # a mistake here, not in the controller's log
        site = workdir / "site.toml"
        site.write_text(text)
        emulator = LockEmulator(broker.port, PREFIX, layout.locks)
        stack.callback(emulator.stop)
        emulator.start(initial="UNLOCKED")  # retained: the controller must lock them
        controller = CenterCtl(site, broker.url, workdir)
        stack.callback(controller.stop)
        controller.start()
        controller.wait_connected()
        for sensor in layout.sensors:
            emulator.publish(f"{PREFIX}/{sensor}/state", b'{"occupied":false,"count":0}')
        wait_for(
            lambda: not set(layout.sensors) & set(controller.health()["devices"]["not_heard_yet"]),
            timeout=10,
            what="the controller to hear every room empty",
        )
        wait_for(
            lambda: controller.locks_settled(layout.locks, "LOCK"),
            timeout=30,
            what="the controller to lock every lock",
            interval=0.05,
        )
        progress(
            f"broker :{broker.port}, controller pid {controller.pid}: {len(layout.locks)} "
            "locks locked and confirmed, every room empty"
        )
        rss_before = rss_mb(controller.pid)
        cycle = args.unlock_before + args.duration + args.gap
        slots = math.ceil(args.near / args.rooms)
        span = args.lead + slots * cycle + 60  # the schedule, and the PUTs of the rest
        wait_for_room_in_the_day(span)
        origin = datetime.now(UTC)
        near, _ = near_schedule(layout, args, origin)
        far = far_schedule(layout, args.bookings - args.near, origin)
        split = round(len(far) * args.sequential_share)
        mark = emulator.mark()
        profiler: subprocess.Popen[bytes] | None = None
        if args.profile is not None:
            profiler = start_profiler(controller.pid, args.profile, 200)
        cpu = CpuWatch({"controller": controller.pid})
        loaded: dict[str, float] = {}

        def after_bookings() -> None:
            loaded["cpu"] = cpu.end()["controller"]
            loaded["rss"] = rss_mb(controller.pid)

        last_end = max(booking.end.timestamp() for booking in near)
        try:
            cpu.begin()
            phases = asyncio.run(
                put_all(
                    controller.http_port,
                    near,
                    far[:split],
                    far[split:],
                    args.concurrency,
                    after_bookings=after_bookings,
                    replace_until=last_end + 0.5 if args.replace_load else None,
                )
            )
        finally:
            if profiler is not None:
                stop_py_spy(profiler)
        cpu_percent, rss_after = loaded["cpu"], loaded["rss"]
        arrived_late = [
            booking.id
            for booking in near
            if phases[0].completed.get(booking.id, math.inf)
            > booking.start.timestamp() - args.unlock_before - 0.2
        ]
        if arrived_late:
            progress(
                f"WARNING: {len(arrived_late)} near-term bookings were stored less than 0.2 s "
                f"before their unlock time (raise --lead): {arrived_late[:5]}"
            )
        status, body = controller.call(
            "GET",
            "/api/bookings?from="
            + (origin - timedelta(hours=1)).isoformat().replace("+", "%2B")
            + "&to="
            + (origin + timedelta(days=92)).isoformat().replace("+", "%2B"),
            token=READ_TOKEN,
        )
        stored = len(body["bookings"]) if status == 200 else None
        remaining = last_end + 2.0 - time.time()
        if remaining > 0:
            progress(f"waiting {remaining:.0f} s for the last near-term booking to end")
            time.sleep(remaining)  # the schedule running in real time, not a condition
        wait_for(
            lambda: len([c for c in emulator.since(mark) if c.state == "LOCK"]) >= len(near),
            timeout=args.relock_grace + 10,
            what="the relocks after the last near-term bookings",
            interval=0.1,
        )
        controller.check_alive()
        commands = emulator.since(mark)
        unlock_before = args.unlock_before
        unlocks = lateness_summary(
            match_commands(
                near,
                commands,
                "UNLOCK",
                lambda booking: booking.start.timestamp() - unlock_before,
                phases,
                early_slack=cycle / 2,
            ),
            UNLOCK_TARGET_MS,
        )
        relocks = lateness_summary(
            match_commands(
                near,
                commands,
                "LOCK",
                lambda booking: booking.end.timestamp(),
                phases,
                early_slack=args.duration / 2,
            ),
            UNLOCK_TARGET_MS,
        )
        hwm = peak_rss_bytes(controller.pid)
        everything = [
            value
            for phase in phases
            if phase.expected_status == 201
            for value in phase.latencies_ms
        ]
        return Report(
            machine=machine,
            rooms=len(layout.rooms),
            bookings=args.bookings,
            near=args.near,
            unlock_before_s=args.unlock_before,
            put_phases=[phase.summary() for phase in phases],
            put_all=distribution(everything),
            unlocks=unlocks,
            relocks=relocks,
            stored=stored,
            controller_rss_before_mb=rss_before,
            controller_rss_after_mb=rss_after,
            controller_vm_hwm_mb=hwm / 2**20 if hwm is not None else None,
            controller_cpu_percent=cpu_percent,
            controller_log=controller.log_tail(20),
            failures=failures_of(phases, unlocks),
            profile=str(args.profile) if args.profile else None,
        )


def main(argv: list[str] | None = None) -> int:
    return bench_main(parse_args(argv), run, format_report)


if __name__ == "__main__":
    sys.exit(main())
