"""Runs encoded at once, offsets found again, ids read back from the data: one step at a time."""

from __future__ import annotations

import random
import threading
import uuid
from pathlib import Path
from typing import Any, Optional

import httpx
import orjson
import pytest

from fiddler_trace import _ids
from fiddler_trace._buffer import BatchBuffer, _IdHashes
from fiddler_trace._client import EventsClient
from fiddler_trace._encode import TRUNCATED, Encoder
from fiddler_trace._encoded import Batch
from fiddler_trace._errors import FiddlerAPIError
from fiddler_trace._event import Event, Update, format_timestamp
from fiddler_trace._ids import KEEP_BITS, V4_BITS, format_event_id
from fiddler_trace._spool import Spool
from fiddler_trace._spooler import Spooler
from fiddler_trace._stats import Stats
from fiddler_trace._wire import publish_body
from fiddler_trace._worker import BatchWorker

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"
OTHER = "0b8c6d2e-2222-4333-8444-555566667777"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Server:
    """A scripted send(): raises the queued errors in order, then succeeds."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.calls: list[tuple[str, list[dict[str, Any]]]] = []

    def __call__(self, method: str, body: bytes, headers: Optional[dict[str, str]]) -> object:
        self.calls.append((method, orjson.loads(body)["source"]["events"]))
        if self.errors:
            raise self.errors.pop(0)
        return None


def make(
    encode: Any = None,
    *,
    batch_size: int = 1000,
    max_batch_bytes: int = 1 << 20,
    send: Any = None,
    **kw: Any,
) -> tuple[BatchBuffer, BatchWorker, Server, Stats]:
    stats, wake, server = Stats(), threading.Event(), Server()
    buffer = BatchBuffer(
        max_events=kw.pop("max_events", 100_000),
        batch_size=batch_size,
        max_batch_bytes=max_batch_bytes,
        flush_interval=1.0,
        encode=Encoder() if encode is None else encode,
        wake=wake,
        dropped=stats.dropped,
    )
    worker = BatchWorker(
        buffer, send or server, stats, retry_deadline=300.0, clock=Clock(), wake=wake, **kw
    )
    return buffer, worker, server, stats


def drawn() -> int:
    return random.getrandbits(128) & KEEP_BITS | V4_BITS


def publish(event_id: Any, i: int, **columns: Any) -> tuple:
    """A publish as the hot path queues it: a plain tuple."""
    return (MODEL, event_id, 1_700_000_000.0 + i / 7, {"x": i, **columns}, "event_id", "ts")


def flush(worker: BatchWorker) -> None:
    waiter = worker.add_waiter()
    for _ in range(1000):
        worker.step()
        if waiter.done.is_set():
            return
    raise AssertionError("the flush did not end")


ROWS: list[Any] = [
    {"a": 1, "b": 2.5, "c": "text", "d": [1, 2, {"e": None}], "f": True},
    {"unicode": "héllo wörld ✓", "quote": 'say "hi"\n', "nan": float("nan")},
    {1: "an int key", (1, 2): "a tuple key"},
    {"id": uuid.UUID(int=5), "set": {3}, "bytes": b"\xff\x00"},
    {"long": "x" * 300, "short": "y"},
    {"fragment": orjson.Fragment(b'{"already": "json"}')},
    {"big": 2**70},
]


def test_joined_gives_the_bytes_of_one_call_per_row():
    """Encoder.joined encodes each row to exactly what a call per row gives, truncation too."""
    cycle: dict[str, Any] = {"k": 1}
    cycle["self"] = cycle
    rows = [*ROWS, cycle] * 40
    for limit in (100, 1000, 65_536):
        counted_one: list[int] = []
        counted_all: list[int] = []
        one = Encoder(limit, on_truncate=counted_one.append)
        many = Encoder(limit, on_truncate=counted_all.append)
        parts = many.joined(rows)
        assert sum(count for _, count in parts) == len(rows)
        assert b",".join(bytes(part) for part, _ in parts) == b",".join(map(one, rows))
        assert sum(counted_all) == sum(counted_one)
        assert (sum(counted_one) > 0) is (limit < 300)


def test_joined_cuts_a_long_string_once_in_a_run_of_short_rows():
    """A row with a string over max_value_chars among short ones is cut and counted once."""
    cut: list[int] = []
    encoder = Encoder(1000, on_truncate=cut.append)
    rows = [{"i": i} for i in range(500)]
    rows[250] = {"i": 250, "text": "z" * 5000}
    parts = encoder.joined(rows)
    events = orjson.loads(b"[" + b",".join(bytes(p) for p, _ in parts) + b"]")
    assert [e["i"] for e in events] == list(range(500))
    assert events[250]["text"] == "z" * 1000 + TRUNCATED
    assert cut == [1]


def test_drawn_ids_are_sent_as_canonical_uuid_strings():
    """An int id drawn on the hot path reaches the server as the canonical UUID string."""
    buffer, worker, server, _ = make()
    ids = [drawn() for _ in range(5)] + ["caller-supplied"]
    for i, event_id in enumerate(ids):
        buffer.offer(publish(event_id, i))
    flush(worker)
    ((_, events),) = server.calls
    expected = [str(uuid.UUID(int=i)) for i in ids[:5]] + ["caller-supplied"]
    assert [e["event_id"] for e in events] == expected
    assert [e["ts"] for e in events] == [
        format_timestamp(1_700_000_000.0 + i / 7) for i in range(6)
    ]


def test_timestamps_match_one_format_per_event_around_millisecond_edges():
    """The per-millisecond timestamp cache gives what formatting each event would, pre-1970 too."""
    buffer, worker, server, _ = make()
    moments = [
        -1.5,
        -0.0004,
        0.0,
        0.0009999,
        0.001,
        1_700_000_000.0,
        1_700_000_000.0009,
        1_700_000_000.001,
        1_700_000_000.9999,
        1_700_000_001.0,
    ]
    for i, moment in enumerate(moments):
        buffer.offer((MODEL, f"id-{i}", moment, {}, "event_id", "timestamp"))
    flush(worker)
    sent = [e["timestamp"] for _, events in server.calls for e in events]
    assert sent == [format_timestamp(moment) for moment in moments]


@pytest.mark.parametrize("max_value_chars", [150, 65_536])
@pytest.mark.parametrize("max_batch_bytes", [1024, 3000, 20_000])
def test_runs_follow_the_byte_budget_as_events_one_by_one_would(max_batch_bytes, max_value_chars):
    """Requests and refusals are the same whether a run is encoded at once or row by row."""
    sizes = random.Random(max_batch_bytes)
    items = [
        publish(f"id-{i}", i, pad="p" * sizes.choice([10, 100, 400, 900, 2000])) for i in range(300)
    ]
    outcomes = []
    encoder = Encoder(max_value_chars)
    for encode in (encoder.__call__, Encoder(max_value_chars)):  # a bound method: row by row
        buffer, worker, server, stats = make(encode, batch_size=7, max_batch_bytes=max_batch_bytes)
        for model, event_id, timestamp, row, column, ts_column in items:
            buffer.offer((model, event_id, timestamp, dict(row), column, ts_column))
        flush(worker)
        calls = [[e["event_id"] for e in events] for _, events in server.calls]
        outcomes.append((calls, stats.failed))
        assert all(len(orjson.dumps(events)) - 2 < max_batch_bytes for _, events in server.calls)
    assert outcomes[0] == outcomes[1]


def test_a_run_that_cannot_be_cut_is_encoded_again_row_by_row():
    """A run over the byte budget whose data cannot be cut is split by encoding each row."""
    encoder = Encoder()
    buffer, _, _, _ = make(encoder, batch_size=10, max_batch_bytes=1024)
    rows = [{"pad": "a" * 600}, {"pad": "b" * 600, "broken": orjson.Fragment(b"{")}]
    for i, row in enumerate(rows):
        buffer.offer((MODEL, f"id-{i}", 0.0, dict(row), "event_id", "ts"))
    buffer.drain(0.0)
    buffer.seal_due(0.0, force=True)
    assert [b.data for b in buffer.ready] == [
        encoder({**row, "event_id": f"id-{i}", "ts": format_timestamp(0.0)})
        for i, row in enumerate(rows)
    ]


def test_ids_read_back_skip_an_event_that_is_not_json():
    """A publish whose data is not JSON (an invalid orjson.Fragment) reads back as id ""."""
    encoder = Encoder()
    rows = [{"event_id": "a"}, {"event_id": "b", "x": orjson.Fragment(b"nope")}, {"event_id": "c"}]
    parts = [part for part, _ in encoder.joined(rows)]
    batch = Batch("POST", MODEL, 0.0)
    batch.extend(parts, sum(map(len, parts)) + len(parts) - 1, 3, 0, "event_id", None)
    assert batch.event_ids() == ["a", "", "c"]


def test_updates_that_cannot_be_told_apart_go_with_a_dead_one():
    """An update batch that cannot be cut is dropped whole when one of its events is dead."""
    buffer, worker, server, stats = make(batch_size=3)
    buffer.forget(MODEL, "dead")  # as after its publish failed for good
    buffer.offer(Update(MODEL, "fine", {"y": orjson.Fragment(b"{")}))
    buffer.offer(Update(MODEL, "dead", {"y": 1}))
    flush(worker)
    assert server.calls == []
    assert (stats.failed, buffer.depth(), buffer.open) == (2, 0, set())


def test_halves_of_a_run_find_the_events_again():
    """A batch added as encoded runs splits into halves that hold its events, in order."""
    encoder = Encoder()
    rows = [*ROWS[:2], {"fragment": orjson.Fragment(b'{ "spaced" : [1, 2] }')}, *ROWS[3:5]]
    parts = [part for part, _ in encoder.joined(rows)]
    nbytes = sum(map(len, parts)) + len(parts) - 1
    batch = Batch("POST", MODEL, 0.0)
    batch.extend(parts, nbytes, len(rows), 10, "event_id", None)
    assert batch.nbytes == len(batch.data)
    halves = batch.halves()
    assert halves is not None
    first, second = halves
    assert [first.event(i) for i in range(len(first))] == [encoder(r) for r in rows[:2]]
    assert [second.event(i) for i in range(len(second))] == [encoder(r) for r in rows[2:]]
    assert (first.seqs, second.seqs) == ([10, 11], [12, 13, 14])


def test_a_batch_that_cannot_be_cut_fails_whole_on_400():
    """Events the data cannot tell apart (an invalid orjson.Fragment) fail together on a 400."""
    bodies: list[bytes] = []

    def refuse(method: str, body: bytes, headers: Optional[dict[str, str]]) -> object:
        bodies.append(body)
        raise FiddlerAPIError(400, "bad event")

    buffer, worker, _, stats = make(send=refuse)
    buffer.offer(publish("a", 0))
    buffer.offer(publish("b", 1, broken=orjson.Fragment(b"{")))
    buffer.offer(publish("c", 2))
    flush(worker)
    assert (stats.failed, len(bodies)) == (3, 1)


def test_updates_of_failed_publishes_are_dropped_by_ids_read_from_the_data():
    """After a publish batch fails for good, updates of its events (any id column) are dropped."""
    buffer, worker, server, stats = make(batch_size=3)
    server.errors.append(FiddlerAPIError(401, "no"))
    ids = [drawn(), drawn()]
    buffer.offer(publish(ids[0], 0))
    buffer.offer((MODEL, ids[1], 1.0, {}, "request_id", "ts"))
    buffer.offer(publish("kept", 2))
    flush(worker)
    for event_id, column in ((ids[0], "event_id"), (ids[1], "request_id")):
        buffer.offer(Update(MODEL, format_event_id(event_id), {"y": 1}, column))
    buffer.offer(publish("later", 3))
    buffer.offer(Update(MODEL, "later", {"y": 2}))
    flush(worker)
    patches = [events for method, events in server.calls if method == "PATCH"]
    assert patches == [[{"y": 2, "event_id": "later"}]]
    assert stats.failed == 3 + 2


def test_kept_batches_keep_their_ids_and_ends_on_disk(tmp_path: Path):
    """A batch of encoded runs is written with each event's id and end, and replays split."""
    spool = Spool(str(tmp_path / "spool"))
    spooler = Spooler(spool, Stats())
    buffer, _, _, _ = make(spooler=spooler)
    ids = [drawn() for _ in range(6)]
    for i, event_id in enumerate(ids):
        buffer.offer(publish(event_id, i, pad="q" * i))
    buffer.drain(0.0)
    buffer.seal_due(0.0, force=True)
    (batch,) = list(buffer.ready)
    assert spooler.keep(batch)
    spool.close()
    record = Spool(str(tmp_path / "spool")).next_record()
    assert record is not None
    assert record.ids == [format_event_id(i) for i in ids]
    events = [
        orjson.loads(record.data[s:e])
        for s, e in zip([0, *(e + 1 for e in record.ends)], record.ends)
    ]
    assert [e["event_id"] for e in events] == record.ids
    replayed = Batch.replayed(record.method, record.model_id, record.ids, record.ends, record.data)
    halves = replayed.halves()
    assert halves is not None
    assert [len(h) for h in halves] == [3, 3]


