"""``centerctl simulate`` and ``centerctl demo``: a simulated center, alone or with everything.

``simulate`` plays the site's devices against a real broker and the Modbus
ports of the site file, for a controller running elsewhere.

``demo`` needs nothing installed: an embedded MQTT broker on loopback (unless
``CENTER_MQTT_URL`` names one), every device of the site simulated on free
ports, and the controller with its HTTP API, all on one clock in one process.
It prints where to look and a staff token made for this run.

When the center is closed at the moment the demo starts, the simulated day
starts at 10:00 instead (and says so), and the story starts an hour before
the clock does: a newcomer should see a center already in use, with people
coming and going within seconds, not an empty building until morning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, time
from pathlib import Path

from pydantic import SecretStr

from controller.clock import Clock, ScaledClock, SystemClock
from controller.service import ControllerService
from controller.settings import MqttEndpoint, Scope, Settings
from controller.site import Device, Site
from controller.site_profiles import SiteWithProfiles
from simulators.center import SimulatedCenter, site_with_ports
from simulators.embedded_broker import EmbeddedBroker
from simulators.faults import FaultPlan

EXAMPLE_SITE = Path(__file__).resolve().parent.parent / "sites" / "changbai.toml"
DEMO_OPENS_AT = time(10, 0)
# The demo's story begins this many seconds before its clock, so the center
# is already as busy as the time of day makes it.
DEMO_WARMUP = 3600.0

_log = logging.getLogger("controller.demo")


@dataclass(frozen=True, slots=True)
class SimulationOptions:
    scenario: str = "auto"
    speed: float = 1.0
    start: time | None = None  # simulated time of day to start at; None = now
    faults: FaultPlan = field(default_factory=FaultPlan)
    seed: int = 0


def simulation_clock(site: Site, options: SimulationOptions, *, demo: bool) -> Clock:
    """The clock every simulated part (and, in the demo, the controller) shares."""
    zone = site.site.zone
    now = datetime.now(zone)
    start_at = options.start
    if start_at is None and demo and not _open_at(site, now.time()):
        start_at = DEMO_OPENS_AT
        _log.info(
            "the center is closed at %s: the simulated day starts at %s",
            now.strftime("%H:%M"),
            start_at.strftime("%H:%M"),
        )
    if start_at is None and options.speed == 1:
        return SystemClock(zone)
    start = now if start_at is None else datetime.combine(now.date(), start_at, zone)
    return ScaledClock(start, options.speed)


def _open_at(site: Site, moment: time) -> bool:
    hours = site.site.hours
    return hours.open <= moment < hours.close


async def simulate(
    center: SiteWithProfiles,
    endpoint: MqttEndpoint,
    options: SimulationOptions,
    stop: asyncio.Event,
    *,
    prefix: str,
    ca_file: Path | None = None,
) -> None:
    """Devices only, until ``stop`` is set."""
    clock = simulation_clock(center.site, options, demo=False)
    async with _simulated_center(
        center, endpoint, options, clock, prefix=prefix, ca_file=ca_file
    ) as simulated:
        _log.info(
            "simulating %s (scenario %s, %gx) on %s",
            center.site.site.id,
            simulated.scenario,
            options.speed,
            endpoint.redacted(),
        )
        await _until(stop, simulated)


def _simulated_center(
    center: SiteWithProfiles,
    endpoint: MqttEndpoint,
    options: SimulationOptions,
    clock: Clock,
    *,
    prefix: str,
    ca_file: Path | None,
    warmup: float = 0.0,
    port_for: Callable[[Device], int] | None = None,
) -> SimulatedCenter:
    return SimulatedCenter(
        center.site,
        center.profiles,
        endpoint,
        clock=clock,
        speed=options.speed,
        scenario=options.scenario,
        faults=options.faults,
        seed=options.seed,
        warmup=warmup,
        prefix=prefix,
        ca_file=ca_file,
        port_for=port_for,
    )


async def demo(
    center: SiteWithProfiles,
    settings: Settings,
    options: SimulationOptions,
    stop: asyncio.Event,
) -> None:
    """The whole system on this machine until ``stop`` is set."""
    site = center.site
    clock = simulation_clock(site, options, demo=True)
    async with (
        _data_dir(settings) as data_dir,
        _broker(settings) as broker_url,
        _simulated_center(
            center,
            MqttEndpoint.parse(broker_url),
            options,
            clock,
            prefix=settings.topic_prefix(site.site.id),
            ca_file=settings.mqtt_ca_file,
            warmup=DEMO_WARMUP,
            port_for=lambda device: 0,  # free ports: the controller is told which
        ) as simulated,
    ):
        # Fresh staff and kiosk tokens for this run, unless tokens are configured.
        token = None if settings.api_tokens else secrets.token_urlsafe(18)
        kiosk = None if settings.api_tokens else secrets.token_urlsafe(18)
        tokens = (
            {SecretStr(token): [Scope.STAFF], SecretStr(kiosk): [Scope.KIOSK]}
            if token and kiosk
            else settings.api_tokens
        )
        demo_settings = settings.model_copy(
            update={"mqtt_url": SecretStr(broker_url), "api_tokens": tokens, "data_dir": data_dir}
        )
        service = ControllerService(
            demo_settings,
            site_with_ports(site, simulated.modbus_ports),
            clock,
            profiles=center.profiles,
        )
        ready = asyncio.Event()
        controller = asyncio.create_task(service.run(stop, ready), name="controller")
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait((controller, waiting), return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if ready.is_set():
            _announce(
                site, settings, service, broker_url, (token, kiosk), simulated.scenario, clock
            )
        parts = asyncio.create_task(simulated.wait(), name="simulators")
        done, _ = await asyncio.wait((controller, parts), return_when=asyncio.FIRST_COMPLETED)
        if parts in done:
            stop.set()
        else:
            parts.cancel()
        await controller
        if parts in done:
            parts.result()


@contextlib.asynccontextmanager
async def _data_dir(settings: Settings) -> AsyncIterator[Path]:
    """``CENTER_DATA_DIR`` when set; else a fresh directory for this run only.

    The simulated day starts anew each run; bookings, alarms and events from
    an earlier run's day would only confuse it.
    """
    if "data_dir" in settings.model_fields_set:
        yield settings.data_dir
        return
    with tempfile.TemporaryDirectory(prefix="centerctl-demo-") as directory:
        yield Path(directory)


@contextlib.asynccontextmanager
async def _broker(settings: Settings) -> AsyncIterator[str]:
    """The configured broker's URL when there is one, else an embedded broker's."""
    if settings.mqtt_url is not None:
        yield settings.mqtt_url.get_secret_value()
        return
    async with EmbeddedBroker() as broker:
        yield broker.url


def _announce(
    site: Site,
    settings: Settings,
    service: ControllerService,
    broker_url: str,
    tokens: tuple[str | None, str | None],
    scenario: str,
    clock: Clock,
) -> None:
    """The banner: where to look, and the tokens made for this run (staff, kiosk)."""
    token, kiosk = tokens
    host = settings.http_host if settings.http_host not in ("0.0.0.0", "::") else "127.0.0.1"
    base = f"http://{host}:{service.http_port}"
    lines = [
        "",
        f"  {site.site.name} ({site.site.name_en or site.site.id}): simulated center running",
        f"  scenario {scenario}, simulated time {clock.now():%Y-%m-%d %H:%M}",
        "",
        f"  Rooms:    {base}/api/rooms",
        f"  Devices:  {base}/api/devices",
        f"  Health:   {base}/api/health",
        f"  MQTT:     {MqttEndpoint.parse(broker_url).redacted()} (topics under "
        f"{settings.topic_prefix(site.site.id)}/)",
    ]
    if token:
        lines.append(f"  Staff token: {token}")
        lines.append(f'  e.g. curl -H "Authorization: Bearer {token}" {base}/api/rooms')
    if kiosk:
        lines.append(f"  Kiosk token: {kiosk} (for {base}/api/cabinets/<cabinet>/pickup)")
    else:
        lines.append("  Tokens: the ones in CENTER_API_TOKENS")
    lines += ["", "  Ctrl-C stops everything.", ""]
    print("\n".join(lines), flush=True)


async def _until(stop: asyncio.Event, simulated: SimulatedCenter) -> None:
    stopped = asyncio.create_task(stop.wait())
    parts = asyncio.create_task(simulated.wait())
    done, _ = await asyncio.wait((stopped, parts), return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    parts.cancel()
    if parts in done:
        parts.result()


def parse_start(text: str) -> time:
    """``--start 08:00``: the simulated time of day to begin at."""
    try:
        return time.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--start takes a time of day like 08:00, not {text!r}") from None
