"""Batching and retry scheduling, one worker step at a time, on an injected clock. No threads."""

from __future__ import annotations

import email.utils
import itertools
import random
import threading
from typing import Any, Optional

import httpx
import orjson
import pytest

from fiddler_trace import _retry
from fiddler_trace._buffer import BatchBuffer
from fiddler_trace._encode import dumps
from fiddler_trace._errors import FiddlerAPIError
from fiddler_trace._event import Event, Update
from fiddler_trace._retry import Outcome
from fiddler_trace._stats import Stats
from fiddler_trace._worker import BatchWorker

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MaxJitter(random.Random):
    """Backoff draws its highest value, so delays are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Server:
    """A scripted send(): raises the queued errors in order, then succeeds."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.calls: list[tuple[str, list[dict[str, Any]], Optional[dict[str, str]]]] = []

    def __call__(self, method: str, body: bytes, headers: Optional[dict[str, str]]) -> object:
        events = orjson.loads(body)["source"]["events"]
        self.calls.append((method, events, headers))
        if self.errors:
            raise self.errors.pop(0)
        return None


def make(
    batch_size: int = 3,
    max_events: int = 100,
    max_batch_bytes: int = 1 << 20,
    flush_interval: float = 1.0,
    retry_deadline: float = 300.0,
) -> tuple[BatchBuffer, BatchWorker, Server, FakeClock, Stats]:
    stats = Stats()
    wake = threading.Event()
    buffer = BatchBuffer(
        max_events=max_events,
        batch_size=batch_size,
        max_batch_bytes=max_batch_bytes,
        flush_interval=flush_interval,
        encode=dumps,
        wake=wake,
        dropped=stats.dropped,
    )
    server, clock = Server(), FakeClock()
    worker = BatchWorker(
        buffer,
        server,
        stats,
        retry_deadline=retry_deadline,
        clock=clock,
        wake=wake,
        rng=MaxJitter(),
    )
    return buffer, worker, server, clock, stats


def event(i: int) -> Event:
    return Event(MODEL, f"id-{i}", 0.0, {"x": i})


def test_full_batch_is_sent_at_once():
    """A batch that reaches batch_size goes out in the same step."""
    buffer, worker, server, _, stats = make(batch_size=3)
    for i in range(3):
        buffer.offer(event(i))
    worker.step()
    assert [len(events) for _, events, _ in server.calls] == [3]
    assert stats.sent == 3
    assert buffer.depth() == 0


def test_partial_batch_waits_for_flush_interval():
    """A partial batch is sent only once flush_interval has passed since it started."""
    buffer, worker, server, clock, _ = make(batch_size=10, flush_interval=1.0)
    buffer.offer(event(1))
    assert worker.step() == pytest.approx(1.0)
    clock.advance(0.5)
    buffer.offer(event(2))
    assert worker.step() == pytest.approx(0.5)
    assert server.calls == []
    clock.advance(0.5)
    worker.step()
    assert [len(events) for _, events, _ in server.calls] == [2]


def test_a_new_batch_counts_its_age_from_when_the_worker_last_looked():
    """Nothing wakes the worker for a lone event: found 0.9 s after the worker last looked at
    the queue, its batch is due 0.1 s later, so that it leaves no later than if it had woken
    the worker (the time the host's call started, or a clock frozen by freezegun, plays no
    part)."""
    buffer, worker, server, clock, _ = make(batch_size=10, flush_interval=1.0)
    assert worker.step() is None  # looks at the empty queue
    clock.advance(0.9)
    buffer.offer(event(1))
    assert worker.step() == pytest.approx(0.1)
    clock.advance(0.1)
    worker.step()
    assert [len(events) for _, events, _ in server.calls] == [1]


def test_batches_respect_the_byte_budget():
    """No request carries more than max_batch_bytes of events."""
    buffer, worker, server, _, _ = make(batch_size=1000, max_batch_bytes=200)
    for i in range(20):
        buffer.offer(Event(MODEL, f"id-{i}", 0.0, {"pad": "x" * 40}))
    worker.add_waiter()
    while worker.step() == 0.0 or buffer.ready:
        pass
    sizes = [len(orjson.dumps(events)) for _, events, _ in server.calls]
    assert sum(len(events) for _, events, _ in server.calls) == 20
    assert max(sizes) <= 200


def test_event_over_the_byte_budget_is_refused_and_counted():
    """An event larger than a whole request is dropped as failed, not sent."""
    buffer, worker, server, _, stats = make(batch_size=1, max_batch_bytes=1024)
    buffer.offer(Event(MODEL, "big", 0.0, {"blob": "x" * 5000}))
    buffer.offer(event(1))
    worker.step()
    assert [events[0]["event_id"] for _, events, _ in server.calls] == ["id-1"]
    assert stats.failed == 1


def test_backoff_gates_the_next_attempt():
    """After a 503 nothing is sent until the backoff has passed; the retry is numbered."""
    buffer, worker, server, clock, stats = make(batch_size=1)
    server.errors.append(FiddlerAPIError(503, "busy"))
    buffer.offer(event(1))
    worker.step()
    assert worker.step() == pytest.approx(1.0)  # 0.5 * 2**1 with the highest jitter
    assert len(server.calls) == 1
    clock.advance(0.99)
    worker.step()
    assert len(server.calls) == 1
    clock.advance(0.02)
    worker.step()
    assert [headers for _, _, headers in server.calls] == [None, {"X-Fiddler-Client-Retry": "1"}]
    assert (stats.retried, stats.sent) == (1, 1)


