"""The fire latch: the rule that beats every other rule.

When the panel reports an alarm the latch is set, and while it is set every
controlled lock is wanted open (:func:`rules.access.decide` asks nothing
else). The latch is released only by a staff reset, and only once the panel
itself reports that the alarm is over: a panel that is offline or has not been
heard from is not "no fire".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class FireLatch:
    latched_at: datetime | None = None
    reset_at: datetime | None = None
    reset_by: str | None = None

    @property
    def latched(self) -> bool:
        return self.latched_at is not None


def should_latch(latch: FireLatch, panel_alarm: bool | None) -> bool:
    """Set the latch on a reported alarm; losing the panel's signal sets nothing."""
    return panel_alarm is True and not latch.latched


def reset_refusal(latch: FireLatch, panel_alarm: bool | None) -> str | None:
    """Why a staff reset must be refused now, or None when it may proceed."""
    if not latch.latched:
        return None  # nothing to reset: accepted, changes nothing
    if panel_alarm is True:
        return "the fire panel still reports an alarm"
    if panel_alarm is None:
        return "the fire panel's state is unknown (offline or not heard from)"
    return None
