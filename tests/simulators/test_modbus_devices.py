"""The Modbus device simulators, through a real pymodbus client on loopback.

Every check reads or writes over Modbus TCP, so an address that is off by one
anywhere between the profile, the datastore and pymodbus fails here. Simulated
time is a VirtualClock that the tests advance; nothing sleeps to wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from controller.clock import VirtualClock
from controller.site import Device, parse_site
from drivers.modbus_profile import PointValue, Profile, load_profiles
from simulators.modbus_devices import SimAirConditioner, SimCabinet, modbus_simulators
from simulators.modbus_server import ModbusDeviceServer
from simulators.world import Hvac
from tests.conftest import wait_until
from tests.drivers.test_modbus_profile import INTESIS_AC

PROFILES = load_profiles()
ROOM = "hall"


# -- fakes and helpers ---------------------------------------------------------------


@dataclass
class FakeWorld:
    """Rooms at fixed temperatures that tests change; records what ACs report."""

    temperatures: dict[str, float] = field(default_factory=dict)
    reports: list[tuple[str, str, Hvac | None]] = field(default_factory=list)

    def outdoor_temperature(self) -> float:
        return 30.0

    def occupants(self, room_id: str) -> int:
        return 0

    def room_temperature(self, room_id: str) -> float:
        return self.temperatures.get(room_id, 24.0)

    def set_hvac(self, room_id: str, source_id: str, hvac: Hvac | None) -> None:
        self.reports.append((room_id, source_id, hvac))

    def last(self, source_id: str) -> Hvac | None:
        found = [hvac for _, source, hvac in self.reports if source == source_id]
        assert found, f"{source_id} never reported"
        return found[-1]


@dataclass
class Recorder:
    """A behaviour that only records the writes it is told about."""

    writes: list[tuple[str, int | None, PointValue]] = field(default_factory=list)

    def on_write(self, name: str, index: int | None, value: PointValue) -> None:
        self.writes.append((name, index, value))

    async def run(self) -> None:
        await asyncio.get_running_loop().create_future()


@dataclass(frozen=True)
class Faults:
    dead: frozenset[str] = frozenset()
    slow: frozenset[str] = frozenset()
    exception: frozenset[str] = frozenset()


def ac_device(profile: str = "generic-ac", unit: int = 1) -> Device:
    return Device.model_validate(
        {
            "id": "ac-1",
            "kind": "air_conditioner",
            "room": ROOM,
            "host": "127.0.0.1",
            "unit": unit,
            "profile": profile,
        }
    )


def cabinet_device() -> Device:
    return Device.model_validate(
        {
            "id": "cabinet-1",
            "kind": "document_cabinet",
            "host": "127.0.0.1",
            "profile": "generic-cabinet-24",
        }
    )


def serve(
    device: Device, clock: VirtualClock, profile: Profile | None = None, **options: Any
) -> ModbusDeviceServer:
    profile = profile or PROFILES[str(device.profile)]
    return ModbusDeviceServer(device, profile, port=0, clock=clock, **options)


@asynccontextmanager
async def client_of(
    server: ModbusDeviceServer, *, timeout: float = 2.0
) -> AsyncIterator[AsyncModbusTcpClient]:
    # No retries and no reconnecting: each request is one request on the wire.
    client = AsyncModbusTcpClient(
        "127.0.0.1", port=server.port, timeout=timeout, retries=0, reconnect_delay=0
    )
    try:
        assert await client.connect(), f"cannot connect to port {server.port}"
        yield client
    finally:
        client.close()


def exception_code(response: ModbusPDU) -> int:
    assert response.isError(), f"expected an exception answer, got {response}"
    assert isinstance(response, ExceptionResponse)
    return response.exception_code


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture(autouse=True)
async def no_leftover_tasks() -> AsyncIterator[None]:
    """Every server, behaviour, timer and answer task ends with its owner."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leftover = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    assert not leftover, leftover


# -- register maps ---------------------------------------------------------------------


