"""The simulated MQTT devices against a real Mosquitto, checked against the contract (§2).

Every payload is decoded with the controller's own decoders, so "the
controller accepts it" is tested, not assumed. The devices run on a
:class:`ScaledClock` at 100x; the building is driven by hand, so each test
says exactly who walks where.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Coroutine, Iterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from controller.clock import ScaledClock
from controller.readings import (
    ClimateReading,
    CounterReading,
    DoorState,
    FireAlarmReading,
    LockReading,
    LockState,
    OccupancyReading,
)
from controller.settings import MqttEndpoint
from controller.site import Device, DeviceKind, PayloadFormat, Site, parse_site
from drivers.payloads import PayloadError, decode_availability, decode_state
from simulators.faults import NO_FAULTS, FaultPlan
from simulators.mqtt_devices import (
    Backoff,
    ClimateSimulator,
    CounterSimulator,
    DeviceContext,
    DeviceSimulator,
    FireAlarmSimulator,
    Link,
    LockSimulator,
    OccupancySimulator,
    mqtt_simulators,
)
from simulators.people import Building, Visit
from simulators.thermal import DailyWeather
from tests.conftest import CHANGBAI, PREFIX, Broker, Probe, wait_until

ZONE = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 11, 23, 10, 0, tzinfo=ZONE)
SPEED = 100.0


# -- helpers ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(*jobs: Coroutine[Any, Any, None]) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run ``jobs`` as tasks; on leaving, cancel them, await them, and surface any crash."""
    tasks = [asyncio.create_task(job) for job in jobs]
    try:
        yield tasks
    finally:
        crashed = [task for task in tasks if task.done() and not task.cancelled()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in crashed:
            error = task.exception()
            if error is not None:
                raise error


def endpoint(port: int) -> MqttEndpoint:
    return MqttEndpoint(host="127.0.0.1", port=port, tls=False)


def make_building(site: Site) -> Building:
    # A one-second passage through the entrance keeps the walks in the tests exact.
    return Building(site, start=START, weather=DailyWeather(20.0, 30.0), seed=1, passage=(1.0, 1.0))


def make_context(
    port: int,
    building: Building,
    *,
    faults: FaultPlan = NO_FAULTS,
    prefix: str = PREFIX,
    speed: float = SPEED,
) -> DeviceContext:
    clock = ScaledClock(START, speed)
    link = Link(endpoint(port), prefix, "changbai", backoff=Backoff(1.0, 5.0))
    return DeviceContext(building, link, clock, faults, seed=3, started=clock.monotonic())


def walk(building: Building, seconds: float) -> None:
    building.advance(building.now + timedelta(seconds=seconds))


def send_in(building: Building, room: str, people: int, stay: float = 600.0) -> None:
    """``people`` come in and are in ``room`` two seconds later."""
    for _ in range(people):
        building.admit([Visit(room, stay=stay)], building.now)
    walk(building, 2)


def topic(device: str, channel: str = "state") -> str:
    return f"{PREFIX}/{device}/{channel}"


def state_of(probe: Probe, device: str) -> list[dict[str, Any]]:
    return [json.loads(payload) for payload in probe.received(topic(device))]


async def next_state(
    probe: Probe, device: str, wanted: dict[str, Any], *, after: int = 0, timeout: float = 5.0
) -> dict[str, Any]:
    """The first state of ``device`` (from message number ``after`` on) that has ``wanted``."""

    def find() -> dict[str, Any] | None:
        for payload in probe.received(topic(device))[after:]:
            body: dict[str, Any] = json.loads(payload)
            if all(body.get(key) == value for key, value in wanted.items()):
                return body
        return None

    found: dict[str, Any] = await wait_until(
        find, timeout=timeout, message=f"{device} reporting {wanted}"
    )
    return found


def heard(probe: Probe, device: str) -> int:
    """How many states ``device`` has reported so far (for ``next_state(after=...)``)."""
    return len(probe.received(topic(device)))


class QuickProbe(Probe):
    """The shared probe, closed without waiting out paho's one-second network loop tick."""

    def close(self) -> None:
        self.client.disconnect()  # wakes the loop thread, which then ends at once
        self.client.loop_stop()


async def retained(port: int, name: str) -> dict[str, tuple[bytes, bool]]:
    """What a client subscribing now to ``name`` gets at once (topic -> payload, retain flag).

    The broker sends a new subscription's retained messages before anything
    published after it, so once a marker published afterwards has arrived,
    every retained message has.
    """
    marker = "test/retained-marker"
    late = QuickProbe(port)
    late.connect()
    try:
        late.subscribe(name)
        late.subscribe(marker)
        late.publish(marker, b"end")
        await wait_until(lambda: late.received(marker), message=f"retained messages on {name}")
        return {
            m.topic: (bytes(m.payload), bool(m.retain)) for m in late.messages if m.topic != marker
        }
    finally:
        late.close()


@pytest.fixture
def building(site: Site) -> Building:
    return make_building(site)


@pytest.fixture
def quick_probe(broker: Broker) -> Iterator[Probe]:
    client = QuickProbe(broker.port)
    client.connect()
    yield client
    client.close()


@pytest.fixture
def watching(quick_probe: Probe) -> Probe:
    quick_probe.subscribe(f"{PREFIX}/#")
    return quick_probe


def device(site: Site, device_id: str) -> Device:
    return site.device_by_id[device_id]


# -- occupancy ---------------------------------------------------------------------


@pytest.mark.broker
async def test_mmwave_sensor_reports_count_on_change(
    broker: Broker, watching: Probe, site: Site, building: Building
) -> None:
    sim = OccupancySimulator(device(site, "occ-hui-xin-room"), make_context(broker.port, building))
    async with running(sim.run()):
        await watching.next_payload(topic("occ-hui-xin-room", "availability"))
        first = await next_state(watching, "occ-hui-xin-room", {"count": 0})
        assert first == {"occupied": False, "count": 0}

        send_in(building, "hui-xin-room", 3)
        body = await next_state(watching, "occ-hui-xin-room", {"count": 3})
        assert body == {"occupied": True, "count": 3}
        payload = json.dumps(body).encode()
        reading = decode_state(DeviceKind.OCCUPANCY, PayloadFormat.NATIVE, payload)
        assert reading == OccupancyReading(True, 3)

        got = await retained(broker.port, f"{PREFIX}/occ-hui-xin-room/#")
        assert got[topic("occ-hui-xin-room", "availability")] == (b"online", True)
        assert topic("occ-hui-xin-room") not in got, "occupancy state is not retained"


@pytest.mark.broker
async def test_pir_sensor_reports_presence_without_a_count_and_holds_it(
    broker: Broker, watching: Probe, site: Site, building: Building
) -> None:
    sim = OccupancySimulator(
        device(site, "occ-corridor"), make_context(broker.port, building), counting=False
    )
    async with running(sim.run()):
        assert await next_state(watching, "occ-corridor", {}) == {"occupied": False}
        send_in(building, "corridor", 1, stay=150)
        assert await next_state(watching, "occ-corridor", {"occupied": True}) == {"occupied": True}
        clock = ScaledClock(START, SPEED)
        seen = heard(watching, "occ-corridor")
        walk(building, 200)  # the visitor has left the corridor
        assert building.occupants("corridor") == 0
        left_at = clock.monotonic()
        await next_state(watching, "occ-corridor", {"occupied": False}, after=seen)
        held = clock.monotonic() - left_at
        assert held >= 59, "a PIR reports vacant only after its hold time (60 s)"
        for body in state_of(watching, "occ-corridor"):
            assert "count" not in body
            payload = json.dumps(body).encode()
            decode_state(DeviceKind.OCCUPANCY, PayloadFormat.NATIVE, payload)


@pytest.mark.broker
async def test_sensor_repeats_its_state_every_interval(
    broker: Broker, watching: Probe, site: Site, building: Building
) -> None:
    sim = OccupancySimulator(device(site, "occ-gym"), make_context(broker.port, building))
    clock = ScaledClock(START, SPEED)
    async with running(sim.run()):
        await next_state(watching, "occ-gym", {})
        first = clock.monotonic()
        await wait_until(lambda: heard(watching, "occ-gym") >= 3, timeout=5)
        # Nothing changed in the gym: the two later reports are heartbeats, 30 s apart.
        assert clock.monotonic() - first >= 2 * 30 - 1
        assert len(set(watching.received(topic("occ-gym")))) == 1


# -- people counter ------------------------------------------------------------------


@pytest.mark.broker
async def test_counter_counts_entries_and_exits(
    broker: Broker, watching: Probe, site: Site, building: Building
) -> None:
    sim = CounterSimulator(device(site, "counter-entrance"), make_context(broker.port, building))
    async with running(sim.run()):
        base = (await next_state(watching, "counter-entrance", {}))["in"]
        send_in(building, "library", 2, stay=300)
        await next_state(watching, "counter-entrance", {"in": base + 2, "out": base})
        walk(building, 400)
        body = await next_state(watching, "counter-entrance", {"in": base + 2, "out": base + 2})
        reading = decode_state(
            DeviceKind.PEOPLE_COUNTER, PayloadFormat.NATIVE, json.dumps(body).encode()
        )
        assert reading == CounterReading(base + 2, base + 2)


@pytest.mark.broker
async def test_counter_reset_fault_restarts_totals_from_zero(
    broker: Broker, watching: Probe, site: Site, building: Building
) -> None:
    faults = FaultPlan.parse("reset=counter-entrance@20s")
    sim = CounterSimulator(
        device(site, "counter-entrance"), make_context(broker.port, building, faults=faults)
    )
    async with running(sim.run()):
        first = await next_state(watching, "counter-entrance", {})
        assert first["in"] >= 1000, "a counter that has been running for a while"
        await next_state(watching, "counter-entrance", {"in": 0, "out": 0})
        send_in(building, "library", 1)
        await next_state(watching, "counter-entrance", {"in": 1, "out": 0})


# -- climate -------------------------------------------------------------------------


@pytest.mark.broker
async def test_climate_sensors_report_room_and_outdoor_air(
    broker: Broker, watching: Probe, site: Site, building: Building
) -> None:
    context = make_context(broker.port, building)
    sims = [
        ClimateSimulator(device(site, "temp-love-room"), context),
        ClimateSimulator(device(site, "temp-outdoor"), context),
    ]
    async with running(*(sim.run() for sim in sims)):
        for device_id, truth in (
            ("temp-love-room", building.room_temperature("love-room")),
            ("temp-outdoor", building.outdoor_temperature()),
        ):
            body = await next_state(watching, device_id, {})
            reading = decode_state(
                DeviceKind.CLIMATE, PayloadFormat.NATIVE, json.dumps(body).encode()
            )
            assert isinstance(reading, ClimateReading)
            assert reading.temperature is not None
            assert reading.temperature == round(reading.temperature, 1), "one decimal"
            assert abs(reading.temperature - truth) < 0.3
            assert reading.humidity is not None
            assert 0 <= reading.humidity <= 100


# -- locks ---------------------------------------------------------------------------


@pytest.mark.broker
async def test_lock_follows_commands_and_keeps_its_state_retained(
    broker: Broker, watching: Probe, site: Site, building: Building
) -> None:
    lock = "lock-hui-xin-room"
    sim = LockSimulator(device(site, lock), make_context(broker.port, building))
    async with running(sim.run()):
        assert await next_state(watching, lock, {}) == {"state": "UNLOCKED", "door": "closed"}
        watching.publish(f"{PREFIX}/{lock}/set", b'{"state": "LOCK"}')
        await next_state(watching, lock, {"state": "LOCKED"})
        got = await retained(broker.port, f"{PREFIX}/{lock}/state")
        payload, retain = got[topic(lock)]
        assert retain
        reading = decode_state(DeviceKind.LOCK, PayloadFormat.NATIVE, payload)
        assert reading == LockReading(LockState.LOCKED, DoorState.CLOSED)

        seen = heard(watching, lock)
        watching.publish(f"{PREFIX}/{lock}/set", b'{"state": "UNLOCK"}')
        await next_state(watching, lock, {"state": "UNLOCKED"}, after=seen)
        assert sim.stats.commands == 2


@pytest.mark.broker
async def test_lock_reports_the_door_open_while_people_pass(
    broker: Broker, watching: Probe, site: Site, building: Building
) -> None:
    lock = "lock-practice-hall"
    sim = LockSimulator(device(site, lock), make_context(broker.port, building))
    async with running(sim.run()):
        await next_state(watching, lock, {"door": "closed"})
        send_in(building, "practice-hall", 1)
        await next_state(watching, lock, {"door": "open"})
        seen = heard(watching, lock)
        await next_state(watching, lock, {"door": "closed"}, after=seen, timeout=2)


@pytest.mark.broker
async def test_jam_fault_jams_the_lock_on_its_next_command(
    broker: Broker, watching: Probe, site: Site, building: Building
) -> None:
    lock = "lock-gym"
    faults = FaultPlan.parse("jam=lock-gym")
    sim = LockSimulator(device(site, lock), make_context(broker.port, building, faults=faults))
    async with running(sim.run()):
        await next_state(watching, lock, {"state": "UNLOCKED"})
        watching.publish(f"{PREFIX}/{lock}/set", b'{"state": "LOCK"}')
        body = await next_state(watching, lock, {"state": "JAMMED"})
        reading = decode_state(DeviceKind.LOCK, PayloadFormat.NATIVE, json.dumps(body).encode())
        assert isinstance(reading, LockReading)
        assert reading.state is LockState.JAMMED
        watching.publish(f"{PREFIX}/{lock}/set", b'{"state": "UNLOCK"}')
        await wait_until(lambda: sim.stats.commands == 2)
        await wait_until(lambda: len(state_of(watching, lock)) >= 3)
        assert all(body["state"] == "JAMMED" for body in state_of(watching, lock)[1:])


# -- fire panel ----------------------------------------------------------------------


@pytest.mark.broker
async def test_fire_panel_reports_the_alarm_retained(
    broker: Broker, watching: Probe, site: Site, building: Building
) -> None:
    sim = FireAlarmSimulator(device(site, "fire-panel"), make_context(broker.port, building))
    async with running(sim.run()):
        assert await next_state(watching, "fire-panel", {}) == {"alarm": False}
        building.set_fire_alarm(True)
        await next_state(watching, "fire-panel", {"alarm": True})
        payload, retain = (await retained(broker.port, topic("fire-panel")))[topic("fire-panel")]
        assert retain
        decoded = decode_state(DeviceKind.FIRE_ALARM, PayloadFormat.NATIVE, payload)
        assert decoded == FireAlarmReading(True)
        seen = heard(watching, "fire-panel")
        building.set_fire_alarm(False)
        await next_state(watching, "fire-panel", {"alarm": False}, after=seen)


# -- Zigbee2MQTT -----------------------------------------------------------------------

Z2M_SITE = """
[site]
id = "changbai"
name = "z2m"
hours = { open = "08:30", close = "21:00" }

[[rooms]]
id = "entrance"
name = "entrance"

[[rooms]]
id = "hall"
name = "hall"
capacity = 30

[[devices]]
id = "occ-hall"
kind = "occupancy"
room = "hall"
interval = "30s"
format = "zigbee2mqtt"
state_topic = "zigbee2mqtt/hall presence"

[[devices]]
id = "lock-hall"
kind = "lock"
room = "hall"
interval = "60s"
format = "zigbee2mqtt"
state_topic = "zigbee2mqtt/hall lock"

[[devices]]
id = "temp-hall"
kind = "climate"
room = "hall"
interval = "60s"
format = "zigbee2mqtt"
state_topic = "zigbee2mqtt/hall climate"

[[devices]]
id = "smoke-hall"
kind = "fire_alarm"
interval = "60s"
format = "zigbee2mqtt"
state_topic = "zigbee2mqtt/hall smoke"
"""


@pytest.mark.broker
async def test_zigbee2mqtt_devices_use_its_topics_and_payloads(
    broker: Broker, quick_probe: Probe
) -> None:
    probe = quick_probe
    site = parse_site(Z2M_SITE)
    building = make_building(site)
    probe.subscribe("zigbee2mqtt/#")
    sims = mqtt_simulators(
        site, building, endpoint(broker.port), clock=ScaledClock(START, SPEED), seed=5
    )
    assert {sim.state_topic for sim in sims} == {
        "zigbee2mqtt/hall presence",
        "zigbee2mqtt/hall lock",
        "zigbee2mqtt/hall climate",
        "zigbee2mqtt/hall smoke",
    }

    def decoded(name: str, kind: DeviceKind) -> list[Any]:
        return [
            decode_state(kind, PayloadFormat.ZIGBEE2MQTT, payload)
            for payload in probe.received(f"zigbee2mqtt/{name}")
        ]

    async with running(*(sim.run() for sim in sims)):
        for name in ("hall presence", "hall lock", "hall climate", "hall smoke"):
            status = await probe.next_payload(f"zigbee2mqtt/{name}/availability")
            assert decode_availability(PayloadFormat.ZIGBEE2MQTT, status)
        send_in(building, "hall", 4)
        await wait_until(
            lambda: OccupancyReading(True, 4) in decoded("hall presence", DeviceKind.OCCUPANCY)
        )
        raw = json.loads(probe.received("zigbee2mqtt/hall presence")[-1])
        assert raw["occupancy"] is True
        assert raw["people"] == 4
        assert "linkquality" in raw

        probe.publish("zigbee2mqtt/hall lock/set", b'{"state": "LOCK"}')
        await wait_until(
            lambda: any(r.state is LockState.LOCKED for r in decoded("hall lock", DeviceKind.LOCK))
        )
        raw = json.loads(probe.received("zigbee2mqtt/hall lock")[-1])
        assert raw["lock_state"] == "locked"
        assert raw["state"] == "LOCK"
        # The visitors' door swings shut: contact true means closed.
        await wait_until(
            lambda: (
                decoded("hall lock", DeviceKind.LOCK)[-1]
                == LockReading(LockState.LOCKED, DoorState.CLOSED)
            )
        )
        assert json.loads(probe.received("zigbee2mqtt/hall lock")[-1])["contact"] is True

        await wait_until(lambda: decoded("hall climate", DeviceKind.CLIMATE))
        building.set_fire_alarm(True)
        await wait_until(
            lambda: FireAlarmReading(True) in decoded("hall smoke", DeviceKind.FIRE_ALARM)
        )
        assert json.loads(probe.received("zigbee2mqtt/hall smoke")[-1])["smoke"] is True


# -- availability, last will, reconnect ------------------------------------------------


class CuttableLink:
    """A TCP relay to the broker that can be cut like a cable: no DISCONNECT reaches the broker."""

    def __init__(self, broker_port: int) -> None:
        self._broker_port = broker_port
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._pipes: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._broker_port)
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pipe = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
        sink.close()


