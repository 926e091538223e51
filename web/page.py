"""The status page: its HTML, its assets, the staff login and what the page asks first.

The page is plain files under ``web/static`` (HTML, CSS, JavaScript modules; no
build step, nothing from the internet) served by the controller itself. It
needs a login: a person types an API token once and gets a session cookie
(HttpOnly, SameSite=Strict, ending with the session; ``controller/sessions.py``).
A token with the ``staff`` scope gives the full page, a ``read`` token a
read-only one. With no tokens configured at all the API is open and so is
the page.

``GET /api/session`` tells the page who it is (scopes, the CSRF token to send
with changes) and ``GET /api/site`` what the building looks like (rooms with
their tile on the floor map, devices, cabinets, air conditioners).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from controller.settings import Scope
from controller.site import DeviceKind
from controller.site_layout import floor_plan
from web.app_keys import SITE
from web.auth import (
    AUTH,
    CSRF_HEADER,
    IDENTITY,
    SESSION_COOKIE,
    AuthError,
    Identity,
    requires,
    same_origin,
)
from web.errors import ApiError
from web.openapi import operation
from web.services import SERVICES

STATIC_DIR = Path(__file__).resolve().parent / "static"
# No inline script or style, nothing from elsewhere: a page that only ever runs
# its own files cannot be turned against the staff who keep it open.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
MAX_TOKEN_LENGTH = 512
LOGIN_FAILURES = 10  # wrong tokens from one address within LOGIN_WINDOW ...
LOGIN_WINDOW = 15 * 60.0
LOGIN_LOCKOUT = 15 * 60.0  # ... lock that address out of the login this long


@dataclass
class LoginGuard:
    """Slows down guessing tokens at the login form: per address, like the kiosk's codes."""

    failures: dict[str, collections.deque[float]] = field(default_factory=dict)
    locked_until: dict[str, float] = field(default_factory=dict)

    def locked(self, address: str, now: float) -> bool:
        until = self.locked_until.get(address)
        if until is not None and now >= until:
            del self.locked_until[address]
            return False
        return until is not None

    def failed(self, address: str, now: float) -> None:
        recent = self.failures.setdefault(address, collections.deque())
        recent.append(now)
        while recent and now - recent[0] > LOGIN_WINDOW:
            recent.popleft()
        if len(recent) >= LOGIN_FAILURES:
            self.locked_until[address] = now + LOGIN_LOCKOUT
            del self.failures[address]

    def succeeded(self, address: str) -> None:
        self.failures.pop(address, None)


LOGIN_GUARD = web.AppKey("login_guard", LoginGuard)
PAGES = web.AppKey("pages", dict[str, bytes])


def add_routes(app: web.Application) -> None:
    app[LOGIN_GUARD] = LoginGuard()
    app[PAGES] = {name: (STATIC_DIR / f"{name}.html").read_bytes() for name in ("index", "login")}
    app.router.add_get("/", get_page)
    app.router.add_get("/login", get_login)
    app.router.add_post("/login", post_login)
    app.router.add_post("/logout", post_logout)
    app.router.add_get("/api/session", get_session)
    app.router.add_get("/api/site", get_site)
    app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
    app.on_response_prepare.append(_security_headers)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.content_type == "text/html":
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Frame-Options", "DENY")


