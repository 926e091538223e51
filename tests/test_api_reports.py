"""Reports over HTTP and on the command line, from real stored data.

The API tests run the real app around an :class:`AccessRig` (real SQLite,
bookings and their rules) on a :class:`VirtualClock`, with the real point
recorder feeding a real :class:`EmbeddedStore`: sensor readings go on the bus
as the ingest would put them, the live state derives each room's state, the
recorder turns it into ``room`` points, and the store rolls them up minute by
minute as the clock walks. So the figures below come out of the same chain
the controller runs, and are checked against answers worked out by hand.

The scenario (Monday 23 and Tuesday 24 November 2026, open 08:30-21:00):

- 汇心室 (hui-xin-room), counting sensor, empty from Monday 08:00:
  booking b-1 10:00-12:00, occupied 10:10-11:30 by 5 people;
  booking b-2 14:00-15:00, nobody came: released as a no-show at 14:15;
  booking b-3 16:00-18:00, occupied 16:00-16:30 by 3, cancelled at 16:45;
  the sensor offline 19:00-20:00.
- 爱心驿站 (love-room, 24 hours, no count): empty from Monday 08:00, occupied
  22:00-23:30; its climate sensor reads 27.0 at 12:05 and 29.0 at 12:35.
- The outdoor sensor reads 31.5 at 12:10 and 33.5 at 12:40.
- The entrance counter: 1000 in / 990 out at 08:00 (baseline), 1030 / 1000 at
  09:00, 1040 / 1030 at 17:00.
- "Now" is Tuesday 10:30, so Tuesday counts up to then.

The command-line tests build a data directory for a week long past (so the
real clock the command reads cannot cut it) and run ``centerctl`` as a process.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient, TestServer

from controller.booking_store import BookingStore
from controller.clock import VirtualClock
from controller.database import DATABASE_FILE, open_database
from controller.readings import ClimateReading, CounterReading, OccupancyReading
from controller.report_output import COLUMNS
from controller.report_queries import query_plan
from controller.reports import Reports
from controller.settings import Settings
from controller.site import Site
from controller.timeseries.embedded import TIMESERIES_FILE, EmbeddedStore, HistoryReader
from controller.timeseries.points import Point, Series, time_ns
from controller.timeseries.recorder import PointRecorder
from controller.visitors import VisitorCounter
from rules.bookings import Booking
from rules.utilization import open_intervals
from tests.access_rig import AccessRig
from tests.conftest import CHANGBAI, ROOT
from web.app import create_app
from web.auth import TokenAuth

SH = ZoneInfo("Asia/Shanghai")
READ_TOKEN = "rd-5Jn2Wq9EaS7dUo"
KIOSK_TOKEN = "ki-8Pf4Gm1UcX6zLa"
TOKENS = json.dumps({READ_TOKEN: ["read"], KIOSK_TOKEN: ["kiosk"]})


def at(hour: int, minute: int = 0, *, day: int = 0) -> datetime:
    """``day`` 0 is Monday 23 November 2026, in the site's zone."""
    return datetime(2026, 11, 23, hour, minute, tzinfo=SH) + timedelta(days=day)


NOW = at(10, 30, day=1)


def query(path: str, *pairs: tuple[str, Any]) -> str:
    values = [(k, v.isoformat() if isinstance(v, datetime) else v) for k, v in pairs]
    return f"{path}?{urlencode(values, quote_via=quote)}"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> Any:
        return json.loads(self.raw)


@dataclass
class ReportsApi:
    rig: AccessRig
    store: EmbeddedStore
    visitors: VisitorCounter
    client: TestClient[Any, Any]
    pending: list[Point]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def get(
        self, path: str, token: str | None = READ_TOKEN, *, accept: str | None = None
    ) -> Reply:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if accept is not None:
            headers["Accept"] = accept
        async with self.client.get(path, headers=headers) as response:
            reply = Reply(response.status, dict(response.headers), await response.read())
        assert reply.status < 500, reply.raw[:300]
        if reply.status >= 400 or "json" in reply.headers.get("Content-Type", ""):
            assert reply.headers["Content-Type"].startswith("application/json")
            if reply.status >= 400:
                assert set(reply.body) == {"error"}
                assert set(reply.body["error"]) == {"code", "message", "details"}
        return reply

    def flush(self) -> None:
        """What the time-series writer does every second: the new points, and close minutes."""
        self.store.write(list(self.pending), time_ns(self.rig.clock.now()))
        self.pending.clear()

    async def walk(self, to: datetime) -> None:
        """A minute at a time, so the rules' deadlines and the store's minutes keep up."""
        while self.rig.clock.now() < to:
            await self.rig.clock.advance(min(timedelta(minutes=1), to - self.rig.clock.now()))
            self.flush()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.visitors.stop()
        await self.client.close()
        self.store.close()
        self.rig.stop()


