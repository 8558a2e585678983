"""The spool's file format and locking: framing, torn writes, progress, eviction, permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fiddler_trace._spool import MAGIC, Spool

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"


def write(spool: Spool, n: int, start: int = 0, method: str = "POST") -> None:
    ids = [f"e{start + i}" for i in range(n)]
    events = [b'{"event_id":"%s"}' % i.encode() for i in ids]
    ends, data = [], b""
    for event in events:
        data = data + b"," + event if data else event
        ends.append(len(data))
    spool.append(method, MODEL, ids, ends, data)


def replay_all(spool: Spool, ack: bool = True) -> list[list[str]]:
    seen = []
    while (record := spool.next_record()) is not None:
        seen.append(record.ids)
        if ack:
            spool.ack(record)
    return seen


def test_records_come_back_in_order_and_are_removed_once_acknowledged(tmp_path):
    """Records replay oldest first; a fully acknowledged segment is deleted."""
    spool = Spool(str(tmp_path / "spool"))
    write(spool, 2, 0)
    write(spool, 3, 2, method="PATCH")
    spool.rotate()
    reader = Spool(str(tmp_path / "spool"))
    record = reader.next_record()
    assert record is not None
    assert (record.method, record.model_id, record.ids) == ("POST", MODEL, ["e0", "e1"])
    assert record.data == b'{"event_id":"e0"},{"event_id":"e1"}'
    assert record.ends == [17, 35]
    reader.ack(record)
    assert replay_all(reader) == [["e2", "e3", "e4"]]
    assert reader.next_record() is None
    assert reader.segments() == []


def test_acknowledged_records_are_not_replayed_again(tmp_path):
    """After a restart, replay resumes after the last acknowledged record."""
    spool = Spool(str(tmp_path))
    for k in range(3):
        write(spool, 1, k)
    spool.close()
    first = Spool(str(tmp_path))
    record = first.next_record()
    assert record is not None
    first.ack(record)
    first.release()  # e.g. the server failed again
    first.close()
    again = Spool(str(tmp_path))
    assert replay_all(again) == [["e1"], ["e2"]]


def test_a_torn_final_record_is_skipped(tmp_path):
    """A crash mid-write leaves a partial record; the records before it still replay."""
    spool = Spool(str(tmp_path))
    write(spool, 2, 0)
    write(spool, 2, 2)
    spool.close()
    (segment,) = spool.segments()
    with open(segment, "r+b") as handle:
        handle.truncate(segment.stat().st_size - 7)
    assert replay_all(Spool(str(tmp_path))) == [["e0", "e1"]]


def test_a_corrupt_record_does_not_poison_the_rest(tmp_path):
    """A record whose bytes changed fails its checksum; the next records still replay."""
    spool = Spool(str(tmp_path))
    for k in range(3):
        write(spool, 1, k)
    spool.close()
    (segment,) = spool.segments()
    raw = bytearray(segment.read_bytes())
    second = raw.index(MAGIC, 1)
    raw[second + 20] ^= 0xFF
    segment.write_bytes(bytes(raw))
    assert replay_all(Spool(str(tmp_path))) == [["e0"], ["e2"]]


def test_a_live_writers_open_segment_is_not_replayed(tmp_path):
    """Another process's open segment is locked: replay skips it until it is closed."""
    writer = Spool(str(tmp_path))
    write(writer, 1, 0)
    reader = Spool(str(tmp_path))
    assert reader.next_record() is None
    writer.rotate()
    assert replay_all(reader) == [["e0"]]


def test_one_replayer_at_a_time_per_directory(tmp_path):
    """While one process replays a directory, another gets nothing; then it takes over."""
    writer = Spool(str(tmp_path))
    write(writer, 1, 0)
    writer.rotate()
    write(writer, 1, 1)
    writer.close()
    one, two = Spool(str(tmp_path)), Spool(str(tmp_path))
    first = one.next_record()
    assert first is not None
    assert first.ids == ["e0"]
    assert two.next_record() is None
    assert not two.replay_idle()
    one.ack(first)
    one.release()
    assert replay_all(two) == [["e1"]]
    assert two.replay_idle()


def test_eviction_drops_oldest_segments_and_counts_their_events(tmp_path):
    """Past max_bytes the oldest closed segments go, and their events are counted."""
    spool = Spool(str(tmp_path), max_bytes=400, segment_bytes=150)
    evicted = 0
    for k in range(10):
        evicted += spool.append("POST", MODEL, [f"e{k}"], [20], b'{"event_id":"e%d"}    ' % k)
    assert evicted > 0
    assert spool.size() <= 400 + 150
    spool.close()
    replayed = [ids[0] for ids in replay_all(Spool(str(tmp_path)))]
    assert len(replayed) + evicted == 10
    assert replayed == sorted(replayed, key=lambda i: int(i[1:]))
    assert replayed[-1] == "e9"


def test_files_are_private(tmp_path):
    """The directory is 0700 and segment and progress files are 0600."""
    directory = tmp_path / "spool"
    spool = Spool(str(directory))
    write(spool, 1)
    spool.close()
    reader = Spool(str(directory))
    record = reader.next_record()
    assert record is not None
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    reader.ack(record)
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_existing_directory_is_tightened(tmp_path):
    """A spool directory that exists with wider permissions is made 0700."""
    directory = tmp_path / "wide"
    directory.mkdir(mode=0o755)
    Spool(str(directory))
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


def test_listing_shows_locked_segments(tmp_path):
    """listing() tells a live writer's segment from a closed one."""
    spool = Spool(str(tmp_path))
    write(spool, 1)
    spool.rotate()
    write(spool, 1, 1)
    other = Spool(str(tmp_path))
    listed = {Path(s.path).name: s.locked for s in other.listing()}
    assert sorted(listed.values()) == [False, True]


def test_fsync_setting_syncs_each_record(tmp_path, monkeypatch):
    """With fsync on, every spooled record is fsynced before append returns."""
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    spool = Spool(str(tmp_path), fsync=True)
    write(spool, 1)
    write(spool, 1, 1)
    assert len(synced) == 2
    spool.close()
    unsynced = Spool(str(tmp_path / "other"))
    write(unsynced, 1)
    assert len(synced) == 2
    unsynced.close()
