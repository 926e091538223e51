"""The simulated building and its scenarios tell one consistent story.

Most of it is checked at the model level, stepping whole days in a fraction
of a second; one test plays the fire drill at 600x over a real broker and
checks the story from the published messages (only the people passing through
the entrance, which has no occupancy sensor, come from the model).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from controller.clock import ScaledClock, VirtualClock
from controller.readings import OccupancyReading
from controller.site import DeviceKind, PayloadFormat, Site, parse_site
from drivers.payloads import decode_state
from simulators.mqtt_devices import Backoff, mqtt_simulators
from simulators.people import AlarmChanged, Building, Census, Change, Movement, Visit
from simulators.scenarios import (
    AUTO,
    SCENARIOS,
    ScenarioRunner,
    choose_scenario,
    scenario_choices,
)
from simulators.thermal import Air, DailyWeather, step_air
from simulators.world import Hvac, World
from tests.conftest import PREFIX, Broker, wait_until
from tests.simulators.test_mqtt_devices import QuickProbe, endpoint, running

ZONE = ZoneInfo("Asia/Shanghai")
MONDAY = date(2026, 11, 23)
SATURDAY = date(2026, 11, 28)


def at(day: date, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute, second), tzinfo=ZONE)


# -- the air ---------------------------------------------------------------------------


def minutes_until(air: Air, condition: Any, hvac: Hvac, outdoor: Air, limit: int = 120) -> int:
    for minute in range(1, limit + 1):
        air = step_air(air, 60, outdoor=outdoor, occupants=0, capacity=12, hvacs=[hvac])
        if condition(air.temperature):
            return minute
    raise AssertionError("never got there")


def test_a_closed_room_drifts_toward_outdoors_over_hours() -> None:
    outdoor = Air(20.0, 60.0)
    after_3h = step_air(Air(30.0, 60.0), 3 * 3600, outdoor=outdoor, occupants=0, capacity=12)
    assert after_3h.temperature == pytest.approx(20 + 10 / 2.718, abs=0.1)  # one time constant
    after_1h = step_air(Air(30.0, 60.0), 3600, outdoor=outdoor, occupants=0, capacity=12)
    assert 26.5 < after_1h.temperature < 27.5


def test_people_warm_a_small_room_more_than_a_big_one() -> None:
    still = Air(25.0, 60.0)
    small = step_air(still, 600, outdoor=still, occupants=5, capacity=15)
    big = step_air(still, 600, outdoor=still, occupants=5, capacity=60)
    assert small.temperature - 25 == pytest.approx(0.5, abs=0.05)  # 0.1 °C per person
    assert big.temperature - 25 == pytest.approx(0.125, abs=0.02)
    assert small.humidity > 60


def test_cooling_pulls_a_hot_room_down_a_degree_in_about_five_minutes_never_below() -> None:
    hot = Air(32.0, 70.0)
    cool = Hvac(power=True, mode="cool", setpoint=26.0)
    assert 4 <= minutes_until(hot, lambda t: t <= 31.0, cool, hot) <= 6
    slow_last_degree = minutes_until(Air(27.0, 70.0), lambda t: t <= 26.0, cool, hot)
    assert slow_last_degree > 6, "slows down near the setpoint"
    air = hot
    for _ in range(240):
        air = step_air(air, 30, outdoor=hot, occupants=3, capacity=12, hvacs=[cool])
        assert air.temperature >= 26.0
    assert air.temperature < 27.0
    assert air.humidity < 70.0, "cooling dries the air"


def test_heating_is_symmetric() -> None:
    cold = Air(12.0, 50.0)
    heat = Hvac(power=True, mode="heat", setpoint=20.0)
    assert 4 <= minutes_until(cold, lambda t: t >= 13.0, heat, cold) <= 6
    air = cold
    for _ in range(240):
        air = step_air(air, 30, outdoor=cold, occupants=3, capacity=12, hvacs=[heat])
        assert air.temperature <= 20.0 + 1e-9
    assert air.temperature > 19.0


@pytest.mark.parametrize(
    "hvac",
    [
        Hvac(power=True, mode="fan", setpoint=18.0),
        Hvac(power=True, mode="dry", setpoint=18.0),
        Hvac(power=False, mode="cool", setpoint=18.0),
        Hvac(power=True, mode="heat", setpoint=18.0),  # already warmer than the setpoint
    ],
)
def test_modes_that_do_not_cool_leave_the_temperature_alone(hvac: Hvac) -> None:
    start, outdoor = Air(30.0, 80.0), Air(33.0, 80.0)
    alone = step_air(start, 1800, outdoor=outdoor, occupants=2, capacity=12)
    with_it = step_air(start, 1800, outdoor=outdoor, occupants=2, capacity=12, hvacs=[hvac])
    assert with_it.temperature == pytest.approx(alone.temperature)
    if hvac.mode == "dry" and hvac.power:
        assert with_it.humidity < alone.humidity - 5


def test_the_answer_does_not_depend_on_the_step_size() -> None:
    kwargs: dict[str, Any] = {
        "outdoor": Air(35.0, 60.0),
        "occupants": 6,
        "capacity": 12,
        "hvacs": [Hvac(power=True, mode="cool", setpoint=26.0)],
    }
    once = step_air(Air(30.0, 60.0), 3600, **kwargs)
    air = Air(30.0, 60.0)
    for _ in range(360):
        air = step_air(air, 10, **kwargs)
    assert air.temperature == pytest.approx(once.temperature, abs=0.2)
    with pytest.raises(ValueError, match="backwards"):
        step_air(air, -1, outdoor=air, occupants=0, capacity=12)


def test_the_day_is_coldest_at_five_and_warmest_at_three() -> None:
    weather = DailyWeather(29.0, 38.0)
    hours = [h / 4 for h in range(96)]
    temperatures = [weather.temperature(h) for h in hours]
    assert hours[temperatures.index(min(temperatures))] == 5.0
    assert hours[temperatures.index(max(temperatures))] == 15.0
    assert weather.temperature(5) == pytest.approx(29.0)
    assert weather.temperature(15) == pytest.approx(38.0)
    assert weather.humidity(5) > weather.humidity(15)
    assert weather.temperature(23.99) == pytest.approx(weather.temperature(0), abs=0.05)
    with pytest.raises(ValueError, match="below its low"):
        DailyWeather(30.0, 20.0)


# -- the building ----------------------------------------------------------------------


@pytest.fixture
def building(site: Site) -> Building:
    return Building(
        site, start=at(MONDAY, 10), weather=DailyWeather(16, 24), seed=2, passage=(10.0, 10.0)
    )


def later(building: Building, seconds: float) -> None:
    building.advance(building.now + timedelta(seconds=seconds))


def test_a_visitor_comes_in_visits_and_leaves_and_everyone_hears_of_it(
    building: Building,
) -> None:
    changes: list[Change] = []
    building.subscribe(changes.append)
    building.admit([Visit("library", stay=600), Visit("coffee", stay=300)], building.now)
    later(building, 0)
    assert (building.entries, building.occupants("entrance")) == (1, 1)
    later(building, 10)
    assert building.occupants("library") == 1
    assert building.occupants("entrance") == 0
    later(building, 600)
    assert building.occupants("coffee") == 1
    later(building, 300)
    assert building.occupants("entrance") == 1
    later(building, 10)
    assert (building.entries, building.exits, building.inside) == (1, 1, 0)
    route = [(c.source, c.target) for c in changes if isinstance(c, Movement)]
    assert route == [
        (None, "entrance"),
        ("entrance", "library"),
        ("library", "coffee"),
        ("coffee", "entrance"),
        ("entrance", None),
    ]
    assert building.door_totals("entrance") == (1, 1)
    assert building.door_totals("library") == (1, 1)
    street_door = [c for c in changes if isinstance(c, Movement)]
    assert [c.through_door_of("entrance", "entrance") for c in street_door] == [
        True,
        False,
        False,
        False,
        True,
    ]


def test_nobody_enters_a_closed_room_but_the_24_hour_rooms_take_people_at_night(
    site: Site,
) -> None:
    night = Building(site, start=at(MONDAY, 22), weather=DailyWeather(16, 24), seed=1)
    night.admit([Visit("library", stay=3600)], night.now)
    night.admit([Visit("love-room", stay=1800)], night.now)
    later(night, 60)
    assert night.occupants("library") == 0
    assert night.occupants("love-room") == 1
    assert night.inside == 1, "the library visitor found it closed and left"


def test_a_visit_is_cut_short_by_closing_time(site: Site) -> None:
    evening = Building(site, start=at(MONDAY, 20, 30), weather=DailyWeather(16, 24), seed=1)
    evening.admit([Visit("library", stay=7200)], evening.now)
    later(evening, 60)
    assert evening.occupants("library") == 1
    evening.advance(at(MONDAY, 21))
    assert evening.occupants("library") == 0


def test_a_full_room_turns_people_away(building: Building) -> None:
    for _ in range(15):
        building.admit([Visit("love-room", stay=1800)], building.now)
    later(building, 60)
    assert building.occupants("love-room") == 12
    assert building.inside == 12


def test_an_evacuation_empties_the_building_in_time_and_remembers_who_was_busy(
    building: Building,
) -> None:
    for room in ("library", "gym", "practice-hall", "coffee"):
        for _ in range(5):
            building.admit([Visit(room, stay=3600)], building.now)
    later(building, 60)
    building.set_accepting(False)
    building.admit([Visit("library", stay=600)], building.now)
    unfinished = building.evacuate(within=300)
    assert len(unfinished) == 20
    assert all(plan[0].stay > 3000 for plan in unfinished)
    later(building, 300)
    assert building.inside == 0
    assert sum(building.census().rooms.values()) == 0
    assert building.turned_away == 1


def test_the_building_refuses_nonsense(building: Building) -> None:
    with pytest.raises(ValueError, match="no room 'sauna'"):
        building.admit([Visit("sauna")], building.now)
    with pytest.raises(ValueError, match="no room 'sauna'"):
        building.occupants("sauna")
    with pytest.raises(ValueError, match="backwards"):
        building.advance(building.now - timedelta(seconds=1))


def test_an_unsubscribed_listener_hears_nothing_more(building: Building) -> None:
    heard: list[Change] = []
    unsubscribe = building.subscribe(heard.append)
    building.set_fire_alarm(True)
    unsubscribe()
    building.set_fire_alarm(False)
    assert heard == [AlarmChanged(True, building.now)]


def test_air_conditioners_act_on_their_room_only(building: Building) -> None:
    world: World = building
    hot = building.room_temperature("love-room")
    world.set_hvac("love-room", "ac-love-room", Hvac(power=True, mode="cool", setpoint=15.0))
    later(building, 600)
    assert building.room_temperature("love-room") < hot - 1.5
    assert building.room_temperature("convergence-hall") > hot - 0.5
    world.set_hvac("love-room", "ac-love-room", None)
    cooled = building.room_temperature("love-room")
    later(building, 600)
    assert building.room_temperature("love-room") > cooled


# -- the scenarios, stepped ------------------------------------------------------------


def play(
    site: Site, name: str, start: datetime, hours: float, *, seed: int = 1, step: float = 30
) -> Iterator[tuple[ScenarioRunner, Census]]:
    runner = ScenarioRunner(site, name, VirtualClock(start), seed=seed)
    now = start
    end = start + timedelta(hours=hours)
    while now <= end:
        runner.step(now)
        yield runner, runner.building.census()
        now += timedelta(seconds=step)


def check_story(runner: ScenarioRunner, census: Census) -> None:
    building = runner.building
    assert sum(census.rooms.values()) == census.inside >= 0
    for room_id, count in census.rooms.items():
        room = building.rooms[room_id]
        assert count >= 0
        assert room.capacity is None or count <= room.capacity, (census.at, room_id, count)
        if room.always_open or room_id == building.entrance:
            continue
        if not building.is_open(room_id, census.at):
            assert count == 0, f"{room_id} has {count} people at {census.at:%H:%M}"


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_whole_day_of_each_scenario_is_consistent(site: Site, name: str) -> None:
    night_visits = 0
    peak = 0
    for runner, census in play(site, name, at(MONDAY, 0), 24):
        check_story(runner, census)
        peak = max(peak, census.inside)
        if not runner.building.is_open("library", census.at):
            night_visits += census.rooms["love-room"] + census.rooms["self-service"]
    assert night_visits > 0, "the 24-hour rooms see someone at night"
    assert peak >= 20


def test_busy_saturday_fills_the_halls(site: Site) -> None:
    peaks: dict[str, int] = {}
    class_sizes = []
    for runner, census in play(site, "busy-saturday", at(SATURDAY, 8), 5):
        check_story(runner, census)
        for room, count in census.rooms.items():
            peaks[room] = max(peaks.get(room, 0), count)
        if at(SATURDAY, 9, 45) <= census.at <= at(SATURDAY, 10, 45):
            class_sizes.append(census.rooms["practice-hall"])
    assert min(class_sizes) >= 25, "a class of about 30 for 90 minutes"
    assert peaks["affairs-hall"] >= 30, "a queue at the windows"
    assert peaks["convergence-hall"] >= 40
    assert peaks["practice-hall"] <= 40


def test_the_heat_wave_sends_riders_to_the_love_room_all_afternoon(site: Site) -> None:
    afternoon = []
    for runner, census in play(site, "heat-wave", at(MONDAY, 4), 14):
        check_story(runner, census)
        building = runner.building
        if census.at == at(MONDAY, 5):
            assert building.outdoor_temperature() == pytest.approx(29.0, abs=0.1)
        if census.at == at(MONDAY, 15):
            assert building.outdoor_temperature() == pytest.approx(38.0, abs=0.1)
        if at(MONDAY, 12) <= census.at < at(MONDAY, 18):
            afternoon.append(census.rooms["love-room"])
    occupied = sum(1 for count in afternoon if count) / len(afternoon)
    assert occupied > 0.8
    assert max(afternoon) <= 12
    assert 2 <= sum(afternoon) / len(afternoon) <= 8


def test_the_fire_drill_empties_the_building_and_people_come_back(site: Site) -> None:
    alarm_at = at(MONDAY, 10)
    clear_at = alarm_at + timedelta(minutes=20)
    before = after = 0
    for runner, census in play(site, "fire-drill", at(MONDAY, 8), 4, step=10):
        check_story(runner, census)
        assert runner.fire_alarm == (alarm_at <= census.at < clear_at), census.at
        if census.at == alarm_at - timedelta(seconds=10):
            before = census.inside
        if alarm_at + timedelta(minutes=5) <= census.at < clear_at:
            assert census.inside == 0, f"{census.inside} still inside at {census.at:%H:%M:%S}"
        if census.at == clear_at + timedelta(minutes=20):
            after = census.inside
    assert before >= 20
    assert after >= 10
    assert runner.building.turned_away > 0, "people who arrived during the alarm went away"


def test_the_drill_happens_the_next_day_when_the_run_starts_after_it(site: Site) -> None:
    alarms = [
        census.at
        for runner, census in play(site, "fire-drill", at(MONDAY, 11), 24, step=60)
        if runner.fire_alarm
    ]
    assert alarms[0] == at(MONDAY + timedelta(days=1), 10)


def test_the_same_seed_tells_the_same_story_and_another_seed_another(site: Site) -> None:
    def story(seed: int) -> list[Census]:
        return [c for _, c in play(site, "quiet-weekday", at(MONDAY, 9), 3, seed=seed)]

    assert story(3) == story(3)
    assert story(3) != story(4)


def test_auto_picks_by_the_day_of_the_week() -> None:
    assert choose_scenario(AUTO, SATURDAY).name == "busy-saturday"
    assert choose_scenario(AUTO, SATURDAY + timedelta(days=1)).name == "busy-saturday"
    assert choose_scenario(AUTO, MONDAY).name == "quiet-weekday"
    assert choose_scenario("heat-wave", MONDAY) is SCENARIOS["heat-wave"]
    with pytest.raises(ValueError, match="unknown scenario 'rainy'; choose one of auto, quiet"):
        choose_scenario("rainy", MONDAY)


def test_every_choice_has_a_one_line_description() -> None:
    choices = scenario_choices()
    assert list(choices) == [AUTO, "quiet-weekday", "busy-saturday", "heat-wave", "fire-drill"]
    assert all(text and "\n" not in text for text in choices.values())


def test_a_site_without_the_example_rooms_still_plays(site: Site) -> None:
    small = parse_site(
        """
