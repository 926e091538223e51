"""Table-driven tests of MQTT payload decoding."""

from __future__ import annotations

from typing import Any

import pytest

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
from controller.site import MQTT_KINDS, DeviceKind, PayloadFormat
from drivers.payloads import (
    MAX_PAYLOAD_BYTES,
    BadPayloadReason,
    PayloadError,
    decode_availability,
    decode_state,
)

OCC = DeviceKind.OCCUPANCY
COUNTER = DeviceKind.PEOPLE_COUNTER
CLIMATE = DeviceKind.CLIMATE
LOCK = DeviceKind.LOCK
FIRE = DeviceKind.FIRE_ALARM
NATIVE = PayloadFormat.NATIVE
Z2M = PayloadFormat.ZIGBEE2MQTT
R = BadPayloadReason

LOCKED = LockState.LOCKED
UNLOCKED = LockState.UNLOCKED
JAMMED = LockState.JAMMED
OPEN = DoorState.OPEN
CLOSED = DoorState.CLOSED


def _padded(size: int) -> bytes:
    """A valid occupancy object of exactly ``size`` bytes (padded with a long string)."""
    head, tail = b'{"occupied": true, "pad": "', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


OVERSIZED = _padded(MAX_PAYLOAD_BYTES + 1)
DEEP_ARRAYS = b"[" * 10_000 + b"]" * 10_000
DEEP_OBJECTS = b'{"a":' * 10_000 + b"1" + b"}" * 10_000