async def test_generic_ac_serves_the_contract_map(clock: VirtualClock) -> None:
    world = FakeWorld({ROOM: -5.3})
    server = serve(ac_device(), clock)
    SimAirConditioner(server, world, ROOM, clock)
    async with server, client_of(server) as client:
        # Holding 0-3: off, cool, 26.0 °C x 10, fan auto (the initial state).
        assert (await client.read_holding_registers(0, count=4)).registers == [0, 1, 260, 0]
        # Input 0-1: -5.3 °C is -53 as a signed 16-bit word; no fault.
        assert (await client.read_input_registers(0, count=2)).registers == [0xFFCB, 0]
        assert not (await client.write_registers(0, [1, 2, 215, 3])).isError()
        assert server.get("power") is True
        assert server.get("mode") == "heat"
        assert server.get("setpoint") == 21.5
        assert server.get("fan") == "high"
        # Nothing exists beyond the map: a read one register too far is refused.
        assert exception_code(await client.read_holding_registers(0, count=5)) == 2
        assert exception_code(await client.read_input_registers(2)) == 2
        assert exception_code(await client.read_coils(0)) == 2


async def test_cabinet_serves_coils_doors_and_items_at_contract_addresses(
    clock: VirtualClock,
) -> None:
    server = serve(cabinet_device(), clock)
    cabinet = SimCabinet(server, clock)
    cabinet.put_item(5)
    server.set("door_open", True, 23)
    async with server, client_of(server) as client:
        coils = await client.read_coils(0, count=24)
        assert coils.bits[:24] == [False] * 24
        doors = await client.read_discrete_inputs(0, count=24)
        assert doors.bits[:24] == [i == 23 for i in range(24)]
        items = await client.read_discrete_inputs(100, count=24)
        assert items.bits[:24] == [i == 5 for i in range(24)]
        for address in (24, 99, 124):
            assert exception_code(await client.read_discrete_inputs(address)) == 2
        assert exception_code(await client.read_coils(24)) == 2
        assert exception_code(await client.read_discrete_inputs(0, count=101)) == 2


async def test_a_second_ac_profile_is_served_from_its_data_file_alone(
    tmp_path: Path, clock: VirtualClock
) -> None:
    (tmp_path / "intesis-ac.toml").write_text(INTESIS_AC, encoding="utf-8")
    profile = load_profiles([tmp_path])["intesis-ac"]
    world = FakeWorld({ROOM: -5.3})
    server = serve(ac_device("intesis-ac"), clock, profile=profile)
    ac = SimAirConditioner(server, world, ROOM, clock)
    async with server, client_of(server) as client:
        # Off; the vendor's code 4 for cool; 26 whole degrees; -5 °C; no fault.
        assert (await client.read_holding_registers(1, count=2)).registers == [0, 4]
        assert (await client.read_holding_registers(4, count=3)).registers == [26, 0xFFFB, 0]
        for address in (0, 3, 7):
            assert exception_code(await client.read_holding_registers(address)) == 2
        assert exception_code(await client.read_input_registers(0)) == 2
        # Heat is the vendor's code 1; the unit acts on it at its next tick.
        for address, value in ((1, 1), (2, 1), (4, 22)):
            assert not (await client.write_register(address, value)).isError()
        await clock.advance(1)
        assert world.last("ac-1") == Hvac(power=True, mode="heat", setpoint=22.0)
        # The room temperature is read-only, and 7 is no mode of this vendor's.
        assert exception_code(await client.write_register(5, 20)) == 2
        assert exception_code(await client.write_register(2, 7)) == 3
        ac.inject_fault(3)
        assert (await client.read_holding_registers(6)).registers == [3]


