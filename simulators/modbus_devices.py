"""What the simulated Modbus devices do: air conditioners and document cabinets.

Each behaviour sits on a :class:`~simulators.modbus_server.ModbusDeviceServer`
and touches the device only through its points in physical units
(``server.get("setpoint")``), never through addresses, so it works unchanged
with any vendor profile for its kind of device. Everything that takes time (a
thermostat tick, a lock pulse, a door swinging shut) waits on the injected
clock: a demo at 100x and a test on a virtual clock see the same device.

:func:`modbus_simulators` builds one server and behaviour per Modbus device of
a site, on the ports the site file names (the controller then needs no
special configuration to talk to them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from controller.clock import Clock
from controller.site import Device, DeviceKind, Site
from drivers.modbus_profile import DataType, Point, PointValue, Profile
from simulators.modbus_server import ModbusDeviceServer
from simulators.world import Hvac, World

logger = logging.getLogger("simulators.modbus")

# Raw ranges of the integer register types, to keep a clamped value encodable.
_RAW_RANGES = {
    DataType.UINT16: (0, 0xFFFF),
    DataType.INT16: (-0x8000, 0x7FFF),
    DataType.UINT32: (0, 0xFFFF_FFFF),
    DataType.INT32: (-0x8000_0000, 0x7FFF_FFFF),
}


class _Timers:
    """Keyed one-shot timers on the injected clock, every one of them owned.

    Setting a key again replaces its timer (a second unlock pulse re-arms the
    door). :meth:`close` cancels and awaits all of them; a timer whose action
    raised is logged when it happens and raised again by :meth:`close`, so a
    bug in a behaviour fails the test that stops it.
    """

    def __init__(self, clock: Clock, label: str) -> None:
        self._clock = clock
        self._label = label
        self._pending: dict[Hashable, asyncio.Task[None]] = {}
        self._tasks: dict[asyncio.Task[None], None] = {}
        self._failures: list[BaseException] = []

    def after(self, key: Hashable, seconds: float, action: Callable[[], None]) -> None:
        self.cancel(key)
        task = asyncio.create_task(
            self._fire(key, seconds, action), name=f"modbus-sim {self._label} {key}"
        )
        self._pending[key] = task
        self._tasks[task] = None
        task.add_done_callback(self._done)

    def cancel(self, key: Hashable) -> None:
        task = self._pending.pop(key, None)
        if task is not None:
            task.cancel()

    def pending(self, key: Hashable) -> bool:
        return key in self._pending

    async def close(self) -> None:
        self._pending.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._failures:
            raise self._failures[0]

    async def _fire(self, key: Hashable, seconds: float, action: Callable[[], None]) -> None:
        await self._clock.sleep(seconds)
        # No longer pending once due, so the action may set the same key again
        # (or cancel it) without cancelling itself.
        if self._pending.get(key) is asyncio.current_task():
            del self._pending[key]
        action()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("%s: timer failed", self._label, exc_info=error)
            self._failures.append(error)


async def _forever() -> None:
    """Wait until cancelled: for behaviours that only react (to writes and timers)."""
    await asyncio.get_running_loop().create_future()


# -- air conditioner ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AcSettings:
    """What an air conditioner's registers hold when it is switched on at the wall."""

    power: bool = False
    mode: str = "cool"
    setpoint: float = 26.0
    fan: str = "auto"


