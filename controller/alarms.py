"""Alarms: what is wrong now, and what staff have not yet seen.

An alarm is *active* while its cause lasts and *cleared* after; separately it
is *unacknowledged* until a person acks it. It stays *open* (on the staff's
list) while active or unacknowledged, so a lock that jammed at 03:00 and freed
itself at 03:05 is still shown in the morning.

There is at most one open alarm per ``(source, kind)``: a device that reports
the same fault every second updates one alarm (its ``count`` grows) instead of
flooding the list and the log; a fault that comes back before anyone acked it
reopens the same alarm. A partial unique index makes the database itself hold
this rule.

Every change is written together with its event in the :class:`EventLog`, in
one transaction, so the alarm list and the log never disagree after a crash.
Times are stored as in the event log (epoch microseconds and UTC offset).
"""

from __future__ import annotations

import enum
import json
import sqlite3
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controller.clock import Clock
from controller.event_log import (
    EventLog,
    Severity,
    decode_time,
    encode_details,
    encode_time,
    split_kinds,
)

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS alarms (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        source TEXT NOT NULL,
        severity TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('active', 'cleared')),
        acked INTEGER NOT NULL DEFAULT 0,
        message TEXT NOT NULL,
        room TEXT,
        device TEXT,
        booking_id TEXT,
        raised_us INTEGER NOT NULL,
        raised_offset INTEGER NOT NULL,
        updated_us INTEGER NOT NULL,
        updated_offset INTEGER NOT NULL,
        cleared_us INTEGER,
        cleared_offset INTEGER,
        acked_us INTEGER,
        acked_offset INTEGER,
        acked_by TEXT,
        count INTEGER NOT NULL DEFAULT 1,
        details TEXT NOT NULL DEFAULT '{}'
    )
    """,
    # The rule "one open alarm per (source, kind)", kept by the database.
    "CREATE UNIQUE INDEX IF NOT EXISTS alarms_open ON alarms (source, kind)"
    " WHERE state = 'active' OR acked = 0",
    "CREATE INDEX IF NOT EXISTS alarms_state ON alarms (state, acked)",
)

_OPEN = "(state = 'active' OR acked = 0)"


class AlarmState(enum.StrEnum):
    ACTIVE = "active"
    CLEARED = "cleared"


@dataclass(frozen=True, slots=True)
class Alarm:
    id: int
    kind: str
    source: str
    severity: Severity
    state: AlarmState
    acked: bool
    message: str
    room: str | None
    device: str | None
    booking_id: str | None
    raised: datetime  # first raised
    updated: datetime  # last change or repeat
    cleared: datetime | None
    acked_at: datetime | None
    acked_by: str | None
    count: int  # how many times raised, repeats included
    details: Mapping[str, Any]

    @property
    def open(self) -> bool:
        """Still needs attention: active, or cleared but nobody has acknowledged it."""
        return self.state is AlarmState.ACTIVE or not self.acked

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "source": self.source,
            "severity": self.severity.value,
            "state": self.state.value,
            "acked": self.acked,
            "open": self.open,
            "message": self.message,
            "room": self.room,
            "device": self.device,
            "booking_id": self.booking_id,
            "raised": self.raised.isoformat(),
            "updated": self.updated.isoformat(),
            "cleared": None if self.cleared is None else self.cleared.isoformat(),
            "acked_at": None if self.acked_at is None else self.acked_at.isoformat(),
            "acked_by": self.acked_by,
            "count": self.count,
            "details": dict(self.details),
        }


class AlarmBook:
    def __init__(self, db: sqlite3.Connection, events: EventLog, clock: Clock) -> None:
        if events.db is not db:
            # An alarm change and its event must commit together: one connection.
            raise ValueError("the alarm book and its event log must share one connection")
        self._db = db
        self._events = events
        self._clock = clock
        with events.transaction():
            for statement in _SCHEMA:
                db.execute(statement)

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One commit for an alarm change and whatever goes with it (a webhook):
        the event log's transaction, so listeners hear of it only once it is in."""
        return self._events.transaction()

    def raise_alarm(
        self,
        kind: str,
        source: str,
        message: str,
        *,
        severity: Severity = Severity.ALARM,
        room: str | None = None,
        device: str | None = None,
        booking_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> Alarm:
        """Raise (or repeat) the alarm ``kind`` of ``source``.

        A repeat of an active alarm only updates it (message, severity,
        details, time, count) and logs nothing. An alarm cleared but not yet
        acknowledged is reopened. Otherwise a new alarm starts. ``room``,
        ``device`` and ``booking_id`` replace the stored ones when given.
        """
        severity = Severity(severity)
        details_text = encode_details(details)
        now, now_offset = encode_time(self._clock.now())
        with self._events.transaction():
            current = self._open(kind, source)
            if current is None:
                cursor = self._db.execute(
                    "INSERT INTO alarms (kind, source, severity, state, acked, message, room,"
                    " device, booking_id, raised_us, raised_offset, updated_us, updated_offset,"
                    " count, details) VALUES (?, ?, ?, 'active', 0, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
                    (
                        kind,
                        source,
                        severity.value,
                        message,
                        room,
                        device,
                        booking_id,
                        now,
                        now_offset,
                        now,
                        now_offset,
                        details_text,
                    ),
                )
                alarm_id = cursor.lastrowid
                assert alarm_id is not None
            else:
                alarm_id = current.id
                self._db.execute(
                    "UPDATE alarms SET severity = ?, state = 'active', message = ?,"
                    " room = COALESCE(?, room), device = COALESCE(?, device),"
                    " booking_id = COALESCE(?, booking_id), updated_us = ?, updated_offset = ?,"
                    " cleared_us = NULL, cleared_offset = NULL, count = count + 1, details = ?"
                    " WHERE id = ?",
                    (
                        severity.value,
                        message,
                        room,
                        device,
                        booking_id,
                        now,
                        now_offset,
                        details_text,
                        alarm_id,
                    ),
                )
            alarm = self._require(alarm_id)
            if current is None or current.state is AlarmState.CLEARED:
                self._record(alarm, alarm.message, alarm.severity)
        return alarm

    def clear(
        self,
        kind: str,
        source: str,
        message: str | None = None,
        *,
        event_kind: str | None = None,
    ) -> Alarm | None:
        """End the active alarm ``kind`` of ``source``; ``None`` when none is active.

        ``message`` (say, "device back online") goes into the logged event;
        the alarm keeps the message that says what went wrong. ``event_kind``
        names the clearing event when the contract gives it its own kind
        (``device_offline`` is cleared by ``device_online``); by default it is
        the alarm's kind.
        """
        now, now_offset = encode_time(self._clock.now())
        with self._events.transaction():
            current = self._open(kind, source)
            if current is None or current.state is not AlarmState.ACTIVE:
                return None
            self._db.execute(
                "UPDATE alarms SET state = 'cleared', cleared_us = ?, cleared_offset = ?,"
                " updated_us = ?, updated_offset = ? WHERE id = ?",
                (now, now_offset, now, now_offset, current.id),
            )
            alarm = self._require(current.id)
            self._record(
                alarm, message or f"cleared: {alarm.message}", Severity.INFO, kind=event_kind
            )
        return alarm

    def ack(self, alarm_id: int, by: str | None = None) -> Alarm:
        """Acknowledge an alarm (once; acking again changes nothing).

        Raises :class:`KeyError` for an unknown id. An active alarm stays open
        until it also clears.
        """
        now, now_offset = encode_time(self._clock.now())
        with self._events.transaction():
            current = self.get(alarm_id)
            if current is None:
                raise KeyError(alarm_id)
            if current.acked:
                return current
            self._db.execute(
                "UPDATE alarms SET acked = 1, acked_us = ?, acked_offset = ?, acked_by = ?,"
                " updated_us = ?, updated_offset = ? WHERE id = ?",
                (now, now_offset, by, now, now_offset, alarm_id),
            )
            alarm = self._require(alarm_id)
            who = f" by {by}" if by else ""
            self._record(
                alarm,
                f"acknowledged{who}: {alarm.message}",
                alarm.severity,
                details={} if by is None else {"by": by},
            )
        return alarm

    def get(self, alarm_id: int) -> Alarm | None:
        row = self._db.execute("SELECT * FROM alarms WHERE id = ?", (alarm_id,)).fetchone()
        return None if row is None else _alarm_from_row(row)

    def is_active(self, kind: str, source: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM alarms WHERE source = ? AND kind = ? AND state = 'active'",
            (source, kind),
        ).fetchone()
        return row is not None

    def query(
        self,
        *,
        state: AlarmState | None = None,
        acked: bool | None = None,
        kind: str | None = None,
        open_only: bool = False,
        limit: int = 500,
    ) -> list[Alarm]:
        """Alarms newest first (by when they were first raised).

        ``kind`` may list several kinds separated by commas; ``open_only``
        keeps those active or not yet acknowledged.
        """
        if limit < 0:
            raise ValueError("limit must not be negative")
        conditions: list[str] = []
        parameters: list[Any] = []
        if state is not None:
            conditions.append("state = ?")
            parameters.append(AlarmState(state).value)
        if acked is not None:
            conditions.append("acked = ?")
            parameters.append(int(acked))
        kinds = split_kinds(kind)
        if kinds:
            conditions.append(f"kind IN ({', '.join('?' * len(kinds))})")
            parameters.extend(kinds)
        if open_only:
            conditions.append(_OPEN)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = self._db.execute(
            f"SELECT * FROM alarms{where} ORDER BY id DESC LIMIT ?", (*parameters, limit)
        ).fetchall()
        return [_alarm_from_row(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """For ``/api/health``: active alarms, unacknowledged ones, active critical ones."""
        row = self._db.execute(
            "SELECT"
            " COUNT(*) FILTER (WHERE state = 'active'),"
            " COUNT(*) FILTER (WHERE acked = 0),"
            " COUNT(*) FILTER (WHERE state = 'active' AND severity = ?)"
            f" FROM alarms WHERE {_OPEN}",
            (Severity.CRITICAL.value,),
        ).fetchone()
        return {"active": row[0], "unacknowledged": row[1], "active_critical": row[2]}

    def _open(self, kind: str, source: str) -> Alarm | None:
        row = self._db.execute(
            f"SELECT * FROM alarms WHERE source = ? AND kind = ? AND {_OPEN}", (source, kind)
        ).fetchone()
        return None if row is None else _alarm_from_row(row)

    def _require(self, alarm_id: int) -> Alarm:
        alarm = self.get(alarm_id)
        assert alarm is not None, f"alarm {alarm_id} vanished inside its own transaction"
        return alarm

    def _record(
        self,
        alarm: Alarm,
        message: str,
        severity: Severity,
        *,
        details: Mapping[str, Any] | None = None,
        kind: str | None = None,
    ) -> None:
        self._events.record(
            kind or alarm.kind,
            message,
            severity=severity,
            room=alarm.room,
            device=alarm.device,
            booking_id=alarm.booking_id,
            alarm_id=alarm.id,
            state=alarm.state.value,
            acked=alarm.acked,
            details=alarm.details if details is None else details,
            time=alarm.updated,
        )


def _alarm_from_row(row: sqlite3.Row) -> Alarm:
    return Alarm(
        id=row["id"],
        kind=row["kind"],
        source=row["source"],
        severity=Severity(row["severity"]),
        state=AlarmState(row["state"]),
        acked=bool(row["acked"]),
        message=row["message"],
        room=row["room"],
        device=row["device"],
        booking_id=row["booking_id"],
        raised=decode_time(row["raised_us"], row["raised_offset"]),
        updated=decode_time(row["updated_us"], row["updated_offset"]),
        cleared=_optional_time(row["cleared_us"], row["cleared_offset"]),
        acked_at=_optional_time(row["acked_us"], row["acked_offset"]),
        acked_by=row["acked_by"],
        count=row["count"],
        details=json.loads(row["details"]),
    )


def _optional_time(micros: int | None, offset: int | None) -> datetime | None:
    if micros is None or offset is None:
        return None
    return decode_time(micros, offset)
