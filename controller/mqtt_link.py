"""The controller's MQTT connection: connect, announce, listen, and come back.

One supervisor owns the connection. Each time it connects it announces the
controller ``online`` (retained, replacing the ``offline`` its last will left),
subscribes, and republishes every room's retained state; then it feeds
message batches to the ingest until the link breaks. It reconnects with capped
exponential backoff and jitter, and on stop it publishes ``offline`` itself
before disconnecting (a clean disconnect does not fire the last will).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from controller.clock import Clock
from controller.ingest import MqttIngest
from controller.room_publisher import Delivery, RoomStatePublisher
from controller.settings import MqttEndpoint
from drivers.mqtt import MqttClient, MqttError, Will

# Sends a command (QoS 1, not retained); False when there is no connection.
SendCommand = Callable[[str, bytes], bool]


class CommandListener(Protocol):
    """Told when commands can be sent (each connect) and when they cannot."""

    def connected(self, send: SendCommand) -> None: ...

    def disconnected(self) -> None: ...


@dataclass(slots=True)
class LinkStatus:
    connected: bool = False
    since: datetime | None = None
    connects: int = 0
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.connected else "down",
            "connected": self.connected,
            "since": self.since.isoformat() if self.since else None,
            "connects": self.connects,
            "last_error": self.last_error,
        }


class MqttLink:
    def __init__(
        self,
        *,
        endpoint: MqttEndpoint,
        client_id: str,
        prefix: str,
        ingest: MqttIngest,
        rooms: RoomStatePublisher,
        clock: Clock,
        keepalive: int = 30,
        ca_file: Path | None = None,
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._client_id = client_id
        self._ingest = ingest
        self._rooms = rooms
        self._clock = clock
        self._keepalive = keepalive
        self._ca_file = ca_file
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._logger = logger or logging.getLogger("controller.mqtt")
        self.availability_topic = f"{prefix}/controller/availability"
        self.events_topic = f"{prefix}/events"
        self.status = LinkStatus()
        self._client: MqttClient | None = None
        self._stopping = asyncio.Event()
        self._command_listeners: list[CommandListener] = []

    def add_command_listener(self, listener: CommandListener) -> None:
        self._command_listeners.append(listener)

    def send_command(self, topic: str, payload: bytes) -> bool:
        """Send a device command (QoS 1) now; False when disconnected, so the caller retries.

        The command is written to the socket before this returns (as far as the
        kernel takes it), not on the loop's next turn: a door command should
        not wait behind whatever the current handler still has to do.
        """
        client = self._client
        if client is None or not client.is_connected:
            return False
        try:
            client.publish_nowait(topic, payload, qos=1)
        except MqttError as error:
            self._logger.warning("could not send a command to %s: %s", topic, error)
            return False
        client.flush()
        return True

    def _new_client(self) -> MqttClient:
        endpoint = self._endpoint
        return MqttClient(
            host=endpoint.host,
            port=endpoint.port,
            client_id=self._client_id,
            username=endpoint.username,
            password=endpoint.password.get_secret_value() if endpoint.password else None,
            tls=endpoint.tls,
            ca_file=self._ca_file,
            keepalive=self._keepalive,
            will=Will(self.availability_topic, b"offline", qos=1, retain=True),
        )

    def publish_event(self, event: dict[str, Any]) -> None:
        """Best-effort publish on the events topic; dropped while disconnected."""
        client = self._client
        if client is not None and client.is_connected:
            client.publish_nowait(self.events_topic, orjson.dumps(event), qos=1)

    async def run(self) -> None:
        """Stay connected until :meth:`stop`; returns after announcing ``offline``.

        An outage is logged once as a warning; the retries behind it only at
        debug level, and the reconnect at info, so a night without a broker
        leaves three lines, not three thousand.
        """
        delay = self._backoff_min
        outage_logged = False
        while not self._stopping.is_set():
            try:
                await self._session()
            except MqttError as error:
                self.status.last_error = str(error)
                if self.status.connected:
                    delay = self._backoff_min  # a fresh outage starts with a quick retry
                    self._logger.warning("MQTT link lost: %s; reconnecting", error)
                    outage_logged = True
                elif not outage_logged:
                    self._logger.warning(
                        "cannot reach MQTT broker %s: %s; retrying every %.1f-%.0f s",
                        self._endpoint.redacted(),
                        error,
                        self._backoff_min,
                        self._backoff_max,
                    )
                    outage_logged = True
                else:
                    self._logger.debug("MQTT broker still unreachable: %s", error)
            finally:
                self._mark_down()
            if self._stopping.is_set():
                break
            await self._wait_or_stop(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self._backoff_max)

    def stop(self) -> None:
        self._stopping.set()

    async def _session(self) -> None:
        client = self._new_client()
        async with client:
            self._client = client
            await client.publish(self.availability_topic, b"online", qos=1, retain=True)
            await client.subscribe(self._ingest.subscriptions())
            self.status.connected = True
            self.status.since = self._clock.now()
            self.status.connects += 1
            self.status.last_error = None
            self._logger.info(
                "connected to MQTT broker %s as %s",
                self._endpoint.redacted(),
                self._client_id,
            )

            def publish_retained(topic: str, payload: bytes) -> Delivery:
                return client.publish_nowait(topic, payload, qos=1, retain=True)

            self._rooms.attach(publish_retained)
            for listener in self._command_listeners:
                listener.connected(self.send_command)
            consume = asyncio.create_task(self._consume(client), name="mqtt-ingest")
            stopping = asyncio.create_task(self._stopping.wait(), name="mqtt-stop")
            try:
                await asyncio.wait((consume, stopping), return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                consume.cancel()
                outcome = (await asyncio.gather(consume, stopping, return_exceptions=True))[0]
            self._rooms.detach()
            if isinstance(outcome, BaseException) and not isinstance(
                outcome, asyncio.CancelledError
            ):
                raise outcome
            # Stopping: apply what already arrived, and say so while the link is still up.
            self._ingest.handle(client.take_buffered())
            try:
                await client.publish(self.availability_topic, b"offline", qos=1, retain=True)
            except MqttError as publish_error:
                self._logger.warning("could not announce offline: %s", publish_error)

    async def _consume(self, client: MqttClient) -> None:
        async for batch in client.batches():
            self._ingest.handle(batch)

    def _mark_down(self) -> None:
        self._client = None
        self._rooms.detach()
        for listener in self._command_listeners:
            listener.disconnected()
        self.status.connected = False

    async def _wait_or_stop(self, seconds: float) -> None:
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((sleeper, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopping.cancel()
