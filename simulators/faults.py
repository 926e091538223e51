"""What ``centerctl simulate --faults SPEC`` breaks, and how each simulator applies it.

A spec is a comma-separated list of items; items may repeat::

    drop=0.05              fraction of MQTT state messages silently not sent
    garbage=0.02           fraction of MQTT state messages replaced by garbage
    dead=DEVICE            the device never answers
    slow=DEVICE            (Modbus) answers after longer than its timeout
    exception=DEVICE       (Modbus) answers with a Modbus exception
    reset=DEVICE@30m       (people counter) reboots 30 simulated minutes after start
    jam=DEVICE             (lock) reports JAMMED from its next command on

The plan is parsed once, checked against the site with :meth:`FaultPlan.problems`
before anything starts, and then handed to every simulator, each of which
looks up what concerns it. Drop and garbage decisions come from a random
generator seeded per device, so a run with the same seed fails the same way.
"""

from __future__ import annotations

import enum
import random
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from controller.durations import format_duration, parse_duration
from controller.site import ID_PATTERN, DeviceKind, PayloadFormat, Site

_DEVICE_FAULTS: Final = ("dead", "slow", "exception", "jam")
_KEYS: Final = ("drop", "garbage", *_DEVICE_FAULTS, "reset")
_USAGE: Final = {
    "drop": "drop=0.05",
    "garbage": "garbage=0.02",
    "dead": "dead=occ-gym",
    "slow": "slow=ac-love-room",
    "exception": "exception=ac-love-room",
    "reset": "reset=counter-entrance@30m",
    "jam": "jam=lock-main",
}


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Every fault of one simulation run; the empty plan breaks nothing."""

    drop: float = 0.0
    garbage: float = 0.0
    dead: frozenset[str] = frozenset()
    slow: frozenset[str] = frozenset()
    exception: frozenset[str] = frozenset()
    jam: frozenset[str] = frozenset()
    # (device, offset from the start of the run), in the order given.
    resets: tuple[tuple[str, timedelta], ...] = ()

    @classmethod
    def parse(cls, spec: str) -> FaultPlan:
        """Parse a ``--faults`` spec; raise ValueError naming the first bad item."""
        fractions: dict[str, float] = {}
        devices: dict[str, set[str]] = {key: set() for key in _DEVICE_FAULTS}
        resets: list[tuple[str, timedelta]] = []
        if not spec.strip():
            return cls()
        for raw in spec.split(","):
            item = raw.strip()
            if not item:
                raise ValueError(f"empty fault item in {spec!r}; separate items with one comma")
            key, equals, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not equals or key not in _KEYS:
                known = ", ".join(_USAGE.values())
                raise ValueError(f"unknown fault {item!r}; known faults: {known}")
            if not value:
                raise ValueError(f"fault {item!r} needs a value, e.g. {_USAGE[key]}")
            if key in ("drop", "garbage"):
                if key in fractions:
                    raise ValueError(f"fault {item!r}: {key} is given twice")
                fractions[key] = _fraction(item, key, value)
            elif key == "reset":
                resets.append(_reset(item, value))
            else:
                devices[key].add(_device(item, value))
        drop = fractions.get("drop", 0.0)
        garbage = fractions.get("garbage", 0.0)
        if drop + garbage > 1.0:
            raise ValueError(f"drop={drop} and garbage={garbage} add up to more than 1")
        return cls(
            drop=drop,
            garbage=garbage,
            dead=frozenset(devices["dead"]),
            slow=frozenset(devices["slow"]),
            exception=frozenset(devices["exception"]),
            jam=frozenset(devices["jam"]),
            resets=tuple(resets),
        )

    def __str__(self) -> str:
        """The plan as a spec that parses back to it."""
        fractions = (("drop", self.drop), ("garbage", self.garbage))
        items = [f"{key}={value:g}" for key, value in fractions if value]
        for key in _DEVICE_FAULTS:
            items += [f"{key}={device}" for device in sorted(getattr(self, key))]
        items += [f"reset={device}@{format_duration(offset)}" for device, offset in self.resets]
        return ",".join(items)

    @property
    def empty(self) -> bool:
        return self == NO_FAULTS

    def resets_of(self, device_id: str) -> tuple[timedelta, ...]:
        """When ``device_id`` reboots, as offsets from the start of the run, earliest first."""
        return tuple(sorted(offset for device, offset in self.resets if device == device_id))

    def problems(self, site: Site) -> list[str]:
        """What in this plan does not fit ``site``: unknown devices, faults a device cannot have."""
        devices = site.device_by_id
        found: list[str] = []
        named: list[tuple[str, str, str]] = [
            (key, device, f"{key}={device}")
            for key in _DEVICE_FAULTS
            for device in sorted(getattr(self, key))
        ]
        named += [
            ("reset", device, f"reset={device}@{format_duration(offset)}")
            for device, offset in self.resets
        ]
        for key, device_id, item in named:
            device = devices.get(device_id)
            if device is None:
                found.append(f"{item}: no device {device_id!r} in site {site.site.id!r}")
                continue
            kind = _a(device.kind.value.replace("_", " ") + " device")
            if key == "slow" and device.is_mqtt:
                found.append(f"{item}: only Modbus devices can be slow; this is {kind}")
            if key == "exception" and device.is_mqtt:
                found.append(f"{item}: only Modbus devices answer with exceptions; this is {kind}")
            if key == "reset" and device.kind is not DeviceKind.PEOPLE_COUNTER:
                found.append(f"{item}: only people counters reset; this is {kind}")
            if key == "jam" and device.kind is not DeviceKind.LOCK:
                found.append(f"{item}: only locks jam; this is {kind}")
            if key != "dead" and device_id in self.dead:
                found.append(f"{item}: {device_id} is also dead, so it would never show")
        for device_id in sorted(self.slow & self.exception):
            found.append(f"slow={device_id} and exception={device_id}: choose one")
        return found

    def messages(self, device_id: str, seed: int) -> MessageFaults:
        """The drop/garbage decider for one device's state messages."""
        return MessageFaults(self.drop, self.garbage, random.Random(f"{seed}/faults/{device_id}"))


