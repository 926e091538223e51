"""Known faults of the document cabinet, each shown by a test that fails today.

Each is marked ``xfail(strict=True)``: it documents what the contract
(docs/interfaces.md, "The document cabinet") promises and the service does
not do yet. When a fault is fixed its test passes, strict xfail turns that
into a failure, and the mark comes off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from controller.cabinet import CabinetRefused
from controller.cabinet_store import DepositState
from controller.clock import VirtualClock
from controller.site import load_site
from tests.cabinet_rig import CABINET, CabinetRig
from tests.conftest import CHANGBAI

SH = ZoneInfo("Asia/Shanghai")
KIOSK = "token:kiosk0a1"
STAFF = "token:staff001"


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 11, 23, hour, minute, second, tzinfo=SH)


class Rigs:
    """Rigs on one data directory, as one controller's runs before and after restarts."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.made: list[CabinetRig] = []

    def make(self, start: datetime, *, open_doors: tuple[int, ...] = ()) -> CabinetRig:
        """A started rig whose first poll shows ``open_doors`` open."""
        rig = CabinetRig(load_site(CHANGBAI), VirtualClock(start), self.data_dir)
        for index in open_doors:
            rig.cabinet.doors[index] = True
        rig.start()
        self.made.append(rig)
        return rig


@pytest.fixture
async def rigs(tmp_path: Path) -> AsyncIterator[Rigs]:
    made = Rigs(tmp_path)
    yield made
    for rig in made.made:
        if rig.task is not None:
            await rig.stop()


@pytest.mark.xfail(
    strict=True,
    reason="controller/cabinet_watch.py on_reading: after a restart the first reading sets"
    " open_since to its own time, so a door_left_open raised before the restart is cleared"
    " ('door closed') while the door is still open, and raised again 60 s later",
)
async def test_a_door_still_open_after_a_restart_keeps_its_door_left_open_alarm(
    rigs: Rigs,
) -> None:
    first = rigs.make(at(18))
    first.cabinet.force_open(7)
    await first.walk(at(18, 2))
    assert first.alarms.is_active("door_left_open", "cabinet-1/7")
    await first.stop()

    second = rigs.make(at(18, 3), open_doors=(7,))  # the door was never closed

    assert second.alarms.is_active("door_left_open", "cabinet-1/7")


@pytest.mark.xfail(
    strict=True,
    reason="controller/cabinet_watch.py on_reading: a door already open at the first reading"
    " after a start is never 'unexplained', so a cabinet_tamper raised before a restart for a"
    " door forced open is cleared ('door closed') while that door is still open",
)
async def test_a_forced_door_still_open_after_a_restart_keeps_its_tamper_alarm(
    rigs: Rigs,
) -> None:
    first = rigs.make(at(18))
    first.cabinet.force_open(7)
    assert first.alarms.is_active("cabinet_tamper", "cabinet-1/7")
    await first.stop()

    second = rigs.make(at(18, 1), open_doors=(7,))

    assert second.alarms.is_active("cabinet_tamper", "cabinet-1/7")


@pytest.mark.xfail(
    strict=True,
    reason="rules/cabinet.py visit_outcome: a clear ends (CLOSED) at the first reading that"
    " shows no item, even before its door was seen open; when staff then pull the door open,"
    " it is an opening with nothing under way and cabinet_tamper is raised against them",
)
async def test_clearing_a_compartment_whose_document_is_gone_raises_no_tamper(
    rigs: Rigs,
) -> None:
    rig = rigs.make(at(18))
    await rig.deposit("REF-1")
    rig.cabinet.force_open(0)  # the document is taken without a pickup
    rig.cabinet.close(0, item=False)
    assert rig.alarms.is_active("cabinet_tamper", "cabinet-1/0")

    # Staff clear it. The pulse is confirmed, but the door only swings open when
    # they pull it, after the poll that follows the pulse (which shows it closed).
    rig.cabinet.jam(0)
    await rig.service.clear(CABINET, 0, STAFF, "investigating")
    assert not rig.alarms.is_active("cabinet_tamper", "cabinet-1/0")
    await rig.clock.advance(2)
    rig.cabinet.force_open(0)

    assert not rig.alarms.is_active("cabinet_tamper", "cabinet-1/0")


@pytest.mark.xfail(
    strict=True,
    reason="controller/cabinet_visits.py pulse: a code typed again during its pickup whose"
    " pulse is not confirmed ends the pickup under way (unlock_failed) although its door is"
    " already open; the document taken then is 'gone without a pickup' (cabinet_tamper) and"
    " the deposit stays collectable",
)
async def test_a_failed_second_pulse_does_not_end_a_pickup_whose_door_is_open(
    rigs: Rigs,
) -> None:
    rig = rigs.make(at(18))
    receipt = await rig.deposit("REF-1")
    await rig.pickup(receipt.code, KIOSK)
    assert rig.cabinet.doors[0] is True
    rig.cabinet.fail_writes = True
    with pytest.raises(CabinetRefused):
        await rig.pickup(receipt.code, KIOSK)  # typed again; this pulse is not confirmed

    await rig.clock.advance(20)
    rig.cabinet.close(0, item=False)  # the resident took the document

    deposit = rig.service.find_deposit(receipt.deposit_id)
    assert deposit is not None
    assert deposit.state is DepositState.COLLECTED
    assert not rig.alarms.is_active("cabinet_tamper", "cabinet-1/0")
