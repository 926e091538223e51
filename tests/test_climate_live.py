"""The climate controller against a real Modbus air conditioner, on the system clock.

The real :class:`~controller.modbus_poller.ModbusDevices` poller talks Modbus
TCP on loopback to the project's pymodbus simulator of the ``generic-ac``
profile (a :class:`~simulators.modbus_server.ModbusDeviceServer` with a
:class:`~simulators.modbus_devices.SimAirConditioner`), and a real
:class:`~controller.climate.ClimateController` runs the rule with short
settings (poll 200 ms, empty off after 1 s, minimum off time 2 s). What the
rule decides is read back from the simulator's holding registers 0..2, as the
unit itself holds them. The room's sensors are put on the bus as the MQTT
ingest would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from controller.alarms import AlarmBook, AlarmState
from controller.bus import EventBus
from controller.climate import ClimateController
from controller.clock import SystemClock
from controller.database import open_database
from controller.event_log import EventLog
from controller.events import ReadingReceived
from controller.modbus_poller import ModbusDevices
from controller.readings import ClimateReading, OccupancyReading, Reading
from controller.site import Site, parse_site
from controller.state import LiveState
from drivers.modbus_profile import load_profiles
from simulators.modbus_devices import AcSettings, SimAirConditioner
from simulators.modbus_server import ModbusDeviceServer
from simulators.world import Hvac
from tests.conftest import wait_until

AC = "ac-love-room"
ROOM = "love-room"
MIN_OFF = 2.0


def live_site(port: int) -> Site:
    return parse_site(
        f"""
[site]
id = "climate-live"
name = "Climate live test"
hours = {{ open = "08:30", close = "21:00" }}

[rules.climate]
empty_off_after = "1s"
min_off = "{MIN_OFF:g}s"

[[rooms]]
id = "love-room"
name = "Love room"
capacity = 12
always_open = true

[[devices]]
id = "occ-love-room"
kind = "occupancy"
room = "love-room"
interval = "30s"

[[devices]]
id = "temp-love-room"
kind = "climate"
room = "love-room"
interval = "60s"

[[devices]]
id = "temp-outdoor"
kind = "climate"
interval = "60s"

