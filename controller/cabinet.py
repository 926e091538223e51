"""The 24-hour document cabinet: staff deposits, kiosk pickups by code, and its alarms.

Staff leave a document for a resident (``deposit``): a free compartment is
chosen, the deposit is stored as *pending* with the salted hash of a fresh
code, the compartment is pulsed open, and once the cabinet reports the door
closed with an item inside the deposit is *holding* and the code is handed
back, once. A resident types the code at the kiosk (``pickup``): the
compartment opens, and the deposit is *collected* when its door closes with
the item gone. Staff take a deposit back with ``clear``.

What happens at a compartment is learnt only from the cabinet's own readings
(``CabinetReading`` on the bus, from the Modbus poller), never assumed from a
command. Each deposit, pickup or clear in progress is a *visit*: it ends when
a reading shows the door closed again (:func:`rules.cabinet.visit_outcome`)
or when its deadline passes. The visit's end is recorded where it is noticed
(the reading handler, or the deadline loop ``run()``), so it is recorded even
if nobody waits for the answer any more.

Alarms are reconciled against what each compartment should have
(:func:`rules.cabinet.wanted_alarms`) on every reading and at every deadline:
``door_left_open``, ``cabinet_tamper``, ``uncollected``. Their source is
``<cabinet>/<compartment index>`` (``cabinet-1/6`` is the door labelled 7).

Deadlines (a visit given up, a deposit expiring, a door open too long) are
computed from stored times each time the loop wakes, never held in timers, so
a clock jump or a restart neither skips nor repeats one.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any, TypeVar

from controller.alarms import AlarmBook, AlarmState
from controller.bus import EventBus, Unsubscribe
from controller.cabinet_store import CabinetStore, Deposit, DepositState, collectable_hashes
from controller.clock import Clock, sleep_or_wake
from controller.device_writes import DeviceWriter
from controller.durations import format_duration
from controller.event_log import EventLog, Severity
from controller.events import ReadingReceived
from controller.modbus_poller import PointWrite, WriteFailed
from controller.pickup_codes import CodeHasher, new_code
from controller.readings import CabinetReading
from controller.site import Device, DeviceKind, Site
from controller.state import LiveState
from rules.cabinet import (
    CompartmentFacts,
    CompartmentState,
    Holding,
    NoCompartment,
    Outcome,
    VisitKind,
    choose_compartment,
    compartment_state,
    record_wrong_code,
    visit_deadline,
    visit_outcome,
    wanted_alarms,
)

T = TypeVar("T")

DOOR_LEFT_OPEN = "door_left_open"
CABINET_TAMPER = "cabinet_tamper"
UNCOLLECTED = "uncollected"
ALARM_KINDS = (DOOR_LEFT_OPEN, CABINET_TAMPER, UNCOLLECTED)
# Finished deposits (collected, failed, cleared) are kept as long as the event log.
KEEP_FINISHED = timedelta(days=90)
# A deadline this close counts as reached: clock arithmetic in floats and
# microseconds must not leave a deadline one microsecond in the future.
_DUE_SLACK = timedelta(milliseconds=1)
_IDLE_WAIT = 3600.0


class CabinetRefused(Exception):
    """A cabinet request that cannot be done, with the HTTP status that says why."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        *,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class DepositRequest:
    recipient: str
    reference: str
    hold_hours: int
    compartment: int | None = None


@dataclass(frozen=True, slots=True)
class DepositReceipt:
    """The answer to a finished deposit; the only place the code ever appears."""

    deposit_id: int
    compartment: int
    label: str
    code: str = field(repr=False)
    expires: datetime
    reference: str
    recipient: str

    def to_json(self) -> dict[str, Any]:
        return {
            "deposit_id": self.deposit_id,
            "compartment": self.compartment,
            "label": self.label,
            "code": self.code,
            "expires": self.expires.isoformat(),
            "reference": self.reference,
            "recipient": self.recipient,
        }


@dataclass(slots=True)
class _Visit:
    kind: VisitKind
    cabinet: str
    compartment: int
    deposit_id: int | None
    started: datetime
    by: str
    done: asyncio.Future[Outcome]
    opened: bool = False


@dataclass(slots=True)
class _Cabinet:
    device: Device
    reading: CabinetReading | None = None
    open_since: dict[int, datetime] = field(default_factory=dict)
    unexplained: set[int] = field(default_factory=set)  # opened with no visit, still open
    visits: dict[int, _Visit] = field(default_factory=dict)
    state_since: dict[int, tuple[str, datetime]] = field(default_factory=dict)
    deposit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def id(self) -> str:
        return self.device.id

    @property
    def count(self) -> int:
        return self.device.compartments