def test_a_replayed_record_with_bad_ends_finds_them_again():
    """Ends that do not fit the data (not written by this library) are found again."""
    rows = [b'{"event_id":"a"}', b'{"event_id":"b","x":[1,2]}', b'{"event_id":"c"}']
    data = b",".join(rows)
    batch = Batch.replayed("POST", MODEL, ["a", "b", "c"], [5, 5, 5], data)
    assert list(batch.offsets() or ()) == [16, 43, 60]
    assert [batch.event(i) for i in range(3)] == rows


def test_held_events_are_counted_exactly_while_a_run_is_encoded():
    """Drained items count toward the bound from the moment they leave the queue."""
    seen: list[int] = []
    offered = 0

    class Watching(Encoder):
        def joined(self, values: list[Any]) -> Any:
            seen.append(len(buffer.queue) + buffer.outstanding)
            return super().joined(values)

    buffer, _, _, _ = make(Watching(), batch_size=4, max_batch_bytes=1024)
    for i in range(10):
        buffer.offer(publish(f"id-{i}", i, pad="w" * (2000 if i == 5 else 1)))
        offered += 1
    buffer.drain(0.0)
    assert seen
    assert all(held == offered for held in seen)
    assert buffer.depth() == offered - 1  # the event too large for a request is not held


