"""Device health: offline by LWT, silence or failed polls raises ``device_offline``;
back online clears it with a ``device_online`` event.

On the virtual clock around the access rig (real SQLite, alarms and event
log); the end-to-end path through Mosquitto is in ``test_device_health_live``
below, with the whole controller.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from controller.alarms import AlarmState
from controller.clock import VirtualClock
from controller.device_health import DeviceHealth
from controller.events import AvailabilityChanged, AvailabilitySource
from controller.readings import ClimateReading
from controller.silence import SilenceWatch
from controller.site import Site, load_site
from tests.access_rig import AccessRig
from tests.conftest import CHANGBAI, PREFIX, Probe, RunningController, wait_until

SH = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 11, 23, 10, 0, tzinfo=SH)


class Rig(AccessRig):
    health: DeviceHealth

    def start(self) -> None:
        super().start()
        self.health = DeviceHealth(self.state, self.bus, self.alarms)
        self.health.start()

    def offline_alarm(self, device_id: str) -> AlarmState | None:
        alarms = self.alarms.query(kind="device_offline")
        found = [alarm for alarm in alarms if alarm.source == device_id]
        return found[0].state if found else None

    def event_kinds(self, device_id: str) -> list[str]:
        return [event.kind for event in self.events.query(limit=1000) if event.device == device_id]

    def poll_result(self, device_id: str, online: bool) -> None:
        self.bus.publish(
            AvailabilityChanged(device_id, online, AvailabilitySource.POLL, self.clock.now())
        )


@pytest.fixture
def rig() -> Iterator[Rig]:
    site: Site = load_site(CHANGBAI)
    instance = Rig(site, VirtualClock(START), None)
    instance.start()
    yield instance
    instance.stop()


def test_a_device_offline_by_its_lwt_raises_an_alarm_and_back_online_clears_it(rig: Rig) -> None:
    rig.occupancy("gym", True)
    assert rig.offline_alarm("occ-gym") is None

    rig.availability("occ-gym", False)
    assert rig.offline_alarm("occ-gym") is AlarmState.ACTIVE
    alarm = rig.alarms.query(kind="device_offline")[0]
    assert alarm.device == "occ-gym"
    assert alarm.room == "gym"
    assert "availability topic" in alarm.message

    rig.availability("occ-gym", True)
    assert rig.offline_alarm("occ-gym") is AlarmState.CLEARED
    assert rig.event_kinds("occ-gym") == ["device_offline", "device_online"]


def test_a_reading_from_an_offline_device_brings_it_back(rig: Rig) -> None:
    rig.availability("temp-love-room", False)
    assert rig.offline_alarm("temp-love-room") is AlarmState.ACTIVE
    rig.report("temp-love-room", ClimateReading(27.0, 60.0))
    assert rig.offline_alarm("temp-love-room") is AlarmState.CLEARED


def test_repeated_offline_reports_make_one_alarm_and_one_event(rig: Rig) -> None:
    rig.availability("occ-library", False)
    rig.availability("occ-library", False)
    rig.poll_result("occ-library", False)
    assert len(rig.alarms.query(kind="device_offline")) == 1
    assert rig.event_kinds("occ-library") == ["device_offline"]


def test_failing_modbus_polls_raise_the_alarm_and_a_good_poll_clears_it(rig: Rig) -> None:
    rig.poll_result("ac-love-room", True)
    assert rig.offline_alarm("ac-love-room") is None
    rig.poll_result("ac-love-room", False)
    alarm = rig.alarms.query(kind="device_offline")[0]
    assert alarm.source == "ac-love-room"
    assert "Modbus polls" in alarm.message
    rig.poll_result("ac-love-room", True)
    assert rig.offline_alarm("ac-love-room") is AlarmState.CLEARED


def test_the_fire_panel_has_its_own_alarm_and_not_a_second_one(rig: Rig) -> None:
    rig.fire(False)
    rig.availability("fire-panel", False)
    assert rig.alarms.is_active("fire_panel_offline", "fire-panel")
    assert rig.offline_alarm("fire-panel") is None


async def test_a_silent_device_goes_offline_with_an_alarm_after_its_missed_intervals(
    rig: Rig,
) -> None:
    watch = SilenceWatch(rig.state, rig.bus, rig.clock, missed=3)
    watch.check()  # the controller's start: every device gets its allowance from now
    rig.occupancy("love-room", True)
    interval = rig.site.device_by_id["occ-love-room"].interval
    assert interval is not None

    await rig.clock.advance(interval * 3 - timedelta(seconds=1))
    watch.check()
    assert rig.offline_alarm("occ-love-room") is None

    await rig.clock.advance(1)
    watch.check()
    assert rig.offline_alarm("occ-love-room") is AlarmState.ACTIVE
    alarm = next(a for a in rig.alarms.query(kind="device_offline") if a.source == "occ-love-room")
    assert "silent" in alarm.message
    assert rig.state.device("occ-love-room").stale, "its last reading no longer counts"
    assert rig.state.room("love-room").occupied is None


def test_the_health_summary_lists_offline_devices_with_why_and_since(rig: Rig) -> None:
    rig.occupancy("gym", True)
    rig.availability("occ-gym", False)
    summary = rig.health.summary()
    assert summary["status"] == "degraded"
    assert summary["offline"] == ["occ-gym"]
    detail = summary["offline_details"][0]
    assert detail["reason"] == "lwt"
    assert detail["since"] == START.isoformat()
    assert summary["online"] == 0
    assert "occ-love-room" in summary["not_heard_yet"]
    rig.availability("occ-gym", True)
    assert rig.health.summary()["status"] == "ok"


async def test_device_offline_end_to_end_through_the_broker(
    controller: RunningController, probe: Probe
) -> None:
    probe.subscribe(f"{PREFIX}/events")
    probe.publish(f"{PREFIX}/occ-corridor/state", b'{"occupied": true, "count": 4}')
    probe.publish(f"{PREFIX}/occ-corridor/availability", b"offline", retain=True)

    def event(kind: str) -> bool:
        return any(
            json.loads(payload).get("kind") == kind
            and json.loads(payload).get("device") == "occ-corridor"
            for payload in probe.received(f"{PREFIX}/events")
        )

    await wait_until(lambda: event("device_offline"), message="device_offline on the events topic")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{controller.base_url}/api/alarms?kind=device_offline") as reply:
            alarms = (await reply.json())["alarms"]
        assert [(alarm["source"], alarm["state"]) for alarm in alarms] == [
            ("occ-corridor", "active")
        ]
        async with session.get(f"{controller.base_url}/api/health") as reply:
            health = await reply.json()
        assert health["devices"]["offline"] == ["occ-corridor"]
        async with session.get(f"{controller.base_url}/api/rooms/corridor") as reply:
            room = await reply.json()
        corridor = {device["id"]: device for device in room["devices"]}["occ-corridor"]
        assert corridor["reading_stale"] is True
        assert corridor["reading"]["count"] == 4
        assert room["state"]["count"] is None, "a stale count is never shown as current"

    probe.publish(f"{PREFIX}/occ-corridor/availability", b"online", retain=True)
    await wait_until(lambda: event("device_online"), message="device_online on the events topic")
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{controller.base_url}/api/alarms?kind=device_offline") as reply,
    ):
        alarms = (await reply.json())["alarms"]
    assert alarms[0]["state"] == "cleared"