class CabinetService:
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
        self._site = site
        self._state = state
        self._bus = bus
        self._clock = clock
        self._db = db
        self._events = events
        self._alarms = alarms
        self._writer = writer
        self._logger = logger or logging.getLogger("controller.cabinet")
        self._hasher = hasher or CodeHasher()
        self._rules = site.rules.cabinet
        self._open_after = site.rules.door_open_alarm_after
        self._zone = site.site.zone
        self._store = CabinetStore(db)
        self._cabinets = {
            device.id: _Cabinet(device)
            for device in site.devices
            if device.kind is DeviceKind.DOCUMENT_CABINET
        }
        self._raised: set[tuple[str, str]] = set()  # (kind, source) of our active alarms
        self._pickup_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._unsubscribe: list[Unsubscribe] = []

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        now = self._clock.now()
        self._load_alarms()
        self._fail_interrupted(now)
        pruned = self._store.prune(now - KEEP_FINISHED)
        if pruned:
            self._logger.info("forgot %d cabinet deposits finished over 90 days ago", pruned)
        self._unsubscribe = [self._bus.subscribe(ReadingReceived, self._on_reading)]

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
                self._tick(now)
                nearest = self._next_deadline(now)
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
        return list(self._cabinets)

    def compartments(self, cabinet_id: str) -> int | None:
        """How many compartments ``cabinet_id`` has; None for an unknown cabinet."""
        cabinet = self._cabinets.get(cabinet_id)
        return None if cabinet is None else cabinet.count

    def find_deposit(self, deposit_id: int) -> Deposit | None:
        """A deposit by id, finished or not (never with its code)."""
        return self._store.get(deposit_id)

    def view(self, cabinet_id: str) -> dict[str, Any]:
        """The cabinet as staff see it (``GET /api/cabinets/{id}``); never a code."""
        cabinet = self._require(cabinet_id)
        reading = self._known(cabinet)
        deposits = self._by_compartment(cabinet)
        compartments = []
        for index in range(cabinet.count):
            deposit = deposits.get(index)
            state, since = self._compartment_state(cabinet, index, deposit, reading)
            door, item = _flags(reading, index)
            compartments.append(
                {
                    "compartment": index,
                    "label": str(index + 1),
                    "state": state,
                    "since": self._iso(since),
                    "deposit_id": deposit.id if deposit else None,
                    "expires": self._iso(deposit.expires if deposit else None),
                    "reference": deposit.reference if deposit else None,
                    "recipient": deposit.recipient if deposit else None,
                    "door_open": door,
                    "item_present": item,
                }
            )
        return {
            "id": cabinet.id,
            "room": cabinet.device.room,
            "online": self._online(cabinet),
            "compartments": compartments,
        }

    def status(self) -> dict[str, Any]:
        """For ``/api/health``: per cabinet counts, and kiosks locked out now."""
        now = self._clock.now()
        local = now.astimezone(self._zone)
        today = datetime.combine(local.date(), time(), self._zone)
        cabinets: dict[str, Any] = {}
        for cabinet in self._cabinets.values():
            reading = self._known(cabinet)
            deposits = self._by_compartment(cabinet)
            states = [
                self._compartment_state(cabinet, index, deposits.get(index), reading)[0]
                for index in range(cabinet.count)
            ]
            occupying = list(deposits.values())
            cabinets[cabinet.id] = {
                "online": self._online(cabinet),
                "free": states.count("free"),
                "holding": sum(1 for d in occupying if d.state is DepositState.HOLDING),
                "expired": sum(1 for d in occupying if d.state is DepositState.EXPIRED),
                "open_doors": sum(1 for door in (reading.doors_open if reading else ()) if door),
                "visits": len(cabinet.visits),
                "pickups_today": self._store.collected_since(cabinet.id, today),
            }
        throttled = sum(1 for throttle in self._store.throttles().values() if throttle.locked(now))
        return {"cabinets": cabinets, "throttled_kiosks": throttled}

    # -- deposits -------------------------------------------------------------------

    async def deposit(self, cabinet_id: str, request: DepositRequest, by: str) -> DepositReceipt:
        """Open a free compartment for staff and wait until the document is inside.

        Runs to its end even when the caller goes away (the HTTP client
        disconnects): the work is a task of this service and the caller only
        waits for it. A code whose answer was lost that way cannot be shown
        again; staff clear the compartment and deposit again.
        """
        cabinet = self._require(cabinet_id)
        if request.compartment is not None and not 0 <= request.compartment < cabinet.count:
            raise CabinetRefused(
                422,
                "invalid",
                f"compartments of {cabinet_id} are 0..{cabinet.count - 1}",
                [{"field": "compartment", "message": "no such compartment"}],
            )
        task = self._spawn(self._deposit(cabinet, request, by), f"deposit {cabinet_id}")
        return await asyncio.shield(task)

    async def _deposit(self, cabinet: _Cabinet, request: DepositRequest, by: str) -> DepositReceipt:
        async with cabinet.deposit_lock:  # one code and one compartment chosen at a time
            self._require_online(cabinet)
            self._choose(cabinet, request.compartment)  # refuse before the slow part
            taken = [
                deposit.code_hash
                for deposit in self._store.occupying(cabinet.id)
                if deposit.code_hash is not None
            ]
            code, code_hash = await asyncio.to_thread(self._issue_code, taken)
            now = self._clock.now()
            self._require_online(cabinet)
            index = self._choose(cabinet, request.compartment)
            deposit = self._store.create_pending(
                cabinet=cabinet.id,
                compartment=index,
                recipient=request.recipient,
                reference=request.reference,
                hold_hours=request.hold_hours,
                code_hash=code_hash,
                created_by=by,
                now=now,
            )
            visit = self._begin(cabinet, VisitKind.DEPOSIT, index, deposit.id, now, by)
        self._logger.info(
            "%s: deposit %d (%s) opening compartment %s",
            cabinet.id,
            deposit.id,
            request.reference,
            deposit.label,
        )
        await self._pulse(cabinet, visit)
        outcome = await visit.done
        final = self._store.get(deposit.id)
        if outcome is Outcome.DEPOSITED and final is not None and final.expires is not None:
            return DepositReceipt(
                deposit_id=final.id,
                compartment=final.compartment,
                label=final.label,
                code=code,
                expires=final.expires.astimezone(self._zone),
                reference=final.reference,
                recipient=final.recipient,
            )
        raise CabinetRefused(
            409,
            "deposit_failed",
            f"the deposit failed: {_OUTCOME_TEXT[outcome]}; its code is void",
            {
                "reason": outcome.value,
                "deposit_id": deposit.id,
                "compartment": deposit.compartment,
                "label": deposit.label,
            },
        )

    def _issue_code(self, taken: list[str]) -> tuple[str, str]:
        """A fresh code no collectable deposit of the cabinet has, and its hash (slow)."""
        while True:
            code = new_code()
            if not any(self._hasher.verify(code, stored) for stored in taken):
                return code, self._hasher.hash(code)

    def _choose(self, cabinet: _Cabinet, wanted: int | None) -> int:
        reading = self._known(cabinet)
        deposits = self._by_compartment(cabinet)
        free = [
            self._compartment_state(cabinet, index, deposits.get(index), reading)[0] == "free"
            for index in range(cabinet.count)
        ]
        choice = choose_compartment(free, wanted)
        if choice is NoCompartment.BUSY:
            raise CabinetRefused(
                409,
                choice.value,
                f"compartment {wanted} (label {(wanted or 0) + 1}) is not free",
                {"compartment": wanted},
            )
        if choice is NoCompartment.FULL:
            raise CabinetRefused(409, choice.value, f"{cabinet.id} has no free compartment")
        assert isinstance(choice, int)
        return choice

    # -- pickups ------------------------------------------------------------------

    async def pickup(self, cabinet_id: str, code: str, kiosk: str) -> dict[str, Any]:
        """Open the compartment whose deposit ``code`` collects.

        ``kiosk`` names who asks (a token fingerprint): its wrong codes are
        counted, and after too many it is refused (429) for a while, right
        code or not. Wrong, used and expired codes get the same 403.
        """
        cabinet = self._require(cabinet_id)
        # The whole attempt is a task of its own: a client that hangs up halfway
        # can neither escape the wrong-code count nor leave a door half handled.
        return await asyncio.shield(self._spawn(self._pickup(cabinet, code, kiosk), "pickup"))

    async def _pickup(self, cabinet: _Cabinet, code: str, kiosk: str) -> dict[str, Any]:
        async with self._pickup_lock:  # attempts one at a time: no parallel guessing
            now = self._clock.now()
            throttle = self._store.throttle(kiosk).forgotten(now, self._rules)
            if throttle.locked(now):
                retry = throttle.retry_after(now)
                raise CabinetRefused(
                    429,
                    "too_many_attempts",
                    f"too many wrong codes: try again in {retry} s",
                    {"retry_after": retry},
                    retry_after=retry,
                )
            self._require_online(cabinet)
            candidates = collectable_hashes(self._store.occupying(cabinet.id), now)
            found = await asyncio.to_thread(self._hasher.find, code, candidates)
            now = self._clock.now()
            deposit = self._store.get(found) if found is not None else None
            visit = cabinet.visits.get(deposit.compartment) if deposit else None
            if (
                deposit is None
                or not deposit.collectable(now)
                or (visit is not None and visit.kind is not VisitKind.PICKUP)
            ):
                self._wrong_code(cabinet, kiosk, now)
                raise CabinetRefused(
                    403, "wrong_code", "this code opens nothing here; check it or ask the staff"
                )
            self._store.set_throttle(kiosk, throttle)
            if visit is None:
                visit = self._begin(
                    cabinet, VisitKind.PICKUP, deposit.compartment, deposit.id, now, kiosk
                )
            else:
                visit.started = now  # pressed again: a new pulse, a new wait to open
                self._wake.set()
            self._events.record(
                "cabinet_pickup_started",
                f"{cabinet.id}: code accepted for deposit {deposit.id} ({deposit.reference}),"
                f" opening compartment {deposit.label}",
                room=cabinet.device.room,
                device=cabinet.id,
                details=self._details(deposit, kiosk=kiosk),
                time=now,
            )
        if not await self._pulse(cabinet, visit):
            raise CabinetRefused(
                503,
                "cabinet_unavailable",
                "the compartment did not open; the code still works, try again",
            )
        return {"compartment": deposit.compartment, "label": deposit.label}

    def _wrong_code(self, cabinet: _Cabinet, kiosk: str, now: datetime) -> None:
        before = self._store.throttle(kiosk).forgotten(now, self._rules)
        after = record_wrong_code(before, now, self._rules)
        with self._events.transaction():
            self._store.set_throttle(kiosk, after)
            count = len(after.failures) if not after.locked(now) else self._rules.wrong_codes
            self._events.record(
                "cabinet_code_refused",
                f"{cabinet.id}: a wrong, used or expired pickup code from {kiosk}"
                f" ({count} of {self._rules.wrong_codes} within"
                f" {format_duration(self._rules.wrong_code_window)})",
                severity=Severity.WARNING,
                room=cabinet.device.room,
                device=cabinet.id,
                details={"kiosk": kiosk, "wrong_codes": count},
                time=now,
            )
            if after.locked(now) and after.locked_until is not None:
                self._events.record(
                    "cabinet_kiosk_locked",
                    f"{cabinet.id}: {kiosk} refused until"
                    f" {self._iso(after.locked_until)} after {self._rules.wrong_codes}"
                    " wrong codes",
                    severity=Severity.WARNING,
                    room=cabinet.device.room,
                    device=cabinet.id,
                    details={"kiosk": kiosk, "until": self._iso(after.locked_until)},
                    time=now,
                )
        self._logger.warning(
            "%s: wrong pickup code from %s (%d of %d)",
            cabinet.id,
            kiosk,
            count,
            self._rules.wrong_codes,
        )

    # -- clearing -------------------------------------------------------------------

    async def clear(
        self, cabinet_id: str, compartment: int, by: str, reason: str = ""
    ) -> dict[str, Any]:
        """Staff take back what a compartment holds: its deposit ends (``cleared``,
        the code dies) and the compartment is pulsed open.

        Refused (409) when a deposit, pickup or clear is in progress there, or
        when it holds neither a deposit nor an item.
        """
        cabinet = self._require(cabinet_id)
        if not 0 <= compartment < cabinet.count:
            raise CabinetRefused(
                404, "not_found", "no such compartment", {"compartment": compartment}
            )
        work = self._clear(cabinet, compartment, by, reason)
        return await asyncio.shield(self._spawn(work, "clear"))

    async def _clear(
        self, cabinet: _Cabinet, compartment: int, by: str, reason: str
    ) -> dict[str, Any]:
        self._require_online(cabinet)
        now = self._clock.now()
        label = str(compartment + 1)
        if compartment in cabinet.visits:
            raise CabinetRefused(
                409,
                "compartment_busy",
                f"a {cabinet.visits[compartment].kind.value} is in progress at compartment {label}",
                {"compartment": compartment},
            )
        deposit = self._store.in_compartment(cabinet.id, compartment)
        _, item = _flags(self._known(cabinet), compartment)
        if deposit is None and not item:
            raise CabinetRefused(
                409,
                "nothing_to_clear",
                f"compartment {label} holds no deposit and no item",
                {"compartment": compartment},
            )
        with self._events.transaction():
            if deposit is not None:
                deposit = self._store.end(deposit, DepositState.CLEARED, now, "cleared")
            self._events.record(
                "cabinet_cleared",
                f"{cabinet.id}: compartment {label} cleared by {by}"
                + (f" (deposit {deposit.id}, {deposit.reference})" if deposit else "")
                + (f": {reason}" if reason else ""),
                room=cabinet.device.room,
                device=cabinet.id,
                details={
                    "compartment": compartment,
                    "label": label,
                    "deposit_id": deposit.id if deposit else None,
                    "reference": deposit.reference if deposit else None,
                    "by": by,
                    "reason": reason,
                },
                time=now,
            )
            visit = self._begin(
                cabinet, VisitKind.CLEAR, compartment, deposit.id if deposit else None, now, by
            )
            self._reconcile(cabinet, now)
        if not await self._pulse(cabinet, visit):
            raise CabinetRefused(
                503,
                "cabinet_unavailable",
                f"compartment {label} did not open; the deposit is cleared, try the clear again",
                {"compartment": compartment, "deposit_id": deposit.id if deposit else None},
            )
        return {
            "compartment": compartment,
            "label": label,
            "deposit_id": deposit.id if deposit else None,
            "state": "clearing",
        }

    # -- visits ---------------------------------------------------------------------

    def _begin(
        self,
        cabinet: _Cabinet,
        kind: VisitKind,
        index: int,
        deposit_id: int | None,
        now: datetime,
        by: str,
    ) -> _Visit:
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        visit = _Visit(kind, cabinet.id, index, deposit_id, now, by, done)
        cabinet.visits[index] = visit
        self._wake.set()
        return visit

    async def _pulse(self, cabinet: _Cabinet, visit: _Visit) -> bool:
        """Pulse the visit's compartment open; a failure ends the visit at once."""
        try:
            await self._writer.write(
                cabinet.id, [PointWrite("unlock", True, index=visit.compartment)]
            )
        except (WriteFailed, ValueError) as error:
            self._logger.error(
                "%s: compartment %d did not open: %s",
                cabinet.id,
                visit.compartment + 1,
                error,
                extra={"device": cabinet.id},
            )
            if cabinet.visits.get(visit.compartment) is visit:
                now = self._clock.now()
                self._finish(cabinet, visit, Outcome.UNLOCK_FAILED, now)
                self._reconcile(cabinet, now)
            return False
        return True

    def _finish(self, cabinet: _Cabinet, visit: _Visit, outcome: Outcome, now: datetime) -> None:
        """Record how a visit ended, release its compartment, answer whoever waits."""
        if cabinet.visits.get(visit.compartment) is visit:
            del cabinet.visits[visit.compartment]
        deposit = self._store.get(visit.deposit_id) if visit.deposit_id is not None else None
        room, label = cabinet.device.room, str(visit.compartment + 1)
        with self._events.transaction():
            if visit.kind is VisitKind.DEPOSIT and deposit is not None:
                if outcome is Outcome.DEPOSITED:
                    deposit = self._store.hold(deposit, now)
                    self._events.record(
                        "cabinet_deposit",
                        f"{cabinet.id}: deposit {deposit.id} ({deposit.reference}) is in"
                        f" compartment {label}, collectable until {self._iso(deposit.expires)}",
                        room=room,
                        device=cabinet.id,
                        details=self._details(deposit, by=visit.by),
                        time=now,
                    )
                else:
                    deposit = self._store.end(deposit, DepositState.FAILED, now, outcome.value)
                    self._events.record(
                        "cabinet_deposit_failed",
                        f"{cabinet.id}: deposit {deposit.id} ({deposit.reference}) failed at"
                        f" compartment {label}: {_OUTCOME_TEXT[outcome]}",
                        severity=Severity.WARNING,
                        room=room,
                        device=cabinet.id,
                        details=self._details(deposit, by=visit.by, reason=outcome.value),
                        time=now,
                    )
            elif visit.kind is VisitKind.PICKUP and deposit is not None:
                if outcome is Outcome.COLLECTED:
                    deposit = self._store.end(deposit, DepositState.COLLECTED, now, outcome.value)
                    self._events.record(
                        "cabinet_pickup",
                        f"{cabinet.id}: deposit {deposit.id} ({deposit.reference}) collected"
                        f" from compartment {label}",
                        room=room,
                        device=cabinet.id,
                        details=self._details(deposit, kiosk=visit.by),
                        time=now,
                    )
                else:
                    self._events.record(
                        "cabinet_pickup_incomplete",
                        f"{cabinet.id}: pickup of deposit {deposit.id} ({deposit.reference})"
                        f" at compartment {label} not completed: {_OUTCOME_TEXT[outcome]};"
                        " the same code still collects it",
                        severity=Severity.WARNING,
                        room=room,
                        device=cabinet.id,
                        details=self._details(deposit, kiosk=visit.by, reason=outcome.value),
                        time=now,
                    )
            elif visit.kind is VisitKind.CLEAR and outcome is not Outcome.CLOSED:
                self._events.record(
                    "cabinet_clear_incomplete",
                    f"{cabinet.id}: compartment {label} was cleared but did not open:"
                    f" {_OUTCOME_TEXT[outcome]}",
                    severity=Severity.WARNING,
                    room=room,
                    device=cabinet.id,
                    details={
                        "compartment": visit.compartment,
                        "label": label,
                        "deposit_id": visit.deposit_id,
                        "reason": outcome.value,
                        "by": visit.by,
                    },
                    time=now,
                )
        self._logger.info(
            "%s: %s at compartment %s ended: %s",
            cabinet.id,
            visit.kind.value,
            label,
            outcome.value,
            extra={"device": cabinet.id},
        )
        if not visit.done.done():
            visit.done.set_result(outcome)
        self._wake.set()

    # -- readings ---------------------------------------------------------------

    def _on_reading(self, event: ReadingReceived) -> None:
        cabinet = self._cabinets.get(event.device_id)
        if cabinet is None or not isinstance(event.reading, CabinetReading):
            return
        previous, reading, now = cabinet.reading, event.reading, event.time
        cabinet.reading = reading
        for index in range(cabinet.count):
            door, item = _flags(reading, index)
            before, _ = _flags(previous, index)
            visit = cabinet.visits.get(index)
            if door:
                cabinet.open_since.setdefault(index, now)
                if visit is not None:
                    visit.opened = True
                elif before is False:
                    cabinet.unexplained.add(index)
            elif door is False:
                cabinet.open_since.pop(index, None)
                cabinet.unexplained.discard(index)
            if visit is not None and door is not None and item is not None:
                outcome = visit_outcome(visit.kind, visit.opened, door, item)
                if outcome is not None:
                    self._finish(cabinet, visit, outcome, now)
        self._reconcile(cabinet, now)
        self._wake.set()

    # -- deadlines ----------------------------------------------------------------

    def _tick(self, now: datetime) -> None:
        due = now + _DUE_SLACK
        for cabinet in self._cabinets.values():
            for visit in list(cabinet.visits.values()):
                deadline = visit_deadline(visit.kind, visit.started, visit.opened, self._rules)
                if deadline is not None and deadline <= due:
                    self._finish(cabinet, visit, Outcome.TIMED_OUT, now)
            for deposit in self._store.occupying(cabinet.id):
                if (
                    deposit.state is DepositState.HOLDING
                    and deposit.expires is not None
                    and deposit.expires <= due
                    and deposit.compartment not in cabinet.visits  # a pickup finishes first
                ):
                    self._store.expire(deposit)
                    self._logger.warning(
                        "%s: deposit %d (%s) expired uncollected in compartment %s",
                        cabinet.id,
                        deposit.id,
                        deposit.reference,
                        deposit.label,
                    )
            self._reconcile(cabinet, now)

    def _next_deadline(self, now: datetime) -> datetime | None:
        moments: list[datetime] = []
        for cabinet in self._cabinets.values():
            for visit in cabinet.visits.values():
                deadline = visit_deadline(visit.kind, visit.started, visit.opened, self._rules)
                if deadline is not None:
                    moments.append(deadline)
            for deposit in self._store.occupying(cabinet.id):
                if (
                    deposit.state is DepositState.HOLDING
                    and deposit.expires is not None
                    and deposit.compartment not in cabinet.visits
                ):
                    moments.append(deposit.expires)
            for index, since in cabinet.open_since.items():
                moment = since + self._open_after
                if (DOOR_LEFT_OPEN, _source(cabinet.id, index)) not in self._raised:
                    moments.append(moment)
        upcoming = [moment for moment in moments if moment > now]
        return min(upcoming, default=None)

    # -- alarms -------------------------------------------------------------------

    def _reconcile(self, cabinet: _Cabinet, now: datetime) -> None:
        """Raise and clear each compartment's alarms to match what it should have."""
        reading = self._known(cabinet)
        deposits = self._by_compartment(cabinet)
        for index in range(cabinet.count):
            deposit = deposits.get(index)
            door, item = _flags(reading, index)
            visit = cabinet.visits.get(index)
            facts = CompartmentFacts(
                holding=_holding(deposit),
                visit=visit.kind if visit else None,
                door_open=door,
                item_present=item,
                open_since=cabinet.open_since.get(index),
                unexplained_open=index in cabinet.unexplained,
            )
            wanted = wanted_alarms(facts, now, self._open_after)
            label = str(index + 1)
            where = f"{cabinet.id} compartment {label}"
            self._set_alarm(
                cabinet,
                index,
                DOOR_LEFT_OPEN,
                wanted.door_left_open,
                f"{where}: door open for over {format_duration(self._open_after)}",
                Severity.WARNING,
                f"{where}: door closed",
            )
            if index in cabinet.unexplained:
                tamper = f"{where} opened with no deposit, pickup or clear in progress"
            elif deposit is not None:
                tamper = (
                    f"{where}: the document of deposit {deposit.id} ({deposit.reference})"
                    " is gone without a pickup"
                )
            else:
                tamper = f"{where}: tampering"
            self._set_alarm(
                cabinet,
                index,
                CABINET_TAMPER,
                wanted.cabinet_tamper,
                tamper,
                Severity.ALARM,
                f"{where}: door closed" if deposit is None else f"{where}: back in order",
            )
            if deposit is not None and deposit.state is DepositState.EXPIRED:
                uncollected = (
                    f"{where}: deposit {deposit.id} ({deposit.reference}) was not collected"
                    f" by {self._iso(deposit.expires)}; staff must clear it"
                )
            else:
                uncollected = f"{where} holds an item no deposit accounts for; staff must clear it"
            self._set_alarm(
                cabinet,
                index,
                UNCOLLECTED,
                wanted.uncollected,
                uncollected,
                Severity.WARNING,
                f"{where} cleared",
                deposit=deposit,
            )
            state, _ = self._compartment_state(cabinet, index, deposit, reading)
            if cabinet.state_since.get(index, ("", now))[0] != state:
                cabinet.state_since[index] = (state, now)

    def _set_alarm(
        self,
        cabinet: _Cabinet,
        index: int,
        kind: str,
        wanted: bool | None,
        message: str,
        severity: Severity,
        cleared: str,
        *,
        deposit: Deposit | None = None,
    ) -> None:
        source = _source(cabinet.id, index)
        active = (kind, source) in self._raised
        if wanted is None or wanted == active:
            return
        if wanted:
            details: dict[str, Any] = {"compartment": index, "label": str(index + 1)}
            if deposit is not None:
                details.update(deposit_id=deposit.id, reference=deposit.reference)
            self._alarms.raise_alarm(
                kind,
                source,
                message,
                severity=severity,
                room=cabinet.device.room,
                device=cabinet.id,
                details=details,
            )
            self._raised.add((kind, source))
        else:
            self._alarms.clear(kind, source, cleared)
            self._raised.discard((kind, source))

    def _load_alarms(self) -> None:
        prefixes = tuple(f"{cabinet_id}/" for cabinet_id in self._cabinets)
        if not prefixes:
            return
        for alarm in self._alarms.query(
            state=AlarmState.ACTIVE, kind=",".join(ALARM_KINDS), limit=100_000
        ):
            if alarm.source.startswith(prefixes):
                self._raised.add((alarm.kind, alarm.source))

    def _fail_interrupted(self, now: datetime) -> None:
        """Deposits still pending from before a restart never got their answer: failed.

        If the document did go in, the compartment now holds an item that no
        deposit accounts for, which raises ``uncollected`` once the cabinet is
        read, and staff clear it.
        """
        for deposit in self._store.occupying():
            if deposit.state is not DepositState.PENDING:
                continue
            cabinet = self._cabinets.get(deposit.cabinet)
            with self._events.transaction():
                ended = self._store.end(deposit, DepositState.FAILED, now, "restart")
                self._events.record(
                    "cabinet_deposit_failed",
                    f"{deposit.cabinet}: deposit {deposit.id} ({deposit.reference}) at"
                    f" compartment {deposit.label} was interrupted by a restart; its code"
                    " was never given out",
                    severity=Severity.WARNING,
                    room=cabinet.device.room if cabinet else None,
                    device=deposit.cabinet,
                    details=self._details(ended, by=deposit.created_by, reason="restart"),
                    time=now,
                )

    # -- helpers ------------------------------------------------------------------

    def _require(self, cabinet_id: str) -> _Cabinet:
        cabinet = self._cabinets.get(cabinet_id)
        if cabinet is None:
            raise CabinetRefused(404, "not_found", "no such cabinet", {"cabinet": cabinet_id})
        return cabinet

    def _online(self, cabinet: _Cabinet) -> bool:
        return self._known(cabinet) is not None

    def _known(self, cabinet: _Cabinet) -> CabinetReading | None:
        """The cabinet's last reading while it still describes the cabinet, else None."""
        if cabinet.reading is None or not self._state.device(cabinet.id).usable:
            return None
        return cabinet.reading

    def _require_online(self, cabinet: _Cabinet) -> None:
        if self._known(cabinet) is None:
            raise CabinetRefused(
                503,
                "cabinet_unavailable",
                f"{cabinet.id} is offline or not read yet; try again shortly",
                {"cabinet": cabinet.id},
            )

    def _by_compartment(self, cabinet: _Cabinet) -> dict[int, Deposit]:
        return {deposit.compartment: deposit for deposit in self._store.occupying(cabinet.id)}

    def _compartment_state(
        self,
        cabinet: _Cabinet,
        index: int,
        deposit: Deposit | None,
        reading: CabinetReading | None,
    ) -> tuple[str, datetime | None]:
        """What staff see at a compartment, and since when."""
        visit = cabinet.visits.get(index)
        door, item = _flags(reading, index)
        state = compartment_state(_holding(deposit), visit.kind if visit else None, door, item)
        if visit is not None:
            since: datetime | None = visit.started
        elif state is CompartmentState.OPEN:
            since = cabinet.open_since.get(index)
        elif state is CompartmentState.HOLDING and deposit is not None:
            since = deposit.deposited
        elif state is CompartmentState.EXPIRED and deposit is not None:
            since = deposit.expires
        else:
            recorded = cabinet.state_since.get(index)
            since = recorded[1] if recorded and recorded[0] == state else None
        return state.value, since

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

    def _details(self, deposit: Deposit, **extra: Any) -> dict[str, Any]:
        return {
            "deposit_id": deposit.id,
            "compartment": deposit.compartment,
            "label": deposit.label,
            "reference": deposit.reference,
            "expires": self._iso(deposit.expires),
            **extra,
        }

    def _iso(self, moment: datetime | None) -> str | None:
        return None if moment is None else moment.astimezone(self._zone).isoformat()


