"""What simulated devices need to know about the simulated building.

The scenario owns the people, the weather and the rooms' air; devices only
observe it (and air conditioners act on it) through this protocol. So the
entrance counter, the occupancy sensors, the room counts, the climate sensors
and the air conditioners' own sensors all read one story and can never
disagree with each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Hvac:
    """What an air conditioner is doing to its room right now."""

    power: bool
    mode: str  # "auto" | "cool" | "heat" | "fan" | "dry"
    setpoint: float  # °C


class World(Protocol):
    def outdoor_temperature(self) -> float:
        """The outdoor temperature now, in °C."""

    def occupants(self, room_id: str) -> int:
        """How many people are in the room now."""

    def room_temperature(self, room_id: str) -> float:
        """The air temperature in the room now, in °C."""

    def set_hvac(self, room_id: str, source_id: str, hvac: Hvac | None) -> None:
        """An air conditioner (``source_id``) reports what it does to the room from now on."""
