"""MQTT payload bytes -> readings (see docs/interfaces.md): pure functions, no I/O.

This is the hot path of the MQTT ingest, so the good path is one ``orjson.loads``,
a few dict lookups and exact ``type(...) is`` checks, and no exception; anything
that goes wrong is classified on a slower path into a :class:`BadPayloadReason`
and raised as :class:`PayloadError`, which the caller counts, logs (rate limited)
and drops without touching any state.

Decoding is two steps: parse the bytes into a JSON object (shared by every kind),
then hand the object to a tiny per-(kind, format) converter from ``_DECODERS``,
in the spirit of zigbee-herdsman-converters: each converter knows the keys of one
device kind in one payload format and nothing else.

Conventions every converter follows:

* Unknown extra keys are ignored (Zigbee2MQTT adds ``battery``, ``linkquality``...).
* A key whose value is JSON ``null`` counts as absent (Zigbee2MQTT sends ``null``
  for a value the device has not reported yet).
* ``bool`` is never a number; counts and counter totals are whole numbers (``3``
  or ``3.0``, not ``2.5``); measured values are returned as ``float``.
* Enumerated strings (lock state, door, availability) are matched case-insensitively.
* ``MAX_DEPTH`` equals orjson's own nesting limit: deeper documents fail to parse
  and are reported as ``too_deep``; shallower ones are parsed normally (the
  converters only ever read top-level keys).
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable
from typing import Any, Final, TypeVar

import orjson

from controller.readings import (
    ClimateReading,
    CounterReading,
    DoorState,
    FireAlarmReading,
    LockReading,
    LockState,
    OccupancyReading,
    Reading,
)
from controller.site import DeviceKind, PayloadFormat

__all__ = [
    "COUNTER_MAX",
    "HUMIDITY_MAX",
    "HUMIDITY_MIN",
    "MAX_DEPTH",
    "MAX_PAYLOAD_BYTES",
    "OCCUPANCY_COUNT_MAX",
    "TEMPERATURE_MAX",
    "TEMPERATURE_MIN",
    "BadPayloadReason",
    "PayloadError",
    "decode_availability",
    "decode_state",
]

MAX_PAYLOAD_BYTES: Final = 64 * 1024
MAX_DEPTH: Final = 1024  # orjson's built-in limit; checked only once orjson has failed

# Physical ranges; a value outside is a broken or spoofed sensor, not a reading.
TEMPERATURE_MIN: Final = -40.0  # °C
TEMPERATURE_MAX: Final = 85.0
HUMIDITY_MIN: Final = 0.0  # %RH
HUMIDITY_MAX: Final = 100.0
OCCUPANCY_COUNT_MAX: Final = 10_000  # people in one room
COUNTER_MAX: Final = 4_294_967_295  # cumulative entries/exits (a 32-bit counter)

_EXCERPT_CHARS: Final = 40

_T = TypeVar("_T")


class BadPayloadReason(enum.StrEnum):
    EMPTY = "empty"  # zero bytes (or only whitespace)
    TOO_LARGE = "too_large"  # over MAX_PAYLOAD_BYTES
    NOT_UTF8 = "not_utf8"  # binary garbage
    NOT_JSON = "not_json"
    TOO_DEEP = "too_deep"  # nesting deeper than orjson allows / than MAX_DEPTH
    NOT_OBJECT = "not_object"  # JSON array, string, number at the top level
    NOT_FINITE = "not_finite"  # NaN, Infinity, -Infinity, 1e400
    WRONG_TYPE = "wrong_type"  # {"occupied": "yes"}, count 2.5, bool where number expected
    MISSING_FIELD = "missing_field"  # no field this kind needs
    OUT_OF_RANGE = "out_of_range"  # -60 °C, count -1, humidity 140
    UNKNOWN_VALUE = "unknown_value"  # lock state "OPEN_SESAME", availability "maybe"
    INCONSISTENT = "inconsistent"  # {"occupied": false, "count": 3}
    UNKNOWN_DEVICE = "unknown_device"  # used by the caller, not by the decoders


class PayloadError(Exception):
    """A payload that cannot become a reading; ``detail`` is one short sentence."""

    def __init__(self, reason: BadPayloadReason, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


# --------------------------------------------------------------------------- helpers


def _excerpt(value: object) -> str:
    """``repr`` of a value, cut to about 40 characters (never a whole payload)."""
    text = repr(value)
    if len(text) > _EXCERPT_CHARS:
        return text[: _EXCERPT_CHARS - 3] + "..."
    return text


_JSON_TYPE_NAMES: Final[dict[type, str]] = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def _describe(value: object) -> str:
    name = _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
    if isinstance(value, list | dict):
        return name
    return f"{name} {_excerpt(value)}"


def _missing(*fields: str) -> PayloadError:
    names = " or ".join(repr(f) for f in fields)
    return PayloadError(BadPayloadReason.MISSING_FIELD, f"no {names} field")


def _whole(value: object, field: str, maximum: int) -> int:
    """A count or counter total: an int, or a float with no fraction, in 0..maximum."""
    if type(value) is int:
        if 0 <= value <= maximum:
            return value
        raise PayloadError(
            BadPayloadReason.OUT_OF_RANGE,
            f"{field} {_excerpt(value)} is outside 0..{maximum}",
        )
    if type(value) is float and value.is_integer():
        return _whole(int(value), field, maximum)
    if type(value) is float and not math.isfinite(value):
        raise PayloadError(BadPayloadReason.NOT_FINITE, f"{field} is {value}")
    raise PayloadError(
        BadPayloadReason.WRONG_TYPE, f"{field} must be a whole number, got {_describe(value)}"
    )


def _measure(value: object, field: str, low: float, high: float) -> float:
    """A measured quantity: int or float (not bool) within the physical range."""
    if type(value) is float or type(value) is int:
        if low <= value <= high:
            return float(value)
        if type(value) is float and not math.isfinite(value):
            raise PayloadError(BadPayloadReason.NOT_FINITE, f"{field} is {value}")
        raise PayloadError(
            BadPayloadReason.OUT_OF_RANGE,
            f"{field} {_excerpt(value)} is outside {low}..{high}",
        )
    raise PayloadError(
        BadPayloadReason.WRONG_TYPE, f"{field} must be a number, got {_describe(value)}"
    )


def _flag(value: object, field: str) -> bool:
    if value is True or value is False:
        return value
    raise PayloadError(
        BadPayloadReason.WRONG_TYPE, f"{field} must be true or false, got {_describe(value)}"
    )


def _table(canonical: dict[str, _T]) -> dict[str, _T]:
    """An enum lookup table: the exact spellings plus their lower-case forms."""
    table = dict(canonical)
    table.update({key.lower(): value for key, value in canonical.items()})
    return table


def _choice(value: object, field: str, table: dict[str, _T]) -> _T:
    """Look an enumerated string up; the exact spelling is the fast path."""
    if type(value) is str:
        found = table.get(value)
        if found is not None:
            return found
        found = table.get(value.strip().lower())
        if found is not None:
            return found
        allowed = ", ".join(sorted({k for k in table if k.islower()}))
        raise PayloadError(
            BadPayloadReason.UNKNOWN_VALUE,
            f"{field} {_excerpt(value)} is not one of {allowed}",
        )
    raise PayloadError(
        BadPayloadReason.WRONG_TYPE, f"{field} must be a string, got {_describe(value)}"
    )


# --------------------------------------------------------------------------- parsing


class _NonFinite(Exception):
    pass


def _reject_constant(name: str) -> float:
    raise _NonFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text)
    return value


def _nesting_depth(text: str) -> int:
    """Deepest ``[``/``{`` nesting outside strings; stops counting past MAX_DEPTH.

    Escaped backslashes, then escaped quotes are dropped first, so that every
    remaining ``"`` opens or closes a string and the even pieces of a split on
    ``"`` are exactly the text outside strings.
    """
    unescaped = text.replace("\\\\", "").replace('\\"', "")
    depth = deepest = 0
    for piece in unescaped.split('"')[::2]:
        for ch in piece:
            if ch == "[" or ch == "{":
                depth += 1
                if depth > deepest:
                    deepest = depth
                    if deepest > MAX_DEPTH:
                        return deepest
            elif ch == "]" or ch == "}":
                depth -= 1
    return deepest


def _parse_slow(payload: bytes) -> Any:
    """orjson refused the payload: say precisely why (or parse what it could not)."""
    if not payload or payload.isspace():
        raise PayloadError(BadPayloadReason.EMPTY, "payload is empty")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(
            BadPayloadReason.NOT_UTF8, f"byte {exc.start} is not valid UTF-8"
        ) from None
    # Only a payload with more brackets than MAX_DEPTH can be nested that deep;
    # the scan also keeps the recursive stdlib parser below away from it.
    if text.count("[") + text.count("{") > MAX_DEPTH and _nesting_depth(text) > MAX_DEPTH:
        raise PayloadError(BadPayloadReason.TOO_DEEP, f"nested deeper than {MAX_DEPTH} levels")
    try:
        # Valid JSON that orjson still refuses (a lone surrogate escape such as
        # "\ud800") is decoded by the stdlib and judged by the converters as usual.
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except _NonFinite as exc:
        raise PayloadError(
            BadPayloadReason.NOT_FINITE, f"non-finite number {_excerpt(str(exc))}"
        ) from None
    except RecursionError:
        raise PayloadError(
            BadPayloadReason.TOO_DEEP, "nested too deep for the fallback parser"
        ) from None
    except json.JSONDecodeError as exc:
        raise PayloadError(
            BadPayloadReason.NOT_JSON, f"not JSON: {exc.msg} at char {exc.pos}"
        ) from None
    except ValueError as exc:  # e.g. an integer literal longer than 4300 digits
        raise PayloadError(BadPayloadReason.NOT_JSON, f"not JSON: {_excerpt(str(exc))}") from None


def _parse_object(payload: bytes) -> dict[str, Any]:
    size = len(payload)
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadError(
            BadPayloadReason.TOO_LARGE,
            f"payload of {size} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit",
        )
    if size == 0:
        raise PayloadError(BadPayloadReason.EMPTY, "payload is empty")
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        obj = _parse_slow(payload)
    if type(obj) is dict:
        return obj
    raise PayloadError(
        BadPayloadReason.NOT_OBJECT, f"top level must be a JSON object, got {_describe(obj)}"
    )


# --------------------------------------------------------------------------- converters

# Readings are immutable, so the few that carry no number are built once. The others
# are built with positional arguments: keywords cost ~40% more on a frozen dataclass.
_OCCUPIED: Final = OccupancyReading(occupied=True)
_VACANT: Final = OccupancyReading(occupied=False)
_FIRE: Final = FireAlarmReading(alarm=True)
_NO_FIRE: Final = FireAlarmReading(alarm=False)
_LOCK_READINGS: Final = {
    (state, door): LockReading(state, door) for state in LockState for door in (*DoorState, None)
}

_NATIVE_LOCK_STATES: Final = _table({s.value: s for s in LockState})
_Z2M_LOCK_STATES: Final = _table(
    {
        "locked": LockState.LOCKED,
        "unlocked": LockState.UNLOCKED,
        "not_fully_locked": LockState.JAMMED,
        # "unknown" (ZCL lockState 0xFF, e.g. before calibration) is deliberately
        # absent: it is reported as UNKNOWN_VALUE and the last known state stands.
    }
)
_Z2M_LOCK_COMMANDS: Final = _table(
    {
        "LOCK": LockState.LOCKED,
        "UNLOCK": LockState.UNLOCKED,
        "LOCKED": LockState.LOCKED,
        "UNLOCKED": LockState.UNLOCKED,
    }
)
_DOORS: Final = _table({d.value: d for d in DoorState})
_AVAILABILITY_WORDS: Final = _table({"online": True, "offline": False})


def _occupancy(occupied: object, count: object, occupied_key: str, count_key: str) -> Reading:
    if count is None:
        if occupied is True:
            return _OCCUPIED
        if occupied is False:
            return _VACANT
        if occupied is None:
            raise _missing(occupied_key, count_key)
        raise PayloadError(
            BadPayloadReason.WRONG_TYPE,
            f"{occupied_key} must be true or false, got {_describe(occupied)}",
        )
    people = _whole(count, count_key, OCCUPANCY_COUNT_MAX)
    if occupied is None:
        occupied = people > 0
    elif occupied is False:
        if people:
            raise PayloadError(
                BadPayloadReason.INCONSISTENT,
                f"{occupied_key} is false but {count_key} is {people}",
            )
    elif occupied is not True:
        raise PayloadError(
            BadPayloadReason.WRONG_TYPE,
            f"{occupied_key} must be true or false, got {_describe(occupied)}",
        )
    return OccupancyReading(occupied, people)


def _occupancy_native(obj: dict[str, Any]) -> Reading:
    """``{"occupied": bool, "count"?: int}``; a count alone implies occupied = count > 0."""
    return _occupancy(obj.get("occupied"), obj.get("count"), "occupied", "count")


def _occupancy_z2m(obj: dict[str, Any]) -> Reading:
    """``{"occupancy": bool, ...}``, plus ``people`` (or ``count``) from counting sensors."""
    count = obj.get("people")
    if count is None:
        return _occupancy(obj.get("occupancy"), obj.get("count"), "occupancy", "count")
    return _occupancy(obj.get("occupancy"), count, "occupancy", "people")


def _people_counter(obj: dict[str, Any]) -> Reading:
    """``{"in": int, "out": int}``, both required, cumulative since the counter booted.

    Zigbee2MQTT has no standard people-counter payload, so its format uses these
    same native keys (a custom converter or a bridge publishes them).
    """
    entries = obj.get("in")
    exits = obj.get("out")
    if entries is None or exits is None:
        raise _missing("in" if entries is None else "out")
    return CounterReading(_whole(entries, "in", COUNTER_MAX), _whole(exits, "out", COUNTER_MAX))


def _climate(obj: dict[str, Any]) -> Reading:
    """``{"temperature"?: °C, "humidity"?: %RH}``, at least one (same keys in both formats)."""
    temperature = obj.get("temperature")
    humidity = obj.get("humidity")
    if temperature is None:
        if humidity is None:
            raise _missing("temperature", "humidity")
        return ClimateReading(None, _measure(humidity, "humidity", HUMIDITY_MIN, HUMIDITY_MAX))
    if humidity is None:
        return ClimateReading(
            _measure(temperature, "temperature", TEMPERATURE_MIN, TEMPERATURE_MAX), None
        )
    return ClimateReading(
        _measure(temperature, "temperature", TEMPERATURE_MIN, TEMPERATURE_MAX),
        _measure(humidity, "humidity", HUMIDITY_MIN, HUMIDITY_MAX),
    )


def _lock_native(obj: dict[str, Any]) -> Reading:
    """``{"state": "LOCKED"|"UNLOCKED"|"JAMMED", "door"?: "open"|"closed"}``."""
    state = obj.get("state")
    if state is None:
        raise _missing("state")
    door = obj.get("door")
    return _LOCK_READINGS[
        (
            _choice(state, "state", _NATIVE_LOCK_STATES),
            None if door is None else _choice(door, "door", _DOORS),
        )
    ]


def _lock_z2m(obj: dict[str, Any]) -> Reading:
    """``{"state": "LOCK"|"UNLOCK", "lock_state": ..., "contact"?: bool}``.

    ``lock_state`` (locked / unlocked / not_fully_locked -> JAMMED) wins; ``state``
    is only the fallback when it is absent. The door comes from ``contact``
    (true = magnet closed = door closed) or a ``door`` key; if both are present
    they must agree.
    """
    lock_state = obj.get("lock_state")
    if lock_state is not None:
        state = _choice(lock_state, "lock_state", _Z2M_LOCK_STATES)
    else:
        command_state = obj.get("state")
        if command_state is None:
            raise _missing("lock_state", "state")
        state = _choice(command_state, "state", _Z2M_LOCK_COMMANDS)
    contact = obj.get("contact")
    door_word = obj.get("door")
    door: DoorState | None
    if contact is None:
        door = None if door_word is None else _choice(door_word, "door", _DOORS)
    else:
        door = DoorState.CLOSED if _flag(contact, "contact") else DoorState.OPEN
        if door_word is not None and _choice(door_word, "door", _DOORS) is not door:
            raise PayloadError(
                BadPayloadReason.INCONSISTENT,
                f"contact is {str(contact).lower()} but door is {_excerpt(door_word)}",
            )
    return _LOCK_READINGS[(state, door)]


def _fire_alarm_native(obj: dict[str, Any]) -> Reading:
    """``{"alarm": bool}``."""
    alarm = obj.get("alarm")
    if alarm is True:
        return _FIRE
    if alarm is False:
        return _NO_FIRE
    if alarm is None:
        raise _missing("alarm")
    return _FIRE if _flag(alarm, "alarm") else _NO_FIRE


def _fire_alarm_z2m(obj: dict[str, Any]) -> Reading:
    """``{"smoke": bool}`` (smoke detectors) or ``{"alarm": bool}``; either true is a fire."""
    smoke = obj.get("smoke")
    alarm = obj.get("alarm")
    if smoke is None and alarm is None:
        raise _missing("smoke", "alarm")
    fire = (smoke is not None and _flag(smoke, "smoke")) | (
        alarm is not None and _flag(alarm, "alarm")
    )
    return _FIRE if fire else _NO_FIRE


_FORMATS: Final = frozenset(PayloadFormat)

_Decoder = Callable[[dict[str, Any]], Reading]

_NATIVE: Final = PayloadFormat.NATIVE
_Z2M: Final = PayloadFormat.ZIGBEE2MQTT

_DECODERS: Final[dict[tuple[DeviceKind, PayloadFormat], _Decoder]] = {
    (DeviceKind.OCCUPANCY, _NATIVE): _occupancy_native,
    (DeviceKind.OCCUPANCY, _Z2M): _occupancy_z2m,
    (DeviceKind.PEOPLE_COUNTER, _NATIVE): _people_counter,
    (DeviceKind.PEOPLE_COUNTER, _Z2M): _people_counter,
    (DeviceKind.CLIMATE, _NATIVE): _climate,
    (DeviceKind.CLIMATE, _Z2M): _climate,
    (DeviceKind.LOCK, _NATIVE): _lock_native,
    (DeviceKind.LOCK, _Z2M): _lock_z2m,
    (DeviceKind.FIRE_ALARM, _NATIVE): _fire_alarm_native,
    (DeviceKind.FIRE_ALARM, _Z2M): _fire_alarm_z2m,
}


# --------------------------------------------------------------------------- API


def decode_state(kind: DeviceKind, fmt: PayloadFormat, payload: bytes) -> Reading:
    """Decode a ``{prefix}/{device}/state`` payload of a device of ``kind`` in ``fmt``.

    Raises :class:`PayloadError` for bad input and ``ValueError`` for a (kind, fmt)
    that never arrives over MQTT (the Modbus kinds): that is a programming error.
    """
    decoder = _DECODERS.get((kind, fmt))
    if decoder is None:
        raise ValueError(f"no MQTT state payload for kind {kind!r} in format {fmt!r}")
    return decoder(_parse_object(payload))


def decode_availability(fmt: PayloadFormat, payload: bytes) -> bool:
    """Decode an availability (LWT) payload: True online, False offline.

    Both formats send the bare word ``online`` / ``offline`` (surrounding
    whitespace and letter case are forgiven); Zigbee2MQTT may instead send
    ``{"state": "online"}``.
    """
    if fmt not in _FORMATS:
        raise ValueError(f"unknown payload format {fmt!r}")
    if payload == b"online":
        return True
    if payload == b"offline":
        return False
    return _availability_slow(fmt, payload)


def _availability_slow(fmt: PayloadFormat, payload: bytes) -> bool:
    size = len(payload)
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadError(
            BadPayloadReason.TOO_LARGE,
            f"payload of {size} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit",
        )
    if not payload or payload.isspace():
        raise PayloadError(BadPayloadReason.EMPTY, "payload is empty")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise PayloadError(
            BadPayloadReason.NOT_UTF8, f"byte {exc.start} is not valid UTF-8"
        ) from None
    word = _AVAILABILITY_WORDS.get(text.lower())
    if word is not None:
        return word
    if fmt == _Z2M and text.startswith("{"):
        obj = _parse_object(payload)
        state = obj.get("state")
        if state is None:
            raise _missing("state")
        return _choice(state, "state", _AVAILABILITY_WORDS)
    raise PayloadError(
        BadPayloadReason.UNKNOWN_VALUE,
        f"availability {_excerpt(text)} is neither online nor offline",
    )
