"""The embedded time-series store: raw points and rollups in one SQLite file.

With no InfluxDB configured every point lands here (raw, for ``retention``, and
rolled up), so the demo and a small center need no database server. With
InfluxDB configured the raw points go there and this store keeps only the
rollups, so the reports and the status page read the same tables either way
and never depend on a Flux query.

The file is ``timeseries.sqlite3`` in ``CENTER_DATA_DIR``, apart from the
controller's state database, so heavy time-series writes never hold the lock a
fire alarm's unlock has to take. Same pragmas and reasons as
``controller/database.py`` (WAL, ``synchronous=NORMAL``).

Tables:

- ``series(id, measurement, tags)``: tags as sorted JSON; cached in memory.
- ``raw(time_ns, series, fields)``: fields as compact JSON, keyed by time first
  so that inserts append and the retention delete is a prefix of the key. Two
  points of one series at the same nanosecond are one point, their fields
  merged, as InfluxDB does.
- ``rollup_minute`` and ``rollup_hour(series, field, bucket, weight, total, min,
  max)``: ``bucket`` in epoch seconds; see ``rollups`` for the arithmetic.
- ``meta``: the schema version, and ``minutes_from``: hour rows answer for time
  before it, minute rows from it on. ``maintain`` moves it forward an hour at a
  time, in the same transaction that turns that hour's minutes into one row.

Points are checked here rather than trusted: a point with an integer outside
64 bits, a float that is not finite, a time more than an hour ahead of ``now``
or older than ``retention``, or text JSON cannot hold (a lone surrogate in a
tag or string) is rejected whole, counted in ``points_rejected`` and logged
(once per series), and the rest of the batch is stored. STEP points older
than their series' latest are counted in ``points_out_of_order``; their raw
point is kept. A STEP point that reaches the store after its minute was closed
(the writer held it back past the next minute) takes effect from the end of the
closed minutes: rows already written are never rewritten.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import orjson

from controller.timeseries.points import Fields, FieldValue, Point, Series, time_ns
from controller.timeseries.rollups import (
    HOUR,
    MINUTE,
    MINUTE_NS,
    NS,
    Aggregation,
    Bucket,
    OpenRollups,
    RollupBatch,
    add_sample,
    aggregation_of,
    numeric_fields,
    to_buckets,
)

__all__ = ["Aggregation", "Bucket", "EmbeddedStore", "HistoryReader", "Maintenance"]

TIMESERIES_FILE = "timeseries.sqlite3"
SCHEMA_VERSION = 1
FUTURE_LIMIT_NS = HOUR * NS
RAW_DELETE_BATCH = 50_000

_ROLLUP_COLUMNS = """
    series INTEGER NOT NULL,
    field TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    weight REAL NOT NULL,
    total REAL NOT NULL,
    min REAL NOT NULL,
    max REAL NOT NULL,
    PRIMARY KEY (series, field, bucket)
"""
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS series (
        id INTEGER PRIMARY KEY, measurement TEXT NOT NULL, tags TEXT NOT NULL,
        UNIQUE (measurement, tags))""",
    """CREATE TABLE IF NOT EXISTS raw (
        time_ns INTEGER NOT NULL, series INTEGER NOT NULL, fields TEXT NOT NULL,
        PRIMARY KEY (time_ns, series)) WITHOUT ROWID""",
    f"CREATE TABLE IF NOT EXISTS rollup_minute ({_ROLLUP_COLUMNS}) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS rollup_minute_bucket ON rollup_minute (bucket)",
    f"CREATE TABLE IF NOT EXISTS rollup_hour ({_ROLLUP_COLUMNS}) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS rollup_hour_bucket ON rollup_hour (bucket)",
)
_INSERT_RAW = """
    INSERT INTO raw (time_ns, series, fields) VALUES (?, ?, ?)
    ON CONFLICT (time_ns, series) DO UPDATE SET fields = json_patch(fields, excluded.fields)
"""
_ADD = """
    ON CONFLICT (series, field, bucket) DO UPDATE SET
        weight = weight + excluded.weight, total = total + excluded.total,
        min = min(min, excluded.min), max = max(max, excluded.max)
"""
_INSERT_MINUTE = "INSERT INTO rollup_minute VALUES (?, ?, ?, ?, ?, ?, ?)" + _ADD
_DOWNSAMPLE = (
    """
    INSERT INTO rollup_hour (series, field, bucket, weight, total, min, max)
    SELECT series, field, ?, sum(weight), sum(total), min(min), max(max) FROM rollup_minute
    WHERE bucket >= ? AND bucket < ? GROUP BY series, field
    """
    + _ADD
)


