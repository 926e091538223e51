"""Placeholder: routes are added by the reports module's own change."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """Register this module's routes on ``app``."""
