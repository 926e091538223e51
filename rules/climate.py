"""What an air conditioner should do now: the climate rule of CONTRACT §5.

:func:`decide` is a pure function of what is known about one air conditioner's
room (occupancy, temperatures, the center's hours), what the rule was doing
(its hysteresis memory), when the compressor was last switched off, and any
staff override. It answers with the wanted state of the unit (or "leave it"),
the cause people read in the event log, and the next moment at which the
answer could change by time alone. The controller calls it on every relevant
event and at that moment; nothing here holds a timer, so a restart can neither
skip nor repeat a deadline.

Precedence, strongest first:

1. the compressor's rest: a unit that is off is never switched on less than
   ``min_off`` after it was switched off (by the rule, by staff, or by someone
   with the remote); until then the decision is ``min_off_wait``;
2. a staff override, until it expires;
3. an air conditioner the rule does not manage is left as it is;
4. a heat wave (outdoor >= ``heat_wave_outdoor``) during center hours: cool,
   even when the room is empty, so riders walk into a cool room;
5. an occupied room warmer than ``cool_above``: cool to ``cool_setpoint``,
   and keep cooling while it is occupied until the room is ``hysteresis``
   below ``cool_above``;
6. an occupied room with outdoor colder than ``cold_outdoor``: heat to
   ``heat_setpoint``, until outdoor is ``hysteresis`` above the threshold;
7. an occupied room that needs neither: off;
8. an empty room: after ``empty_off_after`` off; until then the rule keeps
   doing what it did.

What is unknown is never guessed: with unknown occupancy, or an occupied room
of unknown temperature, the unit is left as it is, except that a room last
known to be empty still goes off when its empty time is over, and a heat wave
(which asks neither) still cools. An unknown outdoor temperature is no heat
wave and no cold.

The rule *drives* the unit: a unit changed by its remote control is brought
back to what the rule wants (after ``min_off`` where it was switched off), as
a lock turned with a key is. Staff who want something else set an override.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from controller.readings import AcMode
from controller.site import ClimateRules, Hours
from rules.access import opening, within_hours


class Activity(enum.StrEnum):
    """What the rule is doing to the room: the memory its hysteresis needs."""

    OFF = "off"
    COOLING = "cooling"
    HEATING = "heating"


class ClimateCause(enum.StrEnum):
    """Why an air conditioner should be as decided; logged with every command."""

    OVERRIDE = "override"
    MIN_OFF_WAIT = "min_off_wait"
    NOT_MANAGED = "not_managed"
    HEAT_WAVE = "heat_wave"
    OCCUPIED_HOT = "occupied_hot"
    OCCUPIED_COLD = "occupied_cold"
    OCCUPIED_COMFORTABLE = "occupied_comfortable"
    EMPTY = "empty"
    EMPTY_RECENTLY = "empty_recently"
    UNKNOWN_OCCUPANCY = "unknown_occupancy"
    UNKNOWN_TEMPERATURE = "unknown_temperature"
    UNKNOWN_OUTDOOR = "unknown_outdoor"


_DESCRIPTIONS = {
    ClimateCause.OVERRIDE: "set by staff",
    ClimateCause.MIN_OFF_WAIT: "waiting for the compressor's minimum off time",
    ClimateCause.NOT_MANAGED: "not run by the climate rule",
    ClimateCause.HEAT_WAVE: "heat wave during center hours: pre-cooling",
    ClimateCause.OCCUPIED_HOT: "occupied and warm",
    ClimateCause.OCCUPIED_COLD: "occupied and cold outside",
    ClimateCause.OCCUPIED_COMFORTABLE: "occupied, neither warm nor cold",
    ClimateCause.EMPTY: "empty",
    ClimateCause.EMPTY_RECENTLY: "empty only recently: keeps what it was doing",
    ClimateCause.UNKNOWN_OCCUPANCY: "occupancy unknown: left as it is",
    ClimateCause.UNKNOWN_TEMPERATURE: "room temperature unknown: left as it is",
    ClimateCause.UNKNOWN_OUTDOOR: "outdoor temperature unknown: left as it is",
}


@dataclass(frozen=True, slots=True)
class AcSetting:
    """A wanted state of an air conditioner; ``None`` mode or setpoint: leave that point."""

    power: bool
    mode: AcMode | None = None
    setpoint: float | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "power": self.power,
            "mode": None if self.mode is None else self.mode.value,
            "setpoint": self.setpoint,
        }


OFF = AcSetting(power=False)


@dataclass(frozen=True, slots=True)
class ClimateOverride:
    """A staff member's setting for one air conditioner, from ``at`` until ``until``.

    ``mode`` and ``setpoint`` only with ``power`` on; None keeps the unit's own.
    """

    device: str
    setting: AcSetting
    at: datetime
    until: datetime
    reason: str = ""
    by: str = ""

    def active(self, now: datetime) -> bool:
        return self.at <= now < self.until


@dataclass(frozen=True, slots=True)
class ClimateFacts:
    """What the rule knows about one air conditioner at the moment of deciding.

    ``empty_since`` is when the room was last seen to become empty, kept while
    its occupancy is unknown (None while it is occupied). ``running`` is the
    unit's reported power (None: not known). ``switched_off_at`` is the last
    time the unit was seen or made to go from on to off.
    """

    managed: bool
    occupied: bool | None
    empty_since: datetime | None
    room_temperature: float | None
    outdoor_temperature: float | None
    running: bool | None
    activity: Activity
    switched_off_at: datetime | None
    override: ClimateOverride | None = None


@dataclass(frozen=True, slots=True)
class ClimateDecision:
    """The rule's answer.

    ``want`` is the state the rule asks for (None: leave the unit as it is);
    ``wait_until`` is set while the compressor must stay off until then, and
    :attr:`command` is then None. ``activity`` is the rule's memory from now
    on. ``next_change`` is the next moment the answer may change by time alone.
    """

    want: AcSetting | None
    cause: ClimateCause
    activity: Activity
    next_change: datetime | None = None
    wait_until: datetime | None = None

    @property
    def command(self) -> AcSetting | None:
        """What to make the unit do now (None: nothing)."""
        return None if self.wait_until is not None else self.want

    def describe(self) -> str:
        """A sentence for the event log."""
        text = _DESCRIPTIONS[self.cause]
        if self.wait_until is not None:
            text = f"{text} until {self.wait_until.isoformat()}"
        return text


def decide(
    facts: ClimateFacts,
    now: datetime,
    *,
    rules: ClimateRules,
    hours: Hours,
    zone: tzinfo,
) -> ClimateDecision:
    """The wanted state of one air conditioner at ``now``; see the module docstring."""
    moments: list[datetime] = []
    override = facts.override
    if override is not None and override.active(now):
        moments.append(override.until)
        decision = ClimateDecision(override.setting, ClimateCause.OVERRIDE, facts.activity)
    elif not facts.managed:
        decision = ClimateDecision(None, ClimateCause.NOT_MANAGED, facts.activity)
    else:
        decision = _rule(facts, now, rules, hours, zone, moments)
    decision = _rest_compressor(decision, facts, now, rules.min_off, moments)
    upcoming = [moment for moment in moments if moment > now]
    return ClimateDecision(
        decision.want,
        decision.cause,
        decision.activity,
        min(upcoming) if upcoming else None,
        decision.wait_until,
    )


def may_start_at(facts: ClimateFacts, min_off: timedelta) -> datetime | None:
    """The earliest moment the compressor may be switched on again (None: any time)."""
    if facts.switched_off_at is None or facts.running is True:
        return None
    return facts.switched_off_at + min_off


def _rule(
    facts: ClimateFacts,
    now: datetime,
    rules: ClimateRules,
    hours: Hours,
    zone: tzinfo,
    moments: list[datetime],
) -> ClimateDecision:
    activity = facts.activity
    band = rules.hysteresis
    outdoor = facts.outdoor_temperature
    heat_wave_weather = outdoor is not None and (
        outdoor >= rules.heat_wave_outdoor
        or (activity is Activity.COOLING and outdoor >= rules.heat_wave_outdoor - band)
    )
    if heat_wave_weather:
        # The heat wave starts and ends with the center's hours.
        moments.append(_next_hours_boundary(now, hours, zone))
        if within_hours(now, hours, zone):
            return _doing(Activity.COOLING, ClimateCause.HEAT_WAVE, rules)

    empty_off_at = None if facts.empty_since is None else facts.empty_since + rules.empty_off_after
    if facts.occupied is not True and empty_off_at is not None:
        moments.append(empty_off_at)
        if now >= empty_off_at:
            return _doing(Activity.OFF, ClimateCause.EMPTY, rules)
    if facts.occupied is None:
        return ClimateDecision(None, ClimateCause.UNKNOWN_OCCUPANCY, activity)
    if facts.occupied is False:
        return _doing(activity, ClimateCause.EMPTY_RECENTLY, rules)

    temperature = facts.room_temperature
    if temperature is None:
        return ClimateDecision(None, ClimateCause.UNKNOWN_TEMPERATURE, activity)
    if temperature > rules.cool_above or (
        activity is Activity.COOLING and temperature >= rules.cool_above - band
    ):
        return _doing(Activity.COOLING, ClimateCause.OCCUPIED_HOT, rules)
    if outdoor is None:
        if activity is Activity.HEATING:
            return ClimateDecision(None, ClimateCause.UNKNOWN_OUTDOOR, activity)
        return _doing(Activity.OFF, ClimateCause.OCCUPIED_COMFORTABLE, rules)
    if outdoor < rules.cold_outdoor or (
        activity is Activity.HEATING and outdoor < rules.cold_outdoor + band
    ):
        return _doing(Activity.HEATING, ClimateCause.OCCUPIED_COLD, rules)
    return _doing(Activity.OFF, ClimateCause.OCCUPIED_COMFORTABLE, rules)


def _doing(activity: Activity, cause: ClimateCause, rules: ClimateRules) -> ClimateDecision:
    return ClimateDecision(setting_for(activity, rules), cause, activity)


def setting_for(activity: Activity, rules: ClimateRules) -> AcSetting:
    """The unit's state that carries out ``activity``."""
    if activity is Activity.COOLING:
        return AcSetting(True, AcMode.COOL, rules.cool_setpoint)
    if activity is Activity.HEATING:
        return AcSetting(True, AcMode.HEAT, rules.heat_setpoint)
    return OFF


def _rest_compressor(
    decision: ClimateDecision,
    facts: ClimateFacts,
    now: datetime,
    min_off: timedelta,
    moments: list[datetime],
) -> ClimateDecision:
    """Hold a start back until ``min_off`` after the last switch-off."""
    if decision.want is None or not decision.want.power:
        return decision
    may_start = may_start_at(facts, min_off)
    if may_start is None or may_start <= now:
        return decision
    moments.append(may_start)
    return ClimateDecision(
        decision.want, ClimateCause.MIN_OFF_WAIT, decision.activity, wait_until=may_start
    )


def _next_hours_boundary(now: datetime, hours: Hours, zone: tzinfo) -> datetime:
    opens, closes = opening(now, hours, zone)
    if now < opens:
        return opens
    if now < closes:
        return closes
    tomorrow, _ = opening(now + timedelta(days=1), hours, zone)
    return tomorrow
