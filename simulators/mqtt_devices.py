"""Simulated MQTT devices: each one a separate client that reports the building's story.

Every device behaves like the hardware it stands in for, as far as the
controller can tell: its own connection (client id ``sim-{site}-{device}``)
with a retained ``offline`` last will on its availability topic, ``online``
retained on every connect, its state on change and as a heartbeat every
``interval`` of simulated time, the payload format and topics of its site
entry, and a reconnect loop with backoff when the broker goes away. On a
clean stop it says ``offline`` itself before disconnecting.

Devices only *observe* the :class:`~simulators.people.Building` (and locks
take commands); they learn about moves through its change callbacks, so a
sensor reports within a simulated second of a change without polling.

Each device runs as one ``run()`` coroutine. While connected it keeps two
tasks for the lifetime of the connection, one reading the link (commands, and
noticing at once when the link dies) and one reporting; nothing is spawned
per message.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

import orjson

from controller.clock import Clock, ScaledClock, sleep_or_wake
from controller.ingest import availability_topic, command_topic, state_topic
from controller.readings import LockState
from controller.settings import MqttEndpoint
from controller.site import Device, DeviceKind, PayloadFormat, Site
from drivers.mqtt import Message, MqttClient, MqttError, Will
from simulators.faults import NO_FAULTS, FaultPlan, Verdict
from simulators.people import AlarmChanged, Building, Change, Movement

_log = logging.getLogger("simulators.mqtt_devices")

# The example site's corridor and coffee corner have plain PIR sensors
# (presence, no count); every other occupancy sensor is an mmWave counter.
DEFAULT_PIR = frozenset({"occ-corridor", "occ-coffee"})
DEFAULT_INTERVAL = 30.0  # s, for a device whose site entry gives none
# A PIR sensor keeps reporting "occupied" this long after the last movement.
PIR_HOLD = 60.0  # s
# How long a door stands open when somebody walks through it.
DOOR_OPEN = (3.0, 6.0)  # s
# A lock's motor takes this long to follow a command.
LOCK_ACTUATION = (0.2, 1.0)  # s

State = dict[str, object]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays in simulated seconds: ``initial``, doubling up to ``maximum``."""

    initial: float = 1.0
    maximum: float = 30.0

    @classmethod
    def real_time(cls, speed: float, initial: float = 0.5, maximum: float = 10.0) -> Backoff:
        """Delays that are ``initial``..``maximum`` *real* seconds at ``speed`` times real time.

        A broker that is down is down in real time; at 600x a backoff of a
        simulated second would hammer it.
        """
        return cls(initial * speed, maximum * speed)


@dataclass(frozen=True, slots=True)
class Link:
    """Where and how the devices connect."""

    endpoint: MqttEndpoint
    prefix: str
    site_id: str
    ca_file: Path | None = None
    keepalive: int = 30
    backoff: Backoff = Backoff()


@dataclass(frozen=True, slots=True)
class DeviceContext:
    """What every simulated device shares: the story, the link, the time and the faults."""

    building: Building
    link: Link
    clock: Clock
    faults: FaultPlan = NO_FAULTS
    seed: int = 0
    # clock.monotonic() when the run started; fault offsets (reset@30m) count from it.
    started: float = 0.0


@dataclass(slots=True)
class SimStats:
    published: int = 0  # state messages that went out (garbage included)
    dropped: int = 0  # state messages the drop fault swallowed
    garbled: int = 0  # state messages the garbage fault replaced
    connects: int = 0
    commands: int = 0


