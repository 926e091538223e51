"""An MQTT broker inside our own event loop, so ``centerctl demo`` needs no Mosquitto.

Why embedded: the demo must run the whole system (simulated devices, the
controller, the status page) from nothing but ``pip install`` of this package.
A broker that lives in the same asyncio loop starts in milliseconds, picks a
free port by itself and goes away with the process: nothing to install, no
port to configure, nothing left behind.

Limits, and why this is for the demo only: the broker is amqtt (a pure-Python
MQTT 3.1.1 broker). It holds everything in memory (a restart forgets retained
messages), carries a few thousand messages a second on one core, shares the
loop and the GIL with the controller, and does not enforce keepalive timeouts
(a peer that vanishes without closing its socket keeps its session and never
triggers its will; on loopback a dead process always closes its sockets).
Production uses Mosquitto or any other MQTT 3.1.1 broker; the controller talks
to this one exactly as it talks to those, which is what makes it a fair demo.

Security: clients connect anonymously. That is fine here because the listener
only ever binds a loopback address (the constructor refuses anything else), so
only processes on this machine can reach it, and it carries simulated devices
only. Do not point real devices at it.

Design notes (amqtt 0.12.x on Python 3.11):

* We own the listening socket, not amqtt: an ``asyncio`` server hands each
  connection to amqtt's public ``Broker.external_connected`` (its "external"
  listener type). That gives us the real bound port when asked for port 0 (amqtt
  binds port 0 but does not expose the port it got), and a handle on every
  client transport.
* Shutdown aborts the client transports *before* calling ``Broker.shutdown()``.
  amqtt stops a session by cancelling its reader task, which waits in
  ``asyncio.wait_for``; on Python < 3.12 ``wait_for`` drops a cancellation that
  arrives in the same loop step as a packet (CPython gh-86296), and shutdown
  then hangs forever whenever a client is sending at that moment. After an abort
  the reader ends on end-of-stream instead, and no cancellation is needed.
* Wills are dropped at shutdown: every client loses its link because the broker
  is going away, and the retained store is discarded with it, so publishing the
  wills would only race the teardown.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import BrokerConfig, ListenerConfig, ListenerType

__all__ = ["EmbeddedBroker"]

_LOGGER = logging.getLogger(__name__)

# Loggers made quiet unless we run at DEBUG: amqtt logs every connection at INFO,
# and the state-machine library it uses (transitions) logs every state change.
_NOISY_LOGGERS = ("amqtt", "transitions")

_LISTENER = "default"
_MIN_SHUTDOWN_BUDGET = 0.5  # seconds
_ANONYMOUS = "amqtt.plugins.authentication.AnonymousAuthPlugin"
_DEBUG_PLUGINS = (
    "amqtt.plugins.logging_amqtt.EventLoggerPlugin",
    "amqtt.plugins.logging_amqtt.PacketLoggerPlugin",
)


class EmbeddedBroker:
    """An amqtt broker on a loopback port, run as ``async with EmbeddedBroker() as broker``.

    ``broker.port`` is the port actually bound (a free one when ``port=0``) and
    ``broker.url`` the ``mqtt://`` URL to hand to the controller's settings.
    Leaving the block disconnects every client (they see the link drop) and
    stops the broker, normally within a few tens of milliseconds; no task of
    the broker's is left on the loop.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        shutdown_timeout: float = 2.0,
        logger: logging.Logger | None = None,
    ) -> None:
        if not _is_loopback(host):
            raise ValueError(
                f"the embedded broker allows anonymous clients, so it binds loopback only, "
                f"not {host!r}"
            )
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range: {port}")
        # "localhost" may resolve to both 127.0.0.1 and ::1, and port 0 would then
        # bind a different free port on each: pin it to one address.
        self._host = "127.0.0.1" if host == "localhost" else host
        self._requested_port = port
        self._shutdown_timeout = shutdown_timeout
        self._logger = logger or _LOGGER
        self._broker: Broker | None = None
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        # Each client connection, by the task serving it, to abort at shutdown.
        self._connections: dict[asyncio.Task[Any], _Connection] = {}
        self._stopping = False
        self._saved_levels: dict[str, int] = {}

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The port the broker listens on (only known once started)."""
        if self._port is None:
            raise RuntimeError("the embedded broker is not running")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"mqtt://{host}:{self.port}"

    @property
    def client_count(self) -> int:
        """Connections currently open (for diagnostics and tests)."""
        return len(self._connections)

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._broker is not None:
            raise RuntimeError("the embedded broker is already running")
        started = time.perf_counter()
        debug = self._logger.isEnabledFor(logging.DEBUG)
        self._quiet_amqtt(debug)
        self._stopping = False
        try:
            broker = Broker(_config(debug))
            await broker.start()
            self._broker = broker
            self._server = await asyncio.start_server(self._serve, self._host, self._requested_port)
        except BaseException:
            await self._stop(time.monotonic() + self._shutdown_timeout)
            raise
        self._port = int(self._server.sockets[0].getsockname()[1])
        self._logger.info(
            "embedded MQTT broker listening on %s (started in %.0f ms)",
            self.url,
            (time.perf_counter() - started) * 1000,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        started = time.perf_counter()
        await self._stop(time.monotonic() + self._shutdown_timeout)
        self._logger.info(
            "embedded MQTT broker stopped in %.0f ms", (time.perf_counter() - started) * 1000
        )

    async def _stop(self, deadline: float) -> None:
        """Stop accepting, drop every client, then stop amqtt; never wait past ``deadline``."""
        broker, server = self._broker, self._server
        self._stopping = True
        try:
            if server is not None:
                server.close()
            if broker is not None:
                for session, _handler in broker.sessions.values():
                    session.will_flag = False  # see the module docstring: no wills at shutdown
            for connection in self._connections.values():
                connection.abort()
            await self._wait_for_connections(deadline)
            if broker is not None and broker.transitions.state == "started":
                amqtt_log = logging.getLogger("amqtt.broker")
                amqtt_log.addFilter(_undelivered_at_shutdown)
                try:
                    # amqtt's own teardown gets a floor: skipping it would leak its tasks.
                    budget = max(_remaining(deadline), _MIN_SHUTDOWN_BUDGET)
                    await asyncio.wait_for(broker.shutdown(), budget)
                except TimeoutError:
                    self._logger.warning("the embedded MQTT broker did not stop in time")
                finally:
                    amqtt_log.removeFilter(_undelivered_at_shutdown)
            if server is not None:
                await server.wait_closed()
        finally:
            self._broker = None
            self._server = None
            self._port = None
            self._restore_logging()

    async def _wait_for_connections(self, deadline: float) -> None:
        tasks = set(self._connections)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=_remaining(deadline))
        if pending:
            # Not expected: amqtt ends a session on end-of-stream. Cancel rather than hang.
            self._logger.warning(
                "%d MQTT connection(s) still open after the clients were dropped; cancelling",
                len(pending),
            )
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=0.1)

    # -- connections ---------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Hand one accepted connection to amqtt and keep track of it until it ends."""
        task = asyncio.current_task()
        broker = self._broker
        if task is None or broker is None or self._stopping:  # accepted as we stop
            writer.transport.abort()
            return
        connection = _Connection(writer, StreamWriterAdapter(writer))
        self._connections[task] = connection
        try:
            await broker.external_connected(
                StreamReaderAdapter(reader), connection.adapter, _LISTENER
            )
        except Exception:
            self._logger.exception(
                "embedded MQTT broker: connection from %s failed", writer.get_extra_info("peername")
            )
        finally:
            del self._connections[task]
            # amqtt closes the stream when a session ends, but not on every early
            # failure (e.g. a client that never sends CONNECT).
            if not writer.is_closing():
                writer.close()

    # -- logging -------------------------------------------------------------

    def _quiet_amqtt(self, debug: bool) -> None:
        """Put amqtt's loggers at WARNING unless we log at DEBUG; undone on exit.

        Only loggers nobody configured (level NOTSET) are touched, so a user who
        sets ``amqtt`` to INFO on purpose still gets INFO.
        """
        if debug:
            return
        for name in _NOISY_LOGGERS:
            noisy = logging.getLogger(name)
            if noisy.level == logging.NOTSET:
                self._saved_levels[name] = noisy.level
                noisy.setLevel(logging.WARNING)

    def _restore_logging(self) -> None:
        for name, level in self._saved_levels.items():
            logging.getLogger(name).setLevel(level)
        self._saved_levels.clear()