def test_retry_after_overrides_a_shorter_backoff():
    """Retry-After: 7 holds the retry for 7 s even though the backoff is 1 s."""
    buffer, worker, server, clock, _ = make(batch_size=1)
    server.errors.append(FiddlerAPIError(429, "slow down", retry_after="7"))
    buffer.offer(event(1))
    worker.step()
    clock.advance(6.9)
    worker.step()
    assert len(server.calls) == 1
    clock.advance(0.2)
    worker.step()
    assert len(server.calls) == 2


def test_batches_expire_together_after_the_deadline():
    """While the server fails, every waiting batch's deadline runs; all fail when it passes."""
    buffer, worker, server, clock, stats = make(batch_size=1, retry_deadline=10.0)
    server.errors.extend(httpx.ConnectError("refused") for _ in range(100))
    for i in range(3):
        buffer.offer(event(i))
    waiter = worker.add_waiter()
    for _ in range(200):
        delay = worker.step()
        if waiter.done.is_set():
            break
        clock.advance(delay if delay else 0.001)
    assert waiter.done.is_set()
    assert waiter.delivered is False
    assert (stats.failed, stats.sent) == (3, 0)
    assert clock.now - 1000.0 <= 10.0 + _retry.MAX_DELAY
    assert len(server.calls) < 10  # one probe per backoff, not one per batch


def test_update_is_held_until_its_publish_resolves():
    """A PATCH never leaves while a POST of its model drained before it is unresolved."""
    buffer, worker, server, clock, _ = make(batch_size=1)
    server.errors.append(FiddlerAPIError(500, "oops"))
    buffer.offer(event(1))
    buffer.offer(Update(MODEL, "id-1", {"target": 1}))
    worker.step()
    assert [m for m, _, _ in server.calls] == ["POST"]
    clock.advance(5)
    worker.step()
    worker.step()
    assert [m for m, _, _ in server.calls] == ["POST", "POST", "PATCH"]
    assert server.calls[2][1] == [{"target": 1, "event_id": "id-1"}]


def test_offer_counts_in_flight_events_against_the_bound():
    """Events taken off the queue but not acknowledged still count toward max_queue_size."""
    buffer, worker, _, _, stats = make(batch_size=10, max_events=5)
    for i in range(5):
        assert buffer.offer(event(i))
    worker.step()  # drained into a pending batch: still held
    assert buffer.depth() == 5
    assert buffer.offer(event(99)) is False
    assert next(stats.dropped) == 1


def test_flush_waiter_covers_only_earlier_items():
    """A flush is done when every item accepted before it is resolved, not later ones."""
    buffer, worker, _, _, _ = make(batch_size=100)
    buffer.offer(event(1))
    waiter = worker.add_waiter()
    buffer.offer(event(2))
    worker.step()
    assert waiter.done.is_set()
    assert waiter.delivered


def test_split_on_413_and_single_event_413_fails():
    """A 413 splits the batch; a single event that still gets 413 fails."""
    buffer, worker, server, _, stats = make(batch_size=4)
    server.errors.extend([FiddlerAPIError(413, "too big"), FiddlerAPIError(413, "too big")])
    server.errors.append(FiddlerAPIError(413, "too big"))
    for i in range(4):
        buffer.offer(event(i))
    for _ in range(10):
        worker.step()
    sizes = [len(events) for _, events, _ in server.calls]
    assert sizes == [4, 2, 1, 1, 2]
    assert (stats.sent, stats.failed) == (3, 1)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (FiddlerAPIError(408, ""), Outcome.RETRY),
        (FiddlerAPIError(429, ""), Outcome.RETRY),
        (FiddlerAPIError(503, ""), Outcome.RETRY),
        (FiddlerAPIError(413, ""), Outcome.SPLIT),
        (FiddlerAPIError(400, ""), Outcome.BISECT),
        (FiddlerAPIError(409, ""), Outcome.CONFLICT),
        (FiddlerAPIError(401, ""), Outcome.FAIL),
        (FiddlerAPIError(404, ""), Outcome.FAIL),
        (FiddlerAPIError(422, ""), Outcome.FAIL),
        (httpx.ConnectError("refused"), Outcome.RETRY),
        (httpx.ReadTimeout("slow"), Outcome.RETRY),
        (httpx.RemoteProtocolError("dropped"), Outcome.RETRY),
        (ValueError("ours"), Outcome.FAIL),
    ],
)
def test_classify(error, outcome):
    """Each failure maps to its handling."""
    assert _retry.classify(error) is outcome


def test_backoff_is_full_jitter_capped_at_30_seconds():
    """Backoff is uniform in [0, min(30, 0.5 * 2**n)]."""
    rng = random.Random(7)
    for attempt in range(1, 20):
        top = min(30.0, 0.5 * 2**attempt)
        draws = [_retry.backoff(attempt, rng) for _ in range(200)]
        assert all(0.0 <= d <= top for d in draws)
        assert max(draws) > top * 0.8
    assert _retry.backoff(50, MaxJitter()) == 30.0


def test_retry_after_seconds_and_http_date():
    """Retry-After is read as delta-seconds or as an HTTP date; junk is ignored."""
    now = 1_700_000_000.0
    assert _retry.retry_after_seconds("3", now) == 3.0
    assert _retry.retry_after_seconds(" 1.5 ", now) == 1.5
    date = email.utils.formatdate(now + 12, usegmt=True)
    assert _retry.retry_after_seconds(date, now) == pytest.approx(12.0)
    assert _retry.retry_after_seconds(email.utils.formatdate(now - 50, usegmt=True), now) == 0.0
    assert _retry.retry_after_seconds("soon", now) is None
    assert _retry.retry_after_seconds(None, now) is None


def test_counters_are_exact_under_threads():
    """Hot counters bumped from many threads lose no increments."""
    stats = Stats()

    def bump() -> None:
        for _ in range(20_000):
            next(stats.captured)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stats.snapshot(0)["captured"] == 80_000
    assert isinstance(stats.captured, itertools.count)
