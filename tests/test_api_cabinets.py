"""Every status code of the cabinet routes, over the real app on a loopback port.

The app is ``create_app`` around an :class:`AccessRig` (live state, SQLite,
event log, alarms on a :class:`VirtualClock` at 09:00 in Shanghai) whose
cabinet service is the real one of a :class:`CabinetRig`: its model cabinet
opens a door on each pulse, and the test closes it. Every reply goes through
:meth:`Api.call` (never a 500, always JSON in the one error shape, no token in
a body).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient, TestServer

from controller.clock import VirtualClock
from controller.site import Site
from tests.access_rig import AccessRig
from tests.cabinet_rig import CABINET, CabinetRig, Parts
from tests.conftest import wait_until
from tests.test_api_access import (
    ALL_TOKENS,
    EVERY_SCOPE_TOKEN,
    KIOSK_TOKEN,
    NO_BODY,
    READ_TOKEN,
    STAFF_TOKEN,
    TOKENS,
    Reply,
    assert_error_shape,
    fingerprint,
    settings_for,
)
from web.app import create_app
from web.auth import TokenAuth

SH = ZoneInfo("Asia/Shanghai")
BASE = f"/api/cabinets/{CABINET}"
DEPOSITS = f"{BASE}/deposits"
PICKUP = f"{BASE}/pickup"


def at(hour: int, minute: int = 0, second: int = 0, *, day: int = 0) -> datetime:
    """A time on 23 November 2026 (or ``day`` days later) in Shanghai."""
    return datetime(2026, 11, 23 + day, hour, minute, second, tzinfo=SH)


def clear_path(compartment: object) -> str:
    return f"{BASE}/compartments/{compartment}/clear"


def deposit_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"recipient": "Ms. Zhou", "reference": "SQ-2026-0042", "hold_hours": 48}
    body.update(changes)
    return body


@dataclass
class CabinetApi:
    client: TestClient[Any, Any]
    access: AccessRig
    cabinets: CabinetRig

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        body: Any = NO_BODY,
        raw: bytes | None = None,
    ) -> Reply:
        """One request, with what holds for every reply checked: JSON, no 500 (a 503
        says the cabinet is unreachable), errors in the one shape, no token in a body."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = raw
        if body is not NO_BODY:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        async with self.client.request(method, path, headers=headers, data=data) as response:
            text = await response.text()
            reply = Reply(response.status, json.loads(text), dict(response.headers), text)
            assert response.content_type == "application/json", text
        assert reply.status < 500 or reply.status == 503, f"{method} {path}: {text[:300]}"
        for secret in ALL_TOKENS:
            assert secret not in text
        if reply.status >= 400:
            assert_error_shape(reply)
        return reply

    async def get(self, path: str, token: str | None = STAFF_TOKEN) -> Reply:
        return await self.call("GET", path, token)

    async def post(
        self, path: str, body: Any = NO_BODY, token: str = STAFF_TOKEN, *, raw: bytes | None = None
    ) -> Reply:
        return await self.call("POST", path, token, body=body, raw=raw)

    @property
    def clock(self) -> VirtualClock:
        return self.cabinets.clock

    async def deposit(
        self, body: Any = None, *, item: bool = True, token: str = STAFF_TOKEN
    ) -> Reply:
        """POST a deposit; if the cabinet pulses a door, close it 20 s later."""
        pulses = len(self.cabinets.cabinet.pulses)
        request = asyncio.create_task(
            self.post(DEPOSITS, deposit_body() if body is None else body, token)
        )
        await wait_until(
            lambda: len(self.cabinets.cabinet.pulses) > pulses or request.done(),
            message="the deposit pulse or an answer",
        )
        if not request.done():
            await self.clock.advance(20)
            self.cabinets.cabinet.close(self.cabinets.cabinet.pulses[-1], item=item)
        return await request

    async def pickup(self, code: Any, token: str = KIOSK_TOKEN) -> Reply:
        return await self.post(PICKUP, {"code": code}, token)

    async def view(self) -> dict[str, Any]:
        reply = await self.get(BASE, STAFF_TOKEN)
        assert reply.status == 200, reply.text
        body: dict[str, Any] = reply.body
        return body

    def state(self) -> tuple[Any, ...]:
        """What a refused request must leave as it was."""
        return (
            list(self.cabinets.cabinet.pulses),
            self.cabinets.service.view(CABINET),
            self.access.events.latest_id(),
        )


