"""The climate rule, clause by clause (CONTRACT §5, Love room climate).

Pure: each case is the facts the rule is given, the moment it is asked, and
the answer a facility manager would expect. The numbers are the contract's
defaults (cool above 26 °C to 26 °C, off 15 min after the room empties, heat
wave from 35 °C outdoor, heating to 20 °C below 10 °C outdoor, 3 min minimum
off time, 0.5 °C hysteresis); center hours 08:30-21:00 in Shanghai.
"""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from controller.readings import AcMode
from controller.site import ClimateRules, Hours, load_site
from rules.climate import (
    OFF,
    AcSetting,
    Activity,
    ClimateCause,
    ClimateDecision,
    ClimateFacts,
    ClimateOverride,
    decide,
    may_start_at,
)
from tests.conftest import CHANGBAI

ZONE = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 7, 20)
RULES = ClimateRules()
HOURS: Hours = load_site(CHANGBAI).site.hours
COOL = AcSetting(True, AcMode.COOL, 26.0)
HEAT = AcSetting(True, AcMode.HEAT, 20.0)


def at(hour: int, minute: int = 0, second: int = 0, *, day: int = 0) -> datetime:
    return datetime.combine(DAY + timedelta(days=day), time(hour, minute, second), tzinfo=ZONE)


NOON = at(12)


def facts(**changes: Any) -> ClimateFacts:
    """An occupied, comfortable room on a mild day, the unit off and rested, unless told."""
    base = ClimateFacts(
        managed=True,
        occupied=True,
        empty_since=None,
        room_temperature=24.0,
        outdoor_temperature=25.0,
        running=False,
        activity=Activity.OFF,
        switched_off_at=None,
        override=None,
    )
    return dataclasses.replace(base, **changes)


def ask(now: datetime = NOON, rules: ClimateRules = RULES, **changes: Any) -> ClimateDecision:
    return decide(facts(**changes), now, rules=rules, hours=HOURS, zone=ZONE)


# --- Occupied and warm: cooling, with hysteresis ------------------------------------------


def test_an_occupied_room_warmer_than_26_is_cooled_to_26() -> None:
    decision = ask(room_temperature=26.4)

    assert decision.command == COOL
    assert decision.cause is ClimateCause.OCCUPIED_HOT
    assert decision.activity is Activity.COOLING
    assert decision.next_change is None  # nothing but a new reading changes it


def test_exactly_26_is_not_warmer_than_26() -> None:
    decision = ask(room_temperature=26.0)

    assert decision.command == OFF
    assert decision.cause is ClimateCause.OCCUPIED_COMFORTABLE
    assert decision.activity is Activity.OFF


@pytest.mark.parametrize(
    ("temperature", "cooling"),
    [(26.0, True), (25.6, True), (25.5, True), (25.49, False), (24.0, False)],
)
def test_cooling_goes_on_until_the_room_is_half_a_degree_below_26(
    temperature: float, cooling: bool
) -> None:
    decision = ask(room_temperature=temperature, activity=Activity.COOLING, running=True)

    assert decision.command == (COOL if cooling else OFF)
    assert decision.activity is (Activity.COOLING if cooling else Activity.OFF)


def test_a_sensor_hovering_around_26_does_not_flap_the_compressor() -> None:
    hovering = [25.9, 26.1, 25.8, 26.0, 25.9, 26.1, 25.7, 25.6, 25.8, 26.0, 25.5, 25.9, 25.8]
    activity, running, switched_off_at = Activity.OFF, False, None
    power: list[bool] = []
    for minute, temperature in enumerate(hovering):
        now = NOON + timedelta(minutes=minute)
        decision = ask(
            now,
            room_temperature=temperature,
            activity=activity,
            running=running,
            switched_off_at=switched_off_at,
        )
        activity = decision.activity
        if decision.command is not None:
            if running and not decision.command.power:
                switched_off_at = now
            running = decision.command.power
        power.append(running)

    # On once at 26.1, and it stays on: nothing in 25.5..26.1 switches it off.
    assert power == [False] + [True] * (len(hovering) - 1)


# --- Empty: off after 15 minutes ----------------------------------------------------------


def test_a_room_empty_for_less_than_15_minutes_keeps_what_the_rule_was_doing() -> None:
    decision = ask(
        occupied=False,
        empty_since=NOON - timedelta(minutes=14),
        activity=Activity.COOLING,
        running=True,
        room_temperature=27.0,
    )

    assert decision.command == COOL
    assert decision.cause is ClimateCause.EMPTY_RECENTLY
    assert decision.next_change == NOON + timedelta(minutes=1)


