"""The simulated building: people walking through rooms, and the air they warm.

:class:`Building` is the one story every simulated device reads (it
implements :class:`simulators.world.World`). A person appears in the entrance
(the entrance counter's ``in`` goes up), walks from room to room along a plan,
and leaves through the entrance again (``out`` goes up). There is no transit:
at every instant a person is in exactly one room, the entrance counting as a
room while they pass it. So, always::

    entries - exits == sum of every room's occupants

which is what lets a test check the entrance counter against the occupancy
sensors. Rooms other than the 24-hour ones only take people during the site's
hours, and nobody enters a room that is full.

The building does not decide who comes (the scenario does, through
:meth:`Building.admit`); it only moves people along their plans, in time
order, when :meth:`Building.advance` is called with the simulated time.
Devices learn about every move at once through :meth:`Building.subscribe`
callbacks, so an occupancy sensor can report a change without polling.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from controller.site import DeviceKind, Room, Site
from simulators.thermal import Air, DailyWeather, step_air
from simulators.world import Hvac

_log = logging.getLogger("simulators.people")

# Shorter than this is not worth walking into a room for (so a visit that the
# closing time would cut to a minute is skipped).
MIN_VISIT = 120.0  # s
# People in rooms that close start leaving up to this long before closing time.
CLOSING_SPREAD = 600.0  # s
# Thermal steps are taken at least this often while people move, so that the
# heat people give off is credited to the room they were in.
_AIR_STEP = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Visit:
    """One stop on a person's way: a room, and how long they stay there.

    ``until`` (a class that ends at 11:00) overrides ``stay`` (seconds after
    entering). Either way the stay is cut short by the room's closing time.
    """

    room: str
    stay: float = 0.0
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Movement:
    """A person went from ``source`` to ``target``; None is the street."""

    person: int
    source: str | None
    target: str | None
    at: datetime

    def through_door_of(self, room: str, entrance: str) -> bool:
        """Whether this move opened ``room``'s door.

        The entrance's door is the building's street door, so only arriving
        and leaving pass it; any other room's door is passed on the way in
        and on the way out.
        """
        if room == entrance:
            return self.source is None or self.target is None
        return room in (self.source, self.target)


@dataclass(frozen=True, slots=True)
class AlarmChanged:
    """The fire-alarm panel went into alarm (True) or back to normal (False)."""

    alarm: bool
    at: datetime


Change = Movement | AlarmChanged
Listener = Callable[[Change], None]


@dataclass(frozen=True, slots=True)
class Census:
    """Who is where at one instant, and the entrance totals since the building opened."""

    at: datetime
    entries: int
    exits: int
    rooms: Mapping[str, int]

    @property
    def inside(self) -> int:
        return self.entries - self.exits


class _Step(enum.Enum):
    ARRIVE = "arrive"
    MOVE = "move"  # on to the next stop of the plan, or back to the entrance
    EXIT = "exit"  # out through the street door


@dataclass(order=True, slots=True)
class _Event:
    at: datetime
    seq: int
    step: _Step = field(compare=False)
    person: int = field(compare=False, default=0)
    version: int = field(compare=False, default=0)
    plan: tuple[Visit, ...] = field(compare=False, default=())


@dataclass(slots=True)
class _Person:
    id: int
    room: str
    plan: deque[Visit]
    # Bumped whenever the person's schedule is rewritten (an evacuation), so
    # that events scheduled under the old plan are recognised and ignored.
    version: int = 0
    current: Visit | None = None
    leave_at: datetime | None = None


def entrance_of(site: Site) -> str:
    """The room people enter and leave through: where the people counter is.

    Falls back to a room called ``entrance``, then to the first room.
    """
    for device in site.devices:
        if device.kind is DeviceKind.PEOPLE_COUNTER and device.room is not None:
            return device.room
    rooms = site.room_by_id
    return "entrance" if "entrance" in rooms else site.rooms[0].id


class Building:
    """Rooms, people, air and the fire-alarm state of one simulated site."""

    def __init__(
        self,
        site: Site,
        *,
        start: datetime,
        weather: DailyWeather,
        seed: int = 0,
        passage: tuple[float, float] = (5.0, 20.0),
    ) -> None:
        if start.tzinfo is None:
            raise ValueError("the building's start time must be timezone-aware")
        self._site = site
        self._rooms: dict[str, Room] = dict(site.room_by_id)
        self._zone: ZoneInfo = site.site.zone
        self._entrance = entrance_of(site)
        self._weather = weather
        self._rng = random.Random(seed)
        self._passage = passage
        self._now = start
        self._air_time = start
        self._occupants: dict[str, int] = dict.fromkeys(self._rooms, 0)
        self._people: dict[int, _Person] = {}
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._queue: list[_Event] = []
        self._entries = 0
        self._exits = 0
        # People through each room's door, inward and outward (the entrance's
        # are the street door's: entries and exits).
        self._into: dict[str, int] = dict.fromkeys(self._rooms, 0)
        self._out_of: dict[str, int] = dict.fromkeys(self._rooms, 0)
        self._turned_away = 0
        self._accepting = True
        self._fire_alarm = False
        self._listeners: list[Listener] = []
        self._hvac: dict[str, dict[str, Hvac]] = {room: {} for room in self._rooms}
        self._outdoor = self._outdoor_air(start)
        # Indoors starts at the day's average: the building has been sitting
        # in this weather for a while before the simulation begins.
        mean = Air(
            (weather.low + weather.high) / 2, (weather.humidity_low + weather.humidity_high) / 2
        )
        self._air: dict[str, Air] = dict.fromkeys(self._rooms, mean)

    # -- World --------------------------------------------------------------

    def outdoor_temperature(self) -> float:
        return self._outdoor.temperature

    def occupants(self, room_id: str) -> int:
        return self._occupants[self._known(room_id)]

    def room_temperature(self, room_id: str) -> float:
        return self._air[self._known(room_id)].temperature

    def set_hvac(self, room_id: str, source_id: str, hvac: Hvac | None) -> None:
        units = self._hvac[self._known(room_id)]
        if hvac is None:
            units.pop(source_id, None)
        else:
            units[source_id] = hvac

    # -- more to observe ----------------------------------------------------

    @property
    def now(self) -> datetime:
        """The simulated time the building has been advanced to."""
        return self._now

    @property
    def zone(self) -> ZoneInfo:
        return self._zone

    @property
    def entrance(self) -> str:
        return self._entrance

    @property
    def rooms(self) -> Mapping[str, Room]:
        return self._rooms

    @property
    def entries(self) -> int:
        """People who came in through the entrance since the building started."""
        return self._entries

    @property
    def exits(self) -> int:
        """People who went out through the entrance since the building started."""
        return self._exits

    @property
    def inside(self) -> int:
        return self._entries - self._exits

    @property
    def turned_away(self) -> int:
        """Arrivals dropped because the doors were closed to newcomers (a fire alarm)."""
        return self._turned_away

    @property
    def fire_alarm(self) -> bool:
        return self._fire_alarm

    @property
    def weather(self) -> DailyWeather:
        return self._weather

    def outdoor_humidity(self) -> float:
        return self._outdoor.humidity

    def room_humidity(self, room_id: str) -> float:
        return self._air[self._known(room_id)].humidity

    def door_totals(self, room_id: str) -> tuple[int, int]:
        """(in, out) through ``room_id``'s door since the start, as a counter there counts."""
        if self._known(room_id) == self._entrance:
            return self._entries, self._exits
        return self._into[room_id], self._out_of[room_id]

    def census(self) -> Census:
        return Census(self._now, self._entries, self._exits, dict(self._occupants))

    def is_open(self, room_id: str, at: datetime) -> bool:
        """Whether ``room_id`` takes people at ``at``: 24-hour rooms always, others in hours."""
        room = self._rooms[self._known(room_id)]
        if room.always_open:
            return True
        local = at.astimezone(self._zone)
        hours = self._site.site.hours
        return hours.open <= local.time() < hours.close

    def closing_time(self, at: datetime) -> datetime:
        """When the center closes on ``at``'s local day."""
        local = at.astimezone(self._zone)
        return datetime.combine(local.date(), self._site.site.hours.close, tzinfo=self._zone)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every :class:`Change`, synchronously; returns an unsubscribe.

        Listeners run inside :meth:`advance`, so they must only take note
        (set an event, bump a counter) and never block.
        """
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    # -- driving the story --------------------------------------------------

    def admit(self, plan: Iterable[Visit], at: datetime) -> None:
        """Schedule a person to come in through the entrance at ``at`` and follow ``plan``."""
        visits = tuple(plan)
        unknown = [visit.room for visit in visits if visit.room not in self._rooms]
        if unknown:
            raise ValueError(f"no room {unknown[0]!r} in site {self._site.site.id!r}")
        self._push(max(at, self._now), _Step.ARRIVE, plan=visits)

    def set_accepting(self, accepting: bool) -> None:
        """Open or close the doors to newcomers; arrivals while closed are turned away."""
        self._accepting = accepting

    def set_fire_alarm(self, alarm: bool) -> None:
        if alarm != self._fire_alarm:
            self._fire_alarm = alarm
            self._notify(AlarmChanged(alarm, self._now))

    def evacuate(self, within: float) -> list[tuple[Visit, ...]]:
        """Send everybody out through the entrance within ``within`` seconds from now.

        Returns what each person still meant to do (their current stop with
        the time left, then the rest of their plan), so that a scenario can
        bring some of them back after the all-clear.
        """
        _log.info("evacuating %d people within %.0f s", len(self._people), within)
        unfinished: list[tuple[Visit, ...]] = []
        latest = max(within - 2 * self._passage[1], 1.0)
        for person in self._people.values():
            rest = list(person.plan)
            current = person.current
            if current is not None and person.leave_at is not None:
                if current.until is not None:  # a class still ends when it ends
                    rest.insert(0, current)
                else:
                    left = (person.leave_at - self._now).total_seconds()
                    rest.insert(0, Visit(current.room, stay=max(left, MIN_VISIT)))
            if rest:
                unfinished.append(tuple(rest))
            person.plan.clear()
            person.current = None
            person.leave_at = None
            person.version += 1
            if person.room == self._entrance:
                delay = self._uniform(*self._passage)
                self._push(self._after(delay), _Step.EXIT, person.id, person.version)
            else:
                delay = self._uniform(min(15.0, latest), latest)
                self._push(self._after(delay), _Step.MOVE, person.id, person.version)
        return unfinished

    def next_due(self) -> datetime | None:
        """When the next scheduled move happens, if any."""
        return self._queue[0].at if self._queue else None

    def advance(self, now: datetime) -> None:
        """Play every move due up to ``now``, in order, and bring the air up to ``now``."""
        if now < self._now:
            raise ValueError(f"time does not go backwards ({now} < {self._now})")
        while self._queue and self._queue[0].at <= now:
            event = heapq.heappop(self._queue)
            if event.at - self._air_time > _AIR_STEP:
                self._step_air(event.at)
            self._now = max(self._now, event.at)
            self._handle(event)
        self._now = now
        self._step_air(now)

    # -- internals ----------------------------------------------------------

    def _known(self, room_id: str) -> str:
        if room_id not in self._rooms:
            raise ValueError(f"no room {room_id!r} in site {self._site.site.id!r}")
        return room_id

    def _after(self, seconds: float) -> datetime:
        return self._now + timedelta(seconds=seconds)

    def _uniform(self, low: float, high: float) -> float:
        return self._rng.uniform(low, high)

    def _push(
        self,
        at: datetime,
        step: _Step,
        person: int = 0,
        version: int = 0,
        plan: tuple[Visit, ...] = (),
    ) -> None:
        heapq.heappush(self._queue, _Event(at, next(self._seq), step, person, version, plan))

    def _notify(self, change: Change) -> None:
        for listener in tuple(self._listeners):
            listener(change)

    def _handle(self, event: _Event) -> None:
        if event.step is _Step.ARRIVE:
            self._arrive(event.plan)
            return
        person = self._people.get(event.person)
        if person is None or person.version != event.version:
            return  # rescheduled since (an evacuation)
        if event.step is _Step.MOVE:
            self._move_on(person)
        else:
            self._leave(person)

    def _arrive(self, plan: tuple[Visit, ...]) -> None:
        if not self._accepting:
            self._turned_away += 1
            return
        person = _Person(next(self._ids), self._entrance, deque(plan))
        self._people[person.id] = person
        self._entries += 1
        self._occupants[self._entrance] += 1
        self._notify(Movement(person.id, None, self._entrance, self._now))
        self._push(self._after(self._uniform(*self._passage)), _Step.MOVE, person.id)

    def _move_on(self, person: _Person) -> None:
        """Go to the next stop that can take the person now, else head for the exit."""
        while person.plan:
            visit = person.plan.popleft()
            leave_at = self._leave_time(visit)
            if leave_at is not None:
                self._walk(person, visit.room)
                person.current = visit
                person.leave_at = leave_at
                self._push(leave_at, _Step.MOVE, person.id, person.version)
                return
        person.current = None
        person.leave_at = None
        if person.room != self._entrance:
            self._walk(person, self._entrance)
        self._push(
            self._after(self._uniform(*self._passage)), _Step.EXIT, person.id, person.version
        )

    def _leave_time(self, visit: Visit) -> datetime | None:
        """When a person entering ``visit.room`` now would leave it; None if they cannot go in."""
        room = self._rooms[visit.room]
        if not self.is_open(room.id, self._now):
            return None
        if room.capacity is not None and self._occupants[room.id] >= room.capacity:
            return None
        leave_at = visit.until if visit.until is not None else self._after(visit.stay)
        if not room.always_open:
            spread = self._uniform(0.0, CLOSING_SPREAD)
            leave_at = min(leave_at, self.closing_time(self._now) - timedelta(seconds=spread))
        if (leave_at - self._now).total_seconds() < min(MIN_VISIT, visit.stay or MIN_VISIT):
            return None
        return leave_at

    def _walk(self, person: _Person, target: str) -> None:
        source = person.room
        self._occupants[source] -= 1
        self._occupants[target] += 1
        self._out_of[source] += 1
        self._into[target] += 1
        person.room = target
        self._notify(Movement(person.id, source, target, self._now))

    def _leave(self, person: _Person) -> None:
        self._occupants[person.room] -= 1
        self._exits += 1
        del self._people[person.id]
        self._notify(Movement(person.id, person.room, None, self._now))

    def _outdoor_air(self, at: datetime) -> Air:
        local = at.astimezone(self._zone)
        hour = local.hour + local.minute / 60 + local.second / 3600
        return self._weather.air(hour)

    def _step_air(self, until: datetime) -> None:
        seconds = (until - self._air_time).total_seconds()
        if seconds <= 0:
            return
        self._outdoor = self._outdoor_air(until)
        for room_id, room in self._rooms.items():
            self._air[room_id] = step_air(
                self._air[room_id],
                seconds,
                outdoor=self._outdoor,
                occupants=self._occupants[room_id],
                capacity=room.capacity,
                hvacs=self._hvac[room_id].values(),
            )
        self._air_time = until
