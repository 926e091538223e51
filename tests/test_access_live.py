"""Room access end to end: real Mosquitto, the lock and fire-panel simulators, the controller.

The controller and the simulated devices share one clock that runs at real
speed from 10:00 on a weekday, so center hours hold whatever the time of day
the tests run; the site's rule timings are cut to seconds so a booking's
whole life fits in a test. The booking system is a real HTTP server here that
checks every webhook's signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp import web

from controller.clock import Clock, ScaledClock, SystemClock
from controller.event_log import LoggedEvent
from controller.readings import LockState
from controller.service import ControllerService
from controller.settings import MqttEndpoint
from controller.site import DeviceKind, Site, parse_site
from controller.webhooks import verify
from simulators.mqtt_devices import LockSimulator, mqtt_simulators
from simulators.people import Building
from simulators.thermal import DailyWeather
from tests.conftest import (
    CHANGBAI,
    PREFIX,
    Broker,
    Probe,
    centerctl_run,
    controller_settings,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.broker

ZONE = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 11, 23, 10, 0, tzinfo=ZONE)
SECRET = "webhook-s3cret"
STAFF = "staff-t0ken"
BOOKING = "booking-t0ken"
TOKENS = json.dumps({STAFF: ["staff"], BOOKING: ["booking", "read"]})
# What the fire handler logs, once its commands are out.
FIRE_PASS_EVENTS = {"lock_command", "access_decision", "fire_alarm"}

LOCKS = [
    "lock-main",
    "lock-hui-xin-room",
    "lock-convergence-hall",
    "lock-practice-hall",
    "lock-gym",
]


def short_site(*, hours: str | None = None) -> Site:
    """The Changbai site with rule timings of seconds (and other hours, if given)."""
    text = CHANGBAI.read_text(encoding="utf-8")
    text = text.replace('unlock_before = "10m"', 'unlock_before = "2s"')
    text = text.replace('no_show_after = "15m"', 'no_show_after = "3s"')
    text = text.replace('relock_grace = "15m"', 'relock_grace = "3s"')
    if hours is not None:
        text = text.replace('hours = { open = "08:30", close = "21:00" }', hours)
    return parse_site(text, "short-site")


@dataclass
class BookingSystem:
    """The booking system's webhook endpoint: keeps what arrived and checks signatures."""

    received: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(SECRET, body, request.headers.get("X-Center-Signature", "")):
            self.bad_signatures += 1
            return web.Response(status=401)
        self.received.append(json.loads(body))
        return web.Response(status=204)

    def types(self, booking_id: str) -> list[str]:
        return [
            event["type"]
            for event in self.received
            if event["data"].get("booking", {}).get("id") == booking_id
        ]


