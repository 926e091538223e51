"""Deployment settings, the CLI's settings-error path, and the log formatters.

The recurring assertion: a secret (MQTT password, InfluxDB token, webhook
secret, API token) never shows up in anything a person or a log collector sees.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from controller import cli
from controller.logs import JsonFormatter, TextFormatter, setup_logging
from controller.settings import LogFormat, MqttEndpoint, Scope, Settings
from tests.conftest import CHANGBAI

MQTT_PASSWORD = "mq-p4ss-word"
INFLUX_TOKEN = "influx-t0ken-value"
WEBHOOK_SECRET = "webhook-s3cret-value"
STAFF_TOKEN = "staff-t0ken-value"
BOOKING_TOKEN = "booking-t0ken-value"
SECRETS = (MQTT_PASSWORD, INFLUX_TOKEN, WEBHOOK_SECRET, STAFF_TOKEN, BOOKING_TOKEN)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CENTER_* variable or .env file from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("CENTER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """setup_logging replaces the root handlers; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _settings() -> Settings:
    return Settings(_env_file=None)  # type: ignore[call-arg]


def _secret_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CENTER_MQTT_URL", f"mqtts://controller:{MQTT_PASSWORD}@broker.lan")
    monkeypatch.setenv("CENTER_INFLUX_URL", "http://influx.lan:8086")
    monkeypatch.setenv("CENTER_INFLUX_TOKEN", INFLUX_TOKEN)
    monkeypatch.setenv("CENTER_WEBHOOK_URL", "https://booking.example/hook")
    monkeypatch.setenv("CENTER_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv(
        "CENTER_API_TOKENS",
        json.dumps({STAFF_TOKEN: ["staff"], BOOKING_TOKEN: ["booking"]}),
    )


# --- Settings from the environment ---------------------------------------------------


def test_defaults_without_environment() -> None:
    settings = _settings()

    assert settings.mqtt_url is None
    assert settings.mqtt_endpoint() is None
    assert settings.http_port == 8080
    assert settings.api_tokens == {}
    assert settings.scopes_by_token() == {}
    assert settings.log_format is LogFormat.TEXT
    assert settings.topic_prefix("changbai") == "center/changbai"
    assert settings.client_id("changbai") == "centerctl-changbai"


def test_settings_come_from_center_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CENTER_MQTT_URL", "mqtt://broker.lan:1884")
    monkeypatch.setenv("CENTER_HTTP_PORT", "9090")
    monkeypatch.setenv("CENTER_LOG_LEVEL", "debug")
    monkeypatch.setenv("CENTER_LOG_FORMAT", "json")
    monkeypatch.setenv("CENTER_MQTT_TOPIC_PREFIX", "site/a/")
    monkeypatch.setenv("HTTP_PORT", "1")  # without the prefix: not ours

    settings = _settings()

    endpoint = settings.mqtt_endpoint()
    assert endpoint is not None
    assert (endpoint.host, endpoint.port, endpoint.tls) == ("broker.lan", 1884, False)
    assert settings.http_port == 9090
    assert settings.log_level == "DEBUG"
    assert settings.log_format is LogFormat.JSON
    assert settings.topic_prefix("changbai") == "site/a"


def test_settings_read_a_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("CENTER_HTTP_PORT=8181\n", encoding="utf-8")

    assert Settings().http_port == 8181


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CENTER_HTTP_PORT", "70000", "less than or equal to 65535"),
        ("CENTER_LOG_LEVEL", "chatty", "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
        ("CENTER_MQTT_KEEPALIVE", "1", "greater than or equal to 5"),
        ("CENTER_MQTT_URL", "http://broker", "mqtt:// or mqtts://"),
    ],
)
def test_bad_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ValidationError, match=message):
        _settings()


