"""The climate rule's durable facts, in SQLite: what must survive a restart.

- When each air conditioner was last switched off, so that a restart never
  lets the compressor start again inside its minimum off time.
- Its last known power, so that a unit found off after a restart that was on
  before counts as switched off just now (when exactly is not known; now is
  the safe guess).
- The rule's hysteresis memory (off, cooling, heating), so that a restart in
  the middle of a cooling spell does not switch the unit off at 25.8 °C.
- Staff overrides, with their expiry.

Each is written before the command it justifies. Times are stored as RFC 3339
text with their offset, as the access store does.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, replace
from datetime import datetime

from controller.database import transaction
from controller.readings import AcMode
from rules.climate import AcSetting, Activity, ClimateOverride

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS climate_units (
        device TEXT PRIMARY KEY,
        switched_off_at TEXT,
        last_power INTEGER,
        activity TEXT NOT NULL DEFAULT 'off'
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS climate_overrides (
        device TEXT PRIMARY KEY,
        power INTEGER NOT NULL,
        mode TEXT,
        setpoint REAL,
        at TEXT NOT NULL,
        until TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        by TEXT NOT NULL DEFAULT ''
    )
    """,
)


@dataclass(frozen=True, slots=True)
class UnitMemory:
    """What the controller remembers about one air conditioner."""

    switched_off_at: datetime | None = None
    last_power: bool | None = None
    activity: Activity = Activity.OFF


class ClimateStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        with transaction(db):
            for statement in _SCHEMA:
                db.execute(statement)
        self._units = {
            row["device"]: UnitMemory(
                switched_off_at=_time(row["switched_off_at"]),
                last_power=None if row["last_power"] is None else bool(row["last_power"]),
                activity=Activity(row["activity"]),
            )
            for row in db.execute("SELECT * FROM climate_units")
        }
        self._overrides = {
            row["device"]: ClimateOverride(
                device=row["device"],
                setting=AcSetting(
                    power=bool(row["power"]),
                    mode=None if row["mode"] is None else AcMode(row["mode"]),
                    setpoint=row["setpoint"],
                ),
                at=datetime.fromisoformat(row["at"]),
                until=datetime.fromisoformat(row["until"]),
                reason=row["reason"],
                by=row["by"],
            )
            for row in db.execute("SELECT * FROM climate_overrides")
        }

    # -- units -------------------------------------------------------------

    def unit(self, device: str) -> UnitMemory:
        return self._units.get(device, UnitMemory())

    def update_unit(
        self,
        device: str,
        *,
        switched_off_at: datetime | None = None,
        last_power: bool | None = None,
        activity: Activity | None = None,
    ) -> UnitMemory:
        """Change the given facts of ``device`` (None keeps a fact as it is).

        A switch-off time only ever moves forward: the latest one is what the
        compressor's rest counts from.
        """
        current = self.unit(device)
        updated = replace(
            current,
            switched_off_at=_later(current.switched_off_at, switched_off_at),
            last_power=current.last_power if last_power is None else last_power,
            activity=activity or current.activity,
        )
        if updated == current and device in self._units:
            return current
        with transaction(self._db):
            self._db.execute(
                "INSERT OR REPLACE INTO climate_units VALUES (?, ?, ?, ?)",
                (
                    device,
                    _text(updated.switched_off_at),
                    None if updated.last_power is None else int(updated.last_power),
                    updated.activity.value,
                ),
            )
        self._units[device] = updated
        return updated

    # -- overrides ---------------------------------------------------------

    def override(self, device: str) -> ClimateOverride | None:
        return self._overrides.get(device)

    def set_override(self, override: ClimateOverride) -> None:
        setting = override.setting
        with transaction(self._db):
            self._db.execute(
                "INSERT OR REPLACE INTO climate_overrides VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    override.device,
                    int(setting.power),
                    None if setting.mode is None else setting.mode.value,
                    setting.setpoint,
                    override.at.isoformat(),
                    override.until.isoformat(),
                    override.reason,
                    override.by,
                ),
            )
        self._overrides[override.device] = override

    def clear_override(self, device: str) -> ClimateOverride | None:
        """Remove ``device``'s override; returns the one removed, if any."""
        with transaction(self._db):
            self._db.execute("DELETE FROM climate_overrides WHERE device = ?", (device,))
        return self._overrides.pop(device, None)


def _later(current: datetime | None, new: datetime | None) -> datetime | None:
    if current is None or new is None:
        return current or new
    return max(current, new)


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _text(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