@pytest.fixture
async def cab(site: Site) -> AsyncIterator[CabinetApi]:
    access = AccessRig(site, VirtualClock(at(9)), data_dir=None)
    access.start()
    cabinets = CabinetRig(
        site,
        access.clock,
        shared=Parts(access.bus, access.state, access.events, access.alarms),
    )
    cabinets.start()
    services = dataclasses.replace(access.services(), cabinets=cabinets.service)
    app = create_app(
        site=site,
        state=access.state,
        health=lambda: {"status": "ok", "cabinets": cabinets.service.status()},
        auth=TokenAuth(settings_for(TOKENS).scopes_by_token()),
        services=services,
    )
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    yield CabinetApi(client, access, cabinets)
    await cabinets.stop()
    await client.close()
    access.stop()


# -- deposits ---------------------------------------------------------------------------


async def test_a_deposit_is_201_with_its_code_once(cab: CabinetApi) -> None:
    reply = await cab.deposit()

    assert reply.status == 201, reply.text
    assert set(reply.body) == {
        "deposit_id",
        "compartment",
        "label",
        "code",
        "expires",
        "reference",
        "recipient",
    }
    code = reply.body["code"]
    assert isinstance(code, str)
    assert len(code) == 6
    assert code.isdigit()
    assert (reply.body["compartment"], reply.body["label"]) == (0, "1")
    assert reply.body["expires"] == at(9, 0, 20, day=2).isoformat()
    assert reply.body["expires"].endswith("+08:00")
    assert (reply.body["reference"], reply.body["recipient"]) == ("SQ-2026-0042", "Ms. Zhou")
    assert reply.headers["Cache-Control"] == "no-store"

    # Nowhere to be seen again: the cabinet, the log, the alarms, the health report.
    view = await cab.get(BASE, STAFF_TOKEN)
    events = await cab.get("/api/events?limit=1000", READ_TOKEN)
    alarms = await cab.get("/api/alarms", READ_TOKEN)
    health = await cab.get("/api/health", None)
    for later in (view, events, alarms, health):
        assert later.status == 200
        assert code not in later.text
    assert "code" not in json.dumps(view.body["compartments"])
    compartment = view.body["compartments"][0]
    assert compartment["state"] == "holding"
    assert compartment["reference"] == "SQ-2026-0042"
    kinds = [event["kind"] for event in events.body["events"]]
    assert "cabinet_deposit" in kinds
    deposit_event = next(e for e in events.body["events"] if e["kind"] == "cabinet_deposit")
    assert deposit_event["details"]["by"] == fingerprint(STAFF_TOKEN)


async def test_a_deposit_can_name_its_compartment(cab: CabinetApi) -> None:
    reply = await cab.deposit(deposit_body(compartment=23))

    assert (reply.status, reply.body["label"]) == (201, "24")
    assert cab.cabinets.cabinet.pulses == [23]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"reference": "x", "hold_hours": 1}, "recipient"),
        (deposit_body(recipient=""), "recipient"),
        (deposit_body(recipient="   "), "recipient"),
        (deposit_body(recipient="x" * 101), "recipient"),
        (deposit_body(reference="SQ-1\nforged log line"), "reference"),
        (deposit_body(reference=7), "reference"),
        (deposit_body(hold_hours=0), "hold_hours"),
        (deposit_body(hold_hours=721), "hold_hours"),
        (deposit_body(hold_hours="24"), "hold_hours"),
        (deposit_body(hold_hours=1.5), "hold_hours"),
        (deposit_body(hold_hours=True), "hold_hours"),
        (deposit_body(compartment=-1), "compartment"),
        (deposit_body(compartment=24), "compartment"),
        (deposit_body(compartment="3"), "compartment"),
        (deposit_body(code="123456"), "code"),
    ],
)
async def test_an_invalid_deposit_is_422_and_opens_nothing(
    cab: CabinetApi, body: dict[str, Any], field: str
) -> None:
    before = cab.state()

    reply = await cab.post(DEPOSITS, body)

    assert reply.status == 422, reply.text
    assert field in {problem["field"] for problem in reply.error["details"]}
    assert cab.state() == before


async def test_a_deposit_body_that_is_not_json_is_400(cab: CabinetApi) -> None:
    reply = await cab.post(DEPOSITS, raw=b"{recipient:")

    assert reply.status == 400
    assert cab.cabinets.cabinet.pulses == []


