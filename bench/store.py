"""The time-series stores as a benchmark sees them: started, stopped and counted from outside.

Not a benchmark itself: ``bench/ingest.py --store victoria|embedded`` uses it.

:class:`VictoriaMetrics` runs ``/usr/bin/victoria-metrics`` on a free loopback port
with a temporary data directory and ``-retentionPeriod=100y``; it can be stopped
(SIGTERM: it flushes what it acknowledged) and started again on the same data and
port, which is how the spool replay is measured. It speaks the InfluxDB v2 write
API the controller's sender uses and stores one series per field, named
``{measurement}_{field}``, timestamps truncated to milliseconds; two samples of one
series with the same timestamp are both kept (no ``-dedup.minScrapeInterval``), so
a collision shows up as a duplicate instead of disappearing.

:func:`count_victoria` and :func:`count_embedded` count what is *in* the store, not
what the controller's counters say: per measurement, the points of one field that
every point of it carries (``occupancy.count``, ``climate.temperature``,
``room.booked`` for the benchmark's payloads), from a given time on. The embedded
store's ``raw`` table merges two points of one series at the same nanosecond (as
InfluxDB does), so there a collision cannot be seen, only a row fewer.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

START_TIMEOUT = 60.0  # a restart on a data directory with a million points takes a while
STOP_TIMEOUT = 30.0
EXPORT_END = "4102444800"  # 2100-01-01T00:00:00Z, within what VictoriaMetrics takes as `end`
# One field per measurement that every point the benchmark causes carries, so that
# samples of it are points of the measurement.
COUNTED_FIELDS = {"occupancy": "count", "climate": "temperature", "room": "booked"}


class StoreError(Exception):
    """A store could not be started, stopped or read."""


@dataclass(frozen=True)
class StoredCount:
    """What one measurement has in the store from some time on."""

    samples: int  # points (rows, for the embedded store)
    duplicates: int | None  # samples of a series sharing a timestamp with an earlier one;
    # None: the store cannot show them (the embedded raw table merges them)
    series: int

    @property
    def distinct(self) -> int:
        return self.samples - (self.duplicates or 0)


def _binary() -> str:
    found = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
    if not os.path.exists(found):
        raise StoreError("victoria-metrics is not installed (apt-get install -y victoria-metrics)")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class VictoriaMetrics:
    """A victoria-metrics process on a loopback port, restartable on the same data."""

    def __init__(self, data_dir: Path, *, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port if port is not None else free_port()
        self.log = data_dir.parent / f"{data_dir.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._queries = 0  # exports asked so far: each asks a range of its own

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise StoreError("victoria-metrics is not running")
        return self.process.pid

    def start(self) -> float:
        """Start it and poll /health until it answers; the seconds that took."""
        if self.process is not None:
            raise StoreError("victoria-metrics is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            _binary(),
            f"-storageDataPath={self.data_dir}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            "-retentionPeriod=100y",
        ]
        began = time.monotonic()
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only the bench, which stops us
            )
        deadline = began + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise StoreError(f"victoria-metrics exited with {code}:\n{self.log_tail()}")
            if self._healthy():
                return time.monotonic() - began
            if time.monotonic() > deadline:
                self.kill()
                raise StoreError(
                    f"victoria-metrics did not answer /health in {START_TIMEOUT:.0f} s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.02)  # the poll period of the wait above, not a wait by itself

    def stop(self) -> None:
        """SIGTERM: it flushes everything acknowledged to disk before it exits."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def force_flush(self) -> None:
        """Make every acknowledged sample searchable now (else within a second or two)."""
        self._get("/internal/force_flush")

    def count(
        self, site: str, since_ms: int, until_ms: int | None = None
    ) -> dict[str, StoredCount]:
        """Samples per measurement of ``site`` stamped from ``since_ms`` to before ``until_ms``.

        victoria-metrics 1.79 caches which series a selector's label filters match, and
        a series created after the answer was cached is missing from the same selector
        for seconds, force flush or not (found by running it: the count taken before
        a phase, asked again after it, had none of the phase's new series for about
        5 s, while a selector never asked before found them all at once). So no
        selector is asked twice: the name pattern gets one more alternative each time,
        a name no series has. The samples outside the range are left out here.
        """
        last = until_ms if until_ms is not None else 1 << 62
        self.force_flush()
        self._queries += 1
        names = {
            f"{measurement}_{field}": measurement for measurement, field in COUNTED_FIELDS.items()
        }
        never = f"bench_uncached_{time.time_ns()}_{self._queries}"  # no series has this name
        selector = f'{{__name__=~"{"|".join([*names, never])}",site="{site}"}}'
        query = urllib.parse.urlencode({"match[]": selector, "start": "0", "end": EXPORT_END})
        # A series can come in several lines (one per block): gather its timestamps first.
        stamps: dict[tuple[tuple[str, str], ...], list[int]] = defaultdict(list)
        with self._open(f"/api/v1/export?{query}", timeout=300) as response:
            for line in response:
                if not line.strip():
                    continue
                item = orjson.loads(line)
                key = tuple(sorted(item["metric"].items()))
                stamps[key].extend(
                    stamp for stamp in item["timestamps"] if since_ms <= stamp < last
                )
        samples: dict[str, int] = dict.fromkeys(COUNTED_FIELDS, 0)
        duplicates: dict[str, int] = dict.fromkeys(COUNTED_FIELDS, 0)
        series: dict[str, int] = dict.fromkeys(COUNTED_FIELDS, 0)
        for key, times in stamps.items():
            if not times:
                continue
            measurement = names[dict(key)["__name__"]]
            samples[measurement] += len(times)
            duplicates[measurement] += len(times) - len(set(times))
            series[measurement] += 1
        return {
            name: StoredCount(samples[name], duplicates[name], series[name])
            for name in COUNTED_FIELDS
        }

    def _healthy(self) -> bool:
        try:
            return self._get("/health", timeout=0.5) == b"OK"
        except (StoreError, OSError):
            return False

    def _open(self, path: str, *, timeout: float) -> Any:
        """The HTTP response of a GET (a context manager that closes it)."""
        try:
            return urllib.request.urlopen(self.url + path, timeout=timeout)
        except (urllib.error.URLError, OSError) as error:
            raise StoreError(f"victoria-metrics {path.split('?')[0]}: {error}") from error

    def _get(self, path: str, *, timeout: float = 30.0) -> bytes:
        with self._open(path, timeout=timeout) as response:
            body: bytes = response.read()
            return body