@dataclass(frozen=True, slots=True)
class Maintenance:
    """What one ``maintain`` did. Every minute row is merged into its hour before it
    is deleted, so ``minutes_downsampled`` and ``minutes_deleted`` are equal."""

    raw_deleted: int
    minutes_downsampled: int
    minutes_deleted: int
    hours_deleted: int


@dataclass(slots=True)
class _Batch(RollupBatch):
    """One write's changes, applied to the store's memory only once they are committed."""

    new_series: dict[Series, tuple[int, bool] | None] = field(default_factory=dict)
    series_rows: list[tuple[int, str, str]] = field(default_factory=list)
    raw: list[tuple[int, int, str]] = field(default_factory=list)
    rejected: int = 0


class EmbeddedStore:
    """Written by ONE worker thread (the time-series writer's); sqlite3 connection made in
    that thread (check_same_thread default), WAL, synchronous=NORMAL.

    Construct it in that thread. ``write`` and ``flush`` either commit all they were
    given or raise with nothing changed, in the file or in memory, so the caller
    may give the same points again. ``maintain`` works in short transactions, each
    leaving the tables consistent, so an interrupted run just continues next time.
    ``close`` does not flush: call ``flush(now_ns)`` first.
    """

    def __init__(
        self,
        path: Path,
        *,
        keep_raw: bool,
        retention: timedelta,
        history: timedelta,
        logger: logging.Logger | None = None,
    ) -> None:
        if retention <= timedelta(0) or history < retention:
            raise ValueError("retention must be positive and history at least retention")
        self._keep_raw = keep_raw
        self._retention_ns = retention // timedelta(microseconds=1) * 1000
        self._history_ns = history // timedelta(microseconds=1) * 1000
        self._log = logger or logging.getLogger(__name__)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute("PRAGMA cache_size=-32768")
        with self._transaction():
            for statement in _SCHEMA:
                self._db.execute(statement)
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        version = int(_meta(self._db, "schema_version") or SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            self._db.close()
            raise RuntimeError(f"{path} has schema version {version}, expected {SCHEMA_VERSION}")
        self._series: dict[Series, tuple[int, bool]] = {}
        self._unstorable: set[Series] = set()
        for series_id, measurement, tags in self._db.execute("SELECT * FROM series"):
            series = Series.of(measurement, orjson.loads(tags))
            self._series[series] = (series_id, aggregation_of(measurement) is Aggregation.STEP)
        self._next_id = 1 + max((info[0] for info in self._series.values()), default=0)
        self._rollups = OpenRollups()
        self._logged: set[Series] = set()
        self._names: set[str] = set()
        self.points_rejected = 0
        self.points_out_of_order = 0

    def write(self, points: Sequence[Point], now_ns: int) -> None:
        """In one transaction: the raw points (when keep_raw) and the rollups. Also closes every
        minute that ended before now_ns, carrying STEP values forward through minutes with no
        point (a room occupied for three hours gets 180 full minutes). Called at least every
        flush interval, with an empty `points` when nothing happened."""
        minute = now_ns - now_ns % MINUTE_NS
        self._commit(points, now_ns, carry_to=minute, close_before=minute)

    def flush(self, now_ns: int) -> None:
        """Write the unfinished minute's partial rollups (so a stop loses no minute); the next
        write() for the same minute merges with them (UPSERT adding weights and totals)."""
        self._commit((), now_ns, carry_to=now_ns, close_before=None)

    def close(self) -> None:
        if pending := self._rollups.pending:
            self._log.warning("closing the time-series store with %d rollups not flushed", pending)
        self._db.close()

    def maintain(self, now_ns: int) -> Maintenance:
        """Downsample minute rollups older than `retention` into hour rollups (exact merge:
        weights and totals add, min of minima, max of maxima), then delete raw points and
        minute rollups older than `retention`, and hour rollups older than `history`.
        Idempotent; cheap when there is nothing to do; batches its deletes so it never holds
        a write lock for long.

        "Older" is measured to the hour: the minutes of an hour become its hour row
        together, so up to an hour more than ``retention`` is kept.
        """
        minutes_before = _floor_hour((now_ns - self._retention_ns) // NS)
        hours_before = _floor_hour((now_ns - self._history_ns) // NS)
        downsampled = self._downsample(minutes_before)
        return Maintenance(
            raw_deleted=self._delete_raw(minutes_before * NS),
            minutes_downsampled=downsampled,
            minutes_deleted=downsampled,
            hours_deleted=self._delete_hours(hours_before),
        )

    def _commit(
        self, points: Sequence[Point], now_ns: int, *, carry_to: int, close_before: int | None
    ) -> None:
        batch = _Batch()
        self._take(batch, points, now_ns)
        self._rollups.carry(batch, carry_to)
        rows = self._rollups.closed_rows(batch, close_before)
        with self._transaction():
            if batch.series_rows:
                self._db.executemany("INSERT INTO series VALUES (?, ?, ?)", batch.series_rows)
            if batch.raw:
                self._db.executemany(_INSERT_RAW, batch.raw)
            if rows:
                self._db.executemany(_INSERT_MINUTE, rows)
        for series, info in batch.new_series.items():
            if info is None:
                self._unstorable.add(series)
            else:
                self._series[series] = info
        self._next_id += len(batch.series_rows)
        self._rollups.apply(batch, close_before)
        self.points_rejected += batch.rejected
        self.points_out_of_order += batch.out_of_order

    def _take(self, batch: _Batch, points: Sequence[Point], now_ns: int) -> None:
        """Validate each point, queue its raw row, and add it to the batch's rollups."""
        known = self._series
        keep_raw = self._keep_raw
        oldest, newest = now_ns - self._retention_ns, now_ns + FUTURE_LIMIT_NS
        minutes = batch.minutes
        names = self._names
        for point in points:
            series, fields, moment = point
            info = known.get(series)
            if info is None:
                info = self._new_series(batch, series)
            if info is None:
                self._reject(batch, series, "its tags cannot be stored")
                continue
            if type(moment) is not int or not oldest <= moment <= newest:
                self._reject(batch, series, f"its time {moment!r} is out of range")
                continue
            numeric = numeric_fields(fields, names)
            if isinstance(numeric, str):
                self._reject(batch, series, numeric)
                continue
            series_id, step = info
            if keep_raw:
                try:
                    encoded = orjson.dumps(dict(fields)).decode()
                except orjson.JSONEncodeError as error:
                    self._reject(batch, series, f"its fields cannot be stored ({error})")
                    continue
                batch.raw.append((moment, series_id, encoded))
            if step:
                self._rollups.step(batch, series_id, moment, numeric)
            else:
                minute = moment - moment % MINUTE_NS
                for name, value in numeric:
                    add_sample(minutes, minute, series_id, name, value)

    def _new_series(self, batch: _Batch, series: Series) -> tuple[int, bool] | None:
        if series in batch.new_series:
            return batch.new_series[series]
        if series in self._unstorable:
            return None
        info: tuple[int, bool] | None = None
        try:
            tags = orjson.dumps(dict(series.tags)).decode()
            series.measurement.encode()
        except (orjson.JSONEncodeError, UnicodeEncodeError):
            pass
        else:
            step = aggregation_of(series.measurement) is Aggregation.STEP
            info = (self._next_id + len(batch.series_rows), step)
            batch.series_rows.append((info[0], series.measurement, tags))
        batch.new_series[series] = info
        return info

    def _reject(self, batch: _Batch, series: Series, reason: str) -> None:
        batch.rejected += 1
        if series not in self._logged:
            self._logged.add(series)
            self._log.warning("a %s point was not stored: %s", series.line_prefix, reason)

    def _downsample(self, before: int) -> int:
        """Merge minute rows before ``before`` (epoch s, on the hour) into hour rows."""
        count = 0
        hour = self._db.execute("SELECT min(bucket) FROM rollup_minute").fetchone()[0]
        boundary = int(_meta(self._db, "minutes_from") or 0)
        while hour is not None and hour < before:
            hour = _floor_hour(hour)
            with self._transaction():
                self._db.execute(_DOWNSAMPLE, (hour, hour, hour + HOUR))
                count += self._db.execute(
                    "DELETE FROM rollup_minute WHERE bucket >= ? AND bucket < ?",
                    (hour, hour + HOUR),
                ).rowcount
                boundary = max(boundary, hour + HOUR)
                self._set_meta("minutes_from", boundary)
            hour = self._db.execute(
                "SELECT min(bucket) FROM rollup_minute WHERE bucket >= ?", (hour + HOUR,)
            ).fetchone()[0]
        if boundary < before:
            with self._transaction():
                self._set_meta("minutes_from", before)
        return count

    def _delete_raw(self, before_ns: int) -> int:
        count = 0
        while True:
            limit = self._db.execute(
                "SELECT time_ns, series FROM raw WHERE time_ns < ? ORDER BY time_ns, series"
                " LIMIT 1 OFFSET ?",
                (before_ns, RAW_DELETE_BATCH),
            ).fetchone()
            with self._transaction():
                if limit is None:
                    deleted = self._db.execute("DELETE FROM raw WHERE time_ns < ?", (before_ns,))
                else:
                    deleted = self._db.execute(
                        "DELETE FROM raw WHERE (time_ns, series) < (?, ?)", tuple(limit)
                    )
                count += deleted.rowcount
            if limit is None:
                return count

    def _delete_hours(self, before: int) -> int:
        count = 0
        first = self._db.execute("SELECT min(bucket) FROM rollup_hour").fetchone()[0]
        while first is not None and first < before:
            until = min(before, first + 24 * HOUR)
            with self._transaction():
                count += self._db.execute(
                    "DELETE FROM rollup_hour WHERE bucket < ?", (until,)
                ).rowcount
            first = self._db.execute("SELECT min(bucket) FROM rollup_hour").fetchone()[0]
        return count

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise


class HistoryReader:
    """Read-only queries, each on a short-lived or per-thread connection of its own; the web
    layer calls them through asyncio.to_thread, so they must be thread-safe.

    Each call opens its own connection and closes it, so calls may run in any
    thread at once. Before the store has made the file, every answer is empty.
    """

    def __init__(self, path: Path) -> None:
        self._path = path

    def buckets(
        self,
        measurement: str,
        tags: Mapping[str, str],
        field: str,
        start: datetime,
        end: datetime,
        *,
        step: int = 60,
    ) -> list[Bucket]:
        """Rollups of ``field`` over ``[start, end)``, merged into ``step``-second buckets.

        Series: every series of ``measurement`` whose tags include ``tags`` (keys
        with an empty value are ignored), merged, so ``{"site": s}`` gives the
        visitors of all counters and a device tag picks one sensor. Rows count when
        their bucket starts within the range. Buckets start at ``start`` and every
        ``step`` seconds after (step a multiple of 60); hour rows serve the time
        before the minute rows begin, and are returned as hour buckets when the
        step is finer than an hour or ``start`` is not on an hour. The last bucket
        may be cut short by ``end``: its weight says how much is known. Empty
        buckets are left out.
        """
        if step <= 0 or step % MINUTE:
            raise ValueError(f"step must be a positive multiple of 60 seconds, not {step}")
        wanted = Series.of(measurement, tags).tags
        first, last = time_ns(start) // NS, time_ns(end) // NS
        with self._connect() as db:
            if db is None:
                return []
            ids = [
                series_id
                for series_id, encoded in db.execute(
                    "SELECT id, tags FROM series WHERE measurement = ?", (measurement,)
                )
                if _contains(orjson.loads(encoded), wanted)
            ]
            if not ids:
                return []
            boundary = int(_meta(db, "minutes_from") or 0)
            grid = (first, step)
            rows = [
                *_rollups(db, "rollup_hour", HOUR, ids, field, grid, first, min(last, boundary)),
                *_rollups(
                    db, "rollup_minute", MINUTE, ids, field, grid, max(first, boundary), last
                ),
            ]
        return to_buckets(rows, first, step)

    def points(self, measurement: str, start: datetime, end: datetime) -> list[Point]:
        """Raw points, in time order (embedded backend only): for tests and export."""
        with self._connect() as db:
            if db is None:
                return []
            series = {
                series_id: Series.of(measurement, orjson.loads(tags))
                for series_id, tags in db.execute(
                    "SELECT id, tags FROM series WHERE measurement = ?", (measurement,)
                )
            }
            cursor = db.execute(
                "SELECT time_ns, series, fields FROM raw WHERE time_ns >= ? AND time_ns < ?"
                " ORDER BY time_ns, series",
                (time_ns(start), time_ns(end)),
            )
            return [
                Point(series[series_id], _fields(encoded), moment)
                for moment, series_id, encoded in cursor
                if series_id in series
            ]

    def series(self, measurement: str) -> list[Series]:
        with self._connect() as db:
            if db is None:
                return []
            cursor = db.execute(
                "SELECT tags FROM series WHERE measurement = ? ORDER BY id", (measurement,)
            )
            return [Series.of(measurement, orjson.loads(tags)) for (tags,) in cursor]

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection | None]:
        if not self._path.exists():
            yield None
            return
        db = sqlite3.connect(self._path, timeout=5.0)
        try:
            db.execute("PRAGMA query_only=ON")
            # The writer creates the file a moment before its tables: nothing stored yet.
            ready = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'series'").fetchone()
            yield db if ready else None
        finally:
            db.close()


def _fields(encoded: str) -> Fields:
    values: dict[str, FieldValue] = orjson.loads(encoded)
    return tuple(values.items())


def _contains(tags: dict[str, str], wanted: tuple[tuple[str, str], ...]) -> bool:
    return all(tags.get(key) == value for key, value in wanted)


def _rollups(
    db: sqlite3.Connection,
    table: str,
    seconds: int,
    ids: list[int],
    name: str,
    grid: tuple[int, int],
    first: int,
    last: int,
) -> list[tuple[int, int, float, float, float, float]]:
    """Rows of ``table`` in ``[first, last)``. When they fit the query's grid
    (``grid``: its origin and step), SQLite merges them into it, so a month in day
    buckets is 31 rows for Python rather than 44,640; ``to_buckets`` then merges
    grid rows exactly as it merges the rows themselves."""
    if first >= last:
        return []
    origin, step = grid
    placeholders = ",".join("?" * len(ids))
    where = f"series IN ({placeholders}) AND field = ? AND bucket >= ? AND bucket < ?"
    if step > seconds and step % seconds == 0 and origin % seconds == 0:
        cursor = db.execute(
            f"SELECT ? + (bucket - ?) / ? * ? AS cell, ?, sum(weight), sum(total), min(min),"
            f" max(max) FROM {table} WHERE {where} GROUP BY cell",
            (origin, origin, step, step, step, *ids, name, first, last),
        )
    else:
        cursor = db.execute(
            f"SELECT bucket, {seconds}, weight, total, min, max FROM {table} WHERE {where}",
            (*ids, name, first, last),
        )
    return cursor.fetchall()


def _meta(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _floor_hour(seconds: int) -> int:
    return seconds - seconds % HOUR