def _undelivered_at_shutdown(record: logging.LogRecord) -> bool:
    """Drop amqtt's "N messages not broadcasted" warning while we stop it.

    Every client was disconnected on purpose a moment before, so messages
    still queued for them have nowhere to go: expected, not worth a warning
    on every Ctrl-C of the demo.
    """
    return not record.getMessage().endswith("messages not broadcasted")


@dataclass(frozen=True, slots=True)
class _Connection:
    """One client's stream, and the adapter amqtt writes to it through."""

    writer: asyncio.StreamWriter
    adapter: StreamWriterAdapter

    def abort(self) -> None:
        """Drop the connection now, without flushing (a client that stopped reading cannot hang us).

        The adapter is marked closed first: amqtt still has publish tasks in
        flight for this client, and their writes must become no-ops rather than
        land on a dead transport (asyncio logs a warning for each such write).
        """
        self.adapter.is_closed = True
        self.writer.transport.abort()


def _config(debug: bool) -> BrokerConfig:
    """amqtt's configuration: one external listener, anonymous access, no $SYS tree.

    Listing ``plugins`` replaces amqtt's defaults, which include the $SYS
    publisher (a timer every ``sys_interval`` s and a psutil probe) and two
    logging plugins that run on every packet; the latter come back at DEBUG.
    """
    plugins: dict[str, Any] = {_ANONYMOUS: {"allow_anonymous": True}}
    if debug:
        plugins.update({name: {} for name in _DEBUG_PLUGINS})
    return BrokerConfig(
        listeners={_LISTENER: ListenerConfig(type=ListenerType.EXTERNAL)},
        plugins=plugins,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _remaining(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)