async def test_a_busy_compartment_and_a_full_cabinet_are_409(cab: CabinetApi) -> None:
    await cab.deposit(deposit_body(compartment=2))

    busy = await cab.post(DEPOSITS, deposit_body(compartment=2))

    assert (busy.status, busy.error["code"]) == (409, "compartment_busy")
    for _ in range(23):
        assert (await cab.deposit()).status == 201
    full = await cab.post(DEPOSITS, deposit_body())
    assert (full.status, full.error["code"]) == (409, "cabinet_full")
    assert len(cab.cabinets.cabinet.pulses) == 24


async def test_a_deposit_that_closes_empty_is_409_deposit_failed(cab: CabinetApi) -> None:
    reply = await cab.deposit(item=False)

    assert (reply.status, reply.error["code"]) == (409, "deposit_failed")
    assert reply.error["details"]["reason"] == "closed_empty"
    assert "code" not in reply.error["details"]
    assert (await cab.view())["compartments"][0]["state"] == "free"


async def test_a_deposit_to_an_offline_cabinet_is_503(cab: CabinetApi) -> None:
    cab.cabinets.cabinet.offline()
    before = cab.state()

    reply = await cab.post(DEPOSITS, deposit_body())

    assert (reply.status, reply.error["code"]) == (503, "cabinet_unavailable")
    assert cab.state() == before


async def test_a_deposit_finishes_when_the_client_goes_away(cab: CabinetApi) -> None:
    request = asyncio.create_task(cab.post(DEPOSITS, deposit_body()))
    await wait_until(lambda: cab.cabinets.cabinet.pulses, message="the pulse")
    request.cancel()  # the client disconnects while staff are at the cabinet
    await asyncio.gather(request, return_exceptions=True)
    await cab.clock.advance(20)
    cab.cabinets.cabinet.close(0, item=True)
    await wait_until(
        lambda: cab.cabinets.service.view(CABINET)["compartments"][0]["state"] == "holding",
        message="the deposit to finish",
    )

    events = await cab.get("/api/events?kind=cabinet_deposit", READ_TOKEN)
    assert len(events.body["events"]) == 1


# -- pickups ----------------------------------------------------------------------------------


async def test_a_right_code_opens_its_compartment_once(cab: CabinetApi) -> None:
    await cab.deposit()
    second = await cab.deposit(deposit_body(reference="SQ-2"))
    code = second.body["code"]

    reply = await cab.pickup(code)

    assert (reply.status, reply.body) == (200, {"compartment": 1, "label": "2"})
    assert cab.cabinets.cabinet.pulses[-1] == 1
    assert (await cab.view())["compartments"][1]["state"] == "collecting"
    await cab.clock.advance(15)
    cab.cabinets.cabinet.close(1, item=False)
    assert (await cab.view())["compartments"][1]["state"] == "free"
    used = await cab.pickup(code)
    assert (used.status, used.error["code"]) == (403, "wrong_code")


async def test_wrong_used_and_expired_codes_are_the_same_403(cab: CabinetApi) -> None:
    short = await cab.deposit(deposit_body(hold_hours=1))
    taken = await cab.deposit(deposit_body(reference="SQ-3"))
    await cab.pickup(taken.body["code"])
    cab.cabinets.cabinet.close(1, item=False)
    await cab.cabinets.walk(at(10, 1))  # the first has expired
    codes = {short.body["code"], taken.body["code"]}
    wrong = next(f"{n:06d}" for n in range(10**6) if f"{n:06d}" not in codes)

    replies = [
        await cab.pickup(wrong),
        await cab.pickup(taken.body["code"], EVERY_SCOPE_TOKEN),
        await cab.pickup(short.body["code"], EVERY_SCOPE_TOKEN),
    ]

    assert {(reply.status, reply.text) for reply in replies} == {(403, replies[0].text)}
    assert cab.cabinets.cabinet.pulses == [0, 1, 1]


