"""Webhooks to the booking system, from a durable queue in the controller's database.

A rule that records a fact (a booking started, a no-show released a room)
calls :meth:`WebhookQueue.enqueue` in the same transaction, so the fact and
its webhook commit together or not at all, and a restart finds every webhook
not yet delivered. Enqueueing is one SQLite insert: it never waits for the
network.

:meth:`WebhookQueue.run` sends the queue in order, one delivery at a time: the
next one waits until the current one has been accepted (any 2xx), so the
booking system sees a booking's events in the order they happened. Anything
else is retried with capped exponential backoff on the injected clock. The
body is built once, at enqueue time, and stored as bytes: a retry, even after
a restart, sends the same bytes with the same delivery id, which the receiver
can use to drop duplicates (delivery is at least once: a delivery cut off after
the booking system processed it is sent again).

Each request carries ``X-Center-Signature: sha256=<hex HMAC-SHA256 of the body
with the shared secret>``; :func:`verify` checks it on the receiving side.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import sqlite3
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import orjson
from yarl import URL

from controller.clock import Clock
from controller.database import transaction

USER_AGENT = "center-controller"
SIGNATURE_HEADER = "X-Center-Signature"
EVENT_HEADER = "X-Center-Event"
DELIVERY_HEADER = "X-Center-Delivery"

_TABLE = "webhook_deliveries"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_TABLE} (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    body BLOB NOT NULL,
    enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
)
"""


