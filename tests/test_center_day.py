"""Whole simulated days through the whole system: the issue's "Done when".

Each test runs a real Mosquitto, every simulated device of the example site
(MQTT sensors, locks and panel; pymodbus air conditioners and cabinet) and
the real controller with its HTTP API, all on one clock at SPEED times real
time (tests/day_rig.py). Everything is judged against the simulation's
ground truth (the building's people, the devices' registers, an independent
MQTT subscriber), never against the controller's own state:

- a busy Saturday with dropped MQTT reports and the entrance counter
  rebooting at noon: exact visitor totals, hour by hour as the people came,
  every document deposited and collected through the cabinet API, the kiosk
  throttle;
- a heat-wave day: the love-room AC keeps cooling an empty room through the
  heat, and the compressor always rests its minimum off time;
- in both, the alarm list holds exactly the alarms the day should raise.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

from controller.readings import AirConditionerReading, ClimateReading
from simulators.faults import FaultPlan
from tests.conftest import Broker, wait_until
from tests.day_rig import (
    KIOSK_TOKEN,
    OTHER_KIOSK_TOKEN,
    SH,
    STAFF_TOKEN,
    Day,
    Silence,
    poll_until,
    whole_center,
)

# 300 simulated seconds per real second: the Saturday's three hours in about
# 40 s. Every millisecond the loop takes is then 0.3 simulated seconds, which
# the tightest deadlines (a lock's 5 s to confirm, a cabinet visit's 2 min,
# a device's 90 s of silence) must absorb; 600x also passed, with more
# silences ending right at the offline limit, and less margin for a busy
# machine.
SPEED = 300.0
SEED = 7
# How far apart the controller and the independent subscriber may hear the
# same message, in simulated seconds (a few ms of real time at SPEED).
HEARING = 5.0
# How long a passage through the entrance may take to reach the day's count:
# a dropped report waits for the next one (a passage, or the 30 s heartbeat).
REPORT_LAG = timedelta(seconds=150)
CABINET = "cabinet-1"
# What the health alarms are for; any other kind is a failure in these days.
SILENCE_ALARMS = {"device_offline", "fire_panel_offline"}

SATURDAY = date(2026, 6, 13)
HEAT_WAVE_DAY = date(2026, 7, 21)  # a Tuesday


# -- the busy Saturday -----------------------------------------------------------------


async def test_busy_saturday_counts_every_visitor_and_delivers_every_document(
    broker: Broker,
) -> None:
    """09:15-12:15 of a busy Saturday. 5 % of MQTT reports are dropped and the
    entrance counter reboots at 12:00 (its totals start again from 0).

    Staff deposit four documents; residents collect them through the day
    with their codes; a kiosk that tries five wrong codes is locked out
    while another one still works.

    The story is held still twice: from 11:55 until the controller has seen
    the reboot (a counter loses whatever it had not reported when it
    reboots, which no controller can count: the quiet door makes sure there
    is no such thing), and at the end, so the counts are compared when they
    can no longer move.
    """
    start = datetime.combine(SATURDAY, time(9, 15), SH)
    reboot = datetime.combine(SATURDAY, time(12, 0), SH)
    faults = FaultPlan(drop=0.05, resets=(("counter-entrance", reboot - start),))
    async with whole_center(
        broker,
        scenario="busy-saturday",
        start=start,
        speed=SPEED,
        faults=faults,
        seed=SEED,
        watch=("counter-entrance",),
    ) as day:
        inside: list[int] = []  # the controller's people inside, at every counter report
        day.readings.listeners.append(lambda _: inside.append(day.service.visitors.inside))
        await _counter_baseline(day)
        day.story.resume()

        deposits = [await _deposit(day, number) for number in range(1, 5)]
        compartments = [receipt["compartment"] for receipt in deposits]
        assert compartments == [0, 1, 2, 3], "the lowest free compartments, in order"
        cabinet = day.center.modbus.cabinet(CABINET)
        assert all(cabinet.item_present(index) for index in compartments)

        await day.until(time(9, 50))
        await _collect(day, deposits[0], KIOSK_TOKEN)

        await day.until(time(10, 30))
        await _throttled_kiosk(day, right=deposits[1], wrong=_wrong_codes(deposits, 5))
        await _collect(day, deposits[1], KIOSK_TOKEN)  # the other kiosk is not locked out

        await day.until(time(11, 55))
        await day.story.hold()
        await _exact_visitors(day, "before the counter reboots")
        await poll_until(
            lambda: _events(day, "counter_reset"),
            timeout=15,
            message="the controller to notice the counter's reboot",
        )
        day.story.resume()

        await day.until(time(12, 5))
        await _collect(day, deposits[2], KIOSK_TOKEN)
        await _collect(day, deposits[3], KIOSK_TOKEN)

        await day.until(time(12, 15))
        await day.story.hold()
        visitors = await _exact_visitors(day, "at the end of the morning")
        entries, _ = day.entrance.totals()
        assert entries > 500, f"a busy Saturday morning: only {entries} came in"
        assert len(inside) > 500, "a report of the counter for about every passage"
        assert min(inside) >= 0

        # Hour by hour as the people came: never before they passed the door,
        # and no later than a dropped report or three after.
        for hour in visitors["hours"]:
            ends = datetime.fromisoformat(hour["start"]) + timedelta(hours=1)
            counted = _counted_until(visitors, ends)
            upper = day.entrance.totals(ends)
            lower = day.entrance.totals(ends - REPORT_LAG)
            assert lower <= counted <= upper, (hour, lower, counted, upper)

        resets = await _events(day, "counter_reset")
        assert len(resets) == 1, resets
        first_reading = datetime.fromisoformat(resets[0]["details"]["first_reading_at"])
        assert reboot <= first_reading <= reboot + timedelta(minutes=2)

        # Every document went in and came out of the compartment it was given,
        # and the cabinet's coils were pulsed for exactly those visits.
        pulses = day.center.modbus.server(CABINET).pulses
        assert pulses == compartments + compartments, pulses
        collected = {
            event["details"]["deposit_id"] for event in await _events(day, "cabinet_pickup")
        }
        assert collected == {receipt["deposit_id"] for receipt in deposits}
        view = await day.api.get(f"/api/cabinets/{CABINET}")
        assert all(c["state"] == "free" for c in view["compartments"]), view
        assert not any(cabinet.item_present(index) for index in range(cabinet.compartments))

        await _only_expected_alarms(day)


async def _counter_baseline(day: Day) -> None:
    """Until the controller has the entrance counter's first totals (nobody has moved yet)."""

    async def baseline() -> bool:
        visitors = await day.api.get("/api/visitors")
        return all(counter["totals"] is not None for counter in visitors["counters"])

    await poll_until(baseline, timeout=10, message="the entrance counter's first report")
    assert day.entrance.totals() == (0, 0)


