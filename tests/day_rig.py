"""The whole center in one process for a simulated day, and what the day tests observe.

:func:`whole_center` wires what ``centerctl demo`` wires (controller/demo.py),
on one :class:`~controller.clock.ScaledClock`: a real Mosquitto (the
``broker`` fixture), :class:`~simulators.center.SimulatedCenter` (every MQTT
device and the pymodbus servers, on free ports), and the real
:class:`~controller.service.ControllerService` with its HTTP API, reached
over loopback like any client.

The observers here are the ground truth the controller is judged against,
never the controller's own state:

- :class:`Story` holds the scenario's people still and lets them go again
  (every device keeps reporting meanwhile). The day starts held, so nobody
  walks in before the controller has the entrance counter's baseline, and a
  test can hold the story where it needs a quiet entrance (a counter reboot,
  the final count).
- :class:`EntranceLog` notes every passage through the street door, and
  when it happened on the shared clock.
- :class:`Wiretap` is an MQTT client of its own on the same broker: it
  knows when each device was last heard, so which silences the controller
  must call ``offline`` (and which it must not).
- :class:`ReadingLog` keeps the readings of chosen devices as the controller
  received them (on its bus), e.g. every power change of an air conditioner.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time as real_time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import aiohttp
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from controller.clock import ScaledClock
from controller.events import ReadingReceived
from controller.readings import Reading
from controller.service import ControllerService
from controller.settings import MqttEndpoint
from controller.site import Site
from controller.site_profiles import load_site_with_profiles
from simulators.center import SimulatedCenter, site_with_ports
from simulators.faults import FaultPlan
from simulators.people import Building, Change, Movement
from simulators.scenarios import ScenarioRunner
from tests.conftest import CHANGBAI, Broker, controller_settings, wait_until

T = TypeVar("T")

_log = logging.getLogger("tests.day")

SH = ZoneInfo("Asia/Shanghai")
STAFF_TOKEN = "day-staff-6Tq2Wm8Kx"
KIOSK_TOKEN = "day-kiosk-3Hn7Vb1Zr"
OTHER_KIOSK_TOKEN = "day-kiosk-9Pc4Ld5Js"
TOKENS = {STAFF_TOKEN: ["staff"], KIOSK_TOKEN: ["kiosk"], OTHER_KIOSK_TOKEN: ["kiosk"]}


async def poll_until(
    check: Callable[[], Awaitable[T | None]], *, timeout: float, message: str
) -> T:
    """Await ``check`` until it returns something truthy, or fail after ``timeout`` real s."""
    deadline = real_time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if real_time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        await asyncio.sleep(0.01)


# -- the story ---------------------------------------------------------------------


class Story:
    """The scenario's people, moving or held still; the devices run either way.

    :class:`SimulatedCenter` starts the story at once; :meth:`take_over`
    stops that task before it has run a step, and from then on the story
    moves only between :meth:`resume` and :meth:`hold`. A held story keeps
    the building as it was (the clock goes on): when it moves again, the
    people due meanwhile move at once, in order.
    """

    def __init__(self, runner: ScenarioRunner) -> None:
        self._runner = runner
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def take_over(cls, runner: ScenarioRunner) -> Story:
        """Stop the simulated center's own story task (named ``scenario``); start held."""
        started = [
            task
            for task in asyncio.all_tasks()
            if task.get_name() == "scenario" and not task.done()
        ]
        assert len(started) == 1, f"expected the simulated center's story task, found {started}"
        started[0].cancel()
        return cls(runner)

    @property
    def moving(self) -> bool:
        return self._task is not None

    def resume(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._runner.run(), name="day-story")

    async def hold(self) -> None:
        """Stop moving people (the building stays as it is now); raises if the story failed."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- ground truth --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Passage:
    at: datetime
    entered: bool  # False: left through the street door


class EntranceLog:
    """Every passage through the building's street door, when it happened.

    "When" is the shared clock's time as the story made the move, which is
    when the devices could see it: a move due while the story was held
    happens (late) when it moves again, and is stamped then.
    """

    def __init__(self, building: Building, clock: ScaledClock) -> None:
        self.passages: list[Passage] = []
        self._clock = clock
        self._unsubscribe = building.subscribe(self._on_change)

    def _on_change(self, change: Change) -> None:
        if isinstance(change, Movement) and (change.source is None or change.target is None):
            self.passages.append(Passage(self._clock.now(), entered=change.source is None))

    def totals(self, until: datetime | None = None) -> tuple[int, int]:
        """(entries, exits) up to ``until`` (inclusive), or all of them."""
        chosen = [p for p in self.passages if until is None or p.at <= until]
        entries = sum(1 for p in chosen if p.entered)
        return entries, len(chosen) - entries

    def close(self) -> None:
        self._unsubscribe()


class ReadingLog:
    """Readings of some devices as the controller's bus delivered them, in order."""

    def __init__(self, service: ControllerService, devices: Iterable[str]) -> None:
        self._devices = frozenset(devices)
        self.readings: dict[str, list[tuple[datetime, Reading]]] = {d: [] for d in self._devices}
        self.listeners: list[Callable[[ReadingReceived], None]] = []
        self._unsubscribe = service.bus.subscribe(ReadingReceived, self._on_reading)

    def _on_reading(self, event: ReadingReceived) -> None:
        if event.device_id in self._devices and not event.retained:
            self.readings[event.device_id].append((event.time, event.reading))
            for listener in self.listeners:
                listener(event)

    def close(self) -> None:
        self._unsubscribe()