MakeApi = Callable[[], Awaitable[ReportsApi]]


@pytest.fixture
async def make_api(site: Site, tmp_path: Path) -> AsyncIterator[MakeApi]:
    made: list[ReportsApi] = []

    async def make() -> ReportsApi:
        data = tmp_path / f"data{len(made)}"
        clock = VirtualClock(at(8))
        rig = AccessRig(site, clock, data_dir=data, timeseries=data / TIMESERIES_FILE)
        rig.start()
        pending: list[Point] = []
        recorder = PointRecorder(site, rig.state, rig.bus, pending.append)
        recorder.start([], clock.now())
        rig.events.listen(recorder.on_logged_event)
        store = EmbeddedStore(
            data / TIMESERIES_FILE,
            keep_raw=True,
            retention=timedelta(days=30),
            history=timedelta(days=730),
        )
        visitors = VisitorCounter(site, rig.bus, clock, db=rig.db, events=rig.events)
        visitors.start()
        app = create_app(
            site=site,
            state=rig.state,
            health=lambda: {"status": "ok"},
            auth=TokenAuth(
                Settings(_env_file=None, api_tokens=TOKENS).scopes_by_token()  # type: ignore[call-arg, arg-type]
            ),
            services=dataclasses.replace(rig.services(), visitors=visitors),
        )
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        api = ReportsApi(rig, store, visitors, client, pending)
        api.tasks = [asyncio.create_task(rig.access.run()), asyncio.create_task(visitors.run())]
        made.append(api)
        return api

    yield make
    for api in made:
        await api.close()


async def play_the_scenario(api: ReportsApi) -> None:
    rig = api.rig
    rig.occupancy("hui-xin-room", False, 0)
    rig.report("occ-love-room", OccupancyReading(False))
    rig.report("counter-entrance", CounterReading(1000, 990))
    rig.book("b-1", "hui-xin-room", at(10), at(12))
    rig.book("b-2", "hui-xin-room", at(14), at(15))
    rig.book("b-3", "hui-xin-room", at(16), at(18))
    await api.walk(at(9))
    rig.report("counter-entrance", CounterReading(1030, 1000))
    await api.walk(at(10, 10))
    rig.occupancy("hui-xin-room", True, 5)
    await api.walk(at(11, 30))
    rig.occupancy("hui-xin-room", False, 0)
    await api.walk(at(12, 5))
    rig.report("temp-love-room", ClimateReading(temperature=27.0))
    await api.walk(at(12, 10))
    rig.report("temp-outdoor", ClimateReading(temperature=31.5))
    await api.walk(at(12, 35))
    rig.report("temp-love-room", ClimateReading(temperature=29.0))
    await api.walk(at(12, 40))
    rig.report("temp-outdoor", ClimateReading(temperature=33.5))
    await api.walk(at(16))
    assert rig.status("b-2") == "no_show"
    rig.occupancy("hui-xin-room", True, 3)
    await api.walk(at(16, 30))
    rig.occupancy("hui-xin-room", False, 0)
    await api.walk(at(16, 45))
    rig.bookings.cancel("b-3", rig.clock.now())
    await api.walk(at(17))
    rig.report("counter-entrance", CounterReading(1040, 1030))
    await api.walk(at(19))
    rig.availability("occ-hui-xin-room", False)
    await api.walk(at(20))
    rig.availability("occ-hui-xin-room", True)
    rig.occupancy("hui-xin-room", False, 0)
    await api.walk(at(22))
    rig.report("occ-love-room", OccupancyReading(True))
    await api.walk(at(23, 30))
    rig.report("occ-love-room", OccupancyReading(False))
    await api.walk(NOW)
    assert [rig.status(name) for name in ("b-1", "b-2", "b-3")] == ["ended", "no_show", "ended"]


