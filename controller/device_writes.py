"""What a rule needs to command a Modbus device: write points and learn if they held.

:class:`~controller.modbus_poller.ModbusDevices` is the implementation; rule
tests on the virtual clock pass a recorder that reports back like a device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from controller.modbus_poller import PointWrite


class DeviceWriter(Protocol):
    async def write(self, device_id: str, writes: Sequence[PointWrite]) -> None:
        """Write and confirm; ValueError for a request the profile forbids,
        :class:`~controller.modbus_poller.WriteFailed` when unconfirmed (an
        alarm is raised by the writer)."""
        ...
