"""Device profiles: the bundled maps are the contract's, bad maps fail at load, exact codec."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.readings import AcMode, AirConditionerReading, CabinetReading, FanSpeed
from controller.site import SiteError, parse_site
from controller.site_profiles import profiles_for
from drivers.modbus_profile import (
    BUNDLED_PROFILES,
    Profile,
    ProfileError,
    Table,
    decode_block,
    encode_value,
    encode_write,
    load_profile,
    load_profiles,
    plan_reads,
    to_reading,
)

INTESIS_AC = """
[profile]
id = "intesis-ac"
kind = "air_conditioner"
vendor = "Intesis-style gateway"
description = "everything in holding registers, whole degrees"

[points.power]
table = "holding"
address = 1
type = "bool"
access = "read_write"

[points.mode]
table = "holding"
address = 2
access = "read_write"
enum = { 0 = "auto", 1 = "heat", 2 = "dry", 3 = "fan", 4 = "cool" }

[points.setpoint]
table = "holding"
address = 4
type = "int16"
access = "read_write"
minimum = 16
maximum = 30

[points.room_temperature]
table = "holding"
address = 5
type = "int16"

[points.fault]
table = "holding"
address = 6
"""


@pytest.fixture
def profiles() -> dict[str, Profile]:
    return load_profiles()


def write_profile(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


# -- every profile -----------------------------------------------------------


def test_every_bundled_file_loads_under_its_own_name(profiles: dict[str, Profile]) -> None:
    files = sorted(path.stem for path in BUNDLED_PROFILES.glob("*.toml"))
    assert files == sorted(profiles) == ["generic-ac", "generic-cabinet-24"]


@pytest.mark.parametrize("profile_id", ["generic-ac", "generic-cabinet-24"])
def test_every_writable_point_encodes_and_every_polled_point_is_read(
    profiles: dict[str, Profile], profile_id: str
) -> None:
    profile = profiles[profile_id]
    planned = {name for block in plan_reads(profile) for name, _ in block.points}
    for name, point in profile.points.items():
        if point.readable and point.poll:
            assert name in planned
        if point.writable:
            value: object = True if point.data_type.value == "bool" else None
            if point.enum:
                value = next(iter(point.enum.values()))
            elif value is None:
                value = point.minimum if point.minimum is not None else 1
            encode_write(profile, name, value, 0 if point.count > 1 else None)


# -- the contract's maps -------------------------------------------------------


def test_generic_ac_is_the_contract_map(profiles: dict[str, Profile]) -> None:
    ac = profiles["generic-ac"]
    where = {name: (point.table, point.address) for name, point in ac.points.items()}
    assert where == {
        "power": (Table.HOLDING, 0),
        "mode": (Table.HOLDING, 1),
        "setpoint": (Table.HOLDING, 2),
        "fan": (Table.HOLDING, 3),
        "room_temperature": (Table.INPUT, 0),
        "fault": (Table.INPUT, 1),
    }
    # Contiguous registers come in one request per table.
    blocks = [(block.table, block.address, block.count) for block in plan_reads(ac)]
    assert blocks == [(Table.HOLDING, 0, 4), (Table.INPUT, 0, 2)]


def test_generic_ac_decodes_scaled_signed_and_enum_values(profiles: dict[str, Profile]) -> None:
    ac = profiles["generic-ac"]
    holding, inputs = plan_reads(ac)
    held, issues = decode_block(ac, holding, [1, 2, 205, 3])
    assert issues == []
    measured, issues = decode_block(ac, inputs, [0xFFCB, 7])  # -53 -> -5.3 °C
    assert issues == []
    reading = to_reading(ac, {**held, **measured})
    assert reading == AirConditionerReading(
        power=True,
        mode=AcMode.HEAT,
        setpoint=20.5,
        fan=FanSpeed.HIGH,
        room_temperature=-5.3,
        fault=7,
    )


def test_unknown_codes_and_missing_sensors_read_as_unknown(profiles: dict[str, Profile]) -> None:
    ac = profiles["generic-ac"]
    holding, inputs = plan_reads(ac)
    held, issues = decode_block(ac, holding, [0, 9, 1200, 0])
    assert held["mode"] is None
    assert held["setpoint"] is None
    assert sorted(issue.point for issue in issues) == ["mode", "setpoint"]
    assert "code 9" in issues[0].reason or "code 9" in issues[1].reason
    measured, issues = decode_block(ac, inputs, [0x8000, 0])  # no sensor fitted
    assert measured["room_temperature"] is None
    assert issues == []


def test_generic_cabinet_is_the_contract_map(profiles: dict[str, Profile]) -> None:
    cabinet = profiles["generic-cabinet-24"]
    assert cabinet.compartments == 24
    blocks = [(block.table, block.address, block.count) for block in plan_reads(cabinet)]
    assert blocks == [(Table.DISCRETE, 0, 24), (Table.DISCRETE, 100, 24)]
    doors, items = plan_reads(cabinet)
    door_bits = [index == 3 for index in range(24)]
    item_bits = [index in (3, 23) for index in range(24)]
    values = {
        **decode_block(cabinet, doors, door_bits)[0],
        **decode_block(cabinet, items, item_bits)[0],
    }
    reading = to_reading(cabinet, values, compartments=24)
    assert isinstance(reading, CabinetReading)
    assert [i for i, open_ in enumerate(reading.doors_open) if open_] == [3]
    assert [i for i, item in enumerate(reading.items_present) if item] == [3, 23]
    assert encode_write(cabinet, "unlock", True, 17)[1:] == (17, [True])


@pytest.mark.parametrize(
    ("point", "value", "index", "message"),
    [
        ("setpoint", 35.0, None, "setpoint must be within 16.0..30.0"),
        ("setpoint", float("nan"), None, "finite"),
        ("setpoint", "26", None, "takes a number"),
        ("mode", "turbo", None, "mode takes one of auto, cool, heat, fan, dry"),
        ("power", 1, None, "power takes true or false"),
        ("room_temperature", 20.0, None, "room_temperature is read-only"),
        ("swing", 1, None, "has no point 'swing'"),
        ("power", True, 1, "single value"),
    ],
)
def test_writes_the_profile_forbids_are_refused_before_sending(
    profiles: dict[str, Profile], point: str, value: object, index: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode_write(profiles["generic-ac"], point, value, index)


def test_cabinet_writes_need_a_compartment_that_exists(profiles: dict[str, Profile]) -> None:
    with pytest.raises(ValueError, match="index from 0 to 23"):
        encode_write(profiles["generic-cabinet-24"], "unlock", True, 24)


def test_setpoint_encodes_to_tenths(profiles: dict[str, Profile]) -> None:
    assert encode_write(profiles["generic-ac"], "setpoint", 26.0)[1:] == (2, [260])
    assert encode_write(profiles["generic-ac"], "setpoint", 22.35)[1:] == (2, [224])
    assert encode_value(profiles["generic-ac"], "room_temperature", -5.3) == [0xFFCB]


# -- a vendor profile from data alone -----------------------------------------


def test_a_second_ac_profile_needs_only_a_file(tmp_path: Path) -> None:
    write_profile(tmp_path, "intesis-ac", INTESIS_AC)
    profiles = load_profiles([tmp_path])
    intesis = profiles["intesis-ac"]
    # Register 3 is not in the map: two requests, never a read of an unmapped address.
    first, second = plan_reads(intesis)
    assert (first.table, first.address, first.count) == (Table.HOLDING, 1, 2)
    assert (second.table, second.address, second.count) == (Table.HOLDING, 4, 3)
    values, issues = decode_block(intesis, first, [1, 4])
    more, more_issues = decode_block(intesis, second, [24, 0xFFFE, 0])
    values.update(more)
    assert issues == more_issues == []
    assert to_reading(intesis, values) == AirConditionerReading(
        power=True, mode=AcMode.COOL, setpoint=24.0, room_temperature=-2.0, fault=0
    )
    assert encode_write(intesis, "mode", "cool")[1:] == (2, [4])
    assert encode_write(intesis, "setpoint", 26)[1:] == (4, [26])


def test_site_may_bring_its_own_profiles(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    write_profile(tmp_path / "profiles", "intesis-ac", INTESIS_AC)
    site = parse_site(SITE_WITH_AC.format(profile="intesis-ac", dirs='profile_dirs = ["profiles"]'))
    profiles = profiles_for(site, tmp_path / "site.toml")
    assert "intesis-ac" in profiles
    assert "generic-ac" in profiles


SITE_WITH_AC = """
[site]
id = "test"
name = "Test"
hours = {{ open = "08:30", close = "21:00" }}

