"""Visitors: entrance counters' cumulative totals become the day's exact counts.

Each people counter's readings go through :func:`rules.visitors.observe`
(increments, late messages, restarts); what it counts is added to the hour it
belongs to, per local day and per counter, and to the people inside now. All
of it is in SQLite and written in one transaction per reading, before anyone
can ask: a controller restart keeps the day's numbers, the people inside, and
each counter's last totals, so the first reading after the restart counts
what came in meanwhile instead of taking a new baseline. A counter's state
changes only after its transaction has committed, so a failed write is
re-judged from the old state on the next reading and loses nothing.

:meth:`VisitorCounter.run` closes the day at local midnight (the people
inside go back to 0, and a ``visitors_day_closed`` event tells the day's
totals) and confirms suspected counter restarts whose reporting interval ran
out. The readings' own handler also closes a day that ended, so a reading
just after midnight never lands in the day before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from controller.bus import EventBus, Unsubscribe
from controller.clock import Clock, sleep_or_wake
from controller.event_log import EventLog, Severity
from controller.events import ReadingReceived, VisitorsCounted
from controller.readings import CounterReading
from controller.site import Device, DeviceKind, Site
from rules.visitors import (
    DEFAULT_INTERVAL,
    CounterState,
    Guard,
    Restart,
    Step,
    Suspect,
    Totals,
    Verdict,
    add_inside,
    expire,
    hour_starts,
    local_day,
    local_hour,
    next_deadline,
    next_midnight,
    observe,
)

# The deadline loop wakes at least this often, so a wall clock set forward
# (NTP after a power cut) still closes the day within minutes.
MAX_SLEEP = 300.0

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS visitor_counters (
        device TEXT PRIMARY KEY,
        state TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS visitor_hours (
        day TEXT NOT NULL,
        hour INTEGER NOT NULL CHECK (hour BETWEEN 0 AND 23),
        device TEXT NOT NULL,
        entries INTEGER NOT NULL DEFAULT 0,
        exits INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (day, hour, device)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS visitor_days (
        day TEXT PRIMARY KEY,
        inside INTEGER NOT NULL DEFAULT 0 CHECK (inside >= 0),
        closed INTEGER NOT NULL DEFAULT 0,
        inside_at_close INTEGER
    )
    """,
)


@dataclass(frozen=True, slots=True)
class HourCount:
    start: datetime
    entries: int
    exits: int


@dataclass(frozen=True, slots=True)
class CounterDay:
    """One counter on one day: what it added, and how it stands now."""

    device: str
    room: str | None
    entries: int
    exits: int
    totals: Totals | None  # its last accepted cumulative totals
    restart_pending: bool
    last_reading: datetime | None  # last live reading since this controller started


@dataclass(frozen=True, slots=True)
class VisitorDay:
    """A local day's visitors. ``inside`` is now for today, and 0 for a day that has
    ended (reset at midnight); ``inside_at_close`` is what it was just before."""

    day: date
    entries: int
    exits: int
    inside: int
    inside_at_close: int | None
    closed: bool
    hours: list[HourCount]
    counters: list[CounterDay]