GOOD_STATE: list[Any] = [
    # occupancy, native
    pytest.param(OCC, NATIVE, b'{"occupied": true}', OccupancyReading(True), id="occ-native-pir"),
    pytest.param(
        OCC, NATIVE, b'{"occupied": false}', OccupancyReading(False), id="occ-native-empty"
    ),
    pytest.param(
        OCC,
        NATIVE,
        b'{"occupied": true, "count": 3}',
        OccupancyReading(True, 3),
        id="occ-native-count",
    ),
    pytest.param(
        OCC,
        NATIVE,
        b'{"occupied": false, "count": 0}',
        OccupancyReading(False, 0),
        id="occ-native-zero",
    ),
    pytest.param(
        OCC, NATIVE, b'{"count": 4}', OccupancyReading(True, 4), id="occ-native-count-only"
    ),
    pytest.param(
        OCC, NATIVE, b'{"count": 0}', OccupancyReading(False, 0), id="occ-native-count-only-0"
    ),
    pytest.param(
        OCC,
        NATIVE,
        b'{"occupied": true, "count": 3.0}',
        OccupancyReading(True, 3),
        id="occ-native-count-float",
    ),
    pytest.param(
        OCC,
        NATIVE,
        b'{"occupied": true, "count": null}',
        OccupancyReading(True),
        id="occ-native-count-null",
    ),
    pytest.param(
        OCC,
        NATIVE,
        b'{"occupied": true, "count": 10000}',
        OccupancyReading(True, 10000),
        id="occ-native-max",
    ),
    pytest.param(
        OCC,
        NATIVE,
        b'{"occupied": true, "rssi": -61, "x": [1, {"y": 2}]}',
        OccupancyReading(True),
        id="occ-native-extra-keys",
    ),
    pytest.param(
        OCC,
        NATIVE,
        b' \n{ "occupied" : true }\r\n',
        OccupancyReading(True),
        id="occ-native-whitespace",
    ),
    pytest.param(  # orjson refuses a lone surrogate escape; the stdlib fallback does not
        OCC,
        NATIVE,
        b'{"occupied": true, "name": "\\ud800"}',
        OccupancyReading(True),
        id="occ-native-lone-surrogate-elsewhere",
    ),
    # occupancy, zigbee2mqtt
    pytest.param(
        OCC,
        Z2M,
        b'{"occupancy": true, "illuminance": 31, "battery": 97, "linkquality": 120}',
        OccupancyReading(True),
        id="occ-z2m",
    ),
    pytest.param(
        OCC,
        Z2M,
        b'{"occupancy": false, "battery": 97}',
        OccupancyReading(False),
        id="occ-z2m-clear",
    ),
    pytest.param(
        OCC,
        Z2M,
        b'{"occupancy": true, "people": 2}',
        OccupancyReading(True, 2),
        id="occ-z2m-people",
    ),
    pytest.param(
        OCC, Z2M, b'{"occupancy": true, "count": 5}', OccupancyReading(True, 5), id="occ-z2m-count"
    ),
    pytest.param(OCC, Z2M, b'{"people": 0}', OccupancyReading(False, 0), id="occ-z2m-people-only"),
    # people counter (zigbee2mqtt has no standard: the native keys are used)
    pytest.param(
        COUNTER,
        NATIVE,
        b'{"in": 10412, "out": 10377}',
        CounterReading(10412, 10377),
        id="counter-native",
    ),
    pytest.param(
        COUNTER, NATIVE, b'{"in": 0, "out": 0}', CounterReading(0, 0), id="counter-native-zero"
    ),
    pytest.param(
        COUNTER,
        NATIVE,
        b'{"in": 4294967295, "out": 1.0}',
        CounterReading(4_294_967_295, 1),
        id="counter-native-max",
    ),
    pytest.param(
        COUNTER,
        Z2M,
        b'{"in": 12, "out": 7, "linkquality": 80}',
        CounterReading(12, 7),
        id="counter-z2m",
    ),
    # climate
    pytest.param(
        CLIMATE,
        NATIVE,
        b'{"temperature": 27.4, "humidity": 61}',
        ClimateReading(27.4, 61.0),
        id="climate-native",
    ),
    pytest.param(
        CLIMATE,
        NATIVE,
        b'{"temperature": -3.5}',
        ClimateReading(temperature=-3.5),
        id="climate-native-temp-only",
    ),
    pytest.param(
        CLIMATE,
        NATIVE,
        b'{"humidity": 45.5}',
        ClimateReading(humidity=45.5),
        id="climate-native-hum-only",
    ),
    pytest.param(
        CLIMATE,
        NATIVE,
        b'{"temperature": -40, "humidity": 100}',
        ClimateReading(-40.0, 100.0),
        id="climate-native-limits",
    ),
    pytest.param(
        CLIMATE,
        NATIVE,
        b'{"temperature": 85.0, "humidity": 0}',
        ClimateReading(85.0, 0.0),
        id="climate-native-hot-limit",
    ),
    pytest.param(
        CLIMATE,
        Z2M,
        b'{"temperature": 22.31, "humidity": 48.2, "battery": 100, "voltage": 3000}',
        ClimateReading(22.31, 48.2),
        id="climate-z2m",
    ),
    pytest.param(
        CLIMATE,
        Z2M,
        b'{"temperature": 22.3, "humidity": null}',
        ClimateReading(temperature=22.3),
        id="climate-z2m-null-hum",
    ),
    # lock, native
    pytest.param(
        LOCK,
        NATIVE,
        b'{"state": "LOCKED", "door": "closed"}',
        LockReading(LOCKED, CLOSED),
        id="lock-native-locked",
    ),
    pytest.param(
        LOCK,
        NATIVE,
        b'{"state": "UNLOCKED", "door": "open"}',
        LockReading(UNLOCKED, OPEN),
        id="lock-native-unlocked-open",
    ),
    pytest.param(
        LOCK, NATIVE, b'{"state": "JAMMED"}', LockReading(JAMMED, None), id="lock-native-jammed"
    ),
    pytest.param(
        LOCK, NATIVE, b'{"state": "locked"}', LockReading(LOCKED, None), id="lock-native-lower"
    ),
    pytest.param(
        LOCK,
        NATIVE,
        b'{"state": "Unlocked", "door": "Closed"}',
        LockReading(UNLOCKED, CLOSED),
        id="lock-native-mixed-case",
    ),
    # lock, zigbee2mqtt
    pytest.param(
        LOCK,
        Z2M,
        b'{"state": "LOCK", "lock_state": "locked"}',
        LockReading(LOCKED, None),
        id="lock-z2m-locked",
    ),
    pytest.param(
        LOCK,
        Z2M,
        b'{"state": "UNLOCK", "lock_state": "unlocked", "battery": 80}',
        LockReading(UNLOCKED, None),
        id="lock-z2m-unlocked",
    ),
    pytest.param(
        LOCK,
        Z2M,
        b'{"state": "UNLOCK", "lock_state": "not_fully_locked"}',
        LockReading(JAMMED, None),
        id="lock-z2m-not-fully",
    ),
    pytest.param(
        LOCK,
        Z2M,
        b'{"state": "UNLOCK", "lock_state": "locked"}',
        LockReading(LOCKED, None),
        id="lock-z2m-lock-state-wins",
    ),
    pytest.param(
        LOCK, Z2M, b'{"state": "LOCK"}', LockReading(LOCKED, None), id="lock-z2m-state-fallback"
    ),
    pytest.param(
        LOCK,
        Z2M,
        b'{"state": "UNLOCK"}',
        LockReading(UNLOCKED, None),
        id="lock-z2m-state-fallback-unlock",
    ),
    pytest.param(
        LOCK,
        Z2M,
        b'{"lock_state": "locked", "contact": true}',
        LockReading(LOCKED, CLOSED),
        id="lock-z2m-contact-closed",
    ),
    pytest.param(
        LOCK,
        Z2M,
        b'{"lock_state": "unlocked", "contact": false}',
        LockReading(UNLOCKED, OPEN),
        id="lock-z2m-contact-open",
    ),
    pytest.param(
        LOCK,
        Z2M,
        b'{"lock_state": "unlocked", "door": "open"}',
        LockReading(UNLOCKED, OPEN),
        id="lock-z2m-door-key",
    ),
    pytest.param(
        LOCK,
        Z2M,
        b'{"lock_state": "locked", "contact": true, "door": "closed"}',
        LockReading(LOCKED, CLOSED),
        id="lock-z2m-contact-and-door",
    ),
    # fire alarm
    pytest.param(FIRE, NATIVE, b'{"alarm": true}', FireAlarmReading(True), id="fire-native-alarm"),
    pytest.param(
        FIRE, NATIVE, b'{"alarm": false}', FireAlarmReading(False), id="fire-native-quiet"
    ),
    pytest.param(
        FIRE,
        Z2M,
        b'{"smoke": true, "battery_low": false, "tamper": false}',
        FireAlarmReading(True),
        id="fire-z2m-smoke",
    ),
    pytest.param(
        FIRE, Z2M, b'{"smoke": false, "battery": 90}', FireAlarmReading(False), id="fire-z2m-clear"
    ),
    pytest.param(FIRE, Z2M, b'{"alarm": true}', FireAlarmReading(True), id="fire-z2m-alarm-key"),
    pytest.param(
        FIRE, Z2M, b'{"smoke": false, "alarm": true}', FireAlarmReading(True), id="fire-z2m-either"
    ),
]