def test_failed_id_memory_forgets_the_oldest_first():
    """Past maxsize the oldest hash goes; adding one again does not make it younger."""
    hashes = _IdHashes(3)
    for key in (1, 2, 3, 1, 4):
        hashes.add(key)
    assert [k in hashes for k in (1, 2, 3, 4)] == [False, True, True, True]
    hashes.add(-(2**63))
    assert [k in hashes for k in (2, 3, 4, -(2**63))] == [False, True, True, True]
    assert len(hashes) == 3


def test_publish_body_from_parts_is_the_joined_body():
    """A body built from parts of joined events is the body of the events joined at once."""
    parts = [b'{"a":1},{"a":2}', memoryview(b'[{"a":3}]')[1:-1], b'{"a":4}']
    joined = b",".join(bytes(p) for p in parts)
    for env_name in (None, "prod-eu"):
        assert publish_body(MODEL, parts, env_type="PRODUCTION", env_name=env_name) == (
            publish_body(MODEL, joined, env_type="PRODUCTION", env_name=env_name)
        )
    assert (
        orjson.loads(publish_body(MODEL, [], env_type="PRODUCTION", env_name=None))["source"][
            "events"
        ]
        == []
    )


def test_cookies_set_by_the_server_are_sent_back():
    """A cookie the server sets (e.g. a load balancer's) comes back on the next request."""
    seen: list[Optional[str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        headers = {"set-cookie": "lb=node-7; Path=/"} if len(seen) == 2 else {}
        return httpx.Response(200, json={"data": {}}, headers=headers)

    with EventsClient("https://fiddler.example", "t", transport=httpx.MockTransport(answer)) as c:
        body = publish_body(MODEL, b'{"event_id":"a"}', env_type="PRODUCTION", env_name=None)
        for _ in range(4):
            c.send("POST", body, headers={"X-Fiddler-Client-Retry": "1"})
    assert seen == [None, None, "lb=node-7", "lb=node-7"]


def test_format_event_id_is_the_canonical_uuid4_string():
    """format_event_id of any 128 bits (a raw draw) is the canonical string of the version-4
    UUID uuid.UUID makes of them, for edge and random values."""
    values = [0, 1, 2**128 - 1, 2**127, *(random.getrandbits(128) for _ in range(2000))]
    for bits in values:
        text = format_event_id(bits)
        assert text == str(uuid.UUID(int=bits, version=4))
        assert text == format_event_id(bits & KEEP_BITS | V4_BITS)


def test_an_event_namedtuple_and_a_plain_tuple_are_one_publish():
    """Event instances and plain tuples of its fields drain alike, in one batch."""
    buffer, worker, server, _ = make()
    buffer.offer(Event(MODEL, "e1", 0.0, {"x": 1}))
    buffer.offer((MODEL, "e2", 0.0, {"x": 2}, "event_id", "timestamp"))
    buffer.offer((OTHER, "e3", 0.0, {"x": 3}, "event_id", "timestamp"))
    flush(worker)
    assert [[e["event_id"] for e in events] for _, events in server.calls] == [["e1", "e2"], ["e3"]]


def test_an_item_that_breaks_the_drain_loses_only_itself():
    """A malformed item stops the drain with an error; the events before it are kept."""
    buffer, worker, server, _ = make()
    buffer.offer(publish("a", 0))
    buffer.offer(publish("b", 1))
    buffer.offer((MODEL, "bad", 2.0, None, "event_id", "ts"))  # no columns dict
    buffer.offer(publish("c", 3))
    with pytest.raises(TypeError):
        buffer.drain(0.0)
    assert (buffer.depth(), buffer.drained) == (3, 3)
    flush(worker)
    assert [[e["event_id"] for e in events] for _, events in server.calls] == [["a", "b", "c"]]


def test_an_id_is_always_queued_or_remembered_and_a_flush_mark_counts_the_queue():
    """An id the worker has taken off the queue is remembered for update() before anything else
    happens to it; while the worker encodes (which can run the host's code, here stuck),
    find_queued() and flush_mark() do not wait for it, and the mark counts every item queued
    before it was asked for."""
    entered, release = threading.Event(), threading.Event()

    def slow_encode(row: dict[str, Any]) -> bytes:
        entered.set()
        release.wait(timeout=10)
        return orjson.dumps(row, default=str)

    buffer, _, _, _ = make(slow_encode)
    raw = random.getrandbits(128)  # as the hot path draws it: version bits unset
    text = format_event_id(raw)
    _ids.RECENT.clear()
    buffer.offer((MODEL, raw, 0.0, {"x": 1}, "event_id", "timestamp"))
    assert buffer.find_queued(text) == (MODEL, "event_id")
    assert buffer.flush_mark() == 1
    assert _ids.RECENT.get(text) is None

    draining = threading.Thread(target=buffer.drain, args=(0.0,))
    draining.start()
    try:
        assert entered.wait(timeout=10)  # off the queue, its run being encoded: host code runs
        assert buffer.find_queued(text) is None  # answered at once, not after the encoding
        assert _ids.RECENT.get(text) == (MODEL, "event_id")
        assert buffer.flush_mark() == 1
        buffer.offer((MODEL, random.getrandbits(128), 0.0, {"x": 2}, "event_id", "timestamp"))
        assert buffer.flush_mark() == 2
    finally:
        release.set()
        draining.join(timeout=10)
