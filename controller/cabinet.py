"""The 24-hour document cabinet: staff deposits, kiosk pickups by code, and its alarms.

Staff leave a document for a resident (``deposit``): a free compartment is
chosen, the deposit is stored as *pending* with the salted hash of a fresh
code, the compartment is pulsed open, and once the cabinet reports the door
closed with an item inside the deposit is *holding* and the code is handed
back, once. A resident types the code at the kiosk (``pickup``): the
compartment opens, and the deposit is *collected* when its door closes with
the item gone. Staff take a deposit back with ``clear``.

:class:`CabinetService` is the face the controller and the web handlers
see: it wires the parts, owns their lifecycle and the tasks requests run in,
and delegates the work:

- ``controller.cabinet_compartments``: what is known of each cabinet now;
- ``controller.cabinet_watch``: what readings and deadlines mean;
- ``controller.cabinet_alarms``: ``door_left_open``, ``cabinet_tamper``, ``uncollected``;
- ``controller.cabinet_visits``: each deposit, pickup or clear in progress, and its end;
- ``controller.cabinet_deposits``, ``controller.cabinet_pickups``,
  ``controller.cabinet_clearing``: the three requests;
- ``controller.cabinet_view``: the staff view and the health status;
- ``controller.cabinet_store``: deposits and kiosk throttles in SQLite.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, TypeVar

from controller.alarms import AlarmBook
from controller.bus import EventBus, Unsubscribe
from controller.cabinet_alarms import CompartmentAlarms
from controller.cabinet_clearing import Clearing
from controller.cabinet_compartments import Cabinets
from controller.cabinet_deposits import Deposits
from controller.cabinet_pickups import Pickups
from controller.cabinet_requests import CabinetRefused, DepositReceipt, DepositRequest
from controller.cabinet_store import CabinetStore, Deposit
from controller.cabinet_view import CabinetView
from controller.cabinet_visits import Visits
from controller.cabinet_watch import CabinetWatch
from controller.clock import Clock, sleep_or_wake
from controller.device_writes import DeviceWriter
from controller.event_log import EventLog
from controller.events import ReadingReceived
from controller.pickup_codes import CodeHasher, new_code
from controller.site import Site
from controller.state import LiveState

__all__ = ["CabinetRefused", "CabinetService", "DepositReceipt", "DepositRequest"]

T = TypeVar("T")

# Finished deposits (collected, failed, cleared) are kept as long as the event log.
KEEP_FINISHED = timedelta(days=90)
_IDLE_WAIT = 3600.0


class CabinetService:
    """The document cabinets of a site: one service for the controller and the web."""

    def __init__(
        self,
        site: Site,
        state: LiveState,
        bus: EventBus,
        clock: Clock,
        *,
        db: sqlite3.Connection,
        events: EventLog,
        alarms: AlarmBook,
        writer: DeviceWriter,
        logger: logging.Logger | None = None,
        hasher: CodeHasher | None = None,
    ) -> None:
        """``hasher`` sets the cost of the code hashes (tests pass a cheap one)."""
        self._bus = bus
        self._clock = clock
        self._logger = logger or logging.getLogger("controller.cabinet")
        self._hasher = hasher or CodeHasher()
        zone = site.site.zone
        self._store = CabinetStore(db)
        self._cabinets = Cabinets(site, state, self._store)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._unsubscribe: list[Unsubscribe] = []
        wake = self._wake.set
        self._alarms = CompartmentAlarms(
            self._cabinets, alarms, open_after=site.rules.door_open_alarm_after, zone=zone
        )
        self._visits = Visits(
            self._cabinets,
            self._store,
            events=events,
            alarms=self._alarms,
            writer=writer,
            clock=clock,
            zone=zone,
            logger=self._logger,
            wake=wake,
        )
        self._watch = CabinetWatch(
            self._cabinets,
            self._store,
            visits=self._visits,
            alarms=self._alarms,
            rules=site.rules.cabinet,
            logger=self._logger,
            wake=wake,
        )
        self._deposits = Deposits(
            self._cabinets,
            self._store,
            visits=self._visits,
            clock=clock,
            zone=zone,
            logger=self._logger,
            issue_code=self._issue_code,
        )
        self._pickups = Pickups(
            self._cabinets,
            self._store,
            visits=self._visits,
            events=events,
            hasher=self._hasher,
            rules=site.rules.cabinet,
            clock=clock,
            zone=zone,
            logger=self._logger,
            wake=wake,
        )
        self._clearing = Clearing(
            self._cabinets,
            self._store,
            visits=self._visits,
            alarms=self._alarms,
            events=events,
            clock=clock,
        )
        self._view = CabinetView(self._cabinets, self._store, clock=clock, zone=zone)

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        now = self._clock.now()
        self._alarms.load()
        self._visits.fail_interrupted(now)
        pruned = self._store.prune(now - KEEP_FINISHED)
        if pruned:
            self._logger.info("forgot %d cabinet deposits finished over 90 days ago", pruned)
        self._unsubscribe = [self._bus.subscribe(ReadingReceived, self._watch.on_reading)]

    def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        for task in list(self._tasks):
            task.cancel()

    async def run(self) -> None:
        """Act at each deadline: visits given up, deposits expiring, doors open too long."""
        try:
            while True:
                self._wake.clear()
                now = self._clock.now()
                self._watch.tick(now)
                nearest = self._watch.next_deadline(now)
                wait = _IDLE_WAIT if nearest is None else (nearest - now).total_seconds()
                await sleep_or_wake(self._clock, self._wake, min(max(wait, 0.0), _IDLE_WAIT))
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- queries ------------------------------------------------------------------

    @property
    def cabinet_ids(self) -> list[str]:
        return self._cabinets.ids

    def compartments(self, cabinet_id: str) -> int | None:
        """How many compartments ``cabinet_id`` has; None for an unknown cabinet."""
        cabinet = self._cabinets.get(cabinet_id)
        return None if cabinet is None else cabinet.count

    def find_deposit(self, deposit_id: int) -> Deposit | None:
        """A deposit by id, finished or not (never with its code)."""
        return self._store.get(deposit_id)

    def view(self, cabinet_id: str) -> dict[str, Any]:
        """The cabinet as staff see it (``GET /api/cabinets/{id}``); never a code."""
        return self._view.view(cabinet_id)

    def status(self) -> dict[str, Any]:
        """For ``/api/health``: per cabinet counts, and kiosks locked out now."""
        return self._view.status()

    # -- requests ---------------------------------------------------------------------

    async def deposit(self, cabinet_id: str, request: DepositRequest, by: str) -> DepositReceipt:
        """Open a free compartment for staff and wait until the document is inside.

        Runs to its end even when the caller goes away (the HTTP client
        disconnects): the work is a task of this service and the caller only
        waits for it. A code whose answer was lost that way cannot be shown
        again; staff clear the compartment and deposit again.
        """
        cabinet = self._cabinets.require(cabinet_id)
        if request.compartment is not None and not 0 <= request.compartment < cabinet.count:
            raise CabinetRefused(
                422,
                "invalid",
                f"compartments of {cabinet_id} are 0..{cabinet.count - 1}",
                [{"field": "compartment", "message": "no such compartment"}],
            )
        work = self._deposits.deposit(cabinet, request, by)
        return await asyncio.shield(self._spawn(work, f"deposit {cabinet_id}"))

    async def pickup(self, cabinet_id: str, code: str, kiosk: str) -> dict[str, Any]:
        """Open the compartment whose deposit ``code`` collects.

        ``kiosk`` names who asks (a token fingerprint): its wrong codes are
        counted, and after too many it is refused (429) for a while, right
        code or not. Wrong, used and expired codes get the same 403.
        """
        cabinet = self._cabinets.require(cabinet_id)
        # The whole attempt is a task of its own: a client that hangs up halfway
        # can neither escape the wrong-code count nor leave a door half handled.
        work = self._pickups.pickup(cabinet, code, kiosk)
        return await asyncio.shield(self._spawn(work, "pickup"))

    async def clear(
        self, cabinet_id: str, compartment: int, by: str, reason: str = ""
    ) -> dict[str, Any]:
        """Staff take back what a compartment holds: its deposit ends (``cleared``,
        the code dies) and the compartment is pulsed open.

        Refused (409) when a deposit, pickup or clear is in progress there, or
        when it holds neither a deposit nor an item.
        """
        cabinet = self._cabinets.require(cabinet_id)
        if not 0 <= compartment < cabinet.count:
            raise CabinetRefused(
                404, "not_found", "no such compartment", {"compartment": compartment}
            )
        work = self._clearing.clear(cabinet, compartment, by, reason)
        return await asyncio.shield(self._spawn(work, "clear"))

    # -- helpers ------------------------------------------------------------------

    def _issue_code(self, taken: list[str]) -> tuple[str, str]:
        """A fresh code no collectable deposit of the cabinet has, and its hash (slow).

        Codes are drawn here, where the hasher's cost is chosen; deposits get
        this as their code source.
        """
        while True:
            code = new_code()
            if not any(self._hasher.verify(code, stored) for stored in taken):
                return code, self._hasher.hash(code)

    def _spawn(self, work: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run ``work`` as a task this service owns (cancelled and awaited when it stops)."""
        task = asyncio.create_task(work, name=f"cabinet {name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()  # retrieved here: the caller may have gone away
        if error is not None and not isinstance(error, CabinetRefused):
            self._logger.error("%s failed", task.get_name(), exc_info=error)
