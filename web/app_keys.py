"""Typed keys for what every part of the API reads: the site, live state, health."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from controller.site import Site
from controller.state import LiveState

HealthReport = Callable[[], dict[str, Any]]

SITE = web.AppKey("site", Site)
STATE = web.AppKey("state", LiveState)
HEALTH: web.AppKey[HealthReport] = web.AppKey("health")
