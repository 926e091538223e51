"""Durations written for people: ``"90s"``, ``"15m"``, ``"2h"``, ``"1h30m"``, ``"250ms"``.

Site files use them for every rule timing so that a drill or a test can shorten
any of them without touching code.
"""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> timedelta:
    """Parse a duration string; raise ValueError with a reason a person can act on."""
    cleaned = text.strip().lower()
    if not cleaned:
        raise ValueError("empty duration; write it like '90s', '15m' or '2h'")
    position = 0
    seconds = 0.0
    for match in _PART.finditer(cleaned):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(cleaned):
        raise ValueError(f"not a duration: {text!r}; write it like '90s', '15m' or '2h'")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling of a duration, for summaries and logs."""
    total_ms = round(value.total_seconds() * 1000)
    if total_ms % 1000:
        return f"{total_ms}ms"
    total = total_ms // 1000
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return "".join(parts) or "0s"
