"""The C extension (fiddler_trace/_speedups.c) against the Python code it stands in for.

The whole suite runs twice in CI, with the extension and with ``FIDDLER_TRACE_NO_EXTENSIONS=1``,
so every test of a sync monitored call runs through both wrappers. These check, over loopback,
that the C wrapper took the calls it should and captured them as the Python one does, and
compare the drain loop's results with and without its C part, item by item.
"""

from __future__ import annotations

import collections
import datetime
import gc
import itertools
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from typing import Any, Optional

import pytest
from freezegun import freeze_time
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fiddler_trace
from fiddler_trace import _buffer, _ids, _native, _pipeline, testing
from fiddler_trace._buffer import BatchBuffer
from fiddler_trace._encode import Encoder
from fiddler_trace._event import Update
from fiddler_trace.collector import Collector

speedups = _native.speedups
pytestmark = pytest.mark.skipif(
    speedups is None, reason="the C extension is not built, or FIDDLER_TRACE_NO_EXTENSIONS is set"
)

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"
OTHER = "0b5e3b62-2222-4333-8444-555566667777"


def taken_in_c() -> bool:
    """Called inside a monitored function: the C wrapper took the call (it entered the call's
    id under the frame that made it; the Python wrapper keeps it in its own frame)."""
    caller = sys._getframe(2)  # this function's caller is the monitored function
    return speedups.entered_at(caller) is not None


def recording(seen: list[bool]) -> Any:
    """A monitored ``predict(age, income) -> {"score": age}`` that appends to ``seen`` whether
    the C wrapper took each call."""

    @fiddler_trace.monitor(MODEL)
    def predict(age, income):
        seen.append(taken_in_c())
        return {"score": age}

    return predict


_held: list[Any] = []  # the drain lock warm() took


@pytest.fixture
def collector() -> Iterator[Collector]:
    """A running pipeline to a loopback collector (see :func:`warm`)."""
    with Collector(port=0) as running:
        fiddler_trace.init(enabled=True, url=running.url, token="t", flush_interval=60.0)
        try:
            yield running
        finally:
            release()
            fiddler_trace.shutdown()


def warm(predict: Any) -> None:
    """Start the pipeline and keep an event queued until :func:`flush`: the calls then take
    the C wrapper's path in a filled queue. The worker cannot drain meanwhile: this thread
    holds its lock."""
    predict(0, 0)
    lane = _pipeline.lane
    assert lane is not None
    if not _held:
        lane._drain_lock.acquire()
        _held.append(lane._drain_lock)
    if not lane.queue:  # the worker took the first one before the lock was taken
        predict(0, 0)
    assert lane.queue


def release() -> None:
    while _held:
        _held.pop().release()


def flush() -> bool:
    """Let the worker drain again, and flush."""
    release()
    return fiddler_trace.flush(10)


def test_calls_the_c_wrapper_takes_are_captured_as_the_python_wrapper_captures_them(
    collector: Collector,
) -> None:
    """Event ids, columns, current_event_id() inside and last_event_id() after: over loopback,
    the same as in Python, for calls the C wrapper took."""
    seen: list[tuple[Optional[str], bool]] = []

    @fiddler_trace.monitor(MODEL)
    def predict(age, income):
        seen.append((fiddler_trace.current_event_id(), taken_in_c()))
        return {"score": age / 100, "label": "yes" if income > 50 else "no"}

    warm(predict)
    seen.clear()
    lasts = []
    for i in range(50):
        assert predict(i, i * 3) == {"score": i / 100, "label": "yes" if i * 3 > 50 else "no"}
        lasts.append(fiddler_trace.last_event_id())
    assert all(in_c for _, in_c in seen)
    assert [event_id for event_id, _ in seen] == lasts
    assert fiddler_trace.current_event_id() is None
    assert flush()
    stored = collector.events(MODEL)[-50:]
    assert [row["event_id"] for row in stored] == lasts
    for i, row in enumerate(stored):
        assert uuid.UUID(row["event_id"]).version == 4
        assert {k: row[k] for k in ("age", "income", "score", "label")} == {
            "age": i,
            "income": i * 3,
            "score": i / 100,
            "label": "yes" if i * 3 > 50 else "no",
        }


