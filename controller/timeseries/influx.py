"""The InfluxDB sender: one blocking write of line protocol, and what became of it.

It runs in the time-series sender thread, never on the event loop. Each call is
one HTTP request through influxdb-client's write API v2 (``POST /api/v2/write``,
``precision=ns``), so it works with InfluxDB 2.x, InfluxDB 3 and stores that
speak the same API. It never raises for a network or HTTP failure: it answers
a :class:`WriteResult` whose :class:`WriteOutcome` tells the caller what to do
with the chunk, because the caller owns the spool, the backoff and the alarms:

- ``RETRY``: the store could not take it now (unreachable, timeout, connection
  reset, 408, 429, 5xx); send the same chunk again later, after ``retry_after``
  when the store said so;
- ``REFUSED``: it will never succeed as configured (401, 403, 404 for a missing
  bucket or org, a redirect, a TLS certificate it does not trust, other 4xx);
- ``REJECTED``: the data itself is refused (400 bad line protocol, 413 too
  large, 422 unprocessable, such as a type conflict).

influxdb-client's own retries are off (``retries=False`` on the urllib3 pool,
and the synchronous write path never retries), so a dead server costs one
timeout, not minutes of hidden backoff. The body is gzipped here at level 1,
not by the client (which uses level 9): on our line protocol level 1 compresses
about eighteen times faster for 60 % more bytes (still a seventh of the plain
size), which more than doubles the points per second a spool replay reaches:
the replay is bounded by this thread's CPU, not by the network.

The token goes only into the ``Authorization`` header: it is redacted from
every message and log line, as is any password in the URL.
"""

from __future__ import annotations

import enum
import gzip as gzip_codec
import logging
import math
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import urllib3.exceptions
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from influxdb_client.service.write_service import WriteService

GZIP_LEVEL = 1
MESSAGE_LIMIT = 240

_RETRY_STATUSES = frozenset({408, 429})
_REJECTED_STATUSES = frozenset({400, 413, 422})
_TLS_CONFIGURATION_ERRORS = (
    "CERTIFICATE_VERIFY_FAILED",
    "WRONG_VERSION_NUMBER",
    "hostname mismatch",
    "doesn't match",
)


class WriteOutcome(enum.StrEnum):
    WRITTEN = "written"
    RETRY = "retry"
    REFUSED = "refused"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class WriteResult:
    outcome: WriteOutcome
    status: int | None
    """HTTP status when there was an answer."""
    message: str
    """One line for a log or an alarm; never the token."""
    retry_after: float | None = None
    """Seconds from a ``Retry-After`` header (429/503), if the store sent one."""


