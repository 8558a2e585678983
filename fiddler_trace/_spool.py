"""On-disk spool: append-only segment files of framed batch records, replayed in order.

A record is ``MAGIC | length | crc32 | payload``, the payload a small JSON header (method,
model_id, event ids) and the batch's encoded events. A torn write (a crash mid-record) fails its
length or checksum; the reader then scans for the next ``MAGIC``, so one bad record never poisons
the rest of a segment.

Each process appends to a segment of its own and holds an exclusive ``flock`` on it while it is
open; replay takes the same lock on a closed segment before reading it, so two processes never
replay one segment at once and none replays another live process's open segment. Replay
progress is kept beside the segment (``.ack``, the offset of the next record, replaced
atomically), so an acknowledged record is not sent again; a segment is deleted once all of it is
acknowledged. Files are 0600 in a 0700 directory. Used by one thread per process (the worker or
the ``spool`` command).
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import orjson

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no cross-process exclusion
    fcntl = None  # type: ignore[assignment]

__all__ = ["Record", "Spool", "SpoolSegment"]

MAGIC = b"FTS1"
_FRAME = struct.Struct(">4sII")  # magic, payload length, crc32 of the payload
_HEAD = struct.Struct(">I")  # length of the JSON header inside the payload
SUFFIX = ".spool"
_MAX_RECORD = 1 << 30


@dataclass
class Record:
    """One spooled batch, as read back."""

    method: str
    model_id: str
    ids: list[str]
    ends: list[int]  # end offset of each event in data
    data: bytes  # encoded events joined by commas
    segment: Path
    end: int  # offset just past this record: the progress once it is acknowledged


@dataclass(frozen=True)
class SpoolSegment:
    """A segment file as listed by ``fiddler-trace spool ls``."""

    path: Path
    size: int
    acked: int
    locked: bool


def _lock(handle: int) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def encode_record(
    method: str, model_id: str, ids: list[str], ends: Sequence[int], data: bytes
) -> bytes:
    """A framed record."""
    header = orjson.dumps({"method": method, "model_id": model_id, "ids": ids, "ends": list(ends)})
    payload = _HEAD.pack(len(header)) + header + data
    return _FRAME.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def read_records(raw: bytes, start: int, segment: Path) -> Iterator[Record]:
    """Records of a segment's bytes from ``start``; torn or corrupt ones are skipped."""
    position = start
    while position + _FRAME.size <= len(raw):
        magic, length, crc = _FRAME.unpack_from(raw, position)
        body_start = position + _FRAME.size
        body = raw[body_start : body_start + length]
        if magic != MAGIC or length > _MAX_RECORD or len(body) != length or zlib.crc32(body) != crc:
            found = raw.find(MAGIC, position + 1)
            if found < 0:
                return
            position = found
            continue
        position = body_start + length
        try:
            (head_len,) = _HEAD.unpack_from(body, 0)
            header = orjson.loads(body[_HEAD.size : _HEAD.size + head_len])
            yield Record(
                str(header["method"]),
                str(header["model_id"]),
                [str(i) for i in header["ids"]],
                [int(i) for i in header["ends"]],
                bytes(body[_HEAD.size + head_len :]),
                segment,
                position,
            )
        except (ValueError, KeyError, TypeError, struct.error):
            continue  # a checksummed record we cannot read: written by another version


