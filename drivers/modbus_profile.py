"""Modbus register maps as data: device profiles, and the codec that reads them.

A profile is a TOML file naming each *point* a device has: which register
table and address, how many registers wide, its scale, signedness, enum
meanings, whether it is polled and whether it may be written. Supporting a new
vendor's air conditioner gateway is a new file reviewed like configuration,
never a code change; the driver and the simulators both work from the same
profile, so they cannot disagree about an address.

The codec in this module is pure (no I/O): it plans which contiguous blocks to
read, decodes the raw words of a block into physical values, and encodes a
value to write. Every profile is validated in full when it is loaded, so a
wrong map fails at start with the file, the point and the reason.
"""

from __future__ import annotations

import enum
import itertools
import math
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pymodbus.client.mixin import ModbusClientMixin

from controller.readings import (
    AcMode,
    AirConditionerReading,
    CabinetReading,
    FanSpeed,
    Reading,
)
from controller.site import DeviceKind

_T = TypeVar("_T")
_E = TypeVar("_E", bound=enum.StrEnum)

BUNDLED_PROFILES = Path(__file__).parent / "profiles"

# Largest reads the Modbus specification allows in one request.
MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000


class Table(enum.StrEnum):
    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)

    @property
    def writable(self) -> bool:
        return self in (Table.HOLDING, Table.COIL)


class DataType(enum.StrEnum):
    BOOL = "bool"
    UINT16 = "uint16"
    INT16 = "int16"
    UINT32 = "uint32"
    INT32 = "int32"
    FLOAT32 = "float32"

    @property
    def words(self) -> int:
        return 2 if self in (DataType.UINT32, DataType.INT32, DataType.FLOAT32) else 1


_PYMODBUS_TYPES = {
    DataType.UINT16: ModbusClientMixin.DATATYPE.UINT16,
    DataType.INT16: ModbusClientMixin.DATATYPE.INT16,
    DataType.UINT32: ModbusClientMixin.DATATYPE.UINT32,
    DataType.INT32: ModbusClientMixin.DATATYPE.INT32,
    DataType.FLOAT32: ModbusClientMixin.DATATYPE.FLOAT32,
}
_INTEGER_RANGES = {
    DataType.UINT16: (0, 0xFFFF),
    DataType.INT16: (-0x8000, 0x7FFF),
    DataType.UINT32: (0, 0xFFFF_FFFF),
    DataType.INT32: (-0x8000_0000, 0x7FFF_FFFF),
}


class Access(enum.StrEnum):
    READ = "read"
    WRITE = "write"
    READ_WRITE = "read_write"


class Confirm(enum.StrEnum):
    """How a write is known to have taken effect."""

    READBACK = "readback"  # read the point again and compare
    ECHO = "echo"  # the device's echo of the write is all there is (self-resetting pulses)


Value = bool | int | float | str | None
"""A decoded point value: a physical number, an enum name, a flag, or unknown."""