class VisitorCounter:
    def __init__(
        self,
        site: Site,
        bus: EventBus,
        clock: Clock,
        *,
        db: sqlite3.Connection,
        events: EventLog,
        logger: logging.Logger | None = None,
    ) -> None:
        if events.db is not db:
            raise ValueError("the visitor counts and the event log must share one connection")
        self._site = site
        self._bus = bus
        self._clock = clock
        self._db = db
        self._events = events
        self._logger = logger or logging.getLogger("controller.visitors")
        self._zone = site.site.zone
        self._counters: dict[str, Device] = {
            device.id: device for device in site.devices if device.kind is DeviceKind.PEOPLE_COUNTER
        }
        self._intervals = {
            device_id: device.interval or DEFAULT_INTERVAL
            for device_id, device in self._counters.items()
        }
        self._wake = asyncio.Event()
        self._unsubscribe: Unsubscribe | None = None
        self._last_reading: dict[str, datetime] = {}
        with events.transaction():
            for statement in _SCHEMA:
                db.execute(statement)
        self._states: dict[str, CounterState] = {
            row["device"]: _state_from_json(row["state"])
            for row in db.execute("SELECT device, state FROM visitor_counters")
        }
        row = db.execute(
            "SELECT day, inside FROM visitor_days WHERE closed = 0 ORDER BY day DESC LIMIT 1"
        ).fetchone()
        self._day: date | None = date.fromisoformat(row["day"]) if row is not None else None
        self._inside: int = int(row["inside"]) if row is not None else 0

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Listen to counter readings; close a day that ended while the controller was down."""
        self._roll(self._clock.now())
        if self._unsubscribe is None:
            self._unsubscribe = self._bus.subscribe(ReadingReceived, self._on_reading)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    async def run(self) -> None:
        """Close each day at local midnight and confirm restarts whose interval ran out."""
        while True:
            self._wake.clear()
            now = self._clock.now()
            self._roll(now)
            self._expire_due(now)
            wake_at = next_midnight(now, self._zone)
            for state in self._states.values():
                deadline = next_deadline(state)
                if deadline is not None and deadline < wake_at:
                    wake_at = deadline
            seconds = min(MAX_SLEEP, (wake_at - now).total_seconds())
            await sleep_or_wake(self._clock, self._wake, seconds)

    # -- queries ----------------------------------------------------------------

    def today(self) -> date:
        return local_day(self._clock.now(), self._zone)

    def day(self, day: date) -> VisitorDay:
        """The visitors of ``day`` (a local date), from the database."""
        key = day.isoformat()
        by_hour = [[0, 0] for _ in range(24)]
        by_device: dict[str, list[int]] = {}
        for row in self._db.execute(
            "SELECT hour, device, entries, exits FROM visitor_hours WHERE day = ?", (key,)
        ):
            by_hour[row["hour"]][0] += row["entries"]
            by_hour[row["hour"]][1] += row["exits"]
            found = by_device.setdefault(row["device"], [0, 0])
            found[0] += row["entries"]
            found[1] += row["exits"]
        record = self._db.execute(
            "SELECT closed, inside_at_close FROM visitor_days WHERE day = ?", (key,)
        ).fetchone()
        current = self._day is not None and day == self._day
        return VisitorDay(
            day=day,
            entries=sum(hour[0] for hour in by_hour),
            exits=sum(hour[1] for hour in by_hour),
            inside=self._inside if current else 0,
            inside_at_close=None if record is None else record["inside_at_close"],
            closed=bool(record["closed"]) if record is not None else day < self.today(),
            hours=[
                HourCount(start, counts[0], counts[1])
                for start, counts in zip(hour_starts(day, self._zone), by_hour, strict=True)
            ],
            counters=[
                CounterDay(
                    device=device_id,
                    room=device.room,
                    entries=by_device.get(device_id, [0, 0])[0],
                    exits=by_device.get(device_id, [0, 0])[1],
                    totals=self._states.get(device_id, CounterState()).mark,
                    restart_pending=self._states.get(device_id, CounterState()).suspect is not None,
                    last_reading=self._last_reading.get(device_id),
                )
                for device_id, device in self._counters.items()
            ],
        )

    @property
    def inside(self) -> int:
        """People inside now, as far as the entrance counters tell."""
        return self._inside

    def status(self) -> dict[str, Any]:
        """For ``/api/health``."""
        today = self.today()
        entries, exits = self._db.execute(
            "SELECT COALESCE(SUM(entries), 0), COALESCE(SUM(exits), 0)"
            " FROM visitor_hours WHERE day = ?",
            (today.isoformat(),),
        ).fetchone()
        last = max(self._last_reading.values(), default=None)
        return {
            "counters": len(self._counters),
            "last_reading": last.isoformat() if last is not None else None,
            "restarts_pending": sorted(
                device_id for device_id, state in self._states.items() if state.suspect is not None
            ),
            "today": {
                "date": today.isoformat(),
                "entries": int(entries),
                "exits": int(exits),
                "inside": self._inside if self._day == today else 0,
            },
        }

    # -- updates ----------------------------------------------------------------

    def _on_reading(self, event: ReadingReceived) -> None:
        if event.device_id not in self._counters or not isinstance(event.reading, CounterReading):
            return
        self._roll(self._clock.now())
        if not event.retained:
            self._last_reading[event.device_id] = event.time
        before = self._states.get(event.device_id, CounterState())
        step = observe(
            before,
            Totals(event.reading.entries_total, event.reading.exits_total),
            event.time,
            interval=self._intervals[event.device_id],
            retained=event.retained,
        )
        self._apply(event.device_id, before, step)
        if step.verdict is Verdict.SUSPECTED:
            self._logger.info(
                "%s: totals went down (in %d, out %d; were in %d, out %d): "
                "a restart of the counter or a late message, held until the next reading",
                event.device_id,
                event.reading.entries_total,
                event.reading.exits_total,
                before.mark.entries if before.mark else 0,
                before.mark.exits if before.mark else 0,
            )
            self._wake.set()  # the deadline loop learns of the suspect's deadline
        elif step.verdict is Verdict.LATE:
            self._logger.debug("%s: a late message, counted nothing", event.device_id)

    def _expire_due(self, now: datetime) -> None:
        for device_id, state in list(self._states.items()):
            step = expire(state, now, interval=self._intervals.get(device_id, DEFAULT_INTERVAL))
            if step is not None:
                self._apply(device_id, state, step)

    def _apply(self, device_id: str, before: CounterState, step: Step) -> None:
        """Write what a step counted and the counter's new state, in one transaction."""
        if step.state == before and not step.increments:
            return
        inside = self._inside
        counted: list[VisitorsCounted] = []
        with self._events.transaction() as db:
            db.execute(
                "INSERT INTO visitor_counters (device, state) VALUES (?, ?)"
                " ON CONFLICT (device) DO UPDATE SET state = excluded.state",
                (device_id, _state_to_json(step.state)),
            )
            for increment in step.increments:
                if not (increment.entries or increment.exits):
                    continue
                day = local_day(increment.time, self._zone)
                db.execute(
                    "INSERT INTO visitor_hours (day, hour, device, entries, exits)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (day, hour, device) DO UPDATE SET"
                    " entries = entries + excluded.entries, exits = exits + excluded.exits",
                    (
                        day.isoformat(),
                        local_hour(increment.time, self._zone),
                        device_id,
                        increment.entries,
                        increment.exits,
                    ),
                )
                # Counts dated before the current day (a restart confirmed just after
                # midnight) join that day's totals; the people inside were reset since.
                if day == self._day:
                    inside = add_inside(inside, increment.entries, increment.exits)
                counted.append(
                    VisitorsCounted(
                        device_id, increment.entries, increment.exits, inside, increment.time
                    )
                )
            if inside != self._inside and self._day is not None:
                db.execute(
                    "UPDATE visitor_days SET inside = ? WHERE day = ?",
                    (inside, self._day.isoformat()),
                )
            if step.restart is not None:
                self._record_restart(device_id, step.restart)
        self._states[device_id] = step.state
        self._inside = inside
        for event in counted:
            self._bus.publish(event)

    def _record_restart(self, device_id: str, restart: Restart) -> None:
        self._logger.info(
            "%s restarted: totals began again at in %d, out %d (were in %d, out %d)",
            device_id,
            restart.new.entries,
            restart.new.exits,
            restart.old.entries,
            restart.old.exits,
        )
        self._events.record(
            "counter_reset",
            f"{device_id} restarted: its totals began again from 0 "
            f"(were in {restart.old.entries}, out {restart.old.exits}; "
            f"first reading after the restart in {restart.new.entries}, out {restart.new.exits})",
            severity=Severity.INFO,
            room=self._counters[device_id].room,
            device=device_id,
            details={
                "old": _totals_json(restart.old),
                "new": _totals_json(restart.new),
                "first_reading_at": restart.time.isoformat(),
            },
        )

    def _roll(self, now: datetime) -> None:
        """Close the current day if ``now`` is past its end, and open today.

        Only a day the controller has seen is closed (with its event); days it
        was down for have no record and read as empty.
        """
        today = local_day(now, self._zone)
        if self._day is not None and today <= self._day:
            return
        with self._events.transaction() as db:
            if self._day is not None:
                ended = self._day.isoformat()
                entries, exits = db.execute(
                    "SELECT COALESCE(SUM(entries), 0), COALESCE(SUM(exits), 0)"
                    " FROM visitor_hours WHERE day = ?",
                    (ended,),
                ).fetchone()
                db.execute(
                    "UPDATE visitor_days SET closed = 1, inside = 0, inside_at_close = ?"
                    " WHERE day = ?",
                    (self._inside, ended),
                )
                self._events.record(
                    "visitors_day_closed",
                    f"visitors on {ended}: {entries} entries, {exits} exits; "
                    f"{self._inside} still counted inside at the day's end, reset to 0",
                    severity=Severity.INFO,
                    details={
                        "date": ended,
                        "entries": int(entries),
                        "exits": int(exits),
                        "inside_at_close": self._inside,
                    },
                )
            db.execute(
                "INSERT INTO visitor_days (day, inside, closed) VALUES (?, 0, 0)"
                " ON CONFLICT (day) DO UPDATE SET inside = 0, closed = 0",
                (today.isoformat(),),
            )
        self._day = today
        self._inside = 0


