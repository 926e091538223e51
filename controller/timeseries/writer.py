"""The time-series writer: points in on the loop, kept by the store process, nothing lost.

The loop side (:class:`TimeSeriesWriter`) only appends a point to a list. Every
``batch_size`` points, and at least every ``flush_interval`` seconds, the list
goes as one batch to the store process (:mod:`controller.timeseries.store_process`),
which spools, stores and sends it on a core of its own (see
:mod:`controller.timeseries.workers` for what "without loss" means there). A
thread of the controller pickles the batches into the pipe, so the event loop
never waits on the pipe, a disk or a database, however slow they are.

The process reports its figures a few times a second; the writer turns them
into the health report and the alarms: ``store_unavailable`` at once when
InfluxDB refuses (401/403/404), after a minute of transient failures, when the
embedded file keeps failing, or when the store process itself ended (it is
started again); ``spool_near_full`` at 80 % of the spool's bound; and events
for points the bound dropped or the store rejected as data.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

from controller.alarms import AlarmBook
from controller.clock import Clock
from controller.event_log import EventLog, Severity
from controller.settings import LogFormat
from controller.timeseries.influx import WriteOutcome, WriteResult
from controller.timeseries.points import Point, Series, time_ns
from controller.timeseries.store_process import InfluxConfig, StoreConfig, serve
from controller.timeseries.workers import (
    REJECTED_FILE,
    SPOOL_DIRECTORY,
    TIMESERIES_FILE,
    WriterOptions,
)

STORE_SOURCE = "timeseries"  # alarms about InfluxDB and the spool
EMBEDDED_SOURCE = "timeseries-embedded"  # alarms about timeseries.sqlite3
PROCESS_SOURCE = "timeseries-process"  # alarms about the store process itself
NEAR_FULL = 0.8  # spool_near_full is raised at this fraction of the bound ...
NEAR_FULL_CLEAR = 0.7  # ... and cleared below this one
MAINTAIN_EVERY = 3600.0  # seconds between retention and downsampling runs
RESTART_AFTER = 5.0  # seconds before a store process that ended is started again

__all__ = ["TIMESERIES_FILE", "InfluxConfig", "TimeSeriesWriter", "WriterOptions"]


@dataclass(slots=True)
class _Failure:
    outcome: WriteOutcome
    message: str
    since: datetime
    alarmed: bool = False


def _context() -> ForkServerContext:
    """Store processes fork from a small server with the store's modules loaded: a
    fresh interpreter (not a copy of this one, threads and sockets and all), started
    in milliseconds."""
    context = multiprocessing.get_context("forkserver")
    assert isinstance(context, ForkServerContext)
    context.set_forkserver_preload(["controller.timeseries.store_process"])
    return context


class TimeSeriesWriter:
    def __init__(
        self,
        data_dir: Path,
        clock: Clock,
        *,
        alarms: AlarmBook,
        events: EventLog,
        influx: InfluxConfig | None,
        spool_max_bytes: int,
        options: WriterOptions | None = None,
        log_format: LogFormat = LogFormat.TEXT,
        logger: logging.Logger | None = None,
    ) -> None:
        """``influx`` None means the embedded store keeps the raw points (no InfluxDB)."""
        self._clock = clock
        self._alarms = alarms
        self._events = events
        self._options = options or WriterOptions()
        self._logger = logger or logging.getLogger("controller.timeseries")
        self._config = StoreConfig(
            data_dir=data_dir,
            influx=influx,
            spool_max_bytes=spool_max_bytes,
            options=self._options,
            log_format=log_format,
            log_level=logging.getLevelName(self._logger.getEffectiveLevel()),
        )
        self.timeseries_path = data_dir / TIMESERIES_FILE
        self._rejected_path = data_dir / SPOOL_DIRECTORY / REJECTED_FILE
        self._pending: list[Point] = []
        self._pipe = _Pipe(self._config, self._options.max_queued_points, self._logger)
        self._failure: _Failure | None = None
        self._reported: dict[str, int] = {"dropped": 0, "rejected": 0}
        self._next_maintenance = 0.0
        self._process_down_since: float | None = None

    @property
    def backend(self) -> str:
        return "embedded" if self._config.influx is None else "influxdb"

    @property
    def store_process_pid(self) -> int | None:
        """The store process's id (for an operator's ``ps``, and tests)."""
        return self._pipe.pid

    def add(self, point: Point) -> None:
        """Take one point (on the loop, never blocking)."""
        self._pending.append(point)
        if len(self._pending) >= self._options.batch_size:
            self._hand_over()

    def start(self) -> None:
        self._pipe.start()

    async def run(self) -> None:
        """Hand over a batch every flush interval; watch the store's health."""
        while True:
            self._hand_over()
            self._watch()
            if self._clock.monotonic() >= self._next_maintenance:
                self._next_maintenance = self._clock.monotonic() + MAINTAIN_EVERY
                self._pipe.put(("maintain", time_ns(self._clock.now())))
            await self._clock.sleep(self._options.flush_interval)

    async def stop(self) -> None:
        """Hand over what is left; the store process keeps it, then stops (bounded)."""
        self._hand_over()
        self._pipe.put(("finish", time_ns(self._clock.now())))
        await asyncio.to_thread(self._pipe.close, self._options.stop_timeout * 2)

    # -- health ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        report = self._pipe.report
        oldest = report.get("oldest_ns")
        lag = 0.0
        if oldest is not None:
            lag = max(0.0, (time_ns(self._clock.now()) - oldest) / 1e9)
        if self._failure is not None:
            status = "down" if self._failure.outcome is WriteOutcome.REFUSED else "degraded"
        elif report.get("failing") or not self._pipe.alive:
            status = "degraded"
        else:
            status = "ok"
        written = report.get("written" if self._config.influx else "stored", 0)
        # Sent into the pipe but not yet taken by the process: counted nowhere else.
        in_transit = max(0, self._pipe.sent - report.get("received", 0))
        queued = report.get("queued", 0)
        last_write: datetime | None = report.get("last_write")
        last_error = report.get("last_error")
        if not self._pipe.alive and self._pipe.exit_reason:
            last_error = self._pipe.exit_reason
        return {
            "backend": self.backend,
            "status": status,
            "points_written": written,
            "points_dropped": report.get("dropped", 0) + self._pipe.dropped,
            "points_retried": report.get("retried", 0),
            "points_rejected": report.get("rejected", 0),
            "points_waiting": len(self._pending) + self._pipe.queued + in_transit + queued,
            "spool_points": report.get("spool_points", 0),
            "spool_bytes": report.get("spool_bytes", 0),
            "spool_max_bytes": report.get("spool_max_bytes"),
            "write_lag_seconds": round(lag, 3),
            "last_error": last_error,
            "last_write": last_write.isoformat() if last_write else None,
        }

    # -- internals ---------------------------------------------------------------

    def _hand_over(self) -> None:
        points, self._pending = self._pending, []
        self._pipe.put(("points", points, time_ns(self._clock.now())), points=len(points))

    def _watch(self) -> None:
        """Alarms the store's reports call for, checked once per flush interval."""
        now = self._clock.now()
        report = self._pipe.report
        self._watch_process(now)
        result: WriteResult | None = report.get("result")
        if result is not None:
            self._on_result(result, now)
        self._watch_spool(report)
        self._watch_embedded(report, now)
        self._watch_counts(report)

    def _watch_process(self, now: datetime) -> None:
        """A store process that ended is an alarm, and is started again."""
        active = self._alarms.is_active("store_unavailable", PROCESS_SOURCE)
        if self._pipe.alive:
            self._process_down_since = None
            if active:
                self._alarms.clear(
                    "store_unavailable", PROCESS_SOURCE, "the time-series store runs again"
                )
            return
        if self._pipe.stopping:
            return
        monotonic = self._clock.monotonic()
        if self._process_down_since is None:
            self._process_down_since = monotonic
            self._logger.error("the time-series store process ended: %s", self._pipe.exit_reason)
            if not active:
                self._alarms.raise_alarm(
                    "store_unavailable",
                    PROCESS_SOURCE,
                    f"the time-series store process ended ({self._pipe.exit_reason}); "
                    "points wait in memory while it starts again",
                )
        elif monotonic - self._process_down_since >= RESTART_AFTER:
            self._process_down_since = monotonic
            self._pipe.restart()

    def _watch_spool(self, report: dict[str, Any]) -> None:
        bound = report.get("spool_max_bytes")
        if not bound:
            return
        fill = report.get("spool_bytes", 0) / bound
        points = report.get("spool_points", 0)
        near = self._alarms.is_active("spool_near_full", STORE_SOURCE)
        if fill >= NEAR_FULL and not near:
            self._alarms.raise_alarm(
                "spool_near_full",
                STORE_SOURCE,
                f"the time-series spool holds {points} points ({fill:.0%} of its "
                f"{bound // 1_000_000} MB bound); past the bound the oldest points are dropped",
                severity=Severity.WARNING,
                details={"spool_points": points, "fill": round(fill, 3)},
            )
        elif near and fill < NEAR_FULL_CLEAR:
            self._alarms.clear("spool_near_full", STORE_SOURCE, f"the spool is down to {fill:.0%}")

    def _watch_counts(self, report: dict[str, Any]) -> None:
        """Events for points dropped (a bound) or rejected as data, as they happen."""
        dropped = report.get("dropped", 0) + self._pipe.dropped
        if dropped > self._reported["dropped"]:
            newly = dropped - self._reported["dropped"]
            self._reported["dropped"] = dropped
            where = "the spool" if self._config.influx else "the queue of points to store"
            self._logger.warning("dropped %d time-series points: %s was full", newly, where)
            self._events.record(
                "store_points_dropped",
                f"{newly} of the oldest time-series points were dropped: {where} was full",
                severity=Severity.WARNING,
                details={"dropped": newly, "dropped_total": dropped},
            )
        rejected = report.get("rejected", 0)
        if rejected > self._reported["rejected"]:
            newly = rejected - self._reported["rejected"]
            self._reported["rejected"] = rejected
            self._events.record(
                "store_points_rejected",
                f"the time-series store rejected {newly} points "
                f"({report.get('last_rejection')}); they are kept in {self._rejected_path}",
                severity=Severity.WARNING,
                details={"points": newly, "file": str(self._rejected_path)},
            )

    def _watch_embedded(self, report: dict[str, Any], now: datetime) -> None:
        """``store_unavailable`` for the embedded file when its writes keep failing."""
        active = self._alarms.is_active("store_unavailable", EMBEDDED_SOURCE)
        since = report.get("failing_since")
        if report.get("failing") and since is not None:
            failing_for = (time_ns(now) - since) / 1e9
            if not active and failing_for >= self._options.alarm_after:
                only_copy = self._config.influx is None
                self._alarms.raise_alarm(
                    "store_unavailable",
                    EMBEDDED_SOURCE,
                    f"writing {self.timeseries_path} has failed for {failing_for:.0f} s: "
                    f"{report.get('last_error')}; "
                    + (
                        "points wait in memory and the oldest are dropped past "
                        f"{self._options.max_queued_points} points"
                        if only_copy
                        else "reports miss this time (InfluxDB still gets every point)"
                    ),
                    severity=Severity.ALARM if only_copy else Severity.WARNING,
                )
        elif active:
            self._alarms.clear(
                "store_unavailable", EMBEDDED_SOURCE, f"{self.timeseries_path} takes writes again"
            )

    def _on_result(self, result: WriteResult, now: datetime) -> None:
        if result.outcome is WriteOutcome.WRITTEN:
            if self._failure is not None:
                self._logger.info("time-series store answers again: %s", result.message)
                if self._failure.alarmed:
                    self._alarms.clear(
                        "store_unavailable", STORE_SOURCE, "the time-series store takes writes"
                    )
                self._failure = None
            return
        if result.outcome is WriteOutcome.REJECTED:
            return  # counted and recorded by _watch_counts; the spool went on
        failure = self._failure
        if failure is None or failure.outcome is not result.outcome:
            failure = self._failure = _Failure(result.outcome, result.message, now)
            self._logger.warning("time-series store: %s", result.message)
        failure.message = result.message
        due = result.outcome is WriteOutcome.REFUSED or now - failure.since >= timedelta(
            seconds=self._options.alarm_after
        )
        if due and not failure.alarmed:
            failure.alarmed = True
            refused = result.outcome is WriteOutcome.REFUSED
            self._alarms.raise_alarm(
                "store_unavailable",
                STORE_SOURCE,
                (
                    f"the time-series store refuses writes: {result.message}; "
                    "points are kept in the spool"
                    if refused
                    else f"the time-series store has not taken writes since "
                    f"{failure.since.isoformat(timespec='seconds')}: {result.message}; "
                    "points are kept in the spool"
                ),
                severity=Severity.ALARM if refused else Severity.WARNING,
                details={"status": result.status, "outcome": result.outcome.value},
            )