def sign(secret: str, body: bytes) -> str:
    """The ``X-Center-Signature`` value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """Whether ``header`` is the signature of ``body`` with ``secret`` (constant time)."""
    expected = sign(secret, body).encode()
    return hmac.compare_digest(expected, header.encode("utf-8", "replace"))


def ensure_schema(db: sqlite3.Connection) -> None:
    db.execute(_SCHEMA)


@dataclass(frozen=True, slots=True)
class _Delivery:
    id: str
    type: str
    body: bytes


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot serialize {type(value).__name__} in a webhook body")


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class WebhookQueue:
    """The durable queue of webhooks and the sender that empties it.

    ``url`` ``None`` turns webhooks off: :meth:`enqueue` stores nothing and
    :meth:`run` only waits to be cancelled. The counters of :meth:`status`
    (delivered, failed attempts, dropped) count since this object was made;
    ``pending`` is what the database holds.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        clock: Clock,
        *,
        url: str | None,
        secret: str | None,
        site_id: str,
        backoff_min: float = 1.0,
        backoff_max: float = 300.0,
        timeout: float = 10.0,
        max_pending: int = 100_000,
        jitter: float = 0.2,
        logger: logging.Logger | None = None,
    ) -> None:
        if url is not None:
            if not secret:
                raise ValueError("CENTER_WEBHOOK_SECRET is required when CENTER_WEBHOOK_URL is set")
            parsed = URL(url)
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise ValueError("CENTER_WEBHOOK_URL must be an http:// or https:// URL")
            # For logs: no query string (it may carry a token), no credentials.
            self._url_for_logs = str(parsed.with_query(None).with_fragment(None).with_user(None))
        else:
            self._url_for_logs = ""
        if not 0 < backoff_min <= backoff_max:
            raise ValueError("need 0 < backoff_min <= backoff_max")
        if not 0 <= jitter < 1:
            raise ValueError("need 0 <= jitter < 1")
        self._jitter = jitter
        if not timeout > 0:
            raise ValueError("timeout must be greater than 0")
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._db = db
        self._clock = clock
        self._url = url
        self._secret = secret or ""
        self._site_id = site_id
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._timeout = timeout
        self._max_pending = max_pending
        self._logger = logger or logging.getLogger("controller.webhooks")
        self._wake = asyncio.Event()
        self._delivered = 0
        self._failed_attempts = 0
        self._dropped = 0
        self._dropping = False
        self._last_error: str | None = None
        self._outage_since: float | None = None
        self._outage_failures = 0
        with transaction(db):
            ensure_schema(db)
        if url is None:
            left = self._pending()
            if left:
                self._logger.warning(
                    "%d webhook deliveries from an earlier run are kept but not sent: "
                    "CENTER_WEBHOOK_URL is not set",
                    left,
                )

    @property
    def enabled(self) -> bool:
        return self._url is not None

    def enqueue(
        self, event_type: str, data: Mapping[str, Any], *, time: datetime | None = None
    ) -> str | None:
        """Queue one webhook; returns its delivery id, or ``None`` when webhooks are off.

        Only a SQLite insert, inside :func:`~controller.database.transaction`:
        called within a caller's transaction it commits (or rolls back) with it.
        """
        if self._url is None:
            return None
        if not event_type or not event_type.isascii() or not event_type.isprintable():
            raise ValueError(f"webhook event type {event_type!r} must be printable ASCII")
        when = time if time is not None else self._clock.now()
        if when.utcoffset() is None:
            raise ValueError("a webhook's time must be timezone-aware")
        delivery_id = uuid.uuid4().hex
        body = orjson.dumps(
            {
                "id": delivery_id,
                "type": event_type,
                "time": when.isoformat(),
                "site": self._site_id,
                "data": data,
            },
            default=_json_default,
        )
        with transaction(self._db) as db:
            db.execute(
                f"INSERT INTO {_TABLE} (id, type, body, enqueued_at) VALUES (?, ?, ?, ?)",
                (delivery_id, event_type, body, self._clock.now().timestamp()),
            )
            dropped = self._trim(db)
        self._note_drops(dropped)
        self._wake.set()
        return delivery_id

    def _trim(self, db: sqlite3.Connection) -> int:
        """Drop the oldest deliveries beyond ``max_pending``; returns how many.

        Rows only ever leave from the head (delivered or dropped) and join at
        the tail, so their sequence numbers are contiguous and the count is
        one lookup at each end instead of a scan.
        """
        low, high = db.execute(
            f"SELECT (SELECT min(seq) FROM {_TABLE}), (SELECT max(seq) FROM {_TABLE})"
        ).fetchone()
        if high is None or high - low + 1 <= self._max_pending:
            return 0
        cursor = db.execute(f"DELETE FROM {_TABLE} WHERE seq <= ?", (high - self._max_pending,))
        return cursor.rowcount

    def _note_drops(self, dropped: int) -> None:
        if dropped:
            self._dropped += dropped
            if not self._dropping:
                self._dropping = True
                self._logger.warning(
                    "webhook queue full (%d pending): dropping the oldest deliveries",
                    self._max_pending,
                )
            else:
                self._logger.debug("webhook queue still full: dropped %d more", dropped)
        elif self._dropping:
            self._dropping = False
            self._logger.info(
                "webhook queue below its limit again; %d deliveries dropped so far", self._dropped
            )

    async def run(self) -> None:
        """Deliver the queue, in order, until cancelled. Never raises on delivery problems."""
        if self._url is None:
            await asyncio.Event().wait()  # off: nothing to send, ever
            return
        url = self._url
        delay = self._backoff_min
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await self._database_free()
                self._wake.clear()
                try:
                    head = self._head()
                except sqlite3.Error as error:
                    self._logger.error("webhook queue: cannot read the database: %s", error)
                    await self._clock.sleep(
                        delay * random.uniform(1 - self._jitter, 1 + self._jitter)
                    )
                    delay = min(delay * 2, self._backoff_max)
                    continue
                if head is None:
                    await self._wake.wait()
                    continue
                error_text = await self._post(session, url, head)
                await self._database_free()
                try:
                    if error_text is None:
                        self._succeeded(head)
                        delay = self._backoff_min
                        continue
                    self._failed(head, error_text)
                except sqlite3.Error as error:
                    self._logger.error("webhook queue: cannot update the database: %s", error)
                await self._clock.sleep(delay * random.uniform(1 - self._jitter, 1 + self._jitter))
                delay = min(delay * 2, self._backoff_max)

    async def _database_free(self) -> None:
        """Wait while a caller holds a transaction open on the shared connection.

        The sender's statements would otherwise join that transaction (and it
        could see a webhook the caller is about to roll back). Callers do not
        normally hold a transaction across an ``await``, so this rarely loops;
        SQLite signals no commit we could wait on, hence the short poll.
        """
        while self._db.in_transaction:  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.01)

    def _head(self) -> _Delivery | None:
        row = self._db.execute(
            f"SELECT id, type, body FROM {_TABLE} ORDER BY seq LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return _Delivery(str(row[0]), str(row[1]), bytes(row[2]))

    async def _post(
        self, session: aiohttp.ClientSession, url: str, delivery: _Delivery
    ) -> str | None:
        """One attempt: ``None`` when the booking system took it, else what went wrong."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: sign(self._secret, delivery.body),
            EVENT_HEADER: delivery.type,
            DELIVERY_HEADER: delivery.id,
        }
        try:
            async with session.post(
                url, data=delivery.body, headers=headers, allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status} {response.reason or ''}".rstrip()
        except TimeoutError:
            return f"no answer within {self._timeout:g} s"
        except Exception as error:  # any delivery problem: keep the row and retry
            return _describe(error)

    def _succeeded(self, delivery: _Delivery) -> None:
        with transaction(self._db) as db:
            db.execute(f"DELETE FROM {_TABLE} WHERE id = ?", (delivery.id,))
        self._delivered += 1
        self._last_error = None
        if self._outage_since is not None:
            waited = self._pending() + 1
            self._logger.info(
                "webhooks to %s delivered again after %d failed attempts over %.0f s; "
                "%d deliveries had waited",
                self._url_for_logs,
                self._outage_failures,
                self._clock.monotonic() - self._outage_since,
                waited,
            )
            self._outage_since = None
            self._outage_failures = 0

    def _failed(self, delivery: _Delivery, error: str) -> None:
        self._failed_attempts += 1
        self._last_error = error
        self._outage_failures += 1
        if self._outage_since is None:
            self._outage_since = self._clock.monotonic()
            self._logger.warning(
                "webhook delivery to %s failed: %s; retrying every %.1f-%.0f s, in order "
                "(%d pending)",
                self._url_for_logs,
                error,
                self._backoff_min,
                self._backoff_max,
                self._pending(),
            )
        else:
            self._logger.debug("webhook delivery to %s failed again: %s", self._url_for_logs, error)
        with transaction(self._db) as db:
            db.execute(
                f"UPDATE {_TABLE} SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                (error, delivery.id),
            )

    def _pending(self) -> int:
        return int(self._db.execute(f"SELECT count(*) FROM {_TABLE}").fetchone()[0])

    def status(self) -> dict[str, Any]:
        oldest = self._db.execute(
            f"SELECT enqueued_at FROM {_TABLE} ORDER BY seq LIMIT 1"
        ).fetchone()
        return {
            "enabled": self.enabled,
            "pending": self._pending(),
            "delivered": self._delivered,
            "failed_attempts": self._failed_attempts,
            "dropped": self._dropped,
            "last_error": self._last_error,
            "oldest_pending_seconds": (
                max(0.0, self._clock.now().timestamp() - float(oldest[0]))
                if oldest is not None
                else None
            ),
        }