@pytest.mark.parametrize(
    ("kind", "fmt", "payload", "expected"),
    GOOD_STATE,
)
def test_good_state(
    kind: DeviceKind, fmt: PayloadFormat, payload: bytes, expected: Reading
) -> None:
    reading = decode_state(kind, fmt, payload)
    assert reading == expected
    assert type(reading) is type(expected)


def test_good_cases_cover_every_mqtt_kind_in_both_formats() -> None:
    covered = {(case.values[0], case.values[1]) for case in GOOD_STATE}
    assert covered == {(kind, fmt) for kind in MQTT_KINDS for fmt in PayloadFormat}


def test_measured_values_are_floats() -> None:
    reading = decode_state(CLIMATE, NATIVE, b'{"temperature": 27, "humidity": 61}')
    assert isinstance(reading, ClimateReading)
    assert type(reading.temperature) is float
    assert type(reading.humidity) is float


BAD_STATE: list[Any] = [
    # the twelve from the contract's bad-input list
    pytest.param(OCC, NATIVE, b"hello", R.NOT_JSON, id="not-json"),
    pytest.param(OCC, NATIVE, b"[1,2]", R.NOT_OBJECT, id="json-array"),
    pytest.param(OCC, NATIVE, b'{"occupied": "yes"}', R.WRONG_TYPE, id="wrong-type"),
    pytest.param(CLIMATE, NATIVE, b'{"temperature": NaN}', R.NOT_FINITE, id="nan"),
    pytest.param(CLIMATE, NATIVE, b'{"temperature": Infinity}', R.NOT_FINITE, id="infinity"),
    pytest.param(CLIMATE, NATIVE, b'{"temperature": -60}', R.OUT_OF_RANGE, id="minus-60-celsius"),
    pytest.param(
        OCC, NATIVE, b'{"occupied": true, "count": -1}', R.OUT_OF_RANGE, id="count-minus-1"
    ),
    pytest.param(OCC, NATIVE, OVERSIZED, R.TOO_LARGE, id="over-64-kib"),
    pytest.param(OCC, NATIVE, b"", R.EMPTY, id="empty"),
    pytest.param(OCC, NATIVE, bytes(range(256)), R.NOT_UTF8, id="binary-all-bytes"),
    pytest.param(OCC, NATIVE, b"\xff\xfe\x00", R.NOT_UTF8, id="binary-ff-fe-00"),
    pytest.param(OCC, NATIVE, DEEP_ARRAYS, R.TOO_DEEP, id="deep-arrays"),
    pytest.param(OCC, NATIVE, DEEP_OBJECTS, R.TOO_DEEP, id="deep-objects"),
    # more
    pytest.param(OCC, NATIVE, b'{"battery": 90}', R.MISSING_FIELD, id="missing-field"),
    pytest.param(
        LOCK, NATIVE, b'{"state": "OPEN_SESAME"}', R.UNKNOWN_VALUE, id="unknown-lock-state"
    ),
    pytest.param(
        OCC, NATIVE, b'{"occupied": false, "count": 3}', R.INCONSISTENT, id="inconsistent-occupancy"
    ),
    pytest.param(CLIMATE, NATIVE, b'{"temperature": 1e400}', R.NOT_FINITE, id="1e400"),
    pytest.param(
        OCC, NATIVE, b'{"occupied": true, "count": true}', R.WRONG_TYPE, id="bool-as-count"
    ),
    pytest.param(CLIMATE, NATIVE, b'{"humidity": 140}', R.OUT_OF_RANGE, id="humidity-140"),
    # edges of the parse step
    pytest.param(OCC, NATIVE, b" \r\n\t ", R.EMPTY, id="whitespace-only"),
    pytest.param(CLIMATE, NATIVE, b'{"temperature": -Infinity}', R.NOT_FINITE, id="minus-infinity"),
    pytest.param(CLIMATE, Z2M, b'{"temperature": -1e400}', R.NOT_FINITE, id="minus-1e400"),
    pytest.param(
        OCC, Z2M, b'{"occupancy": true, "illuminance": NaN}', R.NOT_FINITE, id="nan-in-ignored-key"
    ),
    pytest.param(OCC, NATIVE, b'"occupied"', R.NOT_OBJECT, id="json-string"),
    pytest.param(OCC, NATIVE, b"42", R.NOT_OBJECT, id="json-number"),
    pytest.param(OCC, NATIVE, b"null", R.NOT_OBJECT, id="json-null"),
    pytest.param(OCC, NATIVE, b'{"occupied": true,}', R.NOT_JSON, id="trailing-comma"),
    pytest.param(OCC, NATIVE, b'{"occupied": tr', R.NOT_JSON, id="truncated"),
    pytest.param(OCC, NATIVE, b'\xef\xbb\xbf{"occupied": true}', R.NOT_JSON, id="utf8-bom"),
    pytest.param(
        OCC,
        NATIVE,
        b'{"s": "' + b"[" * 5000 + b'", "x": }',
        R.NOT_JSON,
        id="brackets-in-strings-not-deep",
    ),
    pytest.param(
        OCC,
        NATIVE,
        b'{"s": "\\"\\\\", "d":' + b"[" * 2000 + b"]" * 2000 + b"}",
        R.TOO_DEEP,
        id="deep-with-escaped-quotes",
    ),
    # occupancy
    pytest.param(OCC, NATIVE, b'{"occupied": null}', R.MISSING_FIELD, id="occ-null-occupied"),
    pytest.param(OCC, NATIVE, b'{"occupied": 1}', R.WRONG_TYPE, id="occ-occupied-number"),
    pytest.param(
        OCC,
        NATIVE,
        b'{"occupied": 1, "count": 1}',
        R.WRONG_TYPE,
        id="occ-occupied-number-with-count",
    ),
    pytest.param(
        OCC, NATIVE, b'{"occupied": true, "count": 2.5}', R.WRONG_TYPE, id="occ-count-fraction"
    ),
    pytest.param(
        OCC, NATIVE, b'{"occupied": true, "count": "3"}', R.WRONG_TYPE, id="occ-count-string"
    ),
    pytest.param(
        OCC, NATIVE, b'{"occupied": true, "count": 10001}', R.OUT_OF_RANGE, id="occ-count-too-big"
    ),
    pytest.param(
        OCC, NATIVE, b'{"count": 18446744073709551616}', R.OUT_OF_RANGE, id="occ-count-huge-int"
    ),
    pytest.param(OCC, Z2M, b'{"occupied": true}', R.MISSING_FIELD, id="occ-z2m-native-key"),
    pytest.param(OCC, Z2M, b'{"occupancy": "ON"}', R.WRONG_TYPE, id="occ-z2m-wrong-type"),
    pytest.param(
        OCC, Z2M, b'{"occupancy": false, "people": 2}', R.INCONSISTENT, id="occ-z2m-inconsistent"
    ),
    pytest.param(
        OCC, Z2M, b'{"occupancy": true, "people": -2}', R.OUT_OF_RANGE, id="occ-z2m-people-negative"
    ),
    # people counter
    pytest.param(COUNTER, NATIVE, b'{"in": 5}', R.MISSING_FIELD, id="counter-missing-out"),
    pytest.param(COUNTER, Z2M, b'{"out": 5}', R.MISSING_FIELD, id="counter-missing-in"),
    pytest.param(COUNTER, NATIVE, b'{"in": -1, "out": 0}', R.OUT_OF_RANGE, id="counter-negative"),
    pytest.param(
        COUNTER, NATIVE, b'{"in": 4294967296, "out": 0}', R.OUT_OF_RANGE, id="counter-over-32-bit"
    ),
    pytest.param(COUNTER, NATIVE, b'{"in": 1, "out": false}', R.WRONG_TYPE, id="counter-bool"),
    pytest.param(COUNTER, Z2M, b'{"in": 1.5, "out": 0}', R.WRONG_TYPE, id="counter-fraction"),
    # climate
    pytest.param(CLIMATE, NATIVE, b'{"battery": 50}', R.MISSING_FIELD, id="climate-missing"),
    pytest.param(
        CLIMATE,
        Z2M,
        b'{"temperature": null, "humidity": null}',
        R.MISSING_FIELD,
        id="climate-both-null",
    ),
    pytest.param(CLIMATE, NATIVE, b'{"temperature": true}', R.WRONG_TYPE, id="climate-bool"),
    pytest.param(CLIMATE, Z2M, b'{"temperature": "27.4"}', R.WRONG_TYPE, id="climate-string"),
    pytest.param(CLIMATE, Z2M, b'{"temperature": 85.1}', R.OUT_OF_RANGE, id="climate-too-hot"),
    pytest.param(
        CLIMATE,
        Z2M,
        b'{"temperature": 20, "humidity": -0.5}',
        R.OUT_OF_RANGE,
        id="climate-humidity-negative",
    ),
    # lock
    pytest.param(LOCK, NATIVE, b'{"door": "open"}', R.MISSING_FIELD, id="lock-missing-state"),
    pytest.param(LOCK, NATIVE, b'{"state": 1}', R.WRONG_TYPE, id="lock-state-number"),
    pytest.param(
        LOCK, NATIVE, b'{"state": "LOCK"}', R.UNKNOWN_VALUE, id="lock-native-command-word"
    ),
    pytest.param(
        LOCK,
        NATIVE,
        b'{"state": "LOCKED", "door": "ajar"}',
        R.UNKNOWN_VALUE,
        id="lock-unknown-door",
    ),
    pytest.param(
        LOCK, NATIVE, b'{"state": "LOCKED", "door": true}', R.WRONG_TYPE, id="lock-door-bool"
    ),
    pytest.param(LOCK, Z2M, b'{"battery": 80}', R.MISSING_FIELD, id="lock-z2m-missing"),
    pytest.param(
        LOCK,
        Z2M,
        b'{"state": "UNLOCK", "lock_state": "unknown"}',
        R.UNKNOWN_VALUE,
        id="lock-z2m-lock-state-unknown",
    ),
    pytest.param(LOCK, Z2M, b'{"state": "OPEN_SESAME"}', R.UNKNOWN_VALUE, id="lock-z2m-bad-state"),
    pytest.param(
        LOCK,
        Z2M,
        b'{"lock_state": "locked", "contact": "closed"}',
        R.WRONG_TYPE,
        id="lock-z2m-contact-string",
    ),
    pytest.param(
        LOCK,
        Z2M,
        b'{"lock_state": "locked", "contact": true, "door": "open"}',
        R.INCONSISTENT,
        id="lock-z2m-contact-vs-door",
    ),
    # fire alarm
    pytest.param(FIRE, NATIVE, b'{"smoke": true}', R.MISSING_FIELD, id="fire-missing"),
    pytest.param(FIRE, NATIVE, b'{"alarm": "true"}', R.WRONG_TYPE, id="fire-string"),
    pytest.param(FIRE, NATIVE, b'{"alarm": 1}', R.WRONG_TYPE, id="fire-number"),
    pytest.param(FIRE, Z2M, b'{"battery": 90}', R.MISSING_FIELD, id="fire-z2m-missing"),
    pytest.param(FIRE, Z2M, b'{"smoke": "ON"}', R.WRONG_TYPE, id="fire-z2m-smoke-string"),
]