# --- MQTT URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "tls", "username", "password"),
    [
        ("mqtt://broker.lan", "broker.lan", 1883, False, None, None),
        ("mqtts://broker.lan", "broker.lan", 8883, True, None, None),
        ("mqtt://127.0.0.1:1884", "127.0.0.1", 1884, False, None, None),
        ("mqtts://broker.lan:9883", "broker.lan", 9883, True, None, None),
        ("mqtt://alice:secret@broker.lan", "broker.lan", 1883, False, "alice", "secret"),
        ("mqtts://alice:p%40ss%3Aw%2Fd@h:8884", "h", 8884, True, "alice", "p@ss:w/d"),
        ("mqtt://al%20ice@broker.lan", "broker.lan", 1883, False, "al ice", None),
        ("mqtt://[::1]:1883", "::1", 1883, False, None, None),
    ],
)
def test_mqtt_urls_parse(
    url: str, host: str, port: int, tls: bool, username: str | None, password: str | None
) -> None:
    endpoint = MqttEndpoint.parse(url)

    assert endpoint.host == host
    assert endpoint.port == port
    assert endpoint.tls is tls
    assert endpoint.username == username
    secret = endpoint.password.get_secret_value() if endpoint.password else None
    assert secret == password


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://user:pw@broker", "mqtt:// or mqtts://"),
        ("tcp://broker:1883", "mqtt:// or mqtts://"),
        ("broker.lan:1883", "mqtt:// or mqtts://"),
        ("mqtt://", "needs a host"),
        ("mqtt://broker:99999", "port must be a number from 1 to 65535"),
        ("mqtt://broker:abc", "port must be a number from 1 to 65535"),
    ],
)
def test_bad_mqtt_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MqttEndpoint.parse(url)


def test_port_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="port must be a number from 1 to 65535"):
        MqttEndpoint.parse("mqtt://broker:0")


def test_redacted_url_hides_the_password() -> None:
    endpoint = MqttEndpoint.parse(f"mqtts://controller:{MQTT_PASSWORD}@broker.lan")

    assert endpoint.redacted() == "mqtts://controller:***@broker.lan:8883"
    assert MQTT_PASSWORD not in repr(endpoint)
    assert MqttEndpoint.parse("mqtt://broker.lan").redacted() == "mqtt://broker.lan:1883"


# --- Secrets stay secret ---------------------------------------------------------------


def test_repr_and_str_of_settings_show_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    _secret_environment(monkeypatch)
    settings = _settings()

    shown = [repr(settings), str(settings), repr(settings.mqtt_endpoint())]

    for text in shown:
        for secret in SECRETS:
            assert secret not in text
    # ...while the values themselves are there for the code that needs them.
    endpoint = settings.mqtt_endpoint()
    assert endpoint is not None
    assert endpoint.password is not None
    assert endpoint.password.get_secret_value() == MQTT_PASSWORD
    assert settings.influx_token is not None
    assert settings.influx_token.get_secret_value() == INFLUX_TOKEN
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == WEBHOOK_SECRET