def test_a_call_the_c_wrapper_does_not_take_goes_to_the_python_wrapper(
    collector: Collector,
) -> None:
    """A keyword, a missing default, keyword-only use: the Python wrapper's, captured alike."""
    seen = []

    @fiddler_trace.monitor(MODEL)
    def predict(age, income=7):
        seen.append(taken_in_c())
        return {"score": age}

    warm(predict)
    seen.clear()
    predict(1, income=2)
    predict(3)
    predict(4, 5)
    assert seen == [False, False, True]
    assert flush()
    rows = collector.events(MODEL)[-3:]
    assert [(row["age"], row["income"], row["score"]) for row in rows] == [
        (1, 2, 1),
        (3, 7, 3),
        (4, 5, 4),
    ]


def test_the_c_wrapper_takes_calls_into_an_empty_queue_and_the_test_sink() -> None:
    """The first call starts the pipeline; a call into an empty queue checks the process first
    (pipeline.ready()); the test sink receives what it would from the Python wrapper."""
    seen: list[bool] = []
    predict = recording(seen)

    with testing.capture() as events:
        predict(1, 2)
    assert seen == [True]
    assert [(row["age"], row["income"], row["score"]) for row in events] == [(1, 2, 1)]
    assert events[0]["event_id"] == fiddler_trace.last_event_id()
    with Collector(port=0) as running:
        fiddler_trace.init(enabled=True, url=running.url, token="t")
        predict(3, 4)  # no pipeline yet: this call starts it
        assert fiddler_trace.flush(10)
        predict(5, 6)  # an empty queue
        assert fiddler_trace.flush(10)
        assert [row["age"] for row in running.events(MODEL)] == [3, 5]
        fiddler_trace.shutdown()
    assert seen == [True, True, True]


def test_an_exception_passes_through_the_c_wrapper_untouched(collector: Collector) -> None:
    """The same exception object, its traceback through the function, counted, no event, and
    last_event_id() None; an exception that is no Exception (an interrupt) is not counted."""
    error = ValueError("bad input")
    seen = []

    @fiddler_trace.monitor(MODEL)
    def predict(age, income):
        seen.append(taken_in_c())
        if age == -1:
            raise error
        if age == -2:
            raise KeyboardInterrupt
        return {"score": age}

    warm(predict)
    errors_before = fiddler_trace.stats()["errors"]
    with pytest.raises(ValueError, match="bad input") as raised:
        predict(-1, 0)
    assert raised.value is error
    assert raised.traceback[-1].name == "predict"
    assert seen[-1] is True
    assert fiddler_trace.last_event_id() is None
    assert fiddler_trace.stats()["errors"] == errors_before + 1
    predict(1, 0)
    with pytest.raises(KeyboardInterrupt):
        predict(-2, 0)
    assert seen[-1] is True
    assert fiddler_trace.last_event_id() is None
    assert fiddler_trace.stats()["errors"] == errors_before + 1
    assert flush()
    assert all(row["age"] >= 0 for row in collector.events(MODEL))


def test_a_result_the_host_changes_after_the_call_is_captured_as_returned(
    collector: Collector,
) -> None:
    """The event holds its own dict: changing the returned one afterwards changes nothing."""

    @fiddler_trace.monitor(MODEL)
    def predict(age, income):
        return {"score": age}

    warm(predict)
    result = predict(5, 6)
    event_id = fiddler_trace.last_event_id()
    result["score"] = "changed"
    result["extra"] = 1
    assert flush()
    (row,) = [row for row in collector.events(MODEL) if row["event_id"] == event_id]
    assert row["score"] == 5
    assert "extra" not in row


def test_outputs_that_are_not_a_dict_and_named_outputs(collector: Collector) -> None:
    """A scalar result goes to the output column; outputs= names a tuple's parts."""

    @fiddler_trace.monitor(MODEL)
    def scalar(age, income):
        return age * 2

    @fiddler_trace.monitor(OTHER, outputs=["score", "label"])
    def pair(age, income):
        return age, "x"

    warm(scalar)
    warm(pair)
    scalar(4, 0)
    scalar_id = fiddler_trace.last_event_id()
    pair(6, 0)
    pair_id = fiddler_trace.last_event_id()
    assert flush()
    rows = {row["event_id"]: row for row in collector.events()}
    assert rows[scalar_id]["prediction"] == 8
    assert (rows[pair_id]["score"], rows[pair_id]["label"]) == (6, "x")


