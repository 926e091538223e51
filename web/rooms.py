"""A room as the API and the live stream show it: live state, access decision, bookings."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from controller.bookings import booking_json
from controller.site import Room
from controller.state import LiveState
from web.services import Services


def room_json(
    room: Room, state: LiveState, services: Services, *, with_devices: bool
) -> dict[str, Any]:
    updated = state.room_updated(room.id)
    devices = list(state.devices_in(room.id))
    decision = services.access.decision(room.id)
    return {
        "id": room.id,
        "name": room.name,
        "name_en": room.name_en,
        "capacity": room.capacity,
        "bookable": room.bookable,
        "always_open": room.always_open,
        "state": state.room(room.id).to_json(),
        "updated": updated.isoformat() if updated else None,
        "access": (
            None
            if decision is None
            else {
                "intent": decision.intent.value,
                "cause": decision.cause.value,
                "booking_id": decision.booking_id,
                "until": decision.until.isoformat() if decision.until else None,
            }
        ),
        "booking": bookings_now(room.id, services),
        "devices": (
            [device.to_json() for device in devices]
            if with_devices
            else [device.device.id for device in devices]
        ),
    }


def bookings_now(room_id: str, services: Services) -> dict[str, Any]:
    """The booking holding the room now and the next one today, if any."""
    now = services.clock.now()
    current = upcoming = None
    for booking in services.bookings.between(now, now + timedelta(days=1), room_id):
        if not booking.holds_slot:
            continue
        if booking.start <= now and current is None:
            current = booking_json(booking)
        elif booking.start > now:
            upcoming = booking_json(booking)
            break
    return {"current": current, "next": upcoming}
