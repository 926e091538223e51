"""The embedded broker behind ``centerctl demo``, exercised through our own MQTT client.

What the demo relies on is what is proven here: QoS 1 delivery, retained state
for late subscribers, wills when a client dies, ``+`` wildcards, bursts without
loss, and a shutdown that neither hangs nor leaves tasks or log noise behind.
No Mosquitto is needed. Nothing sleeps to wait: every wait polls a condition
against a deadline (``wait_until``), or sends a marker message and waits for it
when the point is that something else did *not* arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from drivers.mqtt import Message, MqttClient, MqttError, Will
from simulators.embedded_broker import EmbeddedBroker
from tests.conftest import wait_until


@dataclass
class Inbox:
    """Everything one client receives, gathered by a background task; the link error, if any."""

    client: MqttClient
    messages: list[Message] = field(default_factory=list)
    error: MqttError | None = None
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._collect(), name="test-inbox")

    async def _collect(self) -> None:
        try:
            async for batch in self.client.batches():
                self.messages.extend(batch)
        except MqttError as error:
            self.error = error

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def payloads(self, topic: str) -> list[bytes]:
        return [message.payload for message in self.messages if message.topic == topic]

    async def wait_for(self, topic: str, payload: bytes, timeout: float = 5.0) -> Message:
        def find() -> Message | None:
            for message in self.messages:
                if message.topic == topic and message.payload == payload:
                    return message
            return None

        found: Message = await wait_until(find, timeout=timeout, message=f"{payload!r} on {topic}")
        return found


@pytest.fixture
async def embedded() -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture
async def clients() -> AsyncIterator[contextlib.AsyncExitStack]:
    """Clients entered here are left before the broker fixture stops the broker."""
    async with contextlib.AsyncExitStack() as stack:
        yield stack


async def connect(
    stack: contextlib.AsyncExitStack,
    broker: EmbeddedBroker,
    client_id: str,
    *,
    will: Will | None = None,
    subscribe: list[tuple[str, int]] | None = None,
) -> tuple[MqttClient, Inbox]:
    """Connect a client, subscribe it, and start gathering what it receives."""
    client = MqttClient(
        host="127.0.0.1", port=broker.port, client_id=client_id, will=will, timeout=5.0
    )
    await stack.enter_async_context(client)
    inbox = Inbox(client)
    stack.push_async_callback(inbox.stop)
    if subscribe:
        await client.subscribe(subscribe)
    inbox.start()
    return client, inbox


def other_tasks(before: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    return {task for task in asyncio.all_tasks() if task not in before and not task.done()}


# -- starting -----------------------------------------------------------------


async def test_port_zero_binds_a_free_loopback_port() -> None:
    async with EmbeddedBroker() as first, EmbeddedBroker(port=0) as second:
        assert first.port > 0
        assert second.port not in (0, first.port)
        assert first.url == f"mqtt://127.0.0.1:{first.port}"
        with socket.create_connection(("127.0.0.1", first.port), timeout=1):
            pass


async def test_a_port_in_use_fails_cleanly() -> None:
    before = set(asyncio.all_tasks())
    async with EmbeddedBroker() as taken:
        running = set(asyncio.all_tasks())
        with pytest.raises(OSError, match="address already in use"):
            async with EmbeddedBroker(port=taken.port):
                pass
        # The broker that failed to bind stopped the amqtt tasks it had started.
        assert other_tasks(running) == set()
    assert other_tasks(before) == set()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.org"])
def test_refuses_to_listen_beyond_loopback(host: str) -> None:
    with pytest.raises(ValueError, match="loopback only"):
        EmbeddedBroker(host=host)


# -- delivery -------------------------------------------------------------------


async def test_qos1_message_is_acknowledged_and_delivered(
    embedded: EmbeddedBroker, clients: contextlib.AsyncExitStack
) -> None:
    _, inbox = await connect(clients, embedded, "sub", subscribe=[("center/x/lamp/state", 1)])
    publisher, _ = await connect(clients, embedded, "pub")

    await publisher.publish("center/x/lamp/state", b'{"on": true}', qos=1)  # returns on PUBACK

    message = await inbox.wait_for("center/x/lamp/state", b'{"on": true}')
    assert message.qos == 1
    assert message.retain is False


async def test_retained_message_reaches_a_late_subscriber(
    embedded: EmbeddedBroker, clients: contextlib.AsyncExitStack
) -> None:
    publisher, _ = await connect(clients, embedded, "pub")
    await publisher.publish("center/x/hall/state", b"v1", qos=1, retain=True)
    await publisher.publish("center/x/hall/state", b"v2", qos=1, retain=True)

    _, late = await connect(clients, embedded, "late", subscribe=[("center/x/hall/state", 1)])
    retained = await late.wait_for("center/x/hall/state", b"v2")
    assert retained.retain is True
    assert retained.qos == 1

    # Only the latest retained value is kept: after a live marker, nothing else came.
    await publisher.publish("center/x/hall/state", b"marker", qos=1)
    await late.wait_for("center/x/hall/state", b"marker")
    assert late.payloads("center/x/hall/state") == [b"v2", b"marker"]


async def test_will_is_published_when_a_client_socket_dies(
    embedded: EmbeddedBroker, clients: contextlib.AsyncExitStack
) -> None:
    will = Will("center/x/sim/availability", b"offline", qos=1, retain=True)
    _, watcher = await connect(
        clients, embedded, "watcher", subscribe=[("center/x/sim/availability", 1)]
    )
    doomed, _ = await connect(clients, embedded, "sim", will=will)

    doomed._client.drop_socket()  # the socket closes with no DISCONNECT, as when a process dies

    message = await watcher.wait_for("center/x/sim/availability", b"offline")
    assert message.qos == 1
    # The will was retained, so a client that arrives later learns the device is offline.
    _, late = await connect(clients, embedded, "late", subscribe=[("center/x/sim/availability", 1)])
    assert (await late.wait_for("center/x/sim/availability", b"offline")).retain is True


async def test_no_will_after_a_clean_disconnect(
    embedded: EmbeddedBroker, clients: contextlib.AsyncExitStack
) -> None:
    _, watcher = await connect(
        clients, embedded, "watcher", subscribe=[("center/x/sim/availability", 1)]
    )
    will = Will("center/x/sim/availability", b"offline", qos=1, retain=True)
    async with MqttClient(host="127.0.0.1", port=embedded.port, client_id="sim", will=will):
        pass  # leaves with DISCONNECT

    publisher, _ = await connect(clients, embedded, "pub")
    await publisher.publish("center/x/sim/availability", b"marker", qos=1)
    await watcher.wait_for("center/x/sim/availability", b"marker")
    assert watcher.payloads("center/x/sim/availability") == [b"marker"]


async def test_plus_wildcard_matches_exactly_one_level(
    embedded: EmbeddedBroker, clients: contextlib.AsyncExitStack
) -> None:
    _, inbox = await connect(clients, embedded, "sub", subscribe=[("center/x/+/state", 1)])
    publisher, _ = await connect(clients, embedded, "pub")

    for topic in (
        "center/x/a/state",
        "center/x/a/other",  # last level differs
        "center/y/a/state",  # another site
        "center/x/a/b/state",  # + is one level, not two
        "center/x/state",  # + is exactly one level, not zero
        "center/x/b/state",
        "center/x/marker/state",
    ):
        await publisher.publish(topic, topic.encode(), qos=1)

    await inbox.wait_for("center/x/marker/state", b"center/x/marker/state")
    assert [message.topic for message in inbox.messages] == [
        "center/x/a/state",
        "center/x/b/state",
        "center/x/marker/state",
    ]


async def test_a_burst_of_500_qos1_messages_all_arrive_in_order(
    embedded: EmbeddedBroker, clients: contextlib.AsyncExitStack
) -> None:
    _, inbox = await connect(clients, embedded, "sub", subscribe=[("center/x/+/state", 1)])
    publisher, _ = await connect(clients, embedded, "pub")
    sent = [f"reading {index}".encode() for index in range(500)]

    started = time.perf_counter()
    infos = [publisher.publish_nowait("center/x/meter/state", body, qos=1) for body in sent]
    await wait_until(lambda: len(inbox.messages) >= len(sent), timeout=15, message="500 messages")
    elapsed = time.perf_counter() - started

    assert inbox.payloads("center/x/meter/state") == sent
    assert all(message.qos == 1 for message in inbox.messages)
    await wait_until(lambda: all(info.is_published() for info in infos), message="every PUBACK")
    logging.getLogger(__name__).info("500 QoS 1 messages in %.3f s", elapsed)


# -- stopping -------------------------------------------------------------------


async def test_shutdown_with_busy_clients_is_quick_and_clean(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Leave the broker while a burst is in flight: every client sees its link drop, nothing hangs.

    This is the case amqtt's own ``Broker.shutdown()`` hangs on under Python 3.11
    (a cancelled reader that is receiving a packet at that moment never stops).
    """
    before = set(asyncio.all_tasks())
    async with contextlib.AsyncExitStack() as stack:
        async with EmbeddedBroker() as broker:
            # A client with a will, to show wills do not disturb the teardown.
            will = Will("center/x/pub/availability", b"offline", qos=1, retain=True)
            subscriber, inbox = await connect(
                stack, broker, "sub", subscribe=[("center/x/+/state", 1)]
            )
            publisher, publisher_inbox = await connect(stack, broker, "pub", will=will)
            for index in range(300):
                publisher.publish_nowait("center/x/meter/state", str(index), qos=1)
            await wait_until(lambda: inbox.messages, message="traffic flowing")
            assert broker.client_count == 2
            stopping = time.perf_counter()
        stopped_in = time.perf_counter() - stopping

        assert stopped_in < 2.0
        await wait_until(lambda: inbox.error is not None, message="the subscriber's link to drop")
        await wait_until(lambda: publisher_inbox.error is not None, message="the publisher's too")
        assert not subscriber.is_connected
        assert not publisher.is_connected
        with pytest.raises(MqttError):
            await subscriber.publish("center/x/after/state", b"late", qos=1)
        await asyncio.wait_for(stack.aclose(), 5)  # leaving the clients does not hang either

    assert other_tasks(before) == set()
    noise = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert noise == []


async def test_amqtt_logs_stay_quiet_unless_we_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with (
        EmbeddedBroker() as broker,
        MqttClient(host="127.0.0.1", port=broker.port, client_id="quiet"),
    ):
        pass
    assert [r.name for r in caplog.records if r.name.startswith(("amqtt", "transitions"))] == []
    assert any("listening on" in record.getMessage() for record in caplog.records)
    assert logging.getLogger("amqtt").level == logging.NOTSET  # restored on exit

    caplog.clear()
    caplog.set_level(logging.DEBUG)
    async with (
        EmbeddedBroker() as broker,
        MqttClient(host="127.0.0.1", port=broker.port, client_id="loud"),
    ):
        pass
    assert any(record.name.startswith("amqtt") for record in caplog.records)