HUI_XIN = {
    "room": "hui-xin-room",
    "name": "汇心室",
    "name_en": "HUI Xin Room",
    "bookable": True,
    "open_hours": 14.5,  # Monday 12.5 + Tuesday 08:30-10:30 (now) 2
    "bookings": 3,
    "no_shows": 1,  # b-2
    "booked_hours": 3.75,  # b-1 2 + b-2 1 (a no-show holds its slot) + b-3 16:00-16:45 0.75
    "occupied_hours": 1.83,  # 10:10-11:30 1.3333 + 16:00-16:30 0.5 = 1.8333
    # b-1 10:00-10:10 0.1667 + 11:30-12:00 0.5; b-2 1; b-3 16:30-16:45 0.25 = 1.9167
    "booked_empty_hours": 1.92,
    "unknown_hours": 1.0,  # the sensor offline 19:00-20:00
    "peak_count": 5,
    "mean_count": 4.45,  # (5 x 1.3333 + 3 x 0.5) / 1.8333 = 8.1667 / 1.8333 = 4.4545
    "utilization": 0.126,  # 1.8333 / 14.5 = 0.12644
}
LOVE_ROOM_FIGURES = {
    "open_hours": 34.5,  # 24 h room: Monday 24 + Tuesday 00:00-10:30 10.5
    "bookings": 0,
    "no_shows": 0,
    "booked_hours": 0.0,
    "occupied_hours": 1.5,  # 22:00-23:30, after center hours
    "booked_empty_hours": 0.0,
    "unknown_hours": 8.0,  # Monday 00:00-08:00: nothing known before the first reading
    "peak_count": None,  # the sensor does not count
    "mean_count": None,
    "utilization": 0.043,  # 1.5 / 34.5 = 0.04348
}
TOTAL = {
    "open_hours": 199.5,  # 9 rooms with center hours x 14.5 + 2 24-hour rooms x 34.5
    "bookings": 3,
    "no_shows": 1,
    "booked_hours": 3.75,
    "occupied_hours": 3.33,  # 1.8333 + 1.5
    "booked_empty_hours": 1.92,
    # hui-xin 1 + love-room 8 + self-service (no sensor data) 34.5 + 8 rooms x 14.5 = 159.5
    "unknown_hours": 159.5,
    "peak_count": 5,
    "mean_count": 4.45,  # only the counted room
    "utilization": 0.017,  # 3.3333 / 199.5 = 0.01671
}


async def test_utilization_json_matches_the_hand_computed_figures(make_api: MakeApi) -> None:
    api = await make_api()
    await play_the_scenario(api)
    reply = await api.get(query("/api/utilization", ("from", "2026-11-23"), ("to", "2026-11-24")))
    assert reply.status == 200, reply.raw
    body = reply.body
    assert {key: body[key] for key in ("from", "to", "timezone", "until")} == {
        "from": "2026-11-23",
        "to": "2026-11-24",
        "timezone": "Asia/Shanghai",
        "until": "2026-11-24T10:30:00+08:00",  # cut at now: today's evening not counted
    }
    assert body["resolution_seconds"] == 60
    rooms = {row["room"]: row for row in body["rooms"]}
    assert list(rooms) == [room.id for room in api.rig.site.rooms]
    assert rooms["hui-xin-room"] == HUI_XIN
    love = rooms["love-room"]
    assert {key: love[key] for key in LOVE_ROOM_FIGURES} == LOVE_ROOM_FIGURES
    assert rooms["gym"]["unknown_hours"] == rooms["gym"]["open_hours"] == 14.5
    assert rooms["gym"]["utilization"] == 0.0
    assert body["total"] == TOTAL

    # No dates: this month so far; only to: from the first of its month.
    this_month = (await api.get("/api/utilization")).body
    assert (this_month["from"], this_month["to"]) == ("2026-11-01", "2026-11-24")
    # 22 more days (1-22 November) of open time, 9 x 12.5 + 2 x 24 = 160.5 h each, nothing known
    assert this_month["total"]["open_hours"] == 199.5 + 22 * 160.5
    assert this_month["total"]["unknown_hours"] == 159.5 + 22 * 160.5
    assert this_month["total"]["occupied_hours"] == TOTAL["occupied_hours"]
    to_only = (await api.get("/api/utilization?to=2026-11-24")).body
    assert to_only["from"] == "2026-11-01"
    from_only = (await api.get("/api/utilization?from=2026-11-24")).body
    assert (from_only["from"], from_only["to"]) == ("2026-11-24", "2026-11-24")

    # Monday alone: no cut, the day's whole hours.
    monday = (
        await api.get(query("/api/utilization", ("from", "2026-11-23"), ("to", "2026-11-23")))
    ).body
    hui = next(row for row in monday["rooms"] if row["room"] == "hui-xin-room")
    assert monday["until"] == "2026-11-24T00:00:00+08:00"
    assert (hui["open_hours"], hui["occupied_hours"], hui["utilization"]) == (12.5, 1.83, 0.147)


