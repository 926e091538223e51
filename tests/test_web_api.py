"""The HTTP API, through a real aiohttp server on a loopback port (no broker)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from controller.bus import EventBus
from controller.clock import VirtualClock
from controller.events import AvailabilityChanged, AvailabilitySource, ReadingReceived
from controller.readings import ClimateReading, LockReading, LockState, OccupancyReading
from controller.settings import Settings
from controller.site import Site
from tests.access_rig import AccessRig
from web.app import create_app
from web.auth import TokenAuth

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)

READ_TOKEN = "read-t0ken"
STAFF_TOKEN = "staff-t0ken"
BOOKING_TOKEN = "booking-t0ken"
TOKENS = json.dumps({READ_TOKEN: ["read"], STAFF_TOKEN: ["staff"], BOOKING_TOKEN: ["booking"]})


class Health:
    """A stand-in for ControllerService.health: returns whatever the test sets."""

    def __init__(self) -> None:
        self.report: dict[str, Any] = {"status": "ok", "site": "changbai"}

    def __call__(self) -> dict[str, Any]:
        return self.report


class Api:
    def __init__(self, client: TestClient[Any, Any], bus: EventBus, health: Health) -> None:
        self.client = client
        self.bus = bus
        self.health = health

    async def get(
        self, path: str, token: str | None = None, **headers: str
    ) -> tuple[int, Any, dict[str, str]]:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.client.get(path, headers=headers) as response:
            assert response.content_type == "application/json", await response.text()
            return response.status, await response.json(), dict(response.headers)


MakeApi = Callable[..., Awaitable[Api]]


@pytest.fixture
async def make_api(site: Site) -> AsyncIterator[MakeApi]:
    clients: list[TestClient[Any, Any]] = []

    async def make(tokens: str = "") -> Api:
        rig = AccessRig(site, VirtualClock(T0), data_dir=None)
        rig.start()
        bus, state = rig.bus, rig.state
        health = Health()
        # Through Settings, as the controller builds it: "staff" implies "read" there.
        settings = Settings(_env_file=None, api_tokens=tokens)  # type: ignore[call-arg, arg-type]
        app = create_app(
            site=site,
            state=state,
            health=health,
            auth=TokenAuth(settings.scopes_by_token()),
            services=rig.services(),
        )
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return Api(client, bus, health)

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def api(make_api: MakeApi) -> Api:
    return await make_api()


@pytest.fixture
async def secured(make_api: MakeApi) -> Api:
    return await make_api(TOKENS)


# --- Rooms and devices -------------------------------------------------------------------


async def test_rooms_lists_every_room_with_its_live_state(api: Api, site: Site) -> None:
    api.bus.publish(ReadingReceived("occ-gym", OccupancyReading(True, count=4), T0))
    api.bus.publish(ReadingReceived("temp-outdoor", ClimateReading(temperature=36.0), T0))

    status, body, _ = await api.get("/api/rooms")

    assert status == 200
    assert [room["id"] for room in body["rooms"]] == [room.id for room in site.rooms]
    assert len(body["rooms"]) == 11
    by_id = {room["id"]: room for room in body["rooms"]}
    assert by_id["gym"]["name"] == "健身房"
    assert by_id["gym"]["name_en"] == "Gym"
    assert by_id["gym"]["state"]["occupied"] is True
    assert by_id["gym"]["state"]["count"] == 4
    assert by_id["gym"]["state"]["since"] == T0.isoformat()
    assert by_id["gym"]["updated"] == T0.isoformat()
    assert by_id["gym"]["devices"] == ["occ-gym", "lock-gym"]
    assert by_id["library"]["state"]["occupied"] is None  # not heard: unknown, not empty
    assert by_id["library"]["updated"] is None
    assert body["site"]["id"] == "changbai"
    assert body["site"]["state"]["outdoor_temperature"] == 36.0
    assert body["site"]["state"]["fire_alarm"] is None


async def test_a_room_includes_its_devices_in_detail(api: Api) -> None:
    api.bus.publish(ReadingReceived("lock-gym", LockReading(LockState.JAMMED), T0))
    api.bus.publish(AvailabilityChanged("occ-gym", False, AvailabilitySource.LWT, T0))

    status, body, _ = await api.get("/api/rooms/gym")

    assert status == 200
    assert body["id"] == "gym"
    assert body["capacity"] == 20
    assert body["state"]["lock_state"] == "JAMMED"
    assert body["state"]["locked"] is False
    devices = {device["id"]: device for device in body["devices"]}
    assert set(devices) == {"occ-gym", "lock-gym"}
    assert devices["lock-gym"]["kind"] == "lock"
    assert devices["lock-gym"]["protocol"] == "mqtt"
    assert devices["lock-gym"]["online"] is True
    assert devices["lock-gym"]["availability_source"] == "reading"
    assert devices["lock-gym"]["last_seen"] == T0.isoformat()
    assert devices["lock-gym"]["reading"] == {"state": "JAMMED", "door": None}
    assert devices["occ-gym"]["online"] is False
    assert devices["occ-gym"]["availability_source"] == "lwt"
    assert devices["occ-gym"]["reading"] is None


async def test_devices_lists_every_device(api: Api, site: Site) -> None:
    api.bus.publish(ReadingReceived("occ-coffee", OccupancyReading(False), T0))

    status, body, _ = await api.get("/api/devices")

    assert status == 200
    assert [device["id"] for device in body["devices"]] == [device.id for device in site.devices]
    by_id = {device["id"]: device for device in body["devices"]}
    assert by_id["occ-coffee"]["reading"] == {"occupied": False, "count": None}
    assert by_id["fire-panel"]["room"] is None
    assert by_id["ac-love-room"]["protocol"] == "modbus"
    assert by_id["ac-love-room"]["online"] is None


# --- Errors in one shape -----------------------------------------------------------------


async def test_an_unknown_room_is_404_in_the_error_shape(api: Api) -> None:
    status, body, _ = await api.get("/api/rooms/ballroom")

    assert status == 404
    assert body == {
        "error": {"code": "not_found", "message": "no such room", "details": {"room": "ballroom"}}
    }


@pytest.mark.parametrize("path", ["/api/nothing", "/api/rooms/gym/extra", "/index.php"])
async def test_an_unknown_path_is_404_in_the_error_shape(api: Api, path: str) -> None:
    status, body, _ = await api.get(path)

    assert status == 404
    assert body["error"]["code"] == "not_found"
    assert set(body["error"]) == {"code", "message", "details"}


async def test_a_wrong_method_is_405_in_the_error_shape(api: Api) -> None:
    async with api.client.post("/api/rooms", json={"id": "x"}) as response:
        assert response.status == 405
        assert response.content_type == "application/json"
        body = await response.json()

    assert body["error"]["code"] == "method_not_allowed"
    assert set(body["error"]) == {"code", "message", "details"}


async def test_a_wrong_method_says_which_methods_are_allowed(api: Api) -> None:
    async with api.client.post("/api/rooms") as response:
        assert response.status == 405
        assert "GET" in response.headers.get("Allow", "")


# --- Health ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("report_status", "http_status"),
    [("ok", 200), ("degraded", 200), ("down", 503)],
)
async def test_health_status_code_follows_the_report(
    secured: Api, report_status: str, http_status: int
) -> None:
    secured.health.report = {"status": report_status, "mqtt": {"connected": False}}

    status, body, _ = await secured.get("/api/health")  # no token, tokens configured

    assert status == http_status
    assert body == secured.health.report


# --- Authentication --------------------------------------------------------------------

PROTECTED = ["/api/rooms", "/api/rooms/gym", "/api/devices"]


@pytest.mark.parametrize("path", PROTECTED)
async def test_no_token_is_401_with_a_challenge(secured: Api, path: str) -> None:
    status, body, headers = await secured.get(path)

    assert status == 401
    assert body["error"]["code"] == "unauthorized"
    assert headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer not-a-token",
        f"Bearer {READ_TOKEN}x",
        f"Basic {READ_TOKEN}",
        READ_TOKEN,
        "Bearer ",
    ],
    ids=["unknown", "prefix-of-nothing", "basic", "no-scheme", "empty"],
)
async def test_a_wrong_token_is_401(secured: Api, authorization: str) -> None:
    status, body, headers = await secured.get("/api/rooms", Authorization=authorization)

    assert status == 401
    assert body["error"]["code"] == "unauthorized"
    assert "WWW-Authenticate" in headers
    assert READ_TOKEN not in json.dumps(body)


@pytest.mark.parametrize("path", PROTECTED)
async def test_a_token_without_read_scope_is_403(secured: Api, path: str) -> None:
    status, body, _ = await secured.get(path, BOOKING_TOKEN)

    assert status == 403
    assert body["error"]["code"] == "forbidden"
    assert "read" in body["error"]["message"]


@pytest.mark.parametrize("token", [READ_TOKEN, STAFF_TOKEN], ids=["read", "staff"])
@pytest.mark.parametrize("path", PROTECTED)
async def test_read_and_staff_tokens_may_read(secured: Api, path: str, token: str) -> None:
    status, _, _ = await secured.get(path, token)

    assert status == 200


@pytest.mark.parametrize("path", PROTECTED)
async def test_without_configured_tokens_reads_are_open(api: Api, path: str) -> None:
    status, _, _ = await api.get(path)

    assert status == 200


async def test_an_unknown_path_is_404_even_without_a_token(secured: Api) -> None:
    status, body, _ = await secured.get("/api/nothing")

    assert status == 404
    assert body["error"]["code"] == "not_found"
