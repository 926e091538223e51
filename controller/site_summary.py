"""A plain-text summary of a validated site, printed by ``centerctl check``.

Whoever edits a site file wants to see what the controller understood from it
(which devices ended up in which room, which rooms are bookable or open all
night, which timings apply) before deploying it, without reading TOML or
JSON. The summary is plain text with aligned columns, so it reads the same in
a terminal, a log or a ticket.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Sequence

from controller.durations import format_duration
from controller.site import Device, DeviceKind, Protocol, Site

_INDENT = "  "
_GAP = "  "
# With device lists wrapped at this width the rooms table stays near 120 columns.
_DEVICES_WIDTH = 44


def summarize(site: Site) -> str:
    """Describe ``site`` for people: the center, rooms, devices and rule timings."""
    sections = [
        _header(site),
        _rooms(site),
        _device_counts(site),
        _site_wide(site),
        _modbus(site),
        _rules(site),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections if lines)


def _header(site: Site) -> list[str]:
    info = site.site
    title = " / ".join(_one_line(name) for name in (info.name, info.name_en) if name)
    hours = f"{info.hours.open:%H:%M}-{info.hours.close:%H:%M} every day"
    return [
        title,
        *_table(
            None,
            [["id", info.id], ["time zone", info.timezone], ["hours", hours]],
        ),
    ]


def _rooms(site: Site) -> list[str]:
    rows = [
        [
            room.id,
            # Chinese above English: one column instead of two keeps the table
            # near 120 columns.
            "\n".join(_one_line(name) for name in (room.name, room.name_en) if name),
            "-" if room.capacity is None else str(room.capacity),
            "yes" if room.bookable else "no",
            "24 h" if room.always_open else "center hours",
            _wrap([device.id for device in site.devices_in(room.id)], _DEVICES_WIDTH) or "-",
        ]
        for room in site.rooms
    ]
    headers = ["id", "name", "capacity", "bookable", "open", "devices"]
    return [f"Rooms ({len(site.rooms)})", *_table(headers, rows, right={2})]


def _device_counts(site: Site) -> list[str]:
    """Devices by kind with a per-protocol split, so a missing sensor stands out."""
    by_kind: dict[DeviceKind, Counter[Protocol]] = {}
    for device in site.devices:
        by_kind.setdefault(device.kind, Counter())[_protocol(device)] += 1
    # Enum order (occupancy first, cabinets last) rather than file order, so
    # that summaries of different sites line up.
    rows = [
        [kind.value, str(sum(counts.values())), f"({_split(counts)})"]
        for kind in DeviceKind
        if (counts := by_kind.get(kind))
    ]
    totals = Counter(_protocol(device) for device in site.devices)
    rows.append(["total", str(len(site.devices)), f"({_split(totals)})" if totals else ""])
    return ["Devices by kind", *_table(None, rows, right={1})]


def _site_wide(site: Site) -> list[str]:
    """Devices outside every room: easy to forget, and they drive site-wide rules."""
    rows = [
        [device.id, device.kind.value, _protocol(device).value, _one_line(device.name) or "-"]
        for device in site.devices
        if device.room is None
    ]
    if not rows:
        return ["Site-wide devices: none"]
    return ["Site-wide devices", *_table(None, rows)]


def _modbus(site: Site) -> list[str]:
    """Where each Modbus device is reached: the usual thing to get wrong on site."""
    rows = [
        [
            device.id,
            f"{device.host}:{device.port}",
            f"unit {device.unit}",
            device.profile or "-",
            f"poll {format_duration(device.poll)}",
            f"timeout {format_duration(device.timeout)}",
        ]
        for device in site.devices
        if _protocol(device) is Protocol.MODBUS
    ]
    if not rows:
        return []
    return ["Modbus devices", *_table(None, rows)]


def _rules(site: Site) -> list[str]:
    rules = site.rules
    climate = rules.climate
    timing_rows = [
        ["unlock before a booking", format_duration(rules.unlock_before)],
        ["no-show after start", format_duration(rules.no_show_after)],
        ["relock at the latest after end", format_duration(rules.relock_grace)],
        ["door-open alarm after", format_duration(rules.door_open_alarm_after)],
        ["offline after", f"{rules.offline_after_missed} missed reporting intervals"],
        ["over capacity clears", f"{rules.capacity_hysteresis} below capacity"],
    ]
    managed = ", ".join(device.id for device in site.climate_air_conditioners) or "none"
    climate_rows = [
        ["air conditioners", managed],
        ["cool when occupied above", f"{climate.cool_above:g} °C, to {climate.cool_setpoint:g} °C"],
        ["AC off after empty for", format_duration(climate.empty_off_after)],
        ["cool even when empty, outdoor >=", f"{climate.heat_wave_outdoor:g} °C"],
        [
            "heat when occupied, outdoor below",
            f"{climate.cold_outdoor:g} °C, to {climate.heat_setpoint:g} °C",
        ],
        ["compressor off at least", format_duration(climate.min_off)],
        ["hysteresis", f"{climate.hysteresis:g} °C"],
    ]
    cabinet = rules.cabinet
    cabinet_rows = [
        ["deposit must close within", format_duration(cabinet.deposit_timeout)],
        ["pickup must open within", format_duration(cabinet.pickup_timeout)],
        [
            "wrong codes before lockout",
            f"{cabinet.wrong_codes} within {format_duration(cabinet.wrong_code_window)},"
            f" locked out {format_duration(cabinet.lockout)}",
        ],
    ]
    # One table for all, so that the values line up in a single column.
    table = _table(None, timing_rows + climate_rows + cabinet_rows)
    first, second = len(timing_rows), len(timing_rows) + len(climate_rows)
    return [
        "Rules",
        *table[:first],
        "",
        "Climate rules",
        *table[first:second],
        "",
        "Document cabinet",
        *table[second:],
    ]


def _protocol(device: Device) -> Protocol:
    # A validated device always has its protocol filled in; the fallback only
    # keeps the type checker honest.
    return device.protocol or Protocol.MQTT


def _split(counts: Counter[Protocol]) -> str:
    return ", ".join(
        f"{protocol.value} {counts[protocol]}" for protocol in Protocol if counts[protocol]
    )


def _one_line(text: str) -> str:
    """Free text from the file, kept to one line so it cannot break a table."""
    return " ".join(text.split())


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal.

    CJK characters (east-asian width W or F) take two columns, combining marks
    none; padding by ``len()`` would push every column after a Chinese room
    name out of line. Ambiguous-width characters (``°``) count as one, as in
    most non-CJK terminals.
    """
    width = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def _wrap(items: Sequence[str], width: int) -> str:
    """``items`` joined by ", " on as few lines of at most ``width`` as fit.

    An item longer than ``width`` gets a line of its own rather than being cut.
    """
    lines: list[str] = []
    for item in items:
        # ", " before the item and room for the "," that may end its line.
        if lines and display_width(lines[-1]) + 2 + display_width(item) + 1 <= width:
            lines[-1] += ", " + item
        else:
            if lines:
                lines[-1] += ","
            lines.append(item)
    return "\n".join(lines)