def test_nested_calls_and_calls_made_from_c_see_their_own_ids(collector: Collector) -> None:
    """An inner call has its own current id, the outer's comes back after it, also when the
    inner calls are made by map() (a C caller: one frame makes them all)."""
    seen = []

    @fiddler_trace.monitor(OTHER)
    def inner(age, income):
        seen.append(("inner", fiddler_trace.current_event_id(), taken_in_c()))
        return {"score": age}

    @fiddler_trace.monitor(MODEL)
    def outer(age, income):
        before = fiddler_trace.current_event_id()
        inner(age, income)
        list(map(inner, [1, 2], [3, 4]))
        seen.append(("outer", before, fiddler_trace.current_event_id(), taken_in_c()))
        return {"score": age}

    warm(inner)
    warm(outer)
    seen.clear()
    outer(9, 9)
    outer_id = fiddler_trace.last_event_id()
    assert seen[-1] == ("outer", outer_id, outer_id, True)
    inner_ids = [event_id for _, event_id, _ in seen[:3]]
    assert all(in_c for _, _, in_c in seen[:3])
    assert len(set(inner_ids)) == 3
    assert outer_id not in inner_ids
    assert flush()
    stored = {row["event_id"] for row in collector.events(OTHER)}
    assert set(inner_ids) <= stored