@pytest.fixture
async def booking_system() -> AsyncIterator[BookingSystem]:
    system = BookingSystem()
    app = web.Application()
    app.router.add_post("/hooks", system.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    system.url = f"http://127.0.0.1:{port}/hooks"
    yield system
    await runner.cleanup()


@dataclass
class Center:
    """The controller and the simulated locks and fire panel, on one clock."""

    service: ControllerService
    building: Building
    locks: dict[str, LockSimulator]
    clock: Clock
    http: aiohttp.ClientSession

    def now(self) -> datetime:
        return self.clock.now()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.service.http_port}"

    async def call(self, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.request(method, self.base + path, json=body, headers=headers) as r:
            return r.status, await r.json()

    def lock(self, device_id: str) -> LockState:
        return self.locks[device_id].state


@contextlib.asynccontextmanager
async def running_center(
    broker: Broker, site: Site, data_dir: Path, clock: Clock, **settings: Any
) -> AsyncIterator[Center]:
    building = Building(site, start=clock.now(), weather=DailyWeather(20.0, 30.0), seed=1)
    sims = [
        sim
        for sim in mqtt_simulators(
            site,
            building,
            MqttEndpoint(host="127.0.0.1", port=broker.port, tls=False),
            clock=clock,
        )
        if sim.device.kind in (DeviceKind.LOCK, DeviceKind.FIRE_ALARM)
    ]
    service = ControllerService(
        controller_settings(broker, data_dir=data_dir, api_tokens=TOKENS, **settings),
        site,
        clock,
    )
    stop = asyncio.Event()
    ready = asyncio.Event()
    tasks = [asyncio.create_task(sim.run()) for sim in sims]
    controller = asyncio.create_task(service.run(stop, ready))
    try:
        await wait_until(lambda: ready.is_set() or controller.done(), message="start")
        if controller.done():
            controller.result()
        await wait_until(lambda: service.link.status.connected, message="connected")
        async with aiohttp.ClientSession() as http:
            yield Center(
                service,
                building,
                {sim.device.id: sim for sim in sims if isinstance(sim, LockSimulator)},
                clock,
                http,
            )
    finally:
        stop.set()
        await asyncio.wait_for(controller, 10)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def commands(probe: Probe, lock: str) -> list[str]:
    return [json.loads(payload)["state"] for payload in probe.received(f"{PREFIX}/{lock}/set")]


def occupancy(probe: Probe, room: str, occupied: bool) -> None:
    body = json.dumps({"occupied": occupied, "count": 2 if occupied else 0}).encode()
    probe.publish(f"{PREFIX}/occ-{room}/state", body)


async def at_rest(center: Center) -> None:
    """The rules' opening state: bookable rooms locked, entrance and gym open (10:00)."""
    for lock in ("lock-hui-xin-room", "lock-convergence-hall", "lock-practice-hall"):
        await wait_until(lambda lock=lock: center.lock(lock) is LockState.LOCKED, message=lock)
    for lock in ("lock-main", "lock-gym"):
        assert center.lock(lock) is LockState.UNLOCKED
    await wait_until(lambda: not center.service.locks.pending(), message="all confirmed")


async def test_a_booking_opens_its_door_before_start_and_closes_it_when_the_room_empties(
    broker: Broker, probe: Probe, booking_system: BookingSystem, tmp_path: Path
) -> None:
    probe.subscribe(f"{PREFIX}/+/set")
    clock = ScaledClock(START, 1.0)
    async with running_center(
        broker,
        short_site(),
        tmp_path / "data",
        clock,
        webhook_url=booking_system.url,
        webhook_secret=SECRET,
    ) as center:
        await at_rest(center)
        occupancy(probe, "hui-xin-room", False)
        start = center.now() + timedelta(seconds=4)
        status, body = await center.call(
            "PUT",
            "/api/bookings/hx-1",
            BOOKING,
            {
                "room": "hui-xin-room",
                "start": start.isoformat(),
                "end": (start + timedelta(seconds=6)).isoformat(),
                "title": "书法兴趣小组",
            },
        )
        assert status == 201, body
        assert center.lock("lock-hui-xin-room") is LockState.LOCKED

        # Unlocked from start - 2 s, confirmed by the lock itself.
        await wait_until(lambda: center.lock("lock-hui-xin-room") is LockState.UNLOCKED, timeout=6)
        assert center.now() < start + timedelta(seconds=1)
        await wait_until(lambda: not center.service.locks.pending(), message="confirmed")

        await wait_until(lambda: center.now() >= start, timeout=5)
        occupancy(probe, "hui-xin-room", True)
        await wait_until(lambda: "booking.checked_in" in booking_system.types("hx-1"))

        # The end comes with people inside: the door stays open until they leave.
        await wait_until(lambda: "booking.ended" in booking_system.types("hx-1"), timeout=10)
        assert center.lock("lock-hui-xin-room") is LockState.UNLOCKED
        occupancy(probe, "hui-xin-room", False)
        await wait_until(lambda: center.lock("lock-hui-xin-room") is LockState.LOCKED)

        assert booking_system.types("hx-1") == [
            "booking.started",
            "booking.checked_in",
            "booking.ended",
        ]
        assert booking_system.bad_signatures == 0
        assert commands(probe, "lock-hui-xin-room")[-2:] == ["UNLOCK", "LOCK"]
        status, body = await center.call("GET", "/api/bookings?room=hui-xin-room", BOOKING)
        assert [booking["status"] for booking in body["bookings"]] == ["ended"]


async def test_a_no_show_is_released_locked_and_reported_with_a_signed_webhook(
    broker: Broker, probe: Probe, booking_system: BookingSystem, tmp_path: Path
) -> None:
    probe.subscribe(f"{PREFIX}/+/set")
    async with running_center(
        broker,
        short_site(),
        tmp_path / "data",
        ScaledClock(START, 1.0),
        webhook_url=booking_system.url,
        webhook_secret=SECRET,
    ) as center:
        await at_rest(center)
        occupancy(probe, "practice-hall", False)
        start = center.now() + timedelta(seconds=3)
        status, _ = await center.call(
            "PUT",
            "/api/bookings/ph-1",
            BOOKING,
            {
                "room": "practice-hall",
                "start": start.isoformat(),
                "end": (start + timedelta(minutes=30)).isoformat(),
            },
        )
        assert status == 201
        await wait_until(lambda: center.lock("lock-practice-hall") is LockState.UNLOCKED)
        await wait_until(lambda: "booking.no_show" in booking_system.types("ph-1"), timeout=10)
        await wait_until(lambda: center.lock("lock-practice-hall") is LockState.LOCKED)
        no_show = next(e for e in booking_system.received if e["type"] == "booking.no_show")
        assert no_show["data"]["booking"]["status"] == "no_show"
        assert no_show["site"] == "changbai"
        assert booking_system.bad_signatures == 0
        # The slot is free again: the rest of it can be booked.
        status, body = await center.call(
            "PUT",
            "/api/bookings/ph-2",
            BOOKING,
            {
                "room": "practice-hall",
                "start": (start + timedelta(minutes=5)).isoformat(),
                "end": (start + timedelta(minutes=30)).isoformat(),
            },
        )
        assert status == 201, body


async def test_on_fire_every_unlock_is_on_its_way_before_anything_is_logged(
    broker: Broker, probe: Probe, tmp_path: Path
) -> None:
    """The fire handler writes each UNLOCK to the socket as it decides it, not
    on the event loop's next turn after the handler's logging and re-deciding.

    A listener on the event log holds up the loop when it hears the first
    event of the fire: from then on only what the handler already wrote can
    reach the broker.
    """
    probe.subscribe(f"{PREFIX}/+/set")
    async with running_center(
        broker, short_site(), tmp_path / "data", ScaledClock(START, 1.0)
    ) as center:
        await at_rest(center)
        sent_before = {lock: len(commands(probe, lock)) for lock in LOCKS}

        def every_lock_told() -> bool:
            return all("UNLOCK" in commands(probe, lock)[sent_before[lock] :] for lock in LOCKS)

        seen_while_held: list[bool] = []

        def hold_loop(event: LoggedEvent) -> None:
            if not seen_while_held and event.kind in FIRE_PASS_EVENTS:
                seen_while_held.append(probe.wait_blocking(every_lock_told, timeout=3.0))

        center.service.events.listen(hold_loop)
        center.building.set_fire_alarm(True)
        await wait_until(lambda: seen_while_held, message="the fire pass logged")
        assert seen_while_held == [True]


async def test_fire_unlocks_every_door_and_nothing_can_lock_one_until_reset(
    broker: Broker, probe: Probe, tmp_path: Path
) -> None:
    probe.subscribe(f"{PREFIX}/+/set")
    async with running_center(
        broker, short_site(), tmp_path / "data", ScaledClock(START, 1.0)
    ) as center:
        await at_rest(center)
        occupancy(probe, "hui-xin-room", False)
        start = center.now() + timedelta(seconds=3)
        await center.call(
            "PUT",
            "/api/bookings/hx-fire",
            BOOKING,
            {
                "room": "hui-xin-room",
                "start": start.isoformat(),
                "end": (start + timedelta(seconds=4)).isoformat(),
            },
        )
        sent_before = {lock: len(commands(probe, lock)) for lock in LOCKS}

        center.building.set_fire_alarm(True)
        await wait_until(
            lambda: all(center.lock(lock) is LockState.UNLOCKED for lock in LOCKS),
            timeout=3,
            message="every door unlocked",
        )
        # Every lock was told, even those already open.
        for lock in LOCKS:
            assert commands(probe, lock)[sent_before[lock] :][:1] == ["UNLOCK"]

        # Every way to lock a door while the latch holds, tried and refused:
        status, body = await center.call("POST", "/api/rooms/gym/lock", STAFF)
        assert (status, body["error"]["code"]) == (409, "fire_alarm")
        assert body["error"]["message"] == "locked out: fire alarm active"
        status, _ = await center.call(
            "POST", "/api/rooms/hui-xin-room/unlock", STAFF, {"minutes": 1}
        )
        assert status == 202
        status, body = await center.call("POST", "/api/fire/reset", STAFF)
        assert status == 409, body  # the panel still reports the alarm
        occupancy(probe, "hui-xin-room", False)
        # The booking's no-show time and its end pass; nothing relocks.
        await wait_until(
            lambda: (
                (b := center.service.booking_store.get("hx-fire")) is not None
                and b.status.value in ("ended", "no_show")
            ),
            timeout=10,
        )
        center.building.set_fire_alarm(False)
        await wait_until(lambda: center.service.state.site_state.fire_alarm is False)
        status, body = await center.call("POST", "/api/rooms/practice-hall/lock", STAFF)
        assert status == 409
        assert all(center.lock(lock) is LockState.UNLOCKED for lock in LOCKS)
        assert all("LOCK" not in commands(probe, lock)[sent_before[lock] :] for lock in LOCKS)

        # A staff reset once the panel is quiet: the rules decide again.
        status, body = await center.call("POST", "/api/fire/reset", STAFF)
        assert status == 200, body
        assert body["latched"] is False
        await wait_until(lambda: center.lock("lock-convergence-hall") is LockState.LOCKED)
        assert center.lock("lock-main") is LockState.UNLOCKED  # center hours
        # The staff unlock given during the fire still runs its minute.
        assert center.lock("lock-hui-xin-room") is LockState.UNLOCKED


# -- kill -9 ------------------------------------------------------------------------


def run_controller(
    site_file: Path, broker: Broker, port: int, data_dir: Path
) -> subprocess.Popen[str]:
    return centerctl_run(
        site_file,
        {
            "CENTER_MQTT_URL": broker.url,
            "CENTER_HTTP_HOST": "127.0.0.1",
            "CENTER_HTTP_PORT": str(port),
            "CENTER_DATA_DIR": str(data_dir),
            "CENTER_API_TOKENS": TOKENS,
            "CENTER_LOG_LEVEL": "WARNING",
        },
    )


async def test_kill_9_mid_booking_keeps_the_booking_and_reconciles_the_locks(
    broker: Broker,
    probe: Probe,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    # A real process on the real clock: the center is open around the clock here.
    site_text = (
        CHANGBAI.read_text(encoding="utf-8")
        .replace(
            'hours = { open = "08:30", close = "21:00" }',
            'hours = { open = "00:00", close = "23:59" }',
        )
        .replace('unlock_before = "10m"', 'unlock_before = "1s"')
    )
    site_file = tmp_path / "site.toml"
    site_file.write_text(site_text, encoding="utf-8")
    site = parse_site(site_text)
    clock = SystemClock(ZONE)
    now = clock.now()
    end = now + timedelta(minutes=10)
    if end.date() != now.date() or end.time() > datetime.strptime("23:58", "%H:%M").time():
        pytest.skip("too close to midnight for a same-day booking in center hours")
    building = Building(site, start=now, weather=DailyWeather(20.0, 30.0), seed=1)
    sims = [
        sim
        for sim in mqtt_simulators(
            site,
            building,
            MqttEndpoint(host="127.0.0.1", port=broker.port, tls=False),
            clock=clock,
        )
        if isinstance(sim, LockSimulator)
    ]
    locks = {sim.device.id: sim for sim in sims}
    tasks = [asyncio.create_task(sim.run()) for sim in sims]
    probe.subscribe(f"{PREFIX}/+/set")
    port = free_port()
    data_dir = tmp_path / "data"
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {BOOKING}"}
    try:
        processes.append(run_controller(site_file, broker, port, data_dir))
        async with aiohttp.ClientSession() as http:

            async def up() -> bool:
                try:
                    async with http.get(base + "/api/health") as reply:
                        return bool((await reply.json())["mqtt"]["connected"])
                except aiohttp.ClientError:
                    return False

            async def wait_up() -> None:
                for _ in range(300):
                    if await up():
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError("controller did not come up")

            await wait_up()
            await wait_until(
                lambda: locks["lock-hui-xin-room"].state is LockState.LOCKED, timeout=10
            )
            start = clock.now() + timedelta(seconds=2)
            async with http.put(
                base + "/api/bookings/hx-kill",
                json={"room": "hui-xin-room", "start": start.isoformat(), "end": end.isoformat()},
                headers=headers,
            ) as reply:
                assert reply.status == 201, await reply.text()
            await wait_until(
                lambda: locks["lock-hui-xin-room"].state is LockState.UNLOCKED, timeout=10
            )
            occupancy(probe, "hui-xin-room", True)

            async def status() -> str:
                async with http.get(base + "/api/bookings?room=hui-xin-room", headers=headers) as r:
                    return str((await r.json())["bookings"][0]["status"])

            for _ in range(200):
                if await status() == "checked_in":
                    break
                await asyncio.sleep(0.05)
            assert await status() == "checked_in"

            processes[0].send_signal(signal.SIGKILL)
            processes[0].wait(10)
            # While it is down somebody locks the room by hand.
            probe.publish(f"{PREFIX}/lock-hui-xin-room/set", b'{"state": "LOCK"}')
            await wait_until(lambda: locks["lock-hui-xin-room"].state is LockState.LOCKED)
            sent_before = {lock: len(commands(probe, lock)) for lock in LOCKS}

            processes.append(run_controller(site_file, broker, port, data_dir))
            await wait_up()
            assert await status() == "checked_in"
            # Reconciled: the booked room is unlocked again; the others, already
            # where the rules want them, get no command at all.
            await wait_until(
                lambda: locks["lock-hui-xin-room"].state is LockState.UNLOCKED, timeout=10
            )
            assert commands(probe, "lock-hui-xin-room")[sent_before["lock-hui-xin-room"] :] == [
                "UNLOCK"
            ]
            for lock in LOCKS:
                if lock != "lock-hui-xin-room":
                    assert commands(probe, lock)[sent_before[lock] :] == [], lock
            async with http.get(
                base + "/api/events?kind=booking_started,booking_checked_in", headers=headers
            ) as reply:
                kinds = [event["kind"] for event in (await reply.json())["events"]]
            assert kinds == ["booking_started", "booking_checked_in"]  # nothing repeated
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
