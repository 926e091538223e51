"""mqtts:// with a user and password against a real Mosquitto with TLS and a password file."""

from __future__ import annotations

import asyncio
import getpass
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.clock import SystemClock
from controller.service import ControllerService
from controller.site import Site
from tests.conftest import Broker, controller_settings, free_port, start_controller, wait_until

pytestmark = pytest.mark.broker

USER = "controller"
PASSWORD = "s3cret-pw"


def _run(*command: str, cwd: Path) -> None:
    subprocess.run(command, cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Broker, Path]]:
    """Mosquitto with only a TLS listener and password authentication."""
    if shutil.which("openssl") is None or shutil.which("mosquitto_passwd") is None:
        pytest.fail("openssl and mosquitto_passwd are needed (apt-get install mosquitto)")
    _run(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.crt", cwd=tmp_path,
    )  # fmt: skip
    _run(
        "openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr", cwd=tmp_path,
    )  # fmt: skip
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _run(
        "openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt",
        cwd=tmp_path,
    )  # fmt: skip
    _run("mosquitto_passwd", "-b", "-c", "passwords", USER, PASSWORD, cwd=tmp_path)
    for name in ("server.key", "passwords"):
        (tmp_path / name).chmod(0o644)  # mosquitto may drop to its own user
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\n"
        f"cafile {tmp_path / 'ca.crt'}\ncertfile {tmp_path / 'server.crt'}\n"
        f"keyfile {tmp_path / 'server.key'}\n"
        f"allow_anonymous false\npassword_file {tmp_path / 'passwords'}\n"
        "persistence false\nset_tcp_nodelay true\n"
        # Started as root, mosquitto would switch to its own user before reading
        # the key and password file in pytest's private directory.
        f"user {getpass.getuser()}\n"
    )
    broker = Broker(config, port)
    broker.start()
    yield broker, tmp_path / "ca.crt"
    broker.stop()


async def test_connects_over_tls_with_user_and_password(
    tls_broker: tuple[Broker, Path], site: Site
) -> None:
    broker, ca_file = tls_broker
    settings = controller_settings(
        broker,
        mqtt_url=f"mqtts://{USER}:{PASSWORD}@127.0.0.1:{broker.port}",
        mqtt_ca_file=ca_file,
    )
    running = await start_controller(settings, site)
    try:
        assert running.service.health()["mqtt"]["connected"] is True
    finally:
        await running.shutdown()


async def test_a_wrong_password_is_reported_without_showing_it(
    tls_broker: tuple[Broker, Path], site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    broker, ca_file = tls_broker
    caplog.set_level(logging.DEBUG)
    settings = controller_settings(
        broker,
        mqtt_url=f"mqtts://{USER}:wrong-{PASSWORD}@127.0.0.1:{broker.port}",
        mqtt_ca_file=ca_file,
    )
    service = ControllerService(settings, site, SystemClock())
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await wait_until(lambda: service.link.status.last_error, message="a refused connect")
        report = service.health()
        assert report["status"] == "down"
        assert "authori" in str(report["mqtt"]["last_error"]).lower()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert PASSWORD not in caplog.text
    assert f"mqtts://{USER}:***@127.0.0.1:{broker.port}" in caplog.text


async def test_an_untrusted_certificate_is_refused(
    tls_broker: tuple[Broker, Path], site: Site
) -> None:
    broker, _ = tls_broker
    settings = controller_settings(
        broker, mqtt_url=f"mqtts://{USER}:{PASSWORD}@127.0.0.1:{broker.port}"
    )  # no CA file: the system's CAs do not know the test CA
    service = ControllerService(settings, site, SystemClock())
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await wait_until(lambda: service.link.status.last_error, message="a refused connect")
        assert "certificate" in str(service.link.status.last_error).lower()
        assert not service.link.status.connected
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
