"""PointRecorder: what devices said and what rooms are, as the points CONTRACT §6 names.

The recorder is fed the way the controller feeds it (readings on the bus, the
live state, the visitor counter, bookings through the event log), and the test
reads the line protocol a database would receive.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.clock import VirtualClock
from controller.readings import (
    AcMode,
    AirConditionerReading,
    CabinetReading,
    ClimateReading,
    DoorState,
    FireAlarmReading,
    LockReading,
    LockState,
    OccupancyReading,
)
from controller.site import Site, load_site
from controller.timeseries.points import Point, encode_lines
from controller.timeseries.recorder import PointRecorder
from tests.access_rig import AccessRig
from tests.conftest import CHANGBAI
from tests.visitors_rig import VisitorRig

T = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
T_NS = int(T.timestamp()) * 1_000_000_000


@pytest.fixture
def site() -> Site:
    return load_site(CHANGBAI)


def lines(points: list[Point]) -> list[str]:
    return encode_lines(points).decode().splitlines()


async def test_every_device_kind_becomes_its_measurement(site: Site) -> None:
    rig = VisitorRig(site, VirtualClock(T), data_dir=None)
    points: list[Point] = []
    recorder = PointRecorder(site, rig.state, rig.bus, points.append)
    await rig.start()
    recorder.start([], T)
    points.clear()  # the rooms' initial state, tested below

    rig.report("occ-love-room", OccupancyReading(True, 3))
    rig.report("temp-love-room", ClimateReading(27.5, 61.0))
    rig.report("temp-outdoor", ClimateReading(temperature=36.0))
    rig.report("lock-gym", LockReading(LockState.LOCKED, DoorState.OPEN))
    rig.report("fire-panel", FireAlarmReading(False))
    rig.report(
        "ac-love-room",
        AirConditionerReading(True, AcMode.COOL, 26.0, room_temperature=27.4, fault=0),
    )
    rig.report("cabinet-1", CabinetReading((True, False, False), (True, True, False)))

    device_lines = [line for line in lines(points) if not line.startswith("room,")]
    assert device_lines == [
        "occupancy,device=occ-love-room,room=love-room,site=changbai"
        f" occupied=true,count=3i {T_NS}",
        "climate,device=temp-love-room,room=love-room,site=changbai"
        f" temperature=27.5,humidity=61.0 {T_NS}",
        # A site-wide sensor has no room tag, and an unknown humidity is left out.
        f"climate,device=temp-outdoor,site=changbai temperature=36.0 {T_NS}",
        f"lock,device=lock-gym,room=gym,site=changbai locked=true,door_open=true {T_NS}",
        f"fire,device=fire-panel,site=changbai alarm=false {T_NS}",
        "ac,device=ac-love-room,room=love-room,site=changbai"
        f' power=true,mode="cool",setpoint=26.0,room_temperature=27.4,fault=0i {T_NS}',
        f"cabinet,device=cabinet-1,site=changbai occupied_compartments=2i,open_doors=1i {T_NS}",
    ]
    await rig.stop()


async def test_retained_readings_are_not_recorded_again(site: Site) -> None:
    rig = VisitorRig(site, VirtualClock(T), data_dir=None)
    points: list[Point] = []
    recorder = PointRecorder(site, rig.state, rig.bus, points.append)
    await rig.start()
    recorder.start([], T)
    points.clear()
    rig.report("temp-love-room", ClimateReading(27.5, 61.0), retained=True)
    assert not [p for p in points if p.series.measurement == "climate"]
    await rig.stop()


async def test_people_are_recorded_as_increments_with_the_people_inside(
    site: Site, tmp_path: Path
) -> None:
    clock = VirtualClock(T)
    rig = VisitorRig(site, clock, data_dir=tmp_path)
    points: list[Point] = []
    recorder = PointRecorder(site, rig.state, rig.bus, points.append)
    await rig.start()
    recorder.start([], T)
    rig.count(100, 40)  # the counter's first report: its baseline, nothing counted
    await clock.advance(10)
    rig.count(107, 41)
    await clock.advance(10)
    rig.count(107, 41)  # a repeat counts nothing
    people = [p for p in points if p.series.measurement == "people"]
    assert lines(people) == [
        "people,device=counter-entrance,site=changbai entries=7i,exits=1i,inside=6i"
        f" {T_NS + 10_000_000_000}"
    ]
    await rig.stop()


async def test_a_room_point_carries_the_whole_state_and_only_when_it_changes(
    site: Site,
) -> None:
    clock = VirtualClock(T)
    rig = VisitorRig(site, clock, data_dir=None)
    points: list[Point] = []
    recorder = PointRecorder(site, rig.state, rig.bus, points.append)
    await rig.start()
    recorder.start([], T)
    initial = [line for line in lines(points) if line.startswith("room,room=love-room,")]
    # Nothing is known yet but that no booking holds the room.
    assert initial == [f"room,room=love-room,site=changbai booked=false {T_NS}"]
    points.clear()

    rig.occupancy("love-room", 2)
    rig.report("temp-love-room", ClimateReading(27.5, 61.0))  # the room changes, not these
    rig.occupancy("love-room", 2)
    await clock.advance(30)
    rig.availability("occ-love-room", online=False)  # unknown from now on
    room_lines = [line for line in lines(points) if line.startswith("room,")]
    assert room_lines == [
        f"room,room=love-room,site=changbai occupied=true,count=2i,booked=false {T_NS}",
        f"room,room=love-room,site=changbai booked=false {T_NS + 30_000_000_000}",
    ]
    await rig.stop()


async def test_booked_follows_the_booking_from_start_to_end(site: Site) -> None:
    clock = VirtualClock(T)
    rig = AccessRig(site, clock, data_dir=None)
    points: list[Point] = []
    recorder = PointRecorder(site, rig.state, rig.bus, points.append)
    rig.events.listen(recorder.on_logged_event)
    rig.start()
    rig.occupancy("hui-xin-room", occupied=False)  # known empty: nobody comes
    recorder.start(rig.booking_store.unfinished(), T)
    rig.book("b-1", "hui-xin-room", T + timedelta(minutes=20), T + timedelta(minutes=50))
    rig.access.reconcile()

    def booked() -> list[tuple[int, bool]]:
        return [
            ((p.time_ns - T_NS) // 60_000_000_000, dict(p.fields)["booked"])
            for p in points
            if p.series.measurement == "room" and p.series.tag("room") == "hui-xin-room"
        ]

    for _ in range(60):
        await clock.advance(60)
        rig.access.evaluate("hui-xin-room", clock.now())
    # Free, then held from the booking's start until nobody came (released at +15 min).
    assert booked() == [(0, False), (20, True), (35, False)]
    assert rig.status("b-1") == "no_show"
    rig.stop()


async def test_a_running_booking_is_booked_after_a_restart(site: Site) -> None:
    clock = VirtualClock(T)
    rig = AccessRig(site, clock, data_dir=None)
    rig.start()
    rig.book("b-1", "hui-xin-room", T - timedelta(minutes=5), T + timedelta(minutes=50))
    rig.access.reconcile()
    assert rig.status("b-1") == "active"
    points: list[Point] = []
    recorder = PointRecorder(site, rig.state, rig.bus, points.append)
    recorder.start(rig.booking_store.unfinished(), T)
    (point,) = [p for p in points if p.series.tag("room") == "hui-xin-room"]
    assert dict(point.fields) == {"booked": True}
    rig.stop()
