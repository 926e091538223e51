"""Polling Modbus devices on their own schedules, and writing to them safely.

One :class:`ModbusHub` per ``host:port`` owns that connection and is the only
thing that talks on it: a single task that either runs the next queued write
or, when none is waiting, the next poll that is due. That gives three
guarantees a building controller needs:

- **A dead or slow device harms no other.** Devices behind different
  endpoints have separate hubs (separate tasks and sockets), so a timeout on
  one never delays a poll on another.
- **A write waits at most for the one request in flight**, never behind a
  queue of polls: writes are always taken before the next poll. It is then
  confirmed by reading the registers back (where the profile allows), retried,
  and raised as a :class:`~controller.events.CommandUnconfirmed` alarm when it
  cannot be confirmed.
- **No stale state after a write.** Requests on a hub never overlap, so a poll
  can never start before a write and answer after it; and a confirmed write is
  followed at once by a fresh poll, so the rules see the new state.

A device that fails ``offline_after_missed`` polls in a row is marked offline
(logged once), retried with capped exponential backoff, and online again on
the first good poll (logged once). Polls run at a fixed rate (the schedule
does not drift by the time each poll takes), each device at its own offset in
the period so that many devices do not all poll at the same instant; a poll
that could not run in its slot is skipped rather than bunched.
"""

from __future__ import annotations

import asyncio
import logging
import math
import zlib
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.bus import EventBus
from controller.clock import Clock, sleep_or_wake
from controller.events import (
    AvailabilityChanged,
    AvailabilitySource,
    BadPayload,
    CommandUnconfirmed,
    ReadingReceived,
)
from controller.site import Device, Site
from drivers.modbus import ModbusConnection, ModbusDeviceError, ModbusError
from drivers.modbus_profile import (
    Confirm,
    PointValue,
    Profile,
    ReadBlock,
    Table,
    decode_block,
    encode_write,
    plan_reads,
    to_reading,
)
from drivers.payloads import BadPayloadReason

WRITE_TRIES = 3


@dataclass(frozen=True, slots=True)
class PointWrite:
    """Set one point (``index`` picks one element of an array point, e.g. a compartment)."""

    point: str
    value: bool | int | float | str
    index: int | None = None

    def __str__(self) -> str:
        name = self.point if self.index is None else f"{self.point}[{self.index}]"
        value = str(self.value).lower() if isinstance(self.value, bool) else self.value
        return f"{name}={value}"


class WriteFailed(Exception):
    """A write that was not confirmed after every try (an alarm was raised too)."""


@dataclass(frozen=True, slots=True)
class _EncodedWrite:
    request: PointWrite
    table: Table
    address: int
    raw: list[int] | list[bool]
    confirm: Confirm


@dataclass(slots=True)
class _Job:
    poller: DevicePoller
    writes: tuple[_EncodedWrite, ...]
    done: asyncio.Future[None]

    @property
    def description(self) -> str:
        return ", ".join(str(write.request) for write in self.writes)


@dataclass(slots=True)
class PollStats:
    """What the poll schedule really achieved, for health and benchmarks."""

    polls: int = 0
    failures: int = 0
    late: int = 0  # good polls that came more than 10 % after their predecessor's slot
    interval_max: float = 0.0
    interval_sum: float = 0.0
    intervals: int = 0
    last_start: float | None = None

    def record_interval(self, start: float, schedule: float) -> None:
        if self.last_start is not None:
            interval = start - self.last_start
            self.interval_sum += interval
            self.intervals += 1
            self.interval_max = max(self.interval_max, interval)
            if interval > schedule * 1.1:
                self.late += 1
        self.last_start = start

    def to_json(self) -> dict[str, Any]:
        mean = self.interval_sum / self.intervals if self.intervals else None
        return {
            "polls": self.polls,
            "failures": self.failures,
            "late": self.late,
            "interval_mean": round(mean, 4) if mean is not None else None,
            "interval_max": round(self.interval_max, 4) if self.intervals else None,
        }


@dataclass(slots=True)
class DevicePoller:
    """One device's schedule and health; owned and driven by its hub."""

    device: Device
    profile: Profile
    blocks: tuple[ReadBlock, ...]
    period: float
    due: float = 0.0
    failures: int = 0  # consecutive
    online: bool | None = None
    last_error: str | None = None
    stats: PollStats = field(default_factory=PollStats)

    def to_json(self) -> dict[str, Any]:
        return {
            "online": self.online,
            "profile": self.profile.id,
            "endpoint": f"{self.device.host}:{self.device.port}/{self.device.unit}",
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
            **self.stats.to_json(),
        }


