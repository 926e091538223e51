"""The composition root: builds every part, wires them on the bus, runs and stops them.

Nothing else in the project constructs a driver, a rule or the web app. The
flow is one direction: MQTT link -> ingest (decode) -> bus -> live state ->
bus -> room publisher / web / (later) rules and storage.

Start order is the dependency order and stop is its reverse (an
``AsyncExitStack``), with the whole stop bounded by ``shutdown_timeout`` so a
hung broker can never keep a SIGTERM from finishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web

from controller.access_parts import build_access
from controller.alarms import AlarmBook
from controller.bus import EventBus
from controller.cabinet import CabinetService
from controller.capacity import CapacityGuard
from controller.climate import ClimateController
from controller.clock import Clock
from controller.command_alarms import CommandAlarms
from controller.database import open_database
from controller.device_health import DeviceHealth
from controller.diagnostics import BadPayloadLog
from controller.event_log import EventLog
from controller.ingest import MqttIngest
from controller.modbus_poller import ModbusDevices
from controller.mqtt_link import MqttLink
from controller.reports import Reports
from controller.room_publisher import RoomStatePublisher
from controller.sessions import SessionStore
from controller.settings import Settings
from controller.silence import SilenceWatch
from controller.site import Site
from controller.state import LiveState
from controller.timeseries.embedded import HistoryReader
from controller.timeseries.influx import InfluxSender
from controller.timeseries.recorder import PointRecorder
from controller.timeseries.writer import InfluxConfig, TimeSeriesWriter, WriterOptions
from controller.visitors import VisitorCounter
from controller.webhooks import WebhookQueue
from drivers.modbus_profile import Profile, load_profiles
from web.app import create_app
from web.auth import TokenAuth
from web.services import Services
from web.stream import StreamHub


class ConfigurationError(Exception):
    """Settings that cannot work, explained for the operator."""


class ControllerService:
    def __init__(
        self,
        settings: Settings,
        site: Site,
        clock: Clock,
        *,
        profiles: Mapping[str, Profile] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """``profiles`` are the site's checked device profiles (the bundled ones if None)."""
        endpoint = settings.mqtt_endpoint()
        if endpoint is None:
            raise ConfigurationError(
                "CENTER_MQTT_URL is not set; point it at the broker, e.g. mqtt://127.0.0.1:1883"
            )
        self._settings = settings
        self._site = site
        self._clock = clock
        self._logger = logger or logging.getLogger("controller")
        site_id = site.site.id
        self.prefix = settings.topic_prefix(site_id)

        self.bus = EventBus()
        self.state = LiveState(site, self.bus)
        self.ingest = MqttIngest(site, self.prefix, self.bus, clock)
        self.room_publisher = RoomStatePublisher(
            self.state, self.bus, self.prefix, [room.id for room in site.rooms]
        )
        self.link = MqttLink(
            endpoint=endpoint,
            client_id=settings.client_id(site_id),
            prefix=self.prefix,
            ingest=self.ingest,
            rooms=self.room_publisher,
            clock=clock,
            keepalive=settings.mqtt_keepalive,
            ca_file=settings.mqtt_ca_file,
            backoff_min=settings.mqtt_reconnect_min,
            backoff_max=settings.mqtt_reconnect_max,
        )
        self.bad_payloads = BadPayloadLog(
            self.bus,
            frozenset(device.id for device in site.devices),
            report=self.link.publish_event,
        )
        # Durable state: written before the actions it justifies (see controller.database).
        self.db = open_database(settings.data_dir)
        self.events = EventLog(self.db, clock)
        self.events.listen(lambda event: self.link.publish_event(event.to_json()))
        self.alarms = AlarmBook(self.db, self.events, clock)
        self.command_alarms = CommandAlarms(self.bus, self.alarms)
        try:
            self.webhooks = WebhookQueue(
                self.db,
                clock,
                url=settings.webhook_url,
                secret=(
                    settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
                ),
                site_id=site_id,
            )
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
        parts = build_access(
            site,
            self.prefix,
            self.state,
            self.bus,
            clock,
            db=self.db,
            events=self.events,
            alarms=self.alarms,
            webhooks=self.webhooks,
        )
        self.access_store = parts.access_store
        self.booking_store = parts.booking_store
        self.locks = parts.locks
        self.access = parts.access
        self.bookings = parts.bookings
        self.link.add_command_listener(self.locks)
        profiles = profiles if profiles is not None else load_profiles()
        unknown = sorted(
            {device.profile for device in site.devices if device.profile} - profiles.keys()
        )
        if unknown:
            raise ConfigurationError(f"no device profile named {', '.join(unknown)}")
        self.modbus = ModbusDevices(site, profiles, self.bus, clock)
        self.silence = SilenceWatch(
            self.state, self.bus, clock, missed=site.rules.offline_after_missed
        )
        self.device_health = DeviceHealth(self.state, self.bus, self.alarms)
        self.visitors = VisitorCounter(site, self.bus, clock, db=self.db, events=self.events)
        self.capacity = CapacityGuard(
            site, self.state, self.bus, clock, alarms=self.alarms, webhooks=self.webhooks
        )
        self.climate = ClimateController(
            site,
            self.state,
            self.bus,
            clock,
            db=self.db,
            events=self.events,
            alarms=self.alarms,
            writer=self.modbus,
        )
        self.cabinets = CabinetService(
            site,
            self.state,
            self.bus,
            clock,
            db=self.db,
            events=self.events,
            alarms=self.alarms,
            writer=self.modbus,
        )
        self.timeseries = self._timeseries_writer(settings, clock)
        self.recorder = PointRecorder(site, self.state, self.bus, self.timeseries.add)
        self.events.listen(self.recorder.on_logged_event)
        self.reports = Reports(
            site, clock, self.bookings, HistoryReader(self.timeseries.timeseries_path)
        )
        self.sessions = SessionStore(
            self.db,
            clock,
            idle=timedelta(hours=settings.session_idle_hours),
            max_age=timedelta(days=settings.session_max_days),
        )
        self.auth = TokenAuth(settings.scopes_by_token(), self.sessions)
        self.app = create_app(
            site=site,
            state=self.state,
            health=self.health,
            auth=self.auth,
            services=Services(
                bookings=self.bookings,
                access=self.access,
                events=self.events,
                alarms=self.alarms,
                clock=clock,
                visitors=self.visitors,
                climate=self.climate,
                cabinets=self.cabinets,
                reports=self.reports,
            ),
            stream=StreamHub(self.bus, self.events),
            version=_version(),
        )
        self._started: datetime | None = None
        self.http_port: int | None = None

    def _timeseries_writer(self, settings: Settings, clock: Clock) -> TimeSeriesWriter:
        return TimeSeriesWriter(
            settings.data_dir,
            clock,
            alarms=self.alarms,
            events=self.events,
            influx=_influx_config(settings),
            spool_max_bytes=settings.spool_max_bytes,
            options=WriterOptions(
                batch_size=settings.influx_batch_size,
                flush_interval=settings.influx_flush_interval,
                retention=timedelta(days=settings.store_retention_days),
                history=timedelta(days=settings.store_history_days),
                retry_max=settings.influx_retry_max,
                stop_timeout=settings.shutdown_timeout,
            ),
            log_format=settings.log_format,
        )

    def health(self) -> dict[str, Any]:
        """Liveness and readiness, per part: ``ok``, ``degraded`` or ``down``."""
        devices = self.device_health.summary()
        mqtt = self.link.status.to_json()
        store = self.timeseries.status()
        if not self.link.status.connected:
            status = "down"
        elif devices["offline"] or store["status"] != "ok":
            status = "degraded"
        else:
            status = "ok"
        return {
            "status": status,
            "site": self._site.site.id,
            "version": _version(),
            "started": self._started.isoformat() if self._started else None,
            "mqtt": mqtt,
            "devices": devices,
            "ingest": {
                **self.ingest.stats.to_json(),
                "bad_payloads_by_device": self.bad_payloads.counts(),
                "room_states_published": self.room_publisher.published,
                "event_handler_errors": self.bus.handler_errors,
            },
            "modbus": self.modbus.status(),
            "store": store,
            "access": self.access.status(),
            "locks": self.locks.status(),
            "alarms": self.alarms.counts(),
            "webhooks": self.webhooks.status(),
            "visitors": self.visitors.status(),
            "capacity": self.capacity.status(),
            "climate": self.climate.status(),
            "cabinets": self.cabinets.status(),
        }

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set, then shut down within the configured deadline."""
        self._started = self._clock.now()
        async with AsyncExitStack() as stack:
            self.state.start()
            stack.callback(self.state.stop)
            self.room_publisher.start()
            stack.callback(self.room_publisher.stop)
            self.bad_payloads.start()
            stack.callback(self.bad_payloads.stop)
            self.command_alarms.start()
            stack.callback(self.command_alarms.stop)
            stack.callback(self.db.close)
            pruned = self.events.prune()
            if pruned:
                self._logger.info("pruned %d events older than the event log keeps", pruned)
            self.locks.start()
            stack.callback(self.locks.stop)
            self.access.start()
            stack.callback(self.access.stop)
            self.access.reconcile()
            # After access: a door decision never waits behind the services below.
            for part in (
                self.device_health,
                self.visitors,
                self.capacity,
                self.climate,
                self.cabinets,
            ):
                part.start()
                stack.callback(part.stop)
            # Points are recorded from here on; the writer stops after the recorder.
            self.timeseries.start()
            stack.push_async_callback(self.timeseries.stop)
            self.recorder.start(self.booking_store.unfinished(), self._clock.now())
            stack.callback(self.recorder.stop)
            if self.auth.open:
                self._logger.warning(
                    "no CENTER_API_TOKENS configured: "
                    "the HTTP API is open to anyone who can reach it"
                )
            await stack.enter_async_context(self._http())
            link_task = asyncio.create_task(self.link.run(), name="mqtt-link")
            workers = [
                asyncio.create_task(self.silence.run(), name="silence-watch"),
                asyncio.create_task(self.modbus.run(), name="modbus"),
                asyncio.create_task(self.locks.run(), name="lock-commands"),
                asyncio.create_task(self.access.run(), name="access-rules"),
                asyncio.create_task(self.webhooks.run(), name="webhooks"),
                asyncio.create_task(self.visitors.run(), name="visitors"),
                asyncio.create_task(self.climate.run(), name="climate"),
                asyncio.create_task(self.cabinets.run(), name="cabinets"),
                asyncio.create_task(self.timeseries.run(), name="timeseries"),
            ]
            stack.push_async_callback(self._stop_tasks, link_task, workers)
            if ready is not None:
                ready.set()
            stopped = asyncio.create_task(stop.wait())
            running: set[asyncio.Task[Any]] = {stopped, link_task, *workers}
            while stopped in running and link_task in running:
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {stopped}:
                    # A part that failed raises its error; one with nothing to do
                    # (no Modbus devices, no webhook URL) may end, and the rest go on.
                    task.result()
            stopped.cancel()
            self._logger.info("stopping")

    async def _stop_tasks(
        self, link_task: asyncio.Task[None], workers: list[asyncio.Task[None]]
    ) -> None:
        for worker in workers:
            worker.cancel()
        self.link.stop()
        try:
            async with asyncio.timeout(self._settings.shutdown_timeout):
                await asyncio.gather(link_task, return_exceptions=False)
        except TimeoutError:
            self._logger.error(
                "MQTT link did not stop within %.1f s", self._settings.shutdown_timeout
            )
            link_task.cancel()
        if workers:
            # Bounded like the link: a part that ignores its cancel must not keep
            # SIGTERM from finishing (the process exits and takes it along).
            _, stuck = await asyncio.wait(workers, timeout=self._settings.shutdown_timeout)
            for worker in stuck:
                self._logger.error(
                    "%s did not stop within %.1f s",
                    worker.get_name(),
                    self._settings.shutdown_timeout,
                )
        for worker in workers:
            if worker.done():
                with contextlib.suppress(asyncio.CancelledError):
                    worker.result()
        with contextlib.suppress(asyncio.CancelledError):
            await link_task

    @contextlib.asynccontextmanager
    async def _http(self) -> AsyncIterator[None]:
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._settings.http_host, self._settings.http_port)
            await site.start()
            self.http_port = _bound_port(runner)
            self._logger.info(
                "HTTP API on http://%s:%s/api/health",
                self._settings.http_host,
                self.http_port,
            )
            yield
        finally:
            await runner.cleanup()


def _influx_config(settings: Settings) -> InfluxConfig | None:
    """Where points go, checked now; None for the embedded store (no CENTER_INFLUX_URL)."""
    if not settings.influx_url:
        return None
    if not settings.influx_bucket:
        raise ConfigurationError(
            "CENTER_INFLUX_URL is set but CENTER_INFLUX_BUCKET is not; name the bucket"
        )
    config = InfluxConfig(
        url=settings.influx_url,
        token=settings.influx_token.get_secret_value() if settings.influx_token else None,
        org=settings.influx_org,
        bucket=settings.influx_bucket,
        timeout=settings.influx_timeout,
    )
    try:  # the store process builds its own; a bad URL is a setting's fault, said at start
        InfluxSender(
            url=config.url,
            token=config.token,
            org=config.org,
            bucket=config.bucket,
            timeout=config.timeout,
        ).close()
    except ValueError as error:
        raise ConfigurationError(f"CENTER_INFLUX_URL: {error}") from None
    return config


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None


@functools.cache
def _version() -> str:
    try:
        return version("center-controller")
    except PackageNotFoundError:
        return "unknown"
