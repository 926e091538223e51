"""``GET /api/visitors``: on a virtual clock around the real app, and live through
Mosquitto and the whole controller.

The first tests run the real app (``create_app``) on a loopback port around
the access rig's parts and a started :class:`VisitorCounter` on a
:class:`VirtualClock`; counter readings go on the bus as the ingest would put
them. The live tests publish counter payloads to the real broker and read the
API over HTTP from a running controller.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from controller.clock import VirtualClock
from controller.readings import CounterReading
from controller.settings import Settings
from controller.site import Site
from controller.visitors import VisitorCounter
from tests.access_rig import AccessRig
from tests.conftest import (
    PREFIX,
    Broker,
    Probe,
    RunningController,
    controller_settings,
    start_controller,
    wait_until,
)
from web.app import create_app
from web.auth import TokenAuth

SH = ZoneInfo("Asia/Shanghai")
SATURDAY = date(2026, 11, 28)
READ_TOKEN = "rd-5Jn2Wq9EaS7dUo"
KIOSK_TOKEN = "ki-8Pf4Gm1UcX6zLa"
TOKENS = json.dumps({READ_TOKEN: ["read"], KIOSK_TOKEN: ["kiosk"]})


def at(hour: int, minute: int = 0, *, day: date = SATURDAY) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=SH)


@dataclass
class VisitorsApi:
    rig: AccessRig
    visitors: VisitorCounter
    client: TestClient[Any, Any]
    loop: asyncio.Task[None]

    async def get(self, path: str, token: str | None = READ_TOKEN) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.client.get(path, headers=headers) as response:
            assert response.status < 500
            assert response.content_type == "application/json"
            body = await response.json()
        if response.status >= 400:
            assert set(body) == {"error"}
            assert set(body["error"]) == {"code", "message", "details"}
        return response.status, body

    def count(self, entries: int, exits: int) -> None:
        self.rig.report("counter-entrance", CounterReading(entries, exits))

    async def close(self) -> None:
        self.loop.cancel()
        await asyncio.gather(self.loop, return_exceptions=True)
        self.visitors.stop()
        await self.client.close()
        self.rig.stop()


MakeApi = Callable[..., Awaitable[VisitorsApi]]


@pytest.fixture
async def make_api(site: Site, tmp_path: Path) -> AsyncIterator[MakeApi]:
    made: list[VisitorsApi] = []

    async def make(*, start: datetime, clock: VirtualClock | None = None) -> VisitorsApi:
        rig = AccessRig(site, clock or VirtualClock(start), data_dir=tmp_path / "data")
        rig.start()
        visitors = VisitorCounter(site, rig.bus, rig.clock, db=rig.db, events=rig.events)
        visitors.start()
        services = dataclasses.replace(rig.services(), visitors=visitors)
        app = create_app(
            site=site,
            state=rig.state,
            health=lambda: {"status": "ok"},
            auth=TokenAuth(
                Settings(_env_file=None, api_tokens=TOKENS).scopes_by_token()  # type: ignore[call-arg, arg-type]
            ),
            services=services,
        )
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        api = VisitorsApi(rig, visitors, client, asyncio.create_task(visitors.run()))
        made.append(api)
        return api

    yield make
    for api in made:
        await api.close()


async def test_today_hour_by_hour_with_the_people_inside(make_api: MakeApi) -> None:
    api = await make_api(start=at(9, 55))
    api.count(10400, 10370)
    await api.rig.clock.advance(60)
    api.count(10412, 10377)  # 09:56
    await api.rig.clock.advance(timedelta(minutes=10))
    api.count(10420, 10380)  # 10:06
    status, body = await api.get("/api/visitors")
    assert status == 200
    assert {key: body[key] for key in ("date", "timezone", "entries", "exits", "inside")} == {
        "date": "2026-11-28",
        "timezone": "Asia/Shanghai",
        "entries": 20,
        "exits": 10,
        "inside": 10,
    }
    assert body["closed"] is False
    assert body["inside_at_close"] is None
    assert len(body["hours"]) == 24
    assert body["hours"][0] == {"start": "2026-11-28T00:00:00+08:00", "entries": 0, "exits": 0}
    assert body["hours"][9] == {"start": "2026-11-28T09:00:00+08:00", "entries": 12, "exits": 7}
    assert body["hours"][10] == {"start": "2026-11-28T10:00:00+08:00", "entries": 8, "exits": 3}
    (counter,) = body["counters"]
    assert counter == {
        "device": "counter-entrance",
        "room": "entrance",
        "online": True,
        "last_seen": "2026-11-28T10:06:00+08:00",
        "entries": 20,
        "exits": 10,
        "totals": {"in": 10420, "out": 10380},
        "restart_pending": False,
    }
    assert await api.get("/api/visitors?date=2026-11-28") == (status, body)


async def test_a_past_day_reads_as_it_closed(make_api: MakeApi) -> None:
    api = await make_api(start=at(20))
    api.count(100, 90)
    await api.rig.clock.advance(60)
    api.count(140, 125)
    await api.rig.clock.advance(timedelta(hours=5))  # into Sunday
    api.count(141, 125)
    status, body = await api.get("/api/visitors?date=2026-11-28")
    assert status == 200
    assert (body["entries"], body["exits"], body["inside"]) == (40, 35, 0)
    assert (body["inside_at_close"], body["closed"]) == (5, True)
    assert body["hours"][20] == {"start": "2026-11-28T20:00:00+08:00", "entries": 40, "exits": 35}
    status, today = await api.get("/api/visitors")
    assert (today["date"], today["entries"], today["inside"]) == ("2026-11-29", 1, 1)
    status, empty = await api.get("/api/visitors?date=2025-01-01")
    assert status == 200
    assert (empty["entries"], empty["exits"], empty["inside"], empty["closed"]) == (0, 0, 0, True)
    assert empty["hours"][0]["start"] == "2025-01-01T00:00:00+08:00"


async def test_a_held_restart_shows_on_its_counter(make_api: MakeApi) -> None:
    api = await make_api(start=at(9))
    api.count(10412, 10377)
    await api.rig.clock.advance(10)
    api.count(2, 1)
    _, body = await api.get("/api/visitors")
    assert body["counters"][0]["restart_pending"] is True
    assert body["entries"] == 0
    await api.rig.clock.advance(30)
    _, body = await api.get("/api/visitors")
    assert body["counters"][0]["restart_pending"] is False
    assert body["counters"][0]["totals"] == {"in": 2, "out": 1}
    assert (body["entries"], body["exits"], body["inside"]) == (2, 1, 1)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("date=2026-13-01", "date"),
        ("date=2026-02-30", "date"),
        ("date=yesterday", "date"),
        ("date=2026-1-1", "date"),
        ("date=20261128", "date"),
        ("date=1999-12-31", "date"),
        ("date=", "date"),
        ("date=2026-11-29", "date"),  # tomorrow: the day has not begun
        ("date=2026-11-28&date=2026-11-27", "date"),
        ("day=2026-11-28", "day"),
    ],
)
async def test_a_bad_query_is_422_and_changes_nothing(
    make_api: MakeApi, query: str, field: str
) -> None:
    api = await make_api(start=at(9))
    api.count(10, 10)
    before = api.rig.events.latest_id()
    status, body = await api.get(f"/api/visitors?{query}")
    assert status == 422, body
    assert body["error"]["code"] == "invalid"
    assert field in [problem["field"] for problem in body["error"]["details"]]
    assert api.rig.events.latest_id() == before


async def test_the_route_needs_the_read_scope(make_api: MakeApi) -> None:
    api = await make_api(start=at(9))
    assert (await api.get("/api/visitors", token=None))[0] == 401
    assert (await api.get("/api/visitors", token="not-a-token"))[0] == 401
    assert (await api.get("/api/visitors", token=KIOSK_TOKEN))[0] == 403
    assert (await api.get("/api/visitors", token=READ_TOKEN))[0] == 200


async def test_the_route_is_in_the_openapi_document(make_api: MakeApi) -> None:
    api = await make_api(start=at(9))
    async with api.client.get("/api/openapi.json") as response:
        document = await response.json()
    operation = document["paths"]["/api/visitors"]["get"]
    assert [parameter["name"] for parameter in operation["parameters"]] == ["date", "from", "to"]
    assert {"200", "401", "403", "422"} <= set(operation["responses"])


# --- Live: Mosquitto and the whole controller -----------------------------------------------


async def visitors(http: aiohttp.ClientSession, running: RunningController) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {READ_TOKEN}"}
    async with http.get(f"{running.base_url}/api/visitors", headers=headers) as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


def count(probe: Probe, entries: int, exits: int) -> None:
    payload = json.dumps({"in": entries, "out": exits})
    probe.publish(f"{PREFIX}/counter-entrance/state", payload)


@pytest.mark.broker
async def test_live_counter_reports_become_the_days_visitors(
    broker: Broker, probe: Probe, site: Site
) -> None:
    settings = controller_settings(broker, api_tokens=TOKENS)
    probe.subscribe(f"{PREFIX}/events")
    running = await start_controller(settings, site)
    try:
        async with aiohttp.ClientSession() as http:
            before = await visitors(http, running)
            count(probe, 10400, 10370)  # the baseline
            await wait_until(
                lambda: (
                    running.service.visitors.day(running.service.visitors.today())
                    .counters[0]
                    .totals
                    is not None
                ),
                message="the baseline",
            )
            count(probe, 10412, 10377)
            count(probe, 10412, 10377)  # repeated
            count(probe, 10410, 10376)  # late
            count(probe, 10415, 10380)
            await wait_until(
                lambda: running.service.visitors.inside == before["inside"] + 15 - 10,
                message="the increments",
            )
            body = await visitors(http, running)
            assert body["entries"] - before["entries"] == 15
            assert body["exits"] - before["exits"] == 10
            assert body["counters"][0]["online"] is True
            assert body["counters"][0]["totals"] == {"in": 10415, "out": 10380}
    finally:
        await running.shutdown()

    # A controller restart on the same data: the next report counts from the stored totals.
    running = await start_controller(settings, site)
    try:
        async with aiohttp.ClientSession() as http:
            count(probe, 10420, 10381)
            await wait_until(
                lambda: running.service.visitors.inside == before["inside"] + 20 - 11,
                message="the first report after the restart",
            )
            count(probe, 3, 1)  # the counter rebooted ...
            count(probe, 4, 1)  # ... and its next report confirms it
            await wait_until(
                lambda: running.service.visitors.inside == before["inside"] + 24 - 12,
                message="the rebooted counter's people",
            )
            body = await visitors(http, running)
            assert body["entries"] - before["entries"] == 24
            assert body["exits"] - before["exits"] == 12
            resets = await probe.next_payload(
                f"{PREFIX}/events", lambda payload: json.loads(payload)["kind"] == "counter_reset"
            )
            assert json.loads(resets)["details"]["new"] == {"in": 3, "out": 1}
            assert running.service.health()["visitors"]["restarts_pending"] == []
    finally:
        await running.shutdown()