@pytest.mark.parametrize(
    "body",
    [
        {"code": "12345"},
        {"code": "1234567"},
        {"code": "12345a"},
        {"code": " 123456"},
        {"code": "\uff11\uff12\uff13\uff14\uff15\uff16"},  # full-width digits
        {"code": 123456},
        {"code": None},
        {},
        {"code": "123456", "cabinet": "cabinet-1"},
    ],
)
async def test_a_code_that_is_not_six_digits_is_422_and_counts_for_nothing(
    cab: CabinetApi, body: dict[str, Any]
) -> None:
    receipt = await cab.deposit()
    for _ in range(6):
        reply = await cab.post(PICKUP, body, KIOSK_TOKEN)
        assert reply.status == 422, reply.text

    assert (await cab.pickup(receipt.body["code"])).status == 200  # not locked out


async def test_a_pickup_from_an_offline_cabinet_is_503(cab: CabinetApi) -> None:
    receipt = await cab.deposit()
    cab.cabinets.cabinet.offline()

    reply = await cab.pickup(receipt.body["code"])

    assert (reply.status, reply.error["code"]) == (503, "cabinet_unavailable")
    cab.cabinets.cabinet.report()  # back
    assert (await cab.pickup(receipt.body["code"])).status == 200


async def test_brute_force_is_429_for_the_lockout_even_with_the_right_code(
    cab: CabinetApi,
) -> None:
    receipt = await cab.deposit()
    code = receipt.body["code"]
    guesses = iter(f"{n:06d}" for n in range(10**6) if f"{n:06d}" != code)
    for _ in range(5):
        assert (await cab.pickup(next(guesses))).status == 403
        await cab.clock.advance(30)
    # Locked since the fifth guess at 09:02:20 until 09:17:20; now it is 09:02:50.

    locked = await cab.pickup(code)
    hammered = [await cab.pickup(next(guesses)) for _ in range(20)]

    assert (locked.status, locked.error["code"]) == (429, "too_many_attempts")
    assert locked.headers["Retry-After"] == str(15 * 60 - 30)
    assert {reply.status for reply in hammered} == {429}
    assert cab.cabinets.cabinet.pulses == [0]
    other_kiosk = await cab.pickup(code, EVERY_SCOPE_TOKEN)  # another kiosk is not locked
    assert other_kiosk.status == 200
    cab.cabinets.cabinet.close(0, item=True)
    await cab.cabinets.walk(at(9, 17, 19))
    assert (await cab.pickup(code)).headers["Retry-After"] == "1"
    await cab.clock.advance(1)
    assert (await cab.pickup(code)).status == 200
    locked_events = await cab.get("/api/events?kind=cabinet_kiosk_locked", READ_TOKEN)
    assert [e["details"]["kiosk"] for e in locked_events.body["events"]] == [
        fingerprint(KIOSK_TOKEN)
    ]


async def test_random_guessing_over_http_opens_nothing(cab: CabinetApi) -> None:
    receipts = [await cab.deposit() for _ in range(3)]
    codes = {receipt.body["code"] for receipt in receipts}
    rng = random.Random(20261124)
    statuses = []
    for _ in range(40):
        guess = f"{rng.randrange(10**6):06d}"
        if guess in codes:
            continue
        statuses.append((await cab.pickup(guess)).status)

    assert statuses[:5] == [403] * 5
    assert set(statuses[5:]) == {429}
    assert cab.cabinets.cabinet.pulses == [0, 1, 2]


# -- the cabinet and clearing ---------------------------------------------------------------


async def test_the_cabinet_view_lists_every_compartment(cab: CabinetApi) -> None:
    await cab.deposit(deposit_body(compartment=4))
    cab.cabinets.cabinet.force_open(9)

    view = await cab.view()

    assert view["id"] == CABINET
    assert view["online"] is True
    assert [c["label"] for c in view["compartments"]] == [str(n) for n in range(1, 25)]
    states = {c["compartment"]: c["state"] for c in view["compartments"]}
    assert states[4] == "holding"
    assert states[9] == "open"
    assert {states[n] for n in range(24) if n not in (4, 9)} == {"free"}
    nine = view["compartments"][9]
    assert (nine["door_open"], nine["item_present"]) == (True, False)
    assert nine["since"] == at(9, 0, 20).isoformat()
    assert nine["deposit_id"] is None


