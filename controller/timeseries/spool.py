"""The durable write-ahead spool between the time-series writer and InfluxDB.

Every batch of line protocol the controller produces is appended here first
(``append``, fsync'd before it returns) and leaves only when the sender has
written it to the database (``peek`` the oldest records, write them,
``commit``). So a database outage, a restart or a ``kill -9`` loses nothing
that was appended; only the byte bound drops points, oldest first, and counts
them.

On disk, in the spool directory:

- ``0000000000000001.spool``, ``…02.spool``: numbered segments, appended in
  order and never rewritten. Each is a run of records::

      header (28 bytes, little-endian)
        magic        4s   b"LPS1"
        length       u32  payload bytes
        points       u32  lines in the payload
        oldest_ns    i64  timestamp of the oldest point in the payload
        payload_crc  u32  CRC-32 of the payload
        header_crc   u32  CRC-32 of the 24 bytes above
      payload       newline-terminated line protocol, exactly as appended

  A record that does not fit goes to a new segment once the current one holds
  ``segment_bytes``; a batch larger than that gets a segment of its own.
  Every open appends to a fresh segment, so older segments are never written
  again and only the last one can end in a torn record.
- ``head``: where sending resumes (magic ``b"LPH1"``, segment number u64,
  byte offset u64, CRC-32), replaced atomically (write ``head.tmp``, fsync,
  rename, fsync the directory) by every ``commit``. Segments wholly behind the
  head are deleted.
- ``lock``: held with ``flock`` while a ``Spool`` is open, so two controllers
  never share a spool.

Delivery is at least once. A crash after the database accepted a chunk but
before ``commit`` replaced the head file sends that chunk again after the
restart; points carry explicit timestamps, so the database stores them once.

Recovery on open reads record headers only (payloads are seeked over) to count
the pending points exactly; the last segment's final payload is checked too,
because that is where a crash tears a record. A torn or corrupt record at the
end of the last segment is cut off; an unreadable header anywhere else ends
that segment's readable part; both are logged with the bytes lost, and neither
stops the controller. A record whose header is sound but whose payload fails
its checksum is found by ``peek``, logged and skipped alone.

The bound is on ``pending_bytes`` (unsent records). When an append takes it
past ``max_bytes``, whole segments go from the head, unsent points included,
until it fits again or only the segment being written is left; the record just
appended is never dropped. Segments are ``max_bytes // 16`` by default, so one
drop frees about a sixteenth of the spool, and the files on disk never exceed
``max_bytes`` plus one segment.

Threads: ``append`` is called from one thread, ``peek`` and ``commit`` from
one other thread (the sender); properties from anywhere. One lock guards the
bookkeeping and is never held across a write or fsync of a batch. The
appending thread alone owns the file it writes; the sending thread alone owns
the files it reads, so a segment dropped under the sender stays readable
until it notices (its chunk then commits as a no-op).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

_RECORD = struct.Struct("<4sIIqII")
_RECORD_MAGIC = b"LPS1"
_HEADER = _RECORD.size
_HEADER_CHECKED = _HEADER - 4
_HEAD = struct.Struct("<4sQQI")
_HEAD_MAGIC = b"LPH1"
_HEAD_FILE = "head"
_HEAD_TEMPORARY = "head.tmp"
_LOCK_FILE = "lock"
_SEGMENT_NAME = re.compile(r"^(\d{16})\.spool$")
_SCAN_BLOCK = 64 * 1024
_MAX_PAYLOAD = 0xFFFF_FFFF
_MIN_DEFAULT_SEGMENT = 1024 * 1024


class SpoolError(Exception):
    """The spool directory cannot be used, or the disk refused a write."""


@dataclass(frozen=True, slots=True)
class SpoolChunk:
    """The oldest unsent records, whole, as one write body."""

    body: bytes
    points: int
    oldest_ns: int
    # Where the chunk lies, for commit(): segment number, byte range in it.
    _segment: int = field(repr=False)
    _start: int = field(repr=False)
    _end: int = field(repr=False)


@dataclass(slots=True)
class _Segment:
    seq: int
    path: Path
    size: int = 0  # bytes of whole, published records
    points: int = 0  # points in those records
    first_oldest_ns: int | None = None
    broken: bool = False  # an unreadable header was found: no more appends here


@dataclass(frozen=True, slots=True)
class _Scan:
    """What a header scan of one segment found."""

    end: int  # end of the last readable record
    points: int
    first_oldest_ns: int | None
    head_offset: int  # the last record boundary at or before the wanted head
    head_points: int  # points before head_offset
    head_oldest_ns: int | None  # oldest_ns of the record at head_offset


@dataclass(frozen=True, slots=True)
class _Corrupt:
    """The record at the head cannot be read: ``length`` bytes (the rest of the
    segment when the header is unreadable) and ``points`` lost with it."""

    header_sound: bool
    length: int
    points: int
    reason: str


class Spool:
    """Line-protocol batches kept on disk, in order, until they are sent."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        segment_bytes: int | None = None,
        fsync: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        """Opens or creates the spool in ``directory`` and recovers from a crash.

        A torn or corrupt record at a segment's tail (kill -9 mid-write) is cut
        off and logged; an unreadable record anywhere else ends that segment's
        readable part (logged with how many bytes were skipped); neither raises.
        ``segment_bytes`` defaults to max(1 MiB, max_bytes // 16). Raises
        SpoolError when the directory cannot be created, is not a directory,
        or is in use by another open Spool.
        """
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        if segment_bytes is None:
            segment_bytes = max(_MIN_DEFAULT_SEGMENT, max_bytes // 16)
        if segment_bytes < 1:
            raise ValueError(f"segment_bytes must be positive, not {segment_bytes}")
        self._directory = Path(directory)
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._log = logger or logging.getLogger(__name__)
        self._lock = threading.Lock()
        # Guarded by the lock. The head is always in _segments[0] (or nothing is
        # pending and _segments may be empty).
        self._segments: list[_Segment] = []
        self._head_offset = 0
        self._head_points = 0  # points in _segments[0] before the head
        self._head_oldest_ns: int | None = None
        self._pending_points = 0
        self._pending_bytes = 0
        self._dropped_points = 0
        self._dropping = False  # dropped since the spool was last below half its bound
        self._next_seq = 1
        self._writer_segment: _Segment | None = None
        self._closed = False
        # Owned by the appending thread.
        self._writer_fd: int | None = None
        # Owned by the sending thread.
        self._reader_fds: dict[int, int] = {}

        self._lock_fd, self._directory_fd = self._open_directory()
        try:
            self._recover()
        except BaseException:
            os.close(self._directory_fd)
            os.close(self._lock_fd)
            raise

    # ------------------------------------------------------------ properties

    @property
    def pending_points(self) -> int:
        with self._lock:
            return self._pending_points

    @property
    def pending_bytes(self) -> int:
        """Bytes on disk of the unsent records, headers included."""
        with self._lock:
            return self._pending_bytes

    @property
    def oldest_ns(self) -> int | None:
        """Timestamp of the oldest point in the next record to send (batches
        are appended in time order, so this is the sender's write lag)."""
        with self._lock:
            return self._head_oldest_ns if self._pending_points else None

    @property
    def dropped_points(self) -> int:
        """Points dropped by the byte bound since this Spool was opened."""
        with self._lock:
            return self._dropped_points

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def directory(self) -> Path:
        return self._directory

    # ------------------------------------------------------------- appending

    def append(self, body: bytes, points: int, oldest_ns: int) -> int:
        """Durably append one batch as one record (fsync'd before returning when
        fsync=True). Returns how many points were dropped to stay within
        max_bytes (0 normally): the oldest whole segments go first, including
        unsent points at the head; the record just appended is never dropped.
        Raises SpoolError when the disk refuses the write (nothing is appended).
        """
        if points < 1:
            raise ValueError(f"a batch holds at least one point, not {points}")
        if not body.endswith(b"\n"):
            raise ValueError("a batch is newline-terminated line protocol")
        if len(body) > _MAX_PAYLOAD:
            raise ValueError(f"a batch of {len(body)} bytes is larger than a record can hold")
        header = _encode_header(body, points, oldest_ns)
        size = _HEADER + len(body)
        while True:
            segment, fd = self._writable_segment(size)
            try:
                _write_all(fd, header, body)
                if self._fsync:
                    os.fdatasync(fd)
            except OSError as error:
                self._abandon_writer(segment, fd)
                raise SpoolError(
                    f"cannot append to spool segment {segment.path}: {error}"
                ) from error
            with self._lock:
                if segment.broken:
                    # The sender found this segment unreadable while we wrote;
                    # what we wrote lies past its readable end: write it again.
                    continue
                if self._pending_points == 0:
                    self._head_oldest_ns = oldest_ns
                segment.size += size
                segment.points += points
                if segment.first_oldest_ns is None:
                    segment.first_oldest_ns = oldest_ns
                self._pending_points += points
                self._pending_bytes += size
                dropped, removed = self._enforce_bound()
                first_drop = dropped > 0 and not self._dropping
                self._dropping = self._dropping or dropped > 0
            self._unlink(removed)
            if dropped:
                # Once per overflow, not once per segment dropped; the caller
                # reports the running count.
                self._log.log(
                    logging.WARNING if first_drop else logging.DEBUG,
                    "spool %s over its bound of %d bytes: dropped the %d oldest unsent points",
                    self._directory,
                    self._max_bytes,
                    dropped,
                )
            return dropped

    def _writable_segment(self, size: int) -> tuple[_Segment, int]:
        """The segment to append ``size`` bytes to, and the file to write."""
        with self._lock:
            self._check_open()
            current = self._writer_segment
            fd = self._writer_fd
            if (
                current is not None
                and fd is not None
                and not current.broken
                and (current.size == 0 or current.size + size <= self._segment_bytes)
            ):
                return current, fd
            seq = self._next_seq
            self._next_seq += 1
        path = self._directory / f"{seq:016d}.spool"
        try:
            new_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise SpoolError(f"cannot create spool segment {path}: {error}") from error
        if self._fsync:
            try:
                os.fsync(self._directory_fd)
            except OSError as error:
                os.close(new_fd)
                path.unlink(missing_ok=True)
                raise SpoolError(f"cannot create spool segment {path}: {error}") from error
        segment = _Segment(seq, path)
        with self._lock:
            self._segments.append(segment)
            self._writer_segment = segment
            removed = self._normalize_head()
        if fd is not None:
            os.close(fd)
        self._writer_fd = new_fd
        self._unlink(removed)
        return segment, new_fd

    def _abandon_writer(self, segment: _Segment, fd: int) -> None:
        """After a failed write: cut what was half-written, append elsewhere next."""
        with self._lock:
            published = segment.size
            if self._writer_segment is segment:
                self._writer_segment = None
            removed = self._normalize_head()
        try:
            os.ftruncate(fd, published)
        except OSError as error:
            self._log.error(
                "cannot cut a failed write off spool segment %s (%s); "
                "reopening will skip the unreadable rest",
                segment.path,
                error,
            )
        os.close(fd)
        self._writer_fd = None
        self._unlink(removed)

    def _enforce_bound(self) -> tuple[int, list[_Segment]]:
        """Drop whole segments from the head until the unsent bytes fit (lock held)."""
        dropped = 0
        removed: list[_Segment] = []
        while self._pending_bytes > self._max_bytes and len(self._segments) > 1:
            segment = self._segments.pop(0)
            lost = segment.points - self._head_points
            dropped += lost
            self._pending_points -= lost
            self._pending_bytes -= segment.size - self._head_offset
            removed.append(segment)
            self._head_at_start_of_first()
            removed.extend(self._normalize_head())
        self._dropped_points += dropped
        return dropped, removed

    # --------------------------------------------------------------- sending

    def peek(self, max_points: int) -> SpoolChunk | None:
        """The oldest unsent records, whole, concatenated up to max_points (at
        least one record even if it alone is bigger); None when nothing is
        pending. Does not advance (except past a record that fails its
        checksum, which is logged and skipped)."""
        if max_points < 1:
            raise ValueError(f"max_points must be positive, not {max_points}")
        while True:
            with self._lock:
                self._check_open()
                if self._pending_points == 0:
                    return None
                segment = self._segments[0]
                seq, path = segment.seq, segment.path
                start, end = self._head_offset, segment.size
                bytes_per_point = segment.size // segment.points + 1
            self._close_readers_before(seq)
            try:
                fd = self._reader_fd(seq, path)
            except FileNotFoundError:
                # Dropped by the bound just now (then _skip_corrupt does nothing and
                # the next turn reads the new head), or deleted behind our back.
                missing = _Corrupt(False, end - start, 0, "the segment file is missing")
                self._skip_corrupt(seq, path, start, missing)
                continue
            found = _read_records(fd, start, end, max_points, bytes_per_point)
            if isinstance(found, _Corrupt):
                self._skip_corrupt(seq, path, start, found)
                continue
            parts, points, oldest_ns, length = found
            return SpoolChunk(
                body=b"".join(parts),
                points=points,
                oldest_ns=oldest_ns,
                _segment=seq,
                _start=start,
                _end=start + length,
            )

    def commit(self, chunk: SpoolChunk) -> None:
        """Mark a peeked chunk as written: advance the head durably (atomic
        replace of the head file, fsync'd) and delete segments wholly behind it.
        If the chunk's records were dropped meanwhile by the bound, or it was
        committed already, nothing happens."""
        with self._lock:
            self._check_open()
            if not self._chunk_at_head(chunk):
                return
        self._write_head_file(chunk._segment, chunk._end)
        removed: list[_Segment] = []
        with self._lock:
            if self._chunk_at_head(chunk):
                self._head_offset = chunk._end
                self._head_points += chunk.points
                self._pending_points -= chunk.points
                self._pending_bytes -= chunk._end - chunk._start
                self._head_oldest_ns = chunk.oldest_ns
                removed = self._normalize_head()
                self._refresh_head_oldest(chunk._segment)
                if self._pending_bytes <= self._max_bytes // 2:
                    self._dropping = False
        self._unlink(removed)

    def _chunk_at_head(self, chunk: SpoolChunk) -> bool:
        return (
            bool(self._segments)
            and self._segments[0].seq == chunk._segment
            and self._head_offset == chunk._start
            and chunk._end <= self._segments[0].size
        )

    def _skip_corrupt(self, seq: int, path: Path, start: int, corrupt: _Corrupt) -> None:
        """Move the head past an unreadable record and log what was lost."""
        with self._lock:
            if not self._segments or self._segments[0].seq != seq or self._head_offset != start:
                return  # the head moved meanwhile (dropped by the bound)
            segment = self._segments[0]
            if corrupt.header_sound:
                length, lost = corrupt.length, corrupt.points
                self._head_offset += length
                self._head_points += lost
            else:
                length = segment.size - start
                lost = segment.points - self._head_points
                segment.size = start
                segment.points = self._head_points
                segment.broken = True
            self._pending_points -= lost
            self._pending_bytes -= length
            removed = self._normalize_head()
            self._refresh_head_oldest(seq)
        self._log.error(
            "spool segment %s: %s at byte %d; skipped %s, %d bytes, %d points",
            path,
            corrupt.reason,
            start,
            "the record" if corrupt.header_sound else "the rest of the segment",
            length,
            lost,
        )
        self._unlink(removed)

    def _refresh_head_oldest(self, seq: int) -> None:
        """After the head moved inside segment ``seq``: read the next record's
        oldest_ns (lock held, sending thread; a 28-byte read)."""
        if self._pending_points == 0 or self._segments[0].seq != seq:
            return  # nothing pending, or _normalize_head already set it
        segment = self._segments[0]
        try:
            data = os.pread(self._reader_fd(seq, segment.path), _HEADER, self._head_offset)
        except OSError:
            return  # keep the last chunk's: the next peek reports the unreadable segment
        header = _decode_header(data, 0)
        if header is not None:
            self._head_oldest_ns = header[2]

    def _reader_fd(self, seq: int, path: Path) -> int:
        fd = self._reader_fds.get(seq)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            self._reader_fds[seq] = fd
        return fd

    def _close_readers_before(self, seq: int) -> None:
        for old in [old for old in self._reader_fds if old < seq]:
            os.close(self._reader_fds.pop(old))

    # ------------------------------------------------------------ bookkeeping

    def _head_at_start_of_first(self) -> None:
        """Put the head at the start of the first segment (lock held)."""
        self._head_offset = 0
        self._head_points = 0
        self._head_oldest_ns = self._segments[0].first_oldest_ns if self._segments else None

    def _normalize_head(self) -> list[_Segment]:
        """Take wholly sent segments off the front, except the one being
        appended to, so the head lies in _segments[0] before unsent data
        whenever anything is pending (lock held). Returns them for _unlink."""
        removed: list[_Segment] = []
        while self._segments:
            first = self._segments[0]
            if self._head_offset < first.size:
                break
            if first is self._writer_segment and not first.broken:
                break
            removed.append(self._segments.pop(0))
            self._head_at_start_of_first()
        return removed

    def _unlink(self, segments: list[_Segment]) -> None:
        """Delete segments already taken off the list (outside the lock). A
        failure is logged: the file is behind the head and goes at next open."""
        for segment in segments:
            try:
                segment.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as error:
                self._log.error("cannot delete spool segment %s: %s", segment.path, error)

    def _write_head_file(self, seq: int, offset: int) -> None:
        data = _HEAD.pack(_HEAD_MAGIC, seq, offset, 0)[:-4]
        data += struct.pack("<I", zlib.crc32(data))
        temporary = self._directory / _HEAD_TEMPORARY
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, data)
                if self._fsync:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self._directory / _HEAD_FILE)
            if self._fsync:
                os.fsync(self._directory_fd)
        except OSError as error:
            raise SpoolError(
                f"cannot record the spool head in {self._directory / _HEAD_FILE}: {error}"
            ) from error

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError(f"the spool in {self._directory} is closed")

    def close(self) -> None:
        """Release the files. Call after the appending and sending threads stopped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._writer_segment = None
        if self._writer_fd is not None:
            os.close(self._writer_fd)
            self._writer_fd = None
        for fd in self._reader_fds.values():
            os.close(fd)
        self._reader_fds.clear()
        os.close(self._directory_fd)
        os.close(self._lock_fd)

    # --------------------------------------------------------------- opening

    def _open_directory(self) -> tuple[int, int]:
        directory = self._directory
        created = not directory.exists()
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as error:
            raise SpoolError(
                f"spool directory {directory} cannot be used: it, or a parent, is not a directory"
            ) from error
        except OSError as error:
            raise SpoolError(f"cannot create spool directory {directory}: {error}") from error
        try:
            if created and self._fsync:
                _fsync_directory(directory.parent)  # so the new directory survives a power cut
            directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            raise SpoolError(f"cannot open spool directory {directory}: {error}") from error
        try:
            lock_fd = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            os.close(directory_fd)
            raise SpoolError(f"cannot write in spool directory {directory}: {error}") from error
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(lock_fd)
            os.close(directory_fd)
            raise SpoolError(
                f"spool directory {directory} is in use by another open spool"
            ) from error
        return lock_fd, directory_fd

    def _recover(self) -> None:
        """Rebuild the bookkeeping from the files (no lock: nobody else has us yet)."""
        head_seq, head_offset = self._read_head_file()
        (self._directory / _HEAD_TEMPORARY).unlink(missing_ok=True)
        found: list[tuple[int, Path]] = []
        for entry in os.scandir(self._directory):
            match = _SEGMENT_NAME.match(entry.name)
            if match is not None:
                found.append((int(match.group(1)), Path(entry.path)))
        found.sort()
        self._next_seq = max([head_seq, *(seq for seq, _ in found)]) + 1
        behind = [path for seq, path in found if seq < head_seq]
        for path in behind:
            path.unlink()
        kept = [(seq, path) for seq, path in found if seq >= head_seq]
        segments: list[_Segment] = []
        for index, (seq, path) in enumerate(kept):
            scan = self._recover_segment(
                path,
                head_offset if seq == head_seq else None,
                is_last=index == len(kept) - 1,
            )
            if scan.end == 0 or (seq == head_seq and scan.head_offset >= scan.end):
                path.unlink()  # empty, or wholly sent
                continue
            segment = _Segment(seq, path, scan.end, scan.points, scan.first_oldest_ns)
            if seq == head_seq:
                self._head_offset = scan.head_offset
                self._head_points = scan.head_points
                self._head_oldest_ns = scan.head_oldest_ns
            elif not segments:
                self._head_oldest_ns = scan.first_oldest_ns
            segments.append(segment)
        self._segments = segments
        self._pending_points = sum(segment.points for segment in segments) - self._head_points
        self._pending_bytes = sum(segment.size for segment in segments) - self._head_offset
        if self._pending_points:
            self._log.info(
                "spool %s: %d unsent points (%d bytes) in %d segments",
                self._directory,
                self._pending_points,
                self._pending_bytes,
                len(segments),
            )

    def _read_head_file(self) -> tuple[int, int]:
        path = self._directory / _HEAD_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return 0, 0
        if len(data) == _HEAD.size:
            magic, seq, offset, crc = _HEAD.unpack(data)
            if magic == _HEAD_MAGIC and crc == zlib.crc32(data[:-4]):
                return seq, offset
        self._log.error(
            "spool head file %s is unreadable; sending every spooled record again", path
        )
        return 0, 0

    def _recover_segment(self, path: Path, head_offset: int | None, *, is_last: bool) -> _Scan:
        """Scan one segment's headers; cut a torn tail off the last segment."""
        try:
            fd = os.open(path, (os.O_RDWR if is_last else os.O_RDONLY) | os.O_CLOEXEC)
        except OSError as error:
            raise SpoolError(f"cannot open spool segment {path}: {error}") from error
        try:
            size = os.fstat(fd).st_size
            scan, last_record = _scan_headers(fd, size, head_offset)
            if is_last and last_record is not None:
                offset, length, points, payload_crc = last_record
                payload = os.pread(fd, length, offset + _HEADER)
                if zlib.crc32(payload) != payload_crc:
                    scan = _cut(scan, offset, points)
            if scan.end < size:
                if is_last:
                    os.ftruncate(fd, scan.end)
                    self._log.warning(
                        "spool segment %s: cut off a torn record at its end "
                        "(%d bytes; a crash while appending)",
                        path,
                        size - scan.end,
                    )
                else:
                    self._log.error(
                        "spool segment %s: unreadable record at byte %d; "
                        "skipped the rest of the segment, %d bytes",
                        path,
                        scan.end,
                        size - scan.end,
                    )
            if head_offset is not None and scan.head_offset != min(head_offset, scan.end):
                self._log.warning(
                    "spool head %d of %s is not a record boundary; resuming at byte %d",
                    head_offset,
                    path,
                    scan.head_offset,
                )
            return scan
        finally:
            os.close(fd)