class DeviceSimulator:
    """One simulated MQTT device; subclasses say what it reports and how it reacts."""

    kind: ClassVar[DeviceKind]
    retain: ClassVar[bool] = False
    qos: ClassVar[int] = 0
    # Changes closer together than this are reported together (sensors rate-limit too).
    min_gap: ClassVar[float] = 1.0
    battery_powered: ClassVar[bool] = True

    def __init__(self, device: Device, context: DeviceContext) -> None:
        if device.kind is not self.kind:
            raise ValueError(f"{device.id} is a {device.kind.value}, not a {self.kind.value}")
        self.device = device
        self.stats = SimStats()
        self.state_topic = state_topic(device, context.link.prefix)
        self.availability_topic = availability_topic(device, context.link.prefix)
        self._building = context.building
        self._link = context.link
        self._clock = context.clock
        self._rng = random.Random(f"{context.seed}/{device.id}")
        self._faults = context.faults.messages(device.id, context.seed)
        self._dead = device.id in context.faults.dead
        self._interval = device.interval.total_seconds() if device.interval else DEFAULT_INTERVAL
        self._z2m = device.format is PayloadFormat.ZIGBEE2MQTT
        self._battery = self._rng.randint(70, 100)
        self._wake = asyncio.Event()
        self._dirty = True
        self._force = False
        self._last_sent: float | None = None
        self._last_reading: State | None = None
        self._connected = False
        self._outage = False
        self._failures = 0  # connection attempts refused since the link was last up

    # -- what subclasses provide --------------------------------------------

    def _reading(self) -> State:
        """The device's state now, in its payload format, without decoration."""
        raise NotImplementedError

    def _on_change(self, change: Change) -> None:
        """Something happened in the building (called synchronously; only take note)."""

    def _timers(self, now: float) -> float | None:
        """Act on whatever fell due by ``now``; return the next such moment, if any."""
        return None

    def _on_connect(self, now: float) -> None:
        """Called on every (re)connect, before the first report."""

    def _command_topics(self) -> list[str]:
        return []

    def _on_message(self, message: Message) -> None:
        """A message on one of ``_command_topics``."""

    # -- for subclasses -----------------------------------------------------

    def _changed(self, *, force: bool = False) -> None:
        """Report soon; ``force`` even if the reading looks the same (a command's confirmation)."""
        self._dirty = True
        self._force = self._force or force
        self._wake.set()

    # -- running ------------------------------------------------------------

    async def run(self) -> None:
        """Be the device until cancelled, reconnecting whenever the link fails."""
        if self._dead:
            await self._play_dead()
            return
        unsubscribe = self._building.subscribe(self._on_change)
        backoff = self._link.backoff
        delay = backoff.initial
        try:
            while True:
                try:
                    await self._connect_and_serve()
                except MqttError as error:
                    self._outage = True
                    if self._connected:
                        _log.warning(
                            "%s: lost the broker (%s); reconnecting", self.device.id, error
                        )
                        self._connected = False
                        delay = backoff.initial
                    elif self._failures == 0:
                        _log.warning("%s: cannot reach the broker (%s)", self.device.id, error)
                        self._failures += 1
                    else:
                        _log.debug("%s: still cannot reach the broker (%s)", self.device.id, error)
                        self._failures += 1
                await self._clock.sleep(delay * self._rng.uniform(0.8, 1.2))
                delay = min(delay * 2, backoff.maximum)
        finally:
            unsubscribe()

    def _client(self) -> MqttClient:
        endpoint = self._link.endpoint
        password = endpoint.password.get_secret_value() if endpoint.password else None
        return MqttClient(
            host=endpoint.host,
            port=endpoint.port,
            client_id=f"sim-{self._link.site_id}-{self.device.id}",
            username=endpoint.username,
            password=password,
            tls=endpoint.tls,
            ca_file=self._link.ca_file,
            keepalive=self._link.keepalive,
            will=Will(self.availability_topic, b"offline", qos=1, retain=True),
            logger=_log,
        )

    async def _connect_and_serve(self) -> None:
        client = self._client()
        async with client:
            if self._outage:
                _log.info("%s: connected to the broker again", self.device.id)
            self._connected = True
            self._outage = False
            self._failures = 0
            self.stats.connects += 1
            try:
                await client.publish(self.availability_topic, b"online", qos=1, retain=True)
                topics = self._command_topics()
                if topics:
                    await client.subscribe([(topic, 1) for topic in topics])
                self._last_sent = None
                self._last_reading = None
                self._on_connect(self._clock.monotonic())
                self._changed()
                try:
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._listen(client), name=f"{self.device.id}-listen")
                        group.create_task(self._report(client), name=f"{self.device.id}-report")
                except* MqttError as errors:
                    raise errors.exceptions[0] from None
            except asyncio.CancelledError:
                await self._say_offline(client)
                raise

    async def _say_offline(self, client: MqttClient) -> None:
        try:
            await client.publish(self.availability_topic, b"offline", qos=1, retain=True)
        except MqttError as error:
            _log.info(
                "%s: could not say offline (%s); the broker's last will does", self.device.id, error
            )

    async def _play_dead(self) -> None:
        """The ``dead`` fault: say ``offline`` once, then nothing, ever."""
        delay = self._link.backoff.initial
        while True:
            try:
                async with self._client() as client:
                    await client.publish(self.availability_topic, b"offline", qos=1, retain=True)
                break
            except MqttError as error:
                _log.debug("%s (dead): cannot say offline yet (%s)", self.device.id, error)
            await self._clock.sleep(delay)
            delay = min(delay * 2, self._link.backoff.maximum)
        _log.info("%s: dead (fault): said offline and stays silent", self.device.id)
        await asyncio.get_running_loop().create_future()  # until cancelled

    async def _listen(self, client: MqttClient) -> None:
        """Take commands; raises MqttError the moment the link dies, which ends the session."""
        async for batch in client.batches():
            for message in batch:
                self._on_message(message)

    async def _report(self, client: MqttClient) -> None:
        clock = self._clock
        while True:
            now = clock.monotonic()
            deadlines = [self._heartbeat_at()]
            timer = self._timers(now)
            if timer is not None:
                deadlines.append(timer)
            if now >= deadlines[0]:
                await self._send(client, now, self._reading())
                continue
            if self._dirty:
                last = -math.inf if self._last_sent is None else self._last_sent
                gap_at = last + self.min_gap
                if now >= gap_at:
                    reading = self._reading()
                    if self._force or reading != self._last_reading:
                        await self._send(client, now, reading)
                        continue
                    self._dirty = False
                else:
                    deadlines.append(gap_at)
            self._wake.clear()
            await sleep_or_wake(clock, self._wake, min(deadlines) - now)

    def _heartbeat_at(self) -> float:
        return -math.inf if self._last_sent is None else self._last_sent + self._interval

    async def _send(self, client: MqttClient, now: float, reading: State) -> None:
        self._last_sent = now
        self._last_reading = reading
        self._dirty = False
        self._force = False
        verdict = self._faults.decide()
        if verdict is Verdict.DROP:
            self.stats.dropped += 1
            return
        if verdict is Verdict.GARBAGE:
            payload = self._faults.garbage(self.kind, self.device.format)
            self.stats.garbled += 1
        else:
            payload = orjson.dumps({**reading, **self._decoration()})
        await client.publish(self.state_topic, payload, qos=self.qos, retain=self.retain)
        self.stats.published += 1

    def _decoration(self) -> State:
        """What Zigbee2MQTT adds to every payload; the controller ignores it."""
        if not self._z2m:
            return {}
        extra: State = {"linkquality": self._rng.randint(60, 200)}
        if self.battery_powered:
            extra["battery"] = self._battery
        return extra


