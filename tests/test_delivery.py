"""Delivery over real HTTP on 127.0.0.1: retries, splitting, bisection, ordering, flush, bounds."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from faults import Delay, Drop, FaultServer, Hang, LandThenDrop, Respond
from freezegun import freeze_time

from fiddler_trace._config import load_settings
from fiddler_trace._event import Event, Update
from fiddler_trace._pipeline import Pipeline

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"
OTHER_MODEL = "0b8c6d2e-2222-4333-8444-555566667777"


class NoJitter(random.Random):
    """Backoff draws its lowest value, 0 s: retries run at once, deterministically."""

    def uniform(self, a: float, b: float) -> float:
        return a


def event(i: int, model: str = MODEL, **columns: Any) -> Event:
    return Event(
        model, f"00000000-0000-4000-8000-{i:012d}", 1_700_000_000.0 + i, {"x": i, **columns}
    )


@pytest.fixture
def make_pipeline() -> Iterator[Callable[..., Pipeline]]:
    made: list[Pipeline] = []

    def make(server: FaultServer, **overrides: Any) -> Pipeline:
        options: dict[str, Any] = {
            "enabled": True,
            "url": server.url,
            "token": "secret-token-value",
            "flush_interval": 0.05,
            "timeout": 2.0,
        }
        options.update(overrides)
        pipeline = Pipeline(load_settings(environ={}, **options), rng=NoJitter())
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        pipeline.shutdown(2.0)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as running:
        yield running


def stored_ids(server: FaultServer, method: str = "POST") -> list[str]:
    return [e["event_id"] for e in server.events(method)]


def test_events_arrive_in_batches_with_id_and_timestamp(server, make_pipeline, request_log):
    """Captured events arrive as rows with the event id and an ISO timestamp column."""
    pipeline = make_pipeline(server, batch_size=10)
    for i in range(25):
        assert pipeline.enqueue(event(i))
    assert pipeline.flush(10)
    rows = server.events()
    assert [r["x"] for r in rows] == list(range(25))
    assert rows[0]["timestamp"] == "2023-11-14T22:13:20.000Z"
    assert [len(r.body["source"]["events"]) for r in server.received] == [10, 10, 5]
    assert pipeline.snapshot()["sent"] == 25
    assert request_log.requests


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_status_is_retried_with_retry_header(server, make_pipeline, status):
    """A transient status is retried; the retry says so in X-Fiddler-Client-Retry."""
    server.push(Respond(status))
    pipeline = make_pipeline(server)
    pipeline.enqueue(event(1))
    assert pipeline.flush(10)
    assert stored_ids(server) == [event(1).event_id]
    first, second = server.received
    assert "x-fiddler-client-retry" not in {k.lower() for k in first.headers}
    assert second.headers["X-Fiddler-Client-Retry"] == "1"
    stats = pipeline.snapshot()
    assert (stats["retried"], stats["sent"], stats["failed"]) == (1, 1, 0)


def test_dropped_connection_is_retried(server, make_pipeline):
    """A connection closed without an answer is retried and the events land."""
    server.push(Drop(), Drop())
    pipeline = make_pipeline(server)
    pipeline.enqueue(event(1))
    assert pipeline.flush(10)
    assert stored_ids(server) == [event(1).event_id]
    assert len(server.received) == 3


def test_slow_response_times_out_and_is_retried(server, make_pipeline):
    """A response slower than the timeout counts as failed and the batch is sent again."""
    server.push(Delay(1.0))
    pipeline = make_pipeline(server, timeout=0.2)
    pipeline.enqueue(event(1))
    assert pipeline.flush(10)
    assert len(server.received) == 2
    assert server.received[1].headers["X-Fiddler-Client-Retry"] == "1"
    assert pipeline.snapshot()["sent"] == 1


def test_409_answering_a_retry_counts_as_delivered(make_pipeline):
    """When the first attempt landed but its answer was lost, the retry's 409 means delivered."""
    with FaultServer(conflict_on_duplicate=True) as server:
        server.push(LandThenDrop())
        pipeline = make_pipeline(server)
        pipeline.enqueue(event(1))
        assert pipeline.flush(10)
        assert [r.answered for r in server.received] == [0, 409]
        assert stored_ids(server) == [event(1).event_id]
        stats = pipeline.snapshot()
        assert (stats["sent"], stats["failed"]) == (1, 0)


