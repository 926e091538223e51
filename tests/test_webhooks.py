"""The webhook queue against a real HTTP receiver on a loopback port.

Deliveries are real POSTs to an aiohttp server; the queue lives in a real
SQLite file under ``tmp_path``; backoff runs on a VirtualClock the tests
advance. Nothing sleeps: waits poll a condition against a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from controller.clock import VirtualClock
from controller.database import open_database, transaction
from controller.webhooks import WebhookQueue, sign, verify
from tests.conftest import free_port, wait_until

START = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
SECRET = "s3cret-shared-with-the-booking-system"
QUERY_TOKEN = "token-in-the-query"
LOGGER = "controller.webhooks"


@dataclass
class Received:
    headers: CIMultiDict[str]
    body: bytes
    answered: int

    @property
    def id(self) -> str:
        return self.headers["X-Center-Delivery"]

    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.body)
        return parsed


class Receiver:
    """The booking system's end: records every request, answers ``answer``,
    and holds requests without answering while ``hold`` is set."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.answer = 200
        self.hold: asyncio.Event | None = None
        self.requests: list[Received] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks?token={QUERY_TOKEN}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        runner = web.AppRunner(app, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(runner.addresses[0][1])
        self._runner = runner

    async def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.hold is not None:
            self.requests.append(Received(request.headers.copy(), body, 0))
            await self.hold.wait()
            return web.Response(status=200)
        self.requests.append(Received(request.headers.copy(), body, self.answer))
        return web.Response(status=self.answer)

    def delivered(self) -> list[Received]:
        return [request for request in self.requests if 200 <= request.answered < 300]

    def delivered_ids(self) -> list[str]:
        return [request.id for request in self.delivered()]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    instance = Receiver()
    await instance.start()
    yield instance
    await instance.stop()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = open_database(tmp_path)
    yield connection
    connection.close()


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(START)


def make_queue(
    db: sqlite3.Connection, clock: VirtualClock, url: str | None, **options: Any
) -> WebhookQueue:
    return WebhookQueue(db, clock, url=url, secret=SECRET, site_id="changbai", **options)


@contextlib.asynccontextmanager
async def running(queue: WebhookQueue) -> AsyncIterator[asyncio.Task[None]]:
    """Run the sender for the block; on exit cancel it and check it ended cleanly."""
    task = asyncio.create_task(queue.run(), name="webhooks")
    try:
        yield task
    finally:
        task.cancel()
        (outcome,) = await asyncio.gather(task, return_exceptions=True)
        assert isinstance(outcome, asyncio.CancelledError), outcome


def rows(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT count(*) FROM webhook_deliveries").fetchone()[0])


async def backing_off(queue: WebhookQueue, clock: VirtualClock, failures: int) -> None:
    """Wait until the sender has failed ``failures`` times and sleeps on the clock."""
    await wait_until(
        lambda: queue.status()["failed_attempts"] == failures and clock.pending == 1,
        message=f"failure {failures} and a backoff sleep",
    )


async def requests_reach(receiver: Receiver, count: int) -> None:
    await wait_until(lambda: len(receiver.requests) == count, message=f"request {count}")


async def delivered(queue: WebhookQueue, receiver: Receiver, count: int) -> None:
    """Wait until ``count`` deliveries were accepted and the queue has taken note."""
    await wait_until(
        lambda: len(receiver.delivered()) == count and queue.status()["delivered"] == count,
        message=f"{count} deliveries",
    )


def webhook_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == LOGGER]


# --- signature ---------------------------------------------------------------------


def test_sign_and_verify() -> None:
    body = b'{"id":"x","type":"booking.started"}'
    signature = sign(SECRET, body)

    assert re.fullmatch(r"sha256=[0-9a-f]{64}", signature)
    assert verify(SECRET, body, signature)
    assert not verify("another secret", body, signature)
    assert not verify(SECRET, body + b" ", signature)
    assert not verify(SECRET, body, signature.upper())
    assert not verify(SECRET, body, "")
    assert not verify(SECRET, body, "sha256=é")


# --- what the booking system receives ----------------------------------------------------


async def test_request_is_signed_and_carries_the_event(
    receiver: Receiver, db: sqlite3.Connection, clock: VirtualClock
) -> None:
    queue = make_queue(db, clock, receiver.url)
    async with running(queue):
        delivery = queue.enqueue("booking.started", {"booking_id": "b1", "room": "love"})
        shanghai = datetime(2026, 11, 23, 17, 30, tzinfo=timezone(timedelta(hours=8)))
        second = queue.enqueue("booking.no_show", {"booking_id": "b2"}, time=shanghai)
        await delivered(queue, receiver, 2)

    assert delivery is not None
    assert second is not None
    assert uuid.UUID(hex=delivery).version == 4
    first, other = receiver.requests
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["User-Agent"] == "center-controller"
    assert first.headers["X-Center-Event"] == "booking.started"
    assert first.headers["X-Center-Delivery"] == delivery
    assert verify(SECRET, first.body, first.headers["X-Center-Signature"])
    assert not verify("not the secret", first.body, first.headers["X-Center-Signature"])
    assert first.json() == {
        "id": delivery,
        "type": "booking.started",
        "time": "2026-11-23T09:00:00+00:00",
        "site": "changbai",
        "data": {"booking_id": "b1", "room": "love"},
    }
    assert other.json()["time"] == "2026-11-23T17:30:00+08:00"
    assert other.headers["X-Center-Event"] == "booking.no_show"
    assert other.id == second
    assert queue.status() == {
        "enabled": True,
        "pending": 0,
        "delivered": 2,
        "failed_attempts": 0,
        "dropped": 0,
        "last_error": None,
        "oldest_pending_seconds": None,
    }


async def test_deliveries_arrive_in_the_order_they_were_queued(
    receiver: Receiver, db: sqlite3.Connection, clock: VirtualClock
) -> None:
    queue = make_queue(db, clock, receiver.url)
    queued = [queue.enqueue("booking.started", {"n": n}) for n in range(10)]
    async with running(queue):
        await wait_until(lambda: len(receiver.delivered()) >= 1, message="the first delivery")
        queued += [queue.enqueue("booking.ended", {"n": n}) for n in range(10, 20)]
        await delivered(queue, receiver, 20)

    assert receiver.delivered_ids() == queued
    assert [request.json()["data"]["n"] for request in receiver.requests] == list(range(20))
    assert len(receiver.requests) == 20
    assert rows(db) == 0


async def test_failure_then_recovery_delivers_each_once_in_order(
    receiver: Receiver,
    db: sqlite3.Connection,
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    receiver.answer = 500
    queue = make_queue(db, clock, receiver.url, backoff_min=1.0, backoff_max=60.0)
    async with running(queue):
        a, b, c = (queue.enqueue("booking.checked_in", {"booking_id": f"b{n}"}) for n in range(3))
        await backing_off(queue, clock, 1)
        # Head of line: b and c wait behind a.
        assert [request.id for request in receiver.requests] == [a]
        assert queue.status()["pending"] == 3
        assert queue.status()["last_error"] == "HTTP 500 Internal Server Error"

        await clock.advance(1.2)
        await backing_off(queue, clock, 2)
        assert [request.id for request in receiver.requests] == [a, a]

        receiver.answer = 200
        await clock.advance(2.4)
        await delivered(queue, receiver, 3)

    assert receiver.delivered_ids() == [a, b, c]
    assert [request.id for request in receiver.requests] == [a, a, a, b, c]
    assert len({request.body for request in receiver.requests[:3]}) == 1  # same bytes
    assert len({request.headers["X-Center-Signature"] for request in receiver.requests[:3]}) == 1
    status = queue.status()
    assert status["delivered"] == 3
    assert status["failed_attempts"] == 2
    assert status["pending"] == 0
    assert status["last_error"] is None

    records = webhook_logs(caplog)
    warnings = [record for record in records if record.levelno == logging.WARNING]
    infos = [record for record in records if record.levelno == logging.INFO]
    debugs = [record for record in records if record.levelno == logging.DEBUG]
    assert len(warnings) == 1
    assert "HTTP 500" in warnings[0].getMessage()
    assert f"127.0.0.1:{receiver.port}/hooks" in warnings[0].getMessage()
    assert len(debugs) == 1
    assert len(infos) == 1
    assert "3 deliveries had waited" in infos[0].getMessage()
    for record in records:
        text = record.getMessage()
        assert SECRET not in text
        assert QUERY_TOKEN not in text
        assert "booking_id" not in text


async def test_backoff_grows_is_capped_and_not_shortened_by_enqueue(
    receiver: Receiver, db: sqlite3.Connection, clock: VirtualClock
) -> None:
    receiver.answer = 500
    # Without jitter every retry is due at an exact moment of the virtual clock.
    queue = make_queue(db, clock, receiver.url, backoff_min=1.0, backoff_max=8.0, jitter=0.0)
    async with running(queue):
        queue.enqueue("booking.started", {"booking_id": "b1"})
        await backing_off(queue, clock, 1)

        # A new event during an outage does not cut the backoff short.
        queue.enqueue("booking.ended", {"booking_id": "b1"})
        await clock.advance(0)
        assert clock.pending == 1
        assert len(receiver.requests) == 1

        for failures, pause in enumerate([1, 2, 4, 8, 8, 8], start=1):
            await backing_off(queue, clock, failures)
            await clock.advance(pause - 0.01)
            assert len(receiver.requests) == failures, f"retry {failures} came before its backoff"
            await clock.advance(0.01)
            await requests_reach(receiver, failures + 1)

    assert len({request.id for request in receiver.requests}) == 1
    assert queue.status()["pending"] == 2


async def test_timeout_is_a_failed_attempt(
    receiver: Receiver, db: sqlite3.Connection, clock: VirtualClock
) -> None:
    receiver.hold = asyncio.Event()
    queue = make_queue(db, clock, receiver.url, timeout=0.2)
    async with running(queue):
        delivery = queue.enqueue("booking.started", {"booking_id": "b1"})
        await backing_off(queue, clock, 1)
        assert queue.status()["last_error"] == "no answer within 0.2 s"
        receiver.hold.set()
        receiver.hold = None
        await clock.advance(1.2)
        await delivered(queue, receiver, 1)
    assert receiver.delivered_ids() == [delivery]
    assert rows(db) == 0


# --- durability ----------------------------------------------------------------------


async def test_queued_while_down_survives_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions: list[aiohttp.ClientSession] = []
    real_session = aiohttp.ClientSession

    def recording_session(*args: Any, **kwargs: Any) -> aiohttp.ClientSession:
        session = real_session(*args, **kwargs)
        sessions.append(session)
        return session

    monkeypatch.setattr(aiohttp, "ClientSession", recording_session)
    receiver = Receiver(port=free_port())  # nothing listens there yet
    try:
        first_db = open_database(tmp_path)
        first_clock = VirtualClock(START)
        first = make_queue(first_db, first_clock, receiver.url)
        async with running(first):
            started = time.perf_counter()
            delivery = first.enqueue("booking.no_show", {"booking_id": "b7"})
            assert time.perf_counter() - started < 0.5
            await backing_off(first, first_clock, 1)
            assert first.status()["last_error"] is not None
            stored = bytes(first_db.execute("SELECT body FROM webhook_deliveries").fetchone()[0])
        assert [task for task in asyncio.all_tasks() if task is not asyncio.current_task()] == []
        assert len(sessions) == 1
        assert sessions[0].closed
        first_db.close()

        await receiver.start()
        second_db = open_database(tmp_path)
        second_clock = VirtualClock(START + timedelta(days=1))
        second = make_queue(second_db, second_clock, receiver.url)
        assert second.status()["pending"] == 1
        assert second.status()["oldest_pending_seconds"] == 86400.0
        async with running(second):
            await delivered(second, receiver, 1)
        (received,) = receiver.requests
        assert received.id == delivery
        assert received.body == stored
        assert received.json()["time"] == START.isoformat()  # built when it was queued
        assert verify(SECRET, received.body, received.headers["X-Center-Signature"])
        assert rows(second_db) == 0
        assert len(sessions) == 2
        assert sessions[1].closed
        second_db.close()
    finally:
        await receiver.stop()


async def test_cancelling_mid_request_is_clean_and_keeps_the_row(
    receiver: Receiver, db: sqlite3.Connection, clock: VirtualClock
) -> None:
    receiver.hold = asyncio.Event()
    queue = make_queue(db, clock, receiver.url)
    async with running(queue):
        queue.enqueue("booking.started", {"booking_id": "b1"})
        await wait_until(lambda: len(receiver.requests) == 1, message="a request in flight")
    assert rows(db) == 1  # not acknowledged: sent again by the next run
    assert queue.status()["failed_attempts"] == 0


async def test_rolled_back_transaction_queues_nothing(
    receiver: Receiver, db: sqlite3.Connection, clock: VirtualClock
) -> None:
    db.execute("CREATE TABLE facts (what TEXT)")
    queue = make_queue(db, clock, receiver.url)

    def failing_rule() -> None:
        with transaction(db):
            db.execute("INSERT INTO facts VALUES ('no-show b1')")
            assert queue.enqueue("booking.no_show", {"booking_id": "b1"}) is not None
            raise RuntimeError("the rule failed after queueing")

    async with running(queue):
        with pytest.raises(RuntimeError, match="after queueing"):
            failing_rule()
        assert rows(db) == 0
        assert queue.status()["pending"] == 0

        with transaction(db):
            db.execute("INSERT INTO facts VALUES ('no-show b2')")
            kept = queue.enqueue("booking.no_show", {"booking_id": "b2"})
        await delivered(queue, receiver, 1)

    assert receiver.delivered_ids() == [kept]
    assert [row[0] for row in db.execute("SELECT what FROM facts")] == ["no-show b2"]


# --- limits and configuration ---------------------------------------------------------


async def test_max_pending_drops_the_oldest_and_counts(
    receiver: Receiver,
    db: sqlite3.Connection,
    clock: VirtualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    queue = make_queue(db, clock, receiver.url, max_pending=3)
    queued = [queue.enqueue("booking.started", {"n": n}) for n in range(5)]
    assert queue.status()["pending"] == 3
    assert queue.status()["dropped"] == 2
    queued += [queue.enqueue("booking.started", {"n": n}) for n in range(5, 7)]
    assert queue.status()["dropped"] == 4
    warnings = [r for r in webhook_logs(caplog) if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per burst
    assert "dropping the oldest" in warnings[0].getMessage()

    async with running(queue):
        await delivered(queue, receiver, 3)
        assert receiver.delivered_ids() == queued[-3:]
        last = queue.enqueue("booking.ended", {"n": 7})
        await delivered(queue, receiver, 4)

    assert receiver.delivered_ids()[-1] == last
    infos = [r for r in webhook_logs(caplog) if r.levelno == logging.INFO]
    assert any("below its limit again" in r.getMessage() for r in infos)
    status = queue.status()
    assert (status["pending"], status["delivered"], status["dropped"]) == (0, 4, 4)


async def test_without_url_nothing_is_stored(db: sqlite3.Connection, clock: VirtualClock) -> None:
    queue = WebhookQueue(db, clock, url=None, secret=None, site_id="changbai")
    async with running(queue):
        assert queue.enqueue("booking.started", {"booking_id": "b1"}) is None
    assert rows(db) == 0
    assert queue.status() == {
        "enabled": False,
        "pending": 0,
        "delivered": 0,
        "failed_attempts": 0,
        "dropped": 0,
        "last_error": None,
        "oldest_pending_seconds": None,
    }


@pytest.mark.parametrize("secret", [None, ""])
def test_url_without_secret_is_refused(
    db: sqlite3.Connection, clock: VirtualClock, secret: str | None
) -> None:
    message = "CENTER_WEBHOOK_SECRET is required when CENTER_WEBHOOK_URL is set"
    with pytest.raises(ValueError, match=re.escape(message)):
        WebhookQueue(
            db, clock, url="https://bookings.example/hooks", secret=secret, site_id="changbai"
        )


def test_bad_input_is_refused_at_enqueue(db: sqlite3.Connection, clock: VirtualClock) -> None:
    queue = make_queue(db, clock, "https://bookings.example/hooks")
    with pytest.raises(ValueError, match="timezone-aware"):
        queue.enqueue("booking.started", {}, time=datetime(2026, 11, 23, 9, 0))
    with pytest.raises(ValueError, match="printable ASCII"):
        queue.enqueue("booking.started\r\nX-Evil: 1", {})
    with pytest.raises(TypeError):
        queue.enqueue("booking.started", {"what": object()})
    assert rows(db) == 0


async def test_status_counts_and_oldest_age(
    receiver: Receiver, db: sqlite3.Connection, clock: VirtualClock
) -> None:
    queue = make_queue(db, clock, receiver.url)
    queue.enqueue("booking.started", {"booking_id": "b1"})
    await clock.advance(30)
    queue.enqueue("booking.ended", {"booking_id": "b1"})
    status = queue.status()
    assert status["pending"] == 2
    assert status["oldest_pending_seconds"] == 30.0

    receiver.answer = 503
    async with running(queue):
        await backing_off(queue, clock, 1)
        assert queue.status()["last_error"] == "HTTP 503 Service Unavailable"
        receiver.answer = 204
        await clock.advance(1.2)
        await delivered(queue, receiver, 2)
    assert queue.status() == {
        "enabled": True,
        "pending": 0,
        "delivered": 2,
        "failed_attempts": 1,
        "dropped": 0,
        "last_error": None,
        "oldest_pending_seconds": None,
    }
