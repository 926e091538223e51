"""From MQTT messages to events: routing by topic, decoding, and counting.

:class:`MqttIngest` knows which topic belongs to which device and in which
payload format, turns each message into a :class:`ReadingReceived`,
:class:`AvailabilityChanged` or :class:`BadPayload` event, and publishes it on
the bus. It is called with whole batches straight from the MQTT client, so the
per-message work is a dict lookup, one JSON parse and one bus dispatch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from controller.bus import EventBus
from controller.clock import Clock
from controller.events import AvailabilityChanged, AvailabilitySource, BadPayload, ReadingReceived
from controller.site import Device, PayloadFormat, Site
from drivers.mqtt import Message
from drivers.payloads import (
    BadPayloadReason,
    PayloadError,
    decode_availability,
    decode_state,
)

# Topic levels under the prefix that are the controller's own, not devices'.
_OWN_LEVELS = frozenset({"controller", "room", "events"})


@dataclass(frozen=True, slots=True)
class _Route:
    device: Device
    availability: bool


@dataclass(slots=True)
class IngestStats:
    messages: int = 0
    readings: int = 0
    availability: int = 0
    bad: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "messages": self.messages,
            "readings": self.readings,
            "availability": self.availability,
            "bad_payloads": self.bad,
        }


def state_topic(device: Device, prefix: str) -> str:
    return device.state_topic or f"{prefix}/{device.id}/state"


def availability_topic(device: Device, prefix: str) -> str:
    if device.availability_topic:
        return device.availability_topic
    if device.state_topic and device.format is PayloadFormat.ZIGBEE2MQTT:
        return f"{device.state_topic}/availability"  # zigbee2mqtt's convention
    return f"{prefix}/{device.id}/availability"


def command_topic(device: Device, prefix: str) -> str:
    """Where a device takes its commands (locks: ``{"state": "LOCK"}``)."""
    if device.command_topic:
        return device.command_topic
    if device.state_topic and device.format is PayloadFormat.ZIGBEE2MQTT:
        return f"{device.state_topic}/set"  # zigbee2mqtt's convention
    return f"{prefix}/{device.id}/set"


class MqttIngest:
    """Routes a site's device topics to decoders and the bus."""

    def __init__(self, site: Site, prefix: str, bus: EventBus, clock: Clock) -> None:
        self._prefix = prefix
        self._bus = bus
        self._clock = clock
        self._routes: dict[str, _Route] = {}
        for device in site.devices:
            if device.is_mqtt:
                self._routes[state_topic(device, prefix)] = _Route(device, availability=False)
                self._routes[availability_topic(device, prefix)] = _Route(device, availability=True)
        self.stats = IngestStats()

    def subscriptions(self) -> list[tuple[str, int]]:
        """Topic filters to subscribe to, QoS 1 so that QoS 1 publishers keep their guarantee.

        The wildcards catch devices that publish under the prefix without being
        in the site file, so they are counted as unknown rather than unseen.
        """
        filters = {f"{self._prefix}/+/state", f"{self._prefix}/+/availability"}
        filters.update(topic for topic in self._routes if not topic.startswith(f"{self._prefix}/"))
        return [(topic, 1) for topic in sorted(filters)]

    def handle(self, messages: Iterable[Message]) -> None:
        now = self._clock.now()
        publish = self._bus.publish
        routes = self._routes
        stats = self.stats
        for message in messages:
            stats.messages += 1
            route = routes.get(message.topic)
            if route is None:
                self._unrouted(message, now)
                continue
            device = route.device
            try:
                if route.availability:
                    online = decode_availability(device.format, message.payload)
                    stats.availability += 1
                    publish(AvailabilityChanged(device.id, online, AvailabilitySource.LWT, now))
                else:
                    reading = decode_state(device.kind, device.format, message.payload)
                    stats.readings += 1
                    publish(ReadingReceived(device.id, reading, now, message.retain))
            except PayloadError as error:
                stats.bad += 1
                publish(BadPayload(device.id, error.reason, error.detail, message.topic, now))

    def _unrouted(self, message: Message, now: datetime) -> None:
        """A message on a device-shaped topic under our prefix that no device owns."""
        head, _, rest = message.topic.partition(f"{self._prefix}/")
        level, _, channel = rest.partition("/")
        if head or level in _OWN_LEVELS or channel not in ("state", "availability"):
            return
        self.stats.bad += 1
        self._bus.publish(
            BadPayload(
                level,
                BadPayloadReason.UNKNOWN_DEVICE,
                "no device with this id in the site file",
                message.topic,
                now,
            )
        )