# ------------------------------------------------------------------ records


def _encode_header(body: bytes, points: int, oldest_ns: int) -> bytes:
    try:
        checked = _RECORD.pack(_RECORD_MAGIC, len(body), points, oldest_ns, zlib.crc32(body), 0)
    except struct.error as error:
        raise ValueError(f"points {points} or oldest_ns {oldest_ns} out of range") from error
    checked = checked[:_HEADER_CHECKED]
    return checked + struct.pack("<I", zlib.crc32(checked))


def _decode_header(buffer: bytes, offset: int) -> tuple[int, int, int, int] | None:
    """(payload length, points, oldest_ns, payload crc), or None if not a sound header."""
    if len(buffer) < offset + _HEADER:
        return None
    magic, length, points, oldest_ns, payload_crc, header_crc = _RECORD.unpack_from(buffer, offset)
    if magic != _RECORD_MAGIC or points == 0:
        return None
    if zlib.crc32(buffer[offset : offset + _HEADER_CHECKED]) != header_crc:
        return None
    return length, points, oldest_ns, payload_crc


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, header: bytes, body: bytes) -> None:
    total = len(header) + len(body)
    written = os.writev(fd, [header, body])
    if written < total:
        rest = memoryview(header + body)[written:]
        while rest:
            rest = rest[os.write(fd, rest) :]