class ModbusHub:
    """Every request to one ``host:port``, one at a time, writes first."""

    def __init__(
        self,
        connection: ModbusConnection,
        pollers: Sequence[DevicePoller],
        bus: EventBus,
        clock: Clock,
        *,
        missed: int,
        backoff_max: float,
        logger: logging.Logger,
    ) -> None:
        self._connection = connection
        self._pollers = list(pollers)
        self._bus = bus
        self._clock = clock
        self._missed = missed
        self._backoff_max = backoff_max
        self._logger = logger
        self._writes: deque[_Job] = deque()
        self._wake = asyncio.Event()  # set when a write is queued

    @property
    def pollers(self) -> Sequence[DevicePoller]:
        return self._pollers

    async def run(self) -> None:
        start = self._clock.monotonic()
        for poller in self._pollers:
            # Each device keeps its own place in the period (from its id, so it is
            # the same after a restart): 200 devices polled every second are 200
            # requests spread over the second, not one burst that makes the last
            # of them late.
            poller.due = start + poller.period * _phase(poller.device.id)
        try:
            while True:
                if self._writes:
                    job = self._writes.popleft()
                    if not job.done.done():
                        await self._write(job)
                    continue
                poller = min(self._pollers, key=lambda candidate: candidate.due)
                delay = poller.due - self._clock.monotonic()
                if delay > 0:
                    self._wake.clear()
                    await sleep_or_wake(self._clock, self._wake, delay)
                    continue
                await self._poll(poller)
        finally:
            self._connection.close()
            while self._writes:
                job = self._writes.popleft()
                if not job.done.done():
                    job.done.set_exception(WriteFailed("the controller is stopping"))

    def submit(self, poller: DevicePoller, writes: Sequence[PointWrite]) -> asyncio.Future[None]:
        """Queue a write; raises ValueError at once for anything the profile forbids."""
        encoded = tuple(_encode(poller.profile, write) for write in writes)
        if not encoded:
            raise ValueError("nothing to write")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writes.append(_Job(poller, encoded, done))
        self._wake.set()
        return done

    # -- polling -------------------------------------------------------------

    async def _poll(self, poller: DevicePoller, *, scheduled: bool = True) -> None:
        """Read every block; ``scheduled=False`` for an extra poll that keeps the grid as is."""
        started = self._clock.monotonic()
        device = poller.device
        values: dict[str, PointValue] = {}
        issues = []
        try:
            for block in poller.blocks:
                raw = await self._connection.read(
                    block.table, block.address, block.count, device.unit
                )
                block_values, block_issues = decode_block(poller.profile, block, raw)
                values.update(block_values)
                issues.extend(block_issues)
        except ModbusError as error:
            self._failed(poller, error, scheduled=scheduled)
            return
        poller.stats.polls += 1
        if scheduled:
            poller.stats.record_interval(started, poller.period)
            self._schedule_next(poller)
        now = self._clock.now()
        if poller.online is not True:
            if poller.online is False:
                self._logger.info(
                    "%s answers again after %d failed polls",
                    device.id,
                    poller.failures,
                    extra={"device": device.id},
                )
            poller.online = True
            self._bus.publish(AvailabilityChanged(device.id, True, AvailabilitySource.POLL, now))
        poller.failures = 0
        poller.last_error = None
        for issue in issues:
            self._bus.publish(
                BadPayload(
                    device.id,
                    BadPayloadReason.OUT_OF_RANGE,
                    f"{issue.point}: {issue.reason}",
                    _endpoint(device),
                    now,
                )
            )
        reading = to_reading(poller.profile, values, device.compartments)
        self._bus.publish(ReadingReceived(device.id, reading, now))

    def _failed(self, poller: DevicePoller, error: ModbusError, *, scheduled: bool) -> None:
        device = poller.device
        poller.failures += 1
        poller.stats.failures += 1
        poller.last_error = str(error)
        if poller.failures == 1:
            self._logger.warning(
                "%s: poll failed: %s", device.id, error, extra={"device": device.id}
            )
        if poller.failures >= self._missed and poller.online is not False:
            poller.online = False
            self._logger.warning(
                "%s offline after %d failed polls; retrying with backoff",
                device.id,
                poller.failures,
                extra={"device": device.id},
            )
            self._bus.publish(
                AvailabilityChanged(device.id, False, AvailabilitySource.POLL, self._clock.now())
            )
        if not scheduled:
            return
        if poller.online is False:
            # Offline: back off from one period, doubling up to the cap.
            extra = poller.failures - self._missed
            delay = min(self._backoff_max, poller.period * 2 ** min(extra, 16))
            poller.due = self._clock.monotonic() + max(delay, poller.period)
        else:
            self._schedule_next(poller)

    def _schedule_next(self, poller: DevicePoller) -> None:
        """The next slot on the fixed-rate grid that has not passed yet."""
        poller.due += poller.period
        now = self._clock.monotonic()
        if poller.due <= now:
            behind = now - poller.due
            poller.due += poller.period * (math.floor(behind / poller.period) + 1)

    # -- writing -------------------------------------------------------------

    async def _write(self, job: _Job) -> None:
        poller = job.poller
        device = poller.device
        reason = "not tried"
        for attempt in range(1, WRITE_TRIES + 1):
            try:
                mismatch = await self._write_once(device, job.writes)
            except ModbusDeviceError as error:
                reason = f"device refused: {error}"
            except ModbusError as error:
                reason = str(error)
            else:
                if mismatch is None:
                    self._logger.info(
                        "%s: confirmed %s", device.id, job.description, extra={"device": device.id}
                    )
                    if not job.done.done():
                        job.done.set_result(None)
                    await self._poll(poller, scheduled=False)  # the rules see it at once
                    return
                reason = mismatch
            self._logger.warning(
                "%s: write %s not confirmed (try %d of %d): %s",
                device.id,
                job.description,
                attempt,
                WRITE_TRIES,
                reason,
                extra={"device": device.id},
            )
            if attempt < WRITE_TRIES:
                await self._clock.sleep(min(poller.period, 0.25 * 2 ** (attempt - 1)))
        self._logger.error(
            "%s: write %s failed after %d tries: %s",
            device.id,
            job.description,
            WRITE_TRIES,
            reason,
            extra={"device": device.id},
        )
        self._bus.publish(
            CommandUnconfirmed(device.id, job.description, reason, WRITE_TRIES, self._clock.now())
        )
        if not job.done.done():
            job.done.set_exception(WriteFailed(f"{device.id}: {job.description}: {reason}"))

    async def _write_once(self, device: Device, writes: Iterable[_EncodedWrite]) -> str | None:
        """Write everything, then read back what can be read back; None when all agree."""
        for write in writes:
            await self._connection.write(write.table, write.address, write.raw, device.unit)
        for write in writes:
            if write.confirm is Confirm.ECHO:
                continue  # the write's own reply was the confirmation
            back = await self._connection.read(
                write.table, write.address, len(write.raw), device.unit
            )
            if list(back) != list(write.raw):
                return f"{write.request.point} reads back {_raw(back)}, wrote {_raw(write.raw)}"
        return None


