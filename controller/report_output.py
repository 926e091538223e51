"""The utilization table as it leaves the controller: JSON, CSV and a terminal table.

The figures are computed by :mod:`rules.utilization` and gathered by
:class:`controller.reports.Reports`; this module owns only their shape, so
the API's JSON and CSV and ``centerctl report``'s text table show the same
columns in the same order, each in the form its reader expects (a CSV that a
spreadsheet opens as UTF-8, a table aligned for Chinese room names).
"""

from __future__ import annotations

import csv
import io
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from controller.site import Room
from rules.utilization import FIGURES, RESOLUTION_SECONDS, Figure, Usage

COLUMNS = ("room", "name", "name_en", "bookable", *FIGURES)
"""The utilization table's columns, in JSON and CSV alike."""


@dataclass(frozen=True, slots=True)
class UtilizationReport:
    first: date
    last: date
    timezone: str
    until: datetime
    rooms: tuple[tuple[Room, Usage], ...]
    total: Usage

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.first.isoformat(),
            "to": self.last.isoformat(),
            "timezone": self.timezone,
            "until": self.until.isoformat(),
            "resolution_seconds": RESOLUTION_SECONDS,
            "rooms": [
                {
                    "room": room.id,
                    "name": room.name,
                    "name_en": room.name_en,
                    "bookable": room.bookable,
                    **usage.figures(),
                }
                for room, usage in self.rooms
            ],
            "total": self.total.figures(),
        }

    def rows(self) -> list[list[str]]:
        """The table as text cells: the header, one row per room, then ``total``."""
        rows = [list(COLUMNS)]
        for room, usage in self.rooms:
            cells = [room.id, room.name, room.name_en, "true" if room.bookable else "false"]
            rows.append(cells + [_cell(value) for value in usage.figures().values()])
        total = self.total.figures()
        rows.append(["total", "", "", ""] + [_cell(value) for value in total.values()])
        return rows

    def to_csv(self) -> str:
        """CSV with a byte-order mark, so a spreadsheet reads 汇心室 as UTF-8."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerows(self.rows())
        return "\ufeff" + buffer.getvalue()

    def to_table(self) -> str:
        """An aligned text table for a terminal (wide characters count twice)."""
        rows = [list(COLUMNS)]
        for room, usage in self.rooms:
            cells = [room.id, room.name, room.name_en, "yes" if room.bookable else "no"]
            rows.append(cells + [_shown(*item) for item in usage.figures().items()])
        total = self.total.figures()
        rows.append(["total", "", "", ""] + [_shown(*item) for item in total.items()])
        widths = [max(_width(row[column]) for row in rows) for column in range(len(COLUMNS))]
        numeric = {index for index, name in enumerate(COLUMNS) if name in FIGURES}
        lines = [
            f"Utilization {self.first.isoformat()} to {self.last.isoformat()} "
            f"({self.timezone}), figures up to {self.until.isoformat()}"
        ]
        for row in rows:
            cells = [
                _pad(cell, widths[index], right=index in numeric) for index, cell in enumerate(row)
            ]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines) + "\n"


def _shown(name: str, value: Figure) -> str:
    """A figure as the table shows it: fixed decimals, ``-`` for none."""
    if value is None:
        return "-"
    if name == "utilization":
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _cell(value: Figure) -> str:
    if value is None:
        return ""
    return str(value)


def _width(text: str) -> int:
    """Terminal columns: East Asian wide and full-width characters take two."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def _pad(text: str, width: int, *, right: bool) -> str:
    padding = " " * (width - _width(text))
    return padding + text if right else text + padding