_OUTCOME_TEXT = {
    Outcome.DEPOSITED: "the document is inside",
    Outcome.CLOSED_EMPTY: "the door closed with nothing inside",
    Outcome.COLLECTED: "the document was taken",
    Outcome.LEFT_INSIDE: "the door closed with the document still inside",
    Outcome.CLOSED: "the door opened and closed",
    Outcome.TIMED_OUT: "the door did not open and close in time",
    Outcome.UNLOCK_FAILED: "the cabinet did not confirm the unlock",
}


def _source(cabinet_id: str, index: int) -> str:
    return f"{cabinet_id}/{index}"


def _flags(reading: CabinetReading | None, index: int) -> tuple[bool | None, bool | None]:
    """(door open, item present) of one compartment; None where unknown."""
    if reading is None:
        return None, None
    door = reading.doors_open[index] if index < len(reading.doors_open) else None
    item = reading.items_present[index] if index < len(reading.items_present) else None
    return door, item


def _holding(deposit: Deposit | None) -> Holding:
    if deposit is None:
        return Holding.NONE
    return {
        DepositState.PENDING: Holding.PENDING,
        DepositState.HOLDING: Holding.HOLDING,
        DepositState.EXPIRED: Holding.EXPIRED,
    }.get(deposit.state, Holding.NONE)
