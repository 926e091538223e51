"""The API's one error shape: ``{"error": {"code", "message", "details"}}``.

Handlers raise :class:`ApiError`; the app's error middleware turns it (and
aiohttp's own routing and size errors) into that shape, so no handler builds
an error response by hand and none can leak an HTML page or a traceback.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def error_response(status: int, code: str, message: str, details: Any = None) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, "details": details}}, status=status
    )
