"""The durable log of every access decision and alarm.

Staff ask "why did the door open at 21:40?" days later, after restarts, so
every decision and every alarm change is written to SQLite before anyone is
told about it; the API's ``/api/events`` and the live stream read from here.

How times are stored: each time is two integers, the instant as microseconds
since the Unix epoch (UTC) and the UTC offset it was told in, in seconds. The
first sorts and compares correctly across offsets and daylight-saving changes
(range queries and pruning are plain integer comparisons on an index); the
second gives back the time as the clock told it, so an event recorded at
10:00 in Shanghai reads ``2026-11-23T10:00:00+08:00`` after a restart too.
Times come back with a fixed offset (:class:`datetime.timezone`), which
equals the clock's zone at that instant.

Ids come from ``AUTOINCREMENT``: they only ever grow, even after pruning, so a
client that remembers the last id it saw never mistakes a new event for one it
already has.
"""

from __future__ import annotations

import enum
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from controller.clock import Clock
from controller.database import transaction

Listener = Callable[["LoggedEvent"], None]
Unsubscribe = Callable[[], None]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_SECOND = timedelta(seconds=1)

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS event_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        time_us INTEGER NOT NULL,
        utc_offset INTEGER NOT NULL,
        severity TEXT NOT NULL,
        message TEXT NOT NULL,
        room TEXT,
        device TEXT,
        booking_id TEXT,
        alarm_id INTEGER,
        state TEXT,
        acked INTEGER,
        details TEXT NOT NULL DEFAULT '{}'
    )
    """,
    "CREATE INDEX IF NOT EXISTS event_log_time ON event_log (time_us, id)",
    "CREATE INDEX IF NOT EXISTS event_log_kind ON event_log (kind, time_us)",
    "CREATE INDEX IF NOT EXISTS event_log_room ON event_log (room, time_us)",
)


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    ALARM = "alarm"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    id: int
    kind: str
    time: datetime
    severity: Severity
    message: str
    room: str | None = None
    device: str | None = None
    booking_id: str | None = None
    alarm_id: int | None = None
    state: str | None = None  # alarm events only: "active" | "cleared"
    acked: bool | None = None  # alarm events only
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The event as the API shows it: optional fields only when they apply."""
        body: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "time": self.time.isoformat(),
            "severity": self.severity.value,
            "message": self.message,
        }
        optional = {
            "room": self.room,
            "device": self.device,
            "booking_id": self.booking_id,
            "alarm_id": self.alarm_id,
            "state": self.state,
            "acked": self.acked,
        }
        body.update((key, value) for key, value in optional.items() if value is not None)
        body["details"] = dict(self.details)
        return body


def encode_time(moment: datetime) -> tuple[int, int]:
    """``(microseconds since the epoch, UTC offset in seconds)`` of an aware time."""
    offset = moment.utcoffset()
    if offset is None:
        raise ValueError(f"a naive time cannot be stored: {moment!r}")
    return (moment - _EPOCH) // _MICROSECOND, offset // _SECOND


def decode_time(micros: int, offset: int) -> datetime:
    """The inverse of :func:`encode_time`: the same instant, told in the same offset."""
    zone = UTC if offset == 0 else timezone(timedelta(seconds=offset))
    return (_EPOCH + timedelta(microseconds=micros)).astimezone(zone)


def split_kinds(kind: str | None) -> list[str]:
    """``"fire_alarm, lock_jammed"`` -> both kinds; empty or ``None`` -> no filter."""
    if kind is None:
        return []
    return [part.strip() for part in kind.split(",") if part.strip()]


def encode_details(details: Mapping[str, Any] | None) -> str:
    """Strict JSON text: a value the API could not send is refused when recorded."""
    return json.dumps(dict(details or {}), allow_nan=False, separators=(",", ":"))


