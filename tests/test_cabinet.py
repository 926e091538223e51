"""The document cabinet on a virtual clock: a night of pickups, its alarms, restarts.

Each test runs the real service (SQLite, event log, alarms, bus, live state,
the deadline loop) against :class:`tests.cabinet_rig.ModelCabinet`, whose
doors close when the test says and with what the test says is inside.
Times are Shanghai times on the night of 23 to 24 November 2026.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from controller.cabinet import CabinetRefused, DepositReceipt, DepositRequest
from controller.cabinet_store import DepositState
from controller.clock import VirtualClock
from controller.site import CabinetRules, Site, load_site
from rules.cabinet import (
    CompartmentFacts,
    CompartmentState,
    Holding,
    KioskThrottle,
    NoCompartment,
    Outcome,
    VisitKind,
    WantedAlarms,
    choose_compartment,
    compartment_state,
    record_wrong_code,
    visit_deadline,
    visit_outcome,
    wanted_alarms,
)
from tests.cabinet_rig import CABINET, CabinetRig
from tests.conftest import CHANGBAI, wait_until

SH = ZoneInfo("Asia/Shanghai")
KIOSK = "token:kiosk0a1"
OTHER_KIOSK = "token:kiosk0b2"
RULES = CabinetRules()  # 5 wrong codes in 15 min -> 15 min lockout; 2 min timeouts
STAFF_FINGERPRINT = "token:staff001"


def at(hour: int, minute: int = 0, second: int = 0, *, day: int = 0) -> datetime:
    return datetime(2026, 11, 23, hour, minute, second, tzinfo=SH) + timedelta(days=day)


def night(hour: int, minute: int = 0, second: int = 0) -> datetime:
    """A time after midnight, on the 24th."""
    return at(hour, minute, second, day=1)


MakeRig = Callable[..., Awaitable[CabinetRig]]


@pytest.fixture
async def make_rig() -> AsyncIterator[MakeRig]:
    made: list[CabinetRig] = []

    async def make(
        *,
        start: datetime | None = None,
        data_dir: Path | None = None,
        site: Site | None = None,
        open_doors: tuple[int, ...] = (),
    ) -> CabinetRig:
        """A started rig whose first poll shows the doors ``open_doors`` open."""
        clock = VirtualClock(start or at(18))
        rig = CabinetRig(site or load_site(CHANGBAI), clock, data_dir)
        for index in open_doors:
            rig.cabinet.doors[index] = True
        rig.start()
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.stop()


@pytest.fixture
async def rig(make_rig: MakeRig) -> CabinetRig:
    return await make_rig()


async def refused(call: Awaitable[object]) -> CabinetRefused:
    with pytest.raises(CabinetRefused) as caught:
        await call
    return caught.value


# -- a night of pickups ---------------------------------------------------------------


async def test_a_night_of_cabinet_pickups(
    rig: CabinetRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cabinet = rig.cabinet

    # Evening: staff deposit ten documents, one a minute from 19:00.
    await rig.walk(at(19))
    receipts = []
    for number in range(10):
        hold = 10 if number == 9 else 24  # the last is collectable only until 05:09:20
        receipts.append(await rig.deposit(f"REF-{number:03d}", f"Resident {number}", hold))
        await rig.walk(at(19, number + 1))
    assert [receipt.compartment for receipt in receipts] == list(range(10))
    assert [receipt.label for receipt in receipts] == [str(n) for n in range(1, 11)]
    codes = [receipt.code for receipt in receipts]
    assert all(len(code) == 6 and code.isdigit() for code in codes)
    assert len(set(codes)) == 10
    assert receipts[0].expires == at(19, 0, 20, day=1)
    expiring = receipts[9]
    assert expiring.expires == night(5, 9, 20)
    assert cabinet.items[:10] == [True] * 10
    assert cabinet.pulses == list(range(10))

    async def collect(number: int, kiosk: str = KIOSK, *, seconds: float = 20.0) -> None:
        """Resident ``number`` types the code, the door opens, they take the document."""
        receipt = receipts[number]
        opened = await rig.pickup(receipt.code, kiosk)
        assert opened == {"compartment": receipt.compartment, "label": receipt.label}
        assert cabinet.doors[receipt.compartment] is True
        await rig.clock.advance(seconds)
        cabinet.close(receipt.compartment, item=False)

    # 01:00: the first resident.
    await rig.walk(night(1))
    await collect(0)

    # 01:30: a resident leaves the door open; the alarm is due 60 s after it opened.
    await rig.walk(night(1, 30))
    await rig.pickup(receipts[1].code, KIOSK)
    await rig.clock.advance(59)
    assert not rig.alarms.is_active("door_left_open", "cabinet-1/1")
    await rig.clock.advance(1)
    assert rig.alarms.is_active("door_left_open", "cabinet-1/1")
    await rig.walk(night(1, 35))
    cabinet.close(1, item=False)
    assert not rig.alarms.is_active("door_left_open", "cabinet-1/1")

    # 02:00: somebody at the second kiosk tries codes: five wrong ones lock it out.
    await rig.walk(night(2))
    wrong = next(f"{n:06d}" for n in range(1_000_000) if f"{n:06d}" not in codes)
    for attempt in range(5):
        refusal = await refused(rig.pickup(wrong, OTHER_KIOSK))
        assert (refusal.status, refusal.code) == (403, "wrong_code")
        if attempt < 4:
            await rig.clock.advance(10)
    # Locked out from 02:00:40 until 02:15:40, even with a right code ...
    await rig.walk(night(2, 5))
    refusal = await refused(rig.pickup(receipts[2].code, OTHER_KIOSK))
    assert (refusal.status, refusal.retry_after) == (429, 640)
    assert cabinet.doors[2] is False
    # ... while the first kiosk is not.
    await collect(3)
    await rig.walk(night(2, 15, 30))
    assert (await refused(rig.pickup(receipts[2].code, OTHER_KIOSK))).retry_after == 10
    await rig.walk(night(2, 16))
    await collect(2, OTHER_KIOSK)

    # 03:00: a resident closes the door without taking the document, then comes back.
    await rig.walk(night(3))
    await rig.pickup(receipts[4].code, KIOSK)
    await rig.clock.advance(15)
    cabinet.close(4, item=True)
    assert rig.service.view(CABINET)["compartments"][4]["state"] == "holding"
    await rig.walk(night(3, 10))
    await collect(4)

    # 03:30: a door that does not open: given up after pickup_timeout, still collectable.
    await rig.walk(night(3, 30))
    cabinet.jam(5)
    await rig.pickup(receipts[5].code, KIOSK)
    assert cabinet.doors[5] is False
    await rig.walk(night(3, 32))
    assert rig.service.view(CABINET)["compartments"][5]["state"] == "holding"
    await rig.walk(night(3, 40))
    await collect(5)

    # 04:00: a free compartment is forced open and shut again.
    await rig.walk(night(4))
    cabinet.force_open(20)
    assert rig.alarms.is_active("cabinet_tamper", "cabinet-1/20")
    await rig.clock.advance(30)
    cabinet.close(20, item=False)
    assert not rig.alarms.is_active("cabinet_tamper", "cabinet-1/20")

    # 05:09:20: the short deposit expires uncollected; its code is dead from then on.
    await rig.walk(night(5, 9, 19))
    assert not rig.alarms.is_active("uncollected", "cabinet-1/9")
    await rig.walk(night(5, 9, 20))
    assert rig.alarms.is_active("uncollected", "cabinet-1/9")
    await rig.walk(night(6))
    assert (await refused(rig.pickup(expiring.code, KIOSK))).status == 403
    assert cabinet.doors[9] is False

    # Early risers collect the rest.
    for number, moment in zip((6, 7, 8), (night(6, 30), night(7), night(7, 30)), strict=True):
        await rig.walk(moment)
        await collect(number)

    # 08:30: staff clear the expired deposit and take the document out.
    await rig.walk(night(8, 30))
    cleared = await rig.service.clear(CABINET, 9, STAFF_FINGERPRINT, "not collected")
    assert cleared["deposit_id"] == expiring.deposit_id
    assert not rig.alarms.is_active("uncollected", "cabinet-1/9")
    await rig.clock.advance(40)
    cabinet.close(9, item=False)
    await rig.walk(night(9))

    # Every document reached its resident, and the expired one is back with staff.
    states = [rig.service.find_deposit(r.deposit_id) for r in receipts]
    assert [deposit.state if deposit else None for deposit in states] == [
        *([DepositState.COLLECTED] * 9),
        DepositState.CLEARED,
    ]
    # A used code opens nothing again.
    assert (await refused(rig.pickup(receipts[0].code, KIOSK))).status == 403
    view = rig.service.view(CABINET)
    assert {compartment["state"] for compartment in view["compartments"]} == {"free"}
    assert rig.service.status()["cabinets"][CABINET]["pickups_today"] == 9

    # Every alarm was raised when due and only then, and cleared when its cause ended.
    assert rig.alarm_story() == [
        ("door_left_open", "cabinet-1/1", "active", night(1, 31)),
        ("door_left_open", "cabinet-1/1", "cleared", night(1, 35)),
        ("cabinet_tamper", "cabinet-1/20", "active", night(4)),
        ("cabinet_tamper", "cabinet-1/20", "cleared", night(4, 0, 30)),
        ("uncollected", "cabinet-1/9", "active", night(5, 9, 20)),
        ("uncollected", "cabinet-1/9", "cleared", night(8, 30)),
    ]
    tamper = rig.alarms.query(kind="cabinet_tamper")[0]
    assert not tamper.acked  # stays on the staff's list until somebody looks

    # The log tells the night's story ...
    kinds = rig.event_kinds()
    assert kinds.count("cabinet_deposit") == 10
    assert kinds.count("cabinet_pickup") == 9
    assert kinds.count("cabinet_pickup_incomplete") == 2
    assert kinds.count("cabinet_code_refused") == 7  # the burst, the expired and the used code
    assert kinds.count("cabinet_kiosk_locked") == 1
    assert kinds.count("cabinet_cleared") == 1
    story = rig.log_text()
    for receipt in receipts:
        assert receipt.reference in story
    # ... and no code is anywhere in it, in the logs, or in the database.
    dump = "\n".join(str(tuple(row)) for row in rig.db.execute("SELECT * FROM cabinet_deposits"))
    for code in codes:
        assert code not in story
        assert code not in caplog.text
        assert code not in dump
    assert "REF-004" in caplog.text  # the log does speak of the deposits


# -- deposits -------------------------------------------------------------------------


async def start_deposit(
    rig: CabinetRig, compartment: int | None = None, reference: str = "REF-1"
) -> asyncio.Task[DepositReceipt]:
    """Begin a deposit and wait until its pulse went out."""
    pulses = len(rig.cabinet.pulses)
    task = asyncio.create_task(
        rig.service.deposit(
            CABINET, DepositRequest("Mr. Zhang", reference, 24, compartment), STAFF_FINGERPRINT
        )
    )
    await wait_until(lambda: len(rig.cabinet.pulses) > pulses or task.done(), message="pulse")
    return task


async def test_a_deposit_takes_the_compartment_asked_for(rig: CabinetRig) -> None:
    receipt = await rig.deposit("REF-7", compartment=6)

    assert (receipt.compartment, receipt.label) == (6, "7")
    assert rig.cabinet.pulses == [6]
    compartment = rig.service.view(CABINET)["compartments"][6]
    assert compartment["state"] == "holding"
    assert compartment["since"] == at(18, 0, 20).isoformat()
    assert compartment["expires"] == at(18, 0, 20, day=1).isoformat()
    assert (compartment["reference"], compartment["recipient"]) == ("REF-7", "Ms. Li")
    assert "code" not in str(compartment)


async def test_a_busy_compartment_or_a_full_cabinet_is_refused(rig: CabinetRig) -> None:
    await rig.deposit("REF-1", compartment=3)
    rig.cabinet.force_open(4)  # open doors are not free either
    rig.cabinet.close(4, item=False)
    rig.cabinet.items[5] = True  # nor is a compartment with something inside
    rig.cabinet.report()

    busy = await refused(rig.deposit("REF-2", compartment=3))
    unclean = await refused(rig.deposit("REF-2", compartment=5))
    assert (busy.status, busy.code) == (409, "compartment_busy")
    assert unclean.code == "compartment_busy"
    assert rig.cabinet.pulses == [3]
    for _ in range(22):
        await rig.deposit("REF-x")
    full = await refused(rig.deposit("REF-y"))
    assert (full.status, full.code) == (409, "cabinet_full")
    assert 5 not in rig.cabinet.pulses


async def test_a_deposit_closed_empty_fails_and_frees_the_compartment(rig: CabinetRig) -> None:
    failure = await refused(rig.deposit("REF-1", item=False))

    assert (failure.status, failure.code) == (409, "deposit_failed")
    assert failure.details["reason"] == "closed_empty"
    assert rig.service.view(CABINET)["compartments"][0]["state"] == "free"
    assert (await rig.deposit("REF-2")).compartment == 0
    assert rig.event_kinds().count("cabinet_deposit_failed") == 1


async def test_a_deposit_whose_door_never_opens_fails_at_the_deposit_timeout(
    rig: CabinetRig,
) -> None:
    rig.cabinet.jam(0)
    task = await start_deposit(rig)
    await rig.clock.advance(119)
    assert not task.done()
    assert rig.service.view(CABINET)["compartments"][0]["state"] == "pending"
    await rig.clock.advance(1)

    failure = await refused(task)
    assert failure.details["reason"] == "timed_out"
    failed = [e for e in rig.events.query(kind="cabinet_deposit_failed")]
    assert [event.time for event in failed] == [at(18, 2)]
    assert rig.service.view(CABINET)["compartments"][0]["state"] == "free"


async def test_a_deposit_whose_unlock_is_not_confirmed_fails(rig: CabinetRig) -> None:
    rig.cabinet.fail_writes = True

    failure = await refused(rig.service.deposit(CABINET, DepositRequest("a", "b", 1), "s"))

    assert failure.details["reason"] == "unlock_failed"
    assert rig.service.view(CABINET)["compartments"][0]["state"] == "free"


async def test_a_deposit_left_open_past_its_timeout_fails_and_a_late_item_is_flagged(
    rig: CabinetRig,
) -> None:
    task = await start_deposit(rig)
    await rig.walk(at(18, 2))
    assert (await refused(task)).details["reason"] == "timed_out"
    assert rig.alarms.is_active("door_left_open", "cabinet-1/0")  # open since 18:00
    assert not rig.alarms.is_active("cabinet_tamper", "cabinet-1/0")  # it was our pulse

    rig.cabinet.close(0, item=True)  # staff finished after all: nobody has a code for it

    assert rig.alarms.is_active("uncollected", "cabinet-1/0")
    assert rig.service.view(CABINET)["compartments"][0]["state"] == "fault"
    await rig.service.clear(CABINET, 0, STAFF_FINGERPRINT)
    rig.cabinet.close(0, item=False)
    assert not rig.alarms.is_active("uncollected", "cabinet-1/0")
    assert rig.service.view(CABINET)["compartments"][0]["state"] == "free"


async def test_a_deposit_runs_to_its_end_when_the_caller_goes_away(rig: CabinetRig) -> None:
    task = await start_deposit(rig)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await rig.clock.advance(20)
    rig.cabinet.close(0, item=True)

    assert task.cancelled()
    assert rig.service.view(CABINET)["compartments"][0]["state"] == "holding"
    assert rig.event_kinds() == ["cabinet_deposit"]


async def test_an_offline_or_unread_cabinet_takes_no_deposit_and_no_pickup(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig()
    receipt = await rig.deposit("REF-1")
    rig.cabinet.offline()

    offline = await refused(rig.deposit("REF-2"))
    pickup = await refused(rig.pickup(receipt.code, KIOSK))
    assert (offline.status, offline.code) == (503, "cabinet_unavailable")
    assert pickup.status == 503
    assert rig.service.view(CABINET)["online"] is False
    assert rig.service.view(CABINET)["compartments"][0]["door_open"] is None
    assert "cabinet_code_refused" not in rig.event_kinds()  # a 503 counts no wrong code

    unread = CabinetRig(load_site(CHANGBAI), VirtualClock(at(18)))
    unread.start(report=False)
    try:
        assert (await refused(unread.deposit("REF-3"))).status == 503
    finally:
        await unread.stop()


# -- pickups and clearing -------------------------------------------------------------------


async def test_a_document_taken_without_a_pickup_is_tamper_until_staff_clear(
    rig: CabinetRig,
) -> None:
    receipt = await rig.deposit("REF-1")
    await rig.walk(at(23))
    rig.cabinet.force_open(0)
    await rig.clock.advance(10)
    rig.cabinet.close(0, item=False)

    assert rig.alarms.is_active("cabinet_tamper", "cabinet-1/0")  # closed, but the item is gone
    assert rig.service.view(CABINET)["compartments"][0]["state"] == "fault"
    busy = await rig.service.clear(CABINET, 0, STAFF_FINGERPRINT, "investigated")
    assert busy["deposit_id"] == receipt.deposit_id
    assert not rig.alarms.is_active("cabinet_tamper", "cabinet-1/0")
    assert (await refused(rig.pickup(receipt.code, KIOSK))).status == 403


async def test_clearing_is_refused_while_busy_or_with_nothing_inside(rig: CabinetRig) -> None:
    receipt = await rig.deposit("REF-1")
    nothing = await refused(rig.service.clear(CABINET, 1, STAFF_FINGERPRINT))
    assert (nothing.status, nothing.code) == (409, "nothing_to_clear")

    await rig.pickup(receipt.code, KIOSK)
    busy = await refused(rig.service.clear(CABINET, 0, STAFF_FINGERPRINT))
    assert (busy.status, busy.code) == (409, "compartment_busy")
    assert rig.service.view(CABINET)["compartments"][0]["state"] == "collecting"
    missing = await refused(rig.service.clear(CABINET, 24, STAFF_FINGERPRINT))
    assert missing.status == 404


async def test_a_clear_whose_unlock_fails_leaves_the_deposit_cleared_and_flagged(
    rig: CabinetRig,
) -> None:
    receipt = await rig.deposit("REF-1")
    rig.cabinet.fail_writes = True

    failure = await refused(rig.service.clear(CABINET, 0, STAFF_FINGERPRINT))

    assert failure.status == 503
    assert (await refused(rig.pickup(receipt.code, KIOSK))).status == 403
    assert rig.alarms.is_active("uncollected", "cabinet-1/0")  # an item nobody can collect
    rig.cabinet.fail_writes = False
    await rig.service.clear(CABINET, 0, STAFF_FINGERPRINT)
    rig.cabinet.close(0, item=False)
    assert not rig.alarms.is_active("uncollected", "cabinet-1/0")


async def test_clearing_a_compartment_whose_document_is_gone_raises_no_tamper(
    rig: CabinetRig,
) -> None:
    await rig.deposit("REF-1")
    rig.cabinet.force_open(0)  # the document is taken without a pickup
    rig.cabinet.close(0, item=False)
    assert rig.alarms.is_active("cabinet_tamper", "cabinet-1/0")

    # Staff clear it. The pulse is confirmed, but the door only swings open when
    # they pull it, after the poll that follows the pulse (which shows it closed).
    rig.cabinet.jam(0)
    await rig.service.clear(CABINET, 0, STAFF_FINGERPRINT, "investigating")
    assert not rig.alarms.is_active("cabinet_tamper", "cabinet-1/0")
    assert rig.service.view(CABINET)["compartments"][0]["state"] == "clearing"
    await rig.clock.advance(2)
    rig.cabinet.force_open(0)
    assert not rig.alarms.is_active("cabinet_tamper", "cabinet-1/0")
    await rig.clock.advance(10)
    rig.cabinet.close(0, item=False)

    assert rig.service.view(CABINET)["compartments"][0]["state"] == "free"
    assert "cabinet_clear_incomplete" not in rig.event_kinds()
    tamper = [e for e in rig.events.query(kind="cabinet_tamper") if e.device == CABINET]
    assert [event.state for event in tamper] == ["active", "cleared"]
    assert tamper[-1].message == "cabinet-1 compartment 1: cleared by token:staff001"


async def test_a_pickup_does_not_end_before_its_door_opens(rig: CabinetRig) -> None:
    receipt = await rig.deposit("REF-1")
    rig.cabinet.items[0] = False  # the document is gone (the sensor's fault, or a thief)
    rig.cabinet.report()
    assert rig.service.view(CABINET)["compartments"][0]["state"] == "fault"
    rig.cabinet.jam(0)  # the resident's door opens a moment after the pulse
    await rig.pickup(receipt.code, KIOSK)
    assert rig.service.view(CABINET)["compartments"][0]["state"] == "collecting"

    await rig.clock.advance(3)
    rig.cabinet.force_open(0)  # the resident pulls it open
    assert rig.service.view(CABINET)["compartments"][0]["state"] == "collecting"
    assert not rig.alarms.is_active("cabinet_tamper", "cabinet-1/0")
    await rig.clock.advance(10)
    rig.cabinet.close(0, item=False)

    assert rig.service.view(CABINET)["compartments"][0]["state"] != "collecting"
    assert not [e for e in rig.events.query(kind="cabinet_tamper") if "opened with no" in e.message]


async def test_a_failed_second_pulse_does_not_end_a_pickup_whose_door_is_open(
    rig: CabinetRig,
) -> None:
    receipt = await rig.deposit("REF-1")
    await rig.pickup(receipt.code, KIOSK)
    assert rig.cabinet.doors[0] is True
    rig.cabinet.fail_writes = True
    again = await refused(rig.pickup(receipt.code, KIOSK))  # typed again; not confirmed
    assert (again.status, again.code) == (503, "cabinet_unavailable")
    assert "door 1 is open" in again.message
    assert rig.service.view(CABINET)["compartments"][0]["state"] == "collecting"

    await rig.clock.advance(20)
    rig.cabinet.close(0, item=False)  # the resident took the document

    deposit = rig.service.find_deposit(receipt.deposit_id)
    assert deposit is not None
    assert deposit.state is DepositState.COLLECTED
    assert not rig.alarms.is_active("cabinet_tamper", "cabinet-1/0")
    assert "cabinet_pickup_incomplete" not in rig.event_kinds()


async def test_an_item_nobody_accounts_for_taken_without_a_clear(rig: CabinetRig) -> None:
    rig.cabinet.items[5] = True
    rig.cabinet.report()
    assert rig.alarms.is_active("uncollected", "cabinet-1/5")

    rig.cabinet.force_open(5)
    assert rig.alarms.is_active("cabinet_tamper", "cabinet-1/5")
    assert rig.alarms.is_active("uncollected", "cabinet-1/5")  # open: not taken yet
    await rig.clock.advance(10)
    rig.cabinet.close(5, item=False)

    assert not rig.alarms.is_active("uncollected", "cabinet-1/5")
    assert not rig.alarms.is_active("cabinet_tamper", "cabinet-1/5")
    ended = rig.events.query(kind="uncollected")[-1]
    assert ended.state == "cleared"
    assert ended.message == "cabinet-1 compartment 6: the item was taken out without a clear"
    assert len(rig.events.query(kind="uncollected")) == 2  # raised once, cleared once
    assert rig.events.query(kind="cabinet_tamper")[-1].message == (
        "cabinet-1 compartment 6: door closed"
    )


async def test_an_expiry_is_on_time_across_one_long_clock_jump(rig: CabinetRig) -> None:
    receipt = await rig.deposit("REF-1", hold_hours=3)

    await rig.clock.advance(timedelta(hours=30))  # one jump, well past the expiry

    raised = rig.alarms.query(kind="uncollected")
    assert [alarm.raised for alarm in raised] == [receipt.expires]
    assert receipt.expires == at(21, 0, 20)


async def test_a_pickup_under_way_at_the_expiry_finishes_first(rig: CabinetRig) -> None:
    receipt = await rig.deposit("REF-1", hold_hours=1)
    await rig.walk(at(19, 0, 10))
    await rig.pickup(receipt.code, KIOSK)
    await rig.walk(at(19, 0, 40))  # past the expiry at 19:00:20, the door is still open
    rig.cabinet.close(0, item=False)
    await rig.settle()

    assert "uncollected" not in rig.event_kinds()
    assert "cabinet_pickup" in rig.event_kinds()


async def test_a_pickup_left_incomplete_past_the_expiry_promises_no_code(
    rig: CabinetRig,
) -> None:
    receipt = await rig.deposit("REF-1", hold_hours=1)
    await rig.walk(at(19, 0, 10))
    await rig.pickup(receipt.code, KIOSK)
    await rig.walk(at(19, 0, 40))  # past the expiry at 19:00:20, the door is still open
    rig.cabinet.close(0, item=True)  # the resident left it inside
    await rig.settle()

    incomplete = rig.events.query(kind="cabinet_pickup_incomplete")[0]
    assert "still collects" not in incomplete.message
    assert "expired at 2026-11-23T19:00:20+08:00" in incomplete.message
    deposit = rig.service.find_deposit(receipt.deposit_id)
    assert deposit is not None
    assert deposit.state is DepositState.EXPIRED
    assert rig.alarms.is_active("uncollected", "cabinet-1/0")
    assert (await refused(rig.pickup(receipt.code, KIOSK))).status == 403


async def test_a_wrong_code_never_reaches_the_log(
    rig: CabinetRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await rig.deposit("REF-1")
    attempt = "987654"

    refusal = await refused(rig.pickup(attempt, KIOSK))

    assert refusal.status == 403
    assert attempt not in rig.log_text()
    assert attempt not in caplog.text


# -- restarts -----------------------------------------------------------------------------


async def test_deposits_and_codes_survive_a_restart(make_rig: MakeRig, tmp_path: Path) -> None:
    first = await make_rig(data_dir=tmp_path)
    receipt = await first.deposit("REF-1")
    await first.stop()

    second = await make_rig(start=at(22), data_dir=tmp_path)
    opened = await second.pickup(receipt.code, KIOSK)
    second.cabinet.close(0, item=False)

    assert opened["label"] == "1"
    assert second.event_kinds()[-1] == "cabinet_pickup"


async def test_a_deposit_interrupted_by_a_restart_fails_and_its_item_is_flagged(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    first = await make_rig(data_dir=tmp_path)
    task = await start_deposit(first)
    await first.stop()  # the controller stops before the door closes
    await asyncio.gather(task, return_exceptions=True)

    second = await make_rig(start=at(18, 5), data_dir=tmp_path)
    second.cabinet.items[0] = True  # the document did go in
    second.cabinet.report()

    failed = second.events.query(kind="cabinet_deposit_failed")
    assert [event.details["reason"] for event in failed] == ["restart"]
    assert second.alarms.is_active("uncollected", "cabinet-1/0")
    assert second.service.view(CABINET)["compartments"][0]["state"] == "fault"


async def test_an_expiry_while_the_controller_was_down_is_raised_at_start(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    first = await make_rig(data_dir=tmp_path)
    receipt = await first.deposit("REF-1", hold_hours=2)
    await first.stop()

    second = await make_rig(start=at(23), data_dir=tmp_path)
    await second.settle()

    assert second.alarms.is_active("uncollected", "cabinet-1/0")
    assert (await refused(second.pickup(receipt.code, KIOSK))).status == 403


async def test_a_lockout_survives_a_restart(make_rig: MakeRig, tmp_path: Path) -> None:
    first = await make_rig(data_dir=tmp_path)
    receipt = await first.deposit("REF-1")
    for _ in range(5):
        await refused(first.pickup("000000" if receipt.code != "000000" else "111111", KIOSK))
    await first.stop()

    second = await make_rig(start=at(18, 10), data_dir=tmp_path)
    locked = await refused(second.pickup(receipt.code, KIOSK))

    assert (locked.status, locked.retry_after) == (429, 5 * 60 + 20)
    assert second.service.status()["throttled_kiosks"] == 1


async def test_alarms_raised_before_a_restart_clear_after_it(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    first = await make_rig(data_dir=tmp_path)
    first.cabinet.force_open(7)
    await first.walk(at(18, 2))
    assert first.alarms.is_active("door_left_open", "cabinet-1/7")
    await first.stop()

    second = await make_rig(start=at(18, 3), data_dir=tmp_path)  # reports door 7 closed

    assert not second.alarms.is_active("door_left_open", "cabinet-1/7")
    assert not second.alarms.is_active("cabinet_tamper", "cabinet-1/7")


async def test_a_door_still_open_after_a_restart_keeps_its_door_left_open_alarm(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    first = await make_rig(data_dir=tmp_path)
    first.cabinet.force_open(7)
    await first.walk(at(18, 2))
    assert first.alarms.is_active("door_left_open", "cabinet-1/7")
    await first.stop()

    second = await make_rig(start=at(18, 3), data_dir=tmp_path, open_doors=(7,))  # never closed
    assert second.alarms.is_active("door_left_open", "cabinet-1/7")
    compartment = second.service.view(CABINET)["compartments"][7]
    assert (compartment["state"], compartment["since"]) == ("open", at(18).isoformat())
    await second.walk(at(18, 5))
    second.cabinet.close(7, item=False)

    assert [(kind, state, moment) for kind, _, state, moment in second.alarm_story()] == [
        ("cabinet_tamper", "active", at(18)),
        ("door_left_open", "active", at(18, 1)),
        ("door_left_open", "cleared", at(18, 5)),
        ("cabinet_tamper", "cleared", at(18, 5)),
    ]


async def test_a_forced_door_still_open_after_a_restart_keeps_its_tamper_alarm(
    make_rig: MakeRig, tmp_path: Path
) -> None:
    first = await make_rig(data_dir=tmp_path)
    first.cabinet.force_open(7)
    assert first.alarms.is_active("cabinet_tamper", "cabinet-1/7")
    await first.stop()

    second = await make_rig(start=at(18, 0, 30), data_dir=tmp_path, open_doors=(7,))
    assert second.alarms.is_active("cabinet_tamper", "cabinet-1/7")
    second.cabinet.close(7, item=False)

    assert not second.alarms.is_active("cabinet_tamper", "cabinet-1/7")
    assert len(second.events.query(kind="cabinet_tamper")) == 2  # raised once, cleared once


async def test_a_door_open_at_the_first_reading_without_alarms_is_not_tamper(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(open_doors=(3,))

    assert not rig.alarms.is_active("cabinet_tamper", "cabinet-1/3")
    await rig.clock.advance(59)
    assert not rig.alarms.is_active("door_left_open", "cabinet-1/3")
    await rig.clock.advance(1)
    assert rig.alarms.is_active("door_left_open", "cabinet-1/3")
    alarm = rig.alarms.query(kind="door_left_open")[0]
    assert alarm.details["open_since"] == at(18).isoformat()


async def test_status_counts_per_cabinet(rig: CabinetRig) -> None:
    await rig.deposit("REF-1")
    await rig.deposit("REF-2", hold_hours=1)
    await rig.deposit("REF-3")
    await rig.walk(at(19, 30))
    rig.cabinet.force_open(2)  # REF-3 is taken without a pickup: a fault, not held
    rig.cabinet.close(2, item=False)

    status = rig.service.status()

    assert status == {
        "cabinets": {
            CABINET: {
                "online": True,
                "free": 21,
                "holding": 1,
                "expired": 1,
                "open_doors": 0,
                "visits": 0,
                "pickups_today": 0,
            }
        },
        "throttled_kiosks": 0,
    }


# -- the pure rules ---------------------------------------------------------------------------

T0 = at(2)


@pytest.mark.parametrize(
    ("wrong_at", "expected_until"),
    [
        ([0, 10, 20, 30], None),  # four is not five
        ([0, 10, 20, 30, 40], T0 + timedelta(seconds=40) + RULES.lockout),
        ([0, 60, 120, 180, 899], T0 + timedelta(seconds=899) + RULES.lockout),
        ([0, 60, 120, 180, 900], None),  # the first fell out of the 15-minute window
        ([0, 1000, 1001, 1002, 1003], None),
    ],
)
def test_the_throttle_locks_after_five_wrong_codes_in_the_window(
    wrong_at: list[int], expected_until: datetime | None
) -> None:
    throttle = KioskThrottle()
    for seconds in wrong_at:
        throttle = record_wrong_code(throttle, T0 + timedelta(seconds=seconds), RULES)

    assert throttle.locked_until == expected_until


def test_a_lockout_ends_and_spends_the_wrong_codes_that_earned_it() -> None:
    throttle = KioskThrottle()
    for seconds in range(5):
        throttle = record_wrong_code(throttle, T0 + timedelta(seconds=seconds), RULES)
    end = T0 + timedelta(seconds=4) + RULES.lockout

    assert throttle.locked(end - timedelta(microseconds=1))
    assert throttle.retry_after(end - timedelta(seconds=0.5)) == 1
    assert not throttle.locked(end)
    after = record_wrong_code(throttle, end, RULES)
    assert after == KioskThrottle((end,), None)
    assert throttle.forgotten(end, RULES).empty


@pytest.mark.parametrize(
    ("free", "wanted", "expected"),
    [
        ([False, True, True], None, 1),
        ([False, True, True], 2, 2),
        ([False, True, True], 0, NoCompartment.BUSY),
        ([False, True, True], 3, NoCompartment.BUSY),
        ([False, False], None, NoCompartment.FULL),
    ],
)
def test_choosing_a_compartment(
    free: list[bool], wanted: int | None, expected: int | NoCompartment
) -> None:
    assert choose_compartment(free, wanted) == expected


D, P, C = VisitKind.DEPOSIT, VisitKind.PICKUP, VisitKind.CLEAR


@pytest.mark.parametrize(
    ("kind", "opened", "door_open", "item", "at_start", "expected"),
    [
        (D, False, False, False, False, None),  # not open yet
        (D, True, True, True, False, None),  # still open
        (D, True, False, True, False, Outcome.DEPOSITED),
        (D, False, False, True, False, Outcome.DEPOSITED),  # opened and closed between polls
        (D, True, False, False, False, Outcome.CLOSED_EMPTY),
        (D, False, False, True, None, None),  # contents at the start unknown: wait for the door
        (P, False, False, True, True, None),
        (P, True, False, False, True, Outcome.COLLECTED),
        (P, False, False, False, True, Outcome.COLLECTED),  # taken between two polls
        (P, False, False, False, False, None),  # already gone: the door has not opened yet
        (P, True, False, True, True, Outcome.LEFT_INSIDE),
        (C, False, False, True, True, None),
        (C, True, False, True, True, Outcome.CLOSED),
        (C, True, False, False, True, Outcome.CLOSED),
        (C, False, False, False, True, Outcome.CLOSED),  # taken between two polls
        (C, False, False, False, False, None),  # already gone: the door has not opened yet
    ],
)
def test_what_a_reading_means_for_a_visit(
    kind: VisitKind,
    opened: bool,
    door_open: bool,
    item: bool,
    at_start: bool | None,
    expected: Outcome | None,
) -> None:
    assert visit_outcome(kind, opened, door_open, item, at_start) == expected


def test_visit_deadlines() -> None:
    assert visit_deadline(D, T0, True, RULES) == T0 + RULES.deposit_timeout
    assert visit_deadline(P, T0, False, RULES) == T0 + RULES.pickup_timeout
    assert visit_deadline(P, T0, True, RULES) is None  # open: it lasts until it closes
    assert visit_deadline(C, T0, False, RULES) == T0 + RULES.deposit_timeout


OPEN_AFTER = timedelta(seconds=60)


def facts(**changes: object) -> CompartmentFacts:
    values: dict[str, object] = {
        "holding": Holding.NONE,
        "visit": None,
        "door_open": False,
        "item_present": False,
        "open_since": None,
        "unexplained_open": False,
    }
    values.update(changes)
    return CompartmentFacts(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (facts(), WantedAlarms(False, False, False)),
        (
            facts(door_open=True, open_since=T0 - timedelta(seconds=59), visit=P),
            WantedAlarms(False, False, False),
        ),
        (
            facts(door_open=True, open_since=T0 - OPEN_AFTER, visit=P),
            WantedAlarms(True, False, False),
        ),
        (
            facts(door_open=True, open_since=T0, unexplained_open=True),
            WantedAlarms(False, True, None),
        ),
        (  # nobody's item, door forced: whether it is taken shows when it closes
            facts(door_open=True, item_present=True, open_since=T0, unexplained_open=True),
            WantedAlarms(False, True, None),
        ),
        (facts(holding=Holding.HOLDING, item_present=False), WantedAlarms(False, True, False)),
        (facts(holding=Holding.HOLDING, item_present=True), WantedAlarms(False, False, False)),
        (facts(holding=Holding.EXPIRED, item_present=True), WantedAlarms(False, False, True)),
        (facts(item_present=True), WantedAlarms(False, False, True)),  # nobody's item
        (facts(item_present=True, visit=C), WantedAlarms(False, False, False)),
        (
            facts(holding=Holding.HOLDING, door_open=None, item_present=None),
            WantedAlarms(None, None, False),
        ),
        (facts(door_open=None, item_present=None), WantedAlarms(None, None, None)),
    ],
)
def test_which_alarms_a_compartment_should_have(
    given: CompartmentFacts, expected: WantedAlarms
) -> None:
    assert wanted_alarms(given, T0, OPEN_AFTER) == expected


H = Holding


@pytest.mark.parametrize(
    ("holding", "visit", "door", "item", "expected"),
    [
        (H.NONE, None, False, False, CompartmentState.FREE),
        (H.NONE, None, False, True, CompartmentState.FAULT),  # nobody's item
        (H.NONE, None, True, False, CompartmentState.OPEN),
        (H.NONE, None, None, None, CompartmentState.UNKNOWN),
        (H.NONE, D, True, False, CompartmentState.PENDING),
        (H.HOLDING, None, False, True, CompartmentState.HOLDING),
        (H.HOLDING, None, None, None, CompartmentState.HOLDING),  # offline: still its deposit
        (H.HOLDING, None, False, False, CompartmentState.FAULT),  # its item is gone
        (H.HOLDING, None, True, True, CompartmentState.OPEN),
        (H.HOLDING, P, True, True, CompartmentState.COLLECTING),
        (H.EXPIRED, None, False, True, CompartmentState.EXPIRED),
        (H.EXPIRED, C, False, True, CompartmentState.CLEARING),
    ],
)
def test_what_staff_see_at_a_compartment(
    holding: Holding,
    visit: VisitKind | None,
    door: bool | None,
    item: bool | None,
    expected: CompartmentState,
) -> None:
    assert compartment_state(holding, visit, door, item) is expected


async def test_a_new_code_never_repeats_one_that_still_opens_something(
    rig: CabinetRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    draws = iter(["111111", "111111", "111111", "222222", "111111"])
    monkeypatch.setattr("controller.cabinet.new_code", lambda: next(draws))

    first = await rig.deposit("REF-1")
    second = await rig.deposit("REF-2")
    await rig.pickup(first.code, KIOSK)
    rig.cabinet.close(first.compartment, item=False)
    third = await rig.deposit("REF-3")  # 111111 is free again once collected

    assert [first.code, second.code, third.code] == ["111111", "222222", "111111"]