def test_409_on_a_first_attempt_fails(make_pipeline):
    """A 409 to a first attempt is a real conflict: the batch fails, nothing is retried."""
    with FaultServer() as server:
        server.push(Respond(409))
        pipeline = make_pipeline(server)
        pipeline.enqueue(event(1))
        assert not pipeline.flush(10)
        assert len(server.received) == 1
        assert pipeline.snapshot()["failed"] == 1


def test_retry_after_seconds_is_honoured(server, make_pipeline):
    """429 with Retry-After: 1 delays the retry by at least a second."""
    server.push(Respond(429, headers={"Retry-After": "1"}))
    pipeline = make_pipeline(server)
    times: list[float] = []
    original = server.handle

    def timed(handler: Any) -> None:
        times.append(time.monotonic())
        original(handler)

    server.handle = timed  # type: ignore[method-assign]
    pipeline.enqueue(event(1))
    assert pipeline.flush(10)
    assert len(times) == 2
    assert times[1] - times[0] >= 0.95


def test_413_splits_the_batch_until_it_fits(make_pipeline):
    """A 413 splits the batch in halves until each part fits; every event lands once."""
    with FaultServer(max_body_bytes=2_500) as server:
        pipeline = make_pipeline(server, batch_size=100)
        for i in range(100):
            pipeline.enqueue(event(i))
        assert pipeline.flush(10)
        assert sorted(stored_ids(server)) == sorted(event(i).event_id for i in range(100))
        assert any(r.answered == 413 for r in server.received)


def test_400_bisects_to_the_bad_event(make_pipeline, caplog):
    """999 good events and 1 bad: 999 land, failed == 1, the server's message is logged."""

    def reject(row: dict[str, Any]) -> str | None:
        return "column 'x' must be below 900" if row.get("bad") else None

    with FaultServer(reject=reject) as server:
        pipeline = make_pipeline(server, batch_size=1000)
        for i in range(1000):
            pipeline.enqueue(event(i, bad=(i == 537)))
        with caplog.at_level(logging.WARNING, logger="fiddler_trace"):
            assert not pipeline.flush(20)
        ids = stored_ids(server)
        assert len(ids) == len(set(ids)) == 999
        assert event(537).event_id not in ids
        stats = pipeline.snapshot()
        assert (stats["sent"], stats["failed"]) == (999, 1)
        assert "must be below 900" in caplog.text


@pytest.mark.parametrize(
    ("status", "hint"),
    [(401, "FIDDLER_TOKEN"), (403, "FIDDLER_TOKEN"), (404, "FIDDLER_URL")],
)
def test_auth_and_not_found_fail_without_retry(server, make_pipeline, caplog, status, hint):
    """401/403/404 are not retried: the batch fails and the log says what to check."""
    server.push(Respond(status))
    pipeline = make_pipeline(server)
    for i in range(3):
        pipeline.enqueue(event(i))
    with caplog.at_level(logging.WARNING, logger="fiddler_trace"):
        assert not pipeline.flush(10)
    assert len(server.received) == 1
    assert pipeline.snapshot()["failed"] == 3
    assert hint in caplog.text
    assert "secret-token-value" not in caplog.text


def test_update_waits_for_its_publish_while_posts_fail(server, make_pipeline):
    """A PATCH is sent only after the POST of its event was acknowledged, even across retries."""
    server.push(Respond(503), Respond(503), Respond(503))
    pipeline = make_pipeline(server)
    pipeline.enqueue(event(1))
    pipeline.enqueue(Update(MODEL, event(1).event_id, {"target": 1}))
    assert pipeline.flush(10)
    methods = [(r.method, r.answered) for r in server.received]
    assert methods == [("POST", 503)] * 3 + [("POST", 200), ("PATCH", 200)]
    assert server.events("PATCH") == [{"target": 1, "event_id": event(1).event_id}]
    assert pipeline.snapshot()["updated"] == 1