@pytest.mark.parametrize(
    ("kind", "fmt", "payload", "reason"),
    BAD_STATE,
)
def test_bad_state(
    kind: DeviceKind, fmt: PayloadFormat, payload: bytes, reason: BadPayloadReason
) -> None:
    with pytest.raises(PayloadError) as caught:
        decode_state(kind, fmt, payload)
    assert caught.value.reason is reason
    detail = caught.value.detail
    assert detail
    assert len(detail) <= 120, detail  # a short sentence, never the payload


def test_oversized_payload_is_otherwise_valid() -> None:
    assert len(OVERSIZED) == MAX_PAYLOAD_BYTES + 1
    at_limit = _padded(MAX_PAYLOAD_BYTES)
    assert len(at_limit) == MAX_PAYLOAD_BYTES
    assert decode_state(OCC, NATIVE, at_limit) == OccupancyReading(True)


def test_detail_quotes_at_most_an_excerpt() -> None:
    with pytest.raises(PayloadError) as caught:
        decode_state(LOCK, NATIVE, b'{"state": "' + b"X" * 5000 + b'"}')
    assert caught.value.reason is R.UNKNOWN_VALUE
    assert "X" * 41 not in caught.value.detail
    assert str(caught.value).startswith("unknown_value: ")


@pytest.mark.parametrize("fmt", list(PayloadFormat))
@pytest.mark.parametrize("kind", [DeviceKind.AIR_CONDITIONER, DeviceKind.DOCUMENT_CABINET])
def test_modbus_kinds_are_a_programming_error(kind: DeviceKind, fmt: PayloadFormat) -> None:
    with pytest.raises(ValueError, match=kind.value):
        decode_state(kind, fmt, b"{}")