@pytest.mark.broker
async def test_last_will_says_offline_when_the_link_is_cut_and_the_device_comes_back(
    broker: Broker, watching: Probe, site: Site, building: Building
) -> None:
    relay = CuttableLink(broker.port)
    await relay.start()
    sim = OccupancySimulator(device(site, "occ-library"), make_context(relay.port, building))
    availability = topic("occ-library", "availability")
    async with running(sim.run()):
        await watching.next_payload(availability, lambda p: p == b"online")
        await relay.cut()
        await watching.next_payload(availability, lambda p: p == b"offline")
        assert watching.received(availability) == [b"online", b"offline"]
        await relay.start()  # same port: the device reconnects on its own
        await wait_until(lambda: watching.received(availability)[-1:] == [b"online"])
        await wait_until(lambda: sim.stats.connects == 2)
        await relay.cut()


@pytest.mark.broker
async def test_a_clean_stop_says_offline_retained(
    broker: Broker, watching: Probe, site: Site, building: Building
) -> None:
    sim = FireAlarmSimulator(device(site, "fire-panel"), make_context(broker.port, building))
    availability = topic("fire-panel", "availability")
    async with running(sim.run()):
        await watching.next_payload(availability, lambda p: p == b"online")
    got = await retained(broker.port, availability)
    assert got[availability] == (b"offline", True)