PointValue = Value | tuple[Value, ...]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Point(_Model):
    table: Table
    address: Annotated[int, Field(ge=0, le=0xFFFF)]
    count: Annotated[int, Field(ge=1, le=2000)] = 1
    type: DataType | None = None  # bool for coils and discrete inputs, uint16 otherwise
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    enum: dict[int, str] | None = None
    access: Access = Access.READ
    poll: bool = True
    confirm: Confirm = Confirm.READBACK
    minimum: float | None = None
    maximum: float | None = None
    missing: list[int] = []

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        data_type = self.type or (DataType.BOOL if self.table.is_bits else DataType.UINT16)
        if self.table.is_bits and data_type is not DataType.BOOL:
            raise ValueError(f"{self.table.value} points are single bits: type must be bool")
        if self.access is not Access.READ and not self.table.writable:
            raise ValueError(f"{self.table.value} points are read-only on Modbus")
        if self.scale == 0 or not math.isfinite(self.scale) or not math.isfinite(self.offset):
            raise ValueError("scale must be a finite number other than 0")
        if self.enum is not None:
            if data_type in (DataType.BOOL, DataType.FLOAT32):
                raise ValueError("an enum needs an integer type")
            if self.scale != 1 or self.offset != 0:
                raise ValueError("an enum point cannot also have a scale or offset")
            if len(set(self.enum.values())) != len(self.enum):
                raise ValueError("enum names must be unique")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError("minimum is above maximum")
        end = self.address + self.width
        if end > 0x10000:
            raise ValueError(f"runs past the last address (ends at {end - 1})")
        return self.model_copy(update={"type": data_type})

    @property
    def data_type(self) -> DataType:
        return self.type or DataType.UINT16

    @property
    def width(self) -> int:
        """Addresses taken in the table: registers (or bits) per value times ``count``."""
        return self.data_type.words * self.count if not self.table.is_bits else self.count

    @property
    def readable(self) -> bool:
        return self.access is not Access.WRITE

    @property
    def writable(self) -> bool:
        return self.access is not Access.READ


class ProfileInfo(_Model):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")]
    kind: DeviceKind
    description: str = ""
    vendor: str = ""
    word_order: Literal["big", "little"] = "big"


@dataclass(frozen=True, slots=True)
class _Need:
    access: Access
    array: bool = False
    enum_names: frozenset[str] | None = None
    bool_only: bool = False


_AC_NEEDS = {
    "power": _Need(Access.READ_WRITE, bool_only=True),
    "mode": _Need(Access.READ_WRITE, enum_names=frozenset(AcMode)),
    "setpoint": _Need(Access.READ_WRITE),
}
_AC_OPTIONAL = {
    "fan": _Need(Access.READ_WRITE, enum_names=frozenset(FanSpeed)),
    "room_temperature": _Need(Access.READ),
    "fault": _Need(Access.READ),
}
_CABINET_NEEDS = {
    "unlock": _Need(Access.WRITE, array=True, bool_only=True),
    "door_open": _Need(Access.READ, array=True, bool_only=True),
    "item_present": _Need(Access.READ, array=True, bool_only=True),
}
_KIND_POINTS: dict[DeviceKind, tuple[dict[str, _Need], dict[str, _Need]]] = {
    DeviceKind.AIR_CONDITIONER: (_AC_NEEDS, _AC_OPTIONAL),
    DeviceKind.DOCUMENT_CABINET: (_CABINET_NEEDS, {}),
}


class Profile(_Model):
    profile: ProfileInfo
    points: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")], Point]

    @model_validator(mode="after")
    def _fits_kind(self) -> Self:
        kind = self.profile.kind
        if kind not in _KIND_POINTS:
            raise ValueError(f"no Modbus profiles for {kind.value} devices")
        required, optional = _KIND_POINTS[kind]
        problems: list[str] = []
        for name in required.keys() - self.points.keys():
            problems.append(f"points.{name}: every {kind.value} profile needs this point")
        for name in sorted(self.points.keys() - required.keys() - optional.keys()):
            known = ", ".join(sorted({*required, *optional}))
            problems.append(f"points.{name}: unknown point for {kind.value} (known: {known})")
        for name, point in self.points.items():
            need = required.get(name) or optional.get(name)
            if need is not None:
                problems.extend(f"points.{name}: {reason}" for reason in _misfits(point, need))
        problems.extend(_overlaps(self.points))
        if problems:
            raise ValueError("; ".join(sorted(problems)))
        return self

    @property
    def id(self) -> str:
        return self.profile.id

    @property
    def kind(self) -> DeviceKind:
        return self.profile.kind

    @property
    def compartments(self) -> int | None:
        """For cabinets: how many compartments the map covers."""
        if self.kind is not DeviceKind.DOCUMENT_CABINET:
            return None
        return min(self.points[name].count for name in _CABINET_NEEDS)


