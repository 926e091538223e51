"""Bearer-token authentication with scopes, and the status page's sessions.

Each route declares the scope it needs with :func:`requires`; the middleware
checks the ``Authorization: Bearer`` token against the configured tokens in
constant time, or, without that header, the session cookie the status page's
login set (``controller/sessions.py``). With no tokens configured the API is open and the controller
warns about it at start: a fresh install must be reachable before anyone has
written a token, but never silently so.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from controller.sessions import Session, SessionStore, token_hash
from controller.settings import Scope
from web.errors import error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SCOPE_ATTRIBUTE = "__required_scope__"


def requires(scope: Scope | None) -> Callable[[Handler], Handler]:
    """Declare the scope a handler needs (None: open, e.g. health checks)."""

    def mark(handler: Handler) -> Handler:
        setattr(handler, _SCOPE_ATTRIBUTE, scope)
        return handler

    return mark


def required_scope(handler: Any) -> Scope | None:
    return getattr(handler, _SCOPE_ATTRIBUTE, None)


SESSION_COOKIE = "center_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is asking: their scopes, their fingerprint for the event log, and how."""

    scopes: frozenset[Scope]
    principal: str
    via: str  # "token" (a bearer header), "session" (the page's cookie) or "open"
    session_id: str | None = None
    session: Session | None = None


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class TokenAuth:
    """Bearer tokens for programs; for people, a session cookie opened with a token.

    A cookie-authenticated request that changes something must carry the
    session's CSRF token in ``X-CSRF-Token``, and, when the browser names an
    ``Origin``, come from this server's own: another site's page can make the
    browser send the cookie (SameSite=Strict already stops most of that) but
    can never read the CSRF token.
    """

    def __init__(
        self,
        scopes_by_token: Mapping[str, frozenset[Scope]],
        sessions: SessionStore | None = None,
    ) -> None:
        self._tokens = [(token.encode(), scopes) for token, scopes in scopes_by_token.items()]
        self._by_hash = {token_hash(token): scopes for token, scopes in scopes_by_token.items()}
        self.sessions = sessions

    @property
    def open(self) -> bool:
        return not self._tokens

    def scopes_for(self, header: str | None) -> frozenset[Scope] | None:
        """The scopes of the presented token, or None when it is missing or unknown."""
        scheme, _, credentials = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return None
        return self.scopes_of_token(credentials.strip())

    def scopes_of_token(self, token: str) -> frozenset[Scope] | None:
        presented = token.encode()
        granted: frozenset[Scope] | None = None
        for known, scopes in self._tokens:  # compare with every token: no timing hint
            if hmac.compare_digest(presented, known):
                granted = scopes
        return granted

    def identify(self, request: web.Request) -> Identity:
        """Who made the request; raises AuthError when they cannot be told apart from nobody."""
        if self.open:
            return Identity(frozenset(Scope), "anonymous", "open")
        header = request.headers.get("Authorization")
        if header is not None:
            scopes = self.scopes_for(header)
            if scopes is None:
                raise AuthError(401, "unauthorized", "a valid bearer token is required")
            return Identity(scopes, _fingerprint(header), "token")
        session_id = request.cookies.get(SESSION_COOKIE)
        if session_id is None or self.sessions is None:
            raise AuthError(401, "unauthorized", "a valid bearer token is required")
        session = self.sessions.get(session_id)
        # A token removed from the settings ends its sessions; fewer scopes, fewer rights.
        current = None if session is None else self._by_hash.get(session.token_hash)
        if session is None or current is None:
            raise AuthError(401, "session_ended", "the session has ended: log in again")
        if request.method not in SAFE_METHODS:
            _check_csrf(request, session)
        return Identity(session.scopes & current, session.principal, "session", session_id, session)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        scope = required_scope(getattr(request.match_info, "handler", None))
        if scope is None:
            return await handler(request)
        try:
            identity = self.identify(request)
        except AuthError as error:
            response = error_response(error.status, error.code, error.message)
            if error.status == 401:
                response.headers["WWW-Authenticate"] = "Bearer"
            return response
        if scope not in identity.scopes:
            return error_response(403, "forbidden", f"this token lacks the {scope.value!r} scope")
        request[IDENTITY] = identity
        return await handler(request)


def _check_csrf(request: web.Request, session: Session) -> None:
    presented = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(presented.encode(), session.csrf.encode()):
        raise AuthError(403, "csrf", f"a change from the page needs its {CSRF_HEADER} header")
    origin = request.headers.get("Origin")
    if origin is not None and not same_origin(request, origin):
        raise AuthError(403, "csrf", "the request comes from another site")


def same_origin(request: web.Request, origin: str) -> bool:
    """Whether a browser's ``Origin`` header names this server (scheme and host:port)."""
    return origin == f"{request.scheme}://{request.host}"


IDENTITY = web.RequestKey("identity", Identity)
AUTH = web.AppKey("auth", TokenAuth)


def principal(request: web.Request) -> str:
    """Who made a request, for the event log: a short fingerprint of the token.

    The token itself is never written anywhere; its fingerprint tells the
    operator which of the configured credentials acted (through the API or the
    status page alike).
    """
    if IDENTITY in request:
        return request[IDENTITY].principal
    return _fingerprint(request.headers.get("Authorization", ""))


def _fingerprint(header: str) -> str:
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return "anonymous"
    return f"token:{token_hash(credentials.strip())[:8]}"