async def test_utilization_as_csv_for_a_spreadsheet(make_api: MakeApi) -> None:
    api = await make_api()
    await play_the_scenario(api)
    path = query("/api/utilization", ("from", "2026-11-23"), ("to", "2026-11-24"))
    by_format = await api.get(path + "&format=csv")
    by_accept = await api.get(path, accept="text/csv")
    for reply in (by_format, by_accept):
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "text/csv; charset=utf-8"
        assert reply.headers["Content-Disposition"] == (
            'attachment; filename="utilization-2026-11-23-2026-11-24.csv"'
        )
        assert reply.raw.startswith(b"\xef\xbb\xbf")  # the BOM: Excel then reads UTF-8
    assert by_format.raw == by_accept.raw
    rows = list(csv.reader(io.StringIO(by_format.raw.decode("utf-8-sig"))))
    assert tuple(rows[0]) == COLUMNS
    hui = next(row for row in rows if row[0] == "hui-xin-room")
    assert hui == [
        str(HUI_XIN[column]).lower() if column == "bookable" else str(HUI_XIN[column])
        for column in COLUMNS
    ]
    assert hui[1] == "汇心室"
    love = next(row for row in rows if row[0] == "love-room")
    assert love[COLUMNS.index("peak_count")] == ""  # null: no counting sensor
    assert rows[-1][:4] == ["total", "", "", ""]
    assert rows[-1][COLUMNS.index("open_hours")] == "199.5"
    assert len(rows) == 1 + len(api.rig.site.rooms) + 1
    # format=json wins over the Accept header.
    assert (await api.get(path + "&format=json", accept="text/csv")).body["total"] == TOTAL


async def test_room_and_device_history(make_api: MakeApi) -> None:
    api = await make_api()
    await play_the_scenario(api)
    reply = await api.get(
        query("/api/rooms/hui-xin-room/history", ("from", at(9)), ("to", at(13)), ("step", 3600))
    )
    assert reply.status == 200, reply.raw
    body = reply.body
    assert (body["room"], body["from"], body["to"], body["step"]) == (
        "hui-xin-room",
        "2026-11-23T09:00:00+08:00",
        "2026-11-23T13:00:00+08:00",
        3600,
    )
    hours = body["buckets"]
    assert [hour["start"] for hour in hours] == [at(h).isoformat() for h in (9, 10, 11, 12)]
    assert [hour["occupied"] for hour in hours] == [0.0, 0.833, 0.5, 0.0]  # 50 min, 30 min
    assert [hour["count_max"] for hour in hours] == [0, 5, 5, 0]
    assert [hour["count_mean"] for hour in hours] == [0.0, 4.17, 2.5, 0.0]  # 5 x 50/60
    assert all(hour["known_seconds"] == 3600 for hour in hours)
    assert all(hour["temperature_mean"] is None for hour in hours)  # no sensor in the room

    evening = (
        await api.get(
            query(
                "/api/rooms/hui-xin-room/history", ("from", at(18)), ("to", at(21)), ("step", 3600)
            )
        )
    ).body["buckets"]
    assert [(hour["occupied"], hour["known_seconds"]) for hour in evening] == [
        (0.0, 3600),
        (None, 0),  # 19:00-20:00 offline: unknown, not empty
        (0.0, 3600),
    ]

    love = (
        await api.get(
            query("/api/rooms/love-room/history", ("from", at(12)), ("to", at(13)), ("step", 1800))
        )
    ).body["buckets"]
    assert [(b["temperature_mean"], b["temperature_min"], b["temperature_max"]) for b in love] == [
        (27.0, 27.0, 27.0),
        (29.0, 29.0, 29.0),
    ]

    outdoor = await api.get(
        query(
            "/api/devices/temp-outdoor/history",
            ("field", "temperature"),
            ("from", at(12)),
            ("to", at(14)),
            ("step", 3600),
        )
    )
    assert outdoor.status == 200, outdoor.raw
    assert outdoor.body["measurement"] == "climate"
    assert outdoor.body["buckets"] == [
        {
            "start": at(12).isoformat(),
            "mean": 32.5,
            "min": 31.5,
            "max": 33.5,
            "samples": 2,
            "sum": 65.0,
        },
        {
            "start": at(13).isoformat(),
            "mean": None,
            "min": None,
            "max": None,
            "samples": 0,
            "sum": None,
        },
    ]

    # With no field named, a device's main one: the temperature of a climate sensor.
    default = (
        await api.get(
            query(
                "/api/devices/temp-outdoor/history",
                ("from", at(12)),
                ("to", at(13)),
                ("step", 3600),
            )
        )
    ).body
    assert (default["field"], default["buckets"][0]["mean"]) == ("temperature", 32.5)

    # The default: the last 24 hours in 5-minute buckets, up to now.
    recent = (await api.get("/api/rooms/love-room/history")).body
    assert recent["to"] == NOW.isoformat()
    assert recent["from"] == (NOW - timedelta(hours=24)).isoformat()
    assert len(recent["buckets"]) == 288
    assert sum(b["occupied"] or 0 for b in recent["buckets"]) == 18  # 22:00-23:30: 18 buckets