def _html(request: web.Request, name: str) -> web.Response:
    return web.Response(
        body=request.app[PAGES][name],
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


def _identity(request: web.Request) -> Identity | None:
    try:
        return request.app[AUTH].identify(request)
    except AuthError:
        return None


@requires(None)
@operation(
    "The status page (logs in first)",
    responses={200: "the page", 303: "to /login without a session"},
    tags=["page"],
    media_type="text/html",
)
async def get_page(request: web.Request) -> web.StreamResponse:
    identity = _identity(request)
    if identity is None or Scope.READ not in identity.scopes:
        raise web.HTTPSeeOther("/login")
    return _html(request, "index")


@requires(None)
@operation(
    "The staff login form",
    responses={200: "the form", 303: "to / when already logged in"},
    tags=["page"],
    media_type="text/html",
)
async def get_login(request: web.Request) -> web.StreamResponse:
    identity = _identity(request)
    if identity is not None and identity.via != "token" and Scope.READ in identity.scopes:
        raise web.HTTPSeeOther("/")
    return _html(request, "login")


@requires(None)
@operation(
    "Log in with an API token (form field `token`); sets the session cookie",
    description=(
        "A form post (`application/x-www-form-urlencoded`). On success a 303 to `/` "
        "with the `center_session` cookie; otherwise a 303 back to `/login?error=...` "
        "(`invalid`, `scope`: the token cannot open the page, `locked`: too many wrong "
        "tokens from this address, `origin`)."
    ),
    responses={303: "to / (logged in) or back to /login?error=..."},
    tags=["page"],
    media_type="text/html",
)
async def post_login(request: web.Request) -> web.StreamResponse:
    auth = request.app[AUTH]
    guard = request.app[LOGIN_GUARD]
    now = request.app[SERVICES].clock.monotonic()
    address = request.remote or "unknown"
    origin = request.headers.get("Origin")
    if origin is not None and not same_origin(request, origin):
        raise _back_to_login("origin")
    if auth.open or auth.sessions is None:
        raise web.HTTPSeeOther("/")
    if guard.locked(address, now):
        raise _back_to_login("locked")
    form = await request.post()
    token = form.get("token")
    token = token.strip() if isinstance(token, str) else ""
    scopes = auth.scopes_of_token(token) if 0 < len(token) <= MAX_TOKEN_LENGTH else None
    if scopes is None:
        guard.failed(address, now)
        raise _back_to_login("invalid")
    if Scope.READ not in scopes:
        raise _back_to_login("scope")
    guard.succeeded(address)
    session_id, _ = auth.sessions.open(token, scopes & {Scope.READ, Scope.STAFF})
    response = web.HTTPSeeOther("/")
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=int(auth.sessions.max_age.total_seconds()),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    raise response


def _back_to_login(error: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther("/login?" + urlencode({"error": error}))


@requires(None)
@operation(
    "End the page's session",
    description="Needs the session's `X-CSRF-Token` header; clears the cookie.",
    responses={204: "logged out", 403: "no CSRF token"},
    tags=["page"],
)
async def post_logout(request: web.Request) -> web.StreamResponse:
    auth = request.app[AUTH]
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id is not None and auth.sessions is not None:
        try:
            identity = auth.identify(request)  # checks the CSRF token of the session
        except AuthError as error:
            if error.status == 403:
                raise ApiError(error.status, error.code, error.message) from None
            identity = None  # already ended: logging out again is fine
        if identity is not None and identity.session_id is not None:
            auth.sessions.close(identity.session_id)
    response = web.Response(status=204)
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


@requires(Scope.READ)
@operation(
    "Who the page is logged in as",
    description=(
        "`scopes`, `via` (`session`, `token` or `open`), and for a session the "
        f"`csrf` token to send as `{CSRF_HEADER}` with every change, and when it ends."
    ),
    responses={200: "the session"},
    tags=["page"],
)
async def get_session(request: web.Request) -> web.Response:
    identity = request[IDENTITY]
    session = identity.session
    auth = request.app[AUTH]
    body: dict[str, Any] = {
        "via": identity.via,
        "scopes": sorted(str(scope) for scope in identity.scopes),
        "principal": identity.principal,
        "csrf": session.csrf if session else None,
        "expires": session.expires.isoformat() if session else None,
        "idle_minutes": (
            int(auth.sessions.idle.total_seconds() // 60) if session and auth.sessions else None
        ),
    }
    return web.json_response(body)


@requires(Scope.READ)
@operation(
    "The building as the status page draws it",
    description=(
        "The site (name, time zone, hours), every room with its tile on the floor map "
        "(`position`: floor, x, y, w, h in grid cells, `placed` false when the site file "
        "gave none and the room went on a grid), every device, the cabinets and the air "
        "conditioners."
    ),
    responses={200: "the site"},
    tags=["page"],
)
async def get_site(request: web.Request) -> web.Response:
    site = request.app[SITE]
    plan = floor_plan(site)
    devices = site.devices
    return web.json_response(
        {
            "id": site.site.id,
            "name": site.site.name,
            "name_en": site.site.name_en,
            "timezone": site.site.timezone,
            "hours": {
                "open": site.site.hours.open.strftime("%H:%M"),
                "close": site.site.hours.close.strftime("%H:%M"),
            },
            "floors": sorted({tile.floor for tile in plan.values()}),
            "rooms": [
                {
                    "id": room.id,
                    "name": room.name,
                    "name_en": room.name_en,
                    "capacity": room.capacity,
                    "bookable": room.bookable,
                    "always_open": room.always_open,
                    "position": plan[room.id].to_json(),
                    "devices": [device.id for device in devices if device.room == room.id],
                }
                for room in site.rooms
            ],
            "devices": [
                {
                    "id": device.id,
                    "kind": device.kind.value,
                    "room": device.room,
                    "name": device.name,
                    "protocol": device.protocol.value if device.protocol else None,
                }
                for device in devices
            ],
            "cabinets": [
                device.id for device in devices if device.kind is DeviceKind.DOCUMENT_CABINET
            ],
            "air_conditioners": [
                device.id for device in devices if device.kind is DeviceKind.AIR_CONDITIONER
            ],
        }
    )