def _misfits(point: Point, need: _Need) -> Iterable[str]:
    if need.access is Access.READ_WRITE and point.access is not Access.READ_WRITE:
        yield "must be read_write (it is written and its state is read)"
    elif need.access is Access.READ and not point.readable:
        yield "must be readable"
    elif need.access is Access.WRITE and not point.writable:
        yield "must be writable"
    if need.array is False and point.count != 1:
        yield "must be a single value (count = 1)"
    if need.bool_only and point.data_type is not DataType.BOOL:
        yield "must be of type bool"
    if need.enum_names is not None:
        if point.enum is None:
            yield f"needs an enum mapping codes to {', '.join(sorted(need.enum_names))}"
        else:
            unknown = sorted(set(point.enum.values()) - need.enum_names)
            if unknown:
                allowed = ", ".join(sorted(need.enum_names))
                yield f"enum names {', '.join(unknown)} are not among {allowed}"


def _overlaps(points: Mapping[str, Point]) -> Iterable[str]:
    by_table: dict[Table, list[tuple[int, int, str]]] = {}
    for name, point in points.items():
        by_table.setdefault(point.table, []).append(
            (point.address, point.address + point.width, name)
        )
    for table, spans in by_table.items():
        spans.sort()
        for (start_a, end_a, name_a), (start_b, _, name_b) in itertools.pairwise(spans):
            if start_b < end_a:
                yield (
                    f"points.{name_b}: {table.value} address {start_b} overlaps "
                    f"points.{name_a} ({start_a}..{end_a - 1})"
                )


# -- loading ---------------------------------------------------------------


class ProfileError(Exception):
    """One or more profile files that cannot be used; ``problems`` are ``(file, reason)``."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(f"{where}: {reason}" for where, reason in self.problems))


def load_profile(path: Path) -> Profile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ProfileError([(str(path), f"cannot read: {error}")]) from None
    try:
        profile = Profile.model_validate(data)
    except ValidationError as error:
        raise ProfileError(
            [(str(path), _describe(detail)) for detail in error.errors(include_url=False)]
        ) from None
    if profile.id != path.stem:
        raise ProfileError([(str(path), f"profile.id {profile.id!r} must match the file name")])
    return profile


def _describe(detail: Any) -> str:
    location = ".".join(str(part) for part in detail["loc"])
    message = str(detail["msg"]).removeprefix("Value error, ")
    return f"{location}: {message}" if location else message


def load_profiles(directories: Iterable[Path] = ()) -> dict[str, Profile]:
    """The bundled profiles plus every ``*.toml`` in ``directories``.

    A later directory may not silently replace a profile of the same id: that
    would change the meaning of every device using it, so it is an error.
    All problems across all files are reported together.
    """
    profiles: dict[str, Profile] = {}
    origins: dict[str, Path] = {}
    problems: list[tuple[str, str]] = []
    for directory in (BUNDLED_PROFILES, *directories):
        if not directory.is_dir():
            problems.append((str(directory), "profile directory does not exist"))
            continue
        for path in sorted(directory.glob("*.toml")):
            try:
                profile = load_profile(path)
            except ProfileError as error:
                problems.extend(error.problems)
                continue
            if profile.id in profiles:
                problems.append(
                    (str(path), f"profile {profile.id!r} already defined in {origins[profile.id]}")
                )
                continue
            profiles[profile.id] = profile
            origins[profile.id] = path
    if problems:
        raise ProfileError(problems)
    return profiles


# -- reading ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` addresses of ``table`` from ``address``."""

    table: Table
    address: int
    count: int
    points: tuple[tuple[str, Point], ...]


