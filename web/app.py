"""The HTTP API and the status page: ``create_app`` builds it from its parts.

Handlers read live state through objects under typed ``AppKey``s; nothing
here reaches into globals, so a test builds an app around any state it likes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from controller.settings import Scope
from controller.site import Site
from controller.state import LiveState
from web import access, bookings, cabinets, climate, metrics, page, reports, visitors
from web.app_keys import HEALTH, SITE, STATE, HealthReport
from web.auth import AUTH, TokenAuth, requires
from web.errors import ApiError, error_response
from web.openapi import add_openapi_route, operation
from web.rooms import room_json
from web.services import SERVICES, Services
from web.stream import STREAM_HUB, StreamHub
from web.stream import add_routes as add_stream_routes

MAX_BODY_BYTES = 64 * 1024


def create_app(
    *,
    site: Site,
    state: LiveState,
    health: HealthReport,
    auth: TokenAuth,
    services: Services,
    stream: StreamHub | None = None,
    version: str = "dev",
) -> web.Application:
    registry = CollectorRegistry()  # this app's own: never prometheus-client's global one
    app = web.Application(
        middlewares=[metrics.latency_middleware(registry), _json_errors, auth.middleware],
        client_max_size=MAX_BODY_BYTES,
    )
    app[metrics.METRICS] = registry
    app[SITE] = site
    app[STATE] = state
    app[HEALTH] = health
    app[SERVICES] = services
    app[AUTH] = auth
    if stream is not None:
        app[STREAM_HUB] = stream
    app.router.add_get("/api/health", get_health)
    app.router.add_get("/api/rooms", get_rooms)
    app.router.add_get("/api/rooms/{room}", get_room)
    app.router.add_get("/api/devices", get_devices)
    bookings.add_routes(app)
    access.add_routes(app)
    visitors.add_routes(app)
    climate.add_routes(app)
    cabinets.add_routes(app)
    reports.add_routes(app)
    metrics.add_routes(app)
    add_stream_routes(app)
    page.add_routes(app)
    add_openapi_route(
        app,
        title="center-controller API",
        version=version,
        description="Rooms, bookings, doors, alarms and events of one community service center.",
    )
    return app


@requires(None)
@operation(
    "Liveness and readiness, per part",
    responses={200: "ok or degraded", 503: "down (no MQTT connection)"},
    tags=["meta"],
)
async def get_health(request: web.Request) -> web.Response:
    report = request.app[HEALTH]()
    status = 503 if report.get("status") == "down" else 200
    return web.json_response(report, status=status)


@requires(Scope.READ)
@operation("Every room with its live state", responses={200: "rooms"}, tags=["rooms"])
async def get_rooms(request: web.Request) -> web.Response:
    site = request.app[SITE]
    state = request.app[STATE]
    return web.json_response(
        {
            "site": {
                "id": site.site.id,
                "name": site.site.name,
                "name_en": site.site.name_en,
                "timezone": site.site.timezone,
                "state": state.site_state.to_json(),
            },
            "rooms": [
                room_json(room, state, request.app[SERVICES], with_devices=False)
                for room in site.rooms
            ],
        }
    )


@requires(Scope.READ)
@operation("One room with its devices", responses={200: "the room"}, tags=["rooms"])
async def get_room(request: web.Request) -> web.Response:
    site = request.app[SITE]
    room = site.room_by_id.get(request.match_info["room"])
    if room is None:
        return error_response(
            404, "not_found", "no such room", {"room": request.match_info["room"]}
        )
    return web.json_response(
        room_json(room, request.app[STATE], request.app[SERVICES], with_devices=True)
    )


@requires(Scope.READ)
@operation(
    "Every device with its health and last reading", responses={200: "devices"}, tags=["devices"]
)
async def get_devices(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response({"devices": [device.to_json() for device in state.devices.values()]})


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    """Routing and size errors in the API's error shape instead of aiohttp's HTML."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as error:
        return error_response(error.status, error.code, error.message, error.details)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = {
            404: "not_found",
            405: "method_not_allowed",
            413: "too_large",
            400: "malformed",
        }.get(error.status, "http_error")
        if error.status == 413:
            response = error_response(
                413, code, "the request body is over 64 KiB", {"limit_bytes": MAX_BODY_BYTES}
            )
        else:
            response = error_response(error.status, code, error.reason)
        if "Allow" in error.headers:
            response.headers["Allow"] = error.headers["Allow"]
        return response
