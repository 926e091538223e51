"""Deposits and the kiosk throttle, durable in SQLite.

A deposit is written *before* its compartment is pulsed open (as ``pending``),
so a controller killed halfway still knows a compartment was being filled;
its code's salted hash is written in the same row and set to NULL the moment
the code dies (collected, failed, expired, cleared), so the database holds
hashes only of codes that still open something.

The deposits that still occupy a compartment (pending, holding, expired) and
every kiosk's throttle are also kept in memory: the web handlers and the
per-reading checks read them without a query. Times are stored as RFC 3339
text, which gives them back with the offset they were told in; the one time
that is searched by range (when a deposit ended) is also stored as epoch
microseconds, which compare correctly across offsets.
"""

from __future__ import annotations

import enum
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from controller.database import transaction
from controller.event_log import encode_time
from rules.cabinet import KioskThrottle

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS cabinet_deposits (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        cabinet TEXT NOT NULL,
        compartment INTEGER NOT NULL,
        state TEXT NOT NULL,
        recipient TEXT NOT NULL,
        reference TEXT NOT NULL,
        hold_hours INTEGER NOT NULL,
        code_hash TEXT,
        created TEXT NOT NULL,
        deposited TEXT,
        expires TEXT,
        ended TEXT,
        ended_us INTEGER,
        outcome TEXT,
        created_by TEXT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS cabinet_deposits_state ON cabinet_deposits (state, cabinet)",
    "CREATE INDEX IF NOT EXISTS cabinet_deposits_ended ON cabinet_deposits (cabinet, ended_us)",
    # The database itself keeps one occupying deposit per compartment.
    "CREATE UNIQUE INDEX IF NOT EXISTS cabinet_deposits_occupying"
    " ON cabinet_deposits (cabinet, compartment)"
    " WHERE state IN ('pending', 'holding', 'expired')",
    """
    CREATE TABLE IF NOT EXISTS cabinet_kiosk_throttle (
        identity TEXT PRIMARY KEY,
        failures TEXT NOT NULL,
        locked_until TEXT
    )
    """,
)


class DepositState(enum.StrEnum):
    PENDING = "pending"  # the compartment was pulsed for staff; not finished yet
    HOLDING = "holding"  # inside, collectable with its code
    COLLECTED = "collected"
    FAILED = "failed"  # never held: closed empty, timed out, unlock failed, restart
    EXPIRED = "expired"  # not collected by its expiry: code dead, item still inside
    CLEARED = "cleared"  # taken back by staff: code dead

    @property
    def occupying(self) -> bool:
        """Whether a deposit in this state still claims its compartment."""
        return self in (DepositState.PENDING, DepositState.HOLDING, DepositState.EXPIRED)


@dataclass(frozen=True, slots=True)
class Deposit:
    id: int
    cabinet: str
    compartment: int
    state: DepositState
    recipient: str
    reference: str
    hold_hours: int
    created: datetime
    created_by: str
    code_hash: str | None = None
    deposited: datetime | None = None
    expires: datetime | None = None
    ended: datetime | None = None
    outcome: str | None = None  # why it ended: a visit outcome, "restart", "cleared"

    @property
    def label(self) -> str:
        return str(self.compartment + 1)

    def collectable(self, now: datetime) -> bool:
        return (
            self.state is DepositState.HOLDING
            and self.code_hash is not None
            and self.expires is not None
            and now < self.expires
        )


class CabinetStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        with transaction(db):
            for statement in _SCHEMA:
                db.execute(statement)
        self._occupying: dict[int, Deposit] = {
            deposit.id: deposit
            for deposit in (
                _deposit(row)
                for row in db.execute(
                    "SELECT * FROM cabinet_deposits"
                    " WHERE state IN ('pending', 'holding', 'expired') ORDER BY id"
                )
            )
        }
        self._throttles: dict[str, KioskThrottle] = {
            row["identity"]: KioskThrottle(
                tuple(datetime.fromisoformat(moment) for moment in json.loads(row["failures"])),
                _time(row["locked_until"]),
            )
            for row in db.execute("SELECT * FROM cabinet_kiosk_throttle")
        }

    # -- deposits ---------------------------------------------------------------

    def occupying(self, cabinet: str | None = None) -> list[Deposit]:
        """Deposits that claim a compartment (pending, holding, expired), oldest first."""
        return [
            deposit
            for deposit in self._occupying.values()
            if cabinet is None or deposit.cabinet == cabinet
        ]

    def in_compartment(self, cabinet: str, compartment: int) -> Deposit | None:
        for deposit in self._occupying.values():
            if deposit.cabinet == cabinet and deposit.compartment == compartment:
                return deposit
        return None

    def get(self, deposit_id: int) -> Deposit | None:
        found = self._occupying.get(deposit_id)
        if found is not None:
            return found
        row = self._db.execute(
            "SELECT * FROM cabinet_deposits WHERE id = ?", (deposit_id,)
        ).fetchone()
        return None if row is None else _deposit(row)

    def create_pending(
        self,
        *,
        cabinet: str,
        compartment: int,
        recipient: str,
        reference: str,
        hold_hours: int,
        code_hash: str,
        created_by: str,
        now: datetime,
    ) -> Deposit:
        with transaction(self._db):
            cursor = self._db.execute(
                "INSERT INTO cabinet_deposits (cabinet, compartment, state, recipient, reference,"
                " hold_hours, code_hash, created, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    cabinet,
                    compartment,
                    DepositState.PENDING.value,
                    recipient,
                    reference,
                    hold_hours,
                    code_hash,
                    now.isoformat(),
                    created_by,
                ),
            )
        deposit_id = cursor.lastrowid
        assert deposit_id is not None
        deposit = Deposit(
            id=deposit_id,
            cabinet=cabinet,
            compartment=compartment,
            state=DepositState.PENDING,
            recipient=recipient,
            reference=reference,
            hold_hours=hold_hours,
            created=now,
            created_by=created_by,
            code_hash=code_hash,
        )
        self._occupying[deposit_id] = deposit
        return deposit

    def hold(self, deposit: Deposit, now: datetime) -> Deposit:
        """The item is inside: collectable until ``now + hold_hours``."""
        expires = now + timedelta(hours=deposit.hold_hours)
        with transaction(self._db):
            self._db.execute(
                "UPDATE cabinet_deposits SET state = ?, deposited = ?, expires = ? WHERE id = ?",
                (DepositState.HOLDING.value, now.isoformat(), expires.isoformat(), deposit.id),
            )
        updated = replace(deposit, state=DepositState.HOLDING, deposited=now, expires=expires)
        self._occupying[deposit.id] = updated
        return updated

    def expire(self, deposit: Deposit) -> Deposit:
        """Past its expiry uncollected: the code dies, the item stays until staff clear it."""
        with transaction(self._db):
            self._db.execute(
                "UPDATE cabinet_deposits SET state = ?, code_hash = NULL WHERE id = ?",
                (DepositState.EXPIRED.value, deposit.id),
            )
        updated = replace(deposit, state=DepositState.EXPIRED, code_hash=None)
        self._occupying[deposit.id] = updated
        return updated

    def end(self, deposit: Deposit, state: DepositState, now: datetime, outcome: str) -> Deposit:
        """Collected, failed or cleared: the code dies and the compartment is released."""
        if state.occupying:
            raise ValueError(f"{state.value} does not end a deposit")
        micros, _ = encode_time(now)
        with transaction(self._db):
            self._db.execute(
                "UPDATE cabinet_deposits SET state = ?, code_hash = NULL, ended = ?,"
                " ended_us = ?, outcome = ? WHERE id = ?",
                (state.value, now.isoformat(), micros, outcome, deposit.id),
            )
        self._occupying.pop(deposit.id, None)
        return replace(deposit, state=state, code_hash=None, ended=now, outcome=outcome)

    def collected_since(self, cabinet: str, since: datetime) -> int:
        micros, _ = encode_time(since)
        row = self._db.execute(
            "SELECT COUNT(*) FROM cabinet_deposits"
            " WHERE cabinet = ? AND state = 'collected' AND ended_us >= ?",
            (cabinet, micros),
        ).fetchone()
        return int(row[0])

    def prune(self, before: datetime) -> int:
        """Forget deposits that ended before ``before``; returns how many went."""
        micros, _ = encode_time(before)
        with transaction(self._db):
            cursor = self._db.execute(
                "DELETE FROM cabinet_deposits WHERE ended_us IS NOT NULL AND ended_us < ?",
                (micros,),
            )
        return cursor.rowcount

    # -- the kiosk throttle ---------------------------------------------------------

    def throttle(self, identity: str) -> KioskThrottle:
        return self._throttles.get(identity, KioskThrottle())

    def throttles(self) -> dict[str, KioskThrottle]:
        return dict(self._throttles)

    def set_throttle(self, identity: str, throttle: KioskThrottle) -> None:
        """Store (or, when it holds nothing any more, forget) one identity's throttle."""
        if throttle == self._throttles.get(identity, KioskThrottle()):
            return
        with transaction(self._db):
            if throttle.empty:
                self._db.execute(
                    "DELETE FROM cabinet_kiosk_throttle WHERE identity = ?", (identity,)
                )
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO cabinet_kiosk_throttle VALUES (?, ?, ?)",
                    (
                        identity,
                        json.dumps([moment.isoformat() for moment in throttle.failures]),
                        throttle.locked_until.isoformat() if throttle.locked_until else None,
                    ),
                )
        if throttle.empty:
            self._throttles.pop(identity, None)
        else:
            self._throttles[identity] = throttle


def collectable_hashes(deposits: Iterable[Deposit], now: datetime) -> list[tuple[int, str]]:
    """``(deposit id, code hash)`` of the deposits a code may open now."""
    return [
        (deposit.id, deposit.code_hash)
        for deposit in deposits
        if deposit.collectable(now) and deposit.code_hash is not None
    ]


def _deposit(row: sqlite3.Row) -> Deposit:
    return Deposit(
        id=row["id"],
        cabinet=row["cabinet"],
        compartment=row["compartment"],
        state=DepositState(row["state"]),
        recipient=row["recipient"],
        reference=row["reference"],
        hold_hours=row["hold_hours"],
        created=datetime.fromisoformat(row["created"]),
        created_by=row["created_by"],
        code_hash=row["code_hash"],
        deposited=_time(row["deposited"]),
        expires=_time(row["expires"]),
        ended=_time(row["ended"]),
        outcome=row["outcome"],
    )


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