async def test_visitors_by_day_beside_the_single_day(make_api: MakeApi) -> None:
    api = await make_api()
    await play_the_scenario(api)
    reply = await api.get(query("/api/visitors", ("from", "2026-11-22"), ("to", "2026-11-30")))
    assert reply.status == 200, reply.raw
    body = reply.body
    assert (body["from"], body["to"], body["entries"], body["exits"]) == (
        "2026-11-22",
        "2026-11-30",
        40,  # 30 by 09:00, 10 more by 17:00
        40,
    )
    assert [day["date"] for day in body["days"]] == ["2026-11-22", "2026-11-23", "2026-11-24"]
    sunday, monday, tuesday = body["days"]
    assert (sunday["entries"], sunday["peak_inside"]) == (0, None)
    assert monday == {
        "date": "2026-11-23",
        "entries": 40,
        "exits": 40,
        "peak_inside": 20,  # 30 in, 10 out by 09:00; 10 in and 30 out by 17:00
        "inside": 0,
        "inside_at_close": 0,
        "closed": True,
    }
    assert tuesday["closed"] is False
    # The single-day form still works, alongside.
    single = await api.get("/api/visitors?date=2026-11-23")
    assert single.status == 200
    assert (single.body["entries"], len(single.body["hours"])) == (40, 24)


BAD_UTILIZATION = [
    ("to=2026-11-31", "to"),
    ("from=2026-13-01&to=2026-11-24", "from"),
    ("from=2026-02-30&to=2026-11-24", "from"),
    ("from=yesterday&to=2026-11-24", "from"),
    ("from=1999-12-31&to=2000-01-01", "from"),
    ("from=2026-11-24&to=2026-11-23", "to"),  # to before from
    ("from=2025-11-23&to=2026-11-24", "to"),  # 367 days
    ("from=2026-11-25&to=2026-11-26", "from"),  # has not begun
    ("from=2026-11-23&to=2026-11-24&format=xml", "format"),
    ("from=2026-11-23&to=2026-11-24&room=gym", "room"),
    ("from=2026-11-23&from=2026-11-22&to=2026-11-24", "from"),
]
BAD_HISTORY = [
    ("/api/rooms/hui-xin-room/history?step=90", 422, "step"),
    ("/api/rooms/hui-xin-room/history?step=0", 422, "step"),
    ("/api/rooms/hui-xin-room/history?step=five", 422, "step"),
    ("/api/rooms/hui-xin-room/history?step=1000000000000000000000000000000", 422, "step"),
    ("/api/rooms/hui-xin-room/history?from=2000-01-01T00:00:00Z&step=31622400", 200, None),
    ("/api/devices/temp-outdoor/history?field=", 422, "field"),
    ("/api/rooms/hui-xin-room/history?step=60&from=2026-10-01T00:00:00%2B08:00", 422, "step"),
    ("/api/rooms/hui-xin-room/history?from=2026-11-24T09:00:00", 422, "from"),  # no offset
    (
        "/api/rooms/hui-xin-room/history?from=2026-11-24T09:00:00%2B08:00"
        "&to=2026-11-24T08:00:00%2B08:00",
        422,
        "to",
    ),
    ("/api/rooms/hui-xin-room/history?colour=red", 422, "colour"),
    ("/api/rooms/nowhere/history", 404, None),
    ("/api/devices/nothing/history?field=temperature", 404, None),
    ("/api/devices/temp-outdoor/history?field=pressure", 422, "field"),
    ("/api/devices/ac-love-room/history?field=mode", 422, "field"),  # text, not a number
]
BAD_VISITORS = [
    ("date=2026-11-23&from=2026-11-22&to=2026-11-23", "date"),
    ("from=2026-11-22", "to"),
    ("to=2026-11-22", "from"),
    ("from=2026-11-25&to=2026-11-26", "from"),
    ("from=2025-11-01&to=2026-11-24", "to"),
    ("from=2026-11-22&to=2026-11-21", "to"),
]


async def test_bad_input_is_refused_and_changes_nothing(make_api: MakeApi) -> None:
    api = await make_api()
    await play_the_scenario(api)
    data = api.rig.data_dir
    assert data is not None

    def snapshot() -> tuple[Any, ...]:
        return (
            api.rig.events.latest_id(),
            [b.status for b in api.rig.bookings.between(at(0), at(0, day=2))],
            hashlib.sha256((data / TIMESERIES_FILE).read_bytes()).hexdigest(),
        )

    before = snapshot()
    good = await api.get(query("/api/utilization", ("from", "2026-11-23"), ("to", "2026-11-24")))
    for text, name in BAD_UTILIZATION:
        reply = await api.get(f"/api/utilization?{text}")
        assert reply.status == 422, (text, reply.raw)
        assert name in [problem["field"] for problem in reply.body["error"]["details"]], text
    for path, status, name in BAD_HISTORY:
        reply = await api.get(path)
        assert reply.status == status, (path, reply.raw)
        if name is not None:
            assert name in [p["field"] for p in reply.body["error"]["details"]], path
    for text, name in BAD_VISITORS:
        reply = await api.get(f"/api/visitors?{text}")
        assert reply.status == 422, (text, reply.raw)
        assert name in [problem["field"] for problem in reply.body["error"]["details"]], text
    assert (await api.get("/api/utilization?from=2026-11-23&to=2026-11-24", None)).status == 401
    assert (
        await api.get("/api/utilization?from=2026-11-23&to=2026-11-24", KIOSK_TOKEN)
    ).status == 403
    assert (await api.get("/api/rooms/gym/history", KIOSK_TOKEN)).status == 403
    assert snapshot() == before
    again = await api.get(query("/api/utilization", ("from", "2026-11-23"), ("to", "2026-11-24")))
    assert again.raw == good.raw