async def _exact_visitors(day: Day, when: str) -> Any:
    """With the story held: the day's count equals the people through the door, exactly."""
    assert not day.story.moving
    truth = day.entrance.totals()
    inside = day.building.inside

    async def matches() -> Any:
        visitors = await day.api.get("/api/visitors", date=day.date.isoformat())
        found = (visitors["entries"], visitors["exits"], visitors["inside"])
        return visitors if found == (*truth, inside) else None

    try:
        visitors = await poll_until(matches, timeout=10, message=f"exact visitors {when}")
    except AssertionError:
        last = await day.api.get("/api/visitors", date=day.date.isoformat())
        raise AssertionError(
            f"visitors {when}: the controller has in {last['entries']}, out {last['exits']},"
            f" inside {last['inside']}; the door saw in {truth[0]}, out {truth[1]},"
            f" inside {inside}"
        ) from None
    assert sum(hour["entries"] for hour in visitors["hours"]) == visitors["entries"]
    assert sum(hour["exits"] for hour in visitors["hours"]) == visitors["exits"]
    return visitors


def _counted_until(visitors: Any, end: datetime) -> tuple[int, int]:
    hours = [h for h in visitors["hours"] if datetime.fromisoformat(h["start"]) < end]
    return sum(h["entries"] for h in hours), sum(h["exits"] for h in hours)


