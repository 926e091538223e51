"""Points: one measurement of one series at one instant, and their line protocol.

A :class:`Series` (measurement plus tags) is built once per device or room and
reused for every point, so the hot path makes one small tuple per reading and
the line-protocol prefix is escaped once, not forty thousand times a second.

Field values are physical units. A field whose value is unknown is left out of
the point rather than written as a guess; a point always has at least one field.
Timestamps are explicit integer nanoseconds since the epoch, so writing the
same point twice (a replay after a crash) stores it once in InfluxDB.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

FieldValue = bool | int | float | str
Fields = tuple[tuple[str, FieldValue], ...]

_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\\": "\\\\"})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\\": "\\\\"})


@dataclass(frozen=True, slots=True)
class Series:
    """A measurement and its tags (sorted by key, empty values left out).

    Its hash is computed once: a series is a dictionary key for every point the
    stores take, tens of thousands of times a second.
    """

    measurement: str
    tags: tuple[tuple[str, str], ...]
    line_prefix: str = field(compare=False, repr=False)
    _hash: int = field(compare=False, repr=False, default=0)

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled by value and rebuilt, so the hash is of the process that reads it
        (string hashes differ between processes)."""
        return (Series.of, (self.measurement, dict(self.tags)))

    @classmethod
    def of(cls, measurement: str, tags: Mapping[str, str | None]) -> Series:
        kept = tuple(sorted((key, value) for key, value in tags.items() if value))
        prefix = measurement.translate(_MEASUREMENT_ESCAPES) + "".join(
            f",{key.translate(_TAG_ESCAPES)}={value.translate(_TAG_ESCAPES)}" for key, value in kept
        )
        return cls(measurement, kept, prefix, hash((measurement, kept)))

    def tag(self, key: str) -> str | None:
        for name, value in self.tags:
            if name == key:
                return value
        return None


class Point(NamedTuple):
    series: Series
    fields: Fields
    time_ns: int


def time_ns(moment: datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime, exactly.

    ``timestamp()`` is a float, but its whole seconds are exact for any time this
    controller sees (a float holds 53 bits; the microseconds are added as an int).
    """
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1_000


def encode_field(value: FieldValue) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a field value must be finite, not {value}")
        return repr(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode_line(point: Point) -> str:
    """One line of InfluxDB line protocol, without the newline."""
    fields = ",".join(
        f"{name.translate(_TAG_ESCAPES)}={encode_field(value)}" for name, value in point.fields
    )
    return f"{point.series.line_prefix} {fields} {point.time_ns}"


def encode_lines(points: Iterable[Point]) -> bytes:
    """Points as newline-terminated line protocol, ready for a write body or the spool."""
    return "".join(encode_line(point) + "\n" for point in points).encode()


def make_fields(values: Mapping[str, FieldValue | None]) -> Fields:
    """The known values, in the given order; None (unknown) is left out."""
    return tuple((name, value) for name, value in values.items() if value is not None)
