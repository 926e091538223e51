"""``--faults`` specs: what parses, what each bad item says, and what does not fit a site."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from controller.site import DeviceKind, PayloadFormat, Site
from drivers.payloads import PayloadError, decode_state
from simulators.faults import NO_FAULTS, FaultPlan, Verdict, garbage_payloads

MQTT_KINDS = [
    DeviceKind.OCCUPANCY,
    DeviceKind.PEOPLE_COUNTER,
    DeviceKind.CLIMATE,
    DeviceKind.LOCK,
    DeviceKind.FIRE_ALARM,
]


def test_an_empty_spec_breaks_nothing() -> None:
    assert FaultPlan.parse("") == NO_FAULTS
    assert FaultPlan.parse("  ") == NO_FAULTS
    assert NO_FAULTS.empty


def test_every_kind_of_item_parses() -> None:
    plan = FaultPlan.parse(
        "drop=0.05, garbage=0.02,dead=occ-gym,dead=temp-outdoor,slow=ac-love-room,"
        "exception=cabinet-1,reset=counter-entrance@30m,reset=counter-entrance@2h,jam=lock-main"
    )
    assert plan.drop == 0.05
    assert plan.garbage == 0.02
    assert plan.dead == {"occ-gym", "temp-outdoor"}
    assert plan.slow == {"ac-love-room"}
    assert plan.exception == {"cabinet-1"}
    assert plan.jam == {"lock-main"}
    assert plan.resets_of("counter-entrance") == (timedelta(minutes=30), timedelta(hours=2))
    assert plan.resets_of("lock-main") == ()
    assert not plan.empty


def test_a_plan_prints_as_a_spec_that_parses_back() -> None:
    plan = FaultPlan.parse("jam=lock-main,drop=0.1,reset=counter-entrance@90s,dead=b,dead=a")
    assert str(plan) == "drop=0.1,dead=a,dead=b,jam=lock-main,reset=counter-entrance@1m30s"
    assert FaultPlan.parse(str(plan)) == plan


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("drop", "unknown fault 'drop'"),
        ("flood=1", "unknown fault 'flood=1'; known faults: drop=0.05"),
        ("drop=", "fault 'drop=' needs a value, e.g. drop=0.05"),
        ("drop=lots", "fault 'drop=lots': drop must be a fraction from 0 to 1"),
        ("garbage=1.5", "fault 'garbage=1.5': garbage must be a fraction from 0 to 1"),
        ("drop=-0.1", "fault 'drop=-0.1': drop must be a fraction"),
        ("drop=nan", "fault 'drop=nan': drop must be a fraction"),
        ("drop=0.1,drop=0.2", "fault 'drop=0.2': drop is given twice"),
        ("drop=0.6,garbage=0.5", "drop=0.6 and garbage=0.5 add up to more than 1"),
        ("dead=", "fault 'dead=' needs a value, e.g. dead=occ-gym"),
        ("dead=Occ Gym", "fault 'dead=Occ Gym': 'Occ Gym' is not a device id"),
        ("dead=a,,dead=b", "empty fault item in 'dead=a,,dead=b'"),
        ("reset=counter-entrance", "fault 'reset=counter-entrance': write reset=DEVICE@OFFSET"),
        ("reset=counter-entrance@", "fault 'reset=counter-entrance@': write reset=DEVICE@OFFSET"),
        ("reset=counter-entrance@soon", "fault 'reset=counter-entrance@soon': not a duration"),
        ("reset=counter-entrance@0s", "the offset must be after the start"),
        ("reset=@30m", "fault 'reset=@30m': '' is not a device id"),
        ("jam=lock-main@5m", "fault 'jam=lock-main@5m': 'lock-main@5m' is not a device id"),
    ],
)
def test_a_bad_item_is_named_in_the_error(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        FaultPlan.parse(spec)


def test_a_plan_that_fits_the_site_has_no_problems(site: Site) -> None:
    plan = FaultPlan.parse(
        "drop=0.1,dead=occ-gym,dead=ac-convergence-hall,slow=ac-love-room,"
        "exception=cabinet-1,reset=counter-entrance@30m,jam=lock-main"
    )
    assert plan.problems(site) == []


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("dead=occ-sauna", "dead=occ-sauna: no device 'occ-sauna' in site 'changbai'"),
        ("slow=occ-gym", "slow=occ-gym: only Modbus devices can be slow; this is an occupancy"),
        ("exception=lock-main", "exception=lock-main: only Modbus devices answer with exceptions"),
        ("reset=occ-gym@5m", "reset=occ-gym@5m: only people counters reset; this is an occupancy"),
        ("jam=ac-love-room", "jam=ac-love-room: only locks jam; this is an air conditioner"),
        ("dead=lock-main,jam=lock-main", "jam=lock-main: lock-main is also dead"),
        (
            "slow=ac-love-room,exception=ac-love-room",
            "slow=ac-love-room and exception=ac-love-room: choose one",
        ),
    ],
)
def test_problems_name_the_item_that_does_not_fit(site: Site, spec: str, problem: str) -> None:
    problems = FaultPlan.parse(spec).problems(site)
    assert len(problems) == 1
    assert problems[0].startswith(problem)


def test_drop_and_garbage_decisions_are_seeded_and_in_proportion() -> None:
    plan = FaultPlan.parse("drop=0.2,garbage=0.1")
    verdicts = _decisions(plan, "occ-gym", 4, 2000)
    assert verdicts == _decisions(plan, "occ-gym", 4, 2000), "the same seed fails the same way"
    assert verdicts != _decisions(plan, "occ-gym", 5, 2000), "another seed fails differently"
    assert verdicts != _decisions(plan, "occ-library", 4, 2000), "and so does another device"
    assert 0.15 < verdicts.count(Verdict.DROP) / 2000 < 0.25
    assert 0.06 < verdicts.count(Verdict.GARBAGE) / 2000 < 0.14


def _decisions(plan: FaultPlan, device: str, seed: int, count: int) -> list[Verdict]:
    decider = plan.messages(device, seed)
    return [decider.decide() for _ in range(count)]


def test_without_drop_or_garbage_everything_is_sent() -> None:
    assert set(_decisions(NO_FAULTS, "occ-gym", 1, 100)) == {Verdict.SEND}


@pytest.mark.parametrize("fmt", list(PayloadFormat))
@pytest.mark.parametrize("kind", MQTT_KINDS)
def test_every_garbage_payload_is_rejected_by_the_controller(
    kind: DeviceKind, fmt: PayloadFormat
) -> None:
    payloads = garbage_payloads(kind, fmt)
    assert len(set(payloads)) == 4
    for payload in payloads:
        with pytest.raises(PayloadError):
            decode_state(kind, fmt, payload)


def test_garbage_rotates_through_its_kinds() -> None:
    decider = FaultPlan.parse("garbage=1").messages("lock-main", 1)
    sent = [decider.garbage(DeviceKind.LOCK, PayloadFormat.NATIVE) for _ in range(8)]
    assert sent[:4] == list(garbage_payloads(DeviceKind.LOCK, PayloadFormat.NATIVE))
    assert sent[4:] == sent[:4]


def test_modbus_kinds_have_no_mqtt_garbage() -> None:
    with pytest.raises(ValueError, match="do not speak MQTT"):
        garbage_payloads(DeviceKind.AIR_CONDITIONER, PayloadFormat.NATIVE)