# -- faults --------------------------------------------------------------------------


@pytest.mark.broker
async def test_a_dead_device_says_offline_and_then_nothing(
    broker: Broker, watching: Probe, site: Site, building: Building
) -> None:
    faults = FaultPlan.parse("dead=occ-gym")
    context = make_context(broker.port, building, faults=faults)
    dead = OccupancySimulator(device(site, "occ-gym"), context)
    alive = OccupancySimulator(device(site, "occ-library"), context)
    async with running(dead.run(), alive.run()):
        await watching.next_payload(topic("occ-gym", "availability"), lambda p: p == b"offline")
        # Three heartbeats of a live neighbour: the dead one had time to talk, and did not.
        await wait_until(lambda: len(watching.received(topic("occ-library"))) >= 3)
        assert watching.received(topic("occ-gym")) == []
        assert watching.received(topic("occ-gym", "availability")) == [b"offline"]


@pytest.mark.broker
async def test_drop_fault_swallows_state_messages(
    broker: Broker, watching: Probe, site: Site, building: Building
) -> None:
    context = make_context(broker.port, building, faults=FaultPlan.parse("drop=1"))
    sim = OccupancySimulator(device(site, "occ-library"), context)
    async with running(sim.run()):
        await watching.next_payload(topic("occ-library", "availability"))
        await wait_until(lambda: sim.stats.dropped >= 3)
        assert watching.received(topic("occ-library")) == []


