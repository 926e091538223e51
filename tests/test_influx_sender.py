"""The InfluxDB sender against a real VictoriaMetrics, and against stub servers.

VictoriaMetrics speaks the InfluxDB v2 write API the sender uses, so what lands,
what a stopped server costs and what a wrong token gets are real answers over
real HTTP. It cannot be made to answer 404, 413, 422, 429 or 503 to a write
(see tests/victoria.py), so those answers come from a small http.server stub,
which also shows what goes over the wire (gzip, precision, bucket and org).
"""

from __future__ import annotations

import gzip
import http.server
import logging
import selectors
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from controller.timeseries.influx import InfluxSender, WriteOutcome, WriteResult
from controller.timeseries.points import FieldValue, Point, Series, encode_lines, time_ns
from tests.victoria import VictoriaMetrics

SHANGHAI = ZoneInfo("Asia/Shanghai")
# A fixed instant with sub-millisecond digits: VictoriaMetrics keeps milliseconds.
T0 = time_ns(datetime(2024, 5, 1, 9, 15, 30, 123456, tzinfo=SHANGHAI)) + 789
TOKEN = "token-that-must-not-leak-7f3a9c"

MakeSender = Callable[..., InfluxSender]


@pytest.fixture
def make_sender() -> Iterator[MakeSender]:
    made: list[InfluxSender] = []

    def make(url: str, **options: object) -> InfluxSender:
        settings: dict[str, object] = {
            "token": TOKEN,
            "org": "changbai",
            "bucket": "center",
            "timeout": 5.0,
        }
        settings.update(options)
        sender = InfluxSender(url=url, **settings)  # type: ignore[arg-type]
        made.append(sender)
        return sender

    yield make
    for sender in made:
        sender.close()


def temperatures(first: int, count: int, *, start: int = T0) -> list[Point]:
    series = Series.of("climate", {"site": "changbai", "room": "love-room", "device": "temp-1"})
    return [
        Point(series, (("temperature", 20 + (first + i) / 100),), start + (first + i) * 1_000_000)
        for i in range(count)
    ]