class InfluxSender:
    """Writes line protocol to one InfluxDB bucket; used by one thread at a time."""

    def __init__(
        self,
        *,
        url: str,
        token: str | None,
        org: str | None,
        bucket: str,
        timeout: float,
        gzip: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"the InfluxDB URL must be http:// or https:// with a host, "
                f"such as http://influxdb:8086, not {_without_secrets(url)!r}"
            )
        if not bucket.strip():
            raise ValueError("the InfluxDB bucket must not be empty")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(
                f"the InfluxDB timeout must be a positive number of seconds, not {timeout}"
            )
        self._token = token or None
        # InfluxDB 3 and Cloud take the organization from the token; the client
        # insists on the argument, and an empty one is what such a store ignores.
        self._org = org or ""
        self._bucket = bucket
        self._timeout = timeout
        self._gzip = gzip
        self._logger = logger or logging.getLogger(__name__)
        self._where = _without_secrets(url)
        self._client = InfluxDBClient(
            url=url,
            token=self._token,  # type: ignore[arg-type]  # None: no Authorization header
            org=self._org,
            timeout=max(1, round(timeout * 1000)),  # milliseconds, over connect and read
            enable_gzip=False,
            retries=False,
        )
        self._service = WriteService(self._client.api_client)  # type: ignore[no-untyped-call]
        self._unexpected_logged = False
        self._closed = False

    @property
    def where(self) -> str:
        """The URL written to, without credentials: for logs and the status page."""
        return self._where

    def write(self, body: bytes) -> WriteResult:
        """One blocking write of newline-terminated line protocol (ns timestamps).

        Never raises for a network or HTTP failure: classifies it. No retries
        inside: the caller owns the backoff.
        """
        if self._closed:
            raise RuntimeError("the InfluxDB sender is closed")
        if not body:
            return WriteResult(WriteOutcome.WRITTEN, None, "nothing to write")
        extra: dict[str, Any] = {}
        if self._gzip:
            body = gzip_codec.compress(body, compresslevel=GZIP_LEVEL)
            extra["content_encoding"] = "gzip"
        try:
            answer = self._service.post_write_with_http_info(  # type: ignore[no-untyped-call]
                org=self._org,
                bucket=self._bucket,
                body=body,
                precision=WritePrecision.NS,
                **extra,
            )
        except ApiException as error:
            result = self._from_api_error(error)
        except (urllib3.exceptions.HTTPError, OSError) as error:
            result = self._from_transport_error(error)
        except Exception as error:  # classified, never raised: the caller retries later
            result = self._unexpected(error)
        else:
            self._unexpected_logged = False
            status = answer[1] if isinstance(answer, tuple) and len(answer) > 1 else None
            return WriteResult(WriteOutcome.WRITTEN, status, f"written to {self._where}")
        self._logger.debug("InfluxDB write: %s (%s)", result.outcome, result.message)
        return result

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._client.close()  # type: ignore[no-untyped-call]

    def _from_api_error(self, error: ApiException) -> WriteResult:
        status = error.status if isinstance(error.status, int) else None
        if not status:
            reason = _one_line(str(error.reason or "no answer"))
            tls = reason.startswith("SSLError")
            permanent = tls and any(mark in reason for mark in _TLS_CONFIGURATION_ERRORS)
            outcome = WriteOutcome.REFUSED if permanent or not tls else WriteOutcome.RETRY
            return self._result(outcome, None, f"{self._where}: {reason}")
        headers = error.headers if isinstance(error.headers, Mapping) else {}
        detail = _one_line(str(getattr(error, "message", "") or error.reason or ""))
        said = f"{self._where} answered HTTP {status} {error.reason or ''}".rstrip()
        if detail and detail != error.reason:
            said = f"{said}: {detail}"
        if 300 <= status < 400:
            location = _header(headers, "Location")
            target = _without_secrets(location) if location else "elsewhere"
            return self._result(
                WriteOutcome.REFUSED,
                status,
                f"{self._where} redirects writes to {target} (HTTP {status}): "
                "configure the URL it points to",
            )
        if status in _REJECTED_STATUSES:
            return self._result(WriteOutcome.REJECTED, status, said)
        if status in _RETRY_STATUSES or status >= 500:
            return self._result(WriteOutcome.RETRY, status, said, _retry_after(headers))
        return self._result(WriteOutcome.REFUSED, status, said)

    def _from_transport_error(self, error: BaseException) -> WriteResult:
        if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason is not None:
            return self._from_transport_error(error.reason)
        if isinstance(error, urllib3.exceptions.NewConnectionError):
            cause = _one_line(str(error)).rsplit(": ", 1)[-1]
            message = f"cannot connect to {self._where}: {cause}"
        elif isinstance(error, urllib3.exceptions.ConnectTimeoutError):
            message = f"cannot connect to {self._where} within {self._timeout:g} s"
        elif isinstance(error, urllib3.exceptions.ReadTimeoutError):
            message = f"{self._where} did not answer within {self._timeout:g} s"
        elif isinstance(error, urllib3.exceptions.ProtocolError):
            message = f"connection to {self._where} broken: {_one_line(str(error))}"
        elif isinstance(error, urllib3.exceptions.SSLError):
            message = f"TLS with {self._where} failed: {_one_line(str(error))}"
            if any(mark in message for mark in _TLS_CONFIGURATION_ERRORS):
                return self._result(WriteOutcome.REFUSED, None, message)
        else:
            message = f"writing to {self._where} failed: {type(error).__name__}: {error}"
        return self._result(WriteOutcome.RETRY, None, message)

    def _unexpected(self, error: Exception) -> WriteResult:
        result = self._result(
            WriteOutcome.RETRY,
            None,
            f"writing to {self._where} failed unexpectedly: {type(error).__name__}: {error}",
        )
        if not self._unexpected_logged:
            # Once until the next success: the caller retries it for as long as it lasts.
            # Where it came from, not the traceback's text, which could quote a header.
            self._unexpected_logged = True
            frames = traceback.extract_tb(error.__traceback__)
            origin = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
            self._logger.error("%s%s", result.message, origin)
        return result

    def _result(
        self,
        outcome: WriteOutcome,
        status: int | None,
        message: str,
        retry_after: float | None = None,
    ) -> WriteResult:
        return WriteResult(outcome, status, self._redact(_one_line(message)), retry_after)

    def _redact(self, text: str) -> str:
        if self._token:
            text = text.replace(self._token, "***")
        return text


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MESSAGE_LIMIT else line[: MESSAGE_LIMIT - 1] + "…"


def _without_secrets(url: str) -> str:
    """The URL without user, password, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = parts.port
    except ValueError:
        return "(an unparsable URL)"
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        wanted = name.lower()
        value = next((v for k, v in headers.items() if str(k).lower() == wanted), None)
    return None if value is None else str(value)


def _retry_after(headers: Mapping[str, Any]) -> float | None:
    """Seconds to wait, from delta-seconds or an HTTP date (against the answer's Date)."""
    value = _header(headers, "Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        sent = _header(headers, "Date")
        try:
            if sent is None:
                return None
            seconds = (parsedate_to_datetime(value) - parsedate_to_datetime(sent)).total_seconds()
        except (TypeError, ValueError, IndexError):
            return None
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
