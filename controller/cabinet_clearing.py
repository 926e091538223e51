"""Staff clearing a compartment: taking back a deposit, or an item nobody accounts for.

A clear is how every stuck compartment ends: an expired deposit, a deposit
whose document is gone, a document that went in after its deposit failed.
Its deposit ends (``cleared``, the code dies) *before* the door is pulsed,
and the compartment's alarms are reconciled at once, so ``uncollected``
clears with the clear and not when the door happens to close. A pulse the
cabinet does not confirm leaves the deposit cleared: staff clear again.
"""

from __future__ import annotations

from typing import Any

from controller.cabinet_alarms import CompartmentAlarms
from controller.cabinet_compartments import Cabinet, Cabinets, flags
from controller.cabinet_requests import CabinetRefused
from controller.cabinet_store import CabinetStore, DepositState
from controller.cabinet_visits import Visits
from controller.clock import Clock
from controller.event_log import EventLog
from rules.cabinet import VisitKind


class Clearing:
    """Carries out staff clears."""

    def __init__(
        self,
        cabinets: Cabinets,
        store: CabinetStore,
        *,
        visits: Visits,
        alarms: CompartmentAlarms,
        events: EventLog,
        clock: Clock,
    ) -> None:
        self._cabinets = cabinets
        self._store = store
        self._visits = visits
        self._alarms = alarms
        self._events = events
        self._clock = clock

    async def clear(
        self, cabinet: Cabinet, compartment: int, by: str, reason: str
    ) -> dict[str, Any]:
        """End what ``compartment`` holds and pulse it open for staff member ``by``."""
        self._cabinets.require_online(cabinet)
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
        _, item = flags(self._cabinets.known(cabinet), compartment)
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
            visit = self._visits.begin(
                cabinet, VisitKind.CLEAR, compartment, deposit.id if deposit else None, now, by
            )
            self._alarms.reconcile(cabinet, now)
        if not await self._visits.pulse(cabinet, visit):
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