class OccupancySimulator(DeviceSimulator):
    """An mmWave presence counter (``counting``) or a PIR motion sensor.

    A PIR only knows "someone moved here lately": it reports occupied as soon
    as somebody comes in and vacant :data:`PIR_HOLD` seconds after the last
    person left, and never a count.
    """

    kind = DeviceKind.OCCUPANCY

    def __init__(self, device: Device, context: DeviceContext, *, counting: bool = True) -> None:
        super().__init__(device, context)
        self.room = _room_of(device)
        self.counting = counting
        self._vacated: float | None = None

    def _on_change(self, change: Change) -> None:
        if isinstance(change, Movement) and self.room in (change.source, change.target):
            empty = self._building.occupants(self.room) == 0
            self._vacated = self._clock.monotonic() if empty else None
            self._changed()

    def _timers(self, now: float) -> float | None:
        if self.counting or self._vacated is None:
            return None
        until = self._vacated + PIR_HOLD
        if now < until:
            return until
        self._vacated = None
        self._changed()
        return None

    def _reading(self) -> State:
        count = self._building.occupants(self.room)
        key = "occupancy" if self._z2m else "occupied"
        if self.counting:
            return {key: count > 0, "people" if self._z2m else "count": count}
        return {key: count > 0 or self._vacated is not None}


class CounterSimulator(DeviceSimulator):
    """A people counter over a door: cumulative ``in``/``out`` since it booted.

    It boots with arbitrary equal totals (a counter that has been running for
    months); the ``reset`` fault reboots it, and the totals start again at 0.
    """

    kind = DeviceKind.PEOPLE_COUNTER
    qos = 1

    def __init__(self, device: Device, context: DeviceContext) -> None:
        super().__init__(device, context)
        self.room = device.room or context.building.entrance
        entries, exits = context.building.door_totals(self.room)
        base = self._rng.randint(1_000, 50_000)
        self._offset = (base - entries, base - exits)
        self._resets = [
            context.started + offset.total_seconds()
            for offset in context.faults.resets_of(device.id)
        ]

    def _on_change(self, change: Change) -> None:
        if isinstance(change, Movement) and change.through_door_of(
            self.room, self._building.entrance
        ):
            self._changed()

    def _timers(self, now: float) -> float | None:
        while self._resets and now >= self._resets[0]:
            self._resets.pop(0)
            entries, exits = self._building.door_totals(self.room)
            self._offset = (-entries, -exits)
            _log.info("%s: rebooted (fault); totals start again from 0", self.device.id)
            self._changed(force=True)
        return self._resets[0] if self._resets else None

    def _reading(self) -> State:
        entries, exits = self._building.door_totals(self.room)
        return {"in": entries + self._offset[0], "out": exits + self._offset[1]}


