"""What the cabinet's readings and the passing of time mean for its compartments.

What happens at a compartment is learnt only from the cabinet's own readings
(``CabinetReading`` on the bus, from the Modbus poller), never assumed from a
command. :meth:`CabinetWatch.on_reading` keeps track of which doors are open
since when, notices a door opening with nothing under way (tamper), and ends
a visit when a reading shows what it came to
(:func:`rules.cabinet.visit_outcome`). A door already open at the first
reading after a start was not seen opening: the alarms raised about it
before the restart carry over until it closes.

:meth:`CabinetWatch.tick` acts at deadlines: a visit given up
(:func:`rules.cabinet.visit_deadline`), a deposit expiring uncollected, a
door open too long. Deadlines are computed from stored times each time the
deadline loop wakes (:meth:`CabinetWatch.next_deadline` says when), never
held in timers, so a clock jump or a restart neither skips nor repeats one.

After either, the compartments' alarms are reconciled
(``controller.cabinet_alarms``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from controller.cabinet_alarms import CompartmentAlarms
from controller.cabinet_compartments import Cabinet, Cabinets, flags
from controller.cabinet_store import CabinetStore, DepositState
from controller.cabinet_visits import Visits
from controller.events import ReadingReceived
from controller.readings import CabinetReading
from controller.site import CabinetRules
from rules.cabinet import Outcome, visit_deadline, visit_outcome

# A deadline this close counts as reached: clock arithmetic in floats and
# microseconds must not leave a deadline one microsecond in the future.
_DUE_SLACK = timedelta(milliseconds=1)


class CabinetWatch:
    """Turns the cabinets' readings and the passing deadlines into visit ends and alarms."""

    def __init__(
        self,
        cabinets: Cabinets,
        store: CabinetStore,
        *,
        visits: Visits,
        alarms: CompartmentAlarms,
        rules: CabinetRules,
        logger: logging.Logger,
        wake: Callable[[], None],
    ) -> None:
        """``wake`` tells the deadline loop to look again after a reading."""
        self._cabinets = cabinets
        self._store = store
        self._visits = visits
        self._alarms = alarms
        self._rules = rules
        self._logger = logger
        self._wake = wake

    def on_reading(self, event: ReadingReceived) -> None:
        """A poll of a cabinet: doors opened or closed, visits that came to an end."""
        cabinet = self._cabinets.get(event.device_id)
        if cabinet is None or not isinstance(event.reading, CabinetReading):
            return
        previous, reading, now = cabinet.reading, event.reading, event.time
        cabinet.reading = reading
        for index in range(cabinet.count):
            door, item = flags(reading, index)
            before, _ = flags(previous, index)
            visit = cabinet.visits.get(index)
            if door:
                if before is None and visit is None:
                    self._found_open(cabinet, index)
                cabinet.open_since.setdefault(index, now)
                if visit is not None:
                    visit.opened = True
                elif before is False:
                    cabinet.unexplained.add(index)
            elif door is False:
                cabinet.open_since.pop(index, None)
                cabinet.unexplained.discard(index)
            if visit is not None and door is not None and item is not None:
                outcome = visit_outcome(visit.kind, visit.opened, door, item, visit.item_at_start)
                if outcome is not None:
                    self._visits.finish(cabinet, visit, outcome, now)
        self._alarms.reconcile(cabinet, now)
        self._wake()

    def _found_open(self, cabinet: Cabinet, index: int) -> None:
        """A door already open at the first reading after a start.

        The controller did not see it open, so the alarms it had raised about
        it before the restart say what it was: an active ``door_left_open``
        stays, the door counted open since the moment that alarm recorded (so
        it is never cleared as "door closed" and raised again a minute later),
        and an active ``cabinet_tamper`` stays until the door closes, as for
        a door seen forced. A door with neither alarm is not tamper, and its
        ``door_left_open`` counts from this reading.
        """
        since = self._alarms.left_open_since(cabinet.id, index)
        if since is not None:
            cabinet.open_since[index] = since
        if self._alarms.tampered(cabinet.id, index):
            cabinet.unexplained.add(index)

    def tick(self, now: datetime) -> None:
        """Act on every deadline reached by ``now``: visits given up, deposits expiring."""
        due = now + _DUE_SLACK
        for cabinet in self._cabinets:
            for visit in list(cabinet.visits.values()):
                deadline = visit_deadline(visit.kind, visit.started, visit.opened, self._rules)
                if deadline is not None and deadline <= due:
                    self._visits.finish(cabinet, visit, Outcome.TIMED_OUT, now)
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
            self._alarms.reconcile(cabinet, now)

    def next_deadline(self, now: datetime) -> datetime | None:
        """The nearest moment after ``now`` at which :meth:`tick` has something to do."""
        moments: list[datetime] = []
        for cabinet in self._cabinets:
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
            moments.extend(self._alarms.door_deadlines(cabinet))
        upcoming = [moment for moment in moments if moment > now]
        return min(upcoming, default=None)