def test_threads_see_their_own_ids(collector: Collector) -> None:
    """Calls running at once in several threads, each finding its own id."""
    start = threading.Barrier(4)
    wrong: list[tuple[Optional[str], Optional[str]]] = []
    taken = []

    @fiddler_trace.monitor(MODEL)
    def predict(age, income):
        taken.append(taken_in_c())
        mine = fiddler_trace.current_event_id()
        if age > 0:
            start.wait(5)  # all four are inside their calls now
        if fiddler_trace.current_event_id() != mine:
            wrong.append((mine, fiddler_trace.current_event_id()))
        return {"score": age}

    warm(predict)
    threads = [threading.Thread(target=predict, args=(i, i)) for i in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert wrong == []
    assert taken[-4:] == [True] * 4


def test_an_update_of_an_id_the_c_paths_captured(collector: Collector) -> None:
    """update() knows an id the C drain loop remembered (by its string), and an update made
    during the call waits for its event."""

    @fiddler_trace.monitor(MODEL)
    def predict(age, income):
        if age == 7:
            fiddler_trace.update(fiddler_trace.current_event_id(), {"during": True})
        return {"score": age}

    warm(predict)
    predict(5, 0)
    first = fiddler_trace.last_event_id()
    predict(6, 0)
    second = fiddler_trace.last_event_id()
    predict(7, 0)
    third = fiddler_trace.last_event_id()
    assert flush()  # drained: the ids are known from RECENT now
    assert any(type(key) is str for key in _ids.RECENT.current)  # some remembered in C
    assert first is not None
    assert second is not None
    assert third is not None
    fiddler_trace.update(first, {"truth": 1})
    fiddler_trace.update(second, {"truth": 2})
    fiddler_trace.update(third, {"truth": 3})
    assert flush()
    rows = {row["event_id"]: row for row in collector.events(MODEL)}
    assert rows[first]["truth"] == 1
    assert rows[second]["truth"] == 2
    assert rows[third]["truth"] == 3
    assert rows[third]["during"] is True


def test_frozen_time_reaches_the_c_wrapper(collector: Collector) -> None:
    """freezegun replaces time.time: the C wrapper calls it instead of reading the clock."""
    seen: list[bool] = []
    predict = recording(seen)

    warm(predict)
    with freeze_time("2024-05-06 07:08:09.123"):
        predict(1, 2)  # the queue may have been drained meanwhile: this one refills it
        predict(1, 2)
        frozen_id = fiddler_trace.last_event_id()
    predict(3, 4)
    predict(3, 4)
    live_id = fiddler_trace.last_event_id()
    assert (seen[-3], seen[-1]) == (True, True)
    assert flush()
    rows = {row["event_id"]: row for row in collector.events(MODEL)}
    assert rows[frozen_id]["timestamp"] == "2024-05-06T07:08:09.123Z"
    assert rows[live_id]["timestamp"] > "2025"


def test_a_span_is_tied_to_an_event_the_c_wrapper_captured(collector: Collector) -> None:
    """The current span's ids become columns, and the span gets the event's id."""
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    seen: list[bool] = []
    predict = recording(seen)

    warm(predict)
    with tracer.start_as_current_span("request") as span:
        predict(1, 2)
        event_id = fiddler_trace.last_event_id()
        context = span.get_span_context()
    assert seen[-1] is True
    assert flush()
    (row,) = [row for row in collector.events(MODEL) if row["event_id"] == event_id]
    assert row["trace_id"] == f"{context.trace_id:032x}"
    assert row["span_id"] == f"{context.span_id:016x}"
    (finished,) = exporter.get_finished_spans()
    assert finished.attributes == {"fiddler.event_id": event_id}


def test_a_failing_capture_is_reported_and_the_result_returned(collector: Collector) -> None:
    """An outputs= that fails: the host gets its result, the failure is counted and kept."""

    def broken(result: Any) -> dict[str, Any]:
        raise RuntimeError("outputs failed")

    seen = []

    @fiddler_trace.monitor(MODEL, outputs=broken)
    def predict(age, income):
        seen.append(taken_in_c())
        return age

    @fiddler_trace.monitor(MODEL)
    def other(age, income):
        return {"score": age}

    warm(other)  # predict's events all fail: another function keeps the queue filled
    before = fiddler_trace.stats()["capture_errors"]
    assert predict(4, 5) == 4
    assert seen == [True]
    assert fiddler_trace.stats()["capture_errors"] == before + 1
    assert "outputs failed" in str(fiddler_trace.stats()["last_error"])


def test_outputs_run_inside_the_call_and_see_its_id(collector: Collector) -> None:
    """outputs= runs before the call is over: current_event_id() there is the call's own id
    (also in a call nested in another), and an update() made there reaches its event."""
    seen: list[tuple[str, Optional[str]]] = []

    def with_truth(result: Any) -> dict[str, Any]:
        event_id = fiddler_trace.current_event_id()
        seen.append(("outputs", event_id))
        assert event_id is not None
        fiddler_trace.update(event_id, {"truth": result})
        return {"score": result}

    @fiddler_trace.monitor(OTHER, outputs=with_truth)
    def inner(age, income):
        return age + 1

    @fiddler_trace.monitor(MODEL, outputs=with_truth)
    def outer(age, income):
        return inner(age, income) * 10

    warm(inner)
    warm(outer)
    seen.clear()
    outer(1, 2)
    outer_id = fiddler_trace.last_event_id()
    assert flush()
    inner_row = collector.events(OTHER)[-1]
    outer_row = collector.events(MODEL)[-1]
    assert seen == [("outputs", inner_row["event_id"]), ("outputs", outer_id)]
    assert (inner_row["score"], inner_row["truth"]) == (2, 2)
    assert (outer_row["event_id"], outer_row["score"], outer_row["truth"]) == (outer_id, 20, 20)
    assert fiddler_trace.stats()["capture_errors"] == 0


def test_an_interrupt_while_capturing_reaches_the_host() -> None:
    """KeyboardInterrupt or SystemExit raised by outputs= or by time.time() is the host's: the
    Python wrapper lets anything that is not an Exception through, and so does this one."""

    def interrupted(result: Any) -> dict[str, Any]:
        raise KeyboardInterrupt

    calls: list[bool] = []

    @fiddler_trace.monitor(MODEL, outputs=interrupted)
    def predict(age, income):
        calls.append(taken_in_c())
        return age

    plain = recording(calls)

    real_time = time.time
    clock_calls = []

    def exiting_clock() -> float:
        clock_calls.append(1)
        raise SystemExit(3)

    with testing.capture() as events:
        with pytest.raises(KeyboardInterrupt):
            predict(1, 2)
        time.time = exiting_clock  # as freezegun does: replaced in the module
        try:
            with pytest.raises(SystemExit):
                plain(1, 2)
        finally:
            time.time = real_time
        plain(3, 4)
    assert calls == [True, True]  # plain(1, 2) never ran: the clock is read first
    assert clock_calls == [1]  # not read again by the Python wrapper
    assert [row["age"] for row in events] == [3]
    assert fiddler_trace.stats()["capture_errors"] == 0


def test_time_machine_reaches_the_c_wrapper(collector: Collector) -> None:
    """time-machine patches the builtin time.time in place: the C wrapper, which reads the
    clock itself while time.time is that builtin, sees the patch and calls it."""
    time_machine = pytest.importorskip("time_machine")
    seen: list[bool] = []
    predict = recording(seen)

    warm(predict)
    with time_machine.travel(
        datetime.datetime(2020, 1, 2, 3, 4, 5, 678000, datetime.timezone.utc), tick=False
    ):
        predict(1, 2)
        travelled = fiddler_trace.last_event_id()
    assert seen[-1] is True
    assert flush()
    (row,) = [row for row in collector.events(MODEL) if row["event_id"] == travelled]
    assert row["timestamp"] == "2020-01-02T03:04:05.678Z"


def test_a_stopped_pipeline_is_not_kept_by_the_c_wrapper() -> None:
    """What the C wrapper read of a lane is dropped when the lane changes: a shut-down
    pipeline's buffer is freed."""

    @fiddler_trace.monitor(MODEL)
    def predict(age, income):
        return {"score": age}

    with Collector(port=0) as running:
        fiddler_trace.init(enabled=True, url=running.url, token="t", flush_interval=60.0)
        for i in range(3):
            predict(i, i)
        lane = _pipeline.lane
        assert lane is not None
        gone = weakref.ref(lane)
        del lane
        fiddler_trace.shutdown()
    gc.collect()
    assert gone() is None


def test_monitors_stacked_on_one_function_are_both_running_inside_it() -> None:
    """Two monitors on one function: the C wrappers enter both calls under the same frame;
    the walk finds the inner as current and both as running (as the fork hook and update()
    look for them)."""
    seen: dict[str, Any] = {}

    @fiddler_trace.monitor(OTHER)
    @fiddler_trace.monitor(MODEL)
    def predict(age, income):
        seen["taken"] = taken_in_c()
        seen["current"] = fiddler_trace.current_event_id()
        seen["running"] = [_ids.id_text(event_id) for event_id in _ids.running_ids()]
        return {"score": age}

    with testing.capture() as events:
        predict(1, 2)
    ids = {model: row["event_id"] for model, row in zip(events.models, events)}
    assert seen["taken"] is True
    assert seen["current"] == ids[MODEL]
    assert seen["running"] == [ids[MODEL], ids[OTHER]]


# -- the drain loop ---------------------------------------------------------------------------


def _buffer_of(batch_size: int) -> BatchBuffer:
    return BatchBuffer(
        max_events=100_000,
        batch_size=batch_size,
        max_batch_bytes=1_000_000,
        flush_interval=1.0,
        encode=Encoder(),
        wake=threading.Event(),
        dropped=itertools.count(),
    )


def _drained(
    items: list[Any], batch_size: int, c: bool, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Any], int, int, int, dict[str, Any]]:
    """What draining ``items`` leaves: each batch's (method, model, body), the buffer's
    outstanding and drained counts, the publishes counted, and what update() finds."""
    monkeypatch.setattr(_buffer, "_absorber", speedups.Absorber if c else None)
    _ids.RECENT.clear()
    buffer = _buffer_of(batch_size)
    for item in items:
        # Each drain completes the rows in place: a fresh copy of every mutable part.
        buffer.queue.append(
            item if not isinstance(item, tuple) else (*item[:3], dict(item[3]), *item[4:])
        )
    refused = buffer.drain(0.0)
    assert refused == []
    outstanding, drained = buffer.outstanding, buffer.drained
    batches = [
        (batch.method, batch.model_id, batch.data, batch.seqs, batch.event_ids())
        for batch in buffer.take_all()
    ]
    ids = {}
    for item in items:
        if isinstance(item, tuple):
            text = _ids.id_text(item[1])
            if type(item[1]) is int:
                text = _ids.format_event_id(item[1])
            ids[text] = _ids.RECENT.get(text)
    captured = next(buffer._captured)
    return batches, outstanding, drained, captured, ids


