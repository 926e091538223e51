"""Deployment settings: environment variables with the ``CENTER_`` prefix, or ``.env``.

What differs between deployments (broker, credentials, database, port, tokens)
lives here, never in the site file, so a site file can be shared and reviewed
without leaking a password. Secrets are ``SecretStr`` and the MQTT URL is only
ever shown redacted; ``repr(settings)`` is safe to log.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Scope(enum.StrEnum):
    BOOKING = "booking"
    STAFF = "staff"
    KIOSK = "kiosk"
    READ = "read"


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class MqttEndpoint(BaseModel):
    """A parsed ``mqtt://user:pass@host:port`` URL."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: SecretStr | None = None

    @classmethod
    def parse(cls, url: str) -> MqttEndpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError("must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError("needs a host, e.g. mqtt://127.0.0.1:1883")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port if parts.port is not None else (8883 if tls else 1883)
        except ValueError:
            port = -1
        if not 1 <= port <= 65535:
            raise ValueError("port must be a number from 1 to 65535")
        password = SecretStr(unquote(parts.password)) if parts.password is not None else None
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=password,
        )

    def redacted(self) -> str:
        """The URL as it may appear in a log: the password is never shown."""
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}:***@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CENTER_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,  # errors must never carry a password or token
    )

    mqtt_url: SecretStr | None = None
    mqtt_topic_prefix: str | None = Field(default=None, description="defaults to center/{site id}")
    mqtt_client_id: str | None = Field(default=None, description="defaults to centerctl-{site id}")
    mqtt_ca_file: Path | None = None
    mqtt_keepalive: int = Field(default=30, ge=5, le=3600)
    mqtt_reconnect_min: float = Field(default=0.5, gt=0)
    mqtt_reconnect_max: float = Field(default=30.0, gt=0)

    influx_url: str | None = None
    influx_token: SecretStr | None = None
    influx_org: str | None = None
    influx_bucket: str | None = None
    influx_batch_size: int = Field(default=5000, ge=1, le=100_000)
    influx_flush_interval: float = Field(default=1.0, gt=0, le=60)
    influx_timeout: float = Field(default=10.0, gt=0, le=300)
    influx_retry_max: float = Field(default=30.0, gt=0, le=3600)
    spool_max_bytes: int = Field(default=1 << 30, ge=1 << 20)
    store_retention_days: int = Field(default=30, ge=1, le=3650)
    store_history_days: int = Field(default=730, ge=1, le=36500)

    http_host: str = "0.0.0.0"
    http_port: int = Field(default=8080, ge=0, le=65535)
    data_dir: Path = Path("data")
    api_tokens: Annotated[dict[SecretStr, list[Scope]], NoDecode] = {}
    # Status-page sessions: end after this long unused, and at the latest this
    # long after the login (see controller/sessions.py).
    session_idle_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    session_max_days: float = Field(default=7.0, gt=0, le=90)
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None

    log_format: LogFormat = LogFormat.TEXT
    log_level: str = "INFO"
    shutdown_timeout: float = Field(default=5.0, gt=0)

    @field_validator("mqtt_url")
    @classmethod
    def _valid_mqtt_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            MqttEndpoint.parse(value.get_secret_value())
        return value

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _tokens_from_json(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else {}
            except json.JSONDecodeError:
                raise ValueError(
                    'must be JSON like {"<token>": ["booking", "read"]} (token not shown)'
                ) from None
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @model_validator(mode="after")
    def _history_covers_retention(self) -> Settings:
        if self.store_history_days < self.store_retention_days:
            raise ValueError(
                "store_history_days (hourly rollups) must be at least store_retention_days"
            )
        return self

    def mqtt_endpoint(self) -> MqttEndpoint | None:
        if self.mqtt_url is None:
            return None
        return MqttEndpoint.parse(self.mqtt_url.get_secret_value())

    def topic_prefix(self, site_id: str) -> str:
        return (self.mqtt_topic_prefix or f"center/{site_id}").rstrip("/")

    def client_id(self, site_id: str) -> str:
        return self.mqtt_client_id or f"centerctl-{site_id}"

    def scopes_by_token(self) -> dict[str, frozenset[Scope]]:
        """Token -> scopes, with ``staff`` implying ``read``."""
        table: dict[str, frozenset[Scope]] = {}
        for token, scopes in self.api_tokens.items():
            granted = set(scopes)
            if Scope.STAFF in granted:
                granted.add(Scope.READ)
            table[token.get_secret_value()] = frozenset(granted)
        return table