class ClimateSimulator(DeviceSimulator):
    """A temperature and humidity sensor in a room, or outdoors when it has no room.

    It samples four times per reporting interval and reports early when the
    temperature moved by 0.2 °C or the humidity by 2 %RH, like a Zigbee sensor
    with reportable-change thresholds.
    """

    kind = DeviceKind.CLIMATE

    def __init__(self, device: Device, context: DeviceContext) -> None:
        super().__init__(device, context)
        self.room = device.room
        self._sample_every = self._interval / 4
        self._next_sample = -math.inf
        self._sample: tuple[float, float] = (0.0, 0.0)

    def _on_connect(self, now: float) -> None:
        self._take_sample(now)

    def _timers(self, now: float) -> float | None:
        if now >= self._next_sample:
            self._take_sample(now)
            last = self._last_reading
            if last is not None:
                temperature, humidity = self._sample
                moved = abs(temperature - _number(last["temperature"])) >= 0.2
                if moved or abs(humidity - _number(last["humidity"])) >= 2:
                    self._changed()
        return self._next_sample

    def _take_sample(self, now: float) -> None:
        building = self._building
        if self.room is None:
            temperature, humidity = building.outdoor_temperature(), building.outdoor_humidity()
        else:
            temperature = building.room_temperature(self.room)
            humidity = building.room_humidity(self.room)
        self._sample = (
            round(temperature + self._rng.gauss(0.0, 0.05), 1),
            round(min(100.0, max(0.0, humidity + self._rng.gauss(0.0, 0.5)))),
        )
        self._next_sample = now + self._sample_every

    def _reading(self) -> State:
        temperature, humidity = self._sample
        return {"temperature": temperature, "humidity": humidity}


def _room_of(device: Device) -> str:
    if device.room is None:  # the site file's validation already refuses this
        raise ValueError(f"{device.id}: a {device.kind.value} device must name its room")
    return device.room


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


@dataclass(slots=True)
class _Pending:
    at: float
    state: LockState
    command: str  # "LOCK" | "UNLOCK", as Zigbee2MQTT echoes it


class LockSimulator(DeviceSimulator):
    """An electronic door lock with a door contact.

    Starts unlocked with the door closed; follows ``{"state": "LOCK"|"UNLOCK"}``
    on its command topic after a short motor delay and confirms every command
    with its state (retained, QoS 1), even one that changes nothing. The door
    opens for a few seconds whenever somebody walks through it; the lock does
    not stop people (the scenario does not know about bookings), it only
    reports. With the ``jam`` fault it jams on its next command and stays
    jammed.
    """

    kind = DeviceKind.LOCK
    retain = True
    qos = 1
    min_gap = 0.0

    def __init__(self, device: Device, context: DeviceContext) -> None:
        super().__init__(device, context)
        self.room = _room_of(device)
        self.command_topic = command_topic(device, context.link.prefix)
        self.state = LockState.UNLOCKED
        self._command = "UNLOCK"
        self._pending: _Pending | None = None
        self._jam_armed = device.id in context.faults.jam
        self._door_open_until: float | None = None

    @property
    def door_open(self) -> bool:
        return self._door_open_until is not None

    def _command_topics(self) -> list[str]:
        return [self.command_topic]

    def _on_message(self, message: Message) -> None:
        if message.topic != self.command_topic:
            return
        command = _lock_command(message.payload)
        if command is None:
            _log.warning("%s: ignored a command it does not understand", self.device.id)
            return
        self.stats.commands += 1
        target = LockState.LOCKED if command == "LOCK" else LockState.UNLOCKED
        if self._jam_armed or self.state is LockState.JAMMED:
            self._jam_armed = False
            target = LockState.JAMMED
        now = self._clock.monotonic()
        self._pending = _Pending(now + self._rng.uniform(*LOCK_ACTUATION), target, command)
        self._wake.set()

    def _on_change(self, change: Change) -> None:
        if isinstance(change, Movement) and change.through_door_of(
            self.room, self._building.entrance
        ):
            now = self._clock.monotonic()
            until = now + self._rng.uniform(*DOOR_OPEN)
            if self._door_open_until is None:
                self._changed()
            self._door_open_until = max(until, self._door_open_until or until)
            self._wake.set()

    def _timers(self, now: float) -> float | None:
        pending = self._pending
        if pending is not None and now >= pending.at:
            if pending.state is LockState.JAMMED and self.state is not LockState.JAMMED:
                _log.info("%s: jammed (fault)", self.device.id)
            self.state = pending.state
            self._command = pending.command
            self._pending = None
            self._changed(force=True)
        if self._door_open_until is not None and now >= self._door_open_until:
            self._door_open_until = None
            self._changed()
        timers = [] if self._pending is None else [self._pending.at]
        if self._door_open_until is not None:
            timers.append(self._door_open_until)
        return min(timers, default=None)

    def _reading(self) -> State:
        door = "open" if self.door_open else "closed"
        if not self._z2m:
            return {"state": self.state.value, "door": door}
        lock_state = {
            LockState.LOCKED: "locked",
            LockState.UNLOCKED: "unlocked",
            LockState.JAMMED: "not_fully_locked",
        }[self.state]
        return {"state": self._command, "lock_state": lock_state, "contact": not self.door_open}


