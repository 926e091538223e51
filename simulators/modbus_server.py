"""A Modbus TCP device served by pymodbus, with its register map taken from a profile.

The simulator reads the same :class:`~drivers.modbus_profile.Profile` the driver
does, so a vendor profile with other addresses, scales or word order gets a
working simulator without code: the map *is* the simulator. Only the addresses
of the profile's points exist; anything else answers "illegal data address"
(exception 2), as real devices do, so a driver reading one register too far
fails loudly in tests instead of reading a harmless zero.

pymodbus does the framing, decodes the request PDUs and runs them against the
datastore (:class:`_Memory`); this module decides what a *device* does with a
request: which unit ids it answers, and the faults tests and ``--faults`` switch
on at run time:

- ``set_dead(True)``: the listening socket is closed and every connection is
  dropped, so clients get "connection refused"; ``set_dead(False)`` listens
  again on the same port.
- ``set_silent(True)``: requests are accepted and read but never answered, so
  clients time out.
- ``set_delay(seconds)``: every answer is sent that many seconds after the
  request arrived (a slow device or a congested link). The delay is measured
  on the injected clock like everything simulated: real seconds at speed 1,
  shorter under a :class:`~controller.clock.ScaledClock`, and under a
  :class:`~controller.clock.VirtualClock` the answer leaves only when the test
  advances the clock.
- ``set_exception(code)``: every request is answered with that Modbus
  exception code (4, device failure, for a broken unit); ``None`` clears it.

A request for another unit id gets exception 11 (gateway target device failed
to respond), as a gateway answers for a unit it cannot reach: a site file with
a wrong ``unit`` then fails at once with a clear code rather than looking like
a dead device through timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.datastore.context import ModbusBaseDeviceContext
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusBaseServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler

from controller.clock import Clock
from controller.site import Device
from drivers.modbus_profile import (
    Point,
    PointValue,
    Profile,
    ReadBlock,
    Table,
    decode_block,
    encode_value,
)

logger = logging.getLogger("simulators.modbus")

# Which table each Modbus function code works on (pymodbus passes the code to
# the datastore, not the table). 22 is mask write, 23 read/write multiple.
_TABLES = {
    1: Table.COIL,
    5: Table.COIL,
    15: Table.COIL,
    2: Table.DISCRETE,
    4: Table.INPUT,
    3: Table.HOLDING,
    6: Table.HOLDING,
    16: Table.HOLDING,
    22: Table.HOLDING,
    23: Table.HOLDING,
}


# Client writes remembered for tests (a long demo must not grow without bound).
_WRITE_LOG = 1000

# Function codes that write (write coil(s), write register(s), mask write,
# read/write multiple): counted in ModbusDeviceServer.writes.
_WRITES = frozenset({5, 6, 15, 16, 22, 23})


class Behaviour(Protocol):
    """What makes a register map a device: reactions to writes, and a life of its own."""

    def on_write(self, name: str, index: int | None, value: PointValue) -> None:
        """A client wrote ``value`` (physical units) to point ``name`` (item ``index`` of
        an array point, ``None`` for single points); registers already hold it."""

    async def run(self) -> None:
        """Run until cancelled (ticks, timers); the server owns this task."""


WriteHook = Callable[[str, int | None, PointValue], None]


class _Memory(ModbusBaseDeviceContext):
    """The device's registers and bits: exactly the addresses of the profile's points.

    Implements pymodbus's device-context interface directly with zero-based
    addresses (the address on the wire is the address in the profile). pymodbus's
    own ``ModbusDeviceContext`` adds 1 to every address before looking it up in
    its data blocks, a leftover of 1-based "register numbers" that is easy to
    get wrong by one; nothing here needs it.

    Client writes are checked the way a device checks them: only writable points
    may be written (otherwise exception 2), and a value the profile gives no
    meaning to (an unknown enum code, a setpoint outside its range) is refused
    with exception 3 and changes nothing.
    """

    def __init__(self, label: str, profile: Profile, on_write: WriteHook) -> None:
        self._label = label
        self._profile = profile
        self._on_write = on_write
        self._words: dict[Table, dict[int, int]] = {Table.HOLDING: {}, Table.INPUT: {}}
        self._bits: dict[Table, dict[int, bool]] = {Table.COIL: {}, Table.DISCRETE: {}}
        self._owners: dict[Table, dict[int, str]] = {table: {} for table in Table}
        for name, point in profile.points.items():
            for address in range(point.address, point.address + point.width):
                self._owners[point.table][address] = name
                if point.table.is_bits:
                    self._bits[point.table][address] = False
                else:
                    self._words[point.table][address] = 0
        for name, point in profile.points.items():
            self._start_meaningful(name, point)

    def _start_meaningful(self, name: str, point: Point) -> None:
        """A fresh device holds values its profile gives a meaning to: zero where
        zero means something, else the nearest value that does (a setpoint range
        of 16..30 starts at 16, an enum without code 0 at its lowest code)."""
        if point.table.is_bits or not self._issues(name, point):
            return
        value: object
        if point.enum is not None:
            value = point.enum[min(point.enum)]
        else:
            value = point.offset  # what a raw 0 means
            if point.minimum is not None:
                value = max(value, point.minimum)
            if point.maximum is not None:
                value = min(value, point.maximum)
        words = encode_value(self._profile, name, value)
        for index in range(point.count):
            self.write(point.table, point.address + index * _stride(point), words)

    def _issues(self, name: str, point: Point) -> bool:
        raw = self.read(point.table, point.address, point.width)
        assert raw is not None
        return bool(decode_block(self._profile, _block(name, point), raw)[1])

    # -- the simulator's side: any point, no access checks -------------------

    def read(self, table: Table, address: int, count: int) -> list[int] | list[bool] | None:
        """Raw values at ``address..address+count-1``, or None if any is not mapped."""
        addresses = range(address, address + count)
        if table.is_bits:
            bits = self._bits[table]
            return [bits[a] for a in addresses] if all(a in bits for a in addresses) else None
        words = self._words[table]
        return [words[a] for a in addresses] if all(a in words for a in addresses) else None

    def write(self, table: Table, address: int, values: Sequence[int] | Sequence[bool]) -> None:
        """Store raw values; every address must belong to a point (a bug otherwise)."""
        cells: dict[int, int] | dict[int, bool] = (
            self._bits[table] if table.is_bits else self._words[table]
        )
        missing = [a for a in range(address, address + len(values)) if a not in cells]
        if missing:
            raise ValueError(f"{table.value} address {missing[0]} is not in the profile")
        if table.is_bits:
            for offset, value in enumerate(values):
                self._bits[table][address + offset] = bool(value)
        else:
            for offset, value in enumerate(values):
                self._words[table][address + offset] = int(value)

    # -- pymodbus's side: what a client may do --------------------------------

    def getValues(
        self, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        table = _TABLES.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        values = self.read(table, address, count)
        return ExcCodes.ILLEGAL_ADDRESS if values is None else values

    def setValues(
        self, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        table = _TABLES.get(func_code)
        if table is None or not table.writable:
            return ExcCodes.ILLEGAL_FUNCTION
        touched: dict[str, set[int]] = {}
        for address_ in range(address, address + len(values)):
            name = self._owners[table].get(address_)
            if name is None or not self._profile.points[name].writable:
                return ExcCodes.ILLEGAL_ADDRESS
            point = self._profile.points[name]
            touched.setdefault(name, set()).add((address_ - point.address) // _stride(point))
        if not self._acceptable(table, address, values, touched):
            return ExcCodes.ILLEGAL_VALUE
        self.write(table, address, values)
        for name, indexes in touched.items():
            point = self._profile.points[name]
            decoded = self.decode(name)
            for index in sorted(indexes):
                if point.count == 1:
                    self._on_write(name, None, decoded)
                else:
                    assert isinstance(decoded, tuple)
                    self._on_write(name, index, decoded[index])
        return None

    def decode(self, name: str) -> PointValue:
        """The physical value of a point, as the driver decodes it (None: no meaning)."""
        point = self._profile.points[name]
        raw = self.read(point.table, point.address, point.width)
        assert raw is not None  # every address of every point is mapped in __init__
        values, _ = decode_block(self._profile, _block(name, point), raw)
        return values[name]

    def _acceptable(
        self,
        table: Table,
        address: int,
        values: list[int] | list[bool],
        touched: dict[str, set[int]],
    ) -> bool:
        """Whether every point the write touches still decodes to a meaningful value."""
        for name in touched:
            point = self._profile.points[name]
            current = self.read(point.table, point.address, point.width)
            assert current is not None
            scratch: list[int | bool] = list(current)
            for offset, value in enumerate(values):
                position = address + offset - point.address
                if 0 <= position < point.width:
                    scratch[position] = value
            block = _block(name, point)
            _, issues = decode_block(self._profile, block, scratch)
            if issues:
                reasons = "; ".join(issue.reason for issue in issues)
                logger.info("%s: refused a write to %s: %s", self._label, name, reasons)
                return False
        return True


def _block(name: str, point: Point) -> ReadBlock:
    return ReadBlock(point.table, point.address, point.width, ((name, point),))


def _stride(point: Point) -> int:
    """Addresses per item of an array point."""
    return 1 if point.table.is_bits else point.data_type.words


class _Sink(Protocol):
    """What a connection reports to the device server it belongs to."""

    def connection_opened(self, connection: _Connection) -> None: ...

    def connection_closed(self, connection: _Connection) -> None: ...

    def request_received(
        self, connection: _Connection, request: ModbusPDU, addr: tuple[Any, ...] | None
    ) -> None: ...


class _Listener(ModbusTcpServer):
    """pymodbus's TCP server used as the factory of connection handlers.

    It carries what handlers need (framer, PDU decoder, datastore); the
    listening socket itself is opened and closed by :class:`ModbusDeviceServer`
    with ``loop.create_server``, so that a port that cannot be bound raises the
    real ``OSError`` (pymodbus's ``listen()`` logs it and returns False) and so
    that listening can stop and start again without recreating the server.
    """

    def __init__(self, context: ModbusServerContext, address: tuple[str, int], sink: _Sink) -> None:
        super().__init__(context, address=address)
        self._sink = sink

    def callback_new_connection(self) -> _Connection:
        return _Connection(self, self._sink)


class _Connection(ServerRequestHandler):
    """One client connection; hands each decoded request to the device server.

    pymodbus's handler answers from an unowned ``run_coroutine_threadsafe``
    task and reads ``self.last_pdu`` again after awaiting the datastore, so a
    second request arriving during a slow answer would be answered with the
    wrong transaction id. Here ``handle_later`` (which pymodbus schedules with
    ``call_soon`` right after decoding, before the next read from the socket)
    captures the request and hands it over; the device server answers it from
    a task it owns.
    """

    def __init__(self, listener: _Listener, sink: _Sink) -> None:
        # pymodbus leaves ServerRequestHandler.__init__ unannotated.
        super().__init__(listener, None, None, None)  # type: ignore[no-untyped-call]
        self._sink = sink
        self.closed = asyncio.Event()
        sink.connection_opened(self)

    def handle_later(self) -> None:
        if self.last_pdu is not None:
            self._sink.request_received(self, self.last_pdu, self.last_addr)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.closed.set()
        self._sink.connection_closed(self)

    def drop(self) -> None:
        """Close at once, without flushing: the device went away."""
        if isinstance(self.transport, asyncio.Transport):
            self.transport.abort()  # connection_lost follows on the next loop turn
        elif not self.closed.is_set():
            self.closed.set()
            self._sink.connection_closed(self)


class ModbusDeviceServer:
    """One simulated Modbus TCP device: a profile's register map on a port.

    Use as ``async with server:``; leaving stops listening, drops connections,
    and cancels and awaits every task the server started (request answers and
    the behaviour's ``run()``). ``port=None`` listens on ``device.port``; ``0``
    picks a free port at start, available as :attr:`port` from then on (and
    kept when the device dies and comes back).
    """

    def __init__(
        self,
        device: Device,
        profile: Profile,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        clock: Clock,
        behaviour: Behaviour | None = None,
    ) -> None:
        if profile.kind is not device.kind:
            raise ValueError(
                f"{device.id}: profile {profile.id} is for {profile.kind.value} devices"
            )
        self.device = device
        self.profile = profile
        self.host = host
        self._port = device.port if port is None else port
        self._clock = clock
        self._behaviour = behaviour
        self._memory = _Memory(device.id, profile, self._client_wrote)
        # One unit id; other ids are answered in _response before pymodbus looks.
        # (pymodbus leaves ModbusServerContext.__init__ unannotated.)
        self._context = ModbusServerContext(  # type: ignore[no-untyped-call]
            devices={device.unit: self._memory}, single=False
        )
        self._listener: _Listener | None = None
        self._server: asyncio.Server | None = None
        self._connections: dict[_Connection, None] = {}  # insertion-ordered set
        self._answers: dict[asyncio.Task[None], None] = {}
        self._behaviour_task: asyncio.Task[None] | None = None
        self._started = False
        self._dead = False
        self._silent = False
        self._delay = 0.0
        self._exception: int | None = None
        self._requests = 0
        self._writes = 0
        self._write_log: deque[tuple[str, int | None, PointValue]] = deque(maxlen=_WRITE_LOG)
        # An extra write hook for tests, called after the behaviour's on_write.
        self.on_write: WriteHook | None = None

    # -- state -----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port served (the chosen one once started with port 0)."""
        return self._port

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def requests(self) -> int:
        """Requests received while listening, answered or not (faults included)."""
        return self._requests

    @property
    def writes(self) -> int:
        """Write requests received (accepted, refused or unanswered alike)."""
        return self._writes

    @property
    def client_writes(self) -> list[tuple[str, int | None, PointValue]]:
        """The latest accepted client writes per point item, oldest first, as
        ``(name, index, value)`` in physical units (the last 1000)."""
        return list(self._write_log)

    @property
    def pulses(self) -> list[int]:
        """Cabinet compartments a client pulsed (wrote 1 to ``unlock``), in order."""
        return [
            index
            for name, index, value in self._write_log
            if name == "unlock" and index is not None and value is True
        ]

    @property
    def in_flight(self) -> int:
        """Requests being answered now (waiting out a delay, or in the datastore)."""
        return len(self._answers)

    @property
    def connections(self) -> int:
        """Client connections open now."""
        return len(self._connections)

    @property
    def dead(self) -> bool:
        return self._dead

    @property
    def silent(self) -> bool:
        return self._silent

    @property
    def delay(self) -> float:
        return self._delay

    @property
    def exception(self) -> int | None:
        return self._exception

    def attach(self, behaviour: Behaviour) -> None:
        """Give the device its behaviour (before start): it sees writes and runs with it."""
        if self._behaviour is not None:
            raise RuntimeError(f"{self.device.id} already has a behaviour")
        if self._started:
            raise RuntimeError(f"{self.device.id}: attach the behaviour before starting")
        self._behaviour = behaviour

    # -- points in physical units --------------------------------------------------

    def get(self, name: str, index: int | None = None) -> PointValue:
        """A point's value as the driver would decode it (a tuple for a whole array)."""
        point = self._point(name)
        value = self._memory.decode(name)
        if index is None:
            return value
        _check_index(name, point, index)
        if point.count == 1:
            return value
        assert isinstance(value, tuple)
        return value[index]

    def set(self, name: str, value: object, index: int | None = None) -> None:
        """Put a physical value into a point, read-only ones included (the device's
        own doing: behaviours are not told). An array point without ``index``
        takes a sequence of one value per item."""
        point = self._point(name)
        if index is None and point.count > 1:
            if not isinstance(value, Sequence) or isinstance(value, str | bytes):
                raise ValueError(f"{name} has {point.count} items: give an index or a sequence")
            if len(value) != point.count:
                raise ValueError(f"{name} has {point.count} items, not {len(value)}")
            for position, item in enumerate(value):
                self.set(name, item, position)
            return
        position = 0 if index is None else index
        _check_index(name, point, position)
        raw = encode_value(self.profile, name, value)
        self._memory.write(point.table, point.address + position * _stride(point), raw)

    def get_raw(self, table: Table | str, address: int, count: int = 1) -> list[int] | list[bool]:
        """Raw words (or bits) as a client reads them, for tests of the wire format."""
        values = self._memory.read(Table(table), address, count)
        if values is None:
            raise IndexError(f"{table} {address}..{address + count - 1} is not all in the profile")
        return values

    def set_raw(
        self, table: Table | str, address: int, values: Sequence[int] | Sequence[bool]
    ) -> None:
        """Put raw words (or bits) in place, meaningful or not: a device that
        reports a code its profile does not know, for tests of the decoder."""
        self._memory.write(Table(table), address, values)

    def _point(self, name: str) -> Point:
        point = self.profile.points.get(name)
        if point is None:
            raise KeyError(f"{self.profile.id} has no point {name!r}")
        return point

    def _client_wrote(self, name: str, index: int | None, value: PointValue) -> None:
        logger.debug("%s: client wrote %s[%s] = %r", self.device.id, name, index, value)
        self._write_log.append((name, index, value))
        if self._behaviour is not None:
            self._behaviour.on_write(name, index, value)
        if self.on_write is not None:
            self.on_write(name, index, value)

    # -- fault switches ----------------------------------------------------------

    async def set_dead(self, dead: bool) -> None:
        """Stop listening and drop every connection (True), or listen again (False)."""
        self._dead = dead
        if not self._started:
            return
        if dead and self._server is not None:
            logger.info("%s: dead (port %d closed)", self.device.id, self._port)
            await self._close_network()
        elif not dead and self._server is None:
            await self._listen()
            logger.info("%s: alive again on port %d", self.device.id, self._port)

    def set_silent(self, silent: bool) -> None:
        """Read requests but never answer them (True), or answer again (False)."""
        self._silent = silent
        logger.info("%s: %s", self.device.id, "silent" if silent else "answering")

    def set_delay(self, seconds: float) -> None:
        """Answer ``seconds`` (on the injected clock) after each request arrives."""
        if not seconds >= 0:
            raise ValueError("a delay cannot be negative")
        self._delay = seconds
        logger.info("%s: answers delayed by %.3g s", self.device.id, seconds)

    def set_exception(self, code: int | None) -> None:
        """Answer every request with Modbus exception ``code``, or normally (None)."""
        if code is not None and not 1 <= code <= 255:
            raise ValueError("a Modbus exception code is 1..255")
        self._exception = code
        logger.info("%s: exception answers %s", self.device.id, code or "off")

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> ModbusDeviceServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._started:
            raise RuntimeError(f"{self.device.id} is already running")
        self._started = True
        self._listener = _Listener(self._context, (self.host, self._port), self)
        try:
            if self._behaviour is not None:
                self._behaviour_task = self._spawn_behaviour(self._behaviour)
            if self._dead:
                if self._port == 0:
                    # Keep a port to come back on; nothing listens there meanwhile.
                    self._port = _free_port(self.host)
            else:
                await self._listen()
        except BaseException:
            await self.stop()
            raise
        logger.info(
            "%s: %s on %s:%d unit %d%s",
            self.device.id,
            self.profile.id,
            self.host,
            self._port,
            self.device.unit,
            " (dead)" if self._dead else "",
        )

    async def stop(self) -> None:
        """Stop serving and end every task the server started; safe to call twice."""
        if not self._started:
            return
        self._started = False
        await self._close_network()
        task, self._behaviour_task = self._behaviour_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # pymodbus remembers the last server created in a class attribute (for its
        # ServerStop helpers); do not let that keep ours alive after it stopped.
        if ModbusBaseServer.active_server is self._listener:
            ModbusBaseServer.active_server = None
        self._listener = None

    async def _listen(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            self._listener.handle_new_connection, self.host, self._port, reuse_address=True
        )
        ports = {sock.getsockname()[1] for sock in server.sockets}
        if len(ports) != 1:
            server.close()
            raise ValueError(
                f"{self.host} has several addresses, each got its own port {sorted(ports)}: "
                "give one address (e.g. 127.0.0.1) or a fixed port"
            )
        self._port = int(ports.pop())
        self._server = server

    async def _close_network(self) -> None:
        """Close the listening socket, drop connections, cancel pending answers."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        connections = list(self._connections)
        for connection in connections:
            connection.drop()
        for connection in connections:
            await connection.closed.wait()
        answers = list(self._answers)
        for answer in answers:
            answer.cancel()
        for answer in answers:
            with contextlib.suppress(asyncio.CancelledError):
                await answer

    def _spawn_behaviour(self, behaviour: Behaviour) -> asyncio.Task[None]:
        task = asyncio.create_task(behaviour.run(), name=f"modbus-sim {self.device.id} behaviour")
        task.add_done_callback(self._behaviour_ended)
        return task

    def _behaviour_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # Logged now, and raised again when stop() awaits the task.
            logger.error("%s: behaviour crashed", self.device.id, exc_info=task.exception())

    # -- requests (called by the connections) ------------------------------------

    def connection_opened(self, connection: _Connection) -> None:
        self._connections[connection] = None
        logger.debug("%s: client connected", self.device.id)

    def connection_closed(self, connection: _Connection) -> None:
        self._connections.pop(connection, None)
        logger.debug("%s: client disconnected", self.device.id)

    def request_received(
        self, connection: _Connection, request: ModbusPDU, addr: tuple[Any, ...] | None
    ) -> None:
        self._requests += 1
        if request.function_code in _WRITES:
            self._writes += 1
        if self._silent:
            logger.debug("%s: silent, ignoring %s", self.device.id, request)
            return
        self._own(self._answer(connection, request, addr), f"{self.device.id} answer")

    def _own(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=f"modbus-sim {name}")
        self._answers[task] = None
        task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task[None]) -> None:
        self._answers.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s: answering failed", self.device.id, exc_info=task.exception())

    async def _answer(
        self, connection: _Connection, request: ModbusPDU, addr: tuple[Any, ...] | None
    ) -> None:
        if self._delay > 0:
            await self._clock.sleep(self._delay)
        response = await self._response(request)
        response.transaction_id = request.transaction_id
        response.dev_id = request.dev_id
        if not connection.is_active():
            logger.debug("%s: client left before its answer", self.device.id)
            return
        connection.pdu_send(response, addr=addr)

    async def _response(self, request: ModbusPDU) -> ModbusPDU:
        if request.dev_id != self.device.unit:
            logger.debug("%s: no unit %d here", self.device.id, request.dev_id)
            return ExceptionResponse(request.function_code, ExcCodes.GATEWAY_NO_RESPONSE)
        if self._exception is not None:
            return ExceptionResponse(request.function_code, self._exception)
        try:
            return await request.datastore_update(self._context, request.dev_id)
        except Exception:
            # What a device does when its firmware trips over a request: it answers
            # "device failure". The cause is a bug here (or in a behaviour): log it.
            logger.exception("%s: request %s failed", self.device.id, request)
            return ExceptionResponse(request.function_code, ExcCodes.DEVICE_FAILURE)


def _check_index(name: str, point: Point, index: int) -> None:
    if not 0 <= index < point.count:
        raise IndexError(f"{name} has items 0..{point.count - 1}, not {index}")


def _free_port(host: str) -> int:
    """A port nothing listens on now, for a device that starts dead on port 0."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
