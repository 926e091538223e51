"""The time-series writer: points in on the loop, stored by worker threads, nothing lost.

The loop side (:class:`TimeSeriesWriter`) only appends a point to a list. Every
``batch_size`` points, and at least every ``flush_interval`` seconds, the list
goes to the *store worker* thread as one batch, so the event loop never waits
on a disk or a database, however slow they are.

The store worker appends each batch to the durable :class:`Spool` (with
InfluxDB configured: the spool is a write-ahead log, so a batch is on disk,
fsync'd, before anything tries to send it) and feeds it to the
:class:`EmbeddedStore` (the raw points when there is no InfluxDB; the rollups
the reports read, always). The *sender* thread takes chunks from the spool's
head, writes them to InfluxDB and only then lets the spool forget them. A
failure leaves the chunk at the head: transient ones (unreachable, slow, 429,
5xx) are retried with backoff; a refusal that will not pass by itself (401,
403, 404) raises ``store_unavailable`` at once and is retried slowly, keeping
every point; data the database rejects as such (400, 413, 422) is moved to a
``rejected`` file beside the spool, recorded as an event, and the spool goes on.
Only past the spool's byte bound are the oldest points dropped, counted and
reported; ``spool_near_full`` warns before that.

Threads talk to the loop only through ``call_soon_threadsafe``; counters they
keep are plain integers read by :meth:`TimeSeriesWriter.status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from controller.alarms import AlarmBook
from controller.clock import Clock
from controller.event_log import EventLog, Severity
from controller.timeseries.embedded import EmbeddedStore
from controller.timeseries.influx import InfluxSender, WriteOutcome, WriteResult
from controller.timeseries.points import Point, encode_lines, time_ns
from controller.timeseries.spool import Spool, SpoolChunk

STORE_SOURCE = "timeseries"  # alarms about InfluxDB and the spool
EMBEDDED_SOURCE = "timeseries-embedded"  # alarms about timeseries.sqlite3
TIMESERIES_FILE = "timeseries.sqlite3"
SPOOL_DIRECTORY = "spool"
REJECTED_FILE = "rejected.lp"
NEAR_FULL = 0.8  # spool_near_full is raised at this fraction of the bound ...
NEAR_FULL_CLEAR = 0.7  # ... and cleared below this one
MAINTAIN_EVERY = 3600.0  # seconds between retention and downsampling runs
RETRY_AFTER_MAX = 300.0


@dataclass(frozen=True, slots=True)
class WriterOptions:
    batch_size: int = 5000
    flush_interval: float = 1.0
    retention: timedelta = timedelta(days=30)
    history: timedelta = timedelta(days=730)
    retry_min: float = 0.5
    retry_max: float = 30.0
    refused_retry: float = 60.0
    alarm_after: float = 60.0  # a store failing this long (transiently) raises store_unavailable
    max_queued_points: int = 2_000_000  # batches waiting for the store worker, in memory
    stop_timeout: float = 5.0


@dataclass(slots=True)
class _Figures:
    """Counters shared by the threads and read by status(); ints, so reads are atomic."""

    written: int = 0
    retried: int = 0
    rejected: int = 0
    dropped: int = 0
    stored: int = 0  # points the store worker has taken care of (spooled or stored)
    last_error: str | None = None
    last_write: datetime | None = None


@dataclass(slots=True)
class _Failure:
    outcome: WriteOutcome
    message: str
    since: datetime
    alarmed: bool = False


class TimeSeriesWriter:
    def __init__(
        self,
        data_dir: Path,
        clock: Clock,
        *,
        alarms: AlarmBook,
        events: EventLog,
        sender: InfluxSender | None,
        spool_max_bytes: int,
        options: WriterOptions | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """``sender`` None means the embedded store keeps the raw points (no InfluxDB)."""
        self._clock = clock
        self._alarms = alarms
        self._events = events
        self._options = options or WriterOptions()
        self._logger = logger or logging.getLogger("controller.timeseries")
        self._figures = _Figures()
        self._pending: list[Point] = []
        self._sender = sender
        self._spool = (
            Spool(data_dir / SPOOL_DIRECTORY, max_bytes=spool_max_bytes, logger=self._logger)
            if sender is not None
            else None
        )
        self._rejected_path = data_dir / SPOOL_DIRECTORY / REJECTED_FILE
        self._worker = _StoreWorker(
            data_dir / TIMESERIES_FILE,
            self._spool,
            self._figures,
            self._options,
            report=self._from_thread,
            logger=self._logger,
        )
        self._sending: _Sender | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: _Failure | None = None
        self._reported_drops = 0
        self._next_maintenance = 0.0

    @property
    def backend(self) -> str:
        return "embedded" if self._sender is None else "influxdb"

    @property
    def timeseries_path(self) -> Path:
        return self._worker.path

    def add(self, point: Point) -> None:
        """Take one point (on the loop, never blocking)."""
        self._pending.append(point)
        if len(self._pending) >= self._options.batch_size:
            self._hand_over()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._worker.start()
        if self._sender is not None and self._spool is not None:
            self._sending = _Sender(
                self._sender,
                self._spool,
                self._figures,
                self._options,
                rejected_path=self._rejected_path,
                now=self._clock.now,
                report=self._from_thread,
                on_rejected=self.record_rejected,
                logger=self._logger,
            )
            self._sending.start()

    async def run(self) -> None:
        """Hand over a batch every flush interval; watch the spool and the store's health."""
        while True:
            self._hand_over()
            self._watch()
            if self._clock.monotonic() >= self._next_maintenance:
                self._next_maintenance = self._clock.monotonic() + MAINTAIN_EVERY
                self._worker.request_maintenance(time_ns(self._clock.now()))
            await self._clock.sleep(self._options.flush_interval)

    async def stop(self) -> None:
        """Hand over what is left, let the worker store it, and stop both threads (bounded)."""
        self._hand_over()
        self._worker.finish(time_ns(self._clock.now()))
        if self._sending is not None:
            self._sending.finish()
        deadline = self._options.stop_timeout
        for thread in (self._worker, self._sending):
            if thread is None:
                continue
            await asyncio.to_thread(thread.join, deadline)
            if thread.is_alive():
                self._logger.error(
                    "%s did not stop within %.1f s; what it holds is in the spool",
                    thread.name,
                    deadline,
                )
        if self._spool is not None and not (self._sending and self._sending.is_alive()):
            self._spool.close()

    # -- health ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        figures = self._figures
        spool = self._spool
        spool_points = spool.pending_points if spool is not None else 0
        oldest = spool.oldest_ns if spool is not None else None
        lag = 0.0
        if oldest is not None:
            lag = max(0.0, (time_ns(self._clock.now()) - oldest) / 1e9)
        if self._failure is not None:
            status = "down" if self._failure.outcome is WriteOutcome.REFUSED else "degraded"
        elif self._worker.failing:
            status = "degraded"
        else:
            status = "ok"
        return {
            "backend": self.backend,
            "status": status,
            "points_written": figures.written if spool is not None else figures.stored,
            "points_dropped": figures.dropped,
            "points_retried": figures.retried,
            "points_rejected": figures.rejected,
            "points_waiting": len(self._pending) + self._worker.queued_points,
            "spool_points": spool_points,
            "spool_bytes": spool.pending_bytes if spool is not None else 0,
            "spool_max_bytes": spool.max_bytes if spool is not None else None,
            "write_lag_seconds": round(lag, 3),
            "last_error": figures.last_error,
            "last_write": figures.last_write.isoformat() if figures.last_write else None,
        }

    # -- internals ---------------------------------------------------------------

    def _hand_over(self) -> None:
        points, self._pending = self._pending, []
        self._worker.put(points, time_ns(self._clock.now()))

    def _from_thread(self, report: Callable[[], None]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between: stopping
                loop.call_soon_threadsafe(report)
                return
        report()

    def _watch(self) -> None:
        """Alarms the threads' state calls for, checked once per flush interval."""
        now = self._clock.now()
        sending = self._sending
        if sending is not None:
            result = sending.last_result
            if result is not None:
                self._on_result(result, now)
        spool = self._spool
        if spool is not None:
            fill = spool.pending_bytes / spool.max_bytes if spool.max_bytes else 0.0
            near = self._alarms.is_active("spool_near_full", STORE_SOURCE)
            if fill >= NEAR_FULL and not near:
                self._alarms.raise_alarm(
                    "spool_near_full",
                    STORE_SOURCE,
                    f"the time-series spool holds {spool.pending_points} points "
                    f"({fill:.0%} of its {spool.max_bytes // 1_000_000} MB bound); "
                    "past the bound the oldest points are dropped",
                    severity=Severity.WARNING,
                    details={"spool_points": spool.pending_points, "fill": round(fill, 3)},
                )
            elif near and fill < NEAR_FULL_CLEAR:
                self._alarms.clear(
                    "spool_near_full", STORE_SOURCE, f"the spool is down to {fill:.0%}"
                )
        self._watch_embedded(now)
        dropped = self._figures.dropped
        if dropped > self._reported_drops:
            newly = dropped - self._reported_drops
            self._reported_drops = dropped
            self._logger.warning("dropped %d time-series points (the spool is full)", newly)
            self._events.record(
                "store_points_dropped",
                f"{newly} of the oldest time-series points were dropped: the spool was full",
                severity=Severity.WARNING,
                details={"dropped": newly, "dropped_total": dropped},
            )

    def _watch_embedded(self, now: datetime) -> None:
        """``store_unavailable`` for the embedded file when its writes keep failing."""
        worker = self._worker
        active = self._alarms.is_active("store_unavailable", EMBEDDED_SOURCE)
        since = worker.failing_since
        if worker.failing and since is not None:
            failing_for = (time_ns(now) - since) / 1e9
            if not active and failing_for >= self._options.alarm_after:
                only_copy = self._spool is None
                self._alarms.raise_alarm(
                    "store_unavailable",
                    EMBEDDED_SOURCE,
                    f"writing {worker.path} has failed for {failing_for:.0f} s: "
                    f"{self._figures.last_error}; "
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
                "store_unavailable", EMBEDDED_SOURCE, f"{worker.path} takes writes again"
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
            return  # recorded by the sender's report; the spool went on
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

    def record_rejected(self, points: int, message: str) -> None:
        """On the loop: a chunk the store rejected as data was set aside."""
        self._events.record(
            "store_points_rejected",
            f"the time-series store rejected {points} points ({message}); "
            f"they are kept in {self._rejected_path}",
            severity=Severity.WARNING,
            details={"points": points, "file": str(self._rejected_path)},
        )


class _StoreWorker(threading.Thread):
    """Takes batches off the loop: spool (InfluxDB) and embedded store, in order."""

    def __init__(
        self,
        path: Path,
        spool: Spool | None,
        figures: _Figures,
        options: WriterOptions,
        *,
        report: Callable[[Callable[[], None]], None],
        logger: logging.Logger,
    ) -> None:
        super().__init__(name="timeseries-store", daemon=True)
        self.path = path
        self._spool = spool
        self._figures = figures
        self._options = options
        self._report = report
        self._logger = logger
        self._batches: deque[tuple[list[Point], int]] = deque()
        self._queued = 0
        self._maintain_at: int | None = None
        self._finish_at: int | None = None
        self._ready = threading.Condition()
        self._embedded: EmbeddedStore | None = None
        self.failing = False
        self.failing_since: int | None = None  # ns, by the writer's clock

    @property
    def queued_points(self) -> int:
        return self._queued

    def put(self, points: list[Point], now_ns: int) -> None:
        with self._ready:
            self._batches.append((points, now_ns))
            self._queued += len(points)
            while self._queued > self._options.max_queued_points and len(self._batches) > 1:
                dropped, _ = self._batches.popleft()
                self._queued -= len(dropped)
                self._figures.dropped += len(dropped)
            self._ready.notify()

    def request_maintenance(self, now_ns: int) -> None:
        with self._ready:
            self._maintain_at = now_ns
            self._ready.notify()

    def finish(self, now_ns: int) -> None:
        with self._ready:
            self._finish_at = now_ns
            self._ready.notify()

    def run(self) -> None:
        try:
            while True:
                with self._ready:
                    while not self._batches and self._maintain_at is None:
                        if self._finish_at is not None:
                            if self._embedded is not None:
                                self._embedded.flush(self._finish_at)
                            return
                        self._ready.wait()
                    batch = self._batches.popleft() if self._batches else None
                    maintain_at, self._maintain_at = self._maintain_at, None
                if batch is not None:
                    self._store(*batch)
                if maintain_at is not None and self._embedded is not None:
                    self._maintain(self._embedded, maintain_at)
        finally:
            if self._embedded is not None:
                self._embedded.close()

    def _store_file(self) -> EmbeddedStore:
        """The embedded store, opened on first use in this thread (its SQLite connection
        belongs to the thread that made it); an open that failed is tried again."""
        if self._embedded is None:
            self._embedded = EmbeddedStore(
                self.path,
                keep_raw=self._spool is None,
                retention=self._options.retention,
                history=self._options.history,
                logger=self._logger,
            )
        return self._embedded

    def _store(self, points: list[Point], now_ns: int) -> None:
        """Spool first (the durable copy), then the embedded store.

        With no InfluxDB the embedded store holds the only copy, so a failing write is
        retried (the batches behind it wait in memory, within ``max_queued_points``).
        With InfluxDB the spool holds the points and the store only rollups: a failing
        rollup write is logged and skipped, so it never holds up the spool.
        """
        spooled = self._spool is None or not points
        delay = self._options.retry_min
        while True:
            try:
                if not spooled and self._spool is not None:
                    body = encode_lines(points)
                    oldest = min(point.time_ns for point in points)
                    self._figures.dropped += self._spool.append(body, len(points), oldest)
                    spooled = True
                self._store_file().write(points, now_ns)
            except Exception as error:  # disk full, a locked, broken or foreign database file
                if not self.failing:
                    self._logger.exception("storing time-series points failed")
                    self.failing_since = now_ns
                self.failing = True
                where = self.path.name if spooled else "the spool"
                self._figures.last_error = f"{where}: {type(error).__name__}: {error}"
                if (spooled and self._spool is not None) or self._finish_at is not None:
                    break  # rollups only, or stopping: nothing more can keep them
                time.sleep(delay)
                delay = min(delay * 2, self._options.retry_max)
                continue
            if self.failing:
                self._logger.info("storing time-series points works again")
                self.failing = False
            break
        with self._ready:
            self._queued -= len(points)
        self._figures.stored += len(points)
        if self._spool is None and points:
            self._figures.last_write = datetime.fromtimestamp(now_ns / 1e9, UTC)

    def _maintain(self, store: EmbeddedStore, now_ns: int) -> None:
        try:
            done = store.maintain(now_ns)
        except Exception:
            self._logger.exception("time-series retention and downsampling failed")
            return
        if any((done.raw_deleted, done.minutes_downsampled, done.hours_deleted)):
            self._logger.info(
                "time-series upkeep: %d raw points past retention deleted, %d minute "
                "rollups downsampled, %d hour rollups past history deleted",
                done.raw_deleted,
                done.minutes_downsampled,
                done.hours_deleted,
            )


@dataclass(slots=True)
class _Backoff:
    minimum: float
    maximum: float
    current: float = field(init=False)

    def __post_init__(self) -> None:
        self.current = self.minimum

    def next(self, hint: float | None = None) -> float:
        """The next delay; a server's Retry-After is honoured up to ``RETRY_AFTER_MAX``."""
        delay = self.current
        self.current = min(self.current * 2, self.maximum)
        return max(delay, min(hint, RETRY_AFTER_MAX)) if hint else delay

    def reset(self) -> None:
        self.current = self.minimum


class _Sender(threading.Thread):
    """Writes the spool's head to InfluxDB; only a written chunk leaves the spool."""

    def __init__(
        self,
        sender: InfluxSender,
        spool: Spool,
        figures: _Figures,
        options: WriterOptions,
        *,
        rejected_path: Path,
        now: Callable[[], datetime],
        report: Callable[[Callable[[], None]], None],
        on_rejected: Callable[[int, str], None],
        logger: logging.Logger,
    ) -> None:
        super().__init__(name="timeseries-sender", daemon=True)
        self._now = now
        self._on_rejected = on_rejected
        self._sender = sender
        self._spool = spool
        self._figures = figures
        self._options = options
        self._rejected_path = rejected_path
        self._report = report
        self._logger = logger
        self._stopping = threading.Event()
        self._backoff = _Backoff(options.retry_min, options.retry_max)
        self.last_result: WriteResult | None = None

    def finish(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    chunk = self._spool.peek(self._options.batch_size)
                    if chunk is None:
                        self._stopping.wait(self._options.flush_interval / 4)
                        continue
                    self._send(chunk)
                except Exception as error:  # the spool's disk failed: keep trying, never die
                    self._logger.exception("sending time-series points failed")
                    self._figures.last_error = f"{type(error).__name__}: {error}"
                    self._stopping.wait(self._backoff.next())
        finally:
            self._sender.close()

    def _send(self, chunk: SpoolChunk) -> None:
        result = self._sender.write(chunk.body)
        self.last_result = result
        if result.outcome is WriteOutcome.WRITTEN:
            self._spool.commit(chunk)
            self._figures.written += chunk.points
            self._figures.last_write = self._now()
            self._backoff.reset()
            return
        self._figures.last_error = result.message
        if result.outcome is WriteOutcome.REJECTED:
            self._set_aside(chunk, result)
            return
        self._figures.retried += chunk.points
        if result.outcome is WriteOutcome.REFUSED:
            delay = self._options.refused_retry
        else:
            delay = self._backoff.next(result.retry_after)
        self._stopping.wait(delay)

    def _set_aside(self, chunk: SpoolChunk, result: WriteResult) -> None:
        """Keep data the store rejects as such in a file of its own, and go on."""
        with self._rejected_path.open("ab") as rejected:
            rejected.write(chunk.body)
            rejected.flush()
        self._spool.commit(chunk)
        self._figures.rejected += chunk.points
        self._logger.error(
            "the time-series store rejected %d points (%s); kept in %s",
            chunk.points,
            result.message,
            self._rejected_path,
        )
        points, message = chunk.points, result.message
        self._report(lambda: self._on_rejected(points, message))