def rows_of(points: list[Point]) -> list[tuple[float, int]]:
    return sorted((float(p.fields[0][1]), p.time_ns // 1_000_000) for p in points)


# --- what lands ---------------------------------------------------------------------


def every_measurement() -> list[Point]:
    """One point of every measurement of CONTRACT §6, as the recorder makes them."""

    def point(
        measurement: str, tags: dict[str, str | None], fields: dict[str, FieldValue], offset: int
    ) -> Point:
        return Point(Series.of(measurement, tags), tuple(fields.items()), T0 + offset)

    site = {"site": "changbai"}
    return [
        point(
            "occupancy",
            {**site, "room": "hui-xin-room", "device": "occ-1"},
            {"occupied": True, "count": 3},
            0,
        ),
        point(
            "people",
            {**site, "room": None, "device": "counter-entrance"},
            {"entries": 4, "exits": 1, "inside": 57},
            1,
        ),
        point(
            "climate",
            {**site, "room": "love-room", "device": "temp-1"},
            {"temperature": 27.4, "humidity": 61.0},
            2,
        ),
        point("climate", {**site, "device": "outdoor"}, {"temperature": 31.5}, 3),
        point(
            "ac",
            {**site, "room": "hall", "device": "ac-hall"},
            {
                "power": True,
                "mode": "cool",
                "setpoint": 26.0,
                "room_temperature": 27.9,
                "fault": 0,
            },
            1_000_004,
        ),
        point(
            "lock",
            {**site, "room": "gym", "device": "lock-gym"},
            {"locked": True, "door_open": False},
            2_500_000,
        ),
        point(
            "cabinet",
            {**site, "device": "cabinet-1"},
            {"occupied_compartments": 5, "open_doors": 0},
            3_000_000,
        ),
        point(
            "room",
            {**site, "room": "hui-xin-room"},
            {"occupied": True, "count": 3, "booked": False},
            999_999_999,
        ),
        point("fire", {**site, "device": "fire-panel"}, {"alarm": False}, 1_000_000_000),
    ]


def as_victoria_rows(point: Point) -> list[tuple[dict[str, str], str, float, int]]:
    """What VictoriaMetrics makes of a point: numbers, bools as 1/0, text as 0, ms."""

    def number(value: object) -> float:
        if isinstance(value, str):
            return 0.0  # a string field that is not a number is stored as 0: its text is lost
        return float(value)  # type: ignore[arg-type]

    labels = dict(point.series.tags)
    return [
        (labels, name, number(value), point.time_ns // 1_000_000) for name, value in point.fields
    ]


def test_every_measurement_lands_with_its_labels_values_and_timestamps(
    victoria: VictoriaMetrics, make_sender: MakeSender
) -> None:
    points = every_measurement()
    result = make_sender(victoria.url).write(encode_lines(points))

    assert result == WriteResult(WriteOutcome.WRITTEN, 204, f"written to {victoria.url}")
    for measurement in sorted({p.series.measurement for p in points}):
        expected = [
            row
            for p in points
            if p.series.measurement == measurement
            for row in as_victoria_rows(p)
        ]
        landed = victoria.points(measurement)
        key = lambda row: (row[3], row[1], sorted(row[0].items()))  # noqa: E731
        assert sorted(landed, key=key) == sorted(expected, key=key), measurement
    # Spelled out once, so the mapping above is not only a mirror of itself.
    lock = victoria.points("lock")
    assert {field: value for _, field, value, _ in lock} == {"locked": 1.0, "door_open": 0.0}
    # T0 + 2.5 ms is 125.956789 ms past the second: stored as 125, truncated, not rounded.
    assert {stamp for *_, stamp in lock} == {T0 // 1_000_000 + 2}
    ac = victoria.points("ac")
    assert {field: value for _, field, value, _ in ac} == {
        "power": 1.0,
        "mode": 0.0,  # "cool": VictoriaMetrics cannot keep text
        "setpoint": 26.0,
        "room_temperature": 27.9,
        "fault": 0.0,
    }
    outdoor = victoria.points("climate")
    assert (
        {"site": "changbai", "device": "outdoor"},
        "temperature",
        31.5,
        T0 // 1_000_000,
    ) in outdoor


def test_a_line_longer_than_victoria_accepts_is_rejected_with_its_answer(
    victoria: VictoriaMetrics, make_sender: MakeSender
) -> None:
    fields = ",".join(f"f{i}={i}i" for i in range(30_000))  # > 256 KiB on one line
    body = f"climate,site=changbai {fields} {T0}\n".encode()

    result = make_sender(victoria.url).write(body)

    assert result.outcome is WriteOutcome.REJECTED
    assert result.status == 400
    assert "too long line" in result.message
    assert "\n" not in result.message
    assert victoria.rows_inserted() == 0


# --- a server that is gone, or silent -----------------------------------------------


def test_a_stopped_server_is_one_quick_retry_and_a_restart_keeps_everything(
    victoria: VictoriaMetrics, make_sender: MakeSender
) -> None:
    sender = make_sender(victoria.url, timeout=5.0)
    before, during = temperatures(0, 50), temperatures(50, 50)
    assert sender.write(encode_lines(before)).outcome is WriteOutcome.WRITTEN

    victoria.stop()
    started = time.monotonic()
    result = sender.write(encode_lines(during))
    elapsed = time.monotonic() - started

    assert result.outcome is WriteOutcome.RETRY
    assert result.status is None
    assert "Connection refused" in result.message
    # One attempt: no hidden retries with backoff inside influxdb-client or urllib3.
    assert elapsed < 1.0

    victoria.start()  # the same data directory
    assert sender.write(encode_lines(during)).outcome is WriteOutcome.WRITTEN

    stored = [(value, stamp) for _, _, value, stamp in victoria.points("climate")]
    assert sorted(stored) == rows_of(before + during)  # each once, none lost


class SilentServer:
    """Accepts connections and reads whatever comes, but never answers.

    With ``hang_up`` it closes each connection once the request arrived instead,
    as a server that crashes mid-request or a proxy resetting the connection.
    """

    def __init__(self, *, hang_up: bool = False) -> None:
        self._hang_up = hang_up
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="silent-server", daemon=True)
        self.connections = 0
        self.received = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        open_connections: list[socket.socket] = []
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._listener:
                        connection, _ = sock.accept()
                        self.connections += 1
                        open_connections.append(connection)
                        selector.register(connection, selectors.EVENT_READ)
                    else:
                        data = sock.recv(65536)
                        self.received += len(data)
                        if not data or self._hang_up:
                            selector.unregister(sock)
                            sock.close()
        finally:
            for connection in open_connections:
                connection.close()
            self._listener.close()
            selector.close()


def test_a_server_that_never_answers_is_a_retry_after_the_timeout(
    make_sender: MakeSender,
) -> None:
    with SilentServer() as silent:
        sender = make_sender(silent.url, timeout=0.5)
        started = time.monotonic()
        result = sender.write(encode_lines(temperatures(0, 10)))
        elapsed = time.monotonic() - started

        assert result.outcome is WriteOutcome.RETRY
        assert result.status is None
        assert result.message == f"{silent.url} did not answer within 0.5 s"
        assert 0.45 <= elapsed < 1.5
        assert silent.connections == 1  # one attempt
        assert silent.received > 0


def test_a_connection_closed_without_an_answer_is_a_retry(make_sender: MakeSender) -> None:
    with SilentServer(hang_up=True) as hanging_up:
        started = time.monotonic()
        result = make_sender(hanging_up.url, timeout=5.0).write(encode_lines(temperatures(0, 10)))
        elapsed = time.monotonic() - started

        assert result.outcome is WriteOutcome.RETRY
        assert result.status is None
        assert result.message.startswith(f"connection to {hanging_up.url} broken")
        assert elapsed < 1.0
        assert hanging_up.connections == 1


# --- a store that refuses -----------------------------------------------------------


def test_a_wrong_token_is_refused_with_401_stores_nothing_and_never_leaks(
    tmp_path: Path, make_sender: MakeSender, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    guarded = VictoriaMetrics(tmp_path / "vm-auth", username="center", password="right")
    guarded.start()
    try:
        result = make_sender(guarded.url, token=TOKEN).write(encode_lines(temperatures(0, 5)))

        assert result.outcome is WriteOutcome.REFUSED
        assert result.status == 401
        assert result.message == f"{guarded.url} answered HTTP 401 Unauthorized"
        assert guarded.rows_inserted() == 0
        assert guarded.points("climate") == []
    finally:
        guarded.stop()
    assert TOKEN not in caplog.text


@dataclass
class Answer:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    echo_authorization: bool = False


@dataclass(frozen=True)
class Received:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


class StubInflux:
    """An http.server on loopback that answers every write with ``answer``."""

    def __init__(self) -> None:
        self.answer = Answer()
        self.received: list[Received] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                path, _, query = self.path.partition("?")
                stub.received.append(
                    Received(path, urllib.parse.parse_qs(query), dict(self.headers), body)
                )
                answer = stub.answer
                payload = answer.body
                if answer.echo_authorization:
                    payload = f"you sent {self.headers.get('Authorization')}".encode()
                self.send_response_only(answer.status)
                headers = {"Date": "Wed, 01 May 2024 01:15:30 GMT", **answer.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> StubInflux:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def stub() -> Iterator[StubInflux]:
    with StubInflux() as server:
        yield server


INFLUX_400 = (
    b'{"code":"invalid","message":"unable to parse \'climate temperature=\': missing field value"}'
)


@pytest.mark.parametrize(
    ("answer", "outcome", "retry_after", "said"),
    [
        (Answer(429, {"Retry-After": "7"}), WriteOutcome.RETRY, 7.0, "HTTP 429 Too Many Requests"),
        (
            Answer(503, {"Retry-After": "Wed, 01 May 2024 01:17:30 GMT"}),
            WriteOutcome.RETRY,
            120.0,
            "HTTP 503 Service Unavailable",
        ),
        (Answer(503), WriteOutcome.RETRY, None, "HTTP 503 Service Unavailable"),
        (Answer(429, {"Retry-After": "soon"}), WriteOutcome.RETRY, None, "HTTP 429"),
        (
            Answer(500, body=b"internal error"),
            WriteOutcome.RETRY,
            None,
            "HTTP 500 Internal Server Error: internal error",
        ),
        (
            Answer(404, body=b'{"code":"not found","message":"bucket \\"center\\" not found"}'),
            WriteOutcome.REFUSED,
            None,
            'HTTP 404 Not Found: bucket "center" not found',
        ),
        (Answer(403), WriteOutcome.REFUSED, None, "HTTP 403 Forbidden"),
        (Answer(418), WriteOutcome.REFUSED, None, "HTTP 418"),
        (
            Answer(400, body=INFLUX_400),
            WriteOutcome.REJECTED,
            None,
            "HTTP 400 Bad Request: unable to parse 'climate temperature=': missing field value",
        ),
        (Answer(413), WriteOutcome.REJECTED, None, "HTTP 413 Request Entity Too Large"),
        (
            Answer(422, body=b'{"code":"unprocessable entity","message":"field type conflict"}'),
            WriteOutcome.REJECTED,
            None,
            "HTTP 422 Unprocessable Entity: field type conflict",
        ),
    ],
    ids=lambda value: str(value.status) if isinstance(value, Answer) else None,
)
def test_each_answer_of_the_store_is_classified(
    stub: StubInflux,
    make_sender: MakeSender,
    answer: Answer,
    outcome: WriteOutcome,
    retry_after: float | None,
    said: str,
) -> None:
    stub.answer = answer

    result = make_sender(stub.url).write(encode_lines(temperatures(0, 3)))

    assert result.outcome is outcome
    assert result.status == answer.status
    assert result.retry_after == retry_after
    assert result.message.startswith(f"{stub.url} answered {said}")
    assert len(stub.received) == 1  # never retried inside


def test_a_redirect_is_refused_not_followed(stub: StubInflux, make_sender: MakeSender) -> None:
    stub.answer = Answer(308, {"Location": "https://user:secret@influx.example:8086/api/v2/write"})

    result = make_sender(stub.url).write(encode_lines(temperatures(0, 1)))

    assert result.outcome is WriteOutcome.REFUSED
    assert result.status == 308
    assert "https://influx.example:8086/api/v2/write" in result.message
    assert "secret" not in result.message
    assert len(stub.received) == 1


def test_a_server_echoing_the_token_does_not_get_it_into_the_message(
    stub: StubInflux, make_sender: MakeSender
) -> None:
    stub.answer = Answer(400, echo_authorization=True)

    result = make_sender(stub.url).write(encode_lines(temperatures(0, 1)))

    assert stub.received[0].headers["Authorization"] == f"Token {TOKEN}"
    assert result.outcome is WriteOutcome.REJECTED
    assert TOKEN not in result.message
    assert "you sent Token ***" in result.message


# --- what goes over the wire --------------------------------------------------------


def test_the_body_goes_gzipped_with_nanosecond_precision(
    stub: StubInflux, make_sender: MakeSender
) -> None:
    body = encode_lines(temperatures(0, 2000))

    assert make_sender(stub.url).write(body).outcome is WriteOutcome.WRITTEN

    (request,) = stub.received
    assert request.path == "/api/v2/write"
    assert request.query == {"org": ["changbai"], "bucket": ["center"], "precision": ["ns"]}
    assert request.headers["Content-Encoding"] == "gzip"
    assert request.headers["Content-Type"] == "text/plain"
    assert len(request.body) < len(body) / 3
    assert gzip.decompress(request.body) == body


def test_without_gzip_the_body_goes_as_it_is(stub: StubInflux, make_sender: MakeSender) -> None:
    body = encode_lines(temperatures(0, 20))

    assert make_sender(stub.url, gzip=False, org=None, token=None).write(body).outcome is (
        WriteOutcome.WRITTEN
    )

    (request,) = stub.received
    assert "Content-Encoding" not in request.headers
    assert "Authorization" not in request.headers
    assert request.query["bucket"] == ["center"]
    assert request.body == body


# --- settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"url": "influxdb:8086"}, "must be http:// or https://"),
        ({"url": "ftp://user:secret@influxdb:8086"}, "must be http:// or https://"),
        ({"url": "http://"}, "must be http:// or https://"),
        ({"bucket": ""}, "bucket must not be empty"),
        ({"bucket": "  "}, "bucket must not be empty"),
        ({"timeout": 0.0}, "timeout must be a positive number"),
        ({"timeout": float("nan")}, "timeout must be a positive number"),
    ],
)
def test_bad_settings_fail_at_construction(options: dict[str, object], complaint: str) -> None:
    settings: dict[str, object] = {
        "url": "http://influxdb:8086",
        "token": TOKEN,
        "org": "changbai",
        "bucket": "center",
        "timeout": 5.0,
        **options,
    }
    with pytest.raises(ValueError, match=complaint) as raised:
        InfluxSender(**settings)  # type: ignore[arg-type]
    assert "secret" not in str(raised.value)
    assert TOKEN not in str(raised.value)


def test_a_closed_sender_refuses_to_write(make_sender: MakeSender) -> None:
    sender = make_sender("http://127.0.0.1:9")
    sender.close()
    sender.close()  # twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        sender.write(b"climate,site=changbai temperature=1 1\n")