NO_FAULTS: Final = FaultPlan()


def _a(noun: str) -> str:
    """``"occupancy device"`` -> ``"an occupancy device"``."""
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _fraction(item: str, key: str, value: str) -> float:
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(
            f"fault {item!r}: {key} must be a fraction from 0 to 1, e.g. {_USAGE[key]}"
        )
    return fraction


def _device(item: str, value: str) -> str:
    if not re.fullmatch(ID_PATTERN, value):
        raise ValueError(
            f"fault {item!r}: {value!r} is not a device id "
            "(lower-case letters, digits, '-' and '_')"
        )
    return value


def _reset(item: str, value: str) -> tuple[str, timedelta]:
    device, at, offset = value.partition("@")
    if not at or not offset.strip():
        raise ValueError(f"fault {item!r}: write reset=DEVICE@OFFSET, e.g. {_USAGE['reset']}")
    try:
        when = parse_duration(offset)
    except ValueError as error:
        raise ValueError(f"fault {item!r}: {error}") from None
    if when <= timedelta(0):
        raise ValueError(f"fault {item!r}: the offset must be after the start, e.g. 30m")
    return _device(item, device.strip()), when


class Verdict(enum.Enum):
    SEND = "send"
    DROP = "drop"
    GARBAGE = "garbage"


class MessageFaults:
    """Decides, message by message, whether a device's state goes out, vanishes or is mangled.

    Garbage rotates through the kinds of bad input the controller must
    survive (not JSON, not an object, a wrong type, an out-of-range or
    unknown value), so a long run exercises each of them.
    """

    def __init__(self, drop: float, garbage: float, rng: random.Random) -> None:
        self._drop = drop
        self._garbage = garbage
        self._rng = rng
        self._rotation = 0

    def decide(self) -> Verdict:
        if not (self._drop or self._garbage):
            return Verdict.SEND
        draw = self._rng.random()
        if draw < self._drop:
            return Verdict.DROP
        if draw < self._drop + self._garbage:
            return Verdict.GARBAGE
        return Verdict.SEND

    def garbage(self, kind: DeviceKind, fmt: PayloadFormat) -> bytes:
        """The next garbage payload for a device of ``kind`` in ``fmt``."""
        choices = garbage_payloads(kind, fmt)
        payload = choices[self._rotation % len(choices)]
        self._rotation += 1
        return payload


def garbage_payloads(kind: DeviceKind, fmt: PayloadFormat) -> tuple[bytes, ...]:
    """Payloads that look like a ``kind`` device's state but that no decoder may accept."""
    z2m = fmt is PayloadFormat.ZIGBEE2MQTT
    table = {
        DeviceKind.OCCUPANCY: (
            b'{"occupancy": "yes"}' if z2m else b'{"occupied": "yes"}',
            b'{"occupancy": true, "people": -1}' if z2m else b'{"occupied": true, "count": -1}',
        ),
        DeviceKind.PEOPLE_COUNTER: (b'{"in": "many", "out": 3}', b'{"in": -5, "out": 0}'),
        DeviceKind.CLIMATE: (
            b'{"temperature": "warm"}',
            b'{"temperature": -60.0, "humidity": 140}',
        ),
        DeviceKind.LOCK: (
            b'{"lock_state": 1}' if z2m else b'{"state": 1, "door": "closed"}',
            b'{"lock_state": "open_sesame"}' if z2m else b'{"state": "OPEN_SESAME"}',
        ),
        DeviceKind.FIRE_ALARM: (
            b'{"smoke": "maybe"}' if z2m else b'{"alarm": "maybe"}',
            b'{"smoke": 2}' if z2m else b'{"alarm": 2}',
        ),
    }
    if kind not in table:
        raise ValueError(f"{kind.value} devices do not speak MQTT")
    wrong_type, out_of_range = table[kind]
    return (b'{"truncated": ', wrong_type, b"[1, 2, 3]", out_of_range)