def _phase(device_id: str) -> float:
    """A stable fraction in [0, 1) for a device id."""
    return zlib.crc32(device_id.encode()) / 2**32


def _encode(profile: Profile, write: PointWrite) -> _EncodedWrite:
    point, address, raw = encode_write(profile, write.point, write.value, write.index)
    return _EncodedWrite(write, point.table, address, raw, point.confirm)


def _raw(values: Sequence[int] | Sequence[bool]) -> str:
    return ",".join(str(int(value)) for value in values)


def _endpoint(device: Device) -> str:
    return f"modbus://{device.host}:{device.port}/{device.unit}"


class ModbusDevices:
    """Every Modbus device of the site, grouped into one hub per endpoint."""

    def __init__(
        self,
        site: Site,
        profiles: Mapping[str, Profile],
        bus: EventBus,
        clock: Clock,
        *,
        backoff_max: float = 30.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self._logger = logger or logging.getLogger("controller.modbus")
        groups: dict[tuple[str, int], list[DevicePoller]] = {}
        self._pollers: dict[str, DevicePoller] = {}
        for device in site.devices:
            if device.host is None or device.profile is None:
                continue
            profile = profiles[device.profile]
            poller = DevicePoller(device, profile, plan_reads(profile), device.poll.total_seconds())
            self._pollers[device.id] = poller
            groups.setdefault((device.host, device.port), []).append(poller)
        self._hubs: list[ModbusHub] = []
        self._hub_of: dict[str, ModbusHub] = {}
        for (host, port), pollers in groups.items():
            timeout = max(poller.device.timeout.total_seconds() for poller in pollers)
            hub = ModbusHub(
                ModbusConnection(host, port, timeout=timeout, logger=self._logger),
                pollers,
                bus,
                clock,
                missed=site.rules.offline_after_missed,
                backoff_max=backoff_max,
                logger=self._logger,
            )
            self._hubs.append(hub)
            for poller in pollers:
                self._hub_of[poller.device.id] = hub

    def __bool__(self) -> bool:
        return bool(self._pollers)

    async def run(self) -> None:
        """Poll until cancelled; one task per hub."""
        async with asyncio.TaskGroup() as group:
            for hub in self._hubs:
                endpoint = hub.pollers[0].device
                group.create_task(hub.run(), name=f"modbus-{endpoint.host}:{endpoint.port}")

    async def write(self, device_id: str, writes: Sequence[PointWrite]) -> None:
        """Write and confirm; raises ValueError for a bad request, WriteFailed when unconfirmed."""
        poller = self._pollers.get(device_id)
        if poller is None:
            raise ValueError(f"no Modbus device {device_id!r}")
        await self._hub_of[device_id].submit(poller, writes)

    def status(self) -> dict[str, Any]:
        offline = sorted(
            device for device, poller in self._pollers.items() if poller.online is False
        )
        return {
            "status": "degraded" if offline else "ok",
            "offline": offline,
            "devices": {device: poller.to_json() for device, poller in self._pollers.items()},
        }
