"""What the API's handlers act through, under one typed app key."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from controller.access import AccessController
from controller.alarms import AlarmBook
from controller.bookings import BookingService
from controller.cabinet import CabinetService
from controller.climate import ClimateController
from controller.clock import Clock
from controller.event_log import EventLog
from controller.reports import Reports
from controller.visitors import VisitorCounter


@dataclass(frozen=True, slots=True)
class Services:
    bookings: BookingService
    access: AccessController
    events: EventLog
    alarms: AlarmBook
    clock: Clock
    visitors: VisitorCounter
    climate: ClimateController
    cabinets: CabinetService
    reports: Reports


SERVICES = web.AppKey("services", Services)