async def _events(day: Day, kind: str) -> list[Any]:
    body = await day.api.get("/api/events", kind=kind, limit="1000")
    events: list[Any] = body["events"]
    return events


async def _deposit(day: Day, number: int) -> Any:
    reply = await day.api.call(
        "POST",
        f"/api/cabinets/{CABINET}/deposits",
        STAFF_TOKEN,
        body={"recipient": f"Resident {number}", "reference": f"SAT-{number}", "hold_hours": 48},
    )
    assert reply.status == 201, reply.body
    return reply.body


async def _collect(day: Day, receipt: Any, token: str) -> None:
    """A resident types the code: the right door opens, and the deposit ends collected."""
    reply = await day.api.call(
        "POST", f"/api/cabinets/{CABINET}/pickup", token, body={"code": receipt["code"]}
    )
    assert reply.status == 200, reply.body
    assert reply.body["compartment"] == receipt["compartment"]

    async def collected() -> bool:
        events = await _events(day, "cabinet_pickup")
        done = any(e["details"]["deposit_id"] == receipt["deposit_id"] for e in events)
        view = await day.api.get(f"/api/cabinets/{CABINET}")
        compartment = view["compartments"][receipt["compartment"]]
        return done and compartment["state"] == "free" and compartment["deposit_id"] is None

    await poll_until(collected, timeout=10, message=f"deposit {receipt['deposit_id']} collected")


def _wrong_codes(deposits: list[Any], count: int) -> list[str]:
    issued = {receipt["code"] for receipt in deposits}
    return [code for code in (f"{n:06d}" for n in range(100)) if code not in issued][:count]


async def _throttled_kiosk(day: Day, *, right: Any, wrong: list[str]) -> None:
    """Five wrong codes from one kiosk: then even a right code from it is refused (429)."""
    path = f"/api/cabinets/{CABINET}/pickup"
    for code in wrong:
        reply = await day.api.call("POST", path, OTHER_KIOSK_TOKEN, body={"code": code})
        assert reply.status == 403, reply.body
        assert reply.body["error"]["code"] == "wrong_code"
    refused = await day.api.call("POST", path, OTHER_KIOSK_TOKEN, body={"code": right["code"]})
    assert refused.status == 429, refused.body
    assert int(refused.headers["Retry-After"]) > 0
    assert day.center.modbus.cabinet(CABINET).item_present(right["compartment"])


# -- the heat wave -----------------------------------------------------------------------


