"""The store process: the time-series workers on a core of their own.

Keeping points is Python work (encoding line protocol, rolling up minutes)
of 10-15 µs a point. As threads of the controller it competed with the event
loop for the one interpreter lock, and halved how many readings a second the
controller could take. In a process of its own it runs beside the loop on a
second core: the controller only pickles each batch into a pipe.

The conversation is one pipe each way. The controller sends, in order:
``("points", series, rows, now_ns)`` for every batch (``series`` defines
each series the rows use, ``(number, measurement, tags)``; a row is
``(number, fields, time_ns)``), ``("maintain", now_ns)``
for the hourly retention and downsampling, and ``("finish", now_ns)`` to stop.
``now_ns`` is the controller's clock (a virtual one in tests): the process
never reads a clock for anything the rules or the reports depend on. The
process answers with ``("status", {...})`` a few times a second and once
more when it has stopped.

When the controller dies (even by ``kill -9``) the pipe ends; the process
stores what it was given and stops by itself, so nothing handed over is lost.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from controller.logs import setup_logging
from controller.settings import LogFormat
from controller.timeseries.influx import InfluxSender
from controller.timeseries.points import Fields, Point, Series
from controller.timeseries.spool import Spool
from controller.timeseries.workers import (
    REJECTED_FILE,
    SPOOL_DIRECTORY,
    TIMESERIES_FILE,
    Figures,
    Sender,
    StoreWorker,
    WriterOptions,
)

STATUS_EVERY = 0.1  # seconds between status reports


@dataclass(frozen=True, slots=True)
class InfluxConfig:
    url: str
    token: str | None
    org: str | None
    bucket: str
    timeout: float


@dataclass(frozen=True, slots=True)
class StoreConfig:
    data_dir: Path
    influx: InfluxConfig | None
    spool_max_bytes: int
    options: WriterOptions
    log_format: LogFormat = LogFormat.TEXT
    log_level: str = "INFO"


def serve(commands: Connection, reports: Connection, config: StoreConfig) -> None:
    """The store process's main: take commands until told to finish or the pipe ends."""
    setup_logging(config.log_format, config.log_level)  # the controller's log format
    logger = logging.getLogger("controller.timeseries")
    store = _Store(config, logger)
    reporter = threading.Thread(
        target=store.report_until_stopped, args=(reports,), name="timeseries-status"
    )
    reporter.start()
    try:
        while True:
            try:
                message = commands.recv()
            except EOFError:  # the controller is gone: keep what it gave us, then stop
                logger.warning("the controller went away; storing what it handed over")
                store.finish(store.latest_ns)
                break
            kind = message[0]
            if kind == "points":
                store.take(message[1], message[2], message[3])
            elif kind == "maintain":
                store.worker.request_maintenance(message[1])
            elif kind == "finish":
                store.finish(message[1])
                break
    finally:
        store.stopped.set()
        reporter.join()
        with contextlib.suppress(OSError):  # nobody listens any more
            reports.send(("status", store.status()))
        store.close()


class _Store:
    """The workers of one store process and what they report."""

    def __init__(self, config: StoreConfig, logger: logging.Logger) -> None:
        self._config = config
        self._logger = logger
        self.figures = Figures()
        self.latest_ns = 0
        self.received = 0  # points taken from the controller
        self.series: dict[int, Series] = {}  # by the number the controller gave it
        self.stopped = threading.Event()
        options = config.options
        spool_dir = config.data_dir / SPOOL_DIRECTORY
        self.spool = (
            Spool(spool_dir, max_bytes=config.spool_max_bytes, logger=logger)
            if config.influx is not None
            else None
        )
        self.worker = StoreWorker(
            config.data_dir / TIMESERIES_FILE, self.spool, self.figures, options, logger=logger
        )
        self.worker.start()
        self.sender: Sender | None = None
        if config.influx is not None and self.spool is not None:
            influx = config.influx
            self.sender = Sender(
                InfluxSender(
                    url=influx.url,
                    token=influx.token,
                    org=influx.org,
                    bucket=influx.bucket,
                    timeout=influx.timeout,
                    logger=logger,
                ),
                self.spool,
                self.figures,
                options,
                rejected_path=spool_dir / REJECTED_FILE,
                now=self._now,
                logger=logger,
            )
            self.sender.start()

    def _now(self) -> datetime:
        """The controller's time as of its last message (for the health report)."""
        return datetime.fromtimestamp(self.latest_ns / 1e9, UTC)

    def take(
        self,
        new_series: list[tuple[int, str, dict[str, str]]],
        rows: list[tuple[int, Fields, int]],
        now_ns: int,
    ) -> None:
        self.latest_ns = now_ns
        for number, measurement, tags in new_series:
            if number not in self.series:
                self.series[number] = Series.of(measurement, tags)
        series = self.series
        points = [Point(series[number], fields, moment) for number, fields, moment in rows]
        self.worker.put(points, now_ns)
        self.received += len(points)

    def finish(self, now_ns: int) -> None:
        timeout = self._config.options.stop_timeout
        self.worker.finish(now_ns)
        self.worker.join(timeout)
        if self.sender is not None:
            self.sender.finish()
            self.sender.join(timeout)
        for thread in (self.worker, self.sender):
            if thread is not None and thread.is_alive():
                self._logger.error(
                    "%s did not stop within %.1f s; what it holds is in the spool",
                    thread.name,
                    timeout,
                )

    def close(self) -> None:
        sending = self.sender is not None and self.sender.is_alive()
        if self.spool is not None and not sending and not self.worker.is_alive():
            self.spool.close()

    def report_until_stopped(self, reports: Connection) -> None:
        while not self.stopped.wait(STATUS_EVERY):
            try:
                reports.send(("status", self.status()))
            except OSError:
                return

    def status(self) -> dict[str, Any]:
        figures, spool, sender = self.figures, self.spool, self.sender
        result = sender.last_result if sender is not None else None
        return {
            "written": figures.written,
            "retried": figures.retried,
            "rejected": figures.rejected,
            "dropped": figures.dropped,
            "stored": figures.stored,
            "received": self.received,
            "queued": self.worker.queued_points,
            "last_error": figures.last_error,
            "last_write": figures.last_write,
            "last_rejection": figures.last_rejection,
            "failing": self.worker.failing,
            "failing_since": self.worker.failing_since,
            "spool_points": spool.pending_points if spool is not None else 0,
            "spool_bytes": spool.pending_bytes if spool is not None else 0,
            "spool_max_bytes": spool.max_bytes if spool is not None else None,
            "oldest_ns": spool.oldest_ns if spool is not None else None,
            "result": result,
        }
