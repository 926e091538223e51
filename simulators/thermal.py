"""The air in a simulated room, and the weather outside: pure, deterministic arithmetic.

The model is deliberately small. It only has to make the controller's climate
rules meet believable numbers: a closed room drifts toward the outdoor
temperature over a few hours, people warm it, and an air conditioner pulls it
to its setpoint at the pace of a real split unit (about a degree every five
minutes, slowing down near the setpoint and never overshooting it). Nothing
here reads a clock or draws a random number; the caller says how much
simulated time has passed, so the same inputs always give the same room.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from simulators.world import Hvac

# Room sizes are known only as capacities; a room that gives none (an entrance
# hall) is treated as this many people's worth of air.
DEFAULT_CAPACITY = 20


@dataclass(frozen=True, slots=True)
class Air:
    """Temperature (°C) and relative humidity (%RH) of a volume of air."""

    temperature: float
    humidity: float


@dataclass(frozen=True, slots=True)
class ThermalParams:
    """The model's constants; the defaults describe a concrete building in a Shanghai street."""

    # Time constant of the envelope: a closed, empty room covers 63 % of the
    # gap to the outdoor temperature in this many seconds.
    envelope_tau: float = 3 * 3600.0
    # People open doors and the fresh-air system runs harder: a full room
    # also exchanges its air with outdoors with this time constant, which is
    # what keeps a crowded room a few degrees, not tens, above outdoors.
    ventilation_tau: float = 1800.0
    # One person warms a room of ``reference_capacity`` by 0.1 °C in 10 minutes
    # (and adds some moisture); bigger rooms warm proportionally slower.
    person_heat: float = 0.1 / 600.0  # °C/s
    person_moisture: float = 0.4 / 600.0  # %RH/s
    reference_capacity: int = 15
    # An air conditioner far from its setpoint moves the room 1 °C in 5 minutes;
    # within ``hvac_band`` of the setpoint it slows down in proportion, but not
    # below ``hvac_min_fraction`` of full speed, so that it does reach it.
    hvac_rate: float = 1.0 / 300.0  # °C/s
    hvac_band: float = 1.5  # °C
    hvac_min_fraction: float = 0.2
    # Cooling condenses water out of the air; "dry" mode does so on purpose.
    cool_drying: float = 1.0 / 300.0  # %RH/s, down to ``cool_humidity_floor``
    cool_humidity_floor: float = 50.0
    dry_rate: float = 1.0 / 120.0  # %RH/s, down to ``dry_humidity_floor``
    dry_humidity_floor: float = 45.0
    # Explicit integration step; the caller may pass any elapsed time.
    max_step: float = 30.0


DEFAULT_PARAMS = ThermalParams()


def step_air(
    air: Air,
    seconds: float,
    *,
    outdoor: Air,
    occupants: int,
    capacity: int | None,
    hvacs: Iterable[Hvac] = (),
    params: ThermalParams = DEFAULT_PARAMS,
) -> Air:
    """The room's air ``seconds`` later, with the outdoor air, the people and the ACs held fixed.

    Long steps are cut into ``params.max_step`` pieces so that the answer does
    not depend on how often the caller happens to step.
    """
    if seconds < 0:
        raise ValueError("time does not go backwards")
    units = list(hvacs)
    size = max(capacity or DEFAULT_CAPACITY, 1)
    remaining = seconds
    while remaining > 0:
        dt = min(remaining, params.max_step)
        air = _passive(air, dt, outdoor, occupants, size, params)
        for hvac in units:
            air = _active(air, dt, hvac, params)
        remaining -= dt
    return air


def _passive(
    air: Air, dt: float, outdoor: Air, occupants: int, size: int, params: ThermalParams
) -> Air:
    """Envelope and ventilation (exponential decay toward outdoors), people's heat and breath."""
    people = max(occupants, 0)
    exchange = 1.0 / params.envelope_tau + (people / size) / params.ventilation_tau
    decay = math.exp(-dt * exchange)
    scale = params.reference_capacity / size
    temperature = outdoor.temperature + (air.temperature - outdoor.temperature) * decay
    temperature += people * params.person_heat * scale * dt
    humidity = outdoor.humidity + (air.humidity - outdoor.humidity) * decay
    humidity += people * params.person_moisture * scale * dt
    return Air(temperature, _clamp_humidity(humidity))


def _active(air: Air, dt: float, hvac: Hvac, params: ThermalParams) -> Air:
    """What one air conditioner does in ``dt``: approach its setpoint, never pass it."""
    if not hvac.power:
        return air
    gap = air.temperature - hvac.setpoint
    cooling = hvac.mode == "cool" or (hvac.mode == "auto" and gap > 0)
    heating = hvac.mode == "heat" or (hvac.mode == "auto" and gap < 0)
    temperature = air.temperature
    humidity = air.humidity
    if cooling and gap > 0:
        temperature = max(hvac.setpoint, temperature - _hvac_speed(gap, params) * dt)
    elif heating and gap < 0:
        temperature = min(hvac.setpoint, temperature + _hvac_speed(-gap, params) * dt)
    if cooling and humidity > params.cool_humidity_floor:
        humidity = max(params.cool_humidity_floor, humidity - params.cool_drying * dt)
    if hvac.mode == "dry" and humidity > params.dry_humidity_floor:
        humidity = max(params.dry_humidity_floor, humidity - params.dry_rate * dt)
    return replace(air, temperature=temperature, humidity=humidity)


def _hvac_speed(gap: float, params: ThermalParams) -> float:
    fraction = min(1.0, max(params.hvac_min_fraction, gap / params.hvac_band))
    return params.hvac_rate * fraction


def _clamp_humidity(value: float) -> float:
    return min(99.0, max(5.0, value))


@dataclass(frozen=True, slots=True)
class DailyWeather:
    """Outdoor air over a day: coldest at 05:00, warmest at 15:00, damp when cool.

    The curve rises as half a cosine over the ten hours from 05:00 to 15:00
    and falls over the other fourteen, which is the familiar shape of a clear
    summer or autumn day; humidity moves opposite to temperature.
    """

    low: float  # °C at 05:00
    high: float  # °C at 15:00
    humidity_low: float = 45.0  # %RH at the warmest hour
    humidity_high: float = 85.0  # %RH at the coldest hour

    def __post_init__(self) -> None:
        if self.high < self.low:
            raise ValueError("the day's high must not be below its low")

    def temperature(self, hour: float) -> float:
        """°C at ``hour`` of the local day (0 <= hour < 24, fractions allowed)."""
        return self.low + (self.high - self.low) * self._warmth(hour)

    def humidity(self, hour: float) -> float:
        """%RH at ``hour`` of the local day."""
        span = self.humidity_high - self.humidity_low
        return self.humidity_high - span * self._warmth(hour)

    def air(self, hour: float) -> Air:
        return Air(self.temperature(hour), self.humidity(hour))

    @staticmethod
    def _warmth(hour: float) -> float:
        """0 at the coldest hour, 1 at the warmest."""
        hour %= 24.0
        if 5.0 <= hour <= 15.0:
            return (1.0 - math.cos(math.pi * (hour - 5.0) / 10.0)) / 2.0
        since_peak = (hour - 15.0) % 24.0
        return (1.0 + math.cos(math.pi * since_peak / 14.0)) / 2.0