_times = st.sampled_from([1_700_000_000.0, 1_700_000_000.0004, 1_700_000_000.0011, 1_700_000_001.5])
_publish = st.tuples(
    st.sampled_from([MODEL, OTHER]),
    st.one_of(
        st.integers(min_value=0, max_value=2**128 - 1),
        st.sampled_from(["caller-id-1", "caller-id-2"]),
    ),
    _times,
    st.fixed_dictionaries({"age": st.integers(0, 99)}),
    st.sampled_from(["event_id", "id"]),
    st.just("timestamp"),
)
_update = st.builds(
    lambda model, n: Update(model, f"caller-id-{n}", {"truth": n}),
    st.sampled_from([MODEL, OTHER]),
    st.integers(1, 2),
)


@settings(max_examples=150, deadline=None)
@given(
    items=st.lists(st.one_of(_publish, _publish, _publish, _update), max_size=40),
    batch_size=st.sampled_from([1, 3, 1000]),
)
def test_the_c_drain_loop_leaves_what_the_python_loop_leaves(
    items: list[Any], batch_size: int
) -> None:
    """Any mix of publishes (two models, two id columns, drawn and supplied ids, timestamps in
    and across milliseconds), updates and batch sizes: the same batches, bytes for bytes, the
    same counts, and update() finds the same ids.

    Drawn ids do not repeat, as two draws of 122 random bits never meet: a repeated one would
    be remembered by its int where the Python loop takes it and by its string where the C
    loop does, and update() would find the first of the two owners. Ids the caller gives may
    repeat: both loops remember those by the same string, the last owner wins."""
    drawn = [item[1] for item in items if isinstance(item, tuple) and type(item[1]) is int]
    assume(len(drawn) == len(set(drawn)))
    with pytest.MonkeyPatch.context() as monkeypatch:
        python = _drained(items, batch_size, False, monkeypatch)
        c = _drained(items, batch_size, True, monkeypatch)
    assert c == python