async def test_clearing_an_expired_deposit_clears_its_alarm(cab: CabinetApi) -> None:
    receipt = await cab.deposit(deposit_body(hold_hours=1, compartment=6))
    await cab.cabinets.walk(at(10, 1))
    assert cab.access.alarms.is_active("uncollected", "cabinet-1/6")
    assert (await cab.view())["compartments"][6]["state"] == "expired"

    reply = await cab.post(clear_path(6), {"reason": "not collected"})

    assert reply.status == 200, reply.text
    assert reply.body == {
        "compartment": 6,
        "label": "7",
        "deposit_id": receipt.body["deposit_id"],
        "state": "clearing",
    }
    assert not cab.access.alarms.is_active("uncollected", "cabinet-1/6")
    assert cab.cabinets.cabinet.pulses[-1] == 6
    cab.cabinets.cabinet.close(6, item=False)
    assert (await cab.view())["compartments"][6]["state"] == "free"


async def test_clearing_nothing_or_a_busy_compartment_is_409(cab: CabinetApi) -> None:
    receipt = await cab.deposit()
    await cab.pickup(receipt.body["code"])

    empty = await cab.post(clear_path(3))
    busy = await cab.post(clear_path(0))

    assert (empty.status, empty.error["code"]) == (409, "nothing_to_clear")
    assert (busy.status, busy.error["code"]) == (409, "compartment_busy")


async def test_clearing_an_offline_cabinet_is_503(cab: CabinetApi) -> None:
    await cab.deposit()
    cab.cabinets.cabinet.offline()

    reply = await cab.post(clear_path(0))

    assert reply.status == 503
    assert (await cab.view())["compartments"][0]["deposit_id"] is not None


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/cabinets/cabinet-9", NO_BODY),
        ("POST", "/api/cabinets/cabinet-9/deposits", deposit_body()),
        ("POST", "/api/cabinets/cabinet-9/pickup", {"code": "123456"}),
        ("POST", "/api/cabinets/cabinet-9/compartments/0/clear", NO_BODY),
        ("POST", clear_path(24), NO_BODY),
        ("POST", clear_path(-1), NO_BODY),
        ("POST", clear_path("x"), NO_BODY),
        ("POST", clear_path("%D9%A3"), NO_BODY),  # an Arabic-Indic three
        ("POST", clear_path("0" * 30), NO_BODY),
    ],
)
async def test_unknown_cabinets_and_compartments_are_404(
    cab: CabinetApi, method: str, path: str, body: Any
) -> None:
    token = KIOSK_TOKEN if path.endswith("/pickup") else STAFF_TOKEN

    reply = await cab.call(method, path, token, body=body)

    assert (reply.status, reply.error["code"]) == (404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "token", "body"),
    [
        ("GET", BASE, READ_TOKEN, NO_BODY),  # staff only: recipients are personal data
        ("GET", BASE, KIOSK_TOKEN, NO_BODY),
        ("POST", DEPOSITS, KIOSK_TOKEN, deposit_body()),
        ("POST", PICKUP, STAFF_TOKEN, {"code": "123456"}),
        ("POST", clear_path(0), KIOSK_TOKEN, NO_BODY),
    ],
)
async def test_each_route_needs_its_own_scope(
    cab: CabinetApi, method: str, path: str, token: str, body: Any
) -> None:
    reply = await cab.call(method, path, token, body=body)

    assert (reply.status, reply.error["code"]) == (403, "forbidden")
    assert cab.cabinets.cabinet.pulses == []


async def test_odd_cabinet_requests_are_never_a_500(cab: CabinetApi) -> None:
    await cab.deposit()
    rng = random.Random(7)
    values: list[Any] = [None, True, -1, 0, 1, 23, 24, 720, 2**63, 1.5, "", "x" * 200, [], {}]
    keys = ["recipient", "reference", "hold_hours", "compartment", "code", "reason", "extra"]
    targets = [(DEPOSITS, STAFF_TOKEN), (PICKUP, KIOSK_TOKEN), (clear_path(5), STAFF_TOKEN)]
    for _ in range(60):
        path, token = rng.choice(targets)
        body = {rng.choice(keys): rng.choice(values) for _ in range(rng.randint(0, 4))}
        reply = await cab.post(path, body, token)
        assert reply.status < 500
    for raw in (b"\x00", b"[]", b"null", b'{"code": "123456"' + b"}" * 3, b"{" * 3000):
        assert (await cab.post(PICKUP, raw=raw, token=EVERY_SCOPE_TOKEN)).status in (400, 422)


async def test_the_health_report_carries_the_cabinet(cab: CabinetApi) -> None:
    await cab.deposit()

    reply = await cab.get("/api/health", None)

    assert reply.body["cabinets"]["cabinets"][CABINET]["holding"] == 1
