"""Every kind of bad payload, sent through a real broker, changes nothing and is counted."""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import PREFIX, Probe, RunningController, wait_until

pytestmark = pytest.mark.broker

OCC = "occ-convergence-hall"
CLIMATE = "temp-love-room"

# (device, payload, reason counted)
BAD_PAYLOADS = [
    pytest.param(OCC, b"hello", "not_json", id="not-json"),
    pytest.param(OCC, b"[1, 2, 3]", "not_object", id="json-array"),
    pytest.param(OCC, b'{"occupied": "yes"}', "wrong_type", id="wrong-type"),
    pytest.param(CLIMATE, b'{"temperature": NaN}', "not_finite", id="nan"),
    pytest.param(CLIMATE, b'{"temperature": Infinity}', "not_finite", id="infinity"),
    pytest.param(CLIMATE, b'{"temperature": -60}', "out_of_range", id="minus-60C"),
    pytest.param(OCC, b'{"occupied": true, "count": -1}', "out_of_range", id="count-minus-1"),
    pytest.param(
        OCC, b'{"occupied": true, "pad": "' + b"x" * 70_000 + b'"}', "too_large", id="over-64KiB"
    ),
    pytest.param(OCC, b"", "empty", id="empty"),
    pytest.param(OCC, bytes(range(256)), "not_utf8", id="binary-garbage"),
    pytest.param(OCC, b"[" * 10_000 + b"]" * 10_000, "too_deep", id="nested-10000"),
]


async def health(controller: RunningController) -> dict[str, object]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{controller.base_url}/api/health") as response,
    ):
        assert response.status == 200, "the controller must stay up and ready"
        body: dict[str, object] = await response.json()
        return body


async def rooms(controller: RunningController) -> object:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{controller.base_url}/api/rooms") as response,
    ):
        return (await response.json())["rooms"]


def bad_count(report: dict[str, object], device: str, reason: str) -> int:
    by_device = report["ingest"]["bad_payloads_by_device"]  # type: ignore[index]
    return int(by_device.get(device, {}).get(reason, 0))  # type: ignore[union-attr]


@pytest.mark.parametrize(("device", "payload", "reason"), BAD_PAYLOADS)
async def test_bad_payload_changes_nothing_and_is_counted(
    controller: RunningController, probe: Probe, device: str, payload: bytes, reason: str
) -> None:
    # A good reading first, so "unchanged" means something.
    probe.publish(f"{PREFIX}/{OCC}/state", b'{"occupied": true, "count": 7}')
    probe.publish(f"{PREFIX}/{CLIMATE}/state", b'{"temperature": 25.5, "humidity": 50}')
    await wait_until(lambda: controller.service.ingest.stats.readings >= 2, message="good readings")
    before = await rooms(controller)

    probe.publish(f"{PREFIX}/{device}/state", payload)
    await wait_until(
        lambda: controller.service.bad_payloads.total >= 1, message=f"{reason} counted"
    )

    report = await health(controller)
    assert bad_count(report, device, reason) == 1
    assert await rooms(controller) == before
    assert controller.service.bus.handler_errors == 0


async def test_unknown_device_is_counted_under_its_id(
    controller: RunningController, probe: Probe
) -> None:
    before = await rooms(controller)
    probe.publish(f"{PREFIX}/occ-basement/state", b'{"occupied": true}')
    await wait_until(lambda: controller.service.bad_payloads.total >= 1, message="counted")
    report = await health(controller)
    assert bad_count(report, "occ-basement", "unknown_device") == 1
    assert await rooms(controller) == before


async def test_a_flood_of_garbage_is_counted_but_logged_once(
    controller: RunningController, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(50):
        probe.publish(f"{PREFIX}/{OCC}/state", b"\xff\xfe garbage", qos=0)
    await wait_until(lambda: controller.service.bad_payloads.total >= 50, message="all counted")
    report = await health(controller)
    assert bad_count(report, OCC, "not_utf8") == 50
    logged = [record for record in caplog.records if "rejected a message" in record.getMessage()]
    assert len(logged) == 1
