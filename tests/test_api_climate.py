"""The air-conditioner routes: the list, staff overrides, and every refusal.

The real app (``create_app``) runs on a loopback port around an
:class:`~tests.access_rig.AccessRig` (LiveState, SQLite, the event log) with a
real :class:`~controller.climate.ClimateController` and its deadline loop on a
:class:`VirtualClock` at 09:00 in Shanghai; the air conditioners are the fakes
of ``tests/climate_rig.py``, which answer writes like the units. Every reply
goes through :meth:`Api.call` (never a 500, always JSON, errors in the one
shape, no token in a body).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from controller.climate import ClimateController
from controller.clock import VirtualClock
from controller.readings import ClimateReading, OccupancyReading
from controller.site import DeviceKind, Site
from tests.access_rig import AccessRig
from tests.climate_rig import FakeAc, FakeAirConditioners
from tests.test_api_access import (
    BOOKING_TOKEN,
    NO_BODY,
    READ_TOKEN,
    STAFF_TOKEN,
    TOKENS,
    Api,
    Reply,
    T,
    at,
    fingerprint,
    settings_for,
)
from web.app import create_app
from web.auth import TokenAuth

AC = "ac-love-room"
HALL_AC = "ac-convergence-hall"
LIST = "/api/air-conditioners"


def override_path(device: str) -> str:
    return f"/api/air-conditioners/{device}/override"


@dataclass
class ClimateApi:
    api: Api
    climate: ClimateController
    acs: FakeAirConditioners
    loop: asyncio.Task[None]

    @property
    def clock(self) -> VirtualClock:
        return self.api.rig.clock

    async def put(self, device: str, body: Any, token: str = STAFF_TOKEN) -> Reply:
        return await self.api.call("PUT", override_path(device), token, body=body)

    async def delete(self, device: str, token: str = STAFF_TOKEN) -> Reply:
        return await self.api.call("DELETE", override_path(device), token)

    async def listed(self) -> dict[str, dict[str, Any]]:
        reply = await self.api.get(LIST)
        assert reply.status == 200, reply.text
        return {entry["id"]: entry for entry in reply.body["air_conditioners"]}

    async def walk(self, to: datetime) -> None:
        """Advance a minute at a time, the units polled each minute."""
        while self.clock.now() < to:
            await self.clock.advance(min(timedelta(minutes=1), to - self.clock.now()))
            for device in self.acs.units:
                self.acs.poll(device)
            await self.clock.advance(0)

    async def overrides_logged(self) -> list[dict[str, Any]]:
        return await self.api.events(("kind", "ac_override"))

    async def snapshot(self) -> tuple[Any, ...]:
        """What a refused request must leave as it was."""
        return (
            await self.listed(),
            self.api.rig.events.latest_id(),
            list(self.acs.writes),
            [alarm.to_json() for alarm in self.api.rig.alarms.query()],
        )


@pytest.fixture
async def capi(site: Site) -> AsyncIterator[ClimateApi]:
    rig = AccessRig(site, VirtualClock(T), data_dir=None)
    rig.start()
    units = {
        device.id: FakeAc() for device in site.devices if device.kind is DeviceKind.AIR_CONDITIONER
    }
    acs = FakeAirConditioners(rig.bus, rig.clock, units)
    climate = ClimateController(
        site,
        rig.state,
        rig.bus,
        rig.clock,
        db=rig.db,
        events=rig.events,
        alarms=rig.alarms,
        writer=acs,
    )
    climate.start()
    app = create_app(
        site=site,
        state=rig.state,
        health=lambda: {"status": "ok"},
        auth=TokenAuth(settings_for(TOKENS).scopes_by_token()),
        services=dataclasses.replace(rig.services(), climate=climate),
    )
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    loop = asyncio.create_task(climate.run())
    made = ClimateApi(Api(client, rig, app), climate, acs, loop)
    yield made
    loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop
    climate.stop()
    await made.api.shutdown()


def warm_and_occupied(capi: ClimateApi) -> None:
    rig = capi.api.rig
    rig.report("temp-outdoor", ClimateReading(temperature=30.0))
    rig.report("temp-love-room", ClimateReading(temperature=27.0))
    rig.report("occ-love-room", OccupancyReading(True, 2))


# --- The list -------------------------------------------------------------------------------


async def test_every_air_conditioner_is_listed_with_what_the_rule_wants(capi: ClimateApi) -> None:
    before = await capi.listed()
    assert set(before) == {AC, HALL_AC}
    assert before[AC]["online"] is None  # not polled yet
    assert before[AC]["reading"] is None
    assert before[AC]["managed"] is True
    assert before[HALL_AC]["managed"] is False
    assert before[AC]["rule"]["cause"] == "unknown_occupancy"

    for device in capi.acs.units:
        capi.acs.poll(device)
    warm_and_occupied(capi)
    await capi.walk(at(9, 1))
    listed = await capi.listed()

    love = listed[AC]
    assert love == {
        "id": AC,
        "room": "love-room",
        "managed": True,
        "online": True,
        "stale": False,
        "reading": {
            "power": True,
            "mode": "cool",
            "setpoint": 26.0,
            "room_temperature": 25.0,
            "fault": 0,
        },
        "rule": {
            "power": True,
            "mode": "cool",
            "setpoint": 26.0,
            "cause": "occupied_hot",
            "next_change": None,
        },
        "min_off_until": None,
        "override": None,
    }
    assert listed[HALL_AC]["rule"] == {
        "power": None,
        "mode": None,
        "setpoint": None,
        "cause": "not_managed",
        "next_change": None,
    }


async def test_listing_needs_the_read_scope(capi: ClimateApi) -> None:
    assert (await capi.api.call("GET", LIST)).status == 401
    assert (await capi.api.call("GET", LIST, BOOKING_TOKEN)).status == 403
    assert (await capi.api.call("GET", LIST, STAFF_TOKEN)).status == 200


# --- Overrides ------------------------------------------------------------------------------


async def test_an_override_commands_the_unit_and_expires_by_itself(capi: ClimateApi) -> None:
    for device in capi.acs.units:
        capi.acs.poll(device)
    capi.api.rig.report("occ-love-room", OccupancyReading(False, 0))
    await capi.walk(at(9, 30))
    assert capi.acs.writes == []

    reply = await capi.put(
        AC, {"power": True, "mode": "cool", "setpoint": 24, "hours": 2, "reason": "hot day"}
    )

    assert reply.status == 200, reply.text
    assert reply.body["id"] == AC
    assert reply.body["override"] == {
        "power": True,
        "mode": "cool",
        "setpoint": 24.0,
        "since": at(9, 30).isoformat(),
        "until": at(11, 30).isoformat(),
        "reason": "hot day",
        "by": fingerprint(STAFF_TOKEN),
    }
    assert reply.body["rule"]["cause"] == "override"
    assert reply.body["rule"]["next_change"] == at(11, 30).isoformat()
    await capi.walk(at(9, 31))
    assert capi.acs.units[AC].setting == (True, "cool", 24.0)
    logged = await capi.overrides_logged()
    assert [event["details"]["action"] for event in logged] == ["set"]
    assert logged[0]["device"] == AC
    assert logged[0]["room"] == "love-room"

    await capi.walk(at(11, 31))

    entry = (await capi.listed())[AC]
    assert entry["override"] is None
    assert entry["rule"]["cause"] == "empty"
    assert capi.acs.units[AC].power is False
    assert [e["details"]["action"] for e in await capi.overrides_logged()] == ["set", "expired"]


async def test_deleting_an_override_hands_back_to_the_rule_now(capi: ClimateApi) -> None:
    for device in capi.acs.units:
        capi.acs.poll(device)
    warm_and_occupied(capi)
    await capi.walk(at(9, 5))
    assert capi.acs.units[AC].power is True
    off = await capi.put(AC, {"power": False, "hours": 4, "reason": "filter change"})
    assert off.status == 200
    await capi.walk(at(9, 10))
    assert capi.acs.units[AC].power is False

    reply = await capi.delete(AC)

    assert reply.status == 200, reply.text
    assert reply.body["override"] is None
    assert reply.body["rule"]["cause"] == "occupied_hot"
    await capi.clock.advance(0)
    assert capi.acs.units[AC].power is True  # rested since 09:05: back on at once
    logged = await capi.overrides_logged()
    assert [event["details"]["action"] for event in logged] == ["set", "cleared"]
    assert logged[1]["details"]["by"] == fingerprint(STAFF_TOKEN)

    again = await capi.delete(AC)  # nothing to clear: the same answer, nothing logged
    assert again.status == 200
    assert len(await capi.overrides_logged()) == 2


async def test_an_override_shows_the_compressors_rest(capi: ClimateApi) -> None:
    capi.acs.units[AC].power = True
    for device in capi.acs.units:
        capi.acs.poll(device)
    capi.acs.by_hand(AC, power=False)  # at 09:00
    await capi.walk(at(9, 1))

    reply = await capi.put(AC, {"power": True, "hours": 1})

    assert reply.status == 200
    assert reply.body["rule"]["cause"] == "min_off_wait"
    assert reply.body["rule"]["power"] is True
    assert reply.body["min_off_until"] == at(9, 3).isoformat()
    await capi.walk(at(9, 2))
    assert capi.acs.units[AC].power is False
    await capi.walk(at(9, 3))
    assert capi.acs.units[AC].power is True


async def test_an_unmanaged_unit_takes_overrides_and_is_left_as_it_is_after(
    capi: ClimateApi,
) -> None:
    for device in capi.acs.units:
        capi.acs.poll(device)

    reply = await capi.put(HALL_AC, {"power": True, "mode": "heat", "setpoint": 21.5, "hours": 0.5})
    await capi.walk(at(10))

    assert reply.status == 200
    assert reply.body["managed"] is False
    entry = (await capi.listed())[HALL_AC]
    assert entry["override"] is None
    assert entry["rule"]["cause"] == "not_managed"
    assert capi.acs.units[HALL_AC].setting == (True, "heat", 21.5)


async def test_a_new_override_replaces_the_last(capi: ClimateApi) -> None:
    first = await capi.put(AC, {"power": True, "hours": 3})
    second = await capi.put(AC, {"power": False, "hours": 1, "reason": "closing"})

    assert first.status == second.status == 200
    assert second.body["override"]["power"] is False
    assert second.body["override"]["until"] == at(10).isoformat()


# --- Refusals change nothing ---------------------------------------------------------------


@pytest.mark.parametrize("device", ["ac-nowhere", "occ-love-room", "lock-main", "love-room"])
async def test_an_unknown_device_or_one_that_is_no_air_conditioner_is_404(
    capi: ClimateApi, device: str
) -> None:
    before = await capi.snapshot()

    put = await capi.put(device, {"power": True, "hours": 1})
    delete = await capi.delete(device)

    assert put.status == delete.status == 404
    assert put.error["code"] == delete.error["code"] == "not_found"
    assert put.error["details"] == {"device": device}
    assert await capi.snapshot() == before


INVALID_BODIES = [
    {"power": False, "mode": "cool", "hours": 1},  # a mode needs power on
    {"power": False, "setpoint": 24, "hours": 1},  # so does a setpoint
    {"power": True, "setpoint": 15.9, "hours": 1},
    {"power": True, "setpoint": 30.1, "hours": 1},
    {"power": True, "setpoint": "24", "hours": 1},
    {"power": True, "mode": "turbo", "hours": 1},
    {"power": True, "mode": "COOL", "hours": 1},
    {"power": True, "hours": 0},
    {"power": True, "hours": -1},
    {"power": True, "hours": 72.01},
    {"power": True, "hours": "2"},
    {"power": True},
    {"hours": 1},
    {"power": "on", "hours": 1},
    {"power": 1, "hours": 1},
    {"power": True, "hours": 1, "reason": "x" * 201},
    {"power": True, "hours": 1, "reason": None},
    {"power": True, "hours": 1, "minutes": 5},
    {"power": True, "hours": True},
]


@pytest.mark.parametrize("body", INVALID_BODIES, ids=lambda body: str(sorted(body.items())))
async def test_an_invalid_override_is_422_and_changes_nothing(
    capi: ClimateApi, body: dict[str, Any]
) -> None:
    before = await capi.snapshot()

    reply = await capi.put(AC, body)

    assert reply.status == 422, reply.text
    assert reply.error["code"] == "invalid"
    assert reply.error["details"]
    assert all({"field", "message"} <= set(problem) for problem in reply.error["details"])
    assert await capi.snapshot() == before


async def test_a_mode_without_power_names_the_field(capi: ClimateApi) -> None:
    reply = await capi.put(AC, {"power": False, "mode": "cool", "setpoint": 24, "hours": 1})

    assert reply.status == 422
    assert [problem["field"] for problem in reply.error["details"]] == ["mode", "setpoint"]


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"[]", b'"power"', b"null", b'{"power": true, "hours": NaN}']
)
async def test_a_malformed_override_is_400_or_422_and_changes_nothing(
    capi: ClimateApi, raw: bytes
) -> None:
    before = await capi.snapshot()

    reply = await capi.api.call("PUT", override_path(AC), STAFF_TOKEN, raw=raw)

    assert reply.status in {400, 422}, reply.text
    assert await capi.snapshot() == before


async def test_overrides_need_the_staff_scope(capi: ClimateApi) -> None:
    before = await capi.snapshot()
    body = {"power": True, "hours": 1}

    assert (await capi.api.call("PUT", override_path(AC), READ_TOKEN, body=body)).status == 403
    assert (await capi.api.call("DELETE", override_path(AC), READ_TOKEN)).status == 403
    assert (await capi.api.call("PUT", override_path(AC), None, body=body)).status == 401
    assert (await capi.api.call("DELETE", override_path(AC), None, body=NO_BODY)).status == 401
    assert await capi.snapshot() == before


async def test_the_longest_override_is_72_hours(capi: ClimateApi) -> None:
    reply = await capi.put(AC, {"power": True, "hours": 72})

    assert reply.status == 200
    assert reply.body["override"]["until"] == (T + timedelta(hours=72)).isoformat()
