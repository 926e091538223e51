"""The over_capacity alarm and its webhook, on a virtual clock with real SQLite.

The affairs hall holds 120 people. Its mmWave counter reports head counts;
the alarm is raised when more are inside, cleared once the count is back
within capacity (``capacity_hysteresis`` below it), and the booking system
hears of each raise once. The last test sends the webhooks to a real HTTP
receiver on a loopback port.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from controller.alarms import Alarm, AlarmState
from controller.clock import VirtualClock
from controller.event_log import Severity
from controller.site import Site
from controller.webhooks import verify
from tests.conftest import (
    PREFIX,
    Broker,
    Probe,
    controller_settings,
    start_controller,
    wait_until,
)
from tests.test_webhooks import Receiver
from tests.visitors_rig import WEBHOOK_SECRET, VisitorRig

SH = ZoneInfo("Asia/Shanghai")
T = datetime(2026, 11, 23, 10, 0, tzinfo=SH)
HALL = "affairs-hall"
QUEUE_ONLY = "http://127.0.0.1:9/booking-system"  # deliveries are queued, never sent

MakeRig = Callable[..., Awaitable[VisitorRig]]


@pytest.fixture
async def make_rig(site: Site, tmp_path: Path) -> AsyncIterator[MakeRig]:
    made: list[VisitorRig] = []

    async def make(*, on: Site | None = None, webhook_url: str | None = QUEUE_ONLY) -> VisitorRig:
        rig = VisitorRig(
            on or site, VirtualClock(T), data_dir=tmp_path / "data", webhook_url=webhook_url
        )
        await rig.start()
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """The booking system's end of the webhooks, on a loopback port."""
    instance = Receiver()
    await instance.start()
    yield instance
    await instance.stop()


def hall_alarms(rig: VisitorRig) -> list[Alarm]:
    return [alarm for alarm in rig.alarms.query(kind="over_capacity") if alarm.source == HALL]


def active(rig: VisitorRig) -> Alarm | None:
    found = [alarm for alarm in hall_alarms(rig) if alarm.state is AlarmState.ACTIVE]
    return found[0] if found else None


def webhooks(rig: VisitorRig) -> list[dict[str, Any]]:
    return [body for body in rig.webhook_bodies() if body["type"] == "room.over_capacity"]


