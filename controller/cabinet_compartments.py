"""What the controller knows of each cabinet right now, asked the same way by every part.

The parts of the cabinet service (the watch over readings and deadlines, the
alarms, the visits, deposits, pickups, clearing and the staff view) all look
at the same facts: the cabinet's last reading, which doors are open and since
when, the visit under way at each compartment, and the deposit that claims
it. This module holds those facts (:class:`Cabinet`, :class:`Visit`) and
answers the questions every part asks of them (:class:`Cabinets`: is the
cabinet readable, which deposit is in which compartment, what state a
compartment is in), so that a deposit choosing a free compartment and the
staff view showing one as ``free`` can never disagree.

Only this in-memory picture lives here; what a reading *means* is
``controller.cabinet_watch``'s business, and what is durable is
``controller.cabinet_store``'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from controller.cabinet_requests import CabinetRefused
from controller.cabinet_store import CabinetStore, Deposit, DepositState
from controller.readings import CabinetReading
from controller.site import Device, DeviceKind, Site
from controller.state import LiveState
from rules.cabinet import CompartmentState, Holding, Outcome, VisitKind, compartment_state


@dataclass(slots=True)
class Visit:
    """A deposit, pickup or clear under way at one compartment.

    It starts when the request is accepted and ends when a reading shows its
    door closed again after it was seen open, or its contents changed since
    it started (``item_at_start``), or when its deadline passes; whoever made
    the request waits on ``done``. Visits are held in memory only: a restart
    ends them all.
    """

    kind: VisitKind
    cabinet: str
    compartment: int
    deposit_id: int | None
    started: datetime
    by: str
    done: asyncio.Future[Outcome]
    item_at_start: bool | None = None  # the item sensor when it began (None: unknown)
    opened: bool = False  # the door was seen open since the pulse


@dataclass(slots=True)
class Cabinet:
    """One document cabinet as its readings and the visits under way describe it."""

    device: Device
    reading: CabinetReading | None = None
    open_since: dict[int, datetime] = field(default_factory=dict)
    unexplained: set[int] = field(default_factory=set)  # opened with no visit, still open
    visits: dict[int, Visit] = field(default_factory=dict)
    # The staff view's "since" for states that have no moment of their own.
    state_since: dict[int, tuple[CompartmentState, datetime]] = field(default_factory=dict)
    # Deposits into this cabinet choose their compartment and code one at a time.
    deposit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def id(self) -> str:
        return self.device.id

    @property
    def count(self) -> int:
        return self.device.compartments

    def note_state(self, index: int, state: CompartmentState, now: datetime) -> None:
        """Remember ``now`` as the moment ``index`` entered ``state``, unless it was in it."""
        recorded = self.state_since.get(index)
        if recorded is None or recorded[0] != state:
            self.state_since[index] = (state, now)


class Cabinets:
    """The site's document cabinets, and the questions every part asks about them."""

    def __init__(self, site: Site, state: LiveState, store: CabinetStore) -> None:
        self._state = state
        self._store = store
        self._cabinets = {
            device.id: Cabinet(device)
            for device in site.devices
            if device.kind is DeviceKind.DOCUMENT_CABINET
        }

    @property
    def ids(self) -> list[str]:
        return list(self._cabinets)

    def __iter__(self) -> Iterator[Cabinet]:
        return iter(self._cabinets.values())

    def get(self, cabinet_id: str) -> Cabinet | None:
        return self._cabinets.get(cabinet_id)

    def require(self, cabinet_id: str) -> Cabinet:
        cabinet = self._cabinets.get(cabinet_id)
        if cabinet is None:
            raise CabinetRefused(404, "not_found", "no such cabinet", {"cabinet": cabinet_id})
        return cabinet

    def known(self, cabinet: Cabinet) -> CabinetReading | None:
        """The cabinet's last reading while it still describes the cabinet, else None."""
        if cabinet.reading is None or not self._state.device(cabinet.id).usable:
            return None
        return cabinet.reading

    def online(self, cabinet: Cabinet) -> bool:
        return self.known(cabinet) is not None

    def require_online(self, cabinet: Cabinet) -> None:
        if self.known(cabinet) is None:
            raise CabinetRefused(
                503,
                "cabinet_unavailable",
                f"{cabinet.id} is offline or not read yet; try again shortly",
                {"cabinet": cabinet.id},
            )

    def by_compartment(self, cabinet: Cabinet) -> dict[int, Deposit]:
        """The deposit that claims each compartment (pending, holding or expired)."""
        return {deposit.compartment: deposit for deposit in self._store.occupying(cabinet.id)}

    def state_of(
        self,
        cabinet: Cabinet,
        index: int,
        deposit: Deposit | None,
        reading: CabinetReading | None,
    ) -> CompartmentState:
        """What staff see at a compartment (``free`` is also what a deposit may take)."""
        visit = cabinet.visits.get(index)
        door, item = flags(reading, index)
        return compartment_state(holding_of(deposit), visit.kind if visit else None, door, item)


def flags(reading: CabinetReading | None, index: int) -> tuple[bool | None, bool | None]:
    """(door open, item present) of one compartment; None where unknown."""
    if reading is None:
        return None, None
    door = reading.doors_open[index] if index < len(reading.doors_open) else None
    item = reading.items_present[index] if index < len(reading.items_present) else None
    return door, item


def holding_of(deposit: Deposit | None) -> Holding:
    """What a compartment's deposit asks of it, in the terms of ``rules.cabinet``."""
    if deposit is None:
        return Holding.NONE
    return {
        DepositState.PENDING: Holding.PENDING,
        DepositState.HOLDING: Holding.HOLDING,
        DepositState.EXPIRED: Holding.EXPIRED,
    }.get(deposit.state, Holding.NONE)


def local_iso(moment: datetime | None, zone: ZoneInfo) -> str | None:
    """``moment`` in RFC 3339 with the site's offset, as the API and events give times."""
    return None if moment is None else moment.astimezone(zone).isoformat()


def deposit_details(deposit: Deposit, zone: ZoneInfo, **extra: Any) -> dict[str, Any]:
    """The ``details`` of a deposit's events: never its code, never the recipient's name."""
    return {
        "deposit_id": deposit.id,
        "compartment": deposit.compartment,
        "label": deposit.label,
        "reference": deposit.reference,
        "expires": local_iso(deposit.expires, zone),
        **extra,
    }