class SimAirConditioner:
    """An air conditioner that acts on the simulated room through the :class:`World`.

    Every ``tick`` seconds (simulated) it reads power, mode and setpoint from its
    registers (as the controller last wrote them), tells the world what it is
    doing to the room (``None`` when off), and puts the world's room
    temperature into its ``room_temperature`` point, clamped to what the
    profile can represent. The world owns the air; this only reports.

    A fault (:meth:`inject_fault`) shows in the ``fault`` point and stops the
    unit conditioning, as a tripped compressor does, until cleared; the
    power/mode/setpoint registers keep what was written.
    """

    def __init__(
        self,
        server: ModbusDeviceServer,
        world: World,
        room: str,
        clock: Clock,
        *,
        initial: AcSettings = AcSettings(),
        tick: float = 1.0,
    ) -> None:
        if not tick > 0:
            raise ValueError("tick must be greater than 0")
        self._server = server
        self._world = world
        self._room = room
        self._clock = clock
        self._tick = tick
        self._points = server.profile.points
        self._reported: Hvac | None = None
        self._has_reported = False
        server.set("power", initial.power)
        server.set("mode", initial.mode)
        server.set("setpoint", initial.setpoint)
        if "fan" in self._points:
            server.set("fan", initial.fan)
        if "fault" in self._points:
            server.set("fault", 0)
        self._sense()
        server.attach(self)

    @property
    def device_id(self) -> str:
        return self._server.device.id

    @property
    def fault(self) -> int:
        """The fault code shown now, 0 for none (always 0 without a fault point)."""
        if "fault" not in self._points:
            return 0
        value = self._server.get("fault")
        return int(value) if isinstance(value, int | float) else 0

    @property
    def hvac(self) -> Hvac | None:
        """What the unit does to the room according to its registers now."""
        if self.fault:
            return None
        power = self._server.get("power")
        mode = self._server.get("mode")
        setpoint = self._server.get("setpoint")
        if power is not True:
            return None
        if not isinstance(mode, str) or not isinstance(setpoint, int | float):
            logger.warning(
                "%s: on, but mode %r / setpoint %r mean nothing: not conditioning",
                self.device_id,
                mode,
                setpoint,
            )
            return None
        return Hvac(power=True, mode=mode, setpoint=float(setpoint))

    def inject_fault(self, code: int) -> None:
        if "fault" not in self._points:
            raise ValueError(f"{self._server.profile.id} has no fault point")
        if code <= 0:
            raise ValueError("a fault code is > 0 (0 means no fault: use clear_fault)")
        self._server.set("fault", code)
        logger.info("%s: fault %d", self.device_id, code)
        self._report()

    def clear_fault(self) -> None:
        if "fault" in self._points:
            self._server.set("fault", 0)
        logger.info("%s: fault cleared", self.device_id)
        self._report()

    def tick(self) -> None:
        """One thermostat cycle: report to the world, then sense the room."""
        self._report()
        self._sense()

    def on_write(self, name: str, index: int | None, value: PointValue) -> None:
        # The next tick acts on it, as a unit's controller board polls its registers.
        logger.debug("%s: %s set to %r", self.device_id, name, value)

    async def run(self) -> None:
        try:
            while True:
                self.tick()
                await self._clock.sleep(self._tick)
        finally:
            # Switched off for good: it no longer does anything to the room.
            if self._reported is not None:
                self._world.set_hvac(self._room, self.device_id, None)

    def _report(self) -> None:
        hvac = self.hvac
        if self._has_reported and hvac == self._reported:
            return
        self._world.set_hvac(self._room, self.device_id, hvac)
        self._reported, self._has_reported = hvac, True

    def _sense(self) -> None:
        point = self._points.get("room_temperature")
        if point is not None:
            temperature = self._world.room_temperature(self._room)
            self._server.set("room_temperature", _clamp(point, temperature))


def _clamp(point: Point, value: float) -> float:
    """``value`` brought within the point's range and what its register can hold.

    A raw code the profile reserves for "missing" (0x8000 for "no sensor") is
    never produced: a sensor reading off the scale reads as its limit.
    """
    low, high = -math.inf, math.inf
    raw_range = _RAW_RANGES.get(point.data_type)
    if raw_range is not None:
        raw_low, raw_high = raw_range
        while raw_low in point.missing:
            raw_low += 1
        while raw_high in point.missing:
            raw_high -= 1
        ends = sorted((raw_low * point.scale + point.offset, raw_high * point.scale + point.offset))
        low, high = ends[0], ends[1]
    if point.minimum is not None:
        low = max(low, point.minimum)
    if point.maximum is not None:
        high = min(high, point.maximum)
    return min(max(value, low), high)


# -- document cabinet --------------------------------------------------------------


