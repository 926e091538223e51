"""Bearer-token authentication with scopes.

Each route declares the scope it needs with :func:`requires`; the middleware
checks the ``Authorization: Bearer`` token against the configured tokens in
constant time. With no tokens configured the API is open and the controller
warns about it at start: a fresh install must be reachable before anyone has
written a token, but never silently so.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

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


class TokenAuth:
    def __init__(self, scopes_by_token: Mapping[str, frozenset[Scope]]) -> None:
        self._tokens = [(token.encode(), scopes) for token, scopes in scopes_by_token.items()]

    @property
    def open(self) -> bool:
        return not self._tokens

    def scopes_for(self, header: str | None) -> frozenset[Scope] | None:
        """The scopes of the presented token, or None when it is missing or unknown."""
        scheme, _, credentials = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return None
        presented = credentials.strip().encode()
        granted: frozenset[Scope] | None = None
        for token, scopes in self._tokens:  # compare with every token: no timing hint
            if hmac.compare_digest(presented, token):
                granted = scopes
        return granted

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        scope = required_scope(getattr(request.match_info, "handler", None))
        if scope is None or self.open:
            return await handler(request)
        scopes = self.scopes_for(request.headers.get("Authorization"))
        if scopes is None:
            response = error_response(401, "unauthorized", "a valid bearer token is required")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        if scope not in scopes:
            return error_response(403, "forbidden", f"this token lacks the {scope.value!r} scope")
        return await handler(request)


def principal(request: web.Request) -> str:
    """Who made a request, for the event log: a short fingerprint of the token.

    The token itself is never written anywhere; its fingerprint tells the
    operator which of the configured credentials acted.
    """
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return "anonymous"
    digest = hashlib.sha256(credentials.strip().encode()).hexdigest()
    return f"token:{digest[:8]}"