def plan_reads(profile: Profile) -> tuple[ReadBlock, ...]:
    """The fewest requests that read every polled point: contiguous points share one."""
    by_table: dict[Table, list[tuple[str, Point]]] = {}
    for name, point in profile.points.items():
        if point.readable and point.poll:
            by_table.setdefault(point.table, []).append((name, point))
    blocks: list[ReadBlock] = []
    for table in Table:
        members = sorted(by_table.get(table, []), key=lambda item: item[1].address)
        limit = MAX_BITS_PER_READ if table.is_bits else MAX_REGISTERS_PER_READ
        current: list[tuple[str, Point]] = []
        start = end = 0
        for name, point in members:
            point_end = point.address + point.width
            if current and point.address == end and point_end - start <= limit:
                current.append((name, point))
                end = point_end
                continue
            if current:
                blocks.append(ReadBlock(table, start, end - start, tuple(current)))
            current, start, end = [(name, point)], point.address, point_end
        if current:
            blocks.append(ReadBlock(table, start, end - start, tuple(current)))
    return tuple(blocks)


@dataclass(frozen=True, slots=True)
class DecodeIssue:
    """A raw value the profile gives no meaning to; the point reads as unknown."""

    point: str
    raw: int | float
    reason: str


def decode_block(
    profile: Profile, block: ReadBlock, raw: Sequence[int] | Sequence[bool]
) -> tuple[dict[str, PointValue], list[DecodeIssue]]:
    """Physical values of the block's points from its raw words or bits."""
    if len(raw) < block.count:
        raise ValueError(f"expected {block.count} values, got {len(raw)}")
    values: dict[str, PointValue] = {}
    issues: list[DecodeIssue] = []
    for name, point in block.points:
        offset = point.address - block.address
        words = point.data_type.words if not point.table.is_bits else 1
        decoded: list[Value] = []
        for index in range(point.count):
            start = offset + index * words
            item = raw[start : start + words]
            value, issue = _decode_one(profile, name, point, item)
            decoded.append(value)
            if issue is not None:
                issues.append(issue)
        values[name] = decoded[0] if point.count == 1 else tuple(decoded)
    return values, issues


def _decode_one(
    profile: Profile, name: str, point: Point, item: Sequence[int] | Sequence[bool]
) -> tuple[Value, DecodeIssue | None]:
    if point.table.is_bits:
        return bool(item[0]), None
    if point.data_type is DataType.BOOL:
        return item[0] != 0, None
    number = ModbusClientMixin.convert_from_registers(
        [int(word) for word in item],
        _PYMODBUS_TYPES[point.data_type],
        word_order=profile.profile.word_order,
    )
    assert isinstance(number, int | float)
    if point.data_type is not DataType.FLOAT32 and int(number) in point.missing:
        return None, None
    if point.enum is not None:
        meaning = point.enum.get(int(number))
        if meaning is None:
            return None, DecodeIssue(name, number, f"code {number} has no meaning in the profile")
        return meaning, None
    if isinstance(number, float) and not math.isfinite(number):
        return None, DecodeIssue(name, number, "not a finite number")
    value = number * point.scale + point.offset
    if (point.minimum is not None and value < point.minimum) or (
        point.maximum is not None and value > point.maximum
    ):
        return None, DecodeIssue(
            name, number, f"{_tidy(value)} is outside {point.minimum}..{point.maximum}"
        )
    if point.scale == 1 and point.offset == 0 and point.data_type is not DataType.FLOAT32:
        return int(value), None
    return _tidy(value), None


def _tidy(value: float) -> float:
    """Scaled values without binary noise: 263 x 0.1 is 26.3, not 26.300000000000001."""
    return round(value, 6)


# -- writing ---------------------------------------------------------------


