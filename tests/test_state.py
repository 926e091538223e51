"""LiveState: what each room is, derived from what its devices said on the bus.

Every test drives the model the way the controller does, by publishing
``ReadingReceived`` and ``AvailabilityChanged`` on an :class:`EventBus`, and
reads the answer a user would see: ``LiveState.room()``, ``site_state`` and the
``RoomStateChanged``/``DeviceStateChanged`` events the page and MQTT follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from controller.bus import EventBus
from controller.events import (
    AvailabilityChanged,
    AvailabilitySource,
    DeviceStateChanged,
    ReadingReceived,
    RoomStateChanged,
)
from controller.readings import (
    ClimateReading,
    DoorState,
    FireAlarmReading,
    LockReading,
    LockState,
    OccupancyReading,
    Reading,
)
from controller.site import Site, parse_site
from controller.state import LiveState, RoomState

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)

# A hall with two of everything, an office with one occupancy sensor, and
# the site-wide outdoor sensor and fire panel.
SMALL_SITE = """
[site]
id = "small"
name = "Small center"
hours = { open = "08:00", close = "20:00" }

[[rooms]]
id = "hall"
name = "Hall"

[[rooms]]
id = "office"
name = "Office"

[[devices]]
id = "occ-a"
kind = "occupancy"
room = "hall"
interval = "30s"

[[devices]]
id = "occ-b"
kind = "occupancy"
room = "hall"
interval = "30s"

[[devices]]
id = "temp-a"
kind = "climate"
room = "hall"
interval = "60s"

[[devices]]
id = "temp-b"
kind = "climate"
room = "hall"
interval = "60s"

[[devices]]
id = "lock-a"
kind = "lock"
room = "hall"
interval = "60s"

[[devices]]
id = "lock-b"
kind = "lock"
room = "hall"
interval = "60s"

[[devices]]
id = "occ-office"
kind = "occupancy"
room = "office"
interval = "30s"

[[devices]]
id = "temp-outdoor"
kind = "climate"
interval = "60s"