def test_update_of_an_event_that_failed_is_dropped_and_counted(make_pipeline):
    """Updates for an event whose publish failed for good are not sent, and count as failed."""
    with FaultServer(reject=lambda row: "bad" if row.get("x") == 2 else None) as server:
        pipeline = make_pipeline(server)
        pipeline.enqueue(event(1))
        pipeline.enqueue(event(2))
        pipeline.enqueue(Update(MODEL, event(1).event_id, {"target": 1}))
        pipeline.enqueue(Update(MODEL, event(2).event_id, {"target": 0}))
        assert not pipeline.flush(10)
        assert [u["event_id"] for u in server.events("PATCH")] == [event(1).event_id]
        stats = pipeline.snapshot()
        assert (stats["sent"], stats["updated"], stats["failed"]) == (1, 1, 2)


def test_update_of_an_id_not_captured_here_waits_for_earlier_posts(server, make_pipeline):
    """An update for an id this process did not capture goes after every earlier POST."""
    server.push(Respond(503), Respond(503))
    pipeline = make_pipeline(server)
    pipeline.enqueue(event(1))
    pipeline.enqueue(Update(MODEL, "00000000-0000-4000-8000-00000000aaaa", {"t": 1}))
    assert pipeline.flush(10)
    assert [(r.method, r.answered) for r in server.received] == [
        ("POST", 503),
        ("POST", 503),
        ("POST", 200),
        ("PATCH", 200),
    ]


def test_each_distinct_400_message_is_logged_once(make_pipeline, caplog):
    """Rejections are logged once per distinct server message, not once per event."""

    def reject(row: dict[str, Any]) -> str | None:
        return f"bad value {row['x'] % 2}" if row["x"] < 6 else None

    with FaultServer(reject=reject) as server:
        pipeline = make_pipeline(server, batch_size=1)
        for i in range(8):
            pipeline.enqueue(event(i))
        with caplog.at_level(logging.WARNING, logger="fiddler_trace"):
            assert not pipeline.flush(10)
        assert pipeline.snapshot()["failed"] == 6
        assert caplog.text.count("bad value 0") == 1
        assert caplog.text.count("bad value 1") == 1


def test_an_event_too_large_for_a_request_is_named(server, make_pipeline, caplog):
    """An event over max_batch_bytes is dropped with a warning naming its largest columns."""
    pipeline = make_pipeline(server, max_batch_bytes=2048)
    with caplog.at_level(logging.WARNING, logger="fiddler_trace"):
        pipeline.enqueue(
            Event(
                MODEL, "00000000-0000-4000-8000-000000000001", 0.0, {"small": 1, "blob": "x" * 5000}
            )
        )
        assert not pipeline.flush(10)
    assert pipeline.snapshot()["failed"] == 1
    assert MODEL in caplog.text
    assert "largest columns: blob" in caplog.text
    assert server.received == []


def test_flush_times_out_while_server_hangs_then_succeeds(server, make_pipeline):
    """flush(timeout) returns False at its bound while the server hangs; True once delivered."""
    server.push(Hang())
    pipeline = make_pipeline(server, timeout=5.0)
    pipeline.enqueue(event(1))
    assert server.wait_for(lambda: len(server.received) == 1)
    assert pipeline.flush(0.2) is False
    server.release()
    assert pipeline.flush(10) is True
    assert stored_ids(server) == [event(1).event_id]


def test_flush_with_nothing_pending_is_true(server, make_pipeline):
    """flush() on an idle pipeline returns True at once, and flush is safe to repeat."""
    pipeline = make_pipeline(server)
    assert pipeline.flush(1)
    pipeline.enqueue(event(1))
    assert pipeline.flush(5)
    assert pipeline.flush(5)


