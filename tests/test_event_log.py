"""The event log: durable, ordered, filtered, pruned, and never stopped by a listener.

Real SQLite files under ``tmp_path``; time moves only through ``VirtualClock``.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from controller.clock import VirtualClock
from controller.database import open_database, transaction
from controller.event_log import EventLog, LoggedEvent, Severity

SHANGHAI = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 11, 23, 10, 0, tzinfo=SHANGHAI)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(START)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = open_database(tmp_path)
    yield connection
    connection.close()


@pytest.fixture
def log(db: sqlite3.Connection, clock: VirtualClock) -> EventLog:
    return EventLog(db, clock)


# --- recording and reading back ----------------------------------------------------------


def test_record_returns_the_stored_event_with_the_clocks_time(log: EventLog) -> None:
    event = log.record(
        "lock_command",
        "unlocked for booking b-17",
        room="hall",
        device="hall-lock",
        booking_id="b-17",
        details={"intent": "unlock", "reason": "booking"},
    )

    assert event.kind == "lock_command"
    assert event.time == START
    assert event.time.utcoffset() == timedelta(hours=8)
    assert event.severity is Severity.INFO
    assert log.query() == [event]
    assert log.latest_id() == event.id


def test_ids_increase_and_latest_id_is_none_when_empty(log: EventLog) -> None:
    assert log.latest_id() is None

    first = log.record("a", "one")
    second = log.record("b", "two")

    assert second.id > first.id
    assert log.latest_id() == second.id


async def test_events_survive_reopening_the_database_with_their_offset(tmp_path: Path) -> None:
    clock = VirtualClock(START)
    first = open_database(tmp_path)
    log = EventLog(first, clock)
    await clock.advance(timedelta(minutes=5, microseconds=250))
    recorded = log.record(
        "fire_alarm",
        "panel reports fire",
        severity=Severity.CRITICAL,
        alarm_id=3,
        state="active",
        acked=False,
        details={"zones": [1, 2], "panel": "main"},
    )
    first.close()

    second = open_database(tmp_path)
    try:
        [reread] = EventLog(second, clock).query()
    finally:
        second.close()

    assert reread == recorded
    assert reread.time.isoformat() == "2026-11-23T10:05:00.000250+08:00"
    assert reread.to_json()["time"] == "2026-11-23T10:05:00.000250+08:00"


def test_an_explicit_time_keeps_its_own_offset(log: EventLog) -> None:
    new_york = datetime(2026, 11, 22, 21, 0, tzinfo=ZoneInfo("America/New_York"))

    event = log.record("device_offline", "silent", time=new_york)

    assert event.time == START  # the same instant...
    assert event.time.isoformat() == "2026-11-22T21:00:00-05:00"  # ...as it was told


def test_a_naive_time_is_refused(log: EventLog) -> None:
    with pytest.raises(ValueError, match="naive"):
        log.record("x", "no zone", time=datetime(2026, 11, 23, 10, 0))

    assert log.query() == []


def test_details_that_are_not_json_are_refused_and_nothing_is_written(log: EventLog) -> None:
    with pytest.raises(ValueError, match="JSON"):
        log.record("x", "nan", details={"value": math.nan})
    with pytest.raises(TypeError):
        log.record("x", "object", details={"value": object()})

    assert log.query() == []


# --- to_json -----------------------------------------------------------------------------


def test_to_json_leaves_out_fields_that_do_not_apply(log: EventLog) -> None:
    event = log.record("booking_no_show", "nobody came", room="hall", booking_id="b-1")

    assert event.to_json() == {
        "id": event.id,
        "kind": "booking_no_show",
        "time": "2026-11-23T10:00:00+08:00",
        "severity": "info",
        "message": "nobody came",
        "room": "hall",
        "booking_id": "b-1",
        "details": {},
    }


def test_to_json_of_an_alarm_event_carries_state_and_acked_even_when_false(log: EventLog) -> None:
    event = log.record(
        "lock_jammed",
        "bolt did not move",
        severity=Severity.ALARM,
        device="hall-lock",
        alarm_id=7,
        state="active",
        acked=False,
        details={"by": None},
    )

    body = event.to_json()

    assert list(body) == [
        "id",
        "kind",
        "time",
        "severity",
        "message",
        "device",
        "alarm_id",
        "state",
        "acked",
        "details",
    ]
    assert body["severity"] == "alarm"
    assert body["acked"] is False
    assert body["details"] == {"by": None}


def test_utc_events_say_plus_zero(db: sqlite3.Connection) -> None:
    log = EventLog(db, VirtualClock(datetime(2026, 11, 23, 2, 0, tzinfo=UTC)))

    assert log.record("x", "utc").to_json()["time"] == "2026-11-23T02:00:00+00:00"


# --- query -------------------------------------------------------------------------------


async def _record_hourly(log: EventLog, clock: VirtualClock, kinds: list[str]) -> list[LoggedEvent]:
    events = []
    for number, kind in enumerate(kinds):
        events.append(log.record(kind, f"event {number}", room="hall" if number % 2 else "cafe"))
        await clock.advance(timedelta(hours=1))
    return events


async def test_without_since_the_most_recent_come_back_oldest_first(
    log: EventLog, clock: VirtualClock
) -> None:
    events = await _record_hourly(log, clock, ["a"] * 6)

    assert log.query() == events
    assert log.query(limit=2) == events[-2:]


async def test_with_since_the_first_from_that_time_on_come_back(
    log: EventLog, clock: VirtualClock
) -> None:
    events = await _record_hourly(log, clock, ["a"] * 6)

    assert log.query(since=events[2].time) == events[2:]  # inclusive
    assert log.query(since=events[2].time, limit=2) == events[2:4]
    assert log.query(since=events[2].time + timedelta(microseconds=1)) == events[3:]
    assert log.query(since=START + timedelta(days=1)) == []


async def test_since_compares_instants_not_wall_clock_text(
    log: EventLog, clock: VirtualClock
) -> None:
    events = await _record_hourly(log, clock, ["a"] * 3)
    # 03:00 UTC is 11:00 in Shanghai: the second event.
    since = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)

    assert log.query(since=since) == events[1:]


def test_events_sort_by_time_even_when_recorded_out_of_order(log: EventLog) -> None:
    late = log.record("a", "late", time=START + timedelta(minutes=10))
    early = log.record("a", "early", time=START)
    same_time_later_id = log.record("a", "same time, recorded after", time=START)

    assert log.query() == [early, same_time_later_id, late]
    assert log.query(limit=1) == [late]


async def test_kind_filter_takes_a_comma_separated_list(log: EventLog, clock: VirtualClock) -> None:
    kinds = ["fire_alarm", "lock_jammed", "overstay", "fire_alarm"]
    events = await _record_hourly(log, clock, kinds)

    assert log.query(kind="fire_alarm") == [events[0], events[3]]
    assert log.query(kind="fire_alarm, lock_jammed") == [events[0], events[1], events[3]]
    assert log.query(kind="nothing_like_this") == []
    assert log.query(kind="") == events


async def test_room_filter_combines_with_kind_and_since(log: EventLog, clock: VirtualClock) -> None:
    events = await _record_hourly(log, clock, ["a", "b", "a", "b", "a"])

    assert log.query(room="hall") == [events[1], events[3]]
    assert log.query(room="cafe", kind="a", since=events[1].time) == [events[2], events[4]]


def test_a_negative_limit_is_refused(log: EventLog) -> None:
    with pytest.raises(ValueError, match="limit"):
        log.query(limit=-1)


# --- prune -------------------------------------------------------------------------------


async def test_prune_deletes_only_events_older_than_keep(db: sqlite3.Connection) -> None:
    clock = VirtualClock(START)
    log = EventLog(db, clock, keep=timedelta(days=30))
    old = log.record("a", "old")
    await clock.advance(timedelta(days=10))
    middle = log.record("a", "middle")
    await clock.advance(timedelta(days=20))  # old is now exactly 30 days old

    assert log.prune() == 0
    await clock.advance(timedelta(seconds=1))
    assert log.prune() == 1
    assert log.query() == [middle]
    assert old.id < middle.id

    await clock.advance(timedelta(days=30))
    assert log.prune() == 1
    assert log.query() == []


async def test_ids_keep_growing_after_everything_was_pruned(tmp_path: Path) -> None:
    clock = VirtualClock(START)
    db = open_database(tmp_path)
    log = EventLog(db, clock, keep=timedelta(days=1))
    gone = log.record("a", "old")
    await clock.advance(timedelta(days=2))
    assert log.prune() == 1
    db.close()

    db = open_database(tmp_path)
    try:
        fresh = EventLog(db, clock).record("a", "new")
    finally:
        db.close()

    assert fresh.id > gone.id


# --- listeners ---------------------------------------------------------------------------


def test_listeners_hear_every_event_until_they_unsubscribe(log: EventLog) -> None:
    heard: list[LoggedEvent] = []
    unsubscribe = log.listen(heard.append)

    first = log.record("a", "one")
    unsubscribe()
    log.record("a", "two")

    assert heard == [first]


def test_a_failing_listener_neither_stops_record_nor_the_others(
    log: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: LoggedEvent) -> None:
        raise RuntimeError("listener bug")

    heard: list[LoggedEvent] = []
    log.listen(broken)
    log.listen(heard.append)

    with caplog.at_level(logging.ERROR, logger="controller.event_log"):
        events = [log.record("a", f"event {number}") for number in range(3)]

    assert heard == events
    assert log.query() == events
    assert log.listener_errors == 3
    tracebacks = [record for record in caplog.records if record.exc_info]
    assert len(tracebacks) == 1  # first failure only; later ones are counted
    assert "listener bug" in caplog.text


def test_listeners_hear_an_event_recorded_in_a_transaction_only_after_commit(
    log: EventLog,
) -> None:
    heard: list[LoggedEvent] = []
    log.listen(heard.append)

    with log.transaction():
        event = log.record("a", "inside")
        assert heard == []
    assert heard == [event]

    def failing_change() -> None:
        with log.transaction():
            log.record("a", "rolled back")
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError, match="change failed"):
        failing_change()

    assert heard == [event]
    assert log.query() == [event]


def test_record_joins_an_outer_transaction_and_rolls_back_with_it(
    db: sqlite3.Connection, log: EventLog
) -> None:
    def failing_change() -> None:
        with transaction(db):
            log.record("a", "part of a change that failed")
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError, match="change failed"):
        failing_change()

    assert log.query() == []