[[devices]]
id = "fire-panel"
kind = "fire_alarm"
interval = "30s"
"""


@dataclass
class Harness:
    """A LiveState on a bus, with every event it publishes recorded."""

    bus: EventBus
    state: LiveState
    now: datetime = T0
    room_changes: list[RoomStateChanged] = field(default_factory=list)
    device_changes: list[DeviceStateChanged] = field(default_factory=list)

    def at(self, seconds: float) -> datetime:
        self.now = T0 + timedelta(seconds=seconds)
        return self.now

    def reading(self, device_id: str, reading: Reading) -> None:
        self.bus.publish(ReadingReceived(device_id, reading, self.now))

    def availability(
        self, device_id: str, online: bool, source: AvailabilitySource = AvailabilitySource.LWT
    ) -> None:
        self.bus.publish(AvailabilityChanged(device_id, online, source, self.now))

    def room(self, room_id: str) -> RoomState:
        return self.state.room(room_id)

    def clear(self) -> None:
        self.room_changes.clear()
        self.device_changes.clear()


def _harness(site: Site) -> Harness:
    bus = EventBus()
    state = LiveState(site, bus)
    state.start()
    harness = Harness(bus, state)
    bus.subscribe(RoomStateChanged, harness.room_changes.append)
    bus.subscribe(DeviceStateChanged, harness.device_changes.append)
    return harness


@pytest.fixture
def small() -> Harness:
    return _harness(parse_site(SMALL_SITE, "small.toml"))


@pytest.fixture
def changbai(site: Site) -> Harness:
    return _harness(site)


# --- Occupancy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reading", "occupied", "count"),
    [
        (OccupancyReading(occupied=True), True, None),
        (OccupancyReading(occupied=False), False, None),
        (OccupancyReading(occupied=True, count=3), True, 3),
        (OccupancyReading(occupied=False, count=0), False, 0),
    ],
    ids=["present", "empty", "counted", "counted-empty"],
)
def test_one_sensor_decides_occupancy_and_count(
    small: Harness, reading: OccupancyReading, occupied: bool, count: int | None
) -> None:
    assert small.room("office").occupied is None  # nothing heard yet: unknown, not empty

    small.reading("occ-office", reading)

    assert small.room("office").occupied is occupied
    assert small.room("office").count == count
    assert small.room("hall").occupied is None  # the other room is untouched


def test_since_is_set_when_occupancy_flips_and_kept_when_it_does_not(small: Harness) -> None:
    small.at(0)
    small.reading("occ-office", OccupancyReading(occupied=True, count=1))
    assert small.room("office").since == T0

    small.at(60)
    small.reading("occ-office", OccupancyReading(occupied=True, count=4))  # more people
    assert small.room("office").count == 4
    assert small.room("office").since == T0  # still occupied since the first one came in

    small.at(120)
    small.reading("occ-office", OccupancyReading(occupied=False, count=0))
    assert small.room("office").occupied is False
    assert small.room("office").since == T0 + timedelta(seconds=120)

    small.at(180)
    small.reading("occ-office", OccupancyReading(occupied=False, count=0))
    assert small.room("office").since == T0 + timedelta(seconds=120)


def test_since_is_kept_when_another_field_changes(small: Harness) -> None:
    small.at(0)
    small.reading("occ-a", OccupancyReading(occupied=True))
    small.at(30)
    small.reading("temp-a", ClimateReading(temperature=22.0))

    assert small.room("hall").temperature == 22.0
    assert small.room("hall").since == T0


@pytest.mark.parametrize(
    ("a", "b", "occupied", "count"),
    [
        (OccupancyReading(True), OccupancyReading(False), True, None),
        (OccupancyReading(False), OccupancyReading(True), True, None),
        (OccupancyReading(False), OccupancyReading(False), False, None),
        (OccupancyReading(True, 2), OccupancyReading(False, 0), True, 2),
        (OccupancyReading(True, 2), OccupancyReading(True, 3), True, 5),
        (OccupancyReading(True, 2), OccupancyReading(True), True, 2),
        (OccupancyReading(False, 0), OccupancyReading(False, 0), False, 0),
    ],
    ids=[
        "a-only",
        "b-only",
        "neither",
        "one-counted",
        "counts-summed",
        "only-counting-sensor-counts",
        "both-zero",
    ],
)
def test_two_sensors_occupied_if_any_and_counts_summed(
    small: Harness, a: OccupancyReading, b: OccupancyReading, occupied: bool, count: int | None
) -> None:
    small.reading("occ-a", a)
    small.reading("occ-b", b)

    assert small.room("hall").occupied is occupied
    assert small.room("hall").count == count


def test_an_offline_sensor_stops_counting(small: Harness) -> None:
    small.reading("occ-a", OccupancyReading(True, 2))
    small.reading("occ-b", OccupancyReading(True, 3))
    assert small.room("hall").count == 5

    small.availability("occ-b", online=False)

    assert small.room("hall").occupied is True
    assert small.room("hall").count == 2

    small.availability("occ-a", online=False, source=AvailabilitySource.SILENCE)

    # Both sensors offline: nobody knows, which is not the same as "empty".
    assert small.room("hall").occupied is None
    assert small.room("hall").count is None


def test_a_room_whose_only_sensor_is_offline_is_unknown_until_it_reports(
    small: Harness,
) -> None:
    small.at(0)
    small.reading("occ-office", OccupancyReading(occupied=False))
    assert small.room("office").occupied is False

    small.at(30)
    small.availability("occ-office", online=False)
    assert small.room("office").occupied is None
    assert small.state.device("occ-office").online is False

    small.at(60)
    small.reading("occ-office", OccupancyReading(occupied=True, count=1))
    assert small.room("office").occupied is True
    assert small.room("office").count == 1
    assert small.room("office").since == T0 + timedelta(seconds=60)
    assert small.state.device("occ-office").online is True
    assert small.state.device("occ-office").availability_source is AvailabilitySource.READING


def test_a_reading_from_before_an_outage_stays_stale_until_a_fresh_one(small: Harness) -> None:
    small.reading("occ-office", OccupancyReading(occupied=True))
    small.availability("occ-office", online=False)
    assert small.room("office").occupied is None

    small.availability("occ-office", online=True)
    assert small.room("office").occupied is None  # an hour-old "occupied" is not news
    assert small.state.device("occ-office").stale

    small.reading("occ-office", OccupancyReading(occupied=False))
    assert small.room("office").occupied is False
    assert not small.state.device("occ-office").stale


def test_a_retained_reading_is_not_a_sign_of_life(small: Harness) -> None:
    small.availability("occ-office", online=False)
    small.bus.publish(
        ReadingReceived("occ-office", OccupancyReading(occupied=True), small.now, retained=True)
    )
    device = small.state.device("occ-office")
    assert device.online is False
    assert device.last_seen is None
    assert small.room("office").occupied is None


def test_a_retained_reading_of_a_device_not_known_offline_counts(small: Harness) -> None:
    small.bus.publish(
        ReadingReceived("occ-office", OccupancyReading(occupied=True), small.now, retained=True)
    )
    assert small.room("office").occupied is True
    assert small.state.device("occ-office").online is None  # known value, liveness unknown


# --- Climate -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "temperature", "humidity"),
    [
        (ClimateReading(20.0, 40.0), ClimateReading(23.0, 50.0), 21.5, 45.0),
        (ClimateReading(20.0, 40.0), ClimateReading(23.0, None), 21.5, 40.0),
        (ClimateReading(None, 40.0), ClimateReading(23.0, None), 23.0, 40.0),
        (ClimateReading(21.0, 33.3), ClimateReading(21.0, 33.4), 21.0, 33.35),
    ],
    ids=["both", "one-without-humidity", "each-one-field", "close-values"],
)
def test_climate_is_the_mean_of_the_room_sensors(
    small: Harness,
    a: ClimateReading,
    b: ClimateReading,
    temperature: float,
    humidity: float,
) -> None:
    small.reading("temp-a", a)
    small.reading("temp-b", b)

    assert small.room("hall").temperature == pytest.approx(temperature)
    assert small.room("hall").humidity == pytest.approx(humidity)


def test_an_offline_climate_sensor_leaves_the_mean(small: Harness) -> None:
    small.reading("temp-a", ClimateReading(20.0, 40.0))
    small.reading("temp-b", ClimateReading(24.0, 60.0))
    assert small.room("hall").temperature == 22.0

    small.availability("temp-b", online=False)

    assert small.room("hall").temperature == 20.0
    assert small.room("hall").humidity == 40.0

    small.availability("temp-a", online=False)

    assert small.room("hall").temperature is None
    assert small.room("hall").humidity is None


# --- Locks and doors -----------------------------------------------------------------

L, U, J = LockState.LOCKED, LockState.UNLOCKED, LockState.JAMMED


@pytest.mark.parametrize(
    ("a", "b", "locked", "lock_state"),
    [
        (L, None, True, L),
        (U, None, False, U),
        (J, None, False, J),
        (L, L, True, L),
        (L, U, False, U),
        (U, L, False, U),
        (U, J, False, J),
        (J, L, False, J),
        (L, J, False, J),
    ],
)
def test_the_worst_lock_decides_the_room(
    small: Harness,
    a: LockState,
    b: LockState | None,
    locked: bool,
    lock_state: LockState,
) -> None:
    small.reading("lock-a", LockReading(a))
    if b is not None:
        small.reading("lock-b", LockReading(b))

    assert small.room("hall").locked is locked
    assert small.room("hall").lock_state is lock_state


@pytest.mark.parametrize(
    ("a", "b", "door"),
    [
        (DoorState.CLOSED, DoorState.OPEN, DoorState.OPEN),
        (DoorState.OPEN, DoorState.CLOSED, DoorState.OPEN),
        (DoorState.CLOSED, DoorState.CLOSED, DoorState.CLOSED),
        (DoorState.CLOSED, None, DoorState.CLOSED),
        (None, DoorState.OPEN, DoorState.OPEN),
        (None, None, None),
    ],
)
def test_the_door_is_open_if_any_lock_says_so(
    small: Harness, a: DoorState | None, b: DoorState | None, door: DoorState | None
) -> None:
    small.reading("lock-a", LockReading(LockState.LOCKED, door=a))
    small.reading("lock-b", LockReading(LockState.LOCKED, door=b))

    assert small.room("hall").door is door


def test_a_room_without_lock_readings_has_unknown_lock_state(small: Harness) -> None:
    small.reading("occ-a", OccupancyReading(True))

    assert small.room("hall").locked is None
    assert small.room("hall").lock_state is None
    assert small.room("hall").door is None


def test_an_offline_jammed_lock_no_longer_decides(small: Harness) -> None:
    small.reading("lock-a", LockReading(LockState.LOCKED))
    small.reading("lock-b", LockReading(LockState.JAMMED))
    assert small.room("hall").lock_state is LockState.JAMMED

    small.availability("lock-b", online=False)

    assert small.room("hall").lock_state is LockState.LOCKED
    assert small.room("hall").locked is True


# --- Fire alarm ----------------------------------------------------------------------


def test_fire_alarm_is_unknown_until_the_panel_is_heard(changbai: Harness, site: Site) -> None:
    changbai.reading("occ-gym", OccupancyReading(True))

    assert changbai.state.site_state.fire_alarm is None
    assert changbai.room("gym").fire_alarm is None

    changbai.reading("fire-panel", FireAlarmReading(alarm=False))

    assert changbai.state.site_state.fire_alarm is False
    assert {changbai.room(room.id).fire_alarm for room in site.rooms} == {False}


def test_a_fire_alarm_shows_in_every_room(changbai: Harness, site: Site) -> None:
    changbai.reading("fire-panel", FireAlarmReading(alarm=False))
    changbai.clear()

    changbai.at(10)
    changbai.reading("fire-panel", FireAlarmReading(alarm=True))

    assert changbai.state.site_state.fire_alarm is True
    for room in site.rooms:
        assert changbai.room(room.id).fire_alarm is True, room.id
        assert changbai.state.room_updated(room.id) == T0 + timedelta(seconds=10)
    assert sorted(event.room_id for event in changbai.room_changes) == sorted(
        room.id for room in site.rooms
    )


def test_a_silent_panel_is_unknown_not_no_fire(changbai: Harness, site: Site) -> None:
    changbai.reading("fire-panel", FireAlarmReading(alarm=False))

    changbai.availability("fire-panel", online=False, source=AvailabilitySource.SILENCE)

    assert changbai.state.site_state.fire_alarm is None
    for room in site.rooms:
        assert changbai.room(room.id).fire_alarm is None, room.id


def test_an_offline_panel_that_was_alarming_is_unknown(changbai: Harness) -> None:
    changbai.reading("fire-panel", FireAlarmReading(alarm=True))

    changbai.availability("fire-panel", online=False)

    assert changbai.state.site_state.fire_alarm is None
    assert changbai.room("library").fire_alarm is None


# --- Site-wide sensors -----------------------------------------------------------------


def test_the_outdoor_sensor_goes_to_the_site_not_to_a_room(changbai: Harness, site: Site) -> None:
    changbai.reading("temp-outdoor", ClimateReading(temperature=36.5, humidity=70.0))

    assert changbai.state.site_state.outdoor_temperature == 36.5
    assert changbai.state.site_state.outdoor_humidity == 70.0
    for room in site.rooms:
        assert changbai.room(room.id).temperature is None, room.id
    assert changbai.room_changes == []


def test_an_offline_outdoor_sensor_is_unknown(changbai: Harness) -> None:
    changbai.reading("temp-outdoor", ClimateReading(temperature=36.5))

    changbai.availability("temp-outdoor", online=False)

    assert changbai.state.site_state.outdoor_temperature is None


# --- Change events -------------------------------------------------------------------


def test_room_state_changed_only_when_the_derived_state_changes(small: Harness) -> None:
    small.at(0)
    small.reading("occ-office", OccupancyReading(True, 1))
    assert small.room_changes == [RoomStateChanged("office", T0)]

    small.clear()
    small.at(30)
    small.reading("occ-office", OccupancyReading(True, 1))  # the sensor repeats itself

    assert small.room_changes == []
    assert small.device_changes == []
    assert small.state.room_updated("office") == T0
    assert small.state.device("occ-office").last_seen == T0 + timedelta(seconds=30)

    small.at(60)
    small.reading("occ-office", OccupancyReading(True, 2))

    assert small.room_changes == [RoomStateChanged("office", T0 + timedelta(seconds=60))]
    assert small.state.room_updated("office") == T0 + timedelta(seconds=60)


def test_a_second_sensor_agreeing_publishes_nothing(small: Harness) -> None:
    small.reading("occ-a", OccupancyReading(True))
    small.clear()

    small.reading("occ-b", OccupancyReading(True))

    assert small.room_changes == []
    assert [event.device_id for event in small.device_changes] == ["occ-b"]  # first heard


def test_device_state_changed_on_every_availability_flip(small: Harness) -> None:
    small.at(0)
    small.reading("lock-a", LockReading(LockState.LOCKED))
    assert small.device_changes == [DeviceStateChanged("lock-a", T0)]
    assert small.state.device("lock-a").availability_source is AvailabilitySource.READING

    small.clear()
    small.at(5)
    small.reading("lock-a", LockReading(LockState.UNLOCKED))  # already online: no flip
    assert small.device_changes == []

    small.at(10)
    small.availability("lock-a", online=False)
    small.availability("lock-a", online=False)  # retained LWT delivered again
    assert small.device_changes == [DeviceStateChanged("lock-a", T0 + timedelta(seconds=10))]
    assert small.state.device("lock-a").online is False
    assert small.state.device("lock-a").availability_source is AvailabilitySource.LWT

    small.clear()
    small.at(20)
    small.availability("lock-a", online=True)
    assert small.device_changes == [DeviceStateChanged("lock-a", T0 + timedelta(seconds=20))]
    assert small.state.device("lock-a").online is True


def test_a_device_first_announced_offline_changes_state(small: Harness) -> None:
    assert small.state.device("occ-a").online is None

    small.availability("occ-a", online=False)

    assert small.state.device("occ-a").online is False
    assert [event.device_id for event in small.device_changes] == ["occ-a"]
    assert small.room_changes == []  # the room was unknown and still is


def test_unknown_device_ids_are_ignored(small: Harness) -> None:
    small.reading("ghost", OccupancyReading(True))
    small.availability("ghost", online=False)

    assert "ghost" not in small.state.devices
    assert small.room_changes == []
    assert small.device_changes == []
    assert small.bus.handler_errors == 0


def test_a_stopped_state_no_longer_follows_the_bus(small: Harness) -> None:
    small.state.stop()

    small.reading("occ-office", OccupancyReading(True))

    assert small.room("office").occupied is None
    assert small.room_changes == []
