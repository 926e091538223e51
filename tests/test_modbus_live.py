"""The Modbus poller against the project's own pymodbus device servers on loopback.

Every test talks real Modbus TCP: the simulators serve the same profiles the
controller reads, so an address or scale mistake on either side fails here.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller.bus import EventBus
from controller.clock import SystemClock
from controller.events import (
    AvailabilityChanged,
    BadPayload,
    CommandUnconfirmed,
    ReadingReceived,
)
from controller.modbus_poller import ModbusDevices, PointWrite, WriteFailed
from controller.readings import AcMode, AirConditionerReading, CabinetReading, FanSpeed
from controller.site import Site, parse_site
from drivers.modbus_profile import Profile, load_profiles
from simulators.modbus_server import ModbusDeviceServer
from tests.conftest import Broker, Probe, controller_settings, start_controller, wait_until
from tests.drivers.test_modbus_profile import INTESIS_AC

POLL = 0.2
TIMEOUT = 0.1


def site_with(devices: Sequence[dict[str, Any]], *, missed: int = 3) -> Site:
    lines = [
        "[site]",
        'id = "modbus-test"',
        'name = "Modbus test"',
        'hours = { open = "08:30", close = "21:00" }',
        "[rules]",
        f"offline_after_missed = {missed}",
        "[[rooms]]",
        'id = "love-room"',
        'name = "Love room"',
        "capacity = 12",
        "[[rooms]]",
        'id = "hall"',
        'name = "Hall"',
        "capacity = 80",
        "[[rooms]]",
        'id = "self-service"',
        'name = "Self service"',
        "capacity = 20",
    ]
    for device in devices:
        lines.append("[[devices]]")
        for key, value in device.items():
            lines.append(f"{key} = {value!r}" if isinstance(value, int) else f'{key} = "{value}"')
    return parse_site("\n".join(lines))


def ac(
    device_id: str,
    port: int,
    *,
    room: str = "love-room",
    profile: str = "generic-ac",
    poll: float = POLL,
    timeout: float = TIMEOUT,
) -> dict[str, Any]:
    return {
        "id": device_id,
        "kind": "air_conditioner",
        "room": room,
        "protocol": "modbus",
        "host": "127.0.0.1",
        "port": port,
        "profile": profile,
        "poll": f"{round(poll * 1000)}ms",
        "timeout": f"{round(timeout * 1000)}ms",
    }


def cabinet(device_id: str, port: int) -> dict[str, Any]:
    return {
        "id": device_id,
        "kind": "document_cabinet",
        "room": "self-service",
        "protocol": "modbus",
        "host": "127.0.0.1",
        "port": port,
        "profile": "generic-cabinet-24",
        "poll": f"{round(POLL * 1000)}ms",
        "timeout": f"{round(TIMEOUT * 1000)}ms",
    }


@dataclass
class Recorder:
    """Everything the poller put on the bus, with the monotonic time it arrived."""

    readings: list[tuple[float, ReadingReceived]] = field(default_factory=list)
    availability: list[AvailabilityChanged] = field(default_factory=list)
    bad: list[BadPayload] = field(default_factory=list)
    unconfirmed: list[CommandUnconfirmed] = field(default_factory=list)

    def attach(self, bus: EventBus) -> None:
        bus.subscribe(ReadingReceived, lambda e: self.readings.append((time.monotonic(), e)))
        bus.subscribe(AvailabilityChanged, self.availability.append)
        bus.subscribe(BadPayload, self.bad.append)
        bus.subscribe(CommandUnconfirmed, self.unconfirmed.append)

    def latest(self, device_id: str) -> Any:
        for _, event in reversed(self.readings):
            if event.device_id == device_id:
                return event.reading
        return None

    def arrivals(self, device_id: str) -> list[float]:
        return [at for at, event in self.readings if event.device_id == device_id]

    def online(self, device_id: str) -> bool | None:
        states = [e.online for e in self.availability if e.device_id == device_id]
        return states[-1] if states else None


@dataclass
class Rig:
    devices: ModbusDevices
    recorder: Recorder
    servers: dict[str, ModbusDeviceServer]


@asynccontextmanager
async def rig(
    specs: Sequence[Callable[[int], dict[str, Any]]],
    *,
    profiles: dict[str, Profile] | None = None,
    missed: int = 3,
    backoff_max: float = 1.0,
) -> AsyncIterator[Rig]:
    """Start a device server per spec on a free port, then the poller against them."""
    profiles = profiles or load_profiles()
    clock = SystemClock()
    async with AsyncExitStack() as stack:
        servers: dict[str, ModbusDeviceServer] = {}
        device_specs = []
        for make in specs:
            draft = site_with([make(1)], missed=missed).devices[0]
            server = ModbusDeviceServer(draft, profiles[str(draft.profile)], port=0, clock=clock)
            await stack.enter_async_context(server)
            servers[draft.id] = server
            device_specs.append(make(server.port))
        site = site_with(device_specs, missed=missed)
        bus = EventBus()
        recorder = Recorder()
        recorder.attach(bus)
        devices = ModbusDevices(site, profiles, bus, clock, backoff_max=backoff_max)
        task = asyncio.create_task(devices.run())
        try:
            yield Rig(devices, recorder, servers)
        finally:
            task.cancel()
            started = time.monotonic()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - started < 1.0, "the poller must stop promptly"


# -- reading ---------------------------------------------------------------------


async def test_ac_registers_arrive_scaled_signed_and_decoded() -> None:
    async with rig([lambda port: ac("ac-1", port)]) as r:
        server = r.servers["ac-1"]
        server.set("power", True)
        server.set("mode", "heat")
        server.set("setpoint", 20.5)
        server.set("fan", "low")
        server.set("room_temperature", -3.2)
        server.set("fault", 0)
        expected = AirConditionerReading(
            power=True,
            mode=AcMode.HEAT,
            setpoint=20.5,
            fan=FanSpeed.LOW,
            room_temperature=-3.2,
            fault=0,
        )
        await wait_until(lambda: r.recorder.latest("ac-1") == expected, message="AC reading")
        assert r.recorder.online("ac-1") is True
        # holding 0..3 and input 0..1: two requests per poll, never one per register
        polls = r.devices.status()["devices"]["ac-1"]["polls"]
        assert server.requests <= 2 * polls + 2


async def test_a_code_the_profile_does_not_know_reads_as_unknown_and_is_reported() -> None:
    async with rig([lambda port: ac("ac-1", port)]) as r:
        r.servers["ac-1"].set("setpoint", 26.0)
        r.servers["ac-1"].set_raw("holding", 1, [9])  # mode 9: not in the map
        await wait_until(lambda: r.recorder.bad, message="bad payload event")
        reading = r.recorder.latest("ac-1")
        assert isinstance(reading, AirConditionerReading)
        assert reading.mode is None
        assert reading.setpoint == 26.0
        assert "mode: code 9" in r.recorder.bad[0].detail


async def test_cabinet_doors_and_items_per_compartment() -> None:
    async with rig([lambda port: cabinet("cabinet-1", port)]) as r:
        server = r.servers["cabinet-1"]
        server.set("item_present", True, index=23)
        server.set("door_open", True, index=4)

        def seen() -> bool:
            reading = r.recorder.latest("cabinet-1")
            return (
                isinstance(reading, CabinetReading)
                and reading.items_present[23]
                and reading.doors_open[4]
            )

        await wait_until(seen, message="cabinet reading")
        reading = r.recorder.latest("cabinet-1")
        assert len(reading.doors_open) == len(reading.items_present) == 24
        assert sum(reading.doors_open) == 1
        assert sum(reading.items_present) == 1


async def test_a_second_ac_profile_works_from_its_data_file_alone(tmp_path: Path) -> None:
    (tmp_path / "intesis-ac.toml").write_text(INTESIS_AC, encoding="utf-8")
    profiles = load_profiles([tmp_path])
    async with rig([lambda port: ac("ac-2", port, profile="intesis-ac")], profiles=profiles) as r:
        server = r.servers["ac-2"]
        server.set("power", True)
        server.set("mode", "cool")
        server.set("setpoint", 24)
        server.set("room_temperature", 31)
        assert server.get_raw("holding", 2, 1) == [4]  # the vendor's own code for cool
        expected = AirConditionerReading(
            power=True, mode=AcMode.COOL, setpoint=24.0, room_temperature=31.0, fault=0
        )
        await wait_until(lambda: r.recorder.latest("ac-2") == expected, message="vendor AC")
        await r.devices.write("ac-2", [PointWrite("setpoint", 27), PointWrite("mode", "heat")])
        assert server.get_raw("holding", 2, 1) == [1]
        assert server.get_raw("holding", 4, 1) == [27]


# -- writing ---------------------------------------------------------------------


async def test_a_write_is_confirmed_and_the_new_state_follows_at_once() -> None:
    async with rig([lambda port: ac("ac-1", port, poll=5.0, timeout=0.5)]) as r:
        await wait_until(lambda: r.recorder.latest("ac-1") is not None, message="first poll")
        count = len(r.recorder.readings)
        await r.devices.write(
            "ac-1",
            [PointWrite("power", True), PointWrite("mode", "cool"), PointWrite("setpoint", 25.0)],
        )
        server = r.servers["ac-1"]
        assert server.get("power") is True
        assert server.get("mode") == "cool"
        assert server.get("setpoint") == 25.0
        # The fresh reading came right after the write, not at the next 5 s poll.
        await wait_until(lambda: len(r.recorder.readings) > count, timeout=1.0, message="re-poll")
        reading = r.recorder.latest("ac-1")
        assert (reading.power, reading.mode, reading.setpoint) == (True, AcMode.COOL, 25.0)
        assert r.recorder.unconfirmed == []


async def test_bad_writes_are_refused_before_anything_is_sent() -> None:
    async with rig([lambda port: ac("ac-1", port)]) as r:
        await wait_until(lambda: r.recorder.latest("ac-1") is not None, message="first poll")
        before = r.servers["ac-1"].writes
        with pytest.raises(ValueError, match="setpoint must be within"):
            await r.devices.write("ac-1", [PointWrite("setpoint", 40.0)])
        with pytest.raises(ValueError, match="no Modbus device"):
            await r.devices.write("ac-9", [PointWrite("power", True)])
        assert r.servers["ac-1"].writes == before


async def test_a_write_the_device_does_not_keep_raises_an_alarm() -> None:
    async with rig([lambda port: ac("ac-1", port)]) as r:
        server = r.servers["ac-1"]
        await wait_until(lambda: r.recorder.latest("ac-1") is not None, message="first poll")
        # The device acknowledges the write but keeps its own setpoint (a clamp).
        server.on_write = lambda name, index, value: server.set("setpoint", 26.0)
        with pytest.raises(WriteFailed, match="setpoint reads back 260, wrote 220"):
            await r.devices.write("ac-1", [PointWrite("setpoint", 22.0)])
        (alarm,) = r.recorder.unconfirmed
        assert alarm.device_id == "ac-1"
        assert alarm.command == "setpoint=22.0"
        assert alarm.attempts == 3


async def test_a_write_to_a_device_that_refuses_raises_an_alarm() -> None:
    async with rig([lambda port: ac("ac-1", port)]) as r:
        await wait_until(lambda: r.recorder.latest("ac-1") is not None, message="first poll")
        r.servers["ac-1"].set_exception(4)
        with pytest.raises(WriteFailed, match="device failure"):
            await r.devices.write("ac-1", [PointWrite("power", True)])
        assert [alarm.command for alarm in r.recorder.unconfirmed] == ["power=true"]


async def test_a_write_waits_only_for_the_request_in_flight() -> None:
    # Every answer takes 60 ms; polls are due back to back. A write queued behind
    # polls would wait for several; ours waits for at most the one in flight, then
    # its own write and read-back.
    delay = 0.06
    async with rig([lambda port: ac("ac-1", port, poll=0.1, timeout=0.09)]) as r:
        await wait_until(lambda: r.recorder.latest("ac-1") is not None, message="first poll")
        r.servers["ac-1"].set_delay(delay)
        await wait_until(lambda: r.servers["ac-1"].in_flight, message="a request in flight")
        started = time.monotonic()
        await r.devices.write("ac-1", [PointWrite("power", True)])
        took = time.monotonic() - started
        assert took < 4 * delay + 0.1, f"write took {took:.3f} s"


async def test_pulsing_a_cabinet_compartment_is_confirmed_by_its_echo() -> None:
    async with rig([lambda port: cabinet("cabinet-1", port)]) as r:
        await wait_until(lambda: r.recorder.latest("cabinet-1") is not None, message="first poll")
        await r.devices.write("cabinet-1", [PointWrite("unlock", True, index=7)])
        assert r.servers["cabinet-1"].pulses == [7]


# -- failures --------------------------------------------------------------------


async def test_a_dead_device_does_not_delay_a_live_one() -> None:
    async with rig([lambda port: ac("ac-live", port), lambda port: ac("ac-dead", port)]) as r:
        await wait_until(lambda: r.recorder.latest("ac-dead") is not None, message="first poll")
        r.servers["ac-dead"].set_silent(True)  # every request times out
        await wait_until(lambda: r.recorder.online("ac-dead") is False, message="dead offline")
        start = len(r.recorder.arrivals("ac-live"))
        await wait_until(
            lambda: len(r.recorder.arrivals("ac-live")) >= start + 15, timeout=10, message="polls"
        )
        arrivals = r.recorder.arrivals("ac-live")[start:]
        intervals = [b - a for a, b in itertools.pairwise(arrivals)]
        mean = sum(intervals) / len(intervals)
        assert abs(mean - POLL) < 0.1 * POLL, f"mean interval {mean:.3f} s"
        assert max(intervals) < POLL + TIMEOUT, f"longest interval {max(intervals):.3f} s"
        assert r.recorder.online("ac-live") is True


async def test_offline_after_missed_polls_and_online_on_the_first_good_one() -> None:
    async with rig([lambda port: ac("ac-1", port)], missed=3, backoff_max=0.4) as r:
        await wait_until(lambda: r.recorder.online("ac-1") is True, message="online")
        server = r.servers["ac-1"]
        failures_before = r.devices.status()["devices"]["ac-1"]["failures"]
        await server.set_dead(True)
        await wait_until(lambda: r.recorder.online("ac-1") is False, message="offline")
        status = r.devices.status()["devices"]["ac-1"]
        assert status["failures"] - failures_before == 3
        assert "connect" in status["last_error"]
        assert r.devices.status()["offline"] == ["ac-1"]
        await server.set_dead(False)
        await wait_until(lambda: r.recorder.online("ac-1") is True, timeout=3, message="back")
        assert r.devices.status()["devices"]["ac-1"]["consecutive_failures"] == 0


async def test_a_modbus_exception_counts_as_a_failed_poll_with_its_reason() -> None:
    async with rig([lambda port: ac("ac-1", port)]) as r:
        await wait_until(lambda: r.recorder.online("ac-1") is True, message="online")
        r.servers["ac-1"].set_exception(4)
        await wait_until(lambda: r.recorder.online("ac-1") is False, message="offline")
        assert "device failure" in r.devices.status()["devices"]["ac-1"]["last_error"]
        r.servers["ac-1"].set_exception(None)
        await wait_until(lambda: r.recorder.online("ac-1") is True, timeout=3, message="back")


async def test_an_offline_device_is_retried_with_capped_backoff() -> None:
    async with rig([lambda port: ac("ac-1", port)], missed=2, backoff_max=0.8) as r:
        await wait_until(lambda: r.recorder.online("ac-1") is True, message="online")
        server = r.servers["ac-1"]
        server.set_silent(True)
        await wait_until(lambda: r.recorder.online("ac-1") is False, message="offline")
        seen = server.requests
        started = time.monotonic()
        await wait_until(lambda: server.requests >= seen + 4, timeout=5, message="4 retries")
        took = time.monotonic() - started
        # Without backoff 4 more tries take 0.8 s (one per 0.2 s poll). With it the
        # waits are 0.2, 0.4, 0.8 and then 0.8 again (the cap): at least 1.4 s in all.
        assert took > 1.4, f"4 retries in {took:.2f} s"
        assert took < 3.0, f"4 retries in {took:.2f} s: the cap did not hold"


# -- through the whole controller ----------------------------------------------------


@pytest.mark.broker
async def test_an_unconfirmed_write_is_an_alarm_on_the_events_topic_and_in_the_alarm_list(
    broker: Broker, probe: Probe
) -> None:
    profiles = load_profiles()
    draft = site_with([ac("ac-1", 1)]).devices[0]
    async with ModbusDeviceServer(
        draft, profiles["generic-ac"], port=0, clock=SystemClock()
    ) as server:
        site = site_with([ac("ac-1", server.port)])
        controller = await start_controller(controller_settings(broker), site)
        try:
            events = f"center/{site.site.id}/events"
            probe.subscribe(events)
            await wait_until(
                lambda: controller.service.state.device("ac-1").online is True, message="online"
            )
            server.on_write = lambda name, index, value: server.set("power", False)
            with pytest.raises(WriteFailed):
                await controller.service.modbus.write("ac-1", [PointWrite("power", True)])
            body = await probe.next_payload(
                events, lambda payload: b"command_unconfirmed" in payload
            )
            event = json.loads(body)
            assert event["device"] == "ac-1"
            assert event["details"]["command"] == "power=true"
            assert event["severity"] == "alarm"
            assert event["state"] == "active"
            alarms = controller.service.alarms.query(kind="command_unconfirmed")
            assert [(alarm.device, alarm.state) for alarm in alarms] == [("ac-1", "active")]
            assert controller.service.health()["alarms"]["active"] == 1
        finally:
            await controller.shutdown()


async def test_the_modbus_poller_stops_even_when_cancelled_as_an_answer_arrives() -> None:
    """Stopping the controller cancels ``ModbusDevices.run()``, which must then end.

    On Python 3.11, ``asyncio.wait_for`` returns the result instead of raising
    when its future completes in the same loop turn as the cancellation, and
    pymodbus waits for every answer that way. ``ModbusConnection.read`` then
    returns normally with the task still cancelling, the hub goes on polling
    with the cancellation lost, and ``ControllerService.run`` (which awaits
    its workers without a bound when it stops) hangs, as 3 of 5 stops of the
    busy Saturday at 300x did. Here the poller is cancelled a few loop
    turns after the device received a request, so that one of the cancels
    lands while the answer is on its way.
    """
    clock = SystemClock()
    profiles = load_profiles()
    draft = site_with([ac("ac-1", 1)]).devices[0]
    stuck = []
    async with ModbusDeviceServer(draft, profiles["generic-ac"], port=0, clock=clock) as server:
        site = site_with([ac("ac-1", server.port, poll=0.05, timeout=0.02)])
        for turns in range(6):
            devices = ModbusDevices(site, profiles, EventBus(), clock)
            running = asyncio.create_task(devices.run())
            # Turn by turn (a timed poll would be far too coarse) until the
            # device has a request, then ``turns`` turns more.
            before = server.requests
            deadline = time.monotonic() + 5
            while server.requests == before:
                assert time.monotonic() < deadline, "the poller sent no request"
                await asyncio.sleep(0)
            for _ in range(turns):
                await asyncio.sleep(0)
            running.cancel()
            done, _ = await asyncio.wait({running}, timeout=1.0)
            if not done:
                stuck.append(turns)
                for task in asyncio.all_tasks():
                    if task.get_name().startswith(f"modbus-127.0.0.1:{server.port}"):
                        task.cancel()  # once more, to clean up
                await asyncio.wait({running}, timeout=1.0)
    assert not stuck, f"cancelled {stuck} loop turns after a request, the poller went on"
