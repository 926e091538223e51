"""The store's workers: they take batches of points and keep them, off the event loop.

:class:`StoreWorker` appends each batch to the durable :class:`Spool` (with
InfluxDB configured: the spool is a write-ahead log, so a batch is on disk,
fsync'd, before anything tries to send it) and feeds it to the
:class:`EmbeddedStore` (the raw points when there is no InfluxDB; the rollups
the reports read, always). :class:`Sender` takes chunks from the spool's head,
writes them to InfluxDB and only then lets the spool forget them. A failure
leaves the chunk at the head: transient ones (unreachable, slow, 429, 5xx) are
retried with backoff; a refusal that will not pass by itself (401, 403, 404)
is retried slowly, keeping every point; data the database rejects as such
(400, 413, 422) is moved to a ``rejected`` file beside the spool and the spool
goes on.

Both run as threads of the store process (:mod:`controller.timeseries.store_process`),
so their Python work never competes with the event loop for the interpreter.
They share :class:`Figures`, plain counters the process reports to the
controller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.timeseries.embedded import EmbeddedStore
from controller.timeseries.influx import InfluxSender, WriteOutcome, WriteResult
from controller.timeseries.points import Point, encode_lines
from controller.timeseries.spool import Spool, SpoolChunk

TIMESERIES_FILE = "timeseries.sqlite3"
SPOOL_DIRECTORY = "spool"
REJECTED_FILE = "rejected.lp"
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
class Figures:
    """Counters shared by the workers and reported; ints, so reads are atomic."""

    written: int = 0
    retried: int = 0
    rejected: int = 0
    dropped: int = 0
    stored: int = 0  # points the store worker has taken care of (spooled or stored)
    last_error: str | None = None
    last_write: datetime | None = None
    last_rejection: str | None = None  # why the store last rejected a chunk as data


class StoreWorker(threading.Thread):
    """Takes batches off the loop: spool (InfluxDB) and embedded store, in order."""

    def __init__(
        self,
        path: Path,
        spool: Spool | None,
        figures: Figures,
        options: WriterOptions,
        *,
        logger: logging.Logger,
    ) -> None:
        super().__init__(name="timeseries-store", daemon=True)
        self.path = path
        self._spool = spool
        self._figures = figures
        self._options = options
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
class Backoff:
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


class Sender(threading.Thread):
    """Writes the spool's head to InfluxDB; only a written chunk leaves the spool."""

    def __init__(
        self,
        sender: InfluxSender,
        spool: Spool,
        figures: Figures,
        options: WriterOptions,
        *,
        rejected_path: Path,
        now: Callable[[], datetime],
        logger: logging.Logger,
    ) -> None:
        super().__init__(name="timeseries-sender", daemon=True)
        self._now = now
        self._sender = sender
        self._spool = spool
        self._figures = figures
        self._options = options
        self._rejected_path = rejected_path
        self._logger = logger
        self._stopping = threading.Event()
        self._backoff = Backoff(options.retry_min, options.retry_max)
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
        self._figures.last_rejection = result.message