def test_a_room_empty_for_15_minutes_is_switched_off() -> None:
    decision = ask(
        occupied=False,
        empty_since=NOON - timedelta(minutes=15),
        activity=Activity.COOLING,
        running=True,
    )

    assert decision.command == OFF
    assert decision.cause is ClimateCause.EMPTY
    assert decision.activity is Activity.OFF


def test_a_room_that_empties_while_heating_keeps_heating_until_the_timer_ends() -> None:
    decision = ask(
        occupied=False,
        empty_since=NOON - timedelta(minutes=5),
        activity=Activity.HEATING,
        running=True,
        outdoor_temperature=3.0,
    )

    assert decision.command == HEAT
    assert decision.cause is ClimateCause.EMPTY_RECENTLY


def test_an_empty_room_is_not_heated_even_in_the_cold() -> None:
    decision = ask(occupied=False, empty_since=NOON - timedelta(hours=1), outdoor_temperature=-2.0)

    assert decision.command == OFF
    assert decision.cause is ClimateCause.EMPTY


# --- Heat wave: pre-cooling during center hours -------------------------------------------


def test_a_heat_wave_cools_the_empty_room_during_center_hours() -> None:
    decision = ask(
        occupied=False,
        empty_since=at(6),
        outdoor_temperature=35.0,
        room_temperature=24.0,
    )

    assert decision.command == COOL
    assert decision.cause is ClimateCause.HEAT_WAVE
    assert decision.next_change == at(21)  # the center closes


def test_after_closing_the_empty_room_goes_off_despite_the_heat() -> None:
    decision = ask(
        at(21),
        occupied=False,
        empty_since=at(15),
        outdoor_temperature=36.0,
        activity=Activity.COOLING,
        running=True,
    )

    assert decision.command == OFF
    assert decision.cause is ClimateCause.EMPTY
    assert decision.next_change == at(8, 30, day=1)  # tomorrow's opening starts it again


def test_before_opening_the_heat_wave_waits_for_the_center() -> None:
    decision = ask(at(8, 29), occupied=False, empty_since=at(0), outdoor_temperature=35.5)

    assert decision.command == OFF
    assert decision.next_change == at(8, 30)
    assert (
        ask(at(8, 30), occupied=False, empty_since=at(0), outdoor_temperature=35.5).command == COOL
    )


def test_an_unknown_outdoor_temperature_is_no_heat_wave() -> None:
    decision = ask(occupied=False, empty_since=at(6), outdoor_temperature=None)

    assert decision.command == OFF
    assert decision.cause is ClimateCause.EMPTY


@pytest.mark.parametrize(
    ("activity", "outdoor", "heat_wave"),
    [
        (Activity.OFF, 34.9, False),
        (Activity.OFF, 35.0, True),
        (Activity.COOLING, 34.6, True),  # already cooling: it lasts down to 34.5
        (Activity.COOLING, 34.5, True),
        (Activity.COOLING, 34.4, False),
    ],
)
def test_the_heat_wave_has_the_same_hysteresis(
    activity: Activity, outdoor: float, heat_wave: bool
) -> None:
    decision = ask(
        occupied=False,
        empty_since=at(6),
        outdoor_temperature=outdoor,
        activity=activity,
        running=activity is Activity.COOLING,
    )

    assert decision.cause is (ClimateCause.HEAT_WAVE if heat_wave else ClimateCause.EMPTY)


def test_a_heat_wave_cools_even_when_occupancy_is_unknown() -> None:
    decision = ask(occupied=None, outdoor_temperature=37.0, room_temperature=None)

    assert decision.command == COOL
    assert decision.cause is ClimateCause.HEAT_WAVE


# --- Cold: heating an occupied room -------------------------------------------------------


def test_an_occupied_room_is_heated_to_20_below_10_outdoor() -> None:
    decision = ask(outdoor_temperature=9.9, room_temperature=17.0)

    assert decision.command == HEAT
    assert decision.cause is ClimateCause.OCCUPIED_COLD
    assert decision.activity is Activity.HEATING