GOOD_AVAILABILITY: list[Any] = [
    pytest.param(NATIVE, b"online", True, id="native-online"),
    pytest.param(NATIVE, b"offline", False, id="native-offline"),
    pytest.param(NATIVE, b"online\n", True, id="native-trailing-newline"),
    pytest.param(NATIVE, b"OFFLINE", False, id="native-upper"),
    pytest.param(Z2M, b"online", True, id="z2m-bare-online"),
    pytest.param(Z2M, b"offline", False, id="z2m-bare-offline"),
    pytest.param(Z2M, b'{"state": "online"}', True, id="z2m-json-online"),
    pytest.param(Z2M, b'{"state": "offline"}', False, id="z2m-json-offline"),
    pytest.param(Z2M, b'{"state": "online", "since": 12}', True, id="z2m-json-extra-keys"),
]


@pytest.mark.parametrize(
    ("fmt", "payload", "expected"),
    GOOD_AVAILABILITY,
)
def test_good_availability(fmt: PayloadFormat, payload: bytes, expected: bool) -> None:
    assert decode_availability(fmt, payload) is expected


BAD_AVAILABILITY: list[Any] = [
    pytest.param(NATIVE, b"maybe", R.UNKNOWN_VALUE, id="native-maybe"),
    pytest.param(NATIVE, b'{"state": "online"}', R.UNKNOWN_VALUE, id="native-json"),
    pytest.param(NATIVE, b"", R.EMPTY, id="native-empty"),
    pytest.param(NATIVE, b"  \n", R.EMPTY, id="native-blank"),
    pytest.param(NATIVE, b"\xff\xfe\x00", R.NOT_UTF8, id="native-binary"),
    pytest.param(NATIVE, b"online" + b" " * MAX_PAYLOAD_BYTES, R.TOO_LARGE, id="native-too-large"),
    pytest.param(Z2M, b"maybe", R.UNKNOWN_VALUE, id="z2m-maybe"),
    pytest.param(Z2M, b'{"state": "maybe"}', R.UNKNOWN_VALUE, id="z2m-json-maybe"),
    pytest.param(Z2M, b'{"availability": "online"}', R.MISSING_FIELD, id="z2m-json-missing"),
    pytest.param(Z2M, b'{"state": true}', R.WRONG_TYPE, id="z2m-json-bool"),
    pytest.param(Z2M, b'{"state": "online"', R.NOT_JSON, id="z2m-json-broken"),
    pytest.param(Z2M, DEEP_OBJECTS, R.TOO_DEEP, id="z2m-json-deep"),
    pytest.param(Z2M, b"", R.EMPTY, id="z2m-empty"),
    pytest.param(Z2M, bytes(range(256)), R.NOT_UTF8, id="z2m-binary"),
]


@pytest.mark.parametrize(
    ("fmt", "payload", "reason"),
    BAD_AVAILABILITY,
)
def test_bad_availability(fmt: PayloadFormat, payload: bytes, reason: BadPayloadReason) -> None:
    with pytest.raises(PayloadError) as caught:
        decode_availability(fmt, payload)
    assert caught.value.reason is reason
    assert len(caught.value.detail) <= 120
