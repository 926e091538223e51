"""The access side of the controller, wired once: stores, lock commander, rules, bookings.

The controller and the tests that replay days on the virtual clock build it
through :func:`build_access`, so a test exercises exactly the wiring that
runs in production.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from controller.access import AccessController
from controller.access_store import AccessStore
from controller.alarms import AlarmBook
from controller.booking_store import BookingStore
from controller.bookings import BookingService
from controller.bus import EventBus
from controller.clock import Clock
from controller.event_log import EventLog
from controller.locks import LockCommander
from controller.site import Site
from controller.state import LiveState
from controller.webhooks import WebhookQueue


@dataclass(frozen=True, slots=True)
class AccessParts:
    access_store: AccessStore
    booking_store: BookingStore
    locks: LockCommander
    access: AccessController
    bookings: BookingService


def build_access(
    site: Site,
    prefix: str,
    state: LiveState,
    bus: EventBus,
    clock: Clock,
    *,
    db: sqlite3.Connection,
    events: EventLog,
    alarms: AlarmBook,
    webhooks: WebhookQueue,
    settle: float = 1.0,
) -> AccessParts:
    """``settle``: how long after connecting the lock commander reads retained lock
    states before it commands a lock it has not heard from."""
    access_store = AccessStore(db)
    booking_store = BookingStore(db)
    locks = LockCommander(
        site,
        prefix,
        state,
        bus,
        clock,
        events,
        alarms,
        fire_latched=lambda: access_store.latch.latched,
        settle=settle,
    )
    access = AccessController(
        site,
        state,
        bus,
        clock,
        bookings=booking_store,
        access=access_store,
        locks=locks,
        events=events,
        alarms=alarms,
        webhooks=webhooks,
    )
    bookings = BookingService(site, booking_store, events, changed=access.room_changed)
    return AccessParts(access_store, booking_store, locks, access, bookings)
