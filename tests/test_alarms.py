"""Alarms: the active/cleared x unacknowledged/acknowledged lifecycle, one open alarm
per (source, kind), every change in the event log, and all of it after a restart.

Real SQLite files under ``tmp_path``; time moves only through ``VirtualClock``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from controller.alarms import Alarm, AlarmBook, AlarmState
from controller.clock import VirtualClock
from controller.database import open_database
from controller.event_log import EventLog, LoggedEvent, Severity

START = datetime(2026, 11, 23, 10, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
MINUTE = timedelta(minutes=1)


@dataclass
class Center:
    db: sqlite3.Connection
    clock: VirtualClock
    events: EventLog
    alarms: AlarmBook

    def logged(self) -> list[LoggedEvent]:
        return self.events.query()


def open_center(tmp_path: Path, clock: VirtualClock) -> Center:
    db = open_database(tmp_path)
    events = EventLog(db, clock)
    return Center(db, clock, events, AlarmBook(db, events, clock))


@pytest.fixture
def center(tmp_path: Path) -> Iterator[Center]:
    opened = open_center(tmp_path, VirtualClock(START))
    yield opened
    opened.db.close()


def jam(
    center: Center,
    message: str = "bolt did not move",
    *,
    severity: Severity = Severity.ALARM,
    booking_id: str | None = None,
    details: dict[str, object] | None = None,
) -> Alarm:
    return center.alarms.raise_alarm(
        "lock_jammed",
        "hall-lock",
        message,
        severity=severity,
        room="hall",
        device="hall-lock",
        booking_id=booking_id,
        details=details,
    )


# --- raising ---------------------------------------------------------------------------


def test_a_new_alarm_is_active_unacknowledged_and_logged(center: Center) -> None:
    alarm = jam(center, booking_id="b-7", details={"attempts": 3})

    assert alarm.state is AlarmState.ACTIVE
    assert not alarm.acked
    assert alarm.open
    assert alarm.count == 1
    assert alarm.raised == alarm.updated == START
    assert alarm.cleared is None
    assert alarm.severity is Severity.ALARM
    assert center.alarms.is_active("lock_jammed", "hall-lock")
    [event] = center.logged()
    assert event.kind == "lock_jammed"
    assert event.severity is Severity.ALARM
    assert (event.alarm_id, event.state, event.acked) == (alarm.id, "active", False)
    assert (event.room, event.device, event.booking_id) == ("hall", "hall-lock", "b-7")
    assert event.message == "bolt did not move"
    assert event.details == {"attempts": 3}


async def test_a_repeat_updates_the_active_alarm_and_logs_nothing(center: Center) -> None:
    first = jam(center)
    for attempt in range(2, 50):
        await center.clock.advance(MINUTE)
        repeated = jam(
            center,
            f"still jammed ({attempt})",
            severity=Severity.CRITICAL,
            details={"attempts": attempt},
        )

    assert repeated.id == first.id
    assert repeated.count == 49
    assert repeated.message == "still jammed (49)"
    assert repeated.severity is Severity.CRITICAL
    assert repeated.details == {"attempts": 49}
    assert repeated.raised == START
    assert repeated.updated == START + 48 * MINUTE
    assert len(center.logged()) == 1
    assert len(center.alarms.query()) == 1


async def test_alarms_of_other_sources_or_kinds_are_separate(center: Center) -> None:
    hall = jam(center)
    cafe = center.alarms.raise_alarm("lock_jammed", "cafe-lock", "jammed too")
    other_kind = center.alarms.raise_alarm("lock_unconfirmed", "hall-lock", "no answer")

    assert len({hall.id, cafe.id, other_kind.id}) == 3
    assert len(center.logged()) == 3


# --- clearing --------------------------------------------------------------------------


async def test_clearing_keeps_the_alarm_open_until_acknowledged(center: Center) -> None:
    raised = jam(center)
    await center.clock.advance(MINUTE)

    cleared = center.alarms.clear("lock_jammed", "hall-lock", "bolt moved again")

    assert cleared is not None
    assert cleared.id == raised.id
    assert cleared.state is AlarmState.CLEARED
    assert cleared.cleared == cleared.updated == START + MINUTE
    assert cleared.open
    assert cleared.message == "bolt did not move"  # what went wrong stays on the alarm
    assert not center.alarms.is_active("lock_jammed", "hall-lock")
    event = center.logged()[-1]
    assert (event.kind, event.state, event.acked) == ("lock_jammed", "cleared", False)
    assert event.message == "bolt moved again"
    assert event.severity is Severity.INFO
    assert event.alarm_id == raised.id
    assert event.time == START + MINUTE


def test_clearing_without_a_message_says_what_cleared(center: Center) -> None:
    jam(center)

    center.alarms.clear("lock_jammed", "hall-lock")

    assert center.logged()[-1].message == "cleared: bolt did not move"


def test_clearing_what_is_not_active_does_nothing(center: Center) -> None:
    assert center.alarms.clear("lock_jammed", "hall-lock") is None
    jam(center)
    center.alarms.clear("lock_jammed", "hall-lock")

    assert center.alarms.clear("lock_jammed", "hall-lock") is None  # already cleared
    assert [event.state for event in center.logged()] == ["active", "cleared"]


# --- acknowledging ---------------------------------------------------------------------


async def test_an_alarm_acked_while_active_stays_open_until_it_clears(center: Center) -> None:
    alarm = jam(center)
    await center.clock.advance(MINUTE)

    acked = center.alarms.ack(alarm.id, by="mei")

    assert acked.acked
    assert acked.acked_at == START + MINUTE
    assert acked.acked_by == "mei"
    assert acked.state is AlarmState.ACTIVE
    assert acked.open
    event = center.logged()[-1]
    assert (event.kind, event.state, event.acked) == ("lock_jammed", "active", True)
    assert event.severity is Severity.ALARM
    assert event.details == {"by": "mei"}
    assert "mei" in event.message

    closed = center.alarms.clear("lock_jammed", "hall-lock")

    assert closed is not None
    assert not closed.open
    assert center.alarms.query(open_only=True) == []


def test_acking_a_cleared_alarm_closes_it(center: Center) -> None:
    alarm = jam(center)
    center.alarms.clear("lock_jammed", "hall-lock")

    acked = center.alarms.ack(alarm.id)

    assert acked.state is AlarmState.CLEARED
    assert acked.acked
    assert acked.acked_by is None
    assert not acked.open
    assert [(event.state, event.acked) for event in center.logged()] == [
        ("active", False),
        ("cleared", False),
        ("cleared", True),
    ]


async def test_acking_twice_changes_and_logs_nothing(center: Center) -> None:
    alarm = jam(center)
    first = center.alarms.ack(alarm.id, by="mei")
    await center.clock.advance(MINUTE)

    second = center.alarms.ack(alarm.id, by="li")

    assert second == first
    assert second.acked_by == "mei"
    assert len(center.logged()) == 2


def test_acking_an_unknown_alarm_raises_key_error(center: Center) -> None:
    with pytest.raises(KeyError):
        center.alarms.ack(12345)
    assert center.logged() == []


# --- coming back -----------------------------------------------------------------------


async def test_a_fault_back_before_anyone_acked_reopens_the_same_alarm(center: Center) -> None:
    raised = jam(center)
    await center.clock.advance(MINUTE)
    center.alarms.clear("lock_jammed", "hall-lock")
    await center.clock.advance(MINUTE)

    again = jam(center, "jammed again")

    assert again.id == raised.id
    assert again.state is AlarmState.ACTIVE
    assert again.cleared is None
    assert again.count == 2
    assert again.raised == START
    assert again.updated == START + 2 * MINUTE
    assert again.message == "jammed again"
    assert [(event.state, event.alarm_id) for event in center.logged()] == [
        ("active", raised.id),
        ("cleared", raised.id),
        ("active", raised.id),
    ]
    assert len(center.alarms.query()) == 1


def test_a_fault_back_after_it_was_cleared_and_acked_is_a_new_alarm(center: Center) -> None:
    old = jam(center)
    center.alarms.clear("lock_jammed", "hall-lock")
    center.alarms.ack(old.id)

    new = jam(center)

    assert new.id != old.id
    assert new.count == 1
    assert new.state is AlarmState.ACTIVE
    assert center.alarms.get(old.id) == center.alarms.query(open_only=False)[1]
    assert [alarm.id for alarm in center.alarms.query(open_only=True)] == [new.id]
    assert len(center.logged()) == 4


def test_a_repeat_of_an_acked_active_alarm_stays_acked_and_silent(center: Center) -> None:
    alarm = jam(center)
    center.alarms.ack(alarm.id, by="mei")

    repeated = jam(center)

    assert repeated.id == alarm.id
    assert repeated.acked
    assert repeated.count == 2
    assert len(center.logged()) == 2


# --- one transaction per change ---------------------------------------------------------


def test_a_change_and_its_event_commit_together(center: Center) -> None:
    heard: list[LoggedEvent] = []
    center.events.listen(heard.append)

    def refuse(event: LoggedEvent) -> None:
        raise RuntimeError("listener bug")

    center.events.listen(refuse)  # a failing listener must not undo the change

    alarm = jam(center)

    assert center.alarms.get(alarm.id) == alarm
    assert [event.alarm_id for event in heard] == [alarm.id]
    assert not center.db.in_transaction


def test_an_event_that_cannot_be_written_leaves_the_alarm_unchanged(center: Center) -> None:
    center.db.execute(
        "CREATE TRIGGER refuse_cleared BEFORE INSERT ON event_log WHEN NEW.state = 'cleared'"
        " BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    heard: list[LoggedEvent] = []
    alarm = jam(center)
    center.events.listen(heard.append)

    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        center.alarms.clear("lock_jammed", "hall-lock")

    assert center.alarms.get(alarm.id) == alarm
    assert center.alarms.is_active("lock_jammed", "hall-lock")
    assert heard == []


# --- restart ---------------------------------------------------------------------------


async def test_alarms_and_their_lifecycle_survive_a_restart(tmp_path: Path) -> None:
    clock = VirtualClock(START)
    before = open_center(tmp_path, clock)
    alarm = jam(before)
    await clock.advance(MINUTE)
    cleared = before.alarms.clear("lock_jammed", "hall-lock")
    before.db.close()

    after = open_center(tmp_path, clock)
    try:
        assert after.alarms.get(alarm.id) == cleared
        assert after.alarms.query(open_only=True) == [cleared]
        reopened = jam(after, "again after restart")  # cleared, unacked: the same alarm
        assert reopened.id == alarm.id
        assert reopened.count == 2
        after.alarms.ack(alarm.id, by="mei")
        after.alarms.clear("lock_jammed", "hall-lock")
    finally:
        after.db.close()

    last = open_center(tmp_path, clock)
    try:
        final = last.alarms.get(alarm.id)
        assert final is not None
        assert not final.open
        assert final.acked_by == "mei"
        assert final.to_json()["raised"] == "2026-11-23T10:00:00+08:00"
        assert final.to_json()["cleared"] == "2026-11-23T10:01:00+08:00"
        assert [event.state for event in last.events.query()] == [
            "active",
            "cleared",
            "active",
            "active",
            "cleared",
        ]
        assert jam(last).id != alarm.id  # closed: a new fault is a new alarm
    finally:
        last.db.close()


# --- query and counts ------------------------------------------------------------------


async def test_query_filters_and_orders_newest_first(center: Center) -> None:
    jammed = jam(center)
    await center.clock.advance(MINUTE)
    fire = center.alarms.raise_alarm(
        "fire_alarm", "fire-panel", "fire in zone 2", severity=Severity.CRITICAL
    )
    await center.clock.advance(MINUTE)
    offline = center.alarms.raise_alarm("device_offline", "co2-hall", "silent")
    center.alarms.clear("device_offline", "co2-hall")
    center.alarms.ack(offline.id)
    center.alarms.ack(jammed.id)

    ids = [alarm.id for alarm in center.alarms.query()]
    assert ids == [offline.id, fire.id, jammed.id]
    assert [a.id for a in center.alarms.query(state=AlarmState.ACTIVE)] == [fire.id, jammed.id]
    assert [a.id for a in center.alarms.query(state=AlarmState.CLEARED)] == [offline.id]
    assert [a.id for a in center.alarms.query(acked=False)] == [fire.id]
    assert [a.id for a in center.alarms.query(acked=True)] == [offline.id, jammed.id]
    assert [a.id for a in center.alarms.query(open_only=True)] == [fire.id, jammed.id]
    assert [a.id for a in center.alarms.query(kind="fire_alarm,device_offline")] == [
        offline.id,
        fire.id,
    ]
    assert [a.id for a in center.alarms.query(limit=1)] == [offline.id]


async def test_counts_for_health(center: Center) -> None:
    assert center.alarms.counts() == {"active": 0, "unacknowledged": 0, "active_critical": 0}

    fire = center.alarms.raise_alarm("fire_alarm", "panel", "fire", severity=Severity.CRITICAL)
    jammed = jam(center)
    center.alarms.raise_alarm("device_offline", "co2-hall", "silent")
    center.alarms.clear("device_offline", "co2-hall")  # cleared, still unacknowledged
    center.alarms.ack(jammed.id)  # acknowledged, still active

    assert center.alarms.counts() == {"active": 2, "unacknowledged": 2, "active_critical": 1}

    center.alarms.clear("fire_alarm", "panel")
    center.alarms.ack(fire.id)

    assert center.alarms.counts() == {"active": 1, "unacknowledged": 1, "active_critical": 0}


def test_get_unknown_is_none(center: Center) -> None:
    assert center.alarms.get(999) is None


# --- to_json ---------------------------------------------------------------------------


async def test_alarm_to_json_has_every_field_with_offsets(center: Center) -> None:
    alarm = jam(center, booking_id="b-7", details={"attempts": 3})
    await center.clock.advance(MINUTE)
    acked = center.alarms.ack(alarm.id, by="mei")

    assert acked.to_json() == {
        "id": alarm.id,
        "kind": "lock_jammed",
        "source": "hall-lock",
        "severity": "alarm",
        "state": "active",
        "acked": True,
        "open": True,
        "message": "bolt did not move",
        "room": "hall",
        "device": "hall-lock",
        "booking_id": "b-7",
        "raised": "2026-11-23T10:00:00+08:00",
        "updated": "2026-11-23T10:01:00+08:00",
        "cleared": None,
        "acked_at": "2026-11-23T10:01:00+08:00",
        "acked_by": "mei",
        "count": 1,
        "details": {"attempts": 3},
    }


def test_the_book_and_its_log_must_share_a_connection(tmp_path: Path) -> None:
    clock = VirtualClock(START)
    one = open_database(tmp_path / "one")
    other = open_database(tmp_path / "other")
    try:
        with pytest.raises(ValueError, match="connection"):
            AlarmBook(one, EventLog(other, clock), clock)
    finally:
        one.close()
        other.close()
