"""The love room's climate over whole days, on a virtual clock (CONTRACT §5).

Each test runs the real climate controller with LiveState, the bus, SQLite,
the event log and alarms (``tests/climate_rig.py``); only the Modbus link is
a fake that answers like the unit. The site is the example Changbai center:
the love room's AC follows the rule, the convergence hall's does not.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from controller.clock import VirtualClock
from controller.readings import AcMode
from controller.site import Site
from rules.climate import AcSetting
from tests.climate_rig import Change, ClimateRig, FakeAc, timeline

SH = ZoneInfo("Asia/Shanghai")
SUMMER = date(2026, 7, 20)
WINTER = date(2027, 1, 18)
AC = "ac-love-room"
HALL_AC = "ac-convergence-hall"
ROOM = "love-room"


def at(hour: int, minute: int = 0, *, day: date = SUMMER) -> datetime:
    if hour == 24:
        return datetime.combine(day + timedelta(days=1), time(0, minute), tzinfo=SH)
    return datetime.combine(day, time(hour, minute), tzinfo=SH)


MakeRig = Callable[..., Awaitable[ClimateRig]]


@pytest.fixture
async def make_rig(site: Site) -> AsyncIterator[MakeRig]:
    made: list[ClimateRig] = []

    async def make(
        start: datetime,
        *,
        data_dir: Path | None = None,
        units: dict[str, FakeAc] | None = None,
        rig_site: Site | None = None,
    ) -> ClimateRig:
        rig = ClimateRig(rig_site or site, VirtualClock(start), data_dir, units)
        await rig.start()
        made.append(rig)
        return rig

    yield make
    for rig in made:
        if rig.task is not None:
            await rig.stop()


def no_restart_within_min_off(changes: list[Change], minimum: timedelta) -> None:
    last_off: datetime | None = None
    for previous, change in itertools.pairwise(changes):
        if previous.power and not change.power:
            last_off = change.time
        if not previous.power and change.power and last_off is not None:
            assert change.time - last_off >= minimum, (last_off, change)


# --- A heat-wave day --------------------------------------------------------------------------

# Outdoor temperature from each time on (the sensor reports every 10 minutes).
HEAT_WAVE_OUTDOOR = [
    (at(0), 28.0),
    (at(9), 33.0),
    (at(10), 35.0),  # heat wave, during center hours: pre-cool the empty room
    (at(12), 37.0),
    (at(15), 36.0),
    (at(18), 34.6),  # below 35, but not 0.5 below: still a heat wave for a cooling unit
    (at(20), 35.2),
    (at(22), 31.0),
]

# (time, occupied or None for no new report, room temperature or None for no new report)
HEAT_WAVE_ROOM: list[tuple[datetime, bool | None, float | None]] = [
    (at(0), False, 27.5),
    (at(2, 10), True, None),  # a rider comes in from the warm night: cool
    (at(2, 30), None, 26.2),
    (at(2, 40), None, 25.8),  # within the hysteresis: keeps cooling
    (at(2, 50), False, None),  # leaves: off 15 min later, outside center hours
    (at(3, 6), True, 26.4),  # back a minute after the off: the compressor rests until 03:08
    (at(3, 30), False, 25.9),  # off at 03:45
    (at(7), None, 26.3),  # warm, but nobody is there
    (at(11), True, 26.8),  # riders during the heat wave
    (at(11, 40), False, 26.0),
    (at(20, 30), True, 26.5),  # the last riders of the center's day
    (at(20, 50), False, 25.9),  # the heat wave ends at 21:00; off 15 min after they left
    (at(23), True, 25.8),  # a night rider: comfortable, the unit stays off
    (at(23, 20), None, 26.3),  # warmer: on
    (at(23, 40), False, None),  # off at 23:55
]


def outdoor_at(moment: datetime) -> float:
    value = HEAT_WAVE_OUTDOOR[0][1]
    for since, celsius in HEAT_WAVE_OUTDOOR:
        if since <= moment:
            value = celsius
    return value


async def play_day(
    rig: ClimateRig,
    room_script: list[tuple[datetime, bool | None, float | None]],
    outdoor: Callable[[datetime], float],
    end: datetime,
    extra: dict[datetime, Callable[[], None]] | None = None,
) -> None:
    """Walk the day a minute at a time, playing the script as the sensors would report it."""
    script = {moment: (occupied, celsius) for moment, occupied, celsius in room_script}
    extra = extra or {}
    while rig.clock.now() < end:
        now = rig.clock.now()
        if now.minute % 10 == 0:
            rig.outdoor(outdoor(now))
        if now in script:
            occupied, celsius = script[now]
            if celsius is not None:
                rig.temperature(ROOM, celsius)
            if occupied is not None:
                rig.occupancy(ROOM, occupied, 2 if occupied else 0)
        if now in extra:
            extra[now]()
        await rig.walk(now + timedelta(minutes=1))


async def test_a_heat_wave_day_in_the_love_room(make_rig: MakeRig) -> None:
    rig = await make_rig(at(0))
    rig.poll_all()  # first polls: the units are heard from
    remote_off = {at(13): lambda: rig.acs.by_hand(AC, power=False)}

    await play_day(rig, HEAT_WAVE_ROOM, outdoor_at, at(24), remote_off)

    assert timeline(rig.changes(AC)) == [
        ("02:10", True, "cool", 26.0),  # occupied and 27.5 °C
        ("03:05", False, "cool", 26.0),  # empty since 02:50
        ("03:08", True, "cool", 26.0),  # back at 03:06, held 3 min after the off
        ("03:45", False, "cool", 26.0),  # empty since 03:30
        ("10:00", True, "cool", 26.0),  # 35 °C outdoor in center hours: pre-cooling, empty
        ("13:00", False, "cool", 26.0),  # someone with the remote
        ("13:03", True, "cool", 26.0),  # back on after the compressor's rest
        ("21:05", False, "cool", 26.0),  # closed at 21:00, empty since 20:50
        ("23:20", True, "cool", 26.0),  # a night rider, 26.3 °C
        ("23:55", False, "cool", 26.0),  # empty since 23:40
    ]
    assert [change.by for change in rig.changes(AC)].count("remote") == 1
    no_restart_within_min_off(rig.changes(AC), timedelta(minutes=3))
    # The first command set mode and setpoint; later ones only switch power.
    writes = rig.acs.writes_to(AC)
    assert writes[0] == (at(2, 10), ("mode=cool", "setpoint=26.0", "power=true"))
    assert all(points in {("power=true",), ("power=false",)} for _, points in writes[1:])
    assert len(writes) == 9  # one per change the controller made, none repeated
    # Every command is in the event log with its cause.
    commands = rig.logged("ac_command")
    assert [(event.time.strftime("%H:%M"), event.details["cause"]) for event in commands] == [
        ("02:10", "occupied_hot"),
        ("03:05", "empty"),
        ("03:08", "occupied_hot"),
        ("03:45", "empty"),
        ("10:00", "heat_wave"),
        ("13:03", "heat_wave"),
        ("21:05", "empty"),
        ("23:20", "occupied_hot"),
        ("23:55", "empty"),
    ]
    assert commands[0].device == AC
    assert commands[0].room == ROOM
    assert dict(commands[0].details) == {
        "power": True,
        "mode": "cool",
        "setpoint": 26.0,
        "cause": "occupied_hot",
    }
    # The convergence hall's AC is not the rule's: never commanded.
    assert rig.acs.writes_to(HALL_AC) == []


async def test_the_compressor_waits_are_visible_while_they_last(make_rig: MakeRig) -> None:
    rig = await make_rig(at(3))
    rig.poll_all()
    rig.outdoor(28.0)
    rig.temperature(ROOM, 27.0)
    rig.occupancy(ROOM, True, 1)
    await rig.walk(at(3, 1))
    rig.acs.by_hand(AC, power=False)  # at 03:01
    await rig.walk(at(3, 2))

    status = rig.climate.status()["air_conditioners"][AC]
    entry = rig.climate.entry(AC)

    assert status["cause"] == "min_off_wait"
    assert status["min_off_until"] == at(3, 4).isoformat()
    assert entry["rule"]["cause"] == "min_off_wait"
    assert entry["rule"]["power"] is True  # what it will do once it may
    assert entry["min_off_until"] == at(3, 4).isoformat()
    await rig.walk(at(3, 5))
    assert timeline(rig.changes(AC))[-1] == ("03:04", True, "cool", 26.0)


# --- A cold day ---------------------------------------------------------------------------


async def test_a_cold_day_heats_the_occupied_room_only(make_rig: MakeRig) -> None:
    rig = await make_rig(at(6, day=WINTER))
    rig.ac(AC).room_temperature = 14.0
    rig.poll_all()

    def outdoor(moment: datetime) -> float:
        if moment < at(12, day=WINTER):
            return 4.0
        if moment < at(14, day=WINTER):
            return 10.3  # warming a little: within the hysteresis, heating goes on
        return 11.0

    script: list[tuple[datetime, bool | None, float | None]] = [
        (at(6, day=WINTER), False, 15.0),
        (at(9, day=WINTER), True, 15.5),
        (at(10, day=WINTER), False, 19.0),
        (at(11, day=WINTER), True, 18.0),
        (at(15, day=WINTER), False, 21.0),
    ]
    await play_day(rig, script, outdoor, at(16, day=WINTER))

    assert timeline(rig.changes(AC)) == [
        ("09:00", True, "heat", 20.0),
        ("10:15", False, "heat", 20.0),
        ("11:00", True, "heat", 20.0),
        ("14:00", False, "heat", 20.0),  # 11 °C outdoor, occupied and comfortable: off
    ]
    causes = [event.details["cause"] for event in rig.logged("ac_command")]
    assert causes == ["occupied_cold", "empty", "occupied_cold", "occupied_comfortable"]


# --- Faults -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", [AC, HALL_AC])
async def test_an_ac_fault_is_raised_and_cleared(make_rig: MakeRig, device: str) -> None:
    rig = await make_rig(at(12))
    rig.poll_all()
    room = "love-room" if device == AC else "convergence-hall"

    rig.ac(device).fault = 7
    await rig.walk(at(12, 1))
    alarm = rig.alarm("ac_fault", device)
    assert alarm is not None
    assert alarm.state.value == "active"
    assert alarm.device == device
    assert alarm.room == room
    assert dict(alarm.details) == {"code": 7}
    assert "7" in alarm.message

    await rig.walk(at(12, 10))  # the same fault polled again: still one alarm, one event
    assert len([e for e in rig.logged("ac_fault") if e.device == device]) == 1

    rig.ac(device).fault = 0
    await rig.walk(at(12, 11))
    alarm = rig.alarm("ac_fault", device)
    assert alarm is not None
    assert alarm.state.value == "cleared"
    assert [event.state for event in rig.logged("ac_fault")] == ["active", "cleared"]


async def test_a_changed_fault_code_updates_the_alarm(make_rig: MakeRig) -> None:
    rig = await make_rig(at(12))
    rig.ac(AC).fault = 3
    rig.poll_all()
    await rig.walk(at(12, 1))
    rig.ac(AC).fault = 5
    await rig.walk(at(12, 2))

    alarm = rig.alarm("ac_fault", AC)
    assert alarm is not None
    assert dict(alarm.details) == {"code": 5}
    assert "5" in alarm.message


# --- Sensors ------------------------------------------------------------------------------


async def test_the_acs_own_sensor_decides_when_the_climate_sensor_is_offline(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(at(14))
    rig.ac(AC).room_temperature = 27.5  # the unit's return air is warm
    rig.poll_all()
    rig.outdoor(30.0)
    rig.temperature(ROOM, 25.0)  # the wall sensor says comfortable
    rig.occupancy(ROOM, True, 3)
    await rig.walk(at(14, 5))
    assert rig.changes(AC) == []

    rig.availability("temp-love-room", False)
    await rig.walk(at(14, 6))

    assert timeline(rig.changes(AC)) == [("14:05", True, "cool", 26.0)]
    assert rig.logged("ac_command")[0].details["cause"] == "occupied_hot"


async def test_unknown_occupancy_changes_nothing_until_the_empty_timer_ends(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(at(2))
    rig.poll_all()
    rig.outdoor(28.0)
    rig.temperature(ROOM, 27.0)
    rig.occupancy(ROOM, True, 1)
    await rig.walk(at(2, 10))
    assert rig.ac(AC).power is True

    rig.availability("occ-love-room", False)  # the sensor drops out with a rider inside
    await rig.walk(at(4))
    assert rig.ac(AC).power is True
    assert rig.climate.entry(AC)["rule"]["cause"] == "unknown_occupancy"

    rig.occupancy(ROOM, False, 0)  # back: empty at 04:00
    await rig.walk(at(4, 5))
    rig.availability("occ-love-room", False)  # and gone again
    await rig.walk(at(4, 14))
    assert rig.ac(AC).power is True
    await rig.walk(at(4, 16))
    assert timeline(rig.changes(AC))[-1] == ("04:15", False, "cool", 26.0)


async def test_an_outdoor_reading_alone_starts_the_heat_wave(make_rig: MakeRig) -> None:
    rig = await make_rig(at(9))
    rig.poll_all()
    rig.temperature(ROOM, 24.0)
    rig.occupancy(ROOM, False, 0)
    rig.outdoor(34.0)
    await rig.walk(at(9, 30))
    assert rig.changes(AC) == []

    rig.outdoor(35.5)  # nothing else changes: no room state event
    await rig.clock.advance(1)

    assert timeline(rig.changes(AC)) == [("09:30", True, "cool", 26.0)]


# --- Commands -----------------------------------------------------------------------------


async def test_no_command_before_the_unit_is_heard_from_nor_while_offline(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(at(2))
    rig.outdoor(28.0)
    rig.temperature(ROOM, 28.0)
    rig.occupancy(ROOM, True, 1)
    await rig.clock.advance(600)
    assert rig.acs.writes == []  # never polled yet

    rig.acs.poll(AC)  # its first reading: reconciled at once
    await rig.clock.advance(0)
    assert rig.acs.writes_to(AC) == [(at(2, 10), ("mode=cool", "setpoint=26.0", "power=true"))]

    rig.availability(AC, False)
    rig.occupancy(ROOM, False, 0)
    await rig.clock.advance(3600)
    assert len(rig.acs.writes_to(AC)) == 1  # offline: nothing sent

    rig.availability(AC, True)
    rig.acs.poll(AC)
    await rig.clock.advance(0)
    assert rig.acs.writes_to(AC)[-1] == (at(3, 10), ("power=false",))


async def test_a_failing_unit_is_retried_with_backoff_not_in_a_loop(make_rig: MakeRig) -> None:
    rig = await make_rig(at(2))
    rig.acs.failing.add(AC)
    rig.poll_all()
    rig.outdoor(28.0)
    rig.temperature(ROOM, 28.0)
    rig.occupancy(ROOM, True, 1)

    await rig.walk(at(2, 5), step=1.0)  # polled every second, as a fast poller would

    tries = [moment for moment, _ in rig.acs.writes_to(AC)]
    base = at(2)
    assert [(moment - base).total_seconds() for moment in tries] == [0, 30, 90, 210]
    status = rig.climate.status()["air_conditioners"][AC]
    assert status["last_command"]["result"] == "failed"
    assert status["failed_commands_in_a_row"] == 4
    assert len(rig.logged("ac_command")) == 4

    rig.acs.failing.clear()
    await rig.walk(at(2, 10), step=1.0)
    assert rig.ac(AC).power is True
    assert rig.climate.status()["air_conditioners"][AC]["last_command"]["result"] == "confirmed"


# --- Restarts -----------------------------------------------------------------------------


async def test_a_restart_respects_the_compressors_rest_from_before(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    first = await make_rig(at(2), data_dir=tmp_path)
    first.poll_all()
    first.outdoor(28.0)
    first.temperature(ROOM, 27.0)
    first.occupancy(ROOM, True, 1)
    await first.walk(at(2, 10))
    first.occupancy(ROOM, False, 0)
    await first.walk(at(2, 26))
    assert timeline(first.changes(AC)) == [
        ("02:00", True, "cool", 26.0),
        ("02:25", False, "cool", 26.0),
    ]
    units = first.units
    await first.stop()

    # Back a minute later: a rider is inside and it is warm, but the unit went off at 02:25.
    second = await make_rig(at(2, 26), data_dir=tmp_path, units=units)
    second.outdoor(28.0)
    second.temperature(ROOM, 27.0)
    second.occupancy(ROOM, True, 1)
    second.poll_all()
    await second.walk(at(2, 30), step=5.0)

    assert second.acs.writes_to(AC) == [(at(2, 28), ("power=true",))]


async def test_a_unit_found_off_after_a_restart_counts_as_just_switched_off(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    first = await make_rig(at(2), data_dir=tmp_path)
    first.poll_all()
    first.outdoor(28.0)
    first.temperature(ROOM, 27.0)
    first.occupancy(ROOM, True, 1)
    await first.walk(at(2, 5))
    units = first.units
    assert units is not None
    assert units[AC].power is True
    await first.stop()
    units[AC].power = False  # switched off by hand while the controller was down

    second = await make_rig(at(3), data_dir=tmp_path, units=units)
    second.outdoor(28.0)
    second.temperature(ROOM, 27.0)
    second.occupancy(ROOM, True, 1)
    second.poll_all()
    await second.walk(at(3, 5), step=5.0)

    assert second.acs.writes_to(AC) == [(at(3, 3), ("power=true",))]


async def test_the_rules_memory_survives_a_restart(make_rig: MakeRig, tmp_path: Path) -> None:
    first = await make_rig(at(2), data_dir=tmp_path)
    first.poll_all()
    first.outdoor(28.0)
    first.temperature(ROOM, 26.5)
    first.occupancy(ROOM, True, 1)
    await first.walk(at(2, 5))
    first.temperature(ROOM, 25.8)  # inside the hysteresis band: cooling goes on
    await first.walk(at(2, 6))
    units = first.units
    await first.stop()

    second = await make_rig(at(2, 7), data_dir=tmp_path, units=units)
    second.outdoor(28.0)
    second.temperature(ROOM, 25.8)
    second.occupancy(ROOM, True, 1)
    second.poll_all()
    await second.walk(at(2, 20))

    assert second.acs.writes == []  # still cooling: a fresh memory would have switched it off


# --- Overrides ----------------------------------------------------------------------------


async def test_an_override_holds_then_the_rule_takes_over(make_rig: MakeRig) -> None:
    rig = await make_rig(at(2))
    rig.poll_all()
    rig.outdoor(28.0)
    rig.temperature(ROOM, 24.0)
    rig.occupancy(ROOM, False, 0)
    await rig.walk(at(2, 30))

    rig.climate.set_override(
        AC, AcSetting(True, AcMode.COOL, 22.0), 1.5, "cleaning", "token:1a2b3c4d"
    )
    await rig.walk(at(5))

    assert timeline(rig.changes(AC)) == [
        ("02:30", True, "cool", 22.0),
        ("04:00", False, "cool", 22.0),  # expired: the empty room goes off
    ]
    overrides = rig.logged("ac_override")
    assert [event.details["action"] for event in overrides] == ["set", "expired"]
    assert overrides[0].details["by"] == "token:1a2b3c4d"
    assert overrides[0].details["reason"] == "cleaning"
    assert overrides[1].time == at(4)
    assert [event.details["cause"] for event in rig.logged("ac_command")] == [
        "override",
        "empty",
    ]


async def test_an_override_on_an_unmanaged_unit_leaves_it_as_it_is_when_over(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(at(10))
    rig.poll_all()
    rig.climate.set_override(HALL_AC, AcSetting(True, AcMode.HEAT, 21.0), 1, "", "staff")
    await rig.walk(at(13))

    assert timeline(rig.changes(HALL_AC)) == [("10:00", True, "heat", 21.0)]
    assert rig.climate.entry(HALL_AC)["rule"]["cause"] == "not_managed"


async def test_an_override_cannot_skip_the_compressors_rest(make_rig: MakeRig) -> None:
    rig = await make_rig(at(2))
    rig.ac(AC).power = True
    rig.poll_all()
    rig.acs.by_hand(AC, power=False)
    await rig.walk(at(2, 1))

    rig.climate.set_override(AC, AcSetting(True), 1, "", "staff")
    await rig.walk(at(2, 5))

    assert rig.acs.writes_to(AC) == [(at(2, 3), ("power=true",))]


async def test_clearing_an_override_hands_back_to_the_rule(make_rig: MakeRig) -> None:
    rig = await make_rig(at(2))
    rig.poll_all()
    rig.outdoor(28.0)
    rig.temperature(ROOM, 27.0)
    rig.occupancy(ROOM, True, 1)
    await rig.walk(at(2, 1))
    rig.climate.set_override(AC, AcSetting(False), 2, "repair", "staff")
    await rig.walk(at(2, 10))
    assert rig.ac(AC).power is False

    rig.climate.clear_override(AC, "staff")
    await rig.walk(at(2, 20))

    assert timeline(rig.changes(AC)) == [
        ("02:00", True, "cool", 26.0),
        ("02:01", False, "cool", 26.0),
        ("02:10", True, "cool", 26.0),
    ]
    assert [event.details["action"] for event in rig.logged("ac_override")] == ["set", "cleared"]