def _pad(text: str, width: int, right: bool = False) -> str:
    fill = " " * max(width - display_width(text), 0)
    return fill + text if right else text + fill


def _table(
    headers: Sequence[str] | None,
    rows: Sequence[Sequence[str]],
    right: set[int] | None = None,
) -> list[str]:
    """Indented rows with aligned columns; columns in ``right`` are right-aligned.

    A cell may hold several lines ("\\n"); its row then takes as many lines.
    The last column is not padded, so that no line ends in blanks.
    """
    right = right or set()
    table = [list(headers), []] if headers else []
    table += [list(row) for row in rows]
    columns = max(len(row) for row in table)
    widths = [
        max(
            (
                display_width(part)
                for row in table
                if column < len(row)
                for part in row[column].split("\n")
            ),
            default=0,
        )
        for column in range(columns)
    ]
    if headers:
        table[1] = ["-" * width for width in widths]
    out: list[str] = []
    for row in table:
        cells = [cell.split("\n") for cell in row]
        for index in range(max(len(parts) for parts in cells)):
            line = [parts[index] if index < len(parts) else "" for parts in cells]
            padded = [
                _pad(part, widths[column], right=column in right)
                if column < len(line) - 1 or column in right
                else part
                for column, part in enumerate(line)
            ]
            out.append((_INDENT + _GAP.join(padded)).rstrip())
    return out
