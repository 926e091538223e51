"""VictoriaMetrics as the InfluxDB stand-in of the tests: a real server on loopback.

The Debian package ``victoria-metrics`` (1.79 in bookworm) accepts the InfluxDB
v2 write API that influxdb-client speaks (``POST /api/v2/write``), so the
product's sender is tested against a real database over real HTTP, and the
points are read back with VictoriaMetrics' export API (``/api/v1/export``).

How VictoriaMetrics maps line protocol to its series (found by running it;
these facts decide what a test can assert):

- one series per field, named ``{measurement}_{field}`` (the separator is
  ``-influxMeasurementFieldSeparator``); the tags become labels as they are;
- values are float64: an integer ``3i`` reads back as 3, ``true``/``t`` as 1 and
  ``false``/``F`` as 0; a string field is parsed as a number, so ``"3.5"`` reads
  back as 3.5 and ``"cool"`` as 0 (the text is lost: ``ac.mode`` cannot be read
  back from VictoriaMetrics, only from a real InfluxDB);
- the ``bucket`` and ``org`` query arguments of ``/api/v2/write`` are accepted and
  ignored: no label says where a point was written. Only a ``db`` argument (the
  v1 API; influxdb-client never sends it) would add a ``db`` label;
- timestamps are stored in milliseconds: ``precision=ns`` is honoured and the
  nanoseconds are truncated (…999999999 ns reads back as …999 ms);
- writing the same point twice stores two samples with the same timestamp,
  unlike InfluxDB, which overwrites: ``deduplicate=True`` starts it with
  ``-dedup.minScrapeInterval=1ms``, which keeps one sample per millisecond, as
  InfluxDB keeps one point per series and timestamp;
- points older than ``-retentionPeriod`` (1 month by default) are dropped with
  ``204 No Content`` and a warning in its log, so the fixture keeps 100 years
  and the tests may use fixed timestamps;
- a line it cannot parse is skipped and logged, the request still answers
  ``204``; it answers ``400`` only for a line longer than
  ``-influx.maxLineSize`` (256 KiB), a body that is not valid gzip, or an
  unknown path. It never answers 401 without ``-httpAuth.*``, nor 404, 413,
  422, 429 or 503 to a write: those are tested against a stub server.
- With ``-httpAuth.username``/``-httpAuth.password`` every API path needs HTTP
  basic auth and anything else (influxdb-client's ``Authorization: Token …``)
  gets ``401 Unauthorized``, ``WWW-Authenticate: Basic realm="VictoriaMetrics"``
  and a body of one newline; ``/health`` stays open.

Reading back: a point is searchable only after ``/internal/force_flush`` (else
within about 1-2 s), and an export without an explicit ``end`` stops at the
current second, so a point stamped "now" is missing for up to a second.
:meth:`VictoriaMetrics.export` therefore flushes first and asks up to a far
``end``; then whatever was acknowledged is there at once, no polling needed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
# Far enough ahead for any test, within what VictoriaMetrics accepts as `end`.
EXPORT_END = "4102444800"  # 2100-01-01T00:00:00Z

Row = tuple[dict[str, str], str, float, int]


@dataclass(frozen=True, slots=True)
class ExportedSeries:
    """One series of ``/api/v1/export``: its name, labels and samples (ms)."""

    name: str
    labels: dict[str, str]
    values: tuple[float, ...]
    timestamps: tuple[int, ...]


def _binary() -> str:
    found = shutil.which("victoria-metrics") or (
        "/usr/bin/victoria-metrics" if os.path.exists("/usr/bin/victoria-metrics") else None
    )
    if found is None:
        pytest.fail("victoria-metrics is not installed: apt-get install -y victoria-metrics")
    return found


class VictoriaMetrics:
    """A victoria-metrics process on a loopback port, restartable on the same data."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        deduplicate: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.port = port if port is not None else free_port()
        self.username = username
        self.password = password
        self.deduplicate = deduplicate
        self.log = data_dir.parent / f"{data_dir.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.process is not None:
            raise RuntimeError("victoria-metrics is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            _binary(),
            f"-storageDataPath={self.data_dir}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            "-retentionPeriod=100y",
        ]
        if self.deduplicate:
            command.append("-dedup.minScrapeInterval=1ms")
        if self.username is not None:
            command.append(f"-httpAuth.username={self.username}")
            command.append(f"-httpAuth.password={self.password or ''}")
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RuntimeError(f"victoria-metrics exited with {code}:\n{self.log_tail()}")
            if self._healthy():
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(
            f"victoria-metrics did not answer /health in {START_TIMEOUT} s:\n{self.log_tail()}"
        )

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
        """SIGKILL: what it had not flushed yet (the last second or so) is lost."""
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

    def export(self, match: str) -> list[ExportedSeries]:
        """Every series matching ``match`` (a series selector), with all its samples."""
        self._get("/internal/force_flush")
        query = urllib.parse.urlencode({"match[]": match, "start": "0", "end": EXPORT_END})
        text = self._get(f"/api/v1/export?{query}").decode()
        found = []
        for line in text.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            labels = dict(item["metric"])
            name = labels.pop("__name__")
            found.append(
                ExportedSeries(
                    name=name,
                    labels=labels,
                    values=tuple(float(value) for value in item["values"]),
                    timestamps=tuple(int(stamp) for stamp in item["timestamps"]),
                )
            )
        return sorted(found, key=lambda series: (series.name, sorted(series.labels.items())))

    def points(self, measurement: str) -> list[Row]:
        """One row per sample of ``measurement``: (labels, field, value, timestamp in ms)."""
        prefix = f"{measurement}_"
        rows: list[Row] = []
        for series in self.export(f'{{__name__=~"{re.escape(prefix)}.+"}}'):
            field = series.name[len(prefix) :]
            rows.extend(
                (dict(series.labels), field, value, stamp)
                for value, stamp in zip(series.values, series.timestamps, strict=True)
            )
        return sorted(rows, key=lambda row: (row[3], row[1], sorted(row[0].items())))

    def rows_inserted(self) -> int:
        """Samples it accepted over line protocol since it started (its own counter).

        Unlike an export this sees a write the moment it is answered, so a test can
        show that a refused write stored nothing without waiting for anything.
        """
        text = self._get("/metrics").decode()
        for line in text.splitlines():
            if line.startswith('vm_rows_inserted_total{type="influx"}'):
                return int(float(line.rsplit(" ", 1)[1]))
        raise AssertionError("vm_rows_inserted_total{type=influx} not in /metrics")

    def _healthy(self) -> bool:
        try:
            return self._get("/health", timeout=0.5) == b"OK"
        except (urllib.error.URLError, OSError):
            return False

    def _get(self, path: str, *, timeout: float = 10.0) -> bytes:
        request = urllib.request.Request(self.url + path)
        if self.username is not None:
            secret = f"{self.username}:{self.password or ''}".encode()
            request.add_header("Authorization", "Basic " + base64.b64encode(secret).decode())
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read()
            return body


@pytest.fixture(name="victoria")
def victoria_fixture(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """A started VictoriaMetrics in ``tmp_path``, stopped after the test.

    Import it as ``from tests.victoria import victoria_fixture  # noqa: F401`` and
    ask for ``victoria``: importing it under the parameter's own name makes ruff
    report every test using it as a redefinition (F811).
    """
    instance = VictoriaMetrics(tmp_path / "victoria-metrics")
    instance.start()
    yield instance
    instance.stop()


victoria = victoria_fixture  # the same fixture, for modules that import it by this name