async def test_heat_wave_keeps_the_empty_love_room_cool_and_rests_the_compressor(
    broker: Broker,
) -> None:
    """09:30 to about 11:25 of a heat-wave day (38 °C at 15:00, 35 °C from about 11:05).

    At 09:40 newcomers are turned away (as if the street were closed), so
    the love room empties within its visitors' stays (at most 40 min) and
    stays empty. Before the heat wave the rule then switches its AC off
    (empty for empty_off_after, 15 min); once the outdoor sensor reports
    35 °C the AC must cool the empty room. Then someone switches it off with
    the remote control: the controller brings it back, but only after the
    compressor's minimum off time. At last the doors open again and riders
    come in from the heat.
    """
    start = datetime.combine(HEAT_WAVE_DAY, time(9, 30), SH)
    async with whole_center(
        broker,
        scenario="heat-wave",
        start=start,
        speed=SPEED,
        faults=FaultPlan(),
        seed=SEED,
        watch=("ac-love-room", "temp-outdoor"),
    ) as day:
        rules = day.site.rules.climate
        ac = day.center.modbus.server("ac-love-room")
        unit_power: list[tuple[datetime, bool]] = [(day.clock.now(), ac.get("power") is True)]
        ac.on_write = lambda name, index, value: (
            unit_power.append((day.clock.now(), value is True)) if name == "power" else None
        )
        empty_room: list[tuple[datetime, bool]] = []  # (AC reading time, cooling at 26 °C)
        day.readings.listeners.append(
            lambda event: (
                _sample_empty_room(day, event.time, empty_room)
                if event.device_id == "ac-love-room"
                else None
            )
        )
        day.story.resume()

        await day.until(time(9, 40))
        day.building.set_accepting(False)
        emptied = await wait_until(
            lambda: day.building.now if day.building.occupants("love-room") == 0 else None,
            timeout=20,
            message="the love room to empty",
        )
        heat_wave = await wait_until(
            lambda: _first_outdoor_at_least(day, rules.heat_wave_outdoor),
            timeout=30,
            message="the outdoor sensor to report the heat wave",
        )
        assert emptied + rules.empty_off_after < heat_wave - timedelta(minutes=5), (
            "the room must have been empty long enough before the heat wave",
            emptied,
            heat_wave,
        )
        cooling = await wait_until(
            lambda: day.clock.now() if ac.get("power") is True else None,
            timeout=10,
            message="the AC to start cooling for the heat wave",
        )
        assert cooling - heat_wave <= timedelta(seconds=30), (heat_wave, cooling)
        assert (ac.get("mode"), ac.get("setpoint")) == ("cool", 26.0)
        assert day.building.occupants("love-room") == 0

        await day.until(cooling + timedelta(minutes=5))
        units = await day.api.get("/api/air-conditioners")
        unit = next(u for u in units["air_conditioners"] if u["id"] == "ac-love-room")
        assert unit["reading"]["power"] is True, unit
        assert unit["rule"]["cause"] == "heat_wave", unit

        # Someone switches it off with the remote (the unit's own doing).
        switched_off = day.clock.now()
        ac.set("power", False)
        unit_power.append((switched_off, False))
        back_on = await wait_until(
            lambda: day.clock.now() if ac.get("power") is True else None,
            timeout=10,
            message="the controller to switch the AC back on",
        )
        rest = back_on - switched_off
        assert rules.min_off <= rest <= rules.min_off + timedelta(seconds=30), rest
        assert day.building.occupants("love-room") == 0, "still nobody there"

        day.building.set_accepting(True)
        await day.until(back_on + timedelta(minutes=15))

        # The compressor always rested min_off: at the unit (every power write,
        # and the remote), and in every power change the controller read (which
        # sees a change up to one poll late).
        at_unit = _rests(unit_power)
        assert at_unit, unit_power
        assert all(rest >= rules.min_off for rest in at_unit), (at_unit, unit_power)
        read = [
            (at, reading.power)
            for at, reading in day.readings.readings["ac-love-room"]
            if isinstance(reading, AirConditionerReading) and reading.power is not None
        ]
        poll = day.site.device_by_id["ac-love-room"].poll
        seen = _rests(read)
        assert len(seen) == len(at_unit), (seen, at_unit)
        assert all(rest >= rules.min_off - poll for rest in seen), seen

        # Before the heat wave, a room empty for empty_off_after has its AC off;
        # from the heat wave on, it cools at 26 °C, people or not (but for the
        # remote's doing).
        remote = (switched_off, back_on + timedelta(seconds=10))
        rule_off = emptied + rules.empty_off_after + timedelta(seconds=30)
        for at, reading in day.readings.readings["ac-love-room"]:
            assert isinstance(reading, AirConditionerReading)
            wanted = (reading.power, reading.mode, reading.setpoint)
            if rule_off <= at < heat_wave:
                assert reading.power is False, (at, reading)
            elif at >= cooling and not remote[0] <= at <= remote[1]:
                assert wanted == (True, "cool", 26.0), (at, reading)
        before = [on for at, on in empty_room if rule_off <= at < heat_wave]
        during = [on for at, on in empty_room if at >= cooling and not remote[0] <= at <= remote[1]]
        assert before, "the room was empty before the heat wave"
        assert not any(before), "off while empty on a normal morning"
        assert len(during) > 100, "the room was empty during the heat wave"
        assert all(during), "cooling the empty room in the heat wave"

        await _only_expected_alarms(day)


