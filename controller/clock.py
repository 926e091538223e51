"""Time as a dependency.

Everything that reads the time or waits for it goes through a :class:`Clock`.
Production uses :class:`SystemClock`; simulations and demos use
:class:`ScaledClock` (real time, faster); tests use :class:`VirtualClock` and
advance it, so a whole day of rules runs in
milliseconds and no test ever sleeps to "let something happen".
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current wall time, timezone-aware (in the site's zone in production)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards, for intervals and deadlines."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""


async def sleep_or_wake(clock: Clock, wake: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` of ``clock`` time, or less if ``wake`` is set meanwhile.

    For loops that wait for their next deadline but must react at once to new
    work (a queued Modbus write, a simulated device's state change).
    """
    if wake.is_set():
        return
    if seconds <= 0:
        await clock.sleep(0)
        return
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    waiter = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait((sleeper, waiter), return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waiter.cancel()
        await asyncio.gather(sleeper, waiter, return_exceptions=True)


class SystemClock:
    """Real time, told in ``zone``: every timestamp the controller shows then
    carries the site's own offset (``+08:00`` in Shanghai), as staff read it."""

    def __init__(self, zone: tzinfo = UTC) -> None:
        self._zone = zone

    def now(self) -> datetime:
        return datetime.now(self._zone)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """Real time run ``speed`` times faster from ``start``: simulations and demos.

    A whole simulated day passes in minutes at 100x while everything that
    shares this clock (simulated devices and the controller) agrees on what
    time it is, so reporting intervals, polls and silence keep their meaning.
    """

    def __init__(self, start: datetime, speed: float = 1.0) -> None:
        if start.tzinfo is None:
            raise ValueError("ScaledClock needs a timezone-aware start time")
        if not speed > 0:
            raise ValueError("speed must be greater than 0")
        self._start = start
        self._speed = speed
        self._origin = time.monotonic()

    @property
    def speed(self) -> float:
        return self._speed

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self.monotonic())

    def monotonic(self) -> float:
        return (time.monotonic() - self._origin) * self._speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self._speed)


class VirtualClock:
    """A clock that moves only when told to.

    ``advance()`` walks through every sleeper's deadline in order, waking each
    and letting the loop run the woken tasks before moving on, so work scheduled
    at 10:00 and 10:05 happens in that order even when the test jumps a day.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start or datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
        if self._start.tzinfo is None:
            raise ValueError("VirtualClock needs a timezone-aware start time")
        self._elapsed = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        return self._elapsed

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._elapsed + seconds, next(self._order), future))
        await future

    @property
    def pending(self) -> int:
        """Sleepers still waiting (cancelled ones included until their deadline passes)."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    async def advance(self, seconds: float | timedelta) -> None:
        """Move time forward, waking every sleeper whose deadline passes, in order."""
        step = seconds.total_seconds() if isinstance(seconds, timedelta) else seconds
        if step < 0:
            raise ValueError("time does not go backwards")
        target = self._elapsed + step
        await _settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self._elapsed = max(self._elapsed, deadline)
            if not future.done():
                future.set_result(None)
                await _settle()
        self._elapsed = target
        await _settle()


async def _settle(rounds: int = 20) -> None:
    """Let tasks woken by the clock run until they block again.

    A woken loop that waits again through :func:`sleep_or_wake` needs about
    seven turns of the event loop before its next sleep is registered; fewer
    rounds would let a long ``advance()`` run past that sleep's deadline.
    """
    for _ in range(rounds):
        await asyncio.sleep(0)