class SimCabinet:
    """A lock board with a door contact and an item sensor per compartment.

    Writing 1 to ``unlock`` item *i* pulses the lock: the coil returns to 0 by
    itself ``pulse`` seconds later (a read right after the write can still see
    1), door *i* opens, and it swings shut ``door_close_after`` seconds later.
    What the visitor did shows when the door closes: an empty compartment now
    holds an item (a deposit), a full one is empty (a pickup).

    Test hooks change one compartment's story: :meth:`hold_door` (left open
    until :meth:`close_door`), :meth:`leave_item` / :meth:`deposit_nothing`
    (the next visit changes nothing), :meth:`put_item` / :meth:`remove_item`
    (contents change with no visit), :meth:`force_open` (a door opens with no
    unlock: tampering, then closes like any visit).
    """

    def __init__(
        self,
        server: ModbusDeviceServer,
        clock: Clock,
        compartments: int | None = None,
        *,
        pulse: float = 0.5,
        door_close_after: float = 8.0,
    ) -> None:
        count = server.device.compartments if compartments is None else compartments
        available = server.profile.compartments
        if available is None:
            raise ValueError(f"{server.profile.id} is not a cabinet profile")
        if not 1 <= count <= available:
            raise ValueError(f"{server.profile.id} has compartments 1..{available}, not {count}")
        if not pulse > 0 or not door_close_after > 0:
            raise ValueError("pulse and door_close_after must be greater than 0")
        self._server = server
        self._count = count
        self._pulse = pulse
        self._close_after = door_close_after
        self._timers = _Timers(clock, server.device.id)
        self._held: set[int] = set()
        self._untouched: set[int] = set()
        self._had_item: dict[int, bool] = {}
        server.attach(self)

    @property
    def compartments(self) -> int:
        return self._count

    def door_open(self, index: int) -> bool:
        return self._server.get("door_open", self._check(index)) is True

    def item_present(self, index: int) -> bool:
        return self._server.get("item_present", self._check(index)) is True

    # -- test hooks ----------------------------------------------------------------

    def hold_door(self, index: int) -> None:
        """Door ``index`` stays open (now, or from its next opening) until close_door."""
        self._held.add(self._check(index))
        self._timers.cancel(("door", index))

    def close_door(self, index: int) -> None:
        """Close door ``index`` now (ending a hold); the visit's outcome applies."""
        self._held.discard(self._check(index))
        self._timers.cancel(("door", index))
        if not self.door_open(index):
            return
        self._server.set("door_open", False, index)
        had_item = self._had_item.pop(index, self.item_present(index))
        if index in self._untouched:
            self._untouched.discard(index)
            outcome = "nothing changed"
        else:
            self._server.set("item_present", not had_item, index)
            outcome = "item taken" if had_item else "item deposited"
        logger.info("%s: door %d closed (%s)", self._server.device.id, index, outcome)

    def leave_item(self, index: int) -> None:
        """The next visit to ``index`` takes nothing out."""
        self._untouched.add(self._check(index))

    def deposit_nothing(self, index: int) -> None:
        """The next visit to ``index`` puts nothing in."""
        self._untouched.add(self._check(index))

    def put_item(self, index: int) -> None:
        self._server.set("item_present", True, self._check(index))

    def remove_item(self, index: int) -> None:
        self._server.set("item_present", False, self._check(index))

    def force_open(self, index: int) -> None:
        """Door ``index`` opens without an unlock pulse (tampering or a master key)."""
        self._open(self._check(index))

    # -- device ----------------------------------------------------------------------

    def on_write(self, name: str, index: int | None, value: PointValue) -> None:
        if name != "unlock" or index is None or value is not True:
            return
        reset = functools.partial(self._server.set, "unlock", False, index)
        self._timers.after(("pulse", index), self._pulse, reset)
        if index < self._count:
            self._open(index)
        else:
            logger.warning("%s: unlock %d: no such compartment", self._server.device.id, index)

    async def run(self) -> None:
        try:
            await _forever()
        finally:
            await self._timers.close()

    def _open(self, index: int) -> None:
        if not self.door_open(index):
            self._had_item[index] = self.item_present(index)
            self._server.set("door_open", True, index)
            logger.info("%s: door %d opened", self._server.device.id, index)
        if index in self._held:
            self._timers.cancel(("door", index))
        else:
            self._timers.after(
                ("door", index), self._close_after, functools.partial(self.close_door, index)
            )

    def _check(self, index: int) -> int:
        if not 0 <= index < self._count:
            raise IndexError(f"compartments are 0..{self._count - 1}, not {index}")
        return index


# -- a site's worth ----------------------------------------------------------------


class FaultSet(Protocol):
    """The device faults a simulation starts with (``simulators.faults.FaultPlan`` fits)."""

    @property
    def dead(self) -> frozenset[str]: ...

    @property
    def slow(self) -> frozenset[str]: ...

    @property
    def exception(self) -> frozenset[str]: ...


# A slow device answers this many times its site-file ``timeout`` after each
# request: late enough that the controller's requests to it time out, as
# ``--faults slow=`` promises. The controller's timeout is real time, so the
# delay is too, whatever the simulation's speed.
SLOW_FACTOR = 1.5
# The exception a broken device answers with: 4, device failure.
DEVICE_FAILURE = 4


@dataclass(frozen=True, slots=True)
class SimulatedModbusDevice:
    server: ModbusDeviceServer
    behaviour: SimAirConditioner | SimCabinet