@dataclass(frozen=True, slots=True)
class Silence:
    device: str
    start: float  # clock.monotonic() of the last message before it
    end: float  # of the first message after it (or when it was measured)


class Wiretap:
    """Its own MQTT client: when was each MQTT device last heard, as any subscriber hears it.

    "Heard" is what the controller counts as a sign of life: a live state
    message or an ``online`` on the availability topic. The times are the
    shared clock's (read on paho's network thread; the clock is arithmetic on
    ``time.monotonic``, so that is safe).
    """

    def __init__(self, port: int, prefix: str, site: Site, clock: ScaledClock) -> None:
        self._clock = clock
        self._prefix = prefix.rstrip("/")
        self.limits = {
            device.id: device.interval.total_seconds() * site.rules.offline_after_missed
            for device in site.devices
            if device.is_mqtt and device.interval is not None
        }
        self._heard: dict[str, list[float]] = {device: [] for device in self.limits}
        self._lock = threading.Lock()
        self._port = port
        self._client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._acknowledged = 0

    @property
    def listening(self) -> bool:
        """Whether the broker has confirmed both subscriptions."""
        return self._acknowledged == 2

    def start(self) -> None:
        self._client.connect("127.0.0.1", self._port)
        self._client.loop_start()
        for topic in (f"{self._prefix}/+/state", f"{self._prefix}/+/availability"):
            result, _ = self._client.subscribe(topic, qos=1)
            assert result == paho.MQTT_ERR_SUCCESS

    def _on_subscribe(self, client: paho.Client, userdata: Any, *rest: Any) -> None:
        self._acknowledged += 1

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        now = self._clock.monotonic()
        parts = message.topic.rsplit("/", 2)
        if len(parts) != 3 or parts[1] not in self._heard:
            return
        device, channel = parts[1], parts[2]
        alive = (channel == "state" and not message.retain) or (
            channel == "availability" and message.payload == b"online"
        )
        if alive:
            with self._lock:
                self._heard[device].append(now)

    def silences(self, since: float, until: float, *, margin: float = 0.0) -> list[Silence]:
        """Gaps between signs of life within [since, until] longer than the
        device's offline limit plus ``margin`` seconds (negative: less)."""
        found = []
        with self._lock:
            heard = {device: list(times) for device, times in self._heard.items()}
        for device, times in heard.items():
            points = [since, *(t for t in times if since < t < until), until]
            limit = self.limits[device] + margin
            found += [
                Silence(device, start, end)
                for start, end in itertools.pairwise(points)
                if end - start > limit
            ]
        return found


# -- the whole center ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str]