def test_api_tokens_are_json_and_staff_implies_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "CENTER_API_TOKENS",
        json.dumps(
            {
                STAFF_TOKEN: ["staff"],
                BOOKING_TOKEN: ["booking"],
                "kiosk-token": ["kiosk", "read"],
            }
        ),
    )

    scopes = _settings().scopes_by_token()

    assert scopes == {
        STAFF_TOKEN: frozenset({Scope.STAFF, Scope.READ}),
        BOOKING_TOKEN: frozenset({Scope.BOOKING}),
        "kiosk-token": frozenset({Scope.KIOSK, Scope.READ}),
    }


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_api_tokens_mean_none(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CENTER_API_TOKENS", value)

    assert _settings().scopes_by_token() == {}


BROKEN_TOKENS_JSON = f'{{"{STAFF_TOKEN}": [staff'


def test_invalid_api_tokens_json_is_explained_without_the_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CENTER_API_TOKENS", BROKEN_TOKENS_JSON)

    with pytest.raises(ValidationError) as caught:
        _settings()

    # What the CLI prints: the messages, without the input.
    (detail,) = caught.value.errors(include_url=False, include_input=False)
    assert detail["loc"] == ("api_tokens",)
    assert "must be JSON like" in detail["msg"]
    assert STAFF_TOKEN not in json.dumps(detail, default=str)


def test_invalid_api_tokens_error_text_does_not_contain_the_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CENTER_API_TOKENS", BROKEN_TOKENS_JSON)

    with pytest.raises(ValidationError) as caught:
        _settings()

    assert STAFF_TOKEN not in str(caught.value)
    assert STAFF_TOKEN not in repr(caught.value)


# --- The CLI's settings-error path -------------------------------------------------------


def test_cli_refuses_a_bad_mqtt_url_without_showing_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CENTER_MQTT_URL", "ftp://user:s3cret@host")

    code = cli.main(["run", "--site", str(CHANGBAI)])

    out, err = capsys.readouterr()
    assert code == 2
    assert "s3cret" not in out
    assert "s3cret" not in err
    assert "CENTER_MQTT_URL" in err
    assert "mqtt:// or mqtts://" in err


def test_cli_refuses_broken_api_tokens_without_showing_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CENTER_API_TOKENS", BROKEN_TOKENS_JSON)

    code = cli.main(["run", "--site", str(CHANGBAI)])

    out, err = capsys.readouterr()
    assert code == 2
    assert "CENTER_API_TOKENS" in err
    assert STAFF_TOKEN not in out + err


def test_cli_refuses_an_unknown_scope_without_showing_the_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CENTER_API_TOKENS", json.dumps({STAFF_TOKEN: ["admin"]}))

    code = cli.main(["run", "--site", str(CHANGBAI)])

    out, err = capsys.readouterr()
    assert code == 2
    assert "CENTER_API_TOKENS" in err
    assert STAFF_TOKEN.upper() not in (out + err).upper()


def test_cli_run_without_mqtt_url_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    code = cli.main(["run", "--site", str(CHANGBAI)])

    out, err = capsys.readouterr()
    assert code == 2
    assert "CENTER_MQTT_URL" in err
    assert "Traceback" not in out + err


# --- Log formatters ----------------------------------------------------------------------


def _logger(name: str, formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(name)
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_json_logs_are_one_object_per_line_with_extras() -> None:
    logger, stream = _logger("tests.json", JsonFormatter())

    logger.warning("occupancy from %s", "occ-gym", extra={"device": "occ-gym", "room": "gym"})
    logger.info("two\nlines", extra={"since": datetime(2026, 11, 23, 9, 0, tzinfo=UTC)})

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "warning"
    assert first["logger"] == "tests.json"
    assert first["message"] == "occupancy from occ-gym"
    assert first["device"] == "occ-gym"
    assert first["room"] == "gym"
    assert datetime.fromisoformat(first["time"]).tzinfo is not None
    assert second["message"] == "two\nlines"
    assert second["since"] == "2026-11-23 09:00:00+00:00"  # not serialisable: str()
    assert "args" not in first
    assert "msg" not in first


def test_json_logs_carry_the_exception_on_the_same_line() -> None:
    logger, stream = _logger("tests.json.exc", JsonFormatter())

    try:
        raise RuntimeError("broker gone")
    except RuntimeError:
        logger.exception("link failed", extra={"attempt": 3})

    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["level"] == "error"
    assert entry["attempt"] == 3
    assert "RuntimeError: broker gone" in entry["exception"]


def test_text_logs_append_extras_as_key_value_pairs() -> None:
    logger, stream = _logger("tests.text", TextFormatter())

    logger.warning("silent: marking offline", extra={"device": "occ-gym", "room": "gym"})
    logger.info("plain")

    first, second = stream.getvalue().splitlines()
    assert first.endswith("WARNING tests.text: silent: marking offline [device=occ-gym room=gym]")
    assert second.endswith("INFO    tests.text: plain")


def test_text_logs_keep_extras_on_the_first_line_of_a_traceback() -> None:
    logger, stream = _logger("tests.text.exc", TextFormatter())

    try:
        raise RuntimeError("broker gone")
    except RuntimeError:
        logger.exception("link failed", extra={"attempt": 3})

    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("link failed [attempt=3]")
    assert lines[-1] == "RuntimeError: broker gone"


def test_setup_logging_json_writes_json_to_the_given_stream(restore_logging: None) -> None:
    stream = io.StringIO()

    setup_logging(LogFormat.JSON, "WARNING", stream)
    logging.getLogger("controller.test").info("not shown")
    logging.getLogger("controller.test").warning("shown", extra={"device": "lock-gym"})

    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["device"] == "lock-gym"