[[devices]]
id = "ac-love-room"
kind = "air_conditioner"
room = "love-room"
protocol = "modbus"
host = "127.0.0.1"
port = {port}
profile = "generic-ac"
poll = "200ms"
timeout = "100ms"
"""
    )


@dataclass
class StillRoom:
    """A room whose air stays as the test sets it; it remembers what the unit does."""

    temperature: float = 27.0
    hvac: list[Hvac | None] = field(default_factory=list)

    def outdoor_temperature(self) -> float:
        return 28.0

    def occupants(self, room_id: str) -> int:
        return 0

    def room_temperature(self, room_id: str) -> float:
        return self.temperature

    def set_hvac(self, room_id: str, source_id: str, hvac: Hvac | None) -> None:
        self.hvac.append(hvac)


@dataclass
class LiveRig:
    server: ModbusDeviceServer
    unit: SimAirConditioner
    climate: ClimateController
    devices: ModbusDevices
    events: EventLog
    alarms: AlarmBook
    bus: EventBus
    clock: SystemClock
    # (monotonic time, point, value) of every write the unit received
    writes: list[tuple[float, str, object]]

    def report(self, device_id: str, reading: Reading) -> None:
        self.bus.publish(ReadingReceived(device_id, reading, self.clock.now()))

    def polls(self) -> int:
        polls: int = self.devices.status()["devices"][AC]["polls"]
        return polls

    def causes(self) -> list[str]:
        return [event.details["cause"] for event in self.events.query(kind="ac_command")]

    def registers(self) -> list[int]:
        return [int(value) for value in self.server.get_raw("holding", 0, 3)]

    def power_writes(self) -> list[tuple[float, bool]]:
        return [(at, bool(value)) for at, name, value in self.writes if name == "power"]


@asynccontextmanager
async def live_rig(tmp_path: Path) -> AsyncIterator[LiveRig]:
    profiles = load_profiles()
    clock = SystemClock(ZoneInfo("Asia/Shanghai"))
    draft = live_site(1).device_by_id[AC]
    server = ModbusDeviceServer(draft, profiles["generic-ac"], port=0, clock=clock)
    unit = SimAirConditioner(
        server,
        StillRoom(),
        ROOM,
        clock,
        initial=AcSettings(power=False, mode="auto", setpoint=24.0),
        tick=0.1,
    )
    writes: list[tuple[float, str, object]] = []
    server.on_write = lambda name, index, value: writes.append((time.monotonic(), name, value))
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(server)
        site = live_site(server.port)
        bus = EventBus()
        state = LiveState(site, bus)
        db = open_database(tmp_path)
        stack.callback(db.close)
        events = EventLog(db, clock)
        alarms = AlarmBook(db, events, clock)
        devices = ModbusDevices(site, profiles, bus, clock, backoff_max=1.0)
        climate = ClimateController(
            site, state, bus, clock, db=db, events=events, alarms=alarms, writer=devices
        )
        state.start()
        stack.callback(state.stop)
        climate.start()
        stack.callback(climate.stop)
        tasks = [
            asyncio.create_task(devices.run(), name="modbus"),
            asyncio.create_task(climate.run(), name="climate"),
        ]
        try:
            yield LiveRig(server, unit, climate, devices, events, alarms, bus, clock, writes)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def test_the_units_registers_end_up_as_the_rule_says(tmp_path: Path) -> None:
    async with live_rig(tmp_path) as rig:
        rig.report("temp-outdoor", ClimateReading(temperature=28.0))
        rig.report("temp-love-room", ClimateReading(temperature=27.5))
        rig.report("occ-love-room", OccupancyReading(True, 2))

        # power on, mode cool (1), setpoint 26.0 °C (260)
        await wait_until(lambda: rig.registers() == [1, 1, 260], message="cooling to 26 °C")
        assert rig.unit.hvac == Hvac(power=True, mode="cool", setpoint=26.0)

        rig.report("occ-love-room", OccupancyReading(False, 0))
        emptied = time.monotonic()
        await wait_until(lambda: rig.registers()[0] == 0, message="off once empty for 1 s")
        off_at = rig.power_writes()[-1][0]
        assert 1.0 - 0.01 <= off_at - emptied < 1.5  # empty_off_after, then at once
        assert rig.registers() == [0, 1, 260]  # off keeps mode and setpoint
        assert rig.causes() == ["occupied_hot", "empty"]

        # Nothing more is sent once the unit is as the rule wants: three more polls.
        count, polls = len(rig.writes), rig.polls()
        await wait_until(lambda: rig.polls() >= polls + 3, message="three more polls")
        assert len(rig.writes) == count
        assert rig.causes() == ["occupied_hot", "empty"]


async def test_the_compressor_rests_min_off_after_any_switch_off(tmp_path: Path) -> None:
    async with live_rig(tmp_path) as rig:
        rig.report("temp-outdoor", ClimateReading(temperature=28.0))
        rig.report("temp-love-room", ClimateReading(temperature=27.5))
        rig.report("occ-love-room", OccupancyReading(True, 2))
        await wait_until(lambda: rig.registers() == [1, 1, 260], message="cooling")

        # The rule switches it off (empty), and a rider is back at once: it waits.
        rig.report("occ-love-room", OccupancyReading(False, 0))
        await wait_until(lambda: rig.registers()[0] == 0, message="off once empty")
        rig.report("occ-love-room", OccupancyReading(True, 1))
        await wait_until(lambda: rig.registers()[0] == 1, timeout=5.0, message="on again")
        (off, was_off), (on, was_on) = rig.power_writes()[-2:]
        assert (was_off, was_on) == (False, True)
        assert MIN_OFF - 0.01 <= on - off < MIN_OFF + 1.0

        # Someone switches it off with the remote: the same rest from when it was seen.
        rig.server.set("power", False)
        by_hand = time.monotonic()
        await wait_until(lambda: rig.registers()[0] == 1, timeout=5.0, message="on after rest")
        restarted = rig.power_writes()[-1][0]
        assert MIN_OFF - 0.01 <= restarted - by_hand < MIN_OFF + 1.0


async def test_a_fault_code_raises_ac_fault_and_clears(tmp_path: Path) -> None:
    async with live_rig(tmp_path) as rig:
        await wait_until(lambda: rig.climate.entry(AC)["online"] is True, message="first poll")

        rig.unit.inject_fault(9)
        alarm = await wait_until(
            lambda: next(iter(rig.alarms.query(kind="ac_fault", state=AlarmState.ACTIVE)), None),
            message="ac_fault",
        )
        assert alarm.source == AC
        assert alarm.device == AC
        assert alarm.room == ROOM
        assert dict(alarm.details) == {"code": 9}
        assert "9" in alarm.message

        rig.unit.clear_fault()
        await wait_until(
            lambda: not rig.alarms.is_active("ac_fault", AC), message="ac_fault cleared"
        )
        cleared = rig.alarms.get(alarm.id)
        assert cleared is not None
        assert cleared.state is AlarmState.CLEARED
