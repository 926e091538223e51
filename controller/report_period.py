"""Which local days a report covers: ``from`` and ``to`` as people type them.

The utilization table (HTTP and ``centerctl report``) and the visitors' page
take a period of whole days in the site's zone. The rules for what makes a
period (the format, the order, the length, not after today) are the same
everywhere they are typed, so they live here, and every problem is reported
at once, by field, for the API's error details.
"""

from __future__ import annotations

import re
from datetime import date

MAX_DAYS = 366


class PeriodError(ValueError):
    """Dates that do not make a period: every problem as ``{"field", "message"}``."""

    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{p['field']}: {p['message']}" for p in problems))
        self.problems = problems


def parse_period(
    first: str | None,
    last: str | None,
    today: date,
    *,
    names: tuple[str, str] = ("from", "to"),
    defaults: bool = False,
) -> tuple[date, date]:
    """``YYYY-MM-DD`` days, inclusive: ``from`` <= ``to``, at most 366 days, begun by today.

    With ``defaults``, a missing ``to`` is today and a missing ``from`` the first
    of ``to``'s month (so no dates at all is this month so far).
    """
    problems: list[dict[str, str]] = []

    def day_of(name: str, text: str | None) -> date | None:
        day = _date(text)
        if text is None:
            problems.append({"field": name, "message": "required, YYYY-MM-DD"})
        elif day is None:
            problems.append({"field": name, "message": "not a date (YYYY-MM-DD)"})
        elif not 2000 <= day.year <= 2200:
            problems.append({"field": name, "message": "must be between the years 2000 and 2200"})
            return None
        return day

    end = today if defaults and last is None else day_of(names[1], last)
    if defaults and first is None:
        start = end.replace(day=1) if end is not None else None
    else:
        start = day_of(names[0], first)
    if start is not None and end is not None and not problems:
        if end < start:
            problems.append({"field": names[1], "message": f"must not be before {names[0]}"})
        elif (end - start).days + 1 > MAX_DAYS:
            problems.append({"field": names[1], "message": f"at most {MAX_DAYS} days at once"})
        elif start > today:
            problems.append({"field": names[0], "message": f"is after today ({today.isoformat()})"})
    if problems or start is None or end is None:
        raise PeriodError(problems)
    return start, end


def _date(text: str | None) -> date | None:
    if text is None or re.fullmatch(r"\d{4}-\d{2}-\d{2}", text, re.ASCII) is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None