async def test_a_bare_server_starts_with_values_its_profile_gives_a_meaning(
    tmp_path: Path, clock: VirtualClock
) -> None:
    (tmp_path / "intesis-ac.toml").write_text(INTESIS_AC, encoding="utf-8")
    intesis = load_profiles([tmp_path])["intesis-ac"]
    generic, vendor = serve(ac_device(), clock), serve(ac_device(), clock, profile=intesis)
    async with generic, vendor, client_of(generic) as client, client_of(vendor) as other:
        # Raw zeros except the setpoint: 0 °C is outside 16..30, so it starts at 16.
        assert (await client.read_holding_registers(0, count=4)).registers == [0, 0, 160, 0]
        assert (await other.read_holding_registers(4)).registers == [16]
    assert generic.get("mode") == "auto"


async def test_unit_ids_other_than_the_devices_get_a_gateway_exception(
    clock: VirtualClock,
) -> None:
    server = serve(ac_device(unit=7), clock)
    async with server, client_of(server) as client:
        assert not (await client.read_holding_registers(0, device_id=7)).isError()
        assert exception_code(await client.read_holding_registers(0, device_id=1)) == 11
        assert exception_code(await client.write_register(0, 1, device_id=1)) == 11
        assert server.get("power") is False


# -- writes ----------------------------------------------------------------------------


async def test_client_writes_reach_the_behaviour_in_physical_units(clock: VirtualClock) -> None:
    recorder = Recorder()
    server = serve(ac_device(), clock, behaviour=recorder)
    async with server, client_of(server) as client:
        assert not (await client.write_registers(0, [1, 4, 300, 2])).isError()
        assert recorder.writes == [
            ("power", None, True),
            ("mode", None, "dry"),
            ("setpoint", None, 30.0),
            ("fan", None, "medium"),
        ]
        # 30.1 °C is above the profile's maximum: refused whole, nothing changes.
        assert exception_code(await client.write_registers(2, [301, 1])) == 3
        assert len(recorder.writes) == 4
        assert server.get_raw("holding", 2, 2) == [300, 2]
        assert server.writes == 2


async def test_coil_writes_reach_the_behaviour_per_compartment(clock: VirtualClock) -> None:
    recorder = Recorder()
    server = serve(cabinet_device(), clock, behaviour=recorder)
    async with server, client_of(server) as client:
        assert not (await client.write_coils(2, [True, False])).isError()
        assert recorder.writes == [("unlock", 2, True), ("unlock", 3, False)]
        assert server.pulses == [2]
        # Door contacts are inputs: Modbus has no way to write them.
        assert server.get("door_open", 2) is False


# -- the cabinet -----------------------------------------------------------------------


async def test_unlock_pulses_and_a_visit_deposits_then_picks_up(clock: VirtualClock) -> None:
    server = serve(cabinet_device(), clock)
    SimCabinet(server, clock)
    async with server, client_of(server) as client:
        assert not (await client.write_coil(3, True)).isError()
        assert (await client.read_coils(3)).bits[0] is True  # still within the pulse
        assert (await client.read_discrete_inputs(3)).bits[0] is True  # door open
        await clock.advance(0.5)
        assert (await client.read_coils(3)).bits[0] is False  # the board reset it
        await clock.advance(7.25)
        assert (await client.read_discrete_inputs(3)).bits[0] is True
        await clock.advance(0.25)  # 8 s after the unlock
        assert (await client.read_discrete_inputs(3)).bits[0] is False
        assert (await client.read_discrete_inputs(103)).bits[0] is True  # a deposit

        await client.write_coil(3, True)
        await clock.advance(8)
        assert (await client.read_discrete_inputs(3)).bits[0] is False
        assert (await client.read_discrete_inputs(103)).bits[0] is False  # a pickup
        doors = await client.read_discrete_inputs(0, count=24)
        items = await client.read_discrete_inputs(100, count=24)
        assert not any(doors.bits[:24])
        assert not any(items.bits[:24])