[modbus]
{dirs}

[[rooms]]
id = "love-room"
name = "Love room"
capacity = 12

[[devices]]
id = "ac-1"
kind = "air_conditioner"
room = "love-room"
host = "127.0.0.1"
port = 5020
profile = "{profile}"
"""


def test_a_site_naming_an_unknown_profile_fails_with_the_field(tmp_path: Path) -> None:
    site = parse_site(SITE_WITH_AC.format(profile="daikin-x", dirs=""))
    with pytest.raises(SiteError) as caught:
        profiles_for(site, tmp_path / "site.toml")
    assert caught.value.problems == [
        ("devices[0].profile", "no profile 'daikin-x' (known: generic-ac, generic-cabinet-24)")
    ]


def test_a_site_using_a_cabinet_profile_for_an_ac_fails(tmp_path: Path) -> None:
    site = parse_site(SITE_WITH_AC.format(profile="generic-cabinet-24", dirs=""))
    with pytest.raises(SiteError) as caught:
        profiles_for(site, tmp_path / "site.toml")
    assert caught.value.problems == [
        (
            "devices[0].profile",
            "generic-cabinet-24 is for document_cabinet devices, not air_conditioner",
        )
    ]


def test_a_missing_profile_directory_is_reported(tmp_path: Path) -> None:
    site = parse_site(SITE_WITH_AC.format(profile="generic-ac", dirs='profile_dirs = ["nope"]'))
    with pytest.raises(SiteError, match="profile directory does not exist"):
        profiles_for(site, tmp_path / "site.toml")


# -- bad profiles fail at load, all problems at once ----------------------------


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            ("address = 4\ntype", "address = 5\ntype"),
            "points.setpoint: holding address 5 overlaps points.room_temperature",
        ),
        (
            (
                'table = "holding"\naddress = 1\ntype = "bool"',
                'table = "input"\naddress = 1\ntype = "bool"',
            ),
            "input points are read-only",
        ),
        (('4 = "cool" }', '4 = "turbo" }'), "enum names turbo are not among"),
        (("[points.fault]", "[points.swing]"), "points.swing: unknown point for air_conditioner"),
        (
            (
                '[points.power]\ntable = "holding"\naddress = 1\n'
                'type = "bool"\naccess = "read_write"\n',
                "",
            ),
            "points.power: every air_conditioner profile needs this point",
        ),
        (
            ('type = "int16"\naccess', 'type = "int16"\nscale = 0\naccess'),
            "scale must be a finite number other than 0",
        ),
        (("address = 6", 'address = 6\ncolour = "red"'), "Extra inputs are not permitted"),
    ],
)
def test_bad_profiles_fail_with_file_point_and_reason(
    tmp_path: Path, change: tuple[str, str], problem: str
) -> None:
    old, new = change
    assert old in INTESIS_AC
    path = write_profile(tmp_path, "intesis-ac", INTESIS_AC.replace(old, new, 1))
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    (where, reason), *_ = caught.value.problems
    assert where == str(path)
    assert problem in reason


def test_profile_id_must_match_its_file(tmp_path: Path) -> None:
    path = write_profile(tmp_path, "other-name", INTESIS_AC)
    with pytest.raises(ProfileError, match="must match the file name"):
        load_profile(path)


def test_a_directory_cannot_redefine_a_bundled_profile(tmp_path: Path) -> None:
    write_profile(tmp_path, "generic-ac", INTESIS_AC.replace("intesis-ac", "generic-ac"))
    with pytest.raises(ProfileError, match="already defined"):
        load_profiles([tmp_path])
