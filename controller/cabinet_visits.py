"""The life of a visit: begun by a request, opened by a pulse, ended once and recorded.

Each deposit, pickup or clear in progress is a :class:`Visit` at one
compartment. This module begins visits, pulses their compartment open, and
ends them: whoever notices the end (a reading, a deadline, a pulse the
cabinet did not confirm) calls :meth:`Visits.finish`, which records what the
visit came to for its deposit (``cabinet_deposit``, ``cabinet_deposit_failed``,
``cabinet_pickup``, ``cabinet_pickup_incomplete``, ``cabinet_clear_incomplete``),
releases the compartment and answers whoever waits. The end is recorded
where it is noticed, so it is recorded even if nobody waits any more.

*When* a visit ends is decided elsewhere (``controller.cabinet_watch`` reads
the doors and keeps the deadlines); what it means for its deposit is decided
here. Visits live in memory only: a deposit still pending at start lost its
visit to a restart and fails (:meth:`Visits.fail_interrupted`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from controller.cabinet_alarms import CompartmentAlarms
from controller.cabinet_compartments import (
    Cabinet,
    Cabinets,
    Visit,
    deposit_details,
    flags,
    local_iso,
)
from controller.cabinet_store import CabinetStore, DepositState
from controller.clock import Clock
from controller.device_writes import DeviceWriter
from controller.event_log import EventLog, Severity
from controller.modbus_poller import PointWrite, WriteFailed
from rules.cabinet import Outcome, VisitKind

OUTCOME_TEXT = {
    Outcome.DEPOSITED: "the document is inside",
    Outcome.CLOSED_EMPTY: "the door closed with nothing inside",
    Outcome.COLLECTED: "the document was taken",
    Outcome.LEFT_INSIDE: "the door closed with the document still inside",
    Outcome.CLOSED: "the door opened and closed",
    Outcome.TIMED_OUT: "the door did not open and close in time",
    Outcome.UNLOCK_FAILED: "the cabinet did not confirm the unlock",
}


class Visits:
    """Begins, pulses and ends the visits of every cabinet."""

    def __init__(
        self,
        cabinets: Cabinets,
        store: CabinetStore,
        *,
        events: EventLog,
        alarms: CompartmentAlarms,
        writer: DeviceWriter,
        clock: Clock,
        zone: ZoneInfo,
        logger: logging.Logger,
        wake: Callable[[], None],
    ) -> None:
        """``wake`` tells the deadline loop that a visit's deadline came or went."""
        self._cabinets = cabinets
        self._store = store
        self._events = events
        self._alarms = alarms
        self._writer = writer
        self._clock = clock
        self._zone = zone
        self._logger = logger
        self._wake = wake

    def begin(
        self,
        cabinet: Cabinet,
        kind: VisitKind,
        index: int,
        deposit_id: int | None,
        now: datetime,
        by: str,
    ) -> Visit:
        """Claim compartment ``index`` for a visit; the caller pulses it next."""
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        _, item = flags(self._cabinets.known(cabinet), index)
        visit = Visit(kind, cabinet.id, index, deposit_id, now, by, done, item_at_start=item)
        cabinet.visits[index] = visit
        self._wake()
        return visit

    async def pulse(self, cabinet: Cabinet, visit: Visit) -> bool:
        """Pulse the visit's compartment open; False when the cabinet did not confirm it.

        An unconfirmed pulse ends the visit at once (``unlock_failed``) unless
        its door has already been seen open: a code typed again while its
        pickup's door stands open pulses again, and if that pulse fails the
        pickup still goes on until the door closes, as any open visit does.
        """
        try:
            await self._writer.write(
                cabinet.id, [PointWrite("unlock", True, index=visit.compartment)]
            )
        except (WriteFailed, ValueError) as error:
            self._logger.error(
                "%s: the unlock of compartment %d was not confirmed: %s",
                cabinet.id,
                visit.compartment + 1,
                error,
                extra={"device": cabinet.id},
            )
            if cabinet.visits.get(visit.compartment) is visit and not visit.opened:
                now = self._clock.now()
                self.finish(cabinet, visit, Outcome.UNLOCK_FAILED, now)
                self._alarms.reconcile(cabinet, now)
            return False
        return True

    def finish(self, cabinet: Cabinet, visit: Visit, outcome: Outcome, now: datetime) -> None:
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
                        f" compartment {label}, collectable until"
                        f" {local_iso(deposit.expires, self._zone)}",
                        room=room,
                        device=cabinet.id,
                        details=deposit_details(deposit, self._zone, by=visit.by),
                        time=now,
                    )
                else:
                    deposit = self._store.end(deposit, DepositState.FAILED, now, outcome.value)
                    self._events.record(
                        "cabinet_deposit_failed",
                        f"{cabinet.id}: deposit {deposit.id} ({deposit.reference}) failed at"
                        f" compartment {label}: {OUTCOME_TEXT[outcome]}",
                        severity=Severity.WARNING,
                        room=room,
                        device=cabinet.id,
                        details=deposit_details(
                            deposit, self._zone, by=visit.by, reason=outcome.value
                        ),
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
                        details=deposit_details(deposit, self._zone, kiosk=visit.by),
                        time=now,
                    )
                else:
                    if deposit.collectable(now):
                        after = "the same code still collects it"
                    else:  # it expired while the pickup was under way: it expires now
                        after = (
                            f"it expired at {local_iso(deposit.expires, self._zone)};"
                            " staff must clear it"
                        )
                    self._events.record(
                        "cabinet_pickup_incomplete",
                        f"{cabinet.id}: pickup of deposit {deposit.id} ({deposit.reference})"
                        f" at compartment {label} not completed: {OUTCOME_TEXT[outcome]};"
                        f" {after}",
                        severity=Severity.WARNING,
                        room=room,
                        device=cabinet.id,
                        details=deposit_details(
                            deposit, self._zone, kiosk=visit.by, reason=outcome.value
                        ),
                        time=now,
                    )
            elif visit.kind is VisitKind.CLEAR and outcome is not Outcome.CLOSED:
                self._events.record(
                    "cabinet_clear_incomplete",
                    f"{cabinet.id}: compartment {label} was cleared but did not open:"
                    f" {OUTCOME_TEXT[outcome]}",
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
        self._wake()

    def fail_interrupted(self, now: datetime) -> None:
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
                    details=deposit_details(
                        ended, self._zone, by=deposit.created_by, reason="restart"
                    ),
                    time=now,
                )
