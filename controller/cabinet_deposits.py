"""Staff deposits: choosing a compartment and a code, and waiting for the document.

A deposit chooses a free compartment (the one asked for, else the lowest
free one: :func:`rules.cabinet.choose_compartment`) and a code that no other
deposit of the cabinet can be opened with, stores itself as *pending* with
the code's hash *before* the compartment is pulsed (so a controller killed
halfway still knows the compartment was being filled), and waits until its
visit ends. Only a deposit whose door closed with an item inside answers
with a :class:`DepositReceipt`, the one place its code ever appears.

Deposits into one cabinet choose their compartment and code one at a time
(the cabinet's ``deposit_lock``); their door visits may overlap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from zoneinfo import ZoneInfo

from controller.cabinet_compartments import Cabinet, Cabinets
from controller.cabinet_requests import CabinetRefused, DepositReceipt, DepositRequest
from controller.cabinet_store import CabinetStore
from controller.cabinet_visits import OUTCOME_TEXT, Visits
from controller.clock import Clock
from rules.cabinet import CompartmentState, NoCompartment, Outcome, VisitKind, choose_compartment

IssueCode = Callable[[list[str]], tuple[str, str]]
"""Given the hashes of the codes still alive, a fresh code and its hash (slow: a thread)."""


class Deposits:
    """Carries out staff deposits, from choosing a compartment to the receipt."""

    def __init__(
        self,
        cabinets: Cabinets,
        store: CabinetStore,
        *,
        visits: Visits,
        clock: Clock,
        zone: ZoneInfo,
        logger: logging.Logger,
        issue_code: IssueCode,
    ) -> None:
        self._cabinets = cabinets
        self._store = store
        self._visits = visits
        self._clock = clock
        self._zone = zone
        self._logger = logger
        self._issue_code = issue_code

    async def deposit(self, cabinet: Cabinet, request: DepositRequest, by: str) -> DepositReceipt:
        """Open a free compartment of ``cabinet`` and wait until the document is inside."""
        async with cabinet.deposit_lock:  # one code and one compartment chosen at a time
            self._cabinets.require_online(cabinet)
            self._choose(cabinet, request.compartment)  # refuse before the slow part
            taken = [
                deposit.code_hash
                for deposit in self._store.occupying(cabinet.id)
                if deposit.code_hash is not None
            ]
            code, code_hash = await asyncio.to_thread(self._issue_code, taken)
            now = self._clock.now()
            self._cabinets.require_online(cabinet)
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
            visit = self._visits.begin(cabinet, VisitKind.DEPOSIT, index, deposit.id, now, by)
        self._logger.info(
            "%s: deposit %d (%s) opening compartment %s",
            cabinet.id,
            deposit.id,
            request.reference,
            deposit.label,
        )
        await self._visits.pulse(cabinet, visit)
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
            f"the deposit failed: {OUTCOME_TEXT[outcome]}; its code is void",
            {
                "reason": outcome.value,
                "deposit_id": deposit.id,
                "compartment": deposit.compartment,
                "label": deposit.label,
            },
        )

    def _choose(self, cabinet: Cabinet, wanted: int | None) -> int:
        reading = self._cabinets.known(cabinet)
        deposits = self._cabinets.by_compartment(cabinet)
        free = [
            self._cabinets.state_of(cabinet, index, deposits.get(index), reading)
            is CompartmentState.FREE
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