def count_embedded(
    path: Path, site: str, since_ns: int, until_ns: int | None = None
) -> dict[str, StoredCount]:
    """Rows of ``raw`` per measurement of ``site`` stamped from ``since_ns`` to before ``until_ns``.

    Read-only connection (``mode=ro``): the controller's store worker writes the
    file meanwhile (WAL), and this only ever reads committed transactions.
    """
    if not path.exists():
        return {name: StoredCount(0, None, 0) for name in COUNTED_FIELDS}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        ids: dict[int, str] = {}
        for series_id, measurement, tags in db.execute(
            "SELECT id, measurement, tags FROM series WHERE measurement IN (?, ?, ?)",
            tuple(COUNTED_FIELDS),
        ):
            if orjson.loads(tags).get("site") == site:
                ids[series_id] = measurement
        samples: dict[str, int] = dict.fromkeys(COUNTED_FIELDS, 0)
        series: dict[str, int] = dict.fromkeys(COUNTED_FIELDS, 0)
        for series_id, rows in db.execute(
            "SELECT series, count(*) FROM raw WHERE time_ns >= ? AND time_ns < ? GROUP BY series",
            (since_ns, until_ns if until_ns is not None else 1 << 62),
        ):
            measurement = ids.get(series_id)
            if measurement is not None:
                samples[measurement] += rows
                series[measurement] += 1
    except sqlite3.Error as error:
        raise StoreError(f"reading {path}: {error}") from error
    finally:
        db.close()
    return {name: StoredCount(samples[name], None, series[name]) for name in COUNTED_FIELDS}