def test_the_c_drain_loop_takes_most_items_and_counts_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst of one model's events: follow() takes all but the run's first item (none of
    them goes through the loop's own body), each counted in outstanding."""
    taken: list[int] = []
    real = speedups.Absorber

    class Counting:
        def __init__(self, queue: Any, buffer: Any, count: int) -> None:
            self._inner = real(queue, buffer, count)

        def __iter__(self) -> Counting:
            return self

        def __next__(self) -> Any:
            return next(self._inner)

        def follow(self, *args: Any) -> int:
            n = self._inner.follow(*args)
            taken.append(n)
            return n

    monkeypatch.setattr(_buffer, "_absorber", Counting)
    buffer = _buffer_of(1000)
    for i in range(500):
        buffer.queue.append((MODEL, i + 1, 1_700_000_000.0001, {"age": i}, "event_id", "ts"))
    buffer.drain(0.0)
    assert sum(taken) == 499
    assert buffer.outstanding == 500
    assert not buffer.queue


def test_an_item_the_c_loop_cannot_take_is_left_for_the_python_loop() -> None:
    """follow() stops at the first item that does not continue the run, and leaves it queued:
    another model, an update, another millisecond, an id too large for a UUID, no tuple."""

    class Counts:
        outstanding = 0

    stamp = "2023-11-14T22:13:20.000Z"
    run = (MODEL, 5, 1_700_000_000.0001, {}, "event_id", "ts")
    for odd in [
        (OTHER, 5, 1_700_000_000.0001, {}, "event_id", "ts"),
        (MODEL, 5, 1_700_000_000.0001, {}, "id", "ts"),
        (MODEL, 5, 1_700_000_000.0021, {}, "event_id", "ts"),
        (MODEL, 2**128, 1_700_000_000.0001, {}, "event_id", "ts"),
        (MODEL, -1, 1_700_000_000.0001, {}, "event_id", "ts"),
        (MODEL, 5.0, 1_700_000_000.0001, {}, "event_id", "ts"),
        Update(MODEL, "x", {}),
    ]:
        queue: collections.deque[Any] = collections.deque([run, odd])
        absorber = speedups.Absorber(queue, Counts, 2)
        rows: list[dict[str, Any]] = []
        remembered: dict[Any, int] = {}
        follow = absorber.follow
        n = follow(
            rows,
            remembered,
            0,
            MODEL,
            "event_id",
            10,
            1_700_000_000_000.0,
            stamp,
            1_700_000_000_001.0,
        )
        assert n == 1
        assert list(queue) == [odd]
        assert rows == [{"event_id": _ids.format_event_id(5), "ts": stamp}]
        assert remembered == {_ids.format_event_id(5): 0}
        assert next(absorber) is odd
        with pytest.raises(StopIteration):
            next(absorber)
    assert Counts.outstanding == 7
