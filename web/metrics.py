"""``GET /metrics`` in the Prometheus text format, and the HTTP latency it reports.

Each app has its own :class:`CollectorRegistry` under :data:`METRICS` (never
prometheus-client's global one), so two apps in one process, as in the tests,
never share or clash over a metric. The registry holds the request-latency
histogram fed by :func:`latency_middleware` and a
:class:`controller.metrics.CenterCollector` that reads the health report, the
live state and the active alarms at each scrape.
"""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from controller.metrics import CenterCollector, active_alarms_by_kind
from web.app_keys import HEALTH, STATE
from web.auth import requires
from web.openapi import operation
from web.services import SERVICES

METRICS = web.AppKey("metrics", CollectorRegistry)
METRICS_PATH = "/metrics"
# The API answers in milliseconds; the upper buckets catch a cabinet request
# waiting on its Modbus device and anything pathological.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def latency_middleware(registry: CollectorRegistry) -> Middleware:
    """Time every request into ``center_http_request_duration_seconds`` of ``registry``.

    Meant to be the outermost middleware, so it sees the status the client
    gets (after the error middleware) and the time the token check takes.
    Labels are the route's canonical path (``/api/rooms/{room}``), never the
    raw one, and the method folded to a known set, so a client cannot mint
    series. The wall clock is right here: this measures how long serving
    really took, which no injected clock models.
    """
    histogram = Histogram(
        "center_http_request_duration_seconds",
        "Time to answer an HTTP request, by method, route and status.",
        ("method", "route", "status"),
        registry=registry,
        buckets=LATENCY_BUCKETS,
    )

    @web.middleware
    async def record_latency(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as error:
            _observe(histogram, request, error.status, started)
            raise
        except Exception:
            _observe(histogram, request, 500, started)  # aiohttp answers it with a 500
            raise
        _observe(histogram, request, response.status, started)
        return response

    return record_latency


def route_of(request: web.Request) -> str:
    """The canonical path of the route that matched, or ``unmatched``."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def _observe(histogram: Histogram, request: web.Request, status: int, started: float) -> None:
    method = request.method if request.method in _METHODS else "other"
    histogram.labels(method, route_of(request), str(status)).observe(time.perf_counter() - started)


def add_routes(app: web.Application) -> None:
    """Register ``GET /metrics`` and the collector of the app's figures.

    Needs :data:`METRICS`, ``HEALTH``, ``STATE`` and ``SERVICES`` set (``create_app`` does).
    """
    alarms = app[SERVICES].alarms
    app[METRICS].register(
        CenterCollector(app[HEALTH], app[STATE], lambda: active_alarms_by_kind(alarms))
    )
    app.router.add_get(METRICS_PATH, get_metrics)


@requires(None)
@operation(
    "Counters and gauges for Prometheus",
    description=(
        "Prometheus text format 0.0.4: ingest counters, bad payloads by reason, device"
        " health, lock commands, alarms, time-series store and HTTP latency."
    ),
    responses={200: "the metrics"},
    tags=["meta"],
    media_type="text/plain",
)
async def get_metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(request.app[METRICS]),
        headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4},
    )
