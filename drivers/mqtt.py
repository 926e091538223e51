"""An asyncio MQTT client over paho-mqtt, bridged to the event loop in one place.

The shape follows aiomqtt 2.x: the connection is a reusable, non-reentrant
``async with`` block; messages arrive through an async iterator that raises
:class:`MqttError` when the link dies; reconnecting is the caller's policy,
not hidden in here.

Threading: paho runs on the event loop. Its socket is registered with
``add_reader``/``add_writer``, so paho's packet handling never competes with
the loop for the GIL from a second thread and never blocks it (the socket is
non-blocking). Only the blocking TCP/TLS connect runs in an executor thread;
the callbacks paho fires there reach the loop through ``call_soon_threadsafe``.

Throughput: messages are handed over in batches (everything one socket read
produced), so the consumer pays one wake-up per batch, not per message. The
inbound buffer is bounded; when it is full the client stops reading the
socket until the consumer catches up, which pushes back on the broker over TCP
instead of dropping anything here.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from drivers.paho_loop import LoopClient

# paho's callbacks are typed with its private socket alias (which includes a
# websocket wrapper never used here); ours take Any and store a plain socket
# (ssl.SSLSocket is one too).
PahoSocket = Any

# Packets handled per readable event: enough to amortise the loop's overhead,
# few enough that HTTP requests and timers still get their turn.
_PACKETS_PER_READ = 512


class MqttError(Exception):
    """Anything that went wrong talking to the broker."""


class MqttCodeError(MqttError):
    """paho returned an error code; ``rc`` keeps it."""

    def __init__(self, rc: int | ReasonCode, message: str) -> None:
        super().__init__(f"{message}: {_describe(rc)}")
        self.rc = rc


class MqttConnectError(MqttCodeError):
    """The broker refused the connection (bad credentials, not authorised, ...)."""


class MqttReentrantError(MqttError):
    """``async with client`` while already inside it."""


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class MqttClient:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        ca_file: Path | None = None,
        keepalive: int = 30,
        will: Will | None = None,
        timeout: float = 10.0,
        max_queued_incoming: int = 10_000,
        max_batch: int = 500,
        logger: logging.Logger | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._keepalive = keepalive
        self._timeout = timeout
        self._max_queued = max_queued_incoming
        self._max_batch = max_batch
        self._logger = logger or logging.getLogger("drivers.mqtt")
        self._lock = asyncio.Lock()

        client = LoopClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
            clean_session=True,
            reconnect_on_failure=False,
        )
        if username is not None:
            client.username_pw_set(username, password)
        if tls:
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            client.tls_set_context(context)
        if will is not None:
            client.will_set(will.topic, will.payload, will.qos, will.retain)
        client.max_inflight_messages_set(200)
        # 0 = paho never refuses a publish for a full queue; the room publisher
        # coalesces per room, so what waits here is bounded by the number of rooms.
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self._client = client

        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected: asyncio.Future[None] | None = None
        self._disconnected: asyncio.Future[None] | None = None
        self._inbox: deque[Message] = deque()
        self._inbox_ready: asyncio.Event | None = None
        self._reading_paused = False
        self._sock: socket.socket | None = None
        self._misc_task: asyncio.Task[None] | None = None
        self._pending_subscribes: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._pending_publishes: dict[int, asyncio.Future[None]] = {}

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._lock.locked():
            raise MqttReentrantError("the MQTT client is reusable but not reentrant")
        await self._lock.acquire()
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._connected = loop.create_future()
        self._disconnected = loop.create_future()
        self._inbox_ready = asyncio.Event()
        self._inbox.clear()
        try:
            await loop.run_in_executor(
                None, self._client.connect, self._host, self._port, self._keepalive
            )
            await asyncio.wait_for(asyncio.shield(self._connected), self._timeout)
        except (OSError, ssl.SSLError) as error:
            self._abort()
            raise MqttError(f"cannot connect to {self._host}:{self._port}: {error}") from None
        except TimeoutError:
            self._abort()
            raise MqttError(f"no CONNACK from {self._host}:{self._port}") from None
        except BaseException:
            self._abort()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._disconnected is not None
        try:
            if not self._disconnected.done():
                rc = self._client.disconnect()
                if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    try:
                        await asyncio.wait_for(asyncio.shield(self._disconnected), self._timeout)
                    except TimeoutError:
                        self._logger.warning("broker did not confirm the disconnect; closing")
                    except MqttError:
                        pass  # the link died while we were leaving anyway
            self._close_socket()
            self._fail_pending(MqttError("disconnected"))
        finally:
            if not self._disconnected.done():
                self._disconnected.set_result(None)
            elif not self._disconnected.cancelled():
                self._disconnected.exception()  # mark as retrieved
            self._lock.release()

    def _abort(self) -> None:
        self._close_socket()
        if self._connected is not None and not self._connected.done():
            self._connected.cancel()
        elif self._connected is not None and not self._connected.cancelled():
            self._connected.exception()
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(None)
        self._lock.release()

    def _close_socket(self) -> None:
        if self._client.socket() is not None:
            try:
                self._client.drop_socket()
            except OSError as error:
                self._logger.debug("closing MQTT socket: %s", error)
        if self._misc_task is not None:
            self._misc_task.cancel()
            self._misc_task = None

    @property
    def is_connected(self) -> bool:
        return (
            self._connected is not None
            and self._connected.done()
            and not self._connected.cancelled()
            and self._connected.exception() is None
            and self._disconnected is not None
            and not self._disconnected.done()
        )

    # -- operations --------------------------------------------------------

    async def subscribe(self, subscriptions: Sequence[tuple[str, int]]) -> None:
        """Subscribe to every (filter, qos) in one request and wait for the broker's SUBACK."""
        if not subscriptions:
            return
        loop = self._running_loop()
        rc, mid = self._client.subscribe(list(subscriptions))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttCodeError(rc, "cannot subscribe")
        future: asyncio.Future[list[ReasonCode]] = loop.create_future()
        self._pending_subscribes[mid] = future
        try:
            codes = await self._wait(future)
        finally:
            self._pending_subscribes.pop(mid, None)
        refused = [
            topic for (topic, _), code in zip(subscriptions, codes, strict=False) if code.is_failure
        ]
        if refused:
            raise MqttError(f"broker refused subscriptions: {', '.join(refused)}")

    def publish_nowait(
        self, topic: str, payload: bytes | str, *, qos: int = 0, retain: bool = False
    ) -> paho.MQTTMessageInfo:
        """Queue a message for sending and return at once (paho keeps QoS 1 until acknowledged)."""
        info = self._client.publish(topic, payload, qos, retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttCodeError(info.rc, f"cannot publish to {topic}")
        return info

    def flush(self) -> None:
        """Write what is queued to the socket now, rather than on the loop's next turn.

        paho only queues a publish (it is told that the loop watches the socket
        for writing). For a command that should leave at once, such as the fire
        alarm's UNLOCKs, the caller flushes: the socket is non-blocking, so this
        writes what the kernel takes and leaves the rest to the loop's writer.
        """
        if self._sock is not None and self.is_connected:
            self._write()

    async def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 0, retain: bool = False
    ) -> None:
        """Publish and wait until the broker has it (QoS 1) or it is written (QoS 0)."""
        loop = self._running_loop()
        info = self.publish_nowait(topic, payload, qos=qos, retain=retain)
        if info.is_published():
            return
        future: asyncio.Future[None] = loop.create_future()
        self._pending_publishes[info.mid] = future
        if info.is_published():  # acknowledged between the two checks
            self._pending_publishes.pop(info.mid, None)
            return
        try:
            await self._wait(future)
        finally:
            self._pending_publishes.pop(info.mid, None)

    async def batches(self) -> AsyncIterator[list[Message]]:
        """Yield received messages in arrival order, in lists; raise MqttError if the link dies.

        A batch holds at most ``max_batch`` messages, and the loop gets a turn
        between batches, so a backlog of tens of thousands of messages never
        keeps an HTTP request or a timer waiting for more than one batch.
        """
        assert self._inbox_ready is not None
        assert self._disconnected is not None
        disconnected = self._disconnected
        inbox = self._inbox
        while True:
            if inbox:
                size = min(len(inbox), self._max_batch)
                batch = [inbox.popleft() for _ in range(size)]
                if not inbox:
                    self._inbox_ready.clear()
                self._resume_reading()
                yield batch
                if inbox:
                    await asyncio.sleep(0)  # let everything else on the loop run
                continue
            if disconnected.done():
                error = disconnected.exception()
                raise error if error is not None else MqttError("disconnected")
            waiter = asyncio.ensure_future(self._inbox_ready.wait())
            try:
                await asyncio.wait((waiter, disconnected), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    def take_buffered(self) -> list[Message]:
        """Messages received but not yet yielded, for a consumer that stops iterating."""
        batch = list(self._inbox)
        self._inbox.clear()
        return batch

    async def _wait(self, future: asyncio.Future[Any]) -> Any:
        assert self._disconnected is not None
        done, _ = await asyncio.wait(
            (future, self._disconnected), timeout=self._timeout, return_when="FIRST_COMPLETED"
        )
        if future in done:
            return future.result()
        if self._disconnected in done:
            raise MqttError("disconnected while waiting for the broker")
        raise MqttError("timed out waiting for the broker")

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or not self.is_connected:
            raise MqttError("not connected")
        return self._loop

    def _fail_pending(self, error: MqttError) -> None:
        pending_calls: list[asyncio.Future[Any]] = [
            *self._pending_subscribes.values(),
            *self._pending_publishes.values(),
        ]
        for pending in pending_calls:
            if not pending.done():
                pending.set_exception(error)
                pending.exception()

    # -- paho callbacks (all on the loop thread unless noted) ---------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if self._connected is None or self._connected.done():
            return
        if reason_code.is_failure:
            self._connected.set_exception(MqttConnectError(reason_code, "broker refused"))
        else:
            self._connected.set_result(None)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if self._disconnected is None or self._disconnected.done():
            return
        if self._connected is not None and not self._connected.done():
            self._connected.set_exception(MqttCodeError(reason_code, "connection lost"))
            return
        if reason_code.is_failure:
            self._disconnected.set_exception(MqttCodeError(reason_code, "connection lost"))
        else:
            self._disconnected.set_result(None)
        if self._inbox_ready is not None:
            self._inbox_ready.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            self._logger.warning("dropped a message whose topic is not UTF-8")
            return
        self._inbox.append(Message(topic, bytes(message.payload), message.qos, message.retain))

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Any,
    ) -> None:
        future = self._pending_subscribes.get(mid)
        if future is not None and not future.done():
            future.set_result(reason_codes)

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        future = self._pending_publishes.get(mid)
        if future is not None and not future.done():
            future.set_result(None)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: PahoSocket) -> None:
        # Called from the executor thread that runs connect().
        assert self._loop is not None
        self._sock = sock
        self._loop.call_soon_threadsafe(self._start_socket_io, sock)

    def _start_socket_io(self, sock: PahoSocket) -> None:
        assert self._loop is not None
        current = self._sock
        if current is None or current is not sock or current.fileno() < 0:
            return  # closed before the loop got to it
        current.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reading_paused = False
        self._loop.add_reader(current, self._read)
        self._misc_task = self._loop.create_task(self._misc_loop(), name="mqtt-keepalive")

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: PahoSocket) -> None:
        if self._loop is None:
            return
        if _on_loop_thread(self._loop):
            self._stop_socket_io(sock)
        else:
            self._loop.call_soon_threadsafe(self._stop_socket_io, sock)

    def _stop_socket_io(self, sock: PahoSocket) -> None:
        assert self._loop is not None
        if sock.fileno() >= 0:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        if self._sock is sock:
            self._sock = None
        if self._misc_task is not None:
            self._misc_task.cancel()
            self._misc_task = None

    def _on_socket_register_write(
        self, client: paho.Client, userdata: Any, sock: PahoSocket
    ) -> None:
        assert self._loop is not None
        if _on_loop_thread(self._loop):
            self._loop.add_writer(sock, self._write)
        else:
            self._loop.call_soon_threadsafe(self._loop.add_writer, sock, self._write)

    def _on_socket_unregister_write(
        self, client: paho.Client, userdata: Any, sock: PahoSocket
    ) -> None:
        assert self._loop is not None
        if sock.fileno() < 0:
            return
        if _on_loop_thread(self._loop):
            self._loop.remove_writer(sock)
        else:
            self._loop.call_soon_threadsafe(self._loop.remove_writer, sock)

    # -- socket I/O on the loop ---------------------------------------------

    def _read(self) -> None:
        try:
            self._client.loop_read(_PACKETS_PER_READ)
        except (OSError, ssl.SSLError) as error:
            self._lose_link(error)
            return
        sock = self._sock
        if self._inbox:
            assert self._inbox_ready is not None
            self._inbox_ready.set()
            if len(self._inbox) >= self._max_queued and sock is not None and self._loop:
                self._reading_paused = True
                self._loop.remove_reader(sock)
                return
        # Bytes already read into paho's buffer, or decrypted by TLS, are invisible
        # to the selector: come back for them on the next loop iteration.
        if self._loop is not None and (
            self._client.has_buffered_input or (isinstance(sock, ssl.SSLSocket) and sock.pending())
        ):
            self._loop.call_soon(self._read)

    def _resume_reading(self) -> None:
        """Read again once the consumer has worked the inbox down to half its bound."""
        if len(self._inbox) > self._max_queued // 2:
            return
        if self._reading_paused and self._sock is not None and self._loop is not None:
            self._reading_paused = False
            self._loop.add_reader(self._sock, self._read)
            self._loop.call_soon(self._read)

    def _write(self) -> None:
        try:
            self._client.loop_write()
        except (OSError, ssl.SSLError) as error:
            self._lose_link(error)

    def _lose_link(self, error: BaseException) -> None:
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_exception(MqttError(f"connection lost: {error}"))
            if self._inbox_ready is not None:
                self._inbox_ready.set()

    async def _misc_loop(self) -> None:
        """Keepalive pings and retries: paho needs ``loop_misc`` about once a second.

        This is network housekeeping in real seconds, so it uses the loop's own
        time, not the controller's (possibly virtual) clock.
        """
        while True:
            if self._client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            await asyncio.sleep(1.0)


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    """True when called on ``loop``'s own thread."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _describe(rc: int | ReasonCode) -> str:
    if isinstance(rc, ReasonCode):
        return str(rc)
    return paho.error_string(rc)