@pytest.mark.broker
async def test_garbage_fault_sends_payloads_the_controller_rejects(
    broker: Broker, watching: Probe, site: Site, building: Building
) -> None:
    context = make_context(broker.port, building, faults=FaultPlan.parse("garbage=1"))
    sim = CounterSimulator(device(site, "counter-entrance"), context)
    async with running(sim.run()):
        await wait_until(lambda: len(watching.received(topic("counter-entrance"))) >= 4)
    payloads = watching.received(topic("counter-entrance"))
    assert len(set(payloads)) >= 4, "garbage rotates through kinds of bad input"
    for payload in payloads:
        with pytest.raises(PayloadError):
            decode_state(DeviceKind.PEOPLE_COUNTER, PayloadFormat.NATIVE, payload)


# -- the factory ---------------------------------------------------------------------


def test_factory_builds_one_simulator_per_mqtt_device(site: Site) -> None:
    building = make_building(site)
    sims = mqtt_simulators(site, building, endpoint(1883), clock=ScaledClock(START, 1))
    mqtt_ids = {d.id for d in site.devices if d.is_mqtt}
    assert {sim.device.id for sim in sims} == mqtt_ids
    assert len(sims) == 19
    kinds: dict[str, type[DeviceSimulator]] = {sim.device.id: type(sim) for sim in sims}
    assert kinds["lock-main"] is LockSimulator
    assert kinds["counter-entrance"] is CounterSimulator
    counting = {sim.device.id: sim.counting for sim in sims if isinstance(sim, OccupancySimulator)}
    assert {device for device, counts in counting.items() if not counts} == {
        "occ-corridor",
        "occ-coffee",
    }
    lock = next(sim for sim in sims if isinstance(sim, LockSimulator))
    assert lock.command_topic == f"{PREFIX}/{lock.device.id}/set"
    assert CHANGBAI.exists()


def test_factory_refuses_faults_that_do_not_fit_the_site(site: Site) -> None:
    building = make_building(site)
    with pytest.raises(ValueError, match="only locks jam"):
        mqtt_simulators(
            site,
            building,
            endpoint(1883),
            clock=ScaledClock(START, 1),
            faults=FaultPlan.parse("jam=occ-gym"),
        )
