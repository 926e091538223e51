"""The API's one error shape: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def error_response(status: int, code: str, message: str, details: Any = None) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, "details": details}}, status=status
    )