def test_flush_from_several_threads(server, make_pipeline):
    """Concurrent flushes all return True once their events are delivered."""
    pipeline = make_pipeline(server)
    results: list[bool] = []

    def work(offset: int) -> None:
        for i in range(50):
            pipeline.enqueue(event(offset + i))
        results.append(pipeline.flush(10))

    threads = [threading.Thread(target=work, args=(k * 100,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert results == [True] * 4
    assert len(stored_ids(server)) == 200


def test_flush_inside_freeze_time(server, make_pipeline):
    """Under freezegun the batch still ages and flushes; timestamps follow the frozen clock."""
    pipeline = make_pipeline(server, flush_interval=0.1)
    with freeze_time("2026-01-02T03:04:05.678Z"):
        pipeline.enqueue(Event(MODEL, "00000000-0000-4000-8000-000000000001", time.time(), {}))
        assert server.wait_for(lambda: len(server.events()) == 1, timeout=10)
        assert pipeline.flush(10)
    assert server.events()[0]["timestamp"] == "2026-01-02T03:04:05.678Z"


def test_retry_deadline_fails_the_batch(server, make_pipeline):
    """A batch still failing after retry_deadline fails for good and flush says False."""
    server.push(*[Respond(503, headers={"Retry-After": "0.1"})] * 50)
    pipeline = make_pipeline(server, retry_deadline=0.3)
    pipeline.enqueue(event(1))
    assert pipeline.flush(10) is False
    assert pipeline.snapshot()["failed"] == 1
    assert pipeline.snapshot()["sent"] == 0


def test_full_buffer_drops_and_counts_while_server_hangs(server, make_pipeline, caplog):
    """With the server hanging, 300,000 enqueues return at once; the excess is dropped."""
    server.push(Hang())
    pipeline = make_pipeline(server, max_queue_size=100_000, timeout=5.0)
    pipeline.enqueue(event(0))
    assert server.wait_for(lambda: len(server.received) == 1)
    done = threading.Event()
    accepted: list[int] = []

    def produce() -> None:
        accepted.append(sum(pipeline.enqueue(event(i)) for i in range(1, 300_000)))
        done.set()

    with caplog.at_level(logging.WARNING, logger="fiddler_trace"):
        threading.Thread(target=produce, daemon=True).start()
        assert done.wait(60), "enqueue blocked"
        depth = pipeline.buffer.depth()
        stats = pipeline.snapshot()
        assert depth <= 100_000
        assert stats["dropped"] == 299_999 - accepted[0]
        assert stats["dropped"] >= 200_000
        server.release()
        assert pipeline.flush(60) is False  # events were dropped since the last flush
        assert pipeline.flush(10) is True
    assert caplog.text.count("buffer full") == 1
    assert len(set(stored_ids(server))) == accepted[0] + 1  # and the one that hung


def test_worker_restarts_after_dying(server, make_pipeline, monkeypatch):
    """If the worker thread dies, the next enqueue starts a new one."""
    pipeline = make_pipeline(server)
    pipeline.enqueue(event(1))
    assert pipeline.flush(5)
    thread = pipeline._thread
    assert thread is not None
    pipeline.worker.stopping = True
    pipeline.wake.set()
    thread.join(5)
    assert not pipeline.running
    pipeline.enqueue(event(2))
    assert pipeline.flush(5)
    assert pipeline._thread is not thread
    assert len(stored_ids(server)) == 2


def test_internal_error_is_counted_and_worker_goes_on(server, make_pipeline, monkeypatch, caplog):
    """An exception inside the loop is logged and kept in last_error; delivery continues."""
    pipeline = make_pipeline(server)
    original = pipeline.buffer.seal_due
    calls = {"n": 0}

    def failing_once(now: float, force: bool = False) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        original(now, force)

    monkeypatch.setattr(pipeline.buffer, "seal_due", failing_once)
    with caplog.at_level(logging.ERROR, logger="fiddler_trace"):
        pipeline.enqueue(event(1))
        assert pipeline.flush(10)
    assert "boom" in (pipeline.snapshot()["last_error"] or "")
    assert stored_ids(server) == [event(1).event_id]