def _lock_command(payload: bytes) -> str | None:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    state = body.get("state") if isinstance(body, dict) else None
    if isinstance(state, str) and state.upper() in ("LOCK", "UNLOCK"):
        return state.upper()
    return None


class FireAlarmSimulator(DeviceSimulator):
    """The fire-alarm panel: ``{"alarm": bool}`` (``smoke`` for Zigbee2MQTT), retained."""

    kind = DeviceKind.FIRE_ALARM
    retain = True
    qos = 1
    min_gap = 0.0
    battery_powered = False

    def _on_change(self, change: Change) -> None:
        if isinstance(change, AlarmChanged):
            self._changed()

    def _reading(self) -> State:
        return {"smoke" if self._z2m else "alarm": self._building.fire_alarm}


_CLASSES: Mapping[DeviceKind, type[DeviceSimulator]] = MappingProxyType(
    {
        DeviceKind.OCCUPANCY: OccupancySimulator,
        DeviceKind.PEOPLE_COUNTER: CounterSimulator,
        DeviceKind.CLIMATE: ClimateSimulator,
        DeviceKind.LOCK: LockSimulator,
        DeviceKind.FIRE_ALARM: FireAlarmSimulator,
    }
)


def _speed_of(clock: Clock) -> float:
    """How many simulated seconds pass per real second on ``clock`` (1 unless scaled)."""
    return clock.speed if isinstance(clock, ScaledClock) else 1.0


def mqtt_simulators(
    site: Site,
    building: Building,
    endpoint: MqttEndpoint,
    *,
    clock: Clock,
    prefix: str | None = None,
    faults: FaultPlan | None = None,
    seed: int = 0,
    pir: Collection[str] = DEFAULT_PIR,
    ca_file: Path | None = None,
    backoff: Backoff | None = None,
) -> list[DeviceSimulator]:
    """One simulator per MQTT device of ``site``, all reporting ``building``.

    ``pir`` names the occupancy sensors that are PIR (no count); the others
    count. Without ``backoff``, reconnects wait 0.5 to 10 *real* seconds
    whatever the clock's speed. Raises ValueError when the fault plan does
    not fit the site.
    """
    plan = faults or NO_FAULTS
    problems = plan.problems(site)
    if problems:
        raise ValueError("faults do not fit the site: " + "; ".join(problems))
    link = Link(
        endpoint=endpoint,
        prefix=(prefix or f"center/{site.site.id}").rstrip("/"),
        site_id=site.site.id,
        ca_file=ca_file,
        backoff=backoff or Backoff.real_time(_speed_of(clock)),
    )
    context = DeviceContext(building, link, clock, plan, seed, started=clock.monotonic())
    simulators: list[DeviceSimulator] = []
    for device in site.devices:
        if not device.is_mqtt:
            continue
        if device.kind is DeviceKind.OCCUPANCY:
            counting = device.id not in pir
            simulators.append(OccupancySimulator(device, context, counting=counting))
        else:
            simulators.append(_CLASSES[device.kind](device, context))
    return simulators
