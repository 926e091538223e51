"""The site file: one center's rooms, devices, hours and rule timings.

A site file is TOML validated by the pydantic models below. Every problem in a
file is reported at once as ``path: reason`` (``rooms[3].capacity: must be > 0``)
so that whoever edits it can fix everything in one pass; nothing runs on a file
that does not validate. Unknown keys are errors too: a misspelt ``capcity``
would otherwise silently fall back to a default.
"""

from __future__ import annotations

import enum
import re
import tomllib
import zoneinfo
from collections.abc import Iterable, Mapping
from datetime import time, timedelta
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from controller.durations import format_duration, parse_duration

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
# A problem's location in the file (``("rooms", 3, "capacity")``) and its reason.
Problem = tuple[tuple[str | int, ...], str]
# Device ids become MQTT topic levels next to the controller's own topics.
RESERVED_DEVICE_IDS = frozenset({"controller", "room", "events"})


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as error:
            raise PydanticCustomError("duration", str(error)) from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise PydanticCustomError(
            "duration", "write durations as strings with a unit, e.g. '90s' or '15m'"
        )
    return value


def _positive(value: timedelta) -> timedelta:
    # Not Field(gt=...): pydantic reports that bound as "datetime.timedelta(0)".
    if value <= timedelta(0):
        raise PydanticCustomError("duration", "must be > 0s")
    return value