async def test_a_year_of_nothing_answers_quickly_and_empty(make_api: MakeApi) -> None:
    api = await make_api()
    reply = await api.get(query("/api/utilization", ("from", "2025-11-24"), ("to", "2026-11-23")))
    assert reply.status == 200, reply.raw
    gym = next(row for row in reply.body["rooms"] if row["room"] == "gym")
    # 365 days x 12.5 h, minus the last day after now (08:00, before opening): 364 x 12.5
    assert gym["open_hours"] == 4550.0
    assert gym["unknown_hours"] == 4550.0
    assert gym["peak_count"] is None


# --- The command line --------------------------------------------------------------

WEEK = datetime(2025, 3, 3, tzinfo=SH)  # a Monday long past


def week_at(day: int, hour: int, minute: int = 0) -> datetime:
    return WEEK + timedelta(days=day, hours=hour, minutes=minute)


def build_data_dir(data: Path) -> None:
    """A controller database with bookings and a time-series store with room states."""
    db = open_database(data)
    store = BookingStore(db)
    store.put(
        Booking(
            id="w-1",
            room="hui-xin-room",
            start=week_at(0, 14),
            end=week_at(0, 16),
            started_at=week_at(0, 14),
            checked_in_at=week_at(0, 14, 30),
            ended_at=week_at(0, 16),
        )
    )
    store.put(
        Booking(
            id="w-2",
            room="hui-xin-room",
            start=week_at(2, 9),
            end=week_at(2, 10),
            started_at=week_at(2, 9),
            no_show_at=week_at(2, 9, 15),
        )
    )
    db.close()
    points = EmbeddedStore(
        data / TIMESERIES_FILE,
        keep_raw=True,
        retention=timedelta(days=30),
        history=timedelta(days=730),
    )
    hui = Series.of("room", {"site": "changbai", "room": "hui-xin-room"})
    love = Series.of("room", {"site": "changbai", "room": "love-room"})

    def state(series: Series, moment: datetime, occupied: bool, count: int | None) -> Point:
        fields: tuple[tuple[str, bool | int], ...] = (("occupied", occupied),)
        if count is not None:
            fields += (("count", count),)
        return Point(series, (*fields, ("booked", False)), time_ns(moment))

    timeline = [
        state(hui, week_at(0, 0), False, 0),
        state(love, week_at(0, 0), False, None),
        state(hui, week_at(0, 14, 30), True, 6),
        state(hui, week_at(0, 15, 30), False, 0),
        state(love, week_at(3, 22), True, None),
        state(love, week_at(4, 1), False, None),
    ]
    for point in timeline:
        points.write([point], point.time_ns)
    points.write([], time_ns(week_at(7, 0)))
    points.close()


def centerctl(*args: str, data: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        cwd=ROOT,
        env={**os.environ, "CENTER_DATA_DIR": str(data)},
        capture_output=True,
        timeout=60,
    )


