"""The write-ahead spool: order, exact counts, crash recovery, the bound, threads.

Every line written here carries its own sequence number as value and
timestamp, so a test can check that each point comes out exactly once and in
order, whatever happened to the files in between.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.timeseries.spool import Spool, SpoolChunk, SpoolError
from tests import spool_child

REPO = Path(__file__).resolve().parent.parent
HEADER = 28
LOGGER = "controller.timeseries.spool"


def lines(first: int, count: int) -> bytes:
    """``count`` lines numbered from ``first``; the number is the value and the timestamp."""
    return b"".join(
        b"m,s=a v=%di %d\n" % (number, number) for number in range(first, first + count)
    )


def numbers(body: bytes) -> list[int]:
    return [int(line.rsplit(b" ", 1)[1]) for line in body.splitlines()]


def append(spool: Spool, first: int, count: int) -> int:
    return spool.append(lines(first, count), count, first)


def drain(spool: Spool, max_points: int = 1000) -> list[int]:
    """Send everything pending, as the sender does: peek, then commit."""
    out: list[int] = []
    while (chunk := spool.peek(max_points)) is not None:
        assert chunk.points > 0, "an empty chunk: the sender would spin"
        out.extend(numbers(chunk.body))
        spool.commit(chunk)
    return out


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spool"))


def segment_bytes_on_disk(directory: Path) -> int:
    return sum(path.stat().st_size for path in segments(directory))


@pytest.fixture
def opened() -> Iterator[list[Spool]]:
    """Spools a test opens are closed at its end, even when it fails."""
    spools: list[Spool] = []
    yield spools
    for spool in spools:
        spool.close()


def open_spool(
    opened: list[Spool],
    directory: Path,
    *,
    max_bytes: int = 1 << 30,
    segment_bytes: int | None = None,
    fsync: bool = False,
) -> Spool:
    spool = Spool(directory, max_bytes=max_bytes, segment_bytes=segment_bytes, fsync=fsync)
    opened.append(spool)
    return spool


def peek(spool: Spool, max_points: int) -> SpoolChunk:
    chunk = spool.peek(max_points)
    assert chunk is not None, "nothing pending"
    return chunk


# ------------------------------------------------------------ order and counts


def test_every_point_comes_out_once_in_order_across_segments(
    tmp_path: Path, opened: list[Spool]
) -> None:
    spool = open_spool(opened, tmp_path, segment_bytes=16 * 1024)
    rng = random.Random(6)
    appended = 0
    out: list[int] = []
    most_segments = 0
    chunk_sizes = [1, 7, 100, 999, 5000]
    for round_number in range(40):
        for _ in range(rng.randint(1, 12)):
            count = rng.randint(1, 300)
            assert append(spool, appended, count) == 0
            appended += count
        assert spool.pending_points == appended - len(out)
        assert spool.oldest_ns == len(out)
        most_segments = max(most_segments, len(segments(tmp_path)))
        # Send part of what is pending, in a chunk size that changes every round.
        for _ in range(rng.randint(0, 5)):
            chunk = spool.peek(chunk_sizes[round_number % len(chunk_sizes)])
            if chunk is None:
                break
            got = numbers(chunk.body)
            assert chunk.points == len(got)
            assert chunk.oldest_ns == got[0]
            assert got[0] == len(out)
            out.extend(got)
            spool.commit(chunk)
    out.extend(drain(spool, 250))
    assert out == list(range(appended))
    assert most_segments > 5
    assert spool.pending_points == 0
    assert spool.pending_bytes == 0
    assert spool.oldest_ns is None
    assert spool.peek(10) is None
    # Sent segments are deleted: only the one still being appended to is left.
    assert len(segments(tmp_path)) == 1


def test_peek_returns_whole_records_and_does_not_advance(
    tmp_path: Path, opened: list[Spool]
) -> None:
    spool = open_spool(opened, tmp_path)
    append(spool, 0, 300)
    append(spool, 300, 10)
    append(spool, 310, 10)
    # A record bigger than max_points still comes whole: a batch is never split.
    first = spool.peek(1)
    assert first is not None
    assert numbers(first.body) == list(range(300))
    assert spool.peek(1) == first
    assert spool.pending_points == 320
    spool.commit(first)
    # Records are joined up to max_points, never beyond it.
    second = spool.peek(25)
    assert second is not None
    assert numbers(second.body) == list(range(300, 320))
    assert numbers(peek(spool, 19).body) == list(range(300, 310))
    spool.commit(second)
    # Committing the same chunk twice changes nothing.
    spool.commit(second)
    spool.commit(first)
    assert spool.pending_points == 0
    assert spool.peek(5) is None


def test_pending_bytes_are_the_unsent_records_on_disk(tmp_path: Path, opened: list[Spool]) -> None:
    spool = open_spool(opened, tmp_path)
    bodies = [lines(0, 5), lines(5, 7)]
    for first, body in zip((0, 5), bodies, strict=True):
        spool.append(body, body.count(b"\n"), first)
    assert spool.pending_bytes == sum(HEADER + len(body) for body in bodies)
    assert spool.pending_bytes == segment_bytes_on_disk(tmp_path)
    chunk = spool.peek(5)
    assert chunk is not None
    spool.commit(chunk)
    assert spool.pending_bytes == HEADER + len(bodies[1])


# ---------------------------------------------------------------- restarting


def test_reopen_resumes_exactly_where_sending_stopped(tmp_path: Path, opened: list[Spool]) -> None:
    spool = open_spool(opened, tmp_path, fsync=True, segment_bytes=4096)
    for first in range(0, 2000, 100):
        append(spool, first, 100)
    sent = []
    for _ in range(7):
        chunk = spool.peek(100)
        assert chunk is not None
        sent.extend(numbers(chunk.body))
        spool.commit(chunk)
    spool.close()

    again = open_spool(opened, tmp_path, fsync=True, segment_bytes=4096)
    assert again.pending_points == 1300
    assert again.oldest_ns == 700
    assert again.pending_bytes == sum(
        HEADER + len(lines(first, 100)) for first in range(700, 2000, 100)
    )
    append(again, 2000, 50)
    assert sent + drain(again, 333) == list(range(2050))


def test_a_stale_head_sends_again_only_what_was_not_acknowledged(
    tmp_path: Path, opened: list[Spool]
) -> None:
    spool = open_spool(opened, tmp_path, fsync=True)
    for first in range(0, 1000, 100):
        append(spool, first, 100)
    for _ in range(3):
        chunk = spool.peek(100)
        assert chunk is not None
        spool.commit(chunk)
    head_after_three = (tmp_path / "head").read_bytes()
    for _ in range(2):
        chunk = spool.peek(100)
        assert chunk is not None
        spool.commit(chunk)
    spool.close()
    # A crash after points 300..499 reached the database but before their
    # commit reached the disk: the head on disk is the one after three chunks.
    (tmp_path / "head").write_bytes(head_after_three)

    again = open_spool(opened, tmp_path)
    assert again.pending_points == 700
    assert drain(again) == list(range(300, 1000))


def test_a_crash_before_a_sent_segment_is_deleted_does_not_send_it_again(
    tmp_path: Path, opened: list[Spool]
) -> None:
    spool = open_spool(opened, tmp_path, fsync=True, segment_bytes=1)
    for first in range(0, 300, 100):
        append(spool, first, 100)
    first_segment, second_segment, _ = segments(tmp_path)
    kept = first_segment.read_bytes(), second_segment.read_bytes()
    for _ in range(2):
        chunk = spool.peek(100)
        assert chunk is not None
        spool.commit(chunk)
    assert not first_segment.exists()
    assert not second_segment.exists()
    spool.close()
    # The crash came after the head file was replaced, before the unlinks.
    first_segment.write_bytes(kept[0])
    second_segment.write_bytes(kept[1])

    again = open_spool(opened, tmp_path, segment_bytes=1)
    assert not first_segment.exists()
    assert not second_segment.exists()
    assert again.pending_points == 100
    assert drain(again) == list(range(200, 300))


def test_an_unreadable_head_file_sends_everything_again(
    tmp_path: Path, opened: list[Spool], caplog: pytest.LogCaptureFixture
) -> None:
    spool = open_spool(opened, tmp_path)
    append(spool, 0, 100)
    append(spool, 100, 100)
    chunk = spool.peek(100)
    assert chunk is not None
    spool.commit(chunk)
    spool.close()
    (tmp_path / "head").write_bytes(b"\x00" * 7)

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        again = open_spool(opened, tmp_path)
    assert "head file" in caplog.text
    assert str(tmp_path / "head") in caplog.text
    assert drain(again) == list(range(200))


def _last_record_offset(path: Path, last_body: bytes) -> int:
    return path.stat().st_size - HEADER - len(last_body)


@pytest.mark.parametrize("damage", ["payload cut", "header cut", "payload flipped"])
def test_a_torn_last_record_is_cut_and_the_rest_kept(
    tmp_path: Path, opened: list[Spool], caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    spool = open_spool(opened, tmp_path, fsync=True)
    for first in range(0, 500, 100):
        append(spool, first, 100)
    spool.close()
    [path] = segments(tmp_path)
    last = _last_record_offset(path, lines(400, 100))
    if damage == "payload cut":
        os.truncate(path, path.stat().st_size - 10)
    elif damage == "header cut":
        os.truncate(path, last + 10)
    else:
        with path.open("r+b") as file:
            file.seek(last + HEADER + 50)
            file.write(b"#")

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        again = open_spool(opened, tmp_path, fsync=True)
    assert "torn record" in caplog.text
    assert path.stat().st_size == last
    assert again.pending_points == 400
    append(again, 400, 100)
    assert drain(again) == list(range(500))


@pytest.mark.parametrize("tail", [b"\x00" * 4096, b"garbage\n" * 9])
def test_garbage_after_the_last_record_is_cut(
    tmp_path: Path, opened: list[Spool], caplog: pytest.LogCaptureFixture, tail: bytes
) -> None:
    spool = open_spool(opened, tmp_path)
    append(spool, 0, 100)
    append(spool, 100, 100)
    spool.close()
    [path] = segments(tmp_path)
    size = path.stat().st_size
    with path.open("ab") as file:
        file.write(tail)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        again = open_spool(opened, tmp_path)
    assert f"{len(tail)} bytes" in caplog.text
    assert path.stat().st_size == size
    assert again.pending_points == 200
    assert drain(again) == list(range(200))


def test_a_corrupt_payload_in_an_older_segment_costs_only_that_record(
    tmp_path: Path, opened: list[Spool], caplog: pytest.LogCaptureFixture
) -> None:
    # Numbers of three digits: every record has the same length.
    record = HEADER + len(lines(100, 10))
    spool = open_spool(opened, tmp_path, segment_bytes=3 * record)
    for first in range(100, 190, 10):
        append(spool, first, 10)
    spool.close()
    damaged = segments(tmp_path)[1]
    with damaged.open("r+b") as file:
        file.seek(record + HEADER + 30)  # the payload of the second record
        file.write(b"#")

    again = open_spool(opened, tmp_path, segment_bytes=3 * record)
    # Opening reads headers only, so the damage is found when the record is read.
    assert again.pending_points == 90
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        out = drain(again)
    assert out == [*range(100, 140), *range(150, 190)]
    assert "failing its checksum" in caplog.text
    assert str(damaged) in caplog.text
    assert again.pending_points == 0


def test_an_unreadable_header_ends_that_segment_only(
    tmp_path: Path, opened: list[Spool], caplog: pytest.LogCaptureFixture
) -> None:
    # Numbers of three digits: every record has the same length.
    record = HEADER + len(lines(100, 10))
    spool = open_spool(opened, tmp_path, segment_bytes=3 * record)
    for first in range(100, 190, 10):
        append(spool, first, 10)
    spool.close()
    assert len(segments(tmp_path)) == 3
    second_segment = segments(tmp_path)[1]
    with second_segment.open("r+b") as file:
        file.seek(record + 1)  # the second record's header
        file.write(b"#")

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        again = open_spool(opened, tmp_path, segment_bytes=3 * record)
    assert f"skipped the rest of the segment, {2 * record} bytes" in caplog.text
    assert str(second_segment) in caplog.text
    assert again.pending_points == 70
    assert drain(again, 25) == [*range(100, 140), *range(160, 190)]


def test_damage_found_while_running_ends_that_segment_and_appends_go_on(
    tmp_path: Path, opened: list[Spool], caplog: pytest.LogCaptureFixture
) -> None:
    record = HEADER + len(lines(100, 10))
    spool = open_spool(opened, tmp_path)
    for first in range(100, 140, 10):
        append(spool, first, 10)
    [path] = segments(tmp_path)
    with path.open("r+b") as file:
        file.seek(2 * record + 1)  # the third record's header, in the segment being appended to
        file.write(b"#")

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert drain(spool, 10) == [*range(100, 120)]
    assert f"skipped the rest of the segment, {2 * record} bytes, 20 points" in caplog.text
    assert spool.pending_points == 0
    assert spool.pending_bytes == 0
    # Later batches go to a new segment, past the damage.
    append(spool, 140, 10)
    assert len(segments(tmp_path)) == 1
    assert path not in segments(tmp_path)
    assert drain(spool) == list(range(140, 150))


# ------------------------------------------------------------------- kill -9


def test_kill_9_while_appending_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.spool_child", str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    watchdog = threading.Timer(30, child.kill)
    watchdog.start()
    try:
        assert child.stdout is not None
        acknowledged = -1
        while acknowledged < 60:
            line = child.stdout.readline()
            assert line, "the child stopped before acknowledging 60 batches"
            acknowledged = int(line)
        # It keeps appending while it is killed.
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        watchdog.cancel()
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL

    spool = Spool(tmp_path, max_bytes=1 << 30, fsync=False)
    try:
        pending = spool.pending_points
        assert pending % spool_child.POINTS == 0
        recovered = pending // spool_child.POINTS
        assert recovered > acknowledged
        body = b""
        while (chunk := spool.peek(10 * spool_child.POINTS)) is not None:
            body += chunk.body
            spool.commit(chunk)
        assert body == b"".join(spool_child.batch(number) for number in range(recovered))
    finally:
        spool.close()


# ------------------------------------------------------------------ the bound


def test_past_the_bound_the_oldest_segments_are_dropped_and_counted(
    tmp_path: Path, opened: list[Spool], caplog: pytest.LogCaptureFixture
) -> None:
    max_bytes, segment_bytes = 20_000, 5_000
    spool = open_spool(opened, tmp_path, max_bytes=max_bytes, segment_bytes=segment_bytes)
    appended = 0
    for _ in range(10):
        append(spool, appended, 20)
        appended += 20
    # Part of the head is sent before the outage grows the spool past its bound.
    head = peek(spool, 50)
    sent = numbers(head.body)
    spool.commit(head)
    returned = 0
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(200):
            returned += append(spool, appended, 20)
            appended += 20
            assert spool.pending_bytes <= max_bytes
            assert segment_bytes_on_disk(tmp_path) <= max_bytes + segment_bytes
    assert returned > 0
    assert "dropped" in caplog.text
    assert spool.dropped_points == returned
    assert spool.pending_points + returned + len(sent) == appended
    # What is left is the newest points, in order; the dropped are the oldest unsent.
    kept = drain(spool)
    assert kept == list(range(appended - len(kept), appended))
    assert sent == list(range(len(sent)))


def test_a_batch_bigger_than_the_bound_is_kept(tmp_path: Path, opened: list[Spool]) -> None:
    spool = open_spool(opened, tmp_path, max_bytes=10_000, segment_bytes=2_000)
    for first in range(0, 300, 30):
        append(spool, first, 30)
    before = spool.pending_points
    big = 2000  # about 36 kB, far past the bound
    assert append(spool, 300, big) == before
    assert spool.pending_points == big
    assert drain(spool) == list(range(300, 300 + big))


def test_committing_a_chunk_dropped_meanwhile_is_harmless(
    tmp_path: Path, opened: list[Spool]
) -> None:
    spool = open_spool(opened, tmp_path, max_bytes=10_000, segment_bytes=2_000)
    append(spool, 0, 30)
    chunk = spool.peek(1000)
    assert chunk is not None
    appended = 30
    while spool.dropped_points == 0:
        append(spool, appended, 30)
        appended += 30
    pending = spool.pending_points
    spool.commit(chunk)
    assert spool.pending_points == pending
    out = drain(spool)
    assert out == list(range(appended - pending, appended))
    assert spool.dropped_points + pending == appended


def test_reopening_after_drops_finds_exactly_what_is_left(
    tmp_path: Path, opened: list[Spool]
) -> None:
    spool = open_spool(opened, tmp_path, max_bytes=10_000, segment_bytes=2_000)
    append(spool, 0, 30)
    chunk = spool.peek(10)
    assert chunk is not None
    spool.commit(chunk)  # the head file now names a segment the bound will drop
    for first in range(30, 3000, 30):
        append(spool, first, 30)
    pending = spool.pending_points
    spool.close()

    again = open_spool(opened, tmp_path, max_bytes=10_000, segment_bytes=2_000)
    assert again.pending_points == pending
    assert again.dropped_points == 0
    assert drain(again) == list(range(3000 - pending, 3000))


# --------------------------------------------------------------- concurrency


def test_one_thread_appends_while_another_sends(tmp_path: Path, opened: list[Spool]) -> None:
    spool = open_spool(opened, tmp_path, segment_bytes=256 * 1024)
    total = 200_000
    appended = threading.Event()
    failures: list[BaseException] = []

    def appender() -> None:
        rng = random.Random(62)
        first = 0
        try:
            while first < total:
                count = min(rng.randint(1, 400), total - first)
                append(spool, first, count)
                first += count
                appended.set()
        except BaseException as error:
            failures.append(error)
            raise

    thread = threading.Thread(target=appender)
    thread.start()
    out: list[int] = []
    try:
        while len(out) < total and not failures:
            chunk = spool.peek(3000)
            if chunk is None:
                assert appended.wait(10), "the appender stalled"
                appended.clear()
                continue
            out.extend(numbers(chunk.body))
            spool.commit(chunk)
    finally:
        thread.join(30)
    assert not failures
    assert out == list(range(total))
    assert spool.pending_points == 0


def test_drops_under_a_running_sender_never_repeat_or_reorder(
    tmp_path: Path, opened: list[Spool]
) -> None:
    spool = open_spool(opened, tmp_path, max_bytes=64 * 1024, segment_bytes=8 * 1024)
    total = 60_000
    done = threading.Event()
    failures: list[BaseException] = []

    def appender() -> None:
        try:
            for first in range(0, total, 50):
                append(spool, first, 50)
        except BaseException as error:
            failures.append(error)
            raise
        finally:
            done.set()

    thread = threading.Thread(target=appender)
    thread.start()
    out: list[int] = []
    deadline = time.monotonic() + 30
    try:
        while not (done.is_set() and spool.pending_points == 0):
            assert time.monotonic() < deadline, "the sender never caught up"
            chunk = spool.peek(20)
            if chunk is not None:
                out.extend(numbers(chunk.body))
                spool.commit(chunk)
    finally:
        thread.join(30)
    assert not failures
    assert spool.dropped_points > 0
    assert all(earlier < later for earlier, later in itertools.pairwise(out))
    assert out[-1] == total - 1
    # A chunk can be sent while the bound drops it, so it may count twice.
    assert len(out) + spool.dropped_points >= total


# ----------------------------------------------------------------- bad input


def test_a_file_where_the_directory_should_be_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    path.write_text("not a directory")
    with pytest.raises(SpoolError, match=str(path)):
        Spool(path, max_bytes=1 << 20)
    with pytest.raises(SpoolError, match=str(path)):
        Spool(path / "inner", max_bytes=1 << 20)


def test_two_spools_cannot_share_a_directory(tmp_path: Path, opened: list[Spool]) -> None:
    open_spool(opened, tmp_path)
    with pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path, max_bytes=1 << 20)


def test_bad_batches_are_refused_and_change_nothing(tmp_path: Path, opened: list[Spool]) -> None:
    spool = open_spool(opened, tmp_path)
    with pytest.raises(ValueError, match="newline"):
        spool.append(b"m v=1i 1", 1, 1)
    with pytest.raises(ValueError, match="at least one point"):
        spool.append(b"", 0, 1)
    with pytest.raises(ValueError, match="out of range"):
        spool.append(b"m v=1i 1\n", 1, 1 << 64)
    with pytest.raises(ValueError, match="max_points"):
        spool.peek(0)
    assert spool.pending_points == 0
    assert spool.pending_bytes == 0
    assert segments(tmp_path) == []


def test_a_closed_spool_says_so(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    append(spool, 0, 3)
    chunk = spool.peek(10)
    assert isinstance(chunk, SpoolChunk)
    spool.close()
    spool.close()
    with pytest.raises(SpoolError, match="closed"):
        append(spool, 3, 3)
    with pytest.raises(SpoolError, match="closed"):
        spool.peek(10)
    with pytest.raises(SpoolError, match="closed"):
        spool.commit(chunk)