def _clock_time(value: Any) -> Any:
    if isinstance(value, str):
        if not re.fullmatch(r"\d{2}:\d{2}", value):
            raise PydanticCustomError("clock_time", "write times as 'HH:MM', e.g. '08:30'")
        hour, minute = int(value[:2]), int(value[3:])
        if hour > 23 or minute > 59:
            raise PydanticCustomError("clock_time", "not a time of day: {value}", {"value": value})
        return time(hour, minute)
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
ClockTime = Annotated[time, BeforeValidator(_clock_time)]
Identifier = Annotated[str, Field(pattern=ID_PATTERN)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceKind(enum.StrEnum):
    OCCUPANCY = "occupancy"
    PEOPLE_COUNTER = "people_counter"
    CLIMATE = "climate"
    LOCK = "lock"
    FIRE_ALARM = "fire_alarm"
    AIR_CONDITIONER = "air_conditioner"
    DOCUMENT_CABINET = "document_cabinet"


class Protocol(enum.StrEnum):
    MQTT = "mqtt"
    MODBUS = "modbus"


class PayloadFormat(enum.StrEnum):
    NATIVE = "native"
    ZIGBEE2MQTT = "zigbee2mqtt"


MQTT_KINDS = frozenset(
    {
        DeviceKind.OCCUPANCY,
        DeviceKind.PEOPLE_COUNTER,
        DeviceKind.CLIMATE,
        DeviceKind.LOCK,
        DeviceKind.FIRE_ALARM,
    }
)
MODBUS_KINDS = frozenset({DeviceKind.AIR_CONDITIONER, DeviceKind.DOCUMENT_CABINET})
# Kinds that only make sense inside a room; the others may also be site-wide
# (the outdoor climate sensor, the fire-alarm panel).
ROOM_KINDS = frozenset({DeviceKind.OCCUPANCY, DeviceKind.LOCK, DeviceKind.AIR_CONDITIONER})


class Hours(_Model):
    open: ClockTime
    close: ClockTime

    @model_validator(mode="after")
    def _open_before_close(self) -> Self:
        if self.open >= self.close:
            raise PydanticCustomError("hours", "open must be before close")
        return self


class SiteInfo(_Model):
    id: Identifier
    name: str = Field(min_length=1)
    name_en: str = ""
    timezone: str = "Asia/Shanghai"
    hours: Hours

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise PydanticCustomError(
                "timezone", "unknown time zone {value}", {"value": repr(value)}
            ) from None
        return value

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


DEFAULT_CLIMATE_ROOM = "love-room"


class ClimateRules(_Model):
    """The climate rule (CONTRACT §5) and which rooms' air conditioners follow it.

    ``rooms`` None means the love room when the site has one: the rule was
    written for it, and an AC elsewhere (a hall with its own schedule) is left
    to staff unless the file opts it in.
    """

    rooms: list[Identifier] | None = None
    cool_above: float = Field(default=26.0, ge=10.0, le=40.0)
    cool_setpoint: float = Field(default=26.0, ge=16.0, le=30.0)
    empty_off_after: PositiveDuration = timedelta(minutes=15)
    heat_wave_outdoor: float = Field(default=35.0, ge=20.0, le=60.0)
    cold_outdoor: float = Field(default=10.0, ge=-40.0, le=25.0)
    heat_setpoint: float = Field(default=20.0, ge=16.0, le=30.0)
    min_off: Duration = timedelta(minutes=3)
    # °C: cooling that started above cool_above goes on until the room is this
    # much below it (likewise heating), so a sensor hovering at the threshold
    # does not switch the compressor on and off.
    hysteresis: float = Field(default=0.5, ge=0.0, le=5.0)


class CabinetRules(_Model):
    """Unattended document pickup (CONTRACT §4, §5)."""

    # A deposit fails (and frees its compartment) unless the door closes with
    # an item inside this long after the pulse; likewise a pickup whose door
    # never opens is abandoned (the deposit stays collectable).
    deposit_timeout: PositiveDuration = timedelta(minutes=2)
    pickup_timeout: PositiveDuration = timedelta(minutes=2)
    wrong_codes: int = Field(default=5, ge=1, le=100)  # wrong codes from one kiosk token ...
    wrong_code_window: PositiveDuration = timedelta(minutes=15)  # ... within this long ...
    lockout: PositiveDuration = timedelta(minutes=15)  # ... refuse it (429) this long


class Rules(_Model):
    unlock_before: Duration = timedelta(minutes=10)
    no_show_after: PositiveDuration = timedelta(minutes=15)
    relock_grace: Duration = timedelta(minutes=15)
    door_open_alarm_after: PositiveDuration = timedelta(seconds=60)
    offline_after_missed: int = Field(default=3, ge=1)
    # People: a room over its capacity raises over_capacity, which clears once
    # the count is this many below capacity (default: back below it), so a count
    # wavering at the limit does not raise and clear it again and again.
    capacity_hysteresis: int = Field(default=1, ge=0, le=50)
    climate: ClimateRules = ClimateRules()
    cabinet: CabinetRules = CabinetRules()


class Position(_Model):
    """Where a room's tile sits on the status page's floor map, in grid cells.

    ``x``/``y`` are the tile's top-left cell (0-based, ``y`` grows downwards) and
    ``w``/``h`` its size, on ``floor``; the map draws the floor the way it is laid
    out, so staff find a room where they would walk to it.
    """

    floor: int = Field(default=1, ge=-9, le=199)
    x: int = Field(ge=0, le=63)
    y: int = Field(ge=0, le=63)
    w: int = Field(default=1, ge=1, le=16)
    h: int = Field(default=1, ge=1, le=16)


class Room(_Model):
    id: Identifier
    name: str = Field(min_length=1)
    name_en: str = ""
    capacity: int | None = Field(default=None, gt=0)
    bookable: bool = False
    always_open: bool = False
    position: Position | None = None  # on the status page's map; None: placed on a grid

    @model_validator(mode="after")
    def _bookable_rooms_have_capacity(self) -> Self:
        if self.bookable and self.capacity is None:
            raise _MultiError([(("capacity",), "a bookable room needs a capacity")])
        return self


class Device(_Model):
    id: Identifier
    kind: DeviceKind
    room: Identifier | None = None
    name: str = ""
    protocol: Protocol | None = None
    # MQTT devices
    interval: PositiveDuration | None = None
    state_topic: str | None = Field(default=None, min_length=1)
    availability_topic: str | None = Field(default=None, min_length=1)
    command_topic: str | None = Field(default=None, min_length=1)
    format: PayloadFormat = PayloadFormat.NATIVE
    # Modbus devices
    host: str | None = Field(default=None, min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    unit: int = Field(default=1, ge=0, le=255)
    profile: str | None = Field(default=None, min_length=1)
    poll: PositiveDuration = timedelta(seconds=2)
    timeout: PositiveDuration = timedelta(seconds=1)
    # Document cabinets
    compartments: int = Field(default=24, ge=1, le=256)

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_DEVICE_IDS:
            raise PydanticCustomError(
                "reserved_id",
                "{value} is reserved for the controller's topics",
                {"value": repr(value)},
            )
        return value

    @field_validator("state_topic", "availability_topic", "command_topic")
    @classmethod
    def _concrete_topic(cls, value: str | None) -> str | None:
        if value is not None and ("+" in value or "#" in value):
            raise PydanticCustomError("topic", "a device topic cannot contain MQTT wildcards")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_protocol(cls, data: Any) -> Any:
        """A device speaks its kind's protocol unless the file says otherwise."""
        if isinstance(data, dict) and data.get("protocol") is None:
            try:
                kind = DeviceKind(str(data.get("kind")))
            except ValueError:
                return data  # the kind's own error says what is wrong
            expected = Protocol.MQTT if kind in MQTT_KINDS else Protocol.MODBUS
            return {**data, "protocol": expected}
        return data

    @model_validator(mode="after")
    def _protocol_fits_kind(self) -> Self:
        # Every problem is reported at the field to change, all at once.
        expected = Protocol.MQTT if self.kind in MQTT_KINDS else Protocol.MODBUS
        protocol = self.protocol or expected
        kind = _with_article(self.kind.value)
        problems: list[Problem] = []
        if protocol is not expected:
            problems.append(
                (("protocol",), f"{kind} device speaks {expected.value}, not {protocol.value}")
            )
        elif protocol is Protocol.MODBUS:
            if self.host is None:
                problems.append((("host",), "a Modbus device needs a host"))
            if self.profile is None:
                problems.append((("profile",), "a Modbus device needs a profile"))
            if self.timeout >= self.poll:
                poll = format_duration(self.poll)
                problems.append((("timeout",), f"must be shorter than poll ({poll})"))
        else:
            for name in ("host", "profile"):
                if getattr(self, name) is not None:
                    problems.append(((name,), "only applies to Modbus devices"))
        if self.kind in ROOM_KINDS and self.room is None:
            problems.append((("room",), f"{kind} device must name its room"))
        if problems:
            raise _MultiError(problems)
        return self

    @property
    def is_mqtt(self) -> bool:
        return self.protocol is Protocol.MQTT


class ModbusOptions(_Model):
    """Where to find device profiles beyond the bundled ones.

    Directories are relative to the site file, so a site and its vendor
    profiles travel together.
    """

    profile_dirs: list[Annotated[str, Field(min_length=1)]] = []


class Site(_Model):
    site: SiteInfo
    rules: Rules = Rules()
    modbus: ModbusOptions = ModbusOptions()
    rooms: list[Room] = Field(min_length=1)
    devices: list[Device] = []

    @model_validator(mode="after")
    def _references(self) -> Self:
        # The same checks parse_site runs on the raw TOML when a field fails,
        # so that a valid-looking file and a broken one get the same verdicts.
        problems = reference_problems(self.model_dump())
        if problems:
            raise _MultiError(problems)
        return self

    @property
    def room_by_id(self) -> Mapping[str, Room]:
        return {room.id: room for room in self.rooms}

    @property
    def device_by_id(self) -> Mapping[str, Device]:
        return {device.id: device for device in self.devices}

    def devices_in(self, room_id: str) -> list[Device]:
        return [device for device in self.devices if device.room == room_id]

    @property
    def climate_air_conditioners(self) -> list[Device]:
        """The air conditioners the climate rule runs (see :class:`ClimateRules`)."""
        rooms = self.rules.climate.rooms
        if rooms is None:
            rooms = [DEFAULT_CLIMATE_ROOM] if DEFAULT_CLIMATE_ROOM in self.room_by_id else []
        return [
            device
            for device in self.devices
            if device.kind is DeviceKind.AIR_CONDITIONER and device.room in rooms
        ]


def reference_problems(data: object) -> list[Problem]:
    """Problems that span entries: duplicate ids and topics, unknown rooms.

    Works on plain data (the parsed TOML, or a validated Site dumped to dicts)
    rather than on models, because pydantic only runs a model validator once
    every field is valid: a file with one bad capacity and a duplicate device
    id must still report both. Anything it cannot read (a section that is not a
    list, an entry that is not a table, an id that is not a valid identifier)
    is skipped; field validation reports those.
    """
    if not isinstance(data, Mapping):
        return []
    rooms = _entries(data.get("rooms"))
    devices = _entries(data.get("devices"))
    problems: list[Problem] = []
    problems += _duplicates("rooms", (_identifier(room, "id") for room in rooms))
    problems += _duplicates("devices", (_identifier(device, "id") for device in devices))
    room_ids = [_identifier(room, "id") for room in rooms]
    # With a room whose id is unreadable or malformed (or no room list at all)
    # the set of rooms is unknown, and "no room with id ..." would likely be
    # wrong: a room "Gym" is meant to be "gym", which devices then name.
    if isinstance(data.get("rooms"), list) and None not in room_ids:
        known = set(room_ids)
        for index, device in enumerate(devices):
            room = _identifier(device, "room")
            if room is not None and room not in known:
                problems.append((("devices", index, "room"), f"no room with id {room!r}"))
    problems += _duplicates(
        "devices", (_text(device, "state_topic") for device in devices), field="state_topic"
    )
    problems += _climate_room_problems(data, room_ids, devices)
    problems += _overlapping_tiles(rooms)
    return problems


def _overlapping_tiles(rooms: list[Mapping[str, object] | None]) -> list[Problem]:
    """Two rooms drawn on the same cells of one floor would hide each other."""
    placed: list[tuple[str, int, set[tuple[int, int]]]] = []
    problems: list[Problem] = []
    for index, room in enumerate(rooms):
        tile = _tile(room.get("position") if room is not None else None)
        if tile is None:
            continue
        floor, cells = tile
        overlapped = next(
            (
                other
                for other, other_floor, taken in placed
                if other_floor == floor and cells & taken
            ),
            None,
        )
        if overlapped is not None:
            reason = f"overlaps room {overlapped!r} on floor {floor}"
            problems.append((("rooms", index, "position"), reason))
        else:
            placed.append((_identifier(room, "id") or f"rooms[{index}]", floor, cells))
    return problems


def _tile(position: object) -> tuple[int, set[tuple[int, int]]] | None:
    """The floor and grid cells of a position; None when unreadable (field errors say why)."""
    if not isinstance(position, Mapping):
        return None
    numbers: list[int] = []
    for key, default in (("x", None), ("y", None), ("w", 1), ("h", 1), ("floor", 1)):
        value = position.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        numbers.append(value)
    x, y, w, h, floor = numbers
    if min(x, y) < 0 or not 1 <= w <= 16 or not 1 <= h <= 16:
        return None
    return floor, {(column, row) for column in range(x, x + w) for row in range(y, y + h)}


def _climate_room_problems(
    data: Mapping[str, object],
    room_ids: list[str | None],
    devices: list[Mapping[str, object] | None],
) -> list[Problem]:
    """Each room named in ``rules.climate.rooms`` exists and has an air conditioner."""
    rules = data.get("rules")
    climate = rules.get("climate") if isinstance(rules, Mapping) else None
    rooms = climate.get("rooms") if isinstance(climate, Mapping) else None
    if not isinstance(rooms, list) or None in room_ids:
        return []
    cooled = {
        _identifier(device, "room")
        for device in devices
        if device is not None and device.get("kind") == DeviceKind.AIR_CONDITIONER.value
    }
    problems: list[Problem] = []
    for index, room in enumerate(rooms):
        where = ("rules", "climate", "rooms", index)
        if not isinstance(room, str):
            continue
        if room not in room_ids:
            problems.append((where, f"no room with id {room!r}"))
        elif room not in cooled:
            problems.append((where, f"room {room!r} has no air conditioner"))
    return problems


def _entries(value: object) -> list[Mapping[str, object] | None]:
    """The tables of an array of tables, None for entries that are not tables.

    Keeps every entry's position so that problems point at the right index.
    """
    if not isinstance(value, list):
        return []
    return [entry if isinstance(entry, Mapping) else None for entry in value]


def _text(entry: Mapping[str, object] | None, key: str) -> str | None:
    value = None if entry is None else entry.get(key)
    return value if isinstance(value, str) else None


def _identifier(entry: Mapping[str, object] | None, key: str) -> str | None:
    value = _text(entry, key)
    return value if value is not None and re.fullmatch(ID_PATTERN, value) else None


def _duplicates(collection: str, values: Iterable[str | None], field: str = "id") -> list[Problem]:
    first_seen: dict[str, int] = {}
    problems: list[Problem] = []
    for index, value in enumerate(values):
        if value is None:
            continue
        if value in first_seen:
            first = f"{collection}[{first_seen[value]}]"
            reason = f"duplicate {field} {value!r} (first used at {first})"
            problems.append(((collection, index, field), reason))
        else:
            first_seen[value] = index
    return problems


class _MultiError(ValueError):
    """Several problems found by one model validator, located in the file.

    Pydantic keeps one message per validator failure and puts it at the
    model's own path; this carries each problem's path relative to the model
    (``("timeout",)`` inside a device) so that _problems can point at the field
    to change and list every problem, not only the first.
    """

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(reason for _, reason in problems))
        self.problems = problems


class SiteError(Exception):
    """A site file that cannot be used, with every problem as (path, reason)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path}: {reason}" for path, reason in problems)
        super().__init__(f"{source}: invalid site file\n{lines}")


def load_site(path: str | Path) -> Site:
    """Read and validate a site file; raise SiteError listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise SiteError(source, [("(file)", error.strerror or str(error))]) from None
    except UnicodeDecodeError:
        raise SiteError(source, [("(file)", "not UTF-8 text")]) from None
    return parse_site(text, source)


def parse_site(text: str, source: str = "<site>") -> Site:
    """Validate site TOML given as text; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SiteError(source, [("(toml)", str(error))]) from None
    try:
        return Site.model_validate(data)
    except ValidationError as error:
        problems = _problems(error)
        # Pydantic skipped Site._references if any field failed: run the same
        # checks on the raw data so that one pass reports every problem.
        reported = {path for path, _ in problems}
        for loc, reason in reference_problems(data):
            path = format_path(loc)
            # A path that already has a problem (a duplicate id that is also
            # malformed, a room reference that fails the id pattern) keeps just
            # its field error; this also drops repeats of Site._references's own.
            if path not in reported:
                problems.append((path, reason))
                reported.add(path)
        raise SiteError(source, problems) from None


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for detail in error.errors(include_url=False):
        cause = detail.get("ctx", {}).get("error")
        if isinstance(cause, _MultiError):
            problems += [
                (format_path((*detail["loc"], *loc)), reason) for loc, reason in cause.problems
            ]
        else:
            problems.append((format_path(detail["loc"]), _reason(detail)))
    return problems


def format_path(loc: Iterable[str | int]) -> str:
    """``("rooms", 3, "capacity")`` -> ``rooms[3].capacity``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.startswith(("function-after[", "function-before[")):
            continue  # pydantic names validator functions in the path; people do not
        else:
            text += f".{part}" if text else part
    return text or "(site)"


def _with_article(word: str) -> str:
    """``"occupancy"`` -> ``"an occupancy"``, for messages about device kinds."""
    return f"{'an' if word[:1] in set('aeiou') else 'a'} {word}"


def _reason(detail: ErrorDetails) -> str:
    kind = detail["type"]
    ctx = detail.get("ctx", {})
    if kind == "greater_than":
        return f"must be > {_plain(ctx['gt'])}"
    if kind == "greater_than_equal":
        return f"must be >= {_plain(ctx['ge'])}"
    if kind == "less_than_equal":
        return f"must be <= {_plain(ctx['le'])}"
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "string_pattern_mismatch":
        return "use lower-case letters, digits, '-' and '_' (at most 64)"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "too_short":
        return "must not be empty"
    if kind == "enum":
        return f"must be one of {ctx.get('expected', '')}"
    message = detail["msg"]
    return message[len("Value error, ") :] if message.startswith("Value error, ") else message


def _plain(value: Any) -> str:
    if isinstance(value, timedelta):
        return "0s" if not value else str(value)
    return str(value)
