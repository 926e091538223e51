"""Kiosk pickups: checking a code, the wrong-code throttle, and opening the compartment.

Six digits are all that stand between a resident's documents and whoever is
at the kiosk, so every attempt goes through here one at a time (no parallel
guessing), a kiosk token locked out by :func:`rules.cabinet.record_wrong_code`
is refused (429) before any code is looked at, and wrong, used and expired
codes get the same 403 and all count. Codes are checked against their salted
hashes on a worker thread; a code is never logged and never in an event.

A right code begins a pickup visit (or, typed again while its pickup is
under way, pulses the door again); whether the document was taken is the
visit's business (``controller.cabinet_visits``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from controller.cabinet_compartments import Cabinet, Cabinets, deposit_details, local_iso
from controller.cabinet_requests import CabinetRefused
from controller.cabinet_store import CabinetStore, collectable_hashes
from controller.cabinet_visits import Visits
from controller.clock import Clock
from controller.durations import format_duration
from controller.event_log import EventLog, Severity
from controller.pickup_codes import CodeHasher
from controller.site import CabinetRules
from rules.cabinet import VisitKind, record_wrong_code


class Pickups:
    """Checks kiosk codes one at a time, under each kiosk token's throttle."""

    def __init__(
        self,
        cabinets: Cabinets,
        store: CabinetStore,
        *,
        visits: Visits,
        events: EventLog,
        hasher: CodeHasher,
        rules: CabinetRules,
        clock: Clock,
        zone: ZoneInfo,
        logger: logging.Logger,
        wake: Callable[[], None],
    ) -> None:
        """``wake`` tells the deadline loop that a pickup's wait to open started again."""
        self._cabinets = cabinets
        self._store = store
        self._visits = visits
        self._events = events
        self._hasher = hasher
        self._rules = rules
        self._clock = clock
        self._zone = zone
        self._logger = logger
        self._wake = wake
        self._lock = asyncio.Lock()  # across all cabinets: a kiosk token's throttle is too

    async def pickup(self, cabinet: Cabinet, code: str, kiosk: str) -> dict[str, Any]:
        """Open the compartment whose deposit ``code`` collects, for kiosk token ``kiosk``."""
        async with self._lock:  # attempts one at a time: no parallel guessing
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
            self._cabinets.require_online(cabinet)
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
                visit = self._visits.begin(
                    cabinet, VisitKind.PICKUP, deposit.compartment, deposit.id, now, kiosk
                )
            else:
                visit.started = now  # pressed again: a new pulse, a new wait to open
                self._wake()
            self._events.record(
                "cabinet_pickup_started",
                f"{cabinet.id}: code accepted for deposit {deposit.id} ({deposit.reference}),"
                f" opening compartment {deposit.label}",
                room=cabinet.device.room,
                device=cabinet.id,
                details=deposit_details(deposit, self._zone, kiosk=kiosk),
                time=now,
            )
        if not await self._visits.pulse(cabinet, visit):
            if visit.opened:  # typed again at an open door: the pickup goes on
                message = f"the cabinet did not confirm the unlock; door {deposit.label} is open"
            else:
                message = "the compartment did not open; the code still works, try again"
            raise CabinetRefused(503, "cabinet_unavailable", message)
        return {"compartment": deposit.compartment, "label": deposit.label}

    def _wrong_code(self, cabinet: Cabinet, kiosk: str, now: datetime) -> None:
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
                until = local_iso(after.locked_until, self._zone)
                self._events.record(
                    "cabinet_kiosk_locked",
                    f"{cabinet.id}: {kiosk} refused until {until} after"
                    f" {self._rules.wrong_codes} wrong codes",
                    severity=Severity.WARNING,
                    room=cabinet.device.room,
                    device=cabinet.id,
                    details={"kiosk": kiosk, "until": until},
                    time=now,
                )
        self._logger.warning(
            "%s: wrong pickup code from %s (%d of %d)",
            cabinet.id,
            kiosk,
            count,
            self._rules.wrong_codes,
        )