def test_heating_does_not_flap_with_an_outdoor_temperature_hovering_at_10() -> None:
    hovering = [10.2, 9.9, 10.1, 10.4, 9.8, 10.3, 10.45, 10.1, 10.6, 10.2, 10.1]
    activity, running, switched_off_at = Activity.OFF, False, None
    power: list[bool] = []
    for minute, outdoor in enumerate(hovering):
        now = NOON + timedelta(minutes=10 * minute)
        decision = ask(
            now,
            outdoor_temperature=outdoor,
            room_temperature=18.0,
            activity=activity,
            running=running,
            switched_off_at=switched_off_at,
        )
        activity = decision.activity
        if decision.command is not None:
            if running and not decision.command.power:
                switched_off_at = now
            running = decision.command.power
        power.append(running)

    # On at 9.9 and through every value below 10.5; off at 10.6, and 10.2 does not restart it.
    assert power == [False, True, True, True, True, True, True, True, False, False, False]


def test_a_warm_room_is_cooled_even_on_a_cold_day() -> None:
    decision = ask(outdoor_temperature=5.0, room_temperature=27.0)

    assert decision.command == COOL
    assert decision.cause is ClimateCause.OCCUPIED_HOT


# --- The compressor's rest ----------------------------------------------------------------


def test_no_start_within_3_minutes_of_an_off() -> None:
    off = NOON - timedelta(minutes=2)
    decision = ask(room_temperature=28.0, switched_off_at=off, running=False)

    assert decision.cause is ClimateCause.MIN_OFF_WAIT
    assert decision.want == COOL  # what it will do once it may
    assert decision.command is None
    assert decision.wait_until == off + timedelta(minutes=3)
    assert decision.next_change == off + timedelta(minutes=3)
    later = ask(off + timedelta(minutes=3), room_temperature=28.0, switched_off_at=off)
    assert later.command == COOL
    assert later.cause is ClimateCause.OCCUPIED_HOT


def test_the_rest_does_not_hold_a_unit_that_is_running() -> None:
    decision = ask(
        outdoor_temperature=5.0,
        room_temperature=17.0,
        running=True,
        switched_off_at=NOON - timedelta(seconds=30),
    )

    assert decision.command == HEAT  # a mode change, not a start


def test_the_rest_never_delays_switching_off() -> None:
    decision = ask(
        occupied=False,
        empty_since=at(11),
        running=True,
        activity=Activity.COOLING,
        switched_off_at=NOON - timedelta(seconds=10),
    )

    assert decision.command == OFF


def test_the_rest_holds_a_staff_override_too() -> None:
    off = NOON - timedelta(minutes=1)
    override = ClimateOverride("ac", COOL, NOON, NOON + timedelta(hours=2))
    decision = ask(override=override, switched_off_at=off)

    assert decision.cause is ClimateCause.MIN_OFF_WAIT
    assert decision.command is None
    assert decision.next_change == off + timedelta(minutes=3)


def test_an_unknown_power_counts_as_off_for_the_rest() -> None:
    off = NOON - timedelta(minutes=1)
    assert may_start_at(facts(running=None, switched_off_at=off), RULES.min_off) == off + (
        timedelta(minutes=3)
    )
    assert may_start_at(facts(running=True, switched_off_at=off), RULES.min_off) is None
    assert may_start_at(facts(running=False), RULES.min_off) is None


# --- What is unknown is not guessed -------------------------------------------------------


def test_unknown_occupancy_leaves_the_unit_as_it_is() -> None:
    decision = ask(occupied=None, activity=Activity.COOLING, running=True, room_temperature=25.0)

    assert decision.want is None
    assert decision.command is None
    assert decision.cause is ClimateCause.UNKNOWN_OCCUPANCY
    assert decision.activity is Activity.COOLING


def test_unknown_occupancy_still_switches_off_when_the_empty_timer_ends() -> None:
    empty_since = NOON - timedelta(minutes=10)
    before = ask(occupied=None, empty_since=empty_since, running=True, activity=Activity.COOLING)
    after = ask(
        NOON + timedelta(minutes=5),
        occupied=None,
        empty_since=empty_since,
        running=True,
        activity=Activity.COOLING,
    )

    assert before.want is None
    assert before.cause is ClimateCause.UNKNOWN_OCCUPANCY
    assert before.next_change == NOON + timedelta(minutes=5)
    assert after.command == OFF
    assert after.cause is ClimateCause.EMPTY


def test_an_empty_room_of_unknown_temperature_still_goes_off() -> None:
    decision = ask(occupied=False, empty_since=at(10), room_temperature=None, running=True)

    assert decision.command == OFF