class Spool:
    """A spool directory as one process sees it.

    Args:
        directory: created 0700 if missing.
        max_bytes: most bytes on disk; beyond, the oldest segments are evicted.
        segment_bytes: a segment is closed (and becomes replayable) past this size.
        fsync: fsync after each record; without it the OS page cache still survives a crash of
            this process, not of the machine.
    """

    def __init__(
        self,
        directory: str,
        *,
        max_bytes: int = 1 << 30,
        segment_bytes: int = 16 << 20,
        fsync: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        # The open segment cannot be evicted: keep it small next to the bound.
        self.segment_bytes = max(1024, min(segment_bytes, max_bytes // 4))
        self.fsync = fsync
        self._own: Optional[Path] = None
        self._own_fd: Optional[int] = None
        self._own_size = 0
        self._reading: Optional[tuple[Path, int, Iterator[Record]]] = None
        self._counter = 0
        self._handed_out = 0  # end offset of the last record handed out of the open segment
        self._skip: set[Path] = set()  # handed out but not all acknowledged: not again for now
        self._replay_fd: Optional[int] = None  # holds replay.lock while replaying
        self._written: set[Path] = set()  # segments this process wrote
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)

    # -- writing ---------------------------------------------------------------------------

    def append(
        self, method: str, model_id: str, ids: list[str], ends: Sequence[int], data: bytes
    ) -> int:
        """Write one record; returns how many events of the oldest segments were evicted to
        make room."""
        record = encode_record(method, model_id, ids, ends, bytes(data))
        if self._own_fd is None or self._own_size + len(record) > self.segment_bytes:
            self.rotate()
            self._open_segment()
        assert self._own_fd is not None
        os.write(self._own_fd, record)
        if self.fsync:
            os.fsync(self._own_fd)
        self._own_size += len(record)
        return self._evict()

    def _open_segment(self) -> None:
        self._counter += 1
        name = f"seg-{time.time_ns():020d}-{os.getpid()}-{self._counter:04d}{SUFFIX}"
        path = self.directory / name
        # Created under a name no reader lists, locked, then renamed into place: another
        # process never sees this segment unlocked (it would take it for a closed, empty one).
        hidden = path.with_name(name + ".new")
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        _lock(fd)
        os.rename(hidden, path)
        self._own, self._own_fd, self._own_size = path, fd, 0
        self._written.add(path)

    def rotate(self) -> None:
        """Close this process's open segment, releasing its lock so it can be replayed."""
        if self._own_fd is not None:
            os.close(self._own_fd)
        self._own, self._own_fd, self._own_size = None, None, 0

    def has_own_data(self) -> bool:
        """This process's open segment holds records."""
        return self._own_size > 0

    def close(self) -> None:
        """Close everything this process holds. Idempotent."""
        self.rotate()
        self._stop_reading()
        self._drop_replay_lock()

    def after_fork(self) -> None:
        """In a forked child: close the inherited descriptors. The parent keeps its locks
        (a flock lives while any copy of its descriptor is open in the parent)."""
        for fd in (self._own_fd, self._reading[1] if self._reading else None, self._replay_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._own, self._own_fd, self._own_size, self._reading = None, None, 0, None
        self._replay_fd = None
        self._written = set()

    # -- reading ---------------------------------------------------------------------------

    def segments(self) -> list[Path]:
        """All segment files, oldest first."""
        return sorted(self.directory.glob(f"*{SUFFIX}"))

    def next_record(self) -> Optional[Record]:
        """The next record to replay, oldest first; None when nothing can be replayed now.

        One process replays a directory at a time (``replay.lock``): segments then go out in
        the order they were written, whichever process wrote them, so an update written behind
        its publish by one process is never sent before another process replayed that publish.
        """
        if self._replay_fd is None and not self._take_replay_lock():
            return None
        while True:
            if self._reading is None and not self._open_next():
                self._drop_replay_lock()
                return None
            assert self._reading is not None
            try:
                record = next(self._reading[2])
                self._handed_out = record.end
                return record
            except StopIteration:
                self._finish()

    def _open_next(self) -> bool:
        for path in self.segments():
            if path == self._own or path in self._skip:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            if not _lock(fd):
                os.close(fd)  # a live writer's open segment, or another replayer's
                continue
            if not path.exists():  # replayed and removed between listing and locking
                os.close(fd)
                continue
            with os.fdopen(os.dup(fd), "rb") as handle:
                raw = handle.read()
            start = self._handed_out = self._acked(path)
            self._reading = (path, fd, read_records(raw, start, path))
            return True
        return False

    def ack(self, record: Record) -> None:
        """The server acknowledged ``record``: never send it again."""
        progress = record.segment.with_name(record.segment.name + ".ack")
        temporary = progress.with_name(progress.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, str(record.end).encode())
        finally:
            os.close(fd)
        os.replace(temporary, progress)

    def _acked(self, path: Path) -> int:
        try:
            return int(path.with_name(path.name + ".ack").read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _finish(self) -> None:
        """Every readable record of the segment was handed out. Delete the segment when all of
        them were acknowledged (what follows the last one is a torn write: garbage); else keep
        it, and skip it until :meth:`release`."""
        assert self._reading is not None
        path = self._reading[0]
        if self._acked(path) >= self._handed_out:
            _remove(path)
        else:
            self._skip.add(path)
        self._stop_reading()

    def _stop_reading(self) -> None:
        if self._reading is not None:
            os.close(self._reading[1])
            self._reading = None

    def release(self) -> None:
        """Stop replaying for now (the server fails again); progress so far is kept."""
        self._stop_reading()
        self._skip.clear()
        self._drop_replay_lock()

    def _take_replay_lock(self) -> bool:
        fd = os.open(self.directory / "replay.lock", os.O_RDWR | os.O_CREAT, 0o600)
        if not _lock(fd):
            os.close(fd)  # another process replays this directory now
            return False
        self._replay_fd = fd
        return True

    def _drop_replay_lock(self) -> None:
        if self._replay_fd is not None:
            os.close(self._replay_fd)
            self._replay_fd = None

    def replay_idle(self) -> bool:
        """No process is replaying this directory right now."""
        if self._replay_fd is not None:
            return False
        if not self._take_replay_lock():
            return False
        self._drop_replay_lock()
        return True

    def own_on_disk(self) -> bool:
        """Some segment this process wrote is still on disk (not all of it acknowledged)."""
        self._written = {p for p in self._written if p.exists()}
        return bool(self._written)

    # -- bounds and listing ----------------------------------------------------------------

    def size(self) -> int:
        total = 0
        for path in self.segments():
            with contextlib.suppress(FileNotFoundError):  # replayed and removed meanwhile
                total += path.stat().st_size
        return total

    def _evict(self) -> int:
        """Delete the oldest closed segments while over max_bytes; returns the events lost."""
        evicted = 0
        over = self.size() - self.max_bytes
        for path in self.segments():
            if over <= 0:
                break
            if path == self._own or (self._reading is not None and self._reading[0] == path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                if not _lock(fd):
                    continue  # another process writes or replays it
                with os.fdopen(os.dup(fd), "rb") as handle:
                    raw = handle.read()
                evicted += sum(len(r.ids) for r in read_records(raw, self._acked(path), path))
                over -= len(raw)
                _remove(path)
            finally:
                os.close(fd)
        return evicted

    def pending_events(self, path: Path) -> int:
        """Events in a segment not yet acknowledged."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return 0
        return sum(len(r.ids) for r in read_records(raw, self._acked(path), path))

    def purge(self) -> int:
        """Delete every segment no process holds; returns how many."""
        removed = 0
        for path in self.segments():
            if path == self._own:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # replayed and removed by another process meanwhile
                continue
            try:
                if _lock(fd):
                    _remove(path)
                    removed += 1
            finally:
                os.close(fd)
        return removed

    def listing(self) -> list[SpoolSegment]:
        """Each segment with its size, acknowledged bytes and whether a process holds it."""
        out = []
        for path in self.segments():
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # replayed and removed by another process meanwhile
                continue
            try:
                locked = not _lock(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            out.append(SpoolSegment(path, size, self._acked(path), locked))
        return out


def _remove(path: Path) -> None:
    for victim in (path, path.with_name(path.name + ".ack")):
        with contextlib.suppress(FileNotFoundError):
            victim.unlink()
