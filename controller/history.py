"""Room and device history: the stored series on a grid of equal buckets.

``GET /api/rooms/{id}/history`` and ``GET /api/devices/{id}/history`` show
a span of time in buckets of ``step`` seconds, and the visitors' page the
most people inside on each day. The store keeps minute rows for recent time
and hour rows for older time, and a room's temperature is the union of its
climate sensors and air conditioners: this module asks the store for each
series and shares its rows out onto the one grid the caller asked for.

Its queries block (they run in SQLite): :class:`controller.reports.Reports`
calls them on a worker thread.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from controller.report_queries import HOUR_SECONDS, floor_to
from controller.report_sources import History
from controller.site import Device, DeviceKind, Room, Site
from controller.timeseries.recorder import MEASUREMENTS
from controller.timeseries.rollups import Aggregation, aggregation_of
from rules.utilization import RESOLUTION_SECONDS, period

MAX_HISTORY_BUCKETS = 2000
DEFAULT_HISTORY = timedelta(hours=24)
DEFAULT_STEP = 300

# The fields of each measurement that are numbers (booleans count as 1 and 0).
NUMERIC_FIELDS: Mapping[str, tuple[str, ...]] = {
    "occupancy": ("occupied", "count"),
    "people": ("entries", "exits", "inside"),
    "climate": ("temperature", "humidity"),
    "lock": ("locked", "door_open"),
    "fire": ("alarm",),
    "ac": ("power", "setpoint", "room_temperature", "fault"),
    "cabinet": ("occupied_compartments", "open_doors"),
}
# What a device's history shows when no field is named.
DEFAULT_FIELDS: Mapping[str, str] = {
    "occupancy": "occupied",
    "people": "entries",
    "climate": "temperature",
    "lock": "locked",
    "fire": "alarm",
    "ac": "room_temperature",
    "cabinet": "occupied_compartments",
}
# Where a room's temperature is measured: its climate sensors and its air conditioners.
_TEMPERATURE_FIELDS = {
    DeviceKind.CLIMATE: "temperature",
    DeviceKind.AIR_CONDITIONER: "room_temperature",
}


@dataclass(frozen=True, slots=True)
class Summary:
    """One history bucket of one quantity; None where nothing was known."""

    weight: float = 0.0
    total: float = 0.0
    minimum: float | None = None
    maximum: float | None = None

    @property
    def mean(self) -> float | None:
        return None if self.weight <= 0 else self.total / self.weight

    def add(self, weight: float, total: float, minimum: float, maximum: float) -> Summary:
        return Summary(
            self.weight + weight,
            self.total + total,
            minimum if self.minimum is None else min(self.minimum, minimum),
            maximum if self.maximum is None else max(self.maximum, maximum),
        )


@dataclass(frozen=True, slots=True)
class RoomHistoryBucket:
    start: datetime
    occupied: Summary  # mean: the fraction of the known time the room was occupied
    count: Summary
    temperature: Summary

    def to_json(self, zone: tzinfo) -> dict[str, Any]:
        return {
            "start": self.start.astimezone(zone).isoformat(),
            "occupied": _rounded(self.occupied.mean, 3),
            "known_seconds": round(self.occupied.weight),
            "count_mean": _rounded(self.count.mean, 2),
            "count_max": _integer(self.count.maximum),
            "temperature_mean": _rounded(self.temperature.mean, 2),
            "temperature_min": _rounded(self.temperature.minimum, 2),
            "temperature_max": _rounded(self.temperature.maximum, 2),
        }


@dataclass(frozen=True, slots=True)
class DeviceHistoryBucket:
    start: datetime
    value: Summary
    step_series: bool  # a state held over time (lock), not samples

    def to_json(self, zone: tzinfo) -> dict[str, Any]:
        return {
            "start": self.start.astimezone(zone).isoformat(),
            "mean": _rounded(self.value.mean, 3),
            "min": self.value.minimum,
            "max": self.value.maximum,
            "samples": None if self.step_series else round(self.value.weight),
            "sum": None if self.step_series or self.value.weight <= 0 else self.value.total,
        }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _integer(value: float | None) -> int | None:
    return None if value is None else round(value)


class UnknownField(ValueError):
    """A device field that its measurement does not have (or is not a number)."""

    def __init__(self, device: Device, field: str, fields: Sequence[str]) -> None:
        super().__init__(f"{device.id} has no numeric field {field!r}; it has {', '.join(fields)}")
        self.fields = list(fields)


def history_grid(start: datetime, end: datetime, step: int) -> list[datetime]:
    """The starts of the ``step`` buckets from ``start`` until ``end``."""
    count = math.ceil((end - start).total_seconds() / step)
    return [start + timedelta(seconds=step * index) for index in range(count)]


def device_fields(device: Device) -> tuple[str, ...]:
    measurement = MEASUREMENTS.get(device.kind)
    return NUMERIC_FIELDS.get(measurement, ()) if measurement is not None else ()


class SiteHistory:
    """The site's rooms and devices over time, read from the time-series store (blocking)."""

    def __init__(self, site: Site, history: History) -> None:
        self._site = site
        self._history = history
        self._zone = site.site.zone
        self._site_id = site.site.id

    def room_history(
        self, room: Room, start: datetime, end: datetime, step: int
    ) -> list[RoomHistoryBucket]:
        grid = history_grid(start, end, step)
        tags = {"site": self._site_id, "room": room.id}
        occupied = self._gridded(grid, step, [("room", tags, "occupied")], end)
        count = self._gridded(grid, step, [("room", tags, "count")], end)
        sources = [
            (MEASUREMENTS[device.kind], self._device_tags(device), field)
            for device in self._site.devices_in(room.id)
            if (field := _TEMPERATURE_FIELDS.get(device.kind)) is not None
        ]
        temperature = self._gridded(grid, step, sources, end)
        return [
            RoomHistoryBucket(moment, occupied[index], count[index], temperature[index])
            for index, moment in enumerate(grid)
        ]

    def device_history(
        self, device: Device, field: str, start: datetime, end: datetime, step: int
    ) -> list[DeviceHistoryBucket]:
        """Raises :class:`UnknownField` for a field the device's measurement lacks."""
        fields = device_fields(device)
        if field not in fields:
            raise UnknownField(device, field, fields)
        measurement = MEASUREMENTS[device.kind]
        step_series = aggregation_of(measurement) is Aggregation.STEP
        grid = history_grid(start, end, step)
        source = [(measurement, self._device_tags(device), field)]
        values = self._gridded(grid, step, source, end)
        return [
            DeviceHistoryBucket(moment, values[index], step_series)
            for index, moment in enumerate(grid)
        ]

    def peak_inside(self, first: date, last: date) -> dict[date, int]:
        """The most people inside on each local day, as the counters' points tell."""
        start, end = period(first, last, self._zone)
        peaks: dict[date, int] = {}
        for device in self._site.devices:
            if device.kind is not DeviceKind.PEOPLE_COUNTER:
                continue
            for bucket in self._history.buckets(
                "people", self._device_tags(device), "inside", start, end, step=86400
            ):
                if bucket.weight <= 0:
                    continue
                day = bucket.start.astimezone(self._zone).date()
                peaks[day] = max(peaks.get(day, 0), round(bucket.maximum))
        return peaks

    def _device_tags(self, device: Device) -> dict[str, str]:
        """The device's series tags as the recorder writes them (people have no room)."""
        tags = {"site": self._site_id, "device": device.id}
        if device.room is not None and device.kind is not DeviceKind.PEOPLE_COUNTER:
            tags["room"] = device.room
        return tags

    def _gridded(
        self,
        grid: Sequence[datetime],
        step: int,
        sources: Iterable[tuple[str, Mapping[str, str], str]],
        end: datetime,
    ) -> list[Summary]:
        """Several series' buckets merged onto one grid (a coarser stored bucket
        that spans grid buckets is shared out in proportion)."""
        summaries = [Summary() for _ in grid]
        if not grid:
            return summaries
        origin = grid[0]
        # Older time is kept in hour rows, and a query returns the rows that start
        # in it: the hour the grid starts in comes from a query of its own.
        queries = [(origin, end, step)]
        if (lead_in := floor_to(origin, HOUR_SECONDS)) < origin:
            queries.append((lead_in, origin, RESOLUTION_SECONDS))
        for (measurement, tags, field), (first_at, last_at, size) in itertools.product(
            sources, queries
        ):
            for bucket in self._history.buckets(
                measurement, tags, field, first_at, last_at, step=size
            ):
                begin = (bucket.start - origin).total_seconds()
                finish = begin + bucket.seconds
                first = max(0, int(begin // step))
                last = min(len(grid), math.ceil(finish / step))
                for index in range(first, last):
                    low, high = max(begin, index * step), min(finish, (index + 1) * step)
                    if high <= low:
                        continue
                    share = (high - low) / bucket.seconds
                    summaries[index] = summaries[index].add(
                        bucket.weight * share, bucket.total * share, bucket.minimum, bucket.maximum
                    )
        return summaries