def test_unknown_room_temperature_leaves_an_occupied_room_as_it_is() -> None:
    decision = ask(room_temperature=None, activity=Activity.COOLING, running=True)

    assert decision.want is None
    assert decision.cause is ClimateCause.UNKNOWN_TEMPERATURE


def test_unknown_outdoor_temperature_leaves_heating_as_it_is() -> None:
    heating = ask(
        outdoor_temperature=None, room_temperature=18.0, activity=Activity.HEATING, running=True
    )
    idle = ask(outdoor_temperature=None, room_temperature=18.0)

    assert heating.want is None
    assert heating.cause is ClimateCause.UNKNOWN_OUTDOOR
    assert idle.command == OFF  # nothing known asks for heat


# --- Staff overrides ----------------------------------------------------------------------


def test_a_staff_override_beats_the_rule_until_it_expires() -> None:
    until = NOON + timedelta(hours=2)
    override = ClimateOverride("ac", AcSetting(True, AcMode.COOL, 22.0), NOON, until, "event")
    empty: dict[str, Any] = {"occupied": False, "empty_since": at(8), "override": override}

    during = ask(NOON + timedelta(hours=1), **empty)
    expired = ask(until, **empty)

    assert during.command == AcSetting(True, AcMode.COOL, 22.0)
    assert during.cause is ClimateCause.OVERRIDE
    assert during.next_change == until
    assert expired.command == OFF
    assert expired.cause is ClimateCause.EMPTY


def test_a_staff_off_beats_a_warm_occupied_room() -> None:
    override = ClimateOverride("ac", OFF, NOON, NOON + timedelta(hours=1))
    decision = ask(room_temperature=29.0, override=override, running=True)

    assert decision.command == OFF
    assert decision.cause is ClimateCause.OVERRIDE


def test_an_override_of_power_alone_keeps_the_units_mode_and_setpoint() -> None:
    override = ClimateOverride("ac", AcSetting(True), NOON, NOON + timedelta(hours=1))

    assert ask(override=override).command == AcSetting(True, None, None)


def test_an_unmanaged_unit_follows_only_overrides() -> None:
    override = ClimateOverride("ac", COOL, NOON, NOON + timedelta(hours=1))
    left = ask(managed=False, room_temperature=30.0, running=False)
    overridden = ask(managed=False, override=override)
    after = ask(NOON + timedelta(hours=1), managed=False, override=override, running=True)

    assert left.want is None
    assert left.cause is ClimateCause.NOT_MANAGED
    assert overridden.command == COOL
    assert after.want is None  # the override ended: left as it is, still running
    assert after.cause is ClimateCause.NOT_MANAGED


def test_every_number_comes_from_the_rules() -> None:
    rules = ClimateRules(
        cool_above=24.0,
        cool_setpoint=23.0,
        empty_off_after=timedelta(minutes=5),
        heat_wave_outdoor=30.0,
        cold_outdoor=15.0,
        heat_setpoint=22.0,
        min_off=timedelta(minutes=10),
        hysteresis=1.0,
    )

    assert ask(rules=rules, room_temperature=24.5).command == AcSetting(True, AcMode.COOL, 23.0)
    assert ask(
        rules=rules, room_temperature=23.1, activity=Activity.COOLING, running=True
    ).command == AcSetting(True, AcMode.COOL, 23.0)
    assert ask(rules=rules, outdoor_temperature=14.0).command == AcSetting(True, AcMode.HEAT, 22.0)
    empty = ask(rules=rules, occupied=False, empty_since=NOON - timedelta(minutes=5))
    assert empty.cause is ClimateCause.EMPTY
    hot = ask(rules=rules, occupied=False, empty_since=at(6), outdoor_temperature=30.0)
    assert hot.cause is ClimateCause.HEAT_WAVE
    waiting = ask(rules=rules, room_temperature=25.0, switched_off_at=NOON - timedelta(minutes=9))
    assert waiting.wait_until == NOON + timedelta(minutes=1)


def test_a_decision_describes_itself_for_the_event_log() -> None:
    off = NOON - timedelta(minutes=1)
    waiting = ask(room_temperature=28.0, switched_off_at=off)

    assert "minimum off time" in waiting.describe()
    assert (off + timedelta(minutes=3)).isoformat() in waiting.describe()
    assert ask(room_temperature=28.0).describe() == "occupied and warm"