[site]
id = "tiny"
name = "tiny"
hours = { open = "08:30", close = "21:00" }
[[rooms]]
id = "entrance"
name = "entrance"
[[rooms]]
id = "library"
name = "library"
capacity = 10
"""
    )
    visitors = 0
    for runner, census in play(small, "busy-saturday", at(SATURDAY, 9), 3):
        check_story(runner, census)
        visitors = runner.building.entries
    assert visitors > 0


# -- the runner on a clock -------------------------------------------------------------


async def test_the_runner_plays_on_its_clock_and_announces_the_alarm(site: Site) -> None:
    clock = VirtualClock(at(MONDAY, 9, 50))
    runner = ScenarioRunner(site, "fire-drill", clock, seed=5)
    alarms: list[bool] = []
    runner.building.subscribe(
        lambda change: alarms.append(change.alarm) if isinstance(change, AlarmChanged) else None
    )
    async with running(runner.run()):
        while clock.now() < at(MONDAY, 10, 30):
            await clock.advance(30)
            census = runner.building.census()
            # The runner sleeps until something is due, and at most 10 s.
            assert timedelta(0) <= clock.now() - census.at <= timedelta(seconds=10)
            assert sum(census.rooms.values()) == census.inside
            if at(MONDAY, 10, 5) <= clock.now() < at(MONDAY, 10, 20):
                assert census.inside == 0
    assert alarms == [True, False]
    assert runner.building.entries > 0


# -- the fire drill over MQTT ------------------------------------------------------------


@pytest.mark.broker
async def test_the_fire_drill_over_mqtt_tells_a_consistent_story(
    broker: Broker, site: Site
) -> None:
    start = at(MONDAY, 9, 30)
    clock = ScaledClock(start, 600)
    runner = ScenarioRunner(site, "fire-drill", clock, seed=11)
    sims = mqtt_simulators(
        site,
        runner.building,
        endpoint(broker.port),
        clock=clock,
        seed=11,
        pir=(),  # every room counts, so the counts add up from the messages alone
        backoff=Backoff.real_time(600, initial=0.05, maximum=0.5),
    )
    rooms = {d.id: d.room for d in site.devices if d.kind is DeviceKind.OCCUPANCY}
    probe = QuickProbe(broker.port)
    probe.connect()
    probe.subscribe(f"{PREFIX}/#")

    def latest(device: str) -> dict[str, Any] | None:
        payloads = probe.received(f"{PREFIX}/{device}/state")
        return json.loads(payloads[-1]) if payloads else None

    def counts() -> dict[str, int]:
        found = {device: latest(device) for device in rooms}
        return {device: body["count"] for device, body in found.items() if body is not None}

    def inside() -> int:
        body = latest("counter-entrance")
        assert body is not None
        # The simulated counter booted with equal totals, so in - out is who is inside.
        return int(body["in"]) - int(body["out"])

    async def until(hour: int, minute: int) -> None:
        moment = at(MONDAY, hour, minute)
        await wait_until(lambda: clock.now() >= moment, timeout=20, message=f"{moment:%H:%M}")

    try:
        async with running(runner.run(), *(sim.run() for sim in sims)) as tasks:
            await until(9, 58)
            assert latest("fire-panel") == {"alarm": False}
            assert sum(counts().values()) > 0, "a normal morning"
            assert inside() > 0

            await until(10, 8)
            assert latest("fire-panel") == {"alarm": True}
            assert len(counts()) == len(rooms)
            assert set(counts().values()) == {0}, "everybody left"
            assert inside() == 0
            await until(10, 18)
            assert set(counts().values()) == {0}
            assert inside() == 0

            await until(10, 40)
            assert latest("fire-panel") == {"alarm": False}
            assert sum(counts().values()) > 0, "people came back"

            # Freeze the story; the devices catch up, and then the counts add up.
            tasks[0].cancel()
            await asyncio.gather(tasks[0], return_exceptions=True)
            building = runner.building
            await wait_until(
                lambda: (
                    all(
                        counts().get(device) == building.occupants(room)
                        for device, room in rooms.items()
                        if room is not None
                    )
                    and inside() == building.inside
                ),
                message="the devices to report the frozen building",
            )
            passing = building.occupants(building.entrance)  # no sensor in the entrance
            assert sum(counts().values()) + passing == inside()
    finally:
        probe.close()

    for device, room in rooms.items():
        capacity = site.room_by_id[room or ""].capacity
        for payload in probe.received(f"{PREFIX}/{device}/state"):
            reading = decode_state(DeviceKind.OCCUPANCY, PayloadFormat.NATIVE, payload)
            assert isinstance(reading, OccupancyReading)
            assert reading.count is not None
            assert reading.occupied == (reading.count > 0)
            assert capacity is None or reading.count <= capacity