class Api:
    """The controller's HTTP API over loopback, as staff, kiosks and screens use it."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base = base_url

    async def call(
        self,
        method: str,
        path: str,
        token: str = STAFF_TOKEN,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> Reply:
        async with self._session.request(
            method,
            self._base + path,
            json=body,
            params=params,
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            payload = await response.json()
            assert response.status != 500, payload
            return Reply(response.status, payload, dict(response.headers))

    async def get(self, path: str, token: str = STAFF_TOKEN, **params: str) -> Any:
        reply = await self.call("GET", path, token, params=params)
        assert reply.status == 200, (path, reply.body)
        return reply.body


@dataclass
class Day:
    """A running simulated day: what a test drives and what it checks against."""

    clock: ScaledClock
    site: Site
    center: SimulatedCenter
    service: ControllerService
    api: Api
    story: Story
    entrance: EntranceLog
    wiretap: Wiretap
    readings: ReadingLog
    start: datetime  # the clock's start (its monotonic 0)
    ready_at: float  # clock.monotonic() when the controller was up

    def moment(self, when: datetime) -> float:
        """``when`` as a reading of ``clock.monotonic()``."""
        return (when - self.start).total_seconds()

    @property
    def building(self) -> Building:
        return self.center.runner.building

    @property
    def date(self) -> date:
        return self.clock.now().astimezone(SH).date()

    def at(self, moment: time) -> datetime:
        """``moment`` on the simulated day, in the site's zone."""
        return datetime.combine(self.date, moment, tzinfo=SH)

    async def until(self, moment: time | datetime) -> None:
        """Wait on the shared clock until ``moment`` of the simulated day."""
        target = moment if isinstance(moment, datetime) else self.at(moment)
        await self.clock.sleep((target - self.clock.now()).total_seconds())


async def _every_device_online(api: Api) -> bool:
    devices = (await api.get("/api/devices"))["devices"]
    return all(device["online"] is True for device in devices)


async def _stopped(controller: asyncio.Task[None]) -> None:
    """Wait for the controller to finish stopping (its ``stop`` event is set)."""
    done, _ = await asyncio.wait({controller}, timeout=10)
    assert done, "the controller did not stop within 10 s"
    controller.result()


@contextlib.asynccontextmanager
async def whole_center(
    broker: Broker,
    *,
    scenario: str,
    start: datetime,
    speed: float,
    faults: FaultPlan,
    seed: int,
    watch: Iterable[str] = (),
) -> AsyncIterator[Day]:
    """Broker, simulated center and controller on one clock from ``start``; the story held.

    ``watch`` names devices whose readings the controller receives are kept
    (:attr:`Day.readings`). On leaving, the controller stops first, then the
    simulators (whose devices then say ``offline``: check alarms before).
    """
    center_files = load_site_with_profiles(CHANGBAI)
    site = center_files.site
    clock = ScaledClock(start, speed)
    settings = controller_settings(broker, api_tokens=TOKENS)
    prefix = settings.topic_prefix(site.site.id)
    wiretap = Wiretap(broker.port, prefix, site, clock)
    wiretap.start()
    try:
        await wait_until(lambda: wiretap.listening, message="the wiretap's subscriptions")
        async with SimulatedCenter(
            site,
            center_files.profiles,
            MqttEndpoint.parse(broker.url),
            clock=clock,
            speed=speed,
            scenario=scenario,
            faults=faults,
            seed=seed,
            prefix=prefix,
            port_for=lambda device: 0,
        ) as center:
            story = Story.take_over(center.runner)
            entrance = EntranceLog(center.runner.building, clock)
            service = ControllerService(
                settings,
                site_with_ports(site, center.modbus_ports),
                clock,
                profiles=center_files.profiles,
            )
            readings = ReadingLog(service, watch)
            stop = asyncio.Event()
            ready = asyncio.Event()
            controller = asyncio.create_task(service.run(stop, ready), name="controller")
            try:
                waiting = asyncio.create_task(ready.wait())
                await asyncio.wait((controller, waiting), return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                if controller.done():
                    controller.result()
                async with aiohttp.ClientSession() as session:
                    api = Api(session, f"http://127.0.0.1:{service.http_port}")
                    await poll_until(
                        lambda: _every_device_online(api),
                        timeout=15,
                        message="the controller to hear from every device",
                    )
                    yield Day(
                        clock=clock,
                        site=site,
                        center=center,
                        service=service,
                        api=api,
                        story=story,
                        entrance=entrance,
                        wiretap=wiretap,
                        readings=readings,
                        start=start,
                        ready_at=clock.monotonic(),
                    )
            finally:
                await story.hold()
                stop.set()
                await _stopped(controller)
                readings.close()
                entrance.close()
    finally:
        wiretap.stop()