async def test_cabinet_test_hooks_change_one_compartments_story(clock: VirtualClock) -> None:
    server = serve(cabinet_device(), clock)
    cabinet = SimCabinet(server, clock, door_close_after=8)
    cabinet.hold_door(1)
    cabinet.put_item(2)
    cabinet.leave_item(2)
    cabinet.deposit_nothing(4)
    async with server, client_of(server) as client:
        for compartment in (1, 2, 4):
            await client.write_coil(compartment, True)
        cabinet.force_open(6)
        assert (await client.read_coils(6)).bits[0] is False  # no pulse for a forced door
        assert (await client.read_discrete_inputs(6)).bits[0] is True
        await clock.advance(60)
        doors = (await client.read_discrete_inputs(0, count=8)).bits[:8]
        items = (await client.read_discrete_inputs(100, count=8)).bits[:8]
        assert doors == [i == 1 for i in range(8)]  # held open
        assert items == [i in (2, 6) for i in range(8)]  # 2 left in place, 4 left empty
        cabinet.close_door(1)
        assert cabinet.door_open(1) is False
        assert cabinet.item_present(1) is True  # the held visit deposited on closing


# -- the air conditioner ---------------------------------------------------------------


async def test_ac_reports_to_the_world_and_reads_the_room_back(clock: VirtualClock) -> None:
    world = FakeWorld({ROOM: 28.0})
    server = serve(ac_device(), clock)
    SimAirConditioner(server, world, ROOM, clock)
    async with server, client_of(server) as client:
        await clock.advance(0)
        assert world.reports == [(ROOM, "ac-1", None)]  # off at start
        await client.write_registers(0, [1, 1, 240])  # on, cool, 24.0 °C
        await clock.advance(1)
        assert world.last("ac-1") == Hvac(power=True, mode="cool", setpoint=24.0)
        for temperature, word in ((27.46, 275), (95.0, 800), (-60.0, 0x10000 - 400)):
            world.temperatures[ROOM] = temperature
            await clock.advance(1)
            assert (await client.read_input_registers(0)).registers == [word]
        reports = len(world.reports)
        await clock.advance(5)
        assert len(world.reports) == reports  # reports changes, not every tick
        await client.write_register(0, 0)
        await clock.advance(1)
        assert world.last("ac-1") is None
    assert world.last("ac-1") is None


async def test_an_injected_fault_shows_and_stops_the_unit(clock: VirtualClock) -> None:
    world = FakeWorld()
    server = serve(ac_device(), clock)
    ac = SimAirConditioner(server, world, ROOM, clock)
    async with server, client_of(server) as client:
        await client.write_register(0, 1)
        await clock.advance(1)
        assert world.last("ac-1") == Hvac(power=True, mode="cool", setpoint=26.0)
        ac.inject_fault(7)
        assert (await client.read_input_registers(1)).registers == [7]
        assert world.last("ac-1") is None
        assert (await client.read_holding_registers(0)).registers == [1]  # still switched on
        ac.clear_fault()
        assert (await client.read_input_registers(1)).registers == [0]
        assert world.last("ac-1") == Hvac(power=True, mode="cool", setpoint=26.0)


# -- fault switches --------------------------------------------------------------------


async def test_dead_refuses_connections_and_comes_back_on_the_same_port(
    clock: VirtualClock,
) -> None:
    server = serve(ac_device(), clock)
    async with server:
        port = server.port
        async with client_of(server) as client:
            await server.set_dead(True)
            assert server.connections == 0
            assert await refused(port)
            await wait_until(lambda: not client.connected, message="the client noticing")
            with pytest.raises(ModbusException):
                await client.read_holding_registers(0)
        await server.set_dead(False)
        assert server.port == port
        async with client_of(server) as client:
            assert (await client.read_holding_registers(2)).registers == [160]
    assert await refused(port)
    assert server.connections == 0


async def test_silent_reads_requests_but_never_answers(clock: VirtualClock) -> None:
    server = serve(ac_device(), clock)
    async with server, client_of(server, timeout=0.3) as client:
        server.set_silent(True)
        with pytest.raises(ModbusIOException):
            await client.read_holding_registers(0, count=4)
        assert server.requests == 1
        server.set_silent(False)
        assert not (await client.read_holding_registers(0, count=4)).isError()


