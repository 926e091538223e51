"""The controller's figures as Prometheus metrics, read at scrape time.

Almost every figure already exists in ``ControllerService.health()``, so
:class:`CenterCollector` keeps no counters of its own: each scrape takes one
health report, the live device states and the active alarms by kind, and maps
them to metric families. Nothing is counted twice and nothing can drift from
``/api/health``.

Naming follows Prometheus conventions: a ``center_`` prefix, base units in the
name (``_seconds``, ``_bytes``), ``_total`` on counters, ``_timestamp_seconds``
on points in time. Labels stay low-cardinality: device, room, cabinet ids and
closed sets (reasons, kinds, states) only, never tokens, booking ids or free
text. A section that ``health()`` does not have (the time-series ``store``
before it exists, or with a stub report) simply yields no metrics, and a figure
that is not known yet (``None``) has no sample rather than a made-up zero.

Scrapes run on the event loop, where the SQLite connection behind the health
report lives; a scrape costs about what one ``GET /api/health`` does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.alarms import AlarmBook, AlarmState
from controller.state import LiveState
from drivers.payloads import BadPayloadReason

HealthSource = Callable[[], Mapping[str, Any]]
ActiveAlarms = Callable[[], Mapping[str, int]]

# More active alarms than this at once would be a site on fire in every sense;
# the same bound the cabinet alarms use for their own query.
_MAX_ACTIVE_ALARMS = 100_000
_HEALTH_STATES = ("ok", "degraded", "down")

# (metric name, help, path into the health report): one plain figure each.
_Plain = tuple[str, str, tuple[str, ...]]
_PLAIN_COUNTERS: tuple[_Plain, ...] = (
    (
        "center_mqtt_connects_total",
        "Successful connections to the MQTT broker since start.",
        ("mqtt", "connects"),
    ),
    (
        "center_mqtt_messages_received_total",
        "MQTT messages received on the controller's subscriptions, good or bad.",
        ("ingest", "messages"),
    ),
    (
        "center_mqtt_readings_total",
        "Device state messages decoded into readings.",
        ("ingest", "readings"),
    ),
    (
        "center_mqtt_availability_messages_total",
        "Device availability (online/offline) messages decoded.",
        ("ingest", "availability"),
    ),
    (
        "center_room_states_published_total",
        "Room states published to the retained room topics.",
        ("ingest", "room_states_published"),
    ),
    (
        "center_event_handler_errors_total",
        "Exceptions raised by event bus handlers (each one is a defect).",
        ("ingest", "event_handler_errors"),
    ),
    (
        "center_lock_commands_total",
        "LOCK/UNLOCK commands sent to door locks, retries included.",
        ("locks", "commands_sent"),
    ),
    (
        "center_lock_confirmations_total",
        "Lock commands confirmed by the lock's own state report.",
        ("locks", "confirmations"),
    ),
    (
        "center_webhooks_delivered_total",
        "Webhook deliveries the receiver accepted.",
        ("webhooks", "delivered"),
    ),
    (
        "center_webhooks_failed_attempts_total",
        "Webhook delivery attempts that failed (each is retried).",
        ("webhooks", "failed_attempts"),
    ),
    (
        "center_webhooks_dropped_total",
        "Webhook deliveries dropped (queue bound reached).",
        ("webhooks", "dropped"),
    ),
    (
        "center_store_points_written_total",
        "Time-series points the store accepted.",
        ("store", "points_written"),
    ),
    (
        "center_store_points_dropped_total",
        "Time-series points dropped, oldest first, past the spool's byte bound.",
        ("store", "points_dropped"),
    ),
    (
        "center_store_points_retried_total",
        "Time-series points written again after a failed attempt.",
        ("store", "points_retried"),
    ),
    (
        "center_store_points_rejected_total",
        "Time-series points the store rejected as data (set aside in spool/rejected.lp).",
        ("store", "points_rejected"),
    ),
)
_PLAIN_GAUGES: tuple[_Plain, ...] = (
    ("center_mqtt_connected", "1 while connected to the MQTT broker.", ("mqtt", "connected")),
    (
        "center_fire_latched",
        "1 while the fire latch holds every door unlocked.",
        ("access", "fire_latched"),
    ),
    (
        "center_fire_panel_alarm",
        "1 while the fire panel reports an alarm (no sample until it is heard).",
        ("access", "panel_alarm"),
    ),
    (
        "center_alarms_unacknowledged",
        "Open alarms nobody has acknowledged yet.",
        ("alarms", "unacknowledged"),
    ),
    (
        "center_alarms_active_critical",
        "Active alarms of critical severity.",
        ("alarms", "active_critical"),
    ),
    ("center_webhooks_pending", "Webhook deliveries waiting to be sent.", ("webhooks", "pending")),
    (
        "center_webhooks_oldest_pending_seconds",
        "Age of the oldest webhook delivery still waiting.",
        ("webhooks", "oldest_pending_seconds"),
    ),
    (
        "center_visitors_inside",
        "People inside now, as the entrance counters tell.",
        ("visitors", "today", "inside"),
    ),
    (
        "center_visitors_entries_today",
        "Entries counted today (site time zone; resets at midnight).",
        ("visitors", "today", "entries"),
    ),
    (
        "center_visitors_exits_today",
        "Exits counted today (site time zone; resets at midnight).",
        ("visitors", "today", "exits"),
    ),
    (
        "center_cabinet_throttled_kiosks",
        "Kiosk tokens locked out for too many wrong pickup codes now.",
        ("cabinets", "throttled_kiosks"),
    ),
    (
        "center_store_spool_points",
        "Time-series points waiting in the spool.",
        ("store", "spool_points"),
    ),
    ("center_store_spool_bytes", "Size of the spool on disk.", ("store", "spool_bytes")),
    (
        "center_store_spool_max_bytes",
        "The spool's byte bound (no sample without InfluxDB).",
        ("store", "spool_max_bytes"),
    ),
    (
        "center_store_write_lag_seconds",
        "Age of the oldest point not yet written to the store.",
        ("store", "write_lag_seconds"),
    ),
)


def active_alarms_by_kind(alarms: AlarmBook) -> dict[str, int]:
    """Active alarms counted by kind (``device_offline``, ``lock_unconfirmed``, ...)."""
    active = alarms.query(state=AlarmState.ACTIVE, limit=_MAX_ACTIVE_ALARMS)
    return dict(Counter(alarm.kind for alarm in active))


class CenterCollector(Collector):
    """Maps one health report per scrape, the live state and active alarms to metrics."""

    def __init__(self, health: HealthSource, state: LiveState, active_alarms: ActiveAlarms) -> None:
        self._health = health
        self._state = state
        self._active_alarms = active_alarms
        # An alarm kind once seen stays in the output at 0 after it clears, so a
        # graph shows the drop instead of a series that just ends.
        self._alarm_kinds: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        report = self._health()
        yield from _overall(report)
        for name, documentation, path in _PLAIN_COUNTERS:
            value = _figure(report, path)
            if value is not None:
                yield CounterMetricFamily(name, documentation, value=value)
        for name, documentation, path in _PLAIN_GAUGES:
            value = _figure(report, path)
            if value is not None:
                yield GaugeMetricFamily(name, documentation, value=value)
        yield _bad_payloads(report)
        yield from self._devices()
        yield from _modbus(_section(report, "modbus"))
        yield from _locks(_section(report, "locks"))
        yield self._alarms()
        yield from _capacity(_section(report, "capacity"))
        yield from _climate(_section(report, "climate"))
        yield from _cabinets(_section(report, "cabinets"))
        yield from _store(_section(report, "store"))

    def _devices(self) -> Iterator[Metric]:
        labels = ("device", "kind", "room")
        online = GaugeMetricFamily(
            "center_device_online",
            "1 online, 0 offline; no sample until the device is first heard of.",
            labels=labels,
        )
        last_seen = GaugeMetricFamily(
            "center_device_last_seen_timestamp_seconds",
            "When the device last sent a live reading (Unix time).",
            labels=labels,
        )
        by_health: Counter[str] = Counter({"online": 0, "offline": 0, "not_heard": 0})
        for device_state in self._state.devices.values():
            device = device_state.device
            values = (device.id, device.kind.value, device.room or "")
            if device_state.online is None:
                by_health["not_heard"] += 1
            else:
                by_health["online" if device_state.online else "offline"] += 1
                online.add_metric(values, 1.0 if device_state.online else 0.0)
            if device_state.last_seen is not None:
                last_seen.add_metric(values, device_state.last_seen.timestamp())
        devices = GaugeMetricFamily(
            "center_devices",
            "Devices of the site by health: online, offline, not_heard (yet).",
            labels=("health",),
        )
        for health, count in sorted(by_health.items()):
            devices.add_metric((health,), count)
        yield online
        yield last_seen
        yield devices

    def _alarms(self) -> Metric:
        active = self._active_alarms()
        self._alarm_kinds.update(active)
        family = GaugeMetricFamily(
            "center_alarms_active",
            "Active alarms by kind; a kind seen since start stays at 0 once cleared.",
            labels=("kind",),
        )
        for kind in sorted(self._alarm_kinds):
            family.add_metric((kind,), active.get(kind, 0))
        return family


def _overall(report: Mapping[str, Any]) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "center_build_info",
        "Always 1; the labels say which controller version runs for which site.",
        labels=("version", "site"),
    )
    info.add_metric((str(report.get("version", "")), str(report.get("site", ""))), 1)
    yield info
    yield _state_set(
        "center_status",
        "The controller's health: 1 for the current status, 0 for the others.",
        report.get("status"),
    )
    started = _timestamp(report.get("started"))
    if started is not None:
        yield GaugeMetricFamily(
            "center_start_time_seconds", "When the controller started (Unix time).", value=started
        )


def _bad_payloads(report: Mapping[str, Any]) -> Metric:
    """Every reason always present (0 until seen), so ``increase()`` sees the first one."""
    by_reason: dict[str, float] = {reason.value: 0.0 for reason in BadPayloadReason}
    ingest = _section(report, "ingest") or {}
    by_device = ingest.get("bad_payloads_by_device")
    if isinstance(by_device, Mapping):
        for reasons in by_device.values():
            if isinstance(reasons, Mapping):
                for reason, count in reasons.items():
                    key = str(reason)
                    by_reason[key] = by_reason.get(key, 0.0) + (_number(count) or 0.0)
    family = CounterMetricFamily(
        "center_bad_payloads_total",
        "Messages rejected by reason (per device in /api/health).",
        labels=("reason",),
    )
    for reason, count in sorted(by_reason.items()):
        family.add_metric((reason,), count)
    return family


def _modbus(modbus: Mapping[str, Any] | None) -> Iterator[Metric]:
    devices = _mapping(modbus, "devices")
    if devices is None:
        return
    polls = CounterMetricFamily(
        "center_modbus_polls_total", "Modbus polls that succeeded.", labels=("device",)
    )
    failures = CounterMetricFamily(
        "center_modbus_poll_failures_total", "Modbus polls that failed.", labels=("device",)
    )
    late = CounterMetricFamily(
        "center_modbus_late_polls_total",
        "Good polls that came over 10 % after their scheduled slot.",
        labels=("device",),
    )
    in_a_row = GaugeMetricFamily(
        "center_modbus_consecutive_failures",
        "Modbus polls failed in a row now (0 after a good one).",
        labels=("device",),
    )
    for device, figures in sorted(devices.items()):
        if not isinstance(figures, Mapping):
            continue
        _add(polls, (device,), figures.get("polls"))
        _add(failures, (device,), figures.get("failures"))
        _add(late, (device,), figures.get("late"))
        _add(in_a_row, (device,), figures.get("consecutive_failures"))
    yield from (polls, failures, late, in_a_row)


def _locks(locks: Mapping[str, Any] | None) -> Iterator[Metric]:
    targets = _mapping(locks, "locks")
    if targets is None:
        return
    family = GaugeMetricFamily(
        "center_lock_confirmed",
        "1 when the lock reports the state last commanded, 0 while it does not (yet);"
        " no sample before its first command.",
        labels=("device",),
    )
    for device, target in sorted(targets.items()):
        if isinstance(target, Mapping):
            _add(family, (device,), target.get("confirmed"))
    yield family


def _capacity(capacity: Mapping[str, Any] | None) -> Iterator[Metric]:
    over = capacity.get("over_capacity") if capacity is not None else None
    if isinstance(over, Sequence):
        yield GaugeMetricFamily(
            "center_rooms_over_capacity",
            "Rooms holding more people than their capacity now.",
            value=len(over),
        )


def _climate(climate: Mapping[str, Any] | None) -> Iterator[Metric]:
    units = _mapping(climate, "air_conditioners")
    if units is None:
        return
    family = GaugeMetricFamily(
        "center_ac_consecutive_command_failures",
        "Commands to the air conditioner that failed in a row now.",
        labels=("device",),
    )
    for device, unit in sorted(units.items()):
        if isinstance(unit, Mapping):
            _add(family, (device,), unit.get("failed_commands_in_a_row"))
    yield family


def _cabinets(cabinets: Mapping[str, Any] | None) -> Iterator[Metric]:
    by_id = _mapping(cabinets, "cabinets")
    if by_id is None:
        return
    compartments = GaugeMetricFamily(
        "center_cabinet_compartments",
        "Compartments by state: free, holding (a deposit), expired (not collected in time).",
        labels=("cabinet", "state"),
    )
    open_doors = GaugeMetricFamily(
        "center_cabinet_open_doors", "Compartment doors open now.", labels=("cabinet",)
    )
    pickups = GaugeMetricFamily(
        "center_cabinet_pickups_today",
        "Deposits collected today (site time zone; resets at midnight).",
        labels=("cabinet",),
    )
    for cabinet, figures in sorted(by_id.items()):
        if not isinstance(figures, Mapping):
            continue
        for state in ("free", "holding", "expired"):
            _add(compartments, (cabinet, state), figures.get(state))
        _add(open_doors, (cabinet,), figures.get("open_doors"))
        _add(pickups, (cabinet,), figures.get("pickups_today"))
    yield from (compartments, open_doors, pickups)


def _store(store: Mapping[str, Any] | None) -> Iterator[Metric]:
    """The time-series store's state (its plain figures are in the tables above)."""
    if store is None:
        return
    status = store.get("status")
    yield GaugeMetricFamily(
        "center_store_up",
        "1 while the time-series store takes points (ok or degraded), 0 when down.",
        value=0.0 if status == "down" else 1.0,
    )
    yield _state_set(
        "center_store_status",
        "The store's health: 1 for the current status, 0 for the others.",
        status,
    )
    info = GaugeMetricFamily(
        "center_store_info",
        "Always 1; the label says which backend stores the time series.",
        labels=("backend",),
    )
    info.add_metric((str(store.get("backend", "")),), 1)
    yield info
    last_write = _timestamp(store.get("last_write"))
    if last_write is not None:
        yield GaugeMetricFamily(
            "center_store_last_write_timestamp_seconds",
            "When the store last accepted a batch (Unix time).",
            value=last_write,
        )


# -- reading the report --------------------------------------------------------


def _state_set(name: str, documentation: str, current: object) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=("status",))
    for state in _HEALTH_STATES:
        family.add_metric((state,), 1.0 if current == state else 0.0)
    return family


def _section(report: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = report.get(key)
    return value if isinstance(value, Mapping) else None


def _mapping(section: Mapping[str, Any] | None, key: str) -> Mapping[str, Any] | None:
    return _section(section, key) if section is not None else None


def _figure(report: Mapping[str, Any], path: tuple[str, ...]) -> float | None:
    value: object = report
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return _number(value)


def _number(value: object) -> float | None:
    """A figure as a float; None for anything that is not a number (or a flag)."""
    if isinstance(value, bool | int | float):
        return float(value)
    return None


def _add(
    family: GaugeMetricFamily | CounterMetricFamily, labels: Sequence[str], value: object
) -> None:
    number = _number(value)
    if number is not None:
        family.add_metric(labels, number)


def _timestamp(value: object) -> float | None:
    """An RFC 3339 time from the report as Unix time; None when there is none."""
    return datetime.fromisoformat(value).timestamp() if isinstance(value, str) else None