def _totals_json(totals: Totals) -> dict[str, int]:
    return {"in": totals.entries, "out": totals.exits}


def _totals(value: Mapping[str, Any] | None) -> Totals | None:
    if value is None:
        return None
    return Totals(int(value["in"]), int(value["out"]))


def _state_to_json(state: CounterState) -> str:
    """A counter's state as stored: plain JSON, times with their offset."""
    body: dict[str, Any] = {
        "mark": None if state.mark is None else _totals_json(state.mark),
        "suspect": None,
        "guard": None,
    }
    if state.suspect is not None:
        body["suspect"] = {
            **_totals_json(state.suspect.totals),
            "time": state.suspect.time.isoformat(),
            "deadline": state.suspect.deadline.isoformat(),
        }
    if state.guard is not None:
        body["guard"] = {
            **_totals_json(state.guard.mark),
            "until": state.guard.until.isoformat(),
        }
    return json.dumps(body, separators=(",", ":"))


def _state_from_json(text: str) -> CounterState:
    body = json.loads(text)
    suspect = body.get("suspect")
    guard = body.get("guard")
    return CounterState(
        mark=_totals(body.get("mark")),
        suspect=(
            None
            if suspect is None
            else Suspect(
                Totals(int(suspect["in"]), int(suspect["out"])),
                datetime.fromisoformat(suspect["time"]),
                datetime.fromisoformat(suspect["deadline"]),
            )
        ),
        guard=(
            None
            if guard is None
            else Guard(
                Totals(int(guard["in"]), int(guard["out"])), datetime.fromisoformat(guard["until"])
            )
        ),
    )