async def test_more_people_than_the_capacity_raise_the_alarm_and_one_webhook(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig()
    rig.occupancy(HALL, 120)
    assert active(rig) is None  # at capacity is fine
    await rig.clock.advance(60)
    rig.occupancy(HALL, 130)
    alarm = active(rig)
    assert alarm is not None
    assert alarm.severity is Severity.WARNING
    assert alarm.room == HALL
    assert dict(alarm.details) == {"count": 130, "capacity": 120, "peak": 130}
    assert alarm.message == "Affairs hall over capacity: 130 people, capacity 120"
    (raised,) = rig.logged_kinds("over_capacity")
    assert (raised.state, raised.room, raised.alarm_id) == ("active", HALL, alarm.id)
    (hook,) = webhooks(rig)
    assert hook["data"] == {
        "room": HALL,
        "count": 130,
        "capacity": 120,
        "time": "2026-11-23T10:01:00+08:00",
    }
    assert hook["time"] == "2026-11-23T10:01:00+08:00"
    assert hook["site"] == "changbai"


async def test_a_new_peak_updates_the_alarm_without_a_new_webhook(make_rig: MakeRig) -> None:
    rig = await make_rig()
    rig.occupancy(HALL, 125)
    for count in (131, 128, 140, 122, 121):
        await rig.clock.advance(30)
        rig.occupancy(HALL, count)
    alarm = active(rig)
    assert alarm is not None
    assert dict(alarm.details) == {"count": 140, "capacity": 120, "peak": 140}
    assert alarm.count == 3  # raised, then two new peaks
    assert len(rig.logged_kinds("over_capacity")) == 1
    assert len(webhooks(rig)) == 1
    assert rig.capacity.status() == {
        "over_capacity": [{"room": HALL, "count": 121, "capacity": 120, "peak": 140}]
    }


async def test_it_clears_once_back_below_the_capacity(make_rig: MakeRig) -> None:
    rig = await make_rig()
    rig.occupancy(HALL, 130)
    await rig.clock.advance(60)
    rig.occupancy(HALL, 120)  # at capacity: the default hysteresis of 1 keeps it
    assert active(rig) is not None
    await rig.clock.advance(60)
    rig.occupancy(HALL, 119)
    assert active(rig) is None
    (alarm,) = hall_alarms(rig)
    assert alarm.state is AlarmState.CLEARED
    cleared = rig.logged_kinds("over_capacity")[-1]
    assert cleared.state == "cleared"
    assert "back within capacity" in cleared.message
    assert "119" in cleared.message
    assert rig.capacity.status() == {"over_capacity": []}
    assert len(webhooks(rig)) == 1


async def test_the_hysteresis_is_a_site_setting(make_rig: MakeRig, site: Site) -> None:
    wider = site.model_copy(
        update={"rules": site.rules.model_copy(update={"capacity_hysteresis": 10})}
    )
    rig = await make_rig(on=wider)
    rig.occupancy(HALL, 121)
    for count in (115, 111):
        await rig.clock.advance(30)
        rig.occupancy(HALL, count)
        assert active(rig) is not None, count
    await rig.clock.advance(30)
    rig.occupancy(HALL, 110)
    assert active(rig) is None


async def test_each_raise_sends_its_webhook_once(make_rig: MakeRig) -> None:
    rig = await make_rig()
    for count in (130, 100, 125, 135, 90, 121):
        await rig.clock.advance(60)
        rig.occupancy(HALL, count)
    assert [hook["data"]["count"] for hook in webhooks(rig)] == [130, 125, 121]
    # Never acknowledged, so the one open alarm was reopened each time.
    assert len(hall_alarms(rig)) == 1
    assert [event.state for event in rig.logged_kinds("over_capacity")] == [
        "active",
        "cleared",
        "active",
        "cleared",
        "active",
    ]


async def test_an_unknown_count_neither_raises_nor_clears(make_rig: MakeRig) -> None:
    rig = await make_rig()
    rig.occupancy(HALL, 130)
    await rig.clock.advance(60)
    rig.availability("occ-affairs-hall", False)  # the sensor went offline
    assert rig.state.room(HALL).count is None
    assert active(rig) is not None
    await rig.clock.advance(60)
    rig.availability("occ-affairs-hall", True)  # back, but no fresh count yet
    assert active(rig) is not None
    rig.occupancy(HALL, 100)
    assert active(rig) is None
    # Presence without a count (a PIR) says nothing about capacity either.
    rig.occupancy(HALL, None, occupied=True)
    assert rig.state.room(HALL).count is None
    assert active(rig) is None
    assert len(webhooks(rig)) == 1


async def test_rooms_without_a_capacity_or_without_a_count_are_left_alone(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig()
    rig.occupancy("love-room", 13)  # capacity 12
    rig.occupancy("gym", 20)  # capacity 20: not over
    assert [alarm.source for alarm in rig.alarms.query(kind="over_capacity")] == ["love-room"]
    assert [hook["data"]["room"] for hook in webhooks(rig)] == ["love-room"]


async def test_start_evaluates_every_room(make_rig: MakeRig) -> None:
    rig = await make_rig()
    rig.capacity.stop()
    rig.occupancy(HALL, 150)  # heard while the guard was not listening
    assert active(rig) is None
    rig.capacity.start()
    alarm = active(rig)
    assert alarm is not None
    assert alarm.details["count"] == 150


async def test_after_a_restart_an_alarm_clears_once_the_count_is_known(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig()
    rig.occupancy(HALL, 130)
    await rig.restart()
    assert active(rig) is not None  # no count known yet: nothing changes
    await rig.clock.advance(60)
    rig.occupancy(HALL, 133)  # still over after the restart: no second webhook
    rig.occupancy(HALL, 131)
    alarm = active(rig)
    assert alarm is not None
    assert alarm.details["peak"] == 133
    assert len(webhooks(rig)) == 1
    rig.occupancy(HALL, 80)
    assert active(rig) is None
    assert len(rig.logged_kinds("over_capacity")) == 2  # raised, cleared


async def test_webhooks_reach_the_booking_system_once_per_raise(
    make_rig: MakeRig, receiver: Receiver
) -> None:
    rig = await make_rig(webhook_url=receiver.url)
    sender = asyncio.create_task(rig.webhooks.run())
    try:
        rig.occupancy(HALL, 130)
        await wait_until(lambda: len(receiver.delivered()) == 1, message="the first webhook")
        for count in (140, 135, 119):
            await rig.clock.advance(30)
            rig.occupancy(HALL, count)
        await rig.clock.advance(30)
        rig.occupancy(HALL, 124)  # raised again
        await wait_until(lambda: len(receiver.delivered()) == 2, message="the second webhook")
        await wait_until(lambda: rig.webhooks.status()["pending"] == 0, message="an empty queue")
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    first, second = receiver.delivered()
    for request, count in ((first, 130), (second, 124)):
        assert request.headers["X-Center-Event"] == "room.over_capacity"
        assert verify(WEBHOOK_SECRET, request.body, request.headers["X-Center-Signature"])
        assert request.json()["data"]["room"] == HALL
        assert request.json()["data"]["count"] == count
        assert request.json()["data"]["capacity"] == 120
    assert len(receiver.requests) == 2


# --- Live: Mosquitto and the whole controller -----------------------------------------------


@pytest.mark.broker
async def test_live_over_capacity_is_raised_published_and_cleared(
    broker: Broker, probe: Probe, site: Site
) -> None:
    probe.subscribe(f"{PREFIX}/events")
    running = await start_controller(controller_settings(broker), site)

    def hall(payload: bytes, state: str) -> bool:
        event = json.loads(payload)
        return bool(
            event["kind"] == "over_capacity" and event["room"] == HALL and event["state"] == state
        )

    try:
        async with aiohttp.ClientSession() as http:

            async def alarms() -> list[dict[str, Any]]:
                url = f"{running.base_url}/api/alarms?kind=over_capacity"
                async with http.get(url) as response:
                    assert response.status == 200
                    found: list[dict[str, Any]] = (await response.json())["alarms"]
                    return found

            occupancy = f"{PREFIX}/occ-affairs-hall/state"
            probe.publish(occupancy, json.dumps({"occupied": True, "count": 130}))
            raised = json.loads(
                await probe.next_payload(f"{PREFIX}/events", lambda p: hall(p, "active"))
            )
            assert raised["severity"] == "warning"
            assert raised["details"] == {"count": 130, "capacity": 120, "peak": 130}
            (alarm,) = await alarms()
            assert (alarm["source"], alarm["state"], alarm["room"]) == (HALL, "active", HALL)
            assert running.service.health()["capacity"]["over_capacity"][0]["room"] == HALL

            probe.publish(occupancy, json.dumps({"occupied": True, "count": 119}))
            cleared = json.loads(
                await probe.next_payload(f"{PREFIX}/events", lambda p: hall(p, "cleared"))
            )
            assert "back within capacity" in cleared["message"]
            (alarm,) = await alarms()
            assert alarm["state"] == "cleared"
            assert running.service.health()["capacity"] == {"over_capacity": []}
    finally:
        await running.shutdown()
