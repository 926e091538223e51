"""The cabinet as staff and ``/api/health`` see it: one state per compartment, and counts.

``GET /api/cabinets/{id}`` shows each compartment's state
(:func:`rules.cabinet.compartment_state`), since when, and the deposit in it
with its reference and recipient (staff only), but never a code. The health
status counts free compartments, deposits held (not those whose item is
gone) and expired, open doors, visits under way, today's pickups (in the
site's zone) and the kiosk tokens locked out now. This module only reads;
it owns the shape of both answers.
"""

from __future__ import annotations

from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from controller.cabinet_compartments import Cabinet, Cabinets, flags, local_iso
from controller.cabinet_store import CabinetStore, Deposit, DepositState
from controller.clock import Clock
from controller.readings import CabinetReading
from rules.cabinet import CompartmentState


class CabinetView:
    """Answers what staff and the health check ask about the cabinets."""

    def __init__(
        self, cabinets: Cabinets, store: CabinetStore, *, clock: Clock, zone: ZoneInfo
    ) -> None:
        self._cabinets = cabinets
        self._store = store
        self._clock = clock
        self._zone = zone

    def view(self, cabinet_id: str) -> dict[str, Any]:
        """The cabinet as staff see it (``GET /api/cabinets/{id}``); never a code."""
        cabinet = self._cabinets.require(cabinet_id)
        reading = self._cabinets.known(cabinet)
        deposits = self._cabinets.by_compartment(cabinet)
        compartments = []
        for index in range(cabinet.count):
            deposit = deposits.get(index)
            state, since = self._state_since(cabinet, index, deposit, reading)
            door, item = flags(reading, index)
            compartments.append(
                {
                    "compartment": index,
                    "label": str(index + 1),
                    "state": state.value,
                    "since": local_iso(since, self._zone),
                    "deposit_id": deposit.id if deposit else None,
                    "expires": local_iso(deposit.expires if deposit else None, self._zone),
                    "reference": deposit.reference if deposit else None,
                    "recipient": deposit.recipient if deposit else None,
                    "door_open": door,
                    "item_present": item,
                }
            )
        return {
            "id": cabinet.id,
            "room": cabinet.device.room,
            "online": self._cabinets.online(cabinet),
            "compartments": compartments,
        }

    def status(self) -> dict[str, Any]:
        """For ``/api/health``: per cabinet counts, and kiosks locked out now."""
        now = self._clock.now()
        local = now.astimezone(self._zone)
        today = datetime.combine(local.date(), time(), self._zone)
        cabinets: dict[str, Any] = {}
        for cabinet in self._cabinets:
            reading = self._cabinets.known(cabinet)
            deposits = self._cabinets.by_compartment(cabinet)
            states = [
                self._cabinets.state_of(cabinet, index, deposits.get(index), reading)
                for index in range(cabinet.count)
            ]
            occupying = list(deposits.values())
            cabinets[cabinet.id] = {
                "online": self._cabinets.online(cabinet),
                "free": states.count(CompartmentState.FREE),
                # A deposit whose item is gone shows as a fault, not as held.
                "holding": sum(
                    1
                    for d in occupying
                    if d.state is DepositState.HOLDING
                    and self._cabinets.state_of(cabinet, d.compartment, d, reading)
                    is not CompartmentState.FAULT
                ),
                "expired": sum(1 for d in occupying if d.state is DepositState.EXPIRED),
                "open_doors": sum(1 for door in (reading.doors_open if reading else ()) if door),
                "visits": len(cabinet.visits),
                "pickups_today": self._store.collected_since(cabinet.id, today),
            }
        throttled = sum(1 for throttle in self._store.throttles().values() if throttle.locked(now))
        return {"cabinets": cabinets, "throttled_kiosks": throttled}

    def _state_since(
        self,
        cabinet: Cabinet,
        index: int,
        deposit: Deposit | None,
        reading: CabinetReading | None,
    ) -> tuple[CompartmentState, datetime | None]:
        """What staff see at a compartment, and since when."""
        state = self._cabinets.state_of(cabinet, index, deposit, reading)
        visit = cabinet.visits.get(index)
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
        return state, since
