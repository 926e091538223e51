"""The cabinet's three alarms per compartment, kept in step with what it should have.

``door_left_open``, ``cabinet_tamper`` and ``uncollected`` are not raised at
the moment something happens but *reconciled*: after every reading, every
deadline and every clear, :meth:`CompartmentAlarms.reconcile` gathers each
compartment's facts, asks :func:`rules.cabinet.wanted_alarms` which alarms
it should have now, and raises or clears the difference. So an alarm can
neither be forgotten nor raised twice, whatever order things happen in, and
an unknown fact (the cabinet offline) leaves an alarm as it is.

Their source is ``<cabinet>/<compartment index>`` (``cabinet-1/6`` is the
door labelled 7). Which of them are active is remembered here (and reloaded
from the alarm book at start), so a reconcile asks the database nothing.
A ``door_left_open`` records since when its door is open (``open_since`` in
its details), so a door still open after a restart keeps its alarm and its
opening time. This module owns their wording, severities and details.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from controller.alarms import Alarm, AlarmBook, AlarmState
from controller.cabinet_compartments import Cabinet, Cabinets, flags, holding_of, local_iso
from controller.cabinet_store import Deposit, DepositState
from controller.durations import format_duration
from controller.event_log import Severity
from rules.cabinet import CompartmentFacts, VisitKind, wanted_alarms

DOOR_LEFT_OPEN = "door_left_open"
CABINET_TAMPER = "cabinet_tamper"
UNCOLLECTED = "uncollected"
ALARM_KINDS = (DOOR_LEFT_OPEN, CABINET_TAMPER, UNCOLLECTED)


class CompartmentAlarms:
    """Every cabinet compartment's three alarms, and which of them are active."""

    def __init__(
        self,
        cabinets: Cabinets,
        alarms: AlarmBook,
        *,
        open_after: timedelta,
        zone: ZoneInfo,
    ) -> None:
        """``open_after``: how long a door may stand open before ``door_left_open``."""
        self._cabinets = cabinets
        self._alarms = alarms
        self._open_after = open_after
        self._zone = zone
        self._raised: set[tuple[str, str]] = set()  # (kind, source) of our active alarms
        # Since when each door with a door_left_open from before a restart is open.
        self._open_before_start: dict[str, datetime] = {}

    def load(self) -> None:
        """Learn which of the cabinets' alarms are still active from before a restart."""
        prefixes = tuple(f"{cabinet_id}/" for cabinet_id in self._cabinets.ids)
        if not prefixes:
            return
        for alarm in self._alarms.query(
            state=AlarmState.ACTIVE, kind=",".join(ALARM_KINDS), limit=100_000
        ):
            if alarm.source.startswith(prefixes):
                self._raised.add((alarm.kind, alarm.source))
                if alarm.kind == DOOR_LEFT_OPEN:
                    self._open_before_start[alarm.source] = self._opened(alarm)

    def left_open_since(self, cabinet_id: str, index: int) -> datetime | None:
        """Since when a door is open, if it still has a ``door_left_open`` from before
        a restart; None when it has none."""
        source = alarm_source(cabinet_id, index)
        if (DOOR_LEFT_OPEN, source) not in self._raised:
            return None
        return self._open_before_start.get(source)

    def tampered(self, cabinet_id: str, index: int) -> bool:
        """Whether the compartment's ``cabinet_tamper`` is active."""
        return (CABINET_TAMPER, alarm_source(cabinet_id, index)) in self._raised

    def door_deadlines(self, cabinet: Cabinet) -> list[datetime]:
        """When each open door of ``cabinet`` not yet alarmed is due ``door_left_open``."""
        return [
            since + self._open_after
            for index, since in cabinet.open_since.items()
            if (DOOR_LEFT_OPEN, alarm_source(cabinet.id, index)) not in self._raised
        ]

    def reconcile(self, cabinet: Cabinet, now: datetime) -> None:
        """Raise and clear each compartment's alarms to match what it should have.

        Each compartment's state is noted on the way (:meth:`Cabinet.note_state`):
        the staff view's ``since`` is the first reconcile that saw the state.
        """
        reading = self._cabinets.known(cabinet)
        deposits = self._cabinets.by_compartment(cabinet)
        for index in range(cabinet.count):
            deposit = deposits.get(index)
            door, item = flags(reading, index)
            visit = cabinet.visits.get(index)
            facts = CompartmentFacts(
                holding=holding_of(deposit),
                visit=visit.kind if visit else None,
                door_open=door,
                item_present=item,
                open_since=cabinet.open_since.get(index),
                unexplained_open=index in cabinet.unexplained,
            )
            wanted = wanted_alarms(facts, now, self._open_after)
            label = str(index + 1)
            where = f"{cabinet.id} compartment {label}"
            self._set(
                cabinet,
                index,
                DOOR_LEFT_OPEN,
                wanted.door_left_open,
                f"{where}: door open for over {format_duration(self._open_after)}",
                Severity.WARNING,
                f"{where}: door closed",
                details={"open_since": local_iso(facts.open_since, self._zone)},
            )
            tamper, tamper_over = _tamper_texts(where, cabinet, index, deposit, door)
            self._set(
                cabinet,
                index,
                CABINET_TAMPER,
                wanted.cabinet_tamper,
                tamper,
                Severity.ALARM,
                tamper_over,
            )
            uncollected, uncollected_over = self._uncollected_texts(
                where, cabinet, index, deposit, item
            )
            expired = None
            if deposit is not None and deposit.state is DepositState.EXPIRED:
                expired = {"deposit_id": deposit.id, "reference": deposit.reference}
            self._set(
                cabinet,
                index,
                UNCOLLECTED,
                wanted.uncollected,
                uncollected,
                Severity.WARNING,
                uncollected_over,
                details=expired,
            )
            state = self._cabinets.state_of(cabinet, index, deposit, reading)
            cabinet.note_state(index, state, now)

    def _set(
        self,
        cabinet: Cabinet,
        index: int,
        kind: str,
        wanted: bool | None,
        message: str,
        severity: Severity,
        cleared: str,
        *,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Raise or clear one alarm if it is not as ``wanted``; ``details`` go with
        ``{compartment, label}`` into a raised alarm."""
        source = alarm_source(cabinet.id, index)
        active = (kind, source) in self._raised
        if wanted is None or wanted == active:
            return
        if wanted:
            self._alarms.raise_alarm(
                kind,
                source,
                message,
                severity=severity,
                room=cabinet.device.room,
                device=cabinet.id,
                details={"compartment": index, "label": str(index + 1), **(details or {})},
            )
            self._raised.add((kind, source))
        else:
            self._alarms.clear(kind, source, cleared)
            self._raised.discard((kind, source))

    def _uncollected_texts(
        self, where: str, cabinet: Cabinet, index: int, deposit: Deposit | None, item: bool | None
    ) -> tuple[str, str]:
        """``uncollected``'s message, and what its clearing event says ended it."""
        if deposit is not None and deposit.state is DepositState.EXPIRED:
            raised = (
                f"{where}: deposit {deposit.id} ({deposit.reference}) was not collected"
                f" by {local_iso(deposit.expires, self._zone)}; staff must clear it"
            )
        else:
            raised = f"{where} holds an item no deposit accounts for; staff must clear it"
        visit = cabinet.visits.get(index)
        if visit is not None and visit.kind is VisitKind.CLEAR:
            over = f"{where}: cleared by {visit.by}"
        elif item is False:
            over = f"{where}: the item was taken out without a clear"
        else:
            over = f"{where}: back in order"
        return raised, over

    def _opened(self, alarm: Alarm) -> datetime:
        """Since when the door of an active ``door_left_open`` is open.

        Its ``open_since`` detail; an alarm without one (raised before it was
        recorded) was last raised or touched at ``updated``, at least
        ``open_after`` after its door opened, so counting from then still
        leaves it due.
        """
        recorded = alarm.details.get("open_since")
        if isinstance(recorded, str):
            try:
                since = datetime.fromisoformat(recorded)
            except ValueError:
                since = None  # not a time this module wrote: fall back as for none
            if since is not None and since.tzinfo is not None:
                return since
        return alarm.updated - self._open_after


def _tamper_texts(
    where: str, cabinet: Cabinet, index: int, deposit: Deposit | None, door: bool | None
) -> tuple[str, str]:
    """``cabinet_tamper``'s message, and what its clearing event says ended it."""
    if index in cabinet.unexplained:
        raised = f"{where} opened with no deposit, pickup or clear in progress"
    elif deposit is not None:
        raised = (
            f"{where}: the document of deposit {deposit.id} ({deposit.reference})"
            " is gone without a pickup"
        )
    else:
        raised = f"{where}: tampering"
    visit = cabinet.visits.get(index)
    if visit is not None and visit.kind is VisitKind.CLEAR:
        over = f"{where}: cleared by {visit.by}"
    elif visit is not None:
        over = f"{where}: a {visit.kind.value} is under way"
    elif door is False and deposit is None:
        over = f"{where}: door closed"
    else:
        over = f"{where}: back in order"
    return raised, over


def alarm_source(cabinet_id: str, index: int) -> str:
    """``cabinet-1/6``: the compartment index, not the label, as the contract names it."""
    return f"{cabinet_id}/{index}"
