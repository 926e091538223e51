"""The site file: the shipped example, and one test per way a file can be wrong.

Invalid files are built from a small valid base with a few keys changed, so
each case states only what differs, and each asserts the exact ``path: reason``
lines a person would see from ``centerctl check``.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections.abc import Mapping
from datetime import time, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.site import (
    DeviceKind,
    Protocol,
    Rules,
    Site,
    SiteError,
    load_site,
    parse_site,
    reference_problems,
)
from controller.site_summary import display_width, summarize

CHANGBAI = Path(__file__).resolve().parent.parent / "sites" / "changbai.toml"

# --- The shipped example: the Changbai center of docs/interfaces.md ---------

# room id: (capacity, bookable, always_open), in the contract's order
CHANGBAI_ROOMS: dict[str, tuple[int | None, bool, bool]] = {
    "entrance": (None, False, False),
    "affairs-hall": (120, False, False),
    "self-service": (20, False, True),
    "love-room": (12, False, True),
    "hui-xin-room": (16, True, False),
    "convergence-hall": (80, True, False),
    "corridor": (40, False, False),
    "library": (60, False, False),
    "practice-hall": (40, True, False),
    "gym": (20, False, False),
    "coffee": (15, False, False),
}

# device id: (kind, room, protocol)
CHANGBAI_DEVICES: dict[str, tuple[str, str | None, str]] = {
    "counter-entrance": ("people_counter", "entrance", "mqtt"),
    "lock-main": ("lock", "entrance", "mqtt"),
    "occ-affairs-hall": ("occupancy", "affairs-hall", "mqtt"),
    "occ-self-service": ("occupancy", "self-service", "mqtt"),
    "cabinet-1": ("document_cabinet", "self-service", "modbus"),
    "occ-love-room": ("occupancy", "love-room", "mqtt"),
    "temp-love-room": ("climate", "love-room", "mqtt"),
    "ac-love-room": ("air_conditioner", "love-room", "modbus"),
    "occ-hui-xin-room": ("occupancy", "hui-xin-room", "mqtt"),
    "lock-hui-xin-room": ("lock", "hui-xin-room", "mqtt"),
    "occ-convergence-hall": ("occupancy", "convergence-hall", "mqtt"),
    "lock-convergence-hall": ("lock", "convergence-hall", "mqtt"),
    "ac-convergence-hall": ("air_conditioner", "convergence-hall", "modbus"),
    "occ-corridor": ("occupancy", "corridor", "mqtt"),
    "occ-library": ("occupancy", "library", "mqtt"),
    "occ-practice-hall": ("occupancy", "practice-hall", "mqtt"),
    "lock-practice-hall": ("lock", "practice-hall", "mqtt"),
    "occ-gym": ("occupancy", "gym", "mqtt"),
    "lock-gym": ("lock", "gym", "mqtt"),
    "occ-coffee": ("occupancy", "coffee", "mqtt"),
    "temp-outdoor": ("climate", None, "mqtt"),
    "fire-panel": ("fire_alarm", None, "mqtt"),
}


@pytest.fixture(scope="module")
def changbai() -> Site:
    return load_site(CHANGBAI)


def test_changbai_site_info(changbai: Site) -> None:
    info = changbai.site
    assert (info.id, info.name, info.name_en) == (
        "changbai",
        "长白新村街道四中心",
        "Changbai New Village Four Centers",
    )
    assert info.timezone == "Asia/Shanghai"
    assert (info.hours.open, info.hours.close) == (time(8, 30), time(21, 0))
    # The file writes the contract's defaults out; they must equal the built-in ones.
    assert changbai.rules == Rules()


def test_changbai_rooms(changbai: Site) -> None:
    assert [room.id for room in changbai.rooms] == list(CHANGBAI_ROOMS)
    for room in changbai.rooms:
        assert (room.capacity, room.bookable, room.always_open) == CHANGBAI_ROOMS[room.id], room.id
        assert room.name, room.id
        assert room.name_en, room.id


def test_changbai_devices(changbai: Site) -> None:
    actual = {
        device.id: (device.kind.value, device.room, device.protocol and device.protocol.value)
        for device in changbai.devices
    }
    assert actual == CHANGBAI_DEVICES
    assert len(changbai.devices) == len(CHANGBAI_DEVICES)  # no id twice


def test_changbai_device_details(changbai: Site) -> None:
    devices = changbai.device_by_id
    for device in changbai.devices:
        if device.protocol is Protocol.MQTT:
            assert device.interval is not None, device.id
            assert device.name, device.id
    modbus = {
        device.id: (device.host, device.port, device.unit, device.profile)
        for device in changbai.devices
        if device.protocol is Protocol.MODBUS
    }
    assert modbus == {
        "ac-love-room": ("127.0.0.1", 5020, 1, "generic-ac"),
        "ac-convergence-hall": ("127.0.0.1", 5021, 1, "generic-ac"),
        "cabinet-1": ("127.0.0.1", 5022, 1, "generic-cabinet-24"),
    }
    assert devices["cabinet-1"].compartments == 24
    assert devices["ac-love-room"].poll == timedelta(seconds=2)
    assert devices["ac-love-room"].timeout == timedelta(seconds=1)
    assert devices["occ-gym"].interval == timedelta(seconds=30)
    assert devices["temp-outdoor"].interval == timedelta(seconds=60)


# --- Building invalid files from a minimal valid base ---------------------------

BASE: dict[str, Any] = {
    "site": {
        "id": "test",
        "name": "测试中心",
        "hours": {"open": "08:30", "close": "21:00"},
    },
    "rooms": [
        {"id": "hall", "name": "大厅", "capacity": 50, "bookable": True},
        {"id": "lobby", "name": "门厅"},
    ],
    "devices": [
        {"id": "occ-hall", "kind": "occupancy", "room": "hall", "interval": "30s"},
        {"id": "lock-hall", "kind": "lock", "room": "hall", "interval": "60s"},
        {
            "id": "ac-hall",
            "kind": "air_conditioner",
            "room": "hall",
            "protocol": "modbus",
            "host": "127.0.0.1",
            "port": 5020,
            "profile": "generic-ac",
            "poll": "2s",
            "timeout": "1s",
        },
    ],
}

REMOVE = object()  # a change that deletes the key
_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _apply(data: dict[str, Any], path: str, value: object) -> None:
    """Set (or with REMOVE delete) ``rooms[0].capacity``-style ``path`` in ``data``."""
    steps: list[str | int] = [name if name else int(index) for name, index in _STEP.findall(path)]
    target: Any = data
    for step in steps[:-1]:
        target = target.setdefault(step, {}) if isinstance(step, str) else target[step]
    last = steps[-1]
    if value is REMOVE:
        del target[last]
    else:
        target[last] = value


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON strings are TOML basic strings
    if isinstance(value, Mapping):
        return (
            "{ " + ", ".join(f"{key} = {_toml_value(item)}" for key, item in value.items()) + " }"
        )
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(data: Mapping[str, Any]) -> str:
    """Just enough TOML for site files: tables, arrays of tables, inline values."""

    def is_table_array(value: object) -> bool:
        return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)

    lines = [
        f"{key} = {_toml_value(value)}"
        for key, value in data.items()
        if not isinstance(value, dict) and not is_table_array(value)
    ]
    for key, value in data.items():
        if isinstance(value, dict):
            lines += ["", f"[{key}]", *(f"{k} = {_toml_value(v)}" for k, v in value.items())]
        elif is_table_array(value):
            for entry in value:
                lines += ["", f"[[{key}]]", *(f"{k} = {_toml_value(v)}" for k, v in entry.items())]
    return "\n".join(lines) + "\n"


def site_text(changes: Mapping[str, object] | None = None) -> str:
    """The base site as TOML, with ``changes`` (path -> value or REMOVE) applied."""
    data = copy.deepcopy(BASE)
    for path, value in (changes or {}).items():
        _apply(data, path, value)
    return to_toml(data)


def problems_of(text: str) -> list[str]:
    with pytest.raises(SiteError) as caught:
        parse_site(text, "test.toml")
    return [f"{path}: {reason}" for path, reason in caught.value.problems]


def test_base_is_valid() -> None:
    site = parse_site(site_text())
    assert [device.id for device in site.devices] == ["occ-hall", "lock-hall", "ac-hall"]


def test_toml_helper_round_trips() -> None:
    assert tomllib.loads(site_text()) == BASE


KINDS = ", ".join(f"'{kind.value}'" for kind in list(DeviceKind)[:-1])
ID_RULE = "use lower-case letters, digits, '-' and '_' (at most 64)"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param(
            {"rooms[0].capacity": 0},
            ["rooms[0].capacity: must be > 0"],
            id="capacity-zero",
        ),
        pytest.param(
            {"rooms[1].capacity": -5},
            ["rooms[1].capacity: must be > 0"],
            id="capacity-negative",
        ),
        pytest.param(
            {"rooms[0].capacity": REMOVE},
            ["rooms[0].capacity: a bookable room needs a capacity"],
            id="bookable-without-capacity",
        ),
        pytest.param(
            {"rooms[1].id": "hall"},
            ["rooms[1].id: duplicate id 'hall' (first used at rooms[0])"],
            id="duplicate-room-id",
        ),
        pytest.param(
            {"devices[2].id": "occ-hall"},
            ["devices[2].id: duplicate id 'occ-hall' (first used at devices[0])"],
            id="duplicate-device-id",
        ),
        pytest.param(
            {
                "devices[0].state_topic": "zigbee2mqtt/hall",
                "devices[1].state_topic": "zigbee2mqtt/hall",
            },
            [
                "devices[1].state_topic: duplicate state_topic 'zigbee2mqtt/hall'"
                " (first used at devices[0])"
            ],
            id="duplicate-state-topic",
        ),
        pytest.param(
            {"devices[1].room": "attic"},
            ["devices[1].room: no room with id 'attic'"],
            id="unknown-room",
        ),
        pytest.param(
            {"devices[0].kind": "smoke_detector"},
            [f"devices[0].kind: must be one of {KINDS} or 'document_cabinet'"],
            id="unknown-kind",
        ),
        pytest.param(
            {"devices[1].protocol": "modbus"},
            ["devices[1].protocol: a lock device speaks mqtt, not modbus"],
            id="lock-over-modbus",
        ),
        pytest.param(
            {"devices[2].protocol": "mqtt"},
            ["devices[2].protocol: an air_conditioner device speaks modbus, not mqtt"],
            id="ac-over-mqtt",
        ),
        pytest.param(
            {"devices[2].host": REMOVE},
            ["devices[2].host: a Modbus device needs a host"],
            id="modbus-without-host",
        ),
        pytest.param(
            {"devices[2].profile": REMOVE},
            ["devices[2].profile: a Modbus device needs a profile"],
            id="modbus-without-profile",
        ),
        pytest.param(
            {"devices[2].host": REMOVE, "devices[2].profile": REMOVE},
            [
                "devices[2].host: a Modbus device needs a host",
                "devices[2].profile: a Modbus device needs a profile",
            ],
            id="modbus-without-host-and-profile",
        ),
        pytest.param(
            {"devices[2].timeout": "2s"},
            ["devices[2].timeout: must be shorter than poll (2s)"],
            id="modbus-timeout-equals-poll",
        ),
        pytest.param(
            {"devices[2].timeout": "5s"},
            ["devices[2].timeout: must be shorter than poll (2s)"],
            id="modbus-timeout-above-poll",
        ),
        pytest.param(
            {"devices[0].host": "10.0.0.7"},
            ["devices[0].host: only applies to Modbus devices"],
            id="host-on-mqtt-device",
        ),
        pytest.param(
            {"devices[0].interval": "3x"},
            ["devices[0].interval: not a duration: '3x'; write it like '90s', '15m' or '2h'"],
            id="bad-duration",
        ),
        pytest.param(
            {"devices[0].interval": 30},
            ["devices[0].interval: write durations as strings with a unit, e.g. '90s' or '15m'"],
            id="bare-number-duration",
        ),
        pytest.param(
            {"rules.no_show_after": 900},
            ["rules.no_show_after: write durations as strings with a unit, e.g. '90s' or '15m'"],
            id="bare-number-rule-duration",
        ),
        pytest.param(
            {"rules.climate.empty_off_after": "0s"},
            ["rules.climate.empty_off_after: must be > 0s"],
            id="zero-duration",
        ),
        pytest.param(
            {"devices[2].poll": "0ms"},
            ["devices[2].poll: must be > 0s"],
            id="zero-poll",
        ),
        pytest.param(
            {"site.timezone": "Asia/Beijing"},
            ["site.timezone: unknown time zone 'Asia/Beijing'"],
            id="unknown-timezone",
        ),
        pytest.param(
            {"site.hours.open": "21:00", "site.hours.close": "08:30"},
            ["site.hours: open must be before close"],
            id="open-after-close",
        ),
        pytest.param(
            {"site.hours.close": "08:30"},
            ["site.hours: open must be before close"],
            id="open-equals-close",
        ),
        pytest.param(
            {"site.hours.close": "25:00"},
            ["site.hours.close: not a time of day: 25:00"],
            id="hour-25",
        ),
        pytest.param(
            {"site.hours.open": "8:30"},
            ["site.hours.open: write times as 'HH:MM', e.g. '08:30'"],
            id="time-without-leading-zero",
        ),
        pytest.param(
            {"rooms[1].capcity": 10},
            ["rooms[1].capcity: unknown key"],
            id="typo-capcity",
        ),
        pytest.param(
            {"devices[0].id": "controller"},
            ["devices[0].id: 'controller' is reserved for the controller's topics"],
            id="reserved-device-id",
        ),
        pytest.param(
            {"devices[0].id": "occ/hall"},
            [f"devices[0].id: {ID_RULE}"],
            id="device-id-with-slash",
        ),
        pytest.param(
            {"devices[0].id": "Occ-Hall"},
            [f"devices[0].id: {ID_RULE}"],
            id="device-id-upper-case",
        ),
        pytest.param(
            # Devices name "hall"; the malformed room id must not also make
            # every one of them "no room with id 'hall'".
            {"rooms[0].id": "Hall"},
            [f"rooms[0].id: {ID_RULE}"],
            id="room-id-upper-case",
        ),
        pytest.param(
            {"devices[0].room": REMOVE},
            ["devices[0].room: an occupancy device must name its room"],
            id="occupancy-without-room",
        ),
        pytest.param(
            {"site.id": REMOVE},
            ["site.id: required"],
            id="missing-site-id",
        ),
        pytest.param(
            # True, if not the first thing to fix: with no rooms no room exists.
            {"rooms": []},
            [
                "rooms: must not be empty",
                "devices[0].room: no room with id 'hall'",
                "devices[1].room: no room with id 'hall'",
                "devices[2].room: no room with id 'hall'",
            ],
            id="no-rooms",
        ),
        pytest.param(
            {"rules": {"climate": {"rooms": ["hall", "attic", "lobby"]}}},
            [
                "rules.climate.rooms[1]: no room with id 'attic'",
                "rules.climate.rooms[2]: room 'lobby' has no air conditioner",
            ],
            id="climate-rooms-must-exist-and-have-an-ac",
        ),
        pytest.param(
            {"rules": {"cabinet": {"wrong_codes": 0, "lockout": "0s"}}},
            [
                "rules.cabinet.wrong_codes: must be >= 1",
                "rules.cabinet.lockout: must be > 0s",
            ],
            id="cabinet-throttle-must-be-positive",
        ),
    ],
)
def test_invalid_site(changes: dict[str, object], expected: list[str]) -> None:
    assert problems_of(site_text(changes)) == expected


def test_the_climate_rule_runs_the_love_rooms_ac_unless_the_file_names_rooms(
    changbai: Site,
) -> None:
    assert [device.id for device in changbai.climate_air_conditioners] == ["ac-love-room"]
    # A site without a love room runs no AC by rule unless it says which.
    assert parse_site(site_text()).climate_air_conditioners == []
    chosen = parse_site(site_text({"rules": {"climate": {"rooms": ["hall"]}}}))
    assert [device.id for device in chosen.climate_air_conditioners] == ["ac-hall"]


def test_several_problems_are_reported_together() -> None:
    """Field errors do not hide duplicate ids or unknown rooms, nor each other."""
    text = site_text(
        {
            "rooms[0].capacity": 0,
            "devices[0].interval": "3x",
            "devices[2].host": REMOVE,
            "devices[1].id": "occ-hall",
            "devices[2].room": "roof",
        }
    )
    assert problems_of(text) == [
        "rooms[0].capacity: must be > 0",
        "devices[0].interval: not a duration: '3x'; write it like '90s', '15m' or '2h'",
        "devices[2].host: a Modbus device needs a host",
        "devices[1].id: duplicate id 'occ-hall' (first used at devices[0])",
        "devices[2].room: no room with id 'roof'",
    ]


def test_a_field_error_is_not_repeated_as_a_reference_problem() -> None:
    # "Hall" fails the id pattern; it is not reported a second time as unknown.
    assert problems_of(site_text({"devices[0].room": "Hall"})) == [f"devices[0].room: {ID_RULE}"]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param(
            {"rooms": "hall"},
            ["rooms: Input should be a valid list"],
            id="rooms-not-a-list",
        ),
        pytest.param(
            {"devices": ["occ-hall", "occ-hall"]},
            [
                "devices[0]: Input should be a valid dictionary or instance of Device",
                "devices[1]: Input should be a valid dictionary or instance of Device",
            ],
            id="devices-not-tables",
        ),
        pytest.param(
            {"rooms[1].id": 7, "devices[0].id": "lock-hall"},
            [
                "rooms[1].id: Input should be a valid string",
                "devices[1].id: duplicate id 'lock-hall' (first used at devices[0])",
            ],
            id="room-id-not-a-string",
        ),
    ],
)
def test_wrong_types_do_not_break_reference_checks(
    changes: dict[str, object], expected: list[str]
) -> None:
    assert problems_of(site_text(changes)) == expected


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "site",
        {"rooms": 3, "devices": {"id": "x"}},
        {"rooms": [1, {"id": 5}, {}], "devices": [None, {"id": ["x"], "room": {"a": 1}}]},
    ],
)
def test_reference_problems_skips_what_it_cannot_read(data: object) -> None:
    assert reference_problems(data) == []


def test_toml_syntax_error() -> None:
    text = site_text() + "[[rooms\n"
    with pytest.raises(tomllib.TOMLDecodeError) as decoded:
        tomllib.loads(text)
    assert problems_of(text) == [f"(toml): {decoded.value}"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(SiteError) as caught:
        load_site(path)
    assert caught.value.problems == [("(file)", "No such file or directory")]
    assert str(path) in str(caught.value)


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "gbk.toml"
    path.write_bytes(site_text().encode("gbk"))
    with pytest.raises(SiteError) as caught:
        load_site(path)
    assert caught.value.problems == [("(file)", "not UTF-8 text")]


def test_error_message_names_file_and_every_problem() -> None:
    with pytest.raises(SiteError) as caught:
        parse_site(site_text({"rooms[0].capacity": 0, "rooms[1].id": "hall"}), "center.toml")
    assert str(caught.value) == (
        "center.toml: invalid site file\n"
        "  rooms[0].capacity: must be > 0\n"
        "  rooms[1].id: duplicate id 'hall' (first used at rooms[0])"
    )


# --- The summary printed by `centerctl check` -----------------------------------


def test_summary_mentions_rooms_and_counts(changbai: Site) -> None:
    text = summarize(changbai)
    assert "长白新村街道四中心 / Changbai New Village Four Centers" in text
    assert "Asia/Shanghai" in text
    assert "08:30-21:00" in text
    for room_id in CHANGBAI_ROOMS:
        assert re.search(rf"^  {re.escape(room_id)}\s", text, re.MULTILINE), room_id
    occupancy = sum(kind == "occupancy" for kind, _, _ in CHANGBAI_DEVICES.values())
    assert re.search(rf"^  occupancy\s+{occupancy}\s+\(mqtt {occupancy}\)$", text, re.MULTILINE)
    assert re.search(r"^  air_conditioner\s+2\s+\(modbus 2\)$", text, re.MULTILINE)
    assert re.search(r"^  total\s+22\s+\(mqtt 19, modbus 3\)$", text, re.MULTILINE)
    for device_id in ("temp-outdoor", "fire-panel"):
        assert device_id in text
    assert re.search(r"^  no-show after start\s+15m$", text, re.MULTILINE)


def test_summary_columns_align_with_chinese_names(changbai: Site) -> None:
    """Columns line up on screen, where each Chinese character takes two columns."""
    lines = summarize(changbai).splitlines()
    starts = set()
    for room in changbai.rooms:
        (line,) = [line for line in lines if line.startswith(f"  {room.id} ")]
        opening = "24 h" if room.always_open else "center hours"
        starts.add(display_width(line[: line.index(f"  {opening}")]))
    assert len(starts) == 1
    assert not any(line != line.rstrip() for line in lines)


def test_display_width() -> None:
    assert display_width("gym") == 3
    assert display_width("健身房") == 6
    assert display_width('社区事务受理中心"快"平台') == 24
