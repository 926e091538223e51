"""Named days at the center, played on any clock at any speed.

A :class:`Scenario` is data: the weather, streams of visitors (:class:`Flow`,
Poisson arrivals whose rate follows the time of day), scheduled gatherings
(:class:`Session`: a class of 30 in the practice hall from 09:30 to 11:00) and
optionally a :class:`FireDrill`. :class:`ScenarioRunner` turns one into a
story by admitting people into a :class:`~simulators.people.Building` and
advancing it with the clock; the devices then report that story.

Room ids in the definitions are the example site's; on another site, flows
and sessions naming rooms it does not have are left out, so every scenario
still runs (emptier).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from types import MappingProxyType

from controller.clock import Clock
from controller.site import Site
from simulators.people import Building, Visit
from simulators.thermal import DailyWeather

_log = logging.getLogger("simulators.scenarios")

AUTO = "auto"
AUTO_DESCRIPTION = "busy-saturday on Saturdays and Sundays, quiet-weekday on other days"

# Arrivals are drawn this far ahead, one slice at a time.
_SLICE = timedelta(seconds=60)
# Attendees of a session arrive from this long before its start.
_EARLY = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class Rate:
    """``per_hour`` arrivals between two times of day (minutes after midnight, end exclusive)."""

    start: int
    end: int
    per_hour: float


def rate(start: str, end: str, per_hour: float) -> Rate:
    """``rate("08:30", "11:30", 24)``; ``"24:00"`` ends a window at midnight."""
    return Rate(_minutes(start), _minutes(end), per_hour)


def _minutes(text: str) -> int:
    hours, _, minutes = text.partition(":")
    value = int(hours) * 60 + int(minutes)
    if not 0 <= value <= 24 * 60:
        raise ValueError(f"not a time of day: {text!r}")
    return value


@dataclass(frozen=True, slots=True)
class Flow:
    """A stream of visitors who go to one of ``rooms`` and maybe on to one of ``then``."""

    name: str
    rooms: tuple[str, ...]
    rates: tuple[Rate, ...]
    stay: tuple[float, float]  # minutes, uniform
    group: tuple[int, int] = (1, 1)  # people arriving together, uniform
    then: tuple[str, ...] = ()
    then_chance: float = 0.0
    then_stay: tuple[float, float] = (5.0, 20.0)

    def per_hour(self, minute_of_day: float) -> float:
        for window in self.rates:
            if window.start <= minute_of_day < window.end:
                return window.per_hour
        return 0.0


@dataclass(frozen=True, slots=True)
class Session:
    """A gathering in one room every day of the scenario: a class, a meeting, a fair."""

    name: str
    room: str
    start: time
    minutes: float
    attendees: int


@dataclass(frozen=True, slots=True)
class FireDrill:
    """The panel goes into alarm at ``at`` every day; everybody leaves, then most come back."""

    at: time = time(10, 0)
    evacuate_within: float = 300.0  # s
    clear_after: float = 1200.0  # s after the alarm
    come_back: float = 0.7  # share of the evacuated who return
    return_over: float = 900.0  # s after the all-clear


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    weather: DailyWeather
    flows: tuple[Flow, ...]
    sessions: tuple[Session, ...] = ()
    drill: FireDrill | None = None


# -- the scenarios --------------------------------------------------------------


def _always_open_rooms(
    self_service: tuple[float, float], love_room: tuple[float, float]
) -> tuple[Flow, ...]:
    """The 24-hour rooms, with (day, night) arrival rates: someone drops by even at 3 am."""

    def day_and_night(day: float, night: float) -> tuple[Rate, ...]:
        return (
            rate("00:00", "08:30", night),
            rate("08:30", "21:00", day),
            rate("21:00", "24:00", night),
        )

    return (
        Flow("self-service", ("self-service",), day_and_night(*self_service), stay=(3, 10)),
        Flow("love-room", ("love-room",), day_and_night(*love_room), stay=(10, 40)),
    )


_BROWSE = ("coffee", "corridor", "library")


def _weekday_flows(affairs_peak: float) -> tuple[Flow, ...]:
    return (
        Flow(
            "affairs",
            ("affairs-hall",),
            (
                rate("08:30", "11:30", affairs_peak),
                rate("11:30", "13:30", affairs_peak / 3),
                rate("13:30", "17:00", affairs_peak * 0.75),
                rate("17:00", "20:00", affairs_peak / 6),
            ),
            stay=(8, 30),
            then=("coffee", "corridor"),
            then_chance=0.15,
        ),
        Flow("library", ("library",), (rate("09:00", "20:30", 6),), stay=(30, 120)),
        Flow(
            "coffee",
            ("coffee",),
            (rate("09:00", "20:00", 4),),
            stay=(15, 45),
            then=("library", "corridor"),
            then_chance=0.3,
        ),
        Flow(
            "corridor",
            ("corridor",),
            (rate("08:30", "20:30", 4),),
            stay=(5, 20),
            then=("library", "coffee"),
            then_chance=0.3,
        ),
        Flow(
            "gym", ("gym",), (rate("08:30", "11:00", 5), rate("17:30", "20:30", 8)), stay=(40, 90)
        ),
    )


_WEEKDAY_SESSIONS = (
    Session("tai-chi", "practice-hall", time(9, 30), 90, 16),
    Session("residents-meeting", "hui-xin-room", time(14, 0), 90, 10),
)

QUIET_WEEKDAY = Scenario(
    "quiet-weekday",
    "an ordinary weekday: a steady trickle at the affairs windows, readers, a tai-chi "
    "class at 09:30 and a meeting at 14:00",
    DailyWeather(16.0, 24.0),
    (*_weekday_flows(24.0), *_always_open_rooms((5.0, 0.6), (3.0, 0.5))),
    _WEEKDAY_SESSIONS,
)

BUSY_SATURDAY = Scenario(
    "busy-saturday",
    "a full Saturday: a queue at the 11 affairs windows, a fair and a family afternoon "
    "in the convergence hall, a 30-person class in the practice hall 09:30-11:00",
    DailyWeather(18.0, 27.0),
    (
        Flow(
            "affairs-queue",
            ("affairs-hall",),
            (
                rate("08:30", "12:00", 80),
                rate("12:00", "13:30", 40),
                rate("13:30", "17:00", 60),
                rate("17:00", "20:00", 15),
            ),
            stay=(15, 50),  # waiting in line, then served at one of 11 windows
            then=_BROWSE,
            then_chance=0.2,
        ),
        Flow("library", ("library",), (rate("09:00", "20:30", 12),), stay=(30, 150)),
        Flow(
            "coffee",
            ("coffee",),
            (rate("09:00", "20:00", 10),),
            stay=(15, 45),
            group=(1, 3),
            then=("library", "corridor"),
            then_chance=0.3,
        ),
        Flow(
            "corridor",
            ("corridor",),
            (rate("08:30", "20:30", 10),),
            stay=(5, 20),
            group=(1, 3),
            then=("library", "coffee"),
            then_chance=0.3,
        ),
        Flow(
            "gym", ("gym",), (rate("08:30", "12:00", 10), rate("14:00", "20:30", 12)), stay=(40, 90)
        ),
        *_always_open_rooms((10.0, 1.0), (5.0, 0.6)),
    ),
    (
        Session("calligraphy-class", "practice-hall", time(9, 30), 90, 30),
        Session("community-fair", "convergence-hall", time(9, 30), 120, 60),
        Session("counselling-workshop", "hui-xin-room", time(10, 0), 120, 12),
        Session("family-afternoon", "convergence-hall", time(14, 0), 150, 50),
        Session("dance-class", "practice-hall", time(15, 0), 90, 25),
    ),
)

HEAT_WAVE = Scenario(
    "heat-wave",
    "38 °C in the afternoon: delivery riders and sanitation workers rest in the love "
    "room all afternoon, up to ten at a time, for short stays",
    DailyWeather(29.0, 38.0, humidity_low=45.0, humidity_high=80.0),
    (
        *_weekday_flows(20.0),
        *_always_open_rooms((5.0, 0.6), (2.0, 0.5)),
        Flow(
            "riders",
            ("love-room",),
            (
                rate("06:00", "11:30", 5),
                rate("11:30", "18:30", 10),
                rate("18:30", "22:00", 5),
            ),
            stay=(5, 20),
            group=(1, 2),
        ),
    ),
    _WEEKDAY_SESSIONS,
)

FIRE_DRILL = Scenario(
    "fire-drill",
    "a normal morning; at 10:00 the fire panel alarms, everybody leaves through the "
    "entrance within 5 minutes, the all-clear comes at 10:20 and most come back",
    DailyWeather(15.0, 22.0),
    (*_weekday_flows(24.0), *_always_open_rooms((5.0, 0.6), (3.0, 0.5))),
    _WEEKDAY_SESSIONS,
    FireDrill(),
)

SCENARIOS: Mapping[str, Scenario] = MappingProxyType(
    {s.name: s for s in (QUIET_WEEKDAY, BUSY_SATURDAY, HEAT_WAVE, FIRE_DRILL)}
)


def scenario_choices() -> dict[str, str]:
    """Every name ``--scenario`` accepts, with its one-line description."""
    return {AUTO: AUTO_DESCRIPTION, **{name: s.description for name, s in SCENARIOS.items()}}


def choose_scenario(name: str, today: date) -> Scenario:
    """The scenario called ``name``; ``auto`` picks by ``today``'s day of the week."""
    if name == AUTO:
        return SCENARIOS["busy-saturday" if today.weekday() >= 5 else "quiet-weekday"]
    try:
        return SCENARIOS[name]
    except KeyError:
        known = ", ".join(scenario_choices())
        raise ValueError(f"unknown scenario {name!r}; choose one of {known}") from None


