"""One Modbus TCP connection, with failures sorted into the two kinds that matter.

pymodbus's async client does the framing; this wrapper decides policy:

- **No answer** (refused, timed out, connection dropped) is a
  :class:`ModbusLinkError`. The connection is closed at once, so a late reply
  to a timed-out request can never be taken as the answer to the next one;
  the next request reconnects. Reconnect pacing is the caller's (the poll
  scheduler's backoff), so pymodbus's own reconnect loop and retries are off.
- **The device answered with a Modbus exception** (illegal address, device
  failure, ...) is a :class:`ModbusDeviceError` with the exception code: the
  link is fine and stays open.

pymodbus turns a cancelled request into a ``ModbusIOException``; this wrapper
turns it back into ``CancelledError`` so that stopping the controller really
stops a poller that was waiting on a dead device.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from drivers.modbus_profile import Table

# Modbus exception codes, for messages people can read.
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target did not respond",
}


class ModbusError(Exception):
    """Anything that kept a Modbus request from succeeding."""


class ModbusLinkError(ModbusError):
    """No answer: the connection was refused, dropped, or the device stayed silent."""


class ModbusDeviceError(ModbusError):
    """The device answered with a Modbus exception response."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})")


class ModbusConnection:
    """Requests to one ``host:port`` (a device, or a gateway serving several unit ids).

    Not safe for concurrent requests: the poll scheduler that owns it sends one
    at a time, which is what Modbus TCP devices and gateways expect anyway.
    """

    def __init__(
        self, host: str, port: int, *, timeout: float, logger: logging.Logger | None = None
    ) -> None:
        self.host = host
        self.port = port
        self._timeout = timeout
        self._logger = logger or logging.getLogger("drivers.modbus")
        self._client: AsyncModbusTcpClient | None = None

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def read(
        self, table: Table, address: int, count: int, unit: int
    ) -> list[int] | list[bool]:
        client = await self._connected()
        call: Callable[..., Awaitable[ModbusPDU]] = {
            Table.HOLDING: client.read_holding_registers,
            Table.INPUT: client.read_input_registers,
            Table.COIL: client.read_coils,
            Table.DISCRETE: client.read_discrete_inputs,
        }[table]
        response = await self._request(call(address, count=count, device_id=unit))
        if table.is_bits:
            bits = list(response.bits)
            if len(bits) < count:
                self.close()
                raise ModbusLinkError(f"short reply: {len(bits)} of {count} bits")
            return bits[:count]
        registers = list(response.registers)
        if len(registers) != count:
            self.close()
            raise ModbusLinkError(f"short reply: {len(registers)} of {count} registers")
        return registers

    async def write(
        self, table: Table, address: int, values: list[int] | list[bool], unit: int
    ) -> None:
        client = await self._connected()
        if table is Table.COIL:
            bits = [bool(value) for value in values]
            if len(bits) == 1:
                await self._request(client.write_coil(address, bits[0], device_id=unit))
            else:
                await self._request(client.write_coils(address, bits, device_id=unit))
        elif table is Table.HOLDING:
            words = [int(value) for value in values]
            if len(words) == 1:
                await self._request(client.write_register(address, words[0], device_id=unit))
            else:
                await self._request(client.write_registers(address, words, device_id=unit))
        else:
            raise ValueError(f"{table.value} cannot be written on Modbus")

    async def _connected(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        self.close()
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self._timeout,
            retries=0,  # retrying is the scheduler's decision, with its own pacing
            reconnect_delay=0,  # 0 = pymodbus never reconnects behind our back
        )
        try:
            connected = await client.connect()
        except ModbusException as error:
            client.close()
            raise self._link_error(error) from error
        except OSError as error:
            client.close()
            raise ModbusLinkError(f"cannot connect to {self.name}: {error}") from error
        if not connected:
            client.close()
            raise ModbusLinkError(f"cannot connect to {self.name}")
        if _cancel_swallowed():
            client.close()
            raise asyncio.CancelledError()
        self._client = client
        return client

    async def _request(self, pending: Awaitable[ModbusPDU]) -> ModbusPDU:
        try:
            response = await pending
        except ModbusException as error:
            self.close()
            raise self._link_error(error) from error
        except OSError as error:
            self.close()
            raise ModbusLinkError(f"{self.name}: {error}") from error
        if _cancel_swallowed():
            self.close()  # the request finished, but the task was told to stop
            raise asyncio.CancelledError()
        if response.isError():
            code = response.exception_code if isinstance(response, ExceptionResponse) else 0
            raise ModbusDeviceError(code)
        return response

    def _link_error(self, error: ModbusException) -> BaseException:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # pymodbus reports our own cancellation as an I/O error: keep it a cancel.
            return asyncio.CancelledError()
        return ModbusLinkError(f"no answer from {self.name}: {_reason(error)}")


def _cancel_swallowed() -> bool:
    """Whether this task was cancelled yet its await returned normally.

    On Python 3.11, ``asyncio.wait_for`` (inside pymodbus) hands back an answer
    that arrived in the same loop step as a cancel, and the cancel is lost; a
    poller would then poll on and never stop. The task still says it is being
    cancelled, so the cancel is raised here instead.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _reason(error: ModbusException) -> str:
    text = str(error)
    # pymodbus prefixes messages with "Modbus Error: [Input/Output] "; keep the sentence.
    return text.rsplit("] ", 1)[-1].strip() or type(error).__name__