class EventLog:
    def __init__(
        self,
        db: sqlite3.Connection,
        clock: Clock,
        *,
        keep: timedelta = timedelta(days=90),
        logger: logging.Logger | None = None,
    ) -> None:
        if keep <= timedelta(0):
            raise ValueError("keep must be longer than zero")
        self._db = db
        self._clock = clock
        self._keep = keep
        self._logger = logger or logging.getLogger("controller.event_log")
        # Replaced on (un)subscribe, never mutated: delivery iterates a snapshot
        # even when a listener unsubscribes during it.
        self._listeners: tuple[Listener, ...] = ()
        self._failing: set[Listener] = set()
        # Events recorded inside self.transaction(), told to listeners after commit.
        self._pending: list[LoggedEvent] | None = None
        self.listener_errors = 0
        with transaction(db):
            for statement in _SCHEMA:
                db.execute(statement)

    @property
    def db(self) -> sqlite3.Connection:
        """The connection the log writes to; changes that record events share it."""
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Like :func:`controller.database.transaction`, but listeners hear of the
        events recorded inside only once it has committed, and never if it rolls back.

        So nobody watching the stream sees an event that the log does not
        have. (Inside a plain outer ``transaction(db)`` they are told when this
        block ends, which may be before that outer transaction commits.)
        """
        outermost = self._pending is None
        if outermost:
            self._pending = []
        try:
            with transaction(self._db) as connection:
                yield connection
        except BaseException:
            if outermost:
                self._pending = None
            raise
        if outermost:
            pending, self._pending = self._pending or [], None
            for event in pending:
                self._notify(event)

    def record(
        self,
        kind: str,
        message: str,
        *,
        severity: Severity = Severity.INFO,
        room: str | None = None,
        device: str | None = None,
        booking_id: str | None = None,
        alarm_id: int | None = None,
        state: str | None = None,
        acked: bool | None = None,
        details: Mapping[str, Any] | None = None,
        time: datetime | None = None,
    ) -> LoggedEvent:
        """Write one event, then tell every listener.

        ``time`` defaults to the clock's now. ``details`` must be JSON-able
        (no NaN); it comes back as it will after a restart.
        """
        severity = Severity(severity)
        micros, offset = encode_time(self._clock.now() if time is None else time)
        details_text = encode_details(details)
        with self.transaction():
            cursor = self._db.execute(
                "INSERT INTO event_log (kind, time_us, utc_offset, severity, message, room,"
                " device, booking_id, alarm_id, state, acked, details)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    kind,
                    micros,
                    offset,
                    severity.value,
                    message,
                    room,
                    device,
                    booking_id,
                    alarm_id,
                    state,
                    None if acked is None else int(acked),
                    details_text,
                ),
            )
            event_id = cursor.lastrowid
            assert event_id is not None
            event = LoggedEvent(
                id=event_id,
                kind=kind,
                time=decode_time(micros, offset),
                severity=severity,
                message=message,
                room=room,
                device=device,
                booking_id=booking_id,
                alarm_id=alarm_id,
                state=state,
                acked=acked,
                details=json.loads(details_text),
            )
            assert self._pending is not None
            self._pending.append(event)
        return event

    def listen(self, listener: Listener) -> Unsubscribe:
        """Call ``listener`` with every event recorded from now on."""
        self._listeners = (*self._listeners, listener)

        def unsubscribe() -> None:
            listeners = list(self._listeners)
            if listener in listeners:
                listeners.remove(listener)
                self._listeners = tuple(listeners)
            self._failing.discard(listener)

        return unsubscribe

    def query(
        self,
        *,
        since: datetime | None = None,
        kind: str | None = None,
        room: str | None = None,
        limit: int = 500,
    ) -> list[LoggedEvent]:
        """Events oldest first.

        With ``since``: the first ``limit`` events at or after it (page forward
        by passing the last time seen). Without: the most recent ``limit``.
        ``kind`` may list several kinds separated by commas.
        """
        if limit < 0:
            raise ValueError("limit must not be negative")
        conditions: list[str] = []
        parameters: list[Any] = []
        if since is not None:
            conditions.append("time_us >= ?")
            parameters.append(encode_time(since)[0])
        kinds = split_kinds(kind)
        if kinds:
            conditions.append(f"kind IN ({', '.join('?' * len(kinds))})")
            parameters.extend(kinds)
        if room is not None:
            conditions.append("room = ?")
            parameters.append(room)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        order = "ASC" if since is not None else "DESC"
        rows = self._db.execute(
            f"SELECT * FROM event_log{where} ORDER BY time_us {order}, id {order} LIMIT ?",
            (*parameters, limit),
        ).fetchall()
        events = [_event_from_row(row) for row in rows]
        if since is None:
            events.reverse()
        return events

    def latest_id(self) -> int | None:
        """The id of the newest event still in the log, ``None`` when it is empty."""
        row = self._db.execute("SELECT MAX(id) FROM event_log").fetchone()
        return None if row[0] is None else int(row[0])

    def prune(self) -> int:
        """Delete events older than ``keep``; returns how many went."""
        cutoff, _ = encode_time(self._clock.now() - self._keep)
        with transaction(self._db):
            cursor = self._db.execute("DELETE FROM event_log WHERE time_us < ?", (cutoff,))
        return cursor.rowcount

    def _notify(self, event: LoggedEvent) -> None:
        # As EventBus.publish: a failing listener never stops the others, and
        # only its first failure (until it recovers) carries a traceback.
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                self.listener_errors += 1
                if listener not in self._failing:
                    self._failing.add(listener)
                    self._logger.exception(
                        "event log listener %s failed on %s event %d",
                        _name(listener),
                        event.kind,
                        event.id,
                    )
            else:
                if self._failing and listener in self._failing:
                    self._failing.discard(listener)
                    self._logger.info("event log listener %s recovered", _name(listener))


def _event_from_row(row: sqlite3.Row) -> LoggedEvent:
    acked = row["acked"]
    return LoggedEvent(
        id=row["id"],
        kind=row["kind"],
        time=decode_time(row["time_us"], row["utc_offset"]),
        severity=Severity(row["severity"]),
        message=row["message"],
        room=row["room"],
        device=row["device"],
        booking_id=row["booking_id"],
        alarm_id=row["alarm_id"],
        state=row["state"],
        acked=None if acked is None else bool(acked),
        details=json.loads(row["details"]),
    )


def _name(listener: Callable[..., Any]) -> str:
    return getattr(listener, "__qualname__", repr(listener))