def encode_write(
    profile: Profile, name: str, value: object, index: int | None = None
) -> tuple[Point, int, list[int] | list[bool]]:
    """The address and raw words (or bit) that write ``value`` to one point.

    Raises ``ValueError`` with a reason a person can act on for anything the
    profile does not allow: an unknown or read-only point, a value out of its
    range, an enum name it does not know, a compartment that does not exist.
    """
    point = profile.points.get(name)
    if point is None:
        raise ValueError(f"{profile.id} has no point {name!r}")
    if not point.writable:
        raise ValueError(f"{name} is read-only")
    if point.count > 1:
        if index is None or not 0 <= index < point.count:
            raise ValueError(f"{name} needs an index from 0 to {point.count - 1}")
    elif index not in (None, 0):
        raise ValueError(f"{name} is a single value, it has no index {index}")
    position = index or 0
    address = point.address + position * (point.data_type.words if not point.table.is_bits else 1)
    if point.table.is_bits:
        if not isinstance(value, bool):
            raise ValueError(f"{name} takes true or false")
        return point, address, [value]
    return point, address, _encode_register(profile, name, point, value)


def _encode_register(profile: Profile, name: str, point: Point, value: object) -> list[int]:
    data_type = point.data_type
    if data_type is DataType.BOOL:
        if not isinstance(value, bool):
            raise ValueError(f"{name} takes true or false")
        return [int(value)]
    if point.enum is not None:
        codes = {meaning: code for code, meaning in point.enum.items()}
        if not isinstance(value, str) or value not in codes:
            raise ValueError(f"{name} takes one of {', '.join(codes)}")
        raw: int | float = codes[value]
    else:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} takes a number")
        if not math.isfinite(value):
            raise ValueError(f"{name} takes a finite number")
        if (point.minimum is not None and value < point.minimum) or (
            point.maximum is not None and value > point.maximum
        ):
            raise ValueError(f"{name} must be within {point.minimum}..{point.maximum}")
        raw = (value - point.offset) / point.scale
        if data_type is not DataType.FLOAT32:
            raw = round(raw)
    if data_type is not DataType.FLOAT32:
        low, high = _INTEGER_RANGES[data_type]
        if not low <= raw <= high:
            raise ValueError(f"{name} = {value} does not fit a {data_type.value} register")
        raw = int(raw)
    return ModbusClientMixin.convert_to_registers(
        raw, _PYMODBUS_TYPES[data_type], word_order=profile.profile.word_order
    )


def encode_value(profile: Profile, name: str, value: object) -> list[int] | list[bool]:
    """Raw words of one value of any point, read-only ones included.

    What a device holds for that value: simulators serve a profile with this,
    so they can never disagree with the driver about scales or word order.
    """
    point = profile.points[name]
    if point.table.is_bits:
        if not isinstance(value, bool):
            raise ValueError(f"{name} takes true or false")
        return [value]
    writable = point.model_copy(update={"access": Access.READ_WRITE})
    return _encode_register(profile, name, writable, value)


# -- readings --------------------------------------------------------------


def to_reading(
    profile: Profile, values: Mapping[str, PointValue], compartments: int | None = None
) -> Reading:
    """The protocol-free reading the rest of the controller understands."""
    if profile.kind is DeviceKind.AIR_CONDITIONER:
        return AirConditionerReading(
            power=_scalar(values.get("power"), bool),
            mode=_enum(values.get("mode"), AcMode),
            setpoint=_number(values.get("setpoint")),
            fan=_enum(values.get("fan"), FanSpeed),
            room_temperature=_number(values.get("room_temperature")),
            fault=_integer(values.get("fault")),
        )
    count = compartments if compartments is not None else profile.compartments
    return CabinetReading(
        doors_open=_flags(values.get("door_open"), count),
        items_present=_flags(values.get("item_present"), count),
    )


def _scalar(value: PointValue, kind: type[_T]) -> _T | None:
    return value if isinstance(value, kind) else None


def _enum(value: PointValue, kind: type[_E]) -> _E | None:
    return kind(value) if isinstance(value, str) else None


def _number(value: PointValue) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _integer(value: PointValue) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _flags(value: PointValue, count: int | None) -> tuple[bool, ...]:
    if not isinstance(value, tuple):
        return ()
    flags = tuple(bool(item) for item in value)
    return flags[:count] if count is not None else flags
