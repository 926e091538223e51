"""Counting bad input, the event bus's failure handling, and coalesced room publishing."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from controller.bus import EventBus
from controller.diagnostics import MAX_UNKNOWN_DEVICES, OTHER_UNKNOWN, BadPayloadLog
from controller.events import BadPayload, ReadingReceived
from controller.readings import LockReading, LockState, OccupancyReading, Reading
from controller.room_publisher import RoomStatePublisher
from controller.site import Site
from controller.state import LiveState
from drivers.payloads import BadPayloadReason
from tests.conftest import wait_until

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
PREFIX = "center/changbai"
INGEST_LOGGER = "tests.ingest"

# --- BadPayloadLog -----------------------------------------------------------------------


@dataclass
class BadPayloads:
    bus: EventBus
    log: BadPayloadLog
    reports: list[dict[str, Any]] = field(default_factory=list)

    def send(
        self,
        device_id: str,
        reason: str = BadPayloadReason.NOT_JSON,
        at: float = 0,
        detail: str = "expected a JSON object",
    ) -> None:
        self.bus.publish(
            BadPayload(
                device_id,
                reason,
                detail,
                f"{PREFIX}/{device_id}/state",
                T0 + timedelta(seconds=at),
            )
        )


@pytest.fixture
def bad() -> BadPayloads:
    bus = EventBus()
    reports: list[dict[str, Any]] = []
    log = BadPayloadLog(
        bus,
        frozenset({"occ-gym", "lock-gym"}),
        report=reports.append,
        interval=60.0,
        logger=logging.getLogger(INGEST_LOGGER),
    )
    log.start()
    return BadPayloads(bus, log, reports)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == INGEST_LOGGER and record.levelno == logging.WARNING
    ]


def test_bad_payloads_are_counted_per_device_and_reason(bad: BadPayloads) -> None:
    for at in range(3):
        bad.send("occ-gym", BadPayloadReason.NOT_JSON, at=at)
    bad.send("occ-gym", BadPayloadReason.OUT_OF_RANGE, at=3)
    bad.send("lock-gym", BadPayloadReason.UNKNOWN_VALUE, at=4)
    bad.send("lock-gym", BadPayloadReason.UNKNOWN_VALUE, at=5)

    assert bad.log.counts() == {
        "occ-gym": {"not_json": 3, "out_of_range": 1},
        "lock-gym": {"unknown_value": 2},
    }
    assert bad.log.total == 6


def test_the_first_bad_payload_is_logged_and_reported(
    bad: BadPayloads, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=INGEST_LOGGER)

    bad.send("occ-gym", BadPayloadReason.OUT_OF_RANGE, detail="count -1 is below 0")

    assert _warnings(caplog) == [
        "rejected a message from occ-gym: out_of_range (count -1 is below 0)"
    ]
    record = caplog.records[-1]
    assert (record.device, record.reason) == ("occ-gym", "out_of_range")  # type: ignore[attr-defined]
    assert bad.reports == [
        {
            "kind": "bad_payload",
            "time": T0.isoformat(),
            "device": "occ-gym",
            "reason": "out_of_range",
            "message": "count -1 is below 0",
            "topic": f"{PREFIX}/occ-gym/state",
            "suppressed": 0,
        }
    ]


def test_repeats_are_suppressed_and_then_summarised(
    bad: BadPayloads, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=INGEST_LOGGER)
    bad.send("occ-gym", at=0)
    for at in (0.1, 10, 30, 59.9):  # a sensor spewing garbage
        bad.send("occ-gym", at=at)

    assert len(_warnings(caplog)) == 1
    assert len(bad.reports) == 1
    assert bad.log.counts() == {"occ-gym": {"not_json": 5}}  # every one counted

    bad.send("occ-gym", at=60)  # one interval after the last report

    assert len(bad.reports) == 2
    assert bad.reports[-1]["suppressed"] == 4
    assert bad.reports[-1]["time"] == (T0 + timedelta(seconds=60)).isoformat()
    assert _warnings(caplog)[-1].endswith("; 4 more like it not logged")

    bad.send("occ-gym", at=61)
    bad.send("occ-gym", at=125)  # the count starts afresh after each report

    assert [report["suppressed"] for report in bad.reports] == [0, 4, 1]
    assert len(_warnings(caplog)) == 3


def test_each_device_and_reason_is_throttled_on_its_own(
    bad: BadPayloads, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=INGEST_LOGGER)

    bad.send("occ-gym", BadPayloadReason.NOT_JSON, at=0)
    bad.send("occ-gym", BadPayloadReason.NOT_JSON, at=1)
    bad.send("occ-gym", BadPayloadReason.EMPTY, at=2)
    bad.send("lock-gym", BadPayloadReason.NOT_JSON, at=3)

    assert [(report["device"], report["reason"]) for report in bad.reports] == [
        ("occ-gym", "not_json"),
        ("occ-gym", "empty"),
        ("lock-gym", "not_json"),
    ]
    assert len(_warnings(caplog)) == 3


def test_unknown_device_ids_are_bounded(bad: BadPayloads) -> None:
    unknown = BadPayloadReason.UNKNOWN_DEVICE
    for index in range(MAX_UNKNOWN_DEVICES):
        bad.send(f"ghost-{index}", unknown)
    bad.send("ghost-0", unknown)  # already known by id: keeps its own count

    bad.send("ghost-extra-1", unknown)
    bad.send("ghost-extra-2", unknown)
    bad.send("occ-gym", BadPayloadReason.NOT_JSON)  # site devices are never pooled

    counts = bad.log.counts()
    assert len(counts) == MAX_UNKNOWN_DEVICES + 2
    assert counts["ghost-0"] == {"unknown_device": 2}
    assert counts[OTHER_UNKNOWN] == {"unknown_device": 2}
    assert "ghost-extra-1" not in counts
    assert counts["occ-gym"] == {"not_json": 1}
    assert bad.log.total == MAX_UNKNOWN_DEVICES + 4


def test_a_stopped_log_counts_nothing(bad: BadPayloads) -> None:
    bad.log.stop()

    bad.send("occ-gym")

    assert bad.log.total == 0
    assert bad.reports == []


# --- EventBus ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ping:
    n: int


@dataclass(frozen=True)
class Pong:
    n: int


def test_handlers_get_their_event_type_in_subscription_order() -> None:
    bus = EventBus()
    seen: list[str] = []
    bus.subscribe(Ping, lambda event: seen.append(f"first {event.n}"))
    bus.subscribe(Pong, lambda event: seen.append(f"pong {event.n}"))
    bus.subscribe(Ping, lambda event: seen.append(f"second {event.n}"))

    bus.publish(Ping(1))
    bus.publish(Pong(2))
    bus.publish("nobody listens to strings")

    assert seen == ["first 1", "second 1", "pong 2"]


def test_unsubscribe_stops_delivery_and_is_idempotent() -> None:
    bus = EventBus()
    seen: list[int] = []
    unsubscribe = bus.subscribe(Ping, lambda event: seen.append(event.n))

    bus.publish(Ping(1))
    unsubscribe()
    bus.publish(Ping(2))
    unsubscribe()

    assert seen == [1]


class Flaky:
    def __init__(self) -> None:
        self.failing = True
        self.calls = 0

    def __call__(self, event: Ping) -> None:
        self.calls += 1
        if self.failing:
            raise RuntimeError(f"cannot handle {event.n}")


def _bus_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "controller.bus"]


def test_a_failing_handler_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="controller.bus")
    bus = EventBus()
    before: list[int] = []
    after: list[int] = []
    flaky = Flaky()
    bus.subscribe(Ping, lambda event: before.append(event.n))
    bus.subscribe(Ping, flaky)
    bus.subscribe(Ping, lambda event: after.append(event.n))

    for n in range(3):
        bus.publish(Ping(n))

    assert before == after == [0, 1, 2]
    assert flaky.calls == 3
    assert bus.handler_errors == 3
    (logged,) = _bus_records(caplog)  # logged once, not three times
    assert logged.levelno == logging.ERROR
    assert "failed on Ping" in logged.getMessage()
    assert logged.exc_info is not None
    assert "cannot handle 0" in str(logged.exc_info[1])


def test_a_recovered_handler_is_logged_once_and_a_new_failure_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="controller.bus")
    bus = EventBus()
    flaky = Flaky()
    bus.subscribe(Ping, flaky)

    bus.publish(Ping(0))
    flaky.failing = False
    bus.publish(Ping(1))
    bus.publish(Ping(2))
    flaky.failing = True
    bus.publish(Ping(3))

    messages = [(record.levelno, record.getMessage()) for record in _bus_records(caplog)]
    assert [level for level, _ in messages] == [logging.ERROR, logging.INFO, logging.ERROR]
    assert "recovered" in messages[1][1]
    assert bus.handler_errors == 2


def test_a_healthy_handler_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="controller.bus")
    bus = EventBus()
    bus.subscribe(Ping, lambda event: None)

    bus.publish(Ping(1))

    assert _bus_records(caplog) == []
    assert bus.handler_errors == 0


def test_a_handler_unsubscribing_itself_does_not_skip_the_next() -> None:
    bus = EventBus()
    seen: list[str] = []

    def once(event: Ping) -> None:
        seen.append("once")
        unsubscribe_once()

    unsubscribe_once = bus.subscribe(Ping, once)
    bus.subscribe(Ping, lambda event: seen.append("always"))

    bus.publish(Ping(1))

    assert seen == ["once", "always"]


# --- RoomStatePublisher ------------------------------------------------------------------


@dataclass
class Published:
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail_next: int = 0

    def __call__(self, topic: str, payload: bytes) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("not connected")
        self.messages.append((topic, orjson.loads(payload)))

    def rooms(self) -> list[str]:
        return [payload["room"] for _, payload in self.messages]

    def latest(self, room_id: str) -> dict[str, Any]:
        return [payload for _, payload in self.messages if payload["room"] == room_id][-1]


@dataclass
class Rooms:
    site: Site
    bus: EventBus
    state: LiveState
    publisher: RoomStatePublisher

    def reading(self, device_id: str, reading: Reading, at: float = 0) -> None:
        self.bus.publish(ReadingReceived(device_id, reading, T0 + timedelta(seconds=at)))

    @property
    def room_ids(self) -> list[str]:
        return [room.id for room in self.site.rooms]


@pytest.fixture
def rooms(site: Site) -> Rooms:
    bus = EventBus()
    state = LiveState(site, bus)
    state.start()
    # No pacing here: these tests are about what is published, not when.
    publisher = RoomStatePublisher(
        state, bus, PREFIX, [room.id for room in site.rooms], min_interval=0
    )
    publisher.start()
    return Rooms(site, bus, state, publisher)


async def _next_iteration() -> None:
    await asyncio.sleep(0)  # lets the publisher's call_soon flush run


async def test_attach_publishes_every_room_once(rooms: Rooms) -> None:
    rooms.reading("occ-gym", OccupancyReading(True, 2), at=5)
    sink = Published()

    rooms.publisher.attach(sink)

    assert sorted(sink.rooms()) == sorted(rooms.room_ids)
    assert len(sink.messages) == 11
    assert {topic for topic, _ in sink.messages} == {
        f"{PREFIX}/room/{room_id}/state" for room_id in rooms.room_ids
    }
    gym = sink.latest("gym")
    assert (gym["occupied"], gym["count"]) == (True, 2)
    assert gym["updated"] == (T0 + timedelta(seconds=5)).isoformat()
    assert sink.latest("library")["occupied"] is None
    assert rooms.publisher.published == 11

    await _next_iteration()
    assert len(sink.messages) == 11  # nothing left to flush


async def test_changes_within_one_iteration_are_published_once_with_the_latest(
    rooms: Rooms,
) -> None:
    sink = Published()
    rooms.publisher.attach(sink)
    sink.messages.clear()

    rooms.reading("occ-gym", OccupancyReading(True, 1), at=1)
    rooms.reading("occ-gym", OccupancyReading(True, 2), at=2)
    rooms.reading("lock-gym", LockReading(LockState.UNLOCKED), at=3)
    rooms.reading("occ-library", OccupancyReading(True), at=4)
    rooms.reading("occ-gym", OccupancyReading(True, 3), at=5)
    assert sink.messages == []  # not yet: the batch is still being handled

    await _next_iteration()

    assert sorted(sink.rooms()) == ["gym", "library"]
    gym = sink.latest("gym")
    assert (gym["count"], gym["lock_state"], gym["locked"]) == (3, "UNLOCKED", False)
    assert gym["updated"] == (T0 + timedelta(seconds=5)).isoformat()

    rooms.reading("occ-gym", OccupancyReading(False, 0), at=6)
    await _next_iteration()

    assert sink.rooms()[2:] == ["gym"]
    assert sink.latest("gym")["occupied"] is False


async def test_a_repeated_reading_publishes_nothing(rooms: Rooms) -> None:
    sink = Published()
    rooms.reading("occ-gym", OccupancyReading(True, 1))
    rooms.publisher.attach(sink)
    sink.messages.clear()

    rooms.reading("occ-gym", OccupancyReading(True, 1), at=30)
    await _next_iteration()

    assert sink.messages == []


async def test_a_detached_publisher_publishes_nothing_and_catches_up_on_attach(
    rooms: Rooms,
) -> None:
    first = Published()
    rooms.publisher.attach(first)
    first.messages.clear()
    rooms.publisher.detach()

    rooms.reading("occ-gym", OccupancyReading(True, 4), at=1)
    await _next_iteration()
    assert first.messages == []

    second = Published()
    rooms.publisher.attach(second)  # after a reconnect: the broker may have forgotten all

    assert first.messages == []
    assert sorted(second.rooms()) == sorted(rooms.room_ids)
    assert second.latest("gym")["count"] == 4


async def test_a_publish_that_raises_keeps_the_room_dirty(
    rooms: Rooms, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="controller.rooms")
    sink = Published()
    rooms.publisher.attach(sink)
    sink.messages.clear()

    sink.fail_next = 1
    rooms.reading("occ-gym", OccupancyReading(True, 1), at=1)
    await _next_iteration()

    assert sink.messages == []
    assert rooms.publisher.published == 11
    assert any("room gym" in record.getMessage() for record in caplog.records)

    rooms.reading("occ-library", OccupancyReading(True), at=2)  # the next change retries
    await _next_iteration()

    assert sorted(sink.rooms()) == ["gym", "library"]
    assert sink.latest("gym")["count"] == 1
    assert rooms.publisher.published == 13


async def test_a_failed_attach_is_retried_with_every_room(rooms: Rooms) -> None:
    sink = Published(fail_next=1)

    rooms.publisher.attach(sink)
    # One room failed; the others went out anyway.
    assert len(sink.messages) == len(rooms.room_ids) - 1

    rooms.reading("occ-gym", OccupancyReading(True), at=1)
    await _next_iteration()

    assert sorted(set(sink.rooms())) == sorted(rooms.room_ids)


async def test_a_stopped_publisher_ignores_changes(rooms: Rooms) -> None:
    sink = Published()
    rooms.publisher.attach(sink)
    sink.messages.clear()
    rooms.publisher.stop()

    rooms.reading("occ-gym", OccupancyReading(True), at=1)
    await _next_iteration()

    assert sink.messages == []


@dataclass
class Acknowledgement:
    acknowledged: bool = False

    def is_published(self) -> bool:
        return self.acknowledged


async def test_a_busy_room_is_published_at_most_once_per_interval_with_its_latest_state(
    site: Site,
) -> None:
    bus = EventBus()
    state = LiveState(site, bus)
    state.start()
    publisher = RoomStatePublisher(state, bus, PREFIX, ["gym"], min_interval=0.2, burst=2)
    publisher.start()
    sent: list[dict[str, Any]] = []
    publisher.attach(lambda topic, payload: sent.append(orjson.loads(payload)))
    assert len(sent) == 1  # the whole set on attach

    for count in range(1, 30):
        bus.publish(ReadingReceived("occ-gym", OccupancyReading(True, count), T0))
        await _next_iteration()
    assert [message["count"] for message in sent] == [None, 1], "the burst allowance is spent"

    await wait_until(lambda: len(sent) == 3, timeout=2, message="the trailing publish")
    assert sent[-1]["count"] == 29  # the latest state, not the first held change
    publisher.stop()


async def test_a_room_waits_for_the_broker_to_acknowledge_its_previous_state(site: Site) -> None:
    bus = EventBus()
    state = LiveState(site, bus)
    state.start()
    publisher = RoomStatePublisher(state, bus, PREFIX, ["gym"], min_interval=0)
    publisher.start()
    sent: list[dict[str, Any]] = []
    pending = Acknowledgement()

    def publish(topic: str, payload: bytes) -> Acknowledgement:
        sent.append(orjson.loads(payload))
        return pending

    publisher.attach(publish)
    bus.publish(ReadingReceived("occ-gym", OccupancyReading(True, 5), T0))
    await _next_iteration()
    assert len(sent) == 1, "the first state is not acknowledged yet"

    pending.acknowledged = True
    await wait_until(lambda: len(sent) == 2, timeout=2, message="the held state")
    assert sent[-1]["count"] == 5
    publisher.stop()