def _first_outdoor_at_least(day: Day, threshold: float) -> datetime | None:
    for at, reading in day.readings.readings["temp-outdoor"]:
        if isinstance(reading, ClimateReading) and (reading.temperature or 0.0) >= threshold:
            return at
    return None


def _sample_empty_room(day: Day, at: datetime, samples: list[tuple[datetime, bool]]) -> None:
    """At each AC reading with the love room empty: is the unit cooling (its own registers)?"""
    if day.building.occupants("love-room") == 0:
        ac = day.center.modbus.server("ac-love-room")
        cooling = (ac.get("power"), ac.get("mode"), ac.get("setpoint")) == (True, "cool", 26.0)
        samples.append((at, cooling))


def _rests(powers: list[tuple[datetime, bool]]) -> list[timedelta]:
    """How long the unit stayed off each time it was switched on again."""
    rests = []
    off_since: datetime | None = None
    running = powers[0][1] if powers else None
    for at, power in powers:
        if running and not power:
            off_since = at
        elif not running and power and off_since is not None:
            rests.append(at - off_since)
        running = power
    return rests


# -- alarms ------------------------------------------------------------------------------


async def _only_expected_alarms(day: Day) -> None:
    """The alarm list holds what the day should raise, each when it should, and nothing else.

    Neither day has a booking, a lock fault, an AC fault, a full room (the
    building lets nobody into a full room), a fire or a cabinet door opened
    without a visit, so the only alarms due are for silence: a device the
    independent subscriber heard nothing from for longer than its offline
    limit (3 reporting intervals) must be alarmed, and a device never silent
    that long must not be. (With 5 % of reports dropped, two dropped in a
    row make a silence of exactly the limit: either answer is right then.)
    """
    now = day.clock.monotonic()
    alarms = (await day.api.get("/api/alarms", limit="1000"))["alarms"]
    unexpected = [a for a in alarms if a["kind"] not in SILENCE_ALARMS]
    assert not unexpected, unexpected

    must = day.wiretap.silences(day.ready_at, now, margin=HEARING)
    may = day.wiretap.silences(day.ready_at, now, margin=-HEARING)
    raised = [
        (event["device"], day.moment(datetime.fromisoformat(event["time"])))
        for event in await _events(day, ",".join(sorted(SILENCE_ALARMS)))
        if event.get("state") == "active" and event.get("device")
    ]
    raised = [(device, at) for device, at in raised if at >= day.ready_at]

    def explains(silence: Silence, device: str, at: float) -> bool:
        limit = day.wiretap.limits[device]
        return (
            silence.device == device
            and silence.start + limit - HEARING <= at <= silence.end + HEARING
        )

    for device, at in raised:
        assert any(explains(s, device, at) for s in may), (
            f"{device} alarmed offline at {at:.0f} s though it was never silent that long",
            [s for s in may if s.device == device],
        )
    for silence in must:
        assert any(explains(silence, device, at) for device, at in raised), (
            f"{silence.device} silent from {silence.start:.0f} s to {silence.end:.0f} s:"
            " no offline alarm"
        )
    # Each device heard again has its alarm cleared; only a silence going on now may last.
    silent_now = {s.device for s in may if s.end == now}
    for alarm in alarms:
        if alarm["state"] == "active":
            assert alarm["device"] in silent_now, alarm
