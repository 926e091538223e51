"""A whole simulated center: the scenario, every MQTT device and every Modbus device.

Everything shares one clock, so at 600x speed a day of the center plays in a
little over two minutes and the devices still agree with each other: the
scenario moves people, the MQTT sensors report them, the air conditioners act
on the same air the climate sensors measure.

Used by ``centerctl simulate`` (against a real broker and the Modbus ports of
the site file), by ``centerctl demo`` (embedded broker, free ports) and by
tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from controller.clock import Clock
from controller.settings import MqttEndpoint
from controller.site import Device, Site
from drivers.modbus_profile import Profile
from simulators.faults import FaultPlan
from simulators.modbus_devices import ModbusSimulators, modbus_simulators
from simulators.mqtt_devices import DeviceSimulator, mqtt_simulators
from simulators.scenarios import ScenarioRunner

_log = logging.getLogger("simulators.center")


class SimulatedCenter:
    """Start with ``async with``; every part runs in the background until the block ends."""

    def __init__(
        self,
        site: Site,
        profiles: Mapping[str, Profile],
        endpoint: MqttEndpoint,
        *,
        clock: Clock,
        speed: float = 1.0,
        scenario: str = "auto",
        faults: FaultPlan | None = None,
        seed: int = 0,
        warmup: float = 0.0,
        prefix: str | None = None,
        ca_file: Path | None = None,
        modbus_host: str = "127.0.0.1",
        port_for: Callable[[Device], int] | None = None,
    ) -> None:
        self._faults = faults or FaultPlan()
        self.runner = ScenarioRunner(site, scenario, clock, seed, warmup=warmup)
        self.modbus: ModbusSimulators = modbus_simulators(
            site,
            profiles,
            self.runner.building,
            clock,
            self._faults,
            host=modbus_host,
            port_for=port_for,
            speed=speed,
        )
        self.mqtt: list[DeviceSimulator] = mqtt_simulators(
            site,
            self.runner.building,
            endpoint,
            clock=clock,
            prefix=prefix,
            faults=self._faults,
            seed=seed,
            ca_file=ca_file,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def scenario(self) -> str:
        return self.runner.scenario.name

    @property
    def modbus_ports(self) -> dict[str, int]:
        """The port each Modbus device really listens on (after start)."""
        return {device_id: sim.server.port for device_id, sim in self.modbus.devices.items()}

    async def __aenter__(self) -> Self:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.modbus)
            stack.push_async_callback(self._stop_tasks)
            self._tasks.append(asyncio.create_task(self.runner.run(), name="scenario"))
            for simulator in self.mqtt:
                name = f"sim-{simulator.device.id}"
                self._tasks.append(asyncio.create_task(simulator.run(), name=name))
            self._stack = stack.pop_all()
        _log.info(
            "simulating %d MQTT and %d Modbus devices, scenario %s",
            len(self.mqtt),
            len(self.modbus.devices),
            self.scenario,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def wait(self) -> None:
        """Until a part fails (its error is raised); parts never end by themselves."""
        if not self._tasks:
            raise RuntimeError("the simulated center is not running")
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()

    async def _stop_tasks(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, Exception):
                _log.error("%s failed: %s", task.get_name(), result, exc_info=result)


def site_with_ports(site: Site, ports: Mapping[str, int]) -> Site:
    """The site with its Modbus devices moved to ``ports`` (device id -> port)."""
    devices = [
        device.model_copy(update={"port": ports[device.id]}) if device.id in ports else device
        for device in site.devices
    ]
    return site.model_copy(update={"devices": devices})