def _scan_headers(
    fd: int, size: int, head_offset: int | None
) -> tuple[_Scan, tuple[int, int, int, int] | None]:
    """Walk the record headers of a segment, reading in blocks so small records
    cost one read per block and big payloads are seeked over. Stops at the
    first record that is unsound or runs past the end of the file. Returns the
    scan and the last sound record (offset, length, points, payload crc)."""
    position = 0
    points = 0
    first_oldest: int | None = None
    head_boundary, head_points, head_oldest = 0, 0, None
    last: tuple[int, int, int, int] | None = None
    block = b""
    block_start = 0
    while position < size:
        relative = position - block_start
        if relative + _HEADER > len(block):
            block = os.pread(fd, min(_SCAN_BLOCK, size - position), position)
            block_start, relative = position, 0
        header = _decode_header(block, relative)
        if header is None:
            break
        length, record_points, oldest_ns, payload_crc = header
        end = position + _HEADER + length
        if end > size:
            break
        if head_offset is not None and position <= head_offset:
            head_boundary, head_points, head_oldest = position, points, oldest_ns
        if first_oldest is None:
            first_oldest = oldest_ns
        last = (position, length, record_points, payload_crc)
        points += record_points
        position = end
    if head_offset is not None and head_offset >= position:
        head_boundary, head_points, head_oldest = position, points, None
    scan = _Scan(position, points, first_oldest, head_boundary, head_points, head_oldest)
    return scan, last


