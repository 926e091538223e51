"""Staff sessions of the status page: a token typed once, then a cookie.

A session stands for one login with one API token. It lives in the
controller's database, so a restart (an upgrade, a power cut) does not send
every screen in the building back to the login page. What is stored:

- the SHA-256 of the session id, never the id itself: whoever reads the
  database file cannot take over a session;
- the SHA-256 of the token it was opened with, so that removing a token from
  ``CENTER_API_TOKENS`` ends its sessions at the next request, and a token's
  scopes shrinking shrinks its sessions' scopes with it;
- a CSRF token the page sends back with every change it asks for.

A session ends after ``idle`` without use (an open page's live stream uses
it, so a screen left on stays logged in) and at the latest ``max_age`` after
the login, or at logout.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from controller.clock import Clock
from controller.database import transaction
from controller.settings import Scope

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id_hash TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    scopes TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created TEXT NOT NULL,
    last_used TEXT NOT NULL,
    expires TEXT NOT NULL
)
"""
# A session's last use is written at most this often: the stream touches it
# every heartbeat, and a write per viewer every 15 s buys nothing.
TOUCH_EVERY = timedelta(minutes=1)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    token_hash: str
    scopes: frozenset[Scope]
    csrf: str
    created: datetime
    last_used: datetime
    expires: datetime  # the hard end (login + max_age)

    @property
    def principal(self) -> str:
        """Who acts, for the event log: the same fingerprint a bearer token gets."""
        return f"token:{self.token_hash[:8]}"


class SessionStore:
    def __init__(
        self,
        db: sqlite3.Connection,
        clock: Clock,
        *,
        idle: timedelta = timedelta(hours=12),
        max_age: timedelta = timedelta(days=7),
    ) -> None:
        self._db = db
        self._clock = clock
        self.idle = idle
        self.max_age = max_age
        with transaction(db):
            db.execute(_SCHEMA)

    def open(self, token: str, scopes: Iterable[Scope]) -> tuple[str, Session]:
        """A new session for ``token``: its id (for the cookie, shown only here) and itself."""
        session_id = secrets.token_urlsafe(32)
        now = self._clock.now()
        session = Session(
            token_hash=token_hash(token),
            scopes=frozenset(scopes),
            csrf=secrets.token_urlsafe(24),
            created=now,
            last_used=now,
            expires=now + self.max_age,
        )
        with transaction(self._db):
            self._sweep(now)
            self._db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    _id_hash(session_id),
                    session.token_hash,
                    ",".join(sorted(scope.value for scope in session.scopes)),
                    session.csrf,
                    now.isoformat(),
                    now.isoformat(),
                    session.expires.isoformat(),
                ),
            )
        return session_id, session

    def get(self, session_id: str) -> Session | None:
        """The live session with this id, used now; None when unknown, idle or expired."""
        row = self._db.execute(
            "SELECT * FROM sessions WHERE id_hash = ?", (_id_hash(session_id),)
        ).fetchone()
        if row is None:
            return None
        session = Session(
            token_hash=row["token_hash"],
            scopes=frozenset(Scope(value) for value in row["scopes"].split(",") if value),
            csrf=row["csrf"],
            created=datetime.fromisoformat(row["created"]),
            last_used=datetime.fromisoformat(row["last_used"]),
            expires=datetime.fromisoformat(row["expires"]),
        )
        now = self._clock.now()
        if now >= session.expires or now >= session.last_used + self.idle:
            self.close(session_id)
            return None
        if now - session.last_used >= TOUCH_EVERY:
            with transaction(self._db):
                self._db.execute(
                    "UPDATE sessions SET last_used = ? WHERE id_hash = ?",
                    (now.isoformat(), _id_hash(session_id)),
                )
        return session

    def close(self, session_id: str) -> None:
        with transaction(self._db):
            self._db.execute("DELETE FROM sessions WHERE id_hash = ?", (_id_hash(session_id),))

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0])

    def _sweep(self, now: datetime) -> None:
        """Forget sessions past their end; done at each login, so the table stays small."""
        for row in self._db.execute("SELECT id_hash, last_used, expires FROM sessions").fetchall():
            idle_end = datetime.fromisoformat(row["last_used"]) + self.idle
            if now >= datetime.fromisoformat(row["expires"]) or now >= idle_end:
                self._db.execute("DELETE FROM sessions WHERE id_hash = ?", (row["id_hash"],))


def _id_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()