class ModbusSimulators:
    """Every simulated Modbus device of a site, started and stopped together.

    ``async with`` starts each server (with its behaviour), applying the
    initial faults first; if one cannot start, those already started are
    stopped again. :meth:`run` serves until cancelled.
    """

    def __init__(
        self,
        devices: Iterable[SimulatedModbusDevice],
        faults: FaultSet | None = None,
        *,
        speed: float = 1.0,
        exception_code: int = DEVICE_FAILURE,
    ) -> None:
        self.devices: dict[str, SimulatedModbusDevice] = {
            device.server.device.id: device for device in devices
        }
        self._faults = faults
        self._speed = speed
        self._exception_code = exception_code
        self._stack: contextlib.AsyncExitStack | None = None

    def server(self, device_id: str) -> ModbusDeviceServer:
        return self.devices[device_id].server

    def air_conditioner(self, device_id: str) -> SimAirConditioner:
        behaviour = self.devices[device_id].behaviour
        if not isinstance(behaviour, SimAirConditioner):
            raise TypeError(f"{device_id} is not an air conditioner")
        return behaviour

    def cabinet(self, device_id: str) -> SimCabinet:
        behaviour = self.devices[device_id].behaviour
        if not isinstance(behaviour, SimCabinet):
            raise TypeError(f"{device_id} is not a document cabinet")
        return behaviour

    async def __aenter__(self) -> ModbusSimulators:
        if self._stack is not None:
            raise RuntimeError("the simulators are already running")
        async with contextlib.AsyncExitStack() as stack:
            for device_id, device in self.devices.items():
                await self._apply_faults(device_id, device.server)
                await stack.enter_async_context(device.server)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def run(self) -> None:
        """Serve until cancelled, then stop every device."""
        async with self:
            await _forever()

    async def _apply_faults(self, device_id: str, server: ModbusDeviceServer) -> None:
        if self._faults is None:
            return
        if device_id in self._faults.dead:
            await server.set_dead(True)
        if device_id in self._faults.slow:
            # The server waits on the simulation's clock: scale to real seconds.
            real = SLOW_FACTOR * server.device.timeout.total_seconds()
            server.set_delay(real * self._speed)
        if device_id in self._faults.exception:
            server.set_exception(self._exception_code)


def modbus_simulators(
    site: Site,
    profiles: Mapping[str, Profile],
    world: World,
    clock: Clock,
    faults: FaultSet | None = None,
    *,
    host: str = "127.0.0.1",
    port_for: Callable[[Device], int] | None = None,
    speed: float = 1.0,
    exception_code: int = DEVICE_FAILURE,
) -> ModbusSimulators:
    """A simulator for every Modbus device of ``site``, each on its own port.

    Servers listen on ``host`` at the port the site file gives each device, or
    at ``port_for(device)`` (0 for a free port, as tests do). Each server
    answers one unit id, so two devices at the same fixed port (several units
    behind one gateway) are refused here rather than failing to bind later.
    Fault ids that are not Modbus devices of the site are ignored: the same
    plan also drives the MQTT fakes. A ``slow`` device answers 1.5 times its
    own ``timeout`` late in real seconds, ``clock`` running ``speed`` times
    faster than real time.
    """
    built: list[SimulatedModbusDevice] = []
    taken: dict[int, str] = {}
    for device in site.devices:
        if device.is_mqtt:
            continue
        if device.profile is None or device.profile not in profiles:
            raise ValueError(f"{device.id}: no profile {device.profile!r}")
        port = device.port if port_for is None else port_for(device)
        if port != 0:
            if port in taken:
                raise ValueError(
                    f"{device.id} and {taken[port]} both at port {port}: "
                    "a simulator serves one unit id per port"
                )
            taken[port] = device.id
        server = ModbusDeviceServer(
            device, profiles[device.profile], host=host, port=port, clock=clock
        )
        built.append(SimulatedModbusDevice(server, _behaviour(device, server, world, clock)))
    return ModbusSimulators(built, faults, speed=speed, exception_code=exception_code)


def _behaviour(
    device: Device, server: ModbusDeviceServer, world: World, clock: Clock
) -> SimAirConditioner | SimCabinet:
    if device.kind is DeviceKind.AIR_CONDITIONER:
        if device.room is None:
            raise ValueError(f"{device.id}: an air conditioner needs a room")
        return SimAirConditioner(server, world, device.room, clock)
    if device.kind is DeviceKind.DOCUMENT_CABINET:
        return SimCabinet(server, clock, device.compartments)
    raise ValueError(f"{device.id}: no Modbus simulator for {device.kind.value} devices")
