"""Staff overrides and the fire latch, durable in SQLite.

Both are written before any lock is commanded because of them, so after a
``kill -9`` the controller still knows that a door was unlocked by staff
until 14:30, or that the building is in a fire alarm until somebody resets it.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from controller.database import transaction
from rules.access import LockIntent, StaffOverride
from rules.fire import FireLatch


class AccessStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        db.execute(
            """CREATE TABLE IF NOT EXISTS staff_overrides (
                room TEXT PRIMARY KEY,
                intent TEXT NOT NULL,
                at TEXT NOT NULL,
                until TEXT,
                reason TEXT NOT NULL DEFAULT '',
                by TEXT NOT NULL DEFAULT ''
            )"""
        )
        db.execute(
            """CREATE TABLE IF NOT EXISTS fire_latch (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                latched_at TEXT,
                reset_at TEXT,
                reset_by TEXT
            )"""
        )
        self._overrides = {
            row["room"]: StaffOverride(
                room=row["room"],
                intent=LockIntent(row["intent"]),
                at=datetime.fromisoformat(row["at"]),
                until=datetime.fromisoformat(row["until"]) if row["until"] else None,
                reason=row["reason"],
                by=row["by"],
            )
            for row in db.execute("SELECT * FROM staff_overrides")
        }
        row = db.execute("SELECT * FROM fire_latch WHERE id = 1").fetchone()
        self._latch = (
            FireLatch(
                latched_at=_time(row["latched_at"]),
                reset_at=_time(row["reset_at"]),
                reset_by=row["reset_by"],
            )
            if row is not None
            else FireLatch()
        )

    def override(self, room: str) -> StaffOverride | None:
        return self._overrides.get(room)

    def set_override(self, override: StaffOverride) -> None:
        with transaction(self._db):
            self._db.execute(
                "INSERT OR REPLACE INTO staff_overrides VALUES (?, ?, ?, ?, ?, ?)",
                (
                    override.room,
                    override.intent.value,
                    override.at.isoformat(),
                    override.until.isoformat() if override.until else None,
                    override.reason,
                    override.by,
                ),
            )
        self._overrides[override.room] = override

    @property
    def latch(self) -> FireLatch:
        return self._latch

    def set_latch(self, latch: FireLatch) -> None:
        with transaction(self._db):
            self._db.execute(
                "INSERT OR REPLACE INTO fire_latch VALUES (1, ?, ?, ?)",
                (
                    latch.latched_at.isoformat() if latch.latched_at else None,
                    latch.reset_at.isoformat() if latch.reset_at else None,
                    latch.reset_by,
                ),
            )
        self._latch = latch


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
