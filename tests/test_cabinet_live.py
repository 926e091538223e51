"""The cabinet service against the real Modbus poller and the pymodbus cabinet simulator.

Real Modbus TCP on loopback: the unlock pulse is a coil write the simulator
sees, and what the service learns about doors and items comes from the
poller's reads of the simulator's discrete inputs, every 200 ms. The
simulated doors swing shut one second after they open, and each visit
toggles the item (a deposit puts one in, a pickup takes it out) unless a
test hook says otherwise.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from controller.alarms import AlarmBook
from controller.bus import EventBus
from controller.cabinet import CabinetRefused, CabinetService, DepositRequest
from controller.clock import SystemClock
from controller.database import open_database
from controller.event_log import EventLog
from controller.modbus_poller import ModbusDevices
from controller.state import LiveState
from drivers.modbus_profile import load_profiles
from simulators.modbus_devices import SimCabinet
from simulators.modbus_server import ModbusDeviceServer
from tests.cabinet_rig import CHEAP_HASHER
from tests.conftest import Broker, Probe, controller_settings, start_controller, wait_until
from tests.test_modbus_live import cabinet, site_with

CABINET = "cabinet-1"
DOOR_CLOSES_AFTER = 1.0
STAFF_TOKEN = "st-live-9Rk2Vx"
KIOSK_TOKEN = "ki-live-4Hq7Lm"


@dataclass
class LiveRig:
    service: CabinetService
    server: ModbusDeviceServer
    sim: SimCabinet
    events: EventLog
    alarms: AlarmBook
    state: LiveState

    def kinds(self) -> list[str]:
        return [event.kind for event in self.events.query(limit=1000)]


@asynccontextmanager
async def live_rig() -> AsyncIterator[LiveRig]:
    profiles = load_profiles()
    clock = SystemClock()
    draft = site_with([cabinet(CABINET, 1)]).devices[0]
    server = ModbusDeviceServer(draft, profiles["generic-cabinet-24"], port=0, clock=clock)
    sim = SimCabinet(server, clock, pulse=0.2, door_close_after=DOOR_CLOSES_AFTER)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(server)
        site = site_with([cabinet(CABINET, server.port)])
        bus = EventBus()
        state = LiveState(site, bus)
        db = open_database(None)
        stack.callback(db.close)
        events = EventLog(db, clock)
        alarms = AlarmBook(db, events, clock)
        devices = ModbusDevices(site, profiles, bus, clock, backoff_max=1.0)
        service = CabinetService(
            site,
            state,
            bus,
            clock,
            db=db,
            events=events,
            alarms=alarms,
            writer=devices,
            hasher=CHEAP_HASHER,
        )
        state.start()
        service.start()
        tasks = [asyncio.create_task(devices.run()), asyncio.create_task(service.run())]
        try:
            await wait_until(lambda: service.view(CABINET)["online"], message="first poll")
            yield LiveRig(service, server, sim, events, alarms, state)
        finally:
            service.stop()
            state.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_deposit_and_its_pickup_end_to_end() -> None:
    async with live_rig() as rig:
        receipt = await rig.service.deposit(
            CABINET, DepositRequest("Ms. Chen", "HK-2026-118", 48, compartment=5), "token:staff"
        )

        assert (receipt.compartment, receipt.label) == (5, "6")
        assert rig.server.pulses == [5]  # the coil of compartment 5, and no other
        assert rig.server.client_writes == [("unlock", 5, True)]
        assert rig.sim.item_present(5)
        assert rig.service.view(CABINET)["compartments"][5]["state"] == "holding"

        opened = await rig.service.pickup(CABINET, receipt.code, "token:kiosk")

        assert opened == {"compartment": 5, "label": "6"}
        assert rig.server.pulses == [5, 5]
        await wait_until(lambda: "cabinet_pickup" in rig.kinds(), message="the pickup")
        assert not rig.sim.item_present(5)
        assert rig.service.view(CABINET)["compartments"][5]["state"] == "free"
        with pytest.raises(CabinetRefused) as used:
            await rig.service.pickup(CABINET, receipt.code, "token:kiosk")
        assert used.value.status == 403
        assert rig.server.pulses == [5, 5]
        assert rig.alarms.query() == []


async def test_a_pickup_that_leaves_the_document_stays_collectable() -> None:
    async with live_rig() as rig:
        receipt = await rig.service.deposit(
            CABINET, DepositRequest("Mr. Wu", "REF-9", 24), "token:staff"
        )
        rig.sim.leave_item(receipt.compartment)

        await rig.service.pickup(CABINET, receipt.code, "token:kiosk")
        await wait_until(
            lambda: "cabinet_pickup_incomplete" in rig.kinds(), message="incomplete pickup"
        )
        await rig.service.pickup(CABINET, receipt.code, "token:kiosk")
        await wait_until(lambda: "cabinet_pickup" in rig.kinds(), message="the second try")

        assert not rig.sim.item_present(receipt.compartment)


async def test_a_deposit_into_which_nothing_goes_fails() -> None:
    async with live_rig() as rig:
        rig.sim.deposit_nothing(0)

        with pytest.raises(CabinetRefused) as failed:
            await rig.service.deposit(CABINET, DepositRequest("a", "b", 1), "token:staff")

        assert (failed.value.code, failed.value.details["reason"]) == (
            "deposit_failed",
            "closed_empty",
        )
        assert rig.service.view(CABINET)["compartments"][0]["state"] == "free"


async def test_a_forced_door_is_tamper_until_it_closes() -> None:
    async with live_rig() as rig:
        rig.sim.force_open(11)

        await wait_until(
            lambda: rig.alarms.is_active("cabinet_tamper", "cabinet-1/11"), message="tamper"
        )
        await wait_until(
            lambda: not rig.alarms.is_active("cabinet_tamper", "cabinet-1/11"),
            message="closed again",
        )
        assert [alarm.acked for alarm in rig.alarms.query(kind="cabinet_tamper")] == [False]
        assert rig.server.pulses == []


# -- through the whole controller, over HTTP ---------------------------------------------------


@pytest.mark.broker
async def test_the_controller_serves_deposits_and_pickups_over_http(
    broker: Broker, probe: Probe
) -> None:
    profiles = load_profiles()
    clock = SystemClock()
    draft = site_with([cabinet(CABINET, 1)]).devices[0]
    server = ModbusDeviceServer(draft, profiles["generic-cabinet-24"], port=0, clock=clock)
    sim = SimCabinet(server, clock, pulse=0.2, door_close_after=DOOR_CLOSES_AFTER)
    tokens = json.dumps({STAFF_TOKEN: ["staff"], KIOSK_TOKEN: ["kiosk"]})
    async with server:
        site = site_with([cabinet(CABINET, server.port)])
        controller = await start_controller(controller_settings(broker, api_tokens=tokens), site)
        probe.subscribe(f"center/{site.site.id}/events")
        try:
            base = f"{controller.base_url}/api/cabinets/{CABINET}"
            staff = {"Authorization": f"Bearer {STAFF_TOKEN}"}
            kiosk = {"Authorization": f"Bearer {KIOSK_TOKEN}"}
            async with aiohttp.ClientSession() as http:

                async def call(
                    method: str, url: str, headers: dict[str, str], body: Any = None
                ) -> tuple[int, Any]:
                    async with http.request(method, url, headers=headers, json=body) as reply:
                        return reply.status, await reply.json()

                await wait_until(
                    lambda: controller.service.state.device(CABINET).online, message="online"
                )
                status, deposit = await call(
                    "POST",
                    f"{base}/deposits",
                    staff,
                    {"recipient": "Ms. Gao", "reference": "RES-77", "hold_hours": 72},
                )
                assert status == 201, deposit
                code = deposit["code"]
                assert server.pulses == [0]

                status, opened = await call("POST", f"{base}/pickup", kiosk, {"code": code})
                assert (status, opened) == (200, {"compartment": 0, "label": "1"})
                await wait_until(lambda: not sim.item_present(0), message="the pickup")
                await wait_until(
                    lambda: (
                        controller.service.health()["cabinets"]["cabinets"][CABINET][
                            "pickups_today"
                        ]
                        == 1
                    ),
                    message="the pickup recorded",
                )
                status, view = await call("GET", base, staff)
                assert status == 200
                assert view["compartments"][0]["state"] == "free"
                await probe.next_payload(
                    f"center/{site.site.id}/events", lambda payload: b'cabinet_pickup"' in payload
                )
                published = probe.received(f"center/{site.site.id}/events")
                assert any(b"RES-77" in payload for payload in published)
                assert not any(code.encode() in payload for payload in published)
        finally:
            await controller.shutdown()