def display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def test_the_command_line_prints_the_same_table(tmp_path: Path) -> None:
    data = tmp_path / "data"
    build_data_dir(data)
    files = {name: (data / name).read_bytes() for name in (DATABASE_FILE, TIMESERIES_FILE)}
    week = ("--from", "2025-03-03", "--to", "2025-03-09")

    table = centerctl("report", "utilization", "--site", str(CHANGBAI), *week, data=data)
    assert table.returncode == 0, table.stderr.decode()
    lines = table.stdout.decode("utf-8").splitlines()
    assert lines[0].startswith("Utilization 2025-03-03 to 2025-03-09 (Asia/Shanghai)")
    header, *rows = lines[1:]
    assert header.split() == list(COLUMNS)
    # Aligned as a terminal shows it: 汇心室 takes six columns, not three.
    assert len({display_width(line) for line in lines[1:]}) == 1, "\n".join(lines)
    hui = next(row.split() for row in rows if row.startswith("hui-xin-room"))
    # open 87.5; 2 bookings, 1 no-show; booked 2 + 1; occupied 14:30-15:30 1 h;
    # booked empty 14:00-14:30 0.5 + 15:30-16:00 0.5 + the no-show 1 = 2; count 6.
    assert hui == [
        "hui-xin-room", "汇心室", "HUI", "Xin", "Room", "yes",
        "87.50", "2", "1", "3.00", "1.00", "2.00", "0.00", "6", "6.00", "0.011",
    ]  # fmt: skip
    love = next(row.split() for row in rows if row.startswith("love-room"))
    # 24 h: 168 open, occupied Thursday 22:00 - Friday 01:00 = 3 h: 3 / 168 = 0.018
    assert love[-10:] == [
        "168.00", "0", "0", "0.00", "3.00", "0.00", "0.00", "-", "-", "0.018",
    ]  # fmt: skip

    as_csv = centerctl("report", "utilization", "--site", str(CHANGBAI), *week, "--csv", data=data)
    assert as_csv.returncode == 0, as_csv.stderr.decode()
    assert as_csv.stdout.startswith(b"\xef\xbb\xbf")
    rows_csv = list(csv.reader(io.StringIO(as_csv.stdout.decode("utf-8-sig"))))
    assert tuple(rows_csv[0]) == COLUMNS
    assert next(row for row in rows_csv if row[0] == "hui-xin-room")[1:4] == [
        "汇心室",
        "HUI Xin Room",
        "true",
    ]
    assert rows_csv[-1][0] == "total"
    # Read-only: the report changed nothing in the data directory.
    assert {name: (data / name).read_bytes() for name in files} == files


def test_the_command_line_refuses_bad_dates_and_a_missing_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    build_data_dir(data)
    site = ("report", "utilization", "--site", str(CHANGBAI))
    bad = centerctl(*site, "--from", "2025-03-09", "--to", "2025-03-03", data=data)
    assert bad.returncode == 1
    assert b"--to: must not be before --from" in bad.stderr
    assert b"Traceback" not in bad.stderr
    nonsense = centerctl(*site, "--from", "March", "--to", "2025-03-03", data=data)
    assert nonsense.returncode == 1
    assert b"--from: not a date" in nonsense.stderr
    missing = centerctl(
        *site, "--from", "2025-03-03", "--to", "2025-03-09", data=tmp_path / "nowhere"
    )
    assert missing.returncode == 1
    assert b"no data directory" in missing.stderr
    assert b"Traceback" not in missing.stderr
    assert not (tmp_path / "nowhere").exists()


# --- Older data: the store keeps hours only ---------------------------------------------


class FixedBookings:
    def __init__(self, bookings: list[Booking]) -> None:
        self._bookings = bookings

    def between(self, start: datetime, end: datetime, room: str | None = None) -> list[Booking]:
        return [b for b in self._bookings if b.overlaps(start, end) and room in (None, b.room)]


