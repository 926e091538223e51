"""What the center's services cost: pickup codes, and visitor counting.

Run by hand: ``.venv/bin/python bench/services.py``. It measures, in-process
and without a broker:

- **Pickup codes**: one scrypt hash (made at each deposit), a pickup check
  against a full cabinet (24 collectable deposits: a wrong code must be tried
  against every one), and how late the event loop runs while such checks go
  on in worker threads (the loop also carries the fire alarm, so this must
  stay small).
- **Visitors**: entrance-counter readings per second through the real
  :class:`~controller.visitors.VisitorCounter` (rules and SQLite writes), on
  a file database in a temporary directory, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from controller.bus import EventBus  # noqa: E402
from controller.clock import VirtualClock  # noqa: E402
from controller.database import open_database  # noqa: E402
from controller.event_log import EventLog  # noqa: E402
from controller.events import ReadingReceived  # noqa: E402
from controller.pickup_codes import CodeHasher, new_code  # noqa: E402
from controller.readings import CounterReading  # noqa: E402
from controller.site import load_site  # noqa: E402
from controller.visitors import VisitorCounter  # noqa: E402

COMPARTMENTS = 24


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (
        f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms,"
        f" max {ordered[-1] * 1000:.1f} ms"
    )


async def pickup_codes(checks: int) -> None:
    hasher = CodeHasher()
    codes = [new_code() for _ in range(COMPARTMENTS)]
    started = time.perf_counter()
    stored = [(index, hasher.hash(code)) for index, code in enumerate(codes)]
    per_hash = (time.perf_counter() - started) / COMPARTMENTS
    print(f"scrypt hash (one deposit's code): {per_hash * 1000:.1f} ms")

    wrong = "000000" if "000000" not in codes else "999999"
    lateness: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        # How late a 1 ms timer fires while checks run: the loop's responsiveness.
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            due = loop.time() + 0.001
            await asyncio.sleep(0.001)
            lateness.append(max(0.0, loop.time() - due))

    tick = asyncio.create_task(ticker())
    right_times, wrong_times = [], []
    for attempt in range(checks):
        code, times = (codes[-1], right_times) if attempt % 2 else (wrong, wrong_times)
        started = time.perf_counter()
        found = await asyncio.to_thread(hasher.find, code, stored)
        times.append(time.perf_counter() - started)
        assert (found is None) == (code == wrong)
    stop.set()
    await tick
    print(f"pickup check, right code in the last of {COMPARTMENTS}: {_ms(right_times)}")
    print(f"pickup check, wrong code against {COMPARTMENTS}: {_ms(wrong_times)}")
    print(f"event-loop lateness during checks (1 ms timer): {_ms(lateness)}")


async def visitors(readings: int) -> None:
    site = load_site(ROOT / "sites" / "changbai.toml")
    clock = VirtualClock(datetime(2026, 11, 28, 8, 0, tzinfo=ZoneInfo("Asia/Shanghai")))
    with tempfile.TemporaryDirectory() as data_dir:
        db = open_database(Path(data_dir))
        events = EventLog(db, clock)
        bus = EventBus()
        counter = VisitorCounter(site, bus, clock, db=db, events=events)
        counter.start()
        entries = exits = 10_000
        baseline = CounterReading(entries, exits)
        bus.publish(ReadingReceived("counter-entrance", baseline, clock.now()))
        started = time.perf_counter()
        for step in range(readings):
            entries += 2
            exits += 1 + step % 2
            bus.publish(
                ReadingReceived("counter-entrance", CounterReading(entries, exits), clock.now())
            )
        elapsed = time.perf_counter() - started
        day = counter.day(counter.today())
        counter.stop()
        db.close()
    assert day.entries == 2 * readings, day.entries
    print(
        f"visitor counting: {readings / elapsed:,.0f} counter readings/s"
        f" ({elapsed / readings * 1e6:.0f} µs each, SQLite file, WAL)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=40, help="pickup checks to time")
    parser.add_argument("--readings", type=int, default=5000, help="counter readings to feed")
    args = parser.parse_args()
    asyncio.run(pickup_codes(args.checks))
    asyncio.run(visitors(args.readings))


if __name__ == "__main__":
    main()