class _Pipe:
    """The store process and the two pipes to it, driven by two threads of their own:
    one pickles the batches into the pipe (a full pipe waits here, never on the loop),
    one reads the process's reports."""

    def __init__(self, config: StoreConfig, max_queued: int, logger: logging.Logger) -> None:
        self._config = config
        self._max_queued = max_queued
        self._logger = logger
        self._messages: deque[tuple[str, bytes, int]] = deque()  # (kind, pickled, points)
        self._ready = threading.Condition()
        self.queued = 0  # points waiting here for the pipe
        self.sent = 0  # points sent to the current process (it reports those it received)
        self.dropped = 0  # points dropped here: the process was gone for too long
        self.report: dict[str, Any] = {}
        self.stopping = False
        self.exit_reason: str | None = None
        self._process: BaseProcess | None = None
        self._commands: Connection | None = None
        self._writer: threading.Thread | None = None
        self._reader: threading.Thread | None = None
        # Series numbers (on the loop's thread): the same for every process.
        self._series_ids: dict[Series, int] = {}
        self._definitions: list[tuple[str, dict[str, str]]] = []

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        self._spawn()
        self._writer = threading.Thread(target=self._write, name="timeseries-pipe", daemon=True)
        self._writer.start()

    def restart(self) -> None:
        self._logger.info("starting the time-series store process again")
        self._spawn()
        with self._ready:
            self._ready.notify()

    def put(self, message: tuple[Any, ...], *, points: int = 0) -> None:
        """Queue a message for the process, pickled here and now (C work, on the
        caller's thread), so the writing thread only writes bytes, which needs no
        interpreter lock and so never makes the event loop wait for it."""
        if message[0] == "points":
            message = self._compact(message[1], message[2])
        data = bytes(ForkingPickler.dumps(message))
        with self._ready:
            self._messages.append((message[0], data, points))
            self.queued += points
            while self.queued > self._max_queued and len(self._messages) > 1:
                dropped = self._drop_oldest_batch()
                if not dropped:
                    break
            self._ready.notify()

    def close(self, timeout: float) -> None:
        """Blocking: wait for the finish to be sent and the process to end."""
        if self._writer is not None:
            self._writer.join(timeout)
        process = self._process
        if process is not None:
            process.join(timeout)
            if process.is_alive():
                self._logger.error(
                    "the time-series store process did not stop within %.1f s", timeout
                )
                process.kill()
                process.join(1.0)
        if self._reader is not None:
            self._reader.join(timeout)

    # -- threads -------------------------------------------------------------------

    def _spawn(self) -> None:
        context = _context()
        commands_in, commands_out = context.Pipe(duplex=False)
        reports_in, reports_out = context.Pipe(duplex=False)
        process = context.Process(
            target=serve,
            args=(commands_in, reports_out, self._config),
            name="timeseries-store",
            daemon=True,
        )
        process.start()
        commands_in.close()
        reports_out.close()
        self._process, self._commands = process, commands_out
        self.exit_reason = None
        self.sent = 0
        self.report = {}
        self._reader = threading.Thread(
            target=self._read, args=(reports_in, process), name="timeseries-reports", daemon=True
        )
        self._reader.start()

    def _write(self) -> None:
        while True:
            with self._ready:
                while not self._messages or not self.alive:
                    if self.stopping and not self.alive:
                        return
                    self._ready.wait(0.5)
                entry = self._messages[0]
                kind, data, points = entry
                commands = self._commands
            try:
                assert commands is not None
                commands.send_bytes(data)
            except (OSError, ValueError) as error:  # the process is gone: keep the message
                self._logger.debug("store process pipe: %s", error)
                with self._ready:
                    self._ready.wait(0.5)
                continue
            with self._ready:
                if self._messages and self._messages[0] is entry:
                    self._messages.popleft()
                    self.queued -= points
                    self.sent += points
            if kind == "finish":
                self.stopping = True
                return

    def _read(self, reports: Connection, process: BaseProcess) -> None:
        try:
            while True:
                kind, body = reports.recv()
                if kind == "status":
                    self.report = body
        except (EOFError, OSError):
            pass
        finally:
            reports.close()
            process.join(1.0)
            if process.exitcode not in (0, None):
                self.exit_reason = f"exit code {process.exitcode}"
            elif process.exitcode is None:
                self.exit_reason = "it stopped answering"
            else:
                self.exit_reason = "it stopped"
            with self._ready:
                self._ready.notify()

    def _compact(self, points: list[Point], now_ns: int) -> tuple[Any, ...]:
        """A batch as the pipe carries it: plain tuples (they pickle in C; a named tuple
        or a dataclass costs a Python call), each series by number, with the
        definitions of every series the batch uses, so any process (a restarted one
        too) can read any batch."""
        ids = self._series_ids
        definitions = self._definitions
        used: set[int] = set()
        rows = []
        for series, fields, moment in points:
            number = ids.get(series)
            if number is None:
                number = ids[series] = len(definitions)
                definitions.append((series.measurement, dict(series.tags)))
            used.add(number)
            rows.append((number, fields, moment))
        return ("points", [(n, *definitions[n]) for n in used], rows, now_ns)

    def _drop_oldest_batch(self) -> int:
        """Drop the oldest batch but the first, which the writing thread may be sending."""
        for index, (kind, _, points) in enumerate(self._messages):
            if index > 0 and kind == "points" and points:
                del self._messages[index]
                self.queued -= points
                self.dropped += points
                return points
        return 0