# -- playing one ----------------------------------------------------------------


class ScenarioRunner:
    """Plays a scenario into a :class:`Building` on ``clock``, from the clock's current time.

    The building starts empty (so the entrance counter's baseline means
    "nobody inside"). :meth:`step` is the whole simulation step and is
    public so that a test can drive days of story without any clock;
    :meth:`run` calls it whenever something is due.
    """

    def __init__(
        self,
        site: Site,
        scenario: Scenario | str,
        clock: Clock,
        seed: int = 0,
        *,
        max_step: float = 10.0,
        warmup: float = 0.0,
    ) -> None:
        # ``warmup`` seconds of the story are played at once before the clock's
        # now, so the building is already as busy as that time of day makes it
        # (a demo starting at 10:00 does not begin with an empty center).
        start = clock.now() - timedelta(seconds=warmup)
        zone = site.site.zone
        if isinstance(scenario, str):
            scenario = choose_scenario(scenario, start.astimezone(zone).date())
        self.scenario = scenario
        self.building = Building(site, start=start, weather=scenario.weather, seed=seed)
        self._clock = clock
        self._zone = zone
        self._rng = random.Random(f"{seed}/{scenario.name}/arrivals")
        self._max_step = timedelta(seconds=max_step)
        rooms = site.room_by_id
        self._flows = tuple(
            _only_rooms(flow, rooms)
            for flow in scenario.flows
            if any(r in rooms for r in flow.rooms)
        )
        self._sessions = tuple(s for s in scenario.sessions if s.room in rooms)
        skipped = len(scenario.flows) - len(self._flows) + len(scenario.sessions)
        skipped -= len(self._sessions)
        if skipped:
            _log.info("%s: %d flows or sessions name rooms this site lacks", scenario.name, skipped)
        self._planned_until = start
        self._sessions_planned: set[tuple[str, date]] = set()
        self._next_alarm = self._first_drill(start)
        self._clear_at: datetime | None = None
        self._returning: list[tuple[Visit, ...]] = []
        if warmup > 0:
            self.step(clock.now())

    @property
    def fire_alarm(self) -> bool:
        """Whether the scenario has the fire panel in alarm now."""
        return self.building.fire_alarm

    async def run(self) -> None:
        """Advance the story with the clock until cancelled."""
        _log.info("playing %s from %s", self.scenario.name, self._clock.now().isoformat())
        while True:
            now = self._clock.now()
            wake = self.step(now)
            await self._clock.sleep(max((wake - now).total_seconds(), 0.001))

    def step(self, now: datetime) -> datetime:
        """Bring the story up to ``now``; return when something is next due."""
        while (point := self._next_point()) is not None and point <= now:
            self._plan(point)
            self.building.advance(point)
            self._transition(point)
        self._plan(now + _SLICE)
        self.building.advance(now)
        candidates = [now + self._max_step, self._planned_until]
        due = self.building.next_due()
        if due is not None:
            candidates.append(due)
        point = self._next_point()
        if point is not None:
            candidates.append(point)
        return max(min(candidates), now)

    # -- timeline (the fire drill) ------------------------------------------

    def _first_drill(self, start: datetime) -> datetime | None:
        drill = self.scenario.drill
        if drill is None:
            return None
        local = start.astimezone(self._zone)
        alarm = datetime.combine(local.date(), drill.at, tzinfo=self._zone)
        return alarm if alarm >= start else alarm + timedelta(days=1)

    def _next_point(self) -> datetime | None:
        if self._clear_at is not None:
            return self._clear_at
        return self._next_alarm

    def _transition(self, at: datetime) -> None:
        drill = self.scenario.drill
        assert drill is not None
        building = self.building
        if self._clear_at is None:
            _log.info("fire drill: the panel alarms at %s; evacuating", at.isoformat())
            building.set_accepting(False)
            building.set_fire_alarm(True)
            self._returning = building.evacuate(drill.evacuate_within)
            self._clear_at = at + timedelta(seconds=drill.clear_after)
            self._next_alarm = at + timedelta(days=1)
            return
        _log.info("fire drill: all clear at %s", at.isoformat())
        building.set_fire_alarm(False)
        building.set_accepting(True)
        for plan in self._returning:
            if self._rng.random() < drill.come_back:
                building.admit(
                    plan, at + timedelta(seconds=self._rng.uniform(60, drill.return_over))
                )
        self._returning = []
        self._clear_at = None

    # -- arrivals -----------------------------------------------------------

    def _plan(self, until: datetime) -> None:
        """Draw the arrivals of every whole slice that starts before ``until``."""
        while self._planned_until < until:
            start = self._planned_until
            self._plan_slice(start)
            self._plan_sessions(start)
            self._planned_until = start + _SLICE

    def _plan_slice(self, start: datetime) -> None:
        local = start.astimezone(self._zone)
        minute = local.hour * 60 + local.minute + local.second / 60
        hours = _SLICE.total_seconds() / 3600
        for flow in self._flows:
            for _ in range(_poisson(self._rng, flow.per_hour(minute) * hours)):
                at = start + timedelta(seconds=self._rng.uniform(0, _SLICE.total_seconds()))
                room = self._rng.choice(flow.rooms)
                if not self.building.is_open(room, at):
                    continue
                for member in range(self._rng.randint(*flow.group)):
                    self.building.admit(self._plan_for(flow, room), at + timedelta(seconds=member))

    def _plan_for(self, flow: Flow, room: str) -> list[Visit]:
        plan = [Visit(room, stay=self._rng.uniform(*flow.stay) * 60)]
        onward = [r for r in flow.then if r != room]
        if onward and self._rng.random() < flow.then_chance:
            next_room = self._rng.choice(onward)
            plan.append(Visit(next_room, stay=self._rng.uniform(*flow.then_stay) * 60))
        return plan

    def _plan_sessions(self, start: datetime) -> None:
        """Bring a session's attendees in, starting a quarter of an hour before it begins."""
        day = start.astimezone(self._zone).date()
        for session in self._sessions:
            key = (session.name, day)
            begins = datetime.combine(day, session.start, tzinfo=self._zone)
            ends = begins + timedelta(minutes=session.minutes)
            if key in self._sessions_planned or start + _SLICE < begins - _EARLY:
                continue
            self._sessions_planned.add(key)
            if start >= begins + (ends - begins) / 2:
                continue  # started too long before the simulation did
            first = max(begins - _EARLY, start)
            last = max(first + timedelta(minutes=1), begins + timedelta(minutes=5))
            window = (last - first).total_seconds()
            for _ in range(session.attendees):
                at = first + timedelta(seconds=self._rng.uniform(0, window))
                until = ends + timedelta(seconds=self._rng.uniform(0, 300))
                plan = [Visit(session.room, until=until)]
                if self._rng.random() < 0.25:
                    plan.append(
                        Visit(self._rng.choice(_BROWSE), stay=self._rng.uniform(5, 20) * 60)
                    )
                self.building.admit([v for v in plan if v.room in self.building.rooms], at)


def _only_rooms(flow: Flow, rooms: Mapping[str, object]) -> Flow:
    return Flow(
        flow.name,
        tuple(r for r in flow.rooms if r in rooms),
        flow.rates,
        flow.stay,
        flow.group,
        tuple(r for r in flow.then if r in rooms),
        flow.then_chance,
        flow.then_stay,
    )


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's method: the means here are a few at most)."""
    if mean <= 0:
        return 0
    limit = math.exp(-mean)
    count = 0
    product = rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count