def _cut(scan: _Scan, offset: int, points: int) -> _Scan:
    """The scan without its last record (at ``offset``, holding ``points``)."""
    remaining = scan.points - points
    head: tuple[int, int, int | None]
    if scan.head_offset >= offset:
        head = (offset, remaining, None)
    else:
        head = (scan.head_offset, scan.head_points, scan.head_oldest_ns)
    first_oldest = scan.first_oldest_ns if offset else None
    return _Scan(offset, remaining, first_oldest, *head)


def _read_records(
    fd: int, start: int, end: int, max_points: int, bytes_per_point: int
) -> tuple[list[memoryview], int, int, int] | _Corrupt:
    """Whole records from ``start`` up to max_points (at least one), checked:
    (payloads, points, oldest_ns, bytes). _Corrupt if the first one is unreadable;
    an unreadable later one ends the chunk before it."""
    limit = end - start
    buffer = os.pread(fd, min(limit, max_points * bytes_per_point + _HEADER + 4096), start)
    parts: list[memoryview] = []
    points = 0
    oldest_ns = 0
    position = 0
    while position < limit:
        if len(buffer) < position + _HEADER:
            buffer += os.pread(fd, min(limit - len(buffer), _SCAN_BLOCK), start + len(buffer))
        header = _decode_header(buffer, position)
        if header is None or position + _HEADER + header[0] > limit:
            if parts:
                break
            return _Corrupt(False, limit, 0, "unreadable record header")
        length, record_points, record_oldest, payload_crc = header
        if parts and points + record_points > max_points:
            break
        record_end = position + _HEADER + length
        if len(buffer) < record_end:
            more = min(limit, record_end + (max_points - points) * bytes_per_point) - len(buffer)
            buffer += os.pread(fd, more, start + len(buffer))
        payload = memoryview(buffer)[position + _HEADER : record_end]
        if len(payload) < length or zlib.crc32(payload) != payload_crc:
            if parts:
                break
            if len(payload) < length:
                return _Corrupt(False, limit, 0, "the segment file ends inside a record")
            return _Corrupt(True, _HEADER + length, record_points, "a record failing its checksum")
        parts.append(payload)
        oldest_ns = record_oldest if not points else min(oldest_ns, record_oldest)
        points += record_points
        position = record_end
        if points >= max_points:
            break
    return parts, points, oldest_ns, position