def test_the_table_is_the_same_once_the_store_keeps_only_hours(site: Site, tmp_path: Path) -> None:
    """Months later the minutes are gone (downsampled into hours): same figures, when the
    room changed state on whole hours. The 08:30 opening then takes half of the 08:00 hour."""
    monday = datetime(2026, 9, 7, tzinfo=SH)
    now = datetime(2026, 11, 23, 9, tzinfo=SH)
    half = timedelta(minutes=30)

    def moment(day: int, hour: int) -> datetime:
        return monday + timedelta(days=day, hours=hour)

    hui = Series.of("room", {"site": "changbai", "room": "hui-xin-room"})
    love = Series.of("room", {"site": "changbai", "room": "love-room"})
    timeline = [
        (hui, moment(0, 0), False, 0),
        (love, moment(0, 0), False, None),
        (hui, moment(0, 9), True, 4),
        (hui, moment(0, 12), False, 0),
        (hui, moment(2, 20), True, 2),
        (hui, moment(2, 23), False, 0),
        (love, moment(3, 23), True, None),
        (love, moment(4, 2), False, None),
    ]
    bookings = FixedBookings(
        [
            Booking(
                id="o-1",
                room="hui-xin-room",
                start=moment(0, 11),
                end=moment(0, 13),
                started_at=moment(0, 11),
                checked_in_at=moment(0, 11),
                ended_at=moment(0, 13),
            ),
            Booking(
                id="o-2",
                room="hui-xin-room",
                start=moment(1, 10),
                end=moment(1, 11),
                started_at=moment(1, 10),
                no_show_at=moment(1, 10) + timedelta(minutes=15),
            ),
        ]
    )
    tables = {}
    histories = {}
    for kept, days in (("minutes", 90), ("hours", 1)):
        path = tmp_path / kept / TIMESERIES_FILE
        store = EmbeddedStore(
            path, keep_raw=False, retention=timedelta(days=days), history=timedelta(days=730)
        )
        for series, when, occupied, count in timeline:
            fields: tuple[tuple[str, bool | int], ...] = (("occupied", occupied),)
            if count is not None:
                fields += (("count", count),)
            store.write([Point(series, fields, time_ns(when))], time_ns(when))
        store.write([], time_ns(moment(7, 0)))
        store.maintain(time_ns(now))
        store.close()
        reader = HistoryReader(path)
        seconds = {
            bucket.seconds
            for bucket in reader.buckets(
                "room", {"room": "hui-xin-room"}, "occupied", moment(0, 8), moment(0, 10)
            )
        }
        assert seconds == ({60} if kept == "minutes" else {3600})
        reports = Reports(site, VirtualClock(now), bookings, reader)
        tables[kept] = reports.utilization_blocking(
            monday.date(), monday.date() + timedelta(days=6), now
        ).to_json()
        room = site.room_by_id["hui-xin-room"]
        buckets = asyncio.run(reports.room_history(room, moment(0, 8) + half, moment(0, 13), 1800))
        histories[kept] = [bucket.to_json(SH) for bucket in buckets]
    assert tables["hours"] == tables["minutes"]
    # The history from 08:30 too: the 08:00 hour row gives its second half.
    assert histories["hours"] == histories["minutes"]
    assert [(b["occupied"], b["known_seconds"]) for b in histories["hours"][:3]] == [
        (0.0, 1800),  # 08:30-09:00
        (1.0, 1800),  # 09:00-09:30
        (1.0, 1800),
    ]
    rooms = {row["room"]: row for row in tables["hours"]["rooms"]}
    assert {key: rooms["hui-xin-room"][key] for key in HOURS_FIGURES} == HOURS_FIGURES
    assert (rooms["love-room"]["occupied_hours"], rooms["love-room"]["unknown_hours"]) == (3.0, 0.0)


HOURS_FIGURES = {
    "open_hours": 87.5,
    "bookings": 2,
    "no_shows": 1,
    "booked_hours": 3.0,  # o-1 11:00-13:00 + o-2 10:00-11:00
    "occupied_hours": 4.0,  # Monday 09:00-12:00 3 + Wednesday 20:00-21:00 1 (closes at 21:00)
    "booked_empty_hours": 2.0,  # o-1 12:00-13:00 + o-2 all of it
    "unknown_hours": 0.0,  # 08:30-09:00 is half of an 08:00 hour row, known all along
    "peak_count": 4,
    "mean_count": 3.5,  # (4 x 3 + 2 x 1) / 4
    "utilization": 0.046,  # 4 / 87.5 = 0.0457
}


def test_a_month_is_read_a_day_at_a_time_in_half_hours(site: Site) -> None:
    """How much a month costs the store: one query per open day, on the 08:30 opening's
    half-hour grid; before the store's minute retention, one query for the whole month."""
    october = (datetime(2026, 10, 1).date(), datetime(2026, 10, 31).date())
    until = datetime(2026, 11, 1, tzinfo=SH)
    daily = open_intervals(*october, SH, site.site.hours, until)
    plan = query_plan(daily)
    assert len(plan) == 31
    assert plan[0] == (
        datetime(2026, 10, 1, 8, tzinfo=SH),  # widened to the hour the opening falls in
        datetime(2026, 10, 1, 21, tzinfo=SH),
        1800,
    )
    assert query_plan(daily, coarse_before=until) == [
        (datetime(2026, 10, 1, 8, tzinfo=SH), datetime(2026, 10, 31, 21, tzinfo=SH), 1800)
    ]
    always = open_intervals(*october, SH, None, until)
    assert query_plan(always) == [
        (datetime(2026, 10, 1, tzinfo=SH), until, 31 * 86400)  # one bucket: the store sums
    ]
    # Booked time: minutes, whole hours around it, spans under an hour apart in one query.
    booked = [
        (datetime(2026, 10, 5, 14, 10, tzinfo=SH), datetime(2026, 10, 5, 15, tzinfo=SH)),
        (datetime(2026, 10, 5, 16, tzinfo=SH), datetime(2026, 10, 5, 16, 30, tzinfo=SH)),
        (datetime(2026, 10, 6, 9, tzinfo=SH), datetime(2026, 10, 6, 10, tzinfo=SH)),
    ]
    assert query_plan(booked, minutes=True) == [
        (datetime(2026, 10, 5, 14, tzinfo=SH), datetime(2026, 10, 5, 17, tzinfo=SH), 60),
        (datetime(2026, 10, 6, 9, tzinfo=SH), datetime(2026, 10, 6, 10, tzinfo=SH), 60),
    ]