async def test_delay_is_simulated_time_on_the_injected_clock(clock: VirtualClock) -> None:
    server = serve(ac_device(), clock)
    server.set_delay(3.0)
    async with server:
        async with client_of(server, timeout=0.3) as impatient:
            with pytest.raises(ModbusIOException):
                await impatient.read_holding_registers(0)  # the clock never moved
        async with client_of(server, timeout=5) as client:

            async def read_four() -> ModbusPDU:
                return await client.read_holding_registers(0, count=4)

            read = asyncio.create_task(read_four())
            await wait_until(lambda: server.requests == 2, message="the request")
            await clock.advance(2.5)
            assert not read.done()
            await clock.advance(0.5)
            response = await asyncio.wait_for(read, 5)
            assert response.registers == [0, 0, 160, 0]


async def test_exception_answers_every_request_with_the_code(clock: VirtualClock) -> None:
    server = serve(ac_device(), clock)
    async with server, client_of(server) as client:
        server.set_exception(4)
        assert exception_code(await client.read_holding_registers(0)) == 4
        assert exception_code(await client.write_register(0, 1)) == 4
        assert server.get("power") is False
        server.set_exception(None)
        assert not (await client.write_register(0, 1)).isError()
        assert server.get("power") is True


# -- a site's worth --------------------------------------------------------------------

SITE = """
[site]
id = "test"
name = "Test center"
hours = { open = "08:00", close = "20:00" }

[[rooms]]
id = "hall"
name = "Hall"

[[rooms]]
id = "lobby"
name = "Lobby"

[[devices]]
id = "ac-hall"
kind = "air_conditioner"
room = "hall"
host = "127.0.0.1"
port = 5020
profile = "generic-ac"

[[devices]]
id = "ac-lobby"
kind = "air_conditioner"
room = "lobby"
host = "127.0.0.1"
port = 5021
profile = "generic-ac"

[[devices]]
id = "cabinet-1"
kind = "document_cabinet"
room = "lobby"
host = "127.0.0.1"
port = 5022
profile = "generic-cabinet-24"
compartments = 12

[[devices]]
id = "occ-hall"
kind = "occupancy"
room = "hall"
"""


async def test_the_factory_builds_every_modbus_device_with_its_faults(
    clock: VirtualClock,
) -> None:
    site = parse_site(SITE)
    world = FakeWorld({"hall": 25.0, "lobby": 19.5})
    faults = Faults(
        dead=frozenset({"ac-lobby", "occ-hall"}),
        slow=frozenset({"ac-hall"}),
        exception=frozenset({"cabinet-1"}),
    )
    sims = modbus_simulators(site, PROFILES, world, clock, faults, port_for=lambda _: 0)
    assert set(sims.devices) == {"ac-hall", "ac-lobby", "cabinet-1"}
    assert isinstance(sims.air_conditioner("ac-hall"), SimAirConditioner)
    assert sims.cabinet("cabinet-1").compartments == 12
    assert sims.server("ac-lobby").get("room_temperature") == 19.5

    running = asyncio.create_task(sims.run())
    hall, lobby, cabinet = (sims.server(i) for i in ("ac-hall", "ac-lobby", "cabinet-1"))
    await wait_until(lambda: hall.listening and cabinet.listening, message="listening")
    assert lobby.dead
    assert await refused(lobby.port)
    assert hall.delay == 1.5  # 1.5 x its 1 s timeout
    async with client_of(cabinet) as client:
        assert exception_code(await client.read_coils(0)) == 4

    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert not hall.listening
    assert not cabinet.listening
    assert await refused(hall.port)


def test_the_factory_refuses_two_devices_on_one_port(clock: VirtualClock) -> None:
    with pytest.raises(ValueError, match="both at port 5020"):
        modbus_simulators(parse_site(SITE), PROFILES, FakeWorld(), clock, port_for=lambda _: 5020)
