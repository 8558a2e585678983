"""Event ids, timestamps and sampling of monitored calls."""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import gc
import inspect
import math
import os
import signal
import sys
import threading
import time
import uuid
import warnings
from typing import Any, Callable

import pytest
from freezegun import freeze_time

import fiddler_trace
from fiddler_trace import _capture, _ids, monitor, testing
from fiddler_trace.collector import Collector

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"
OTHER = "0b5e3b62-2222-4333-8444-555566667777"


@monitor(MODEL)
def plain(x, y=2):
    return x + y


@monitor(MODEL)
async def coroutine(x, y=2):
    await asyncio.sleep(0)
    return x + y


# -- ids -------------------------------------------------------------------------------------


def test_ids_are_uuid4_strings_and_unique():
    """Generated ids are canonical RFC 4122 version-4 strings, unique across many calls."""
    ids = {_ids.new_event_id() for _ in range(20000)}
    assert len(ids) == 20000
    for text in list(ids)[:500]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_remembered_ids_give_the_garbage_collector_nothing_to_walk():
    """update()'s registry holds only ints: its dicts are never tracked by gc."""
    with testing.capture():
        for i in range(100):
            plain(i)
    remembered = _ids.RECENT.current
    assert len(remembered) == 100
    assert not gc.is_tracked(remembered)


def test_current_event_id_inside_the_call_is_the_events_id():
    """current_event_id() inside the call is the id the event carries; cleared after."""
    seen = []

    @monitor(MODEL)
    def predict(x):
        seen.append(fiddler_trace.current_event_id())
        return x

    with testing.capture() as events:
        predict(1)
    assert seen == [events[0]["event_id"]]
    assert fiddler_trace.current_event_id() is None
    assert fiddler_trace.last_event_ids() == [events[0]["event_id"]]


def test_nested_monitored_calls_restore_the_outer_current_id():
    """An inner monitored call has its own current id; the outer's comes back after it."""
    seen = []

    @monitor(OTHER)
    def inner():
        seen.append(("inner", fiddler_trace.current_event_id()))

    @monitor(MODEL)
    def outer():
        before = fiddler_trace.current_event_id()
        inner()
        seen.append(("outer", before, fiddler_trace.current_event_id()))

    with testing.capture() as events:
        outer()
    by_model = dict(zip(events.models, (row["event_id"] for row in events)))
    assert seen[0] == ("inner", by_model[OTHER])
    assert seen[1] == ("outer", by_model[MODEL], by_model[MODEL])


@pytest.mark.parametrize("frozen", [False, True], ids=["clock", "frozen-clock"])
def test_sync_and_async_calls_nested_either_way_each_see_the_innermost_id(frozen):
    """A sync call's id is found on the stack and an async call's in its task: whichever began
    last is current, in both nestings (an async call run by a sync one through asyncio.run, and
    a sync call made by that async one), and a batch call inside any of them has none; under a
    frozen clock too, where every call begins at the same time."""
    seen: dict[str, Any] = {}

    @monitor(OTHER, batch=True)
    def score_rows(rows):
        seen["batch"] = fiddler_trace.current_event_id()
        return [0] * len(rows)

    @monitor(OTHER)
    def leaf():
        seen["leaf"] = fiddler_trace.current_event_id()
        score_rows([{"a": 1}])
        seen["leaf after batch"] = fiddler_trace.current_event_id()

    @monitor(OTHER)
    async def middle():
        seen["middle"] = fiddler_trace.current_event_id()
        await asyncio.sleep(0)
        leaf()
        seen["middle after leaf"] = fiddler_trace.current_event_id()

    @monitor(MODEL)
    def outer():
        seen["outer"] = fiddler_trace.current_event_id()
        asyncio.run(middle())
        seen["outer after middle"] = fiddler_trace.current_event_id()

    clock = freeze_time("2026-11-27 10:00:00") if frozen else contextlib.nullcontext()
    with clock, testing.capture() as events:
        outer()
    ids = {row["event_id"] for row in events}
    assert len(ids) == 4  # outer, middle, leaf and one batch row
    assert seen["outer"] == seen["outer after middle"] != seen["middle"]
    assert seen["middle"] == seen["middle after leaf"] != seen["leaf"]
    assert seen["leaf"] == seen["leaf after batch"]
    assert seen["batch"] is None
    assert {seen["outer"], seen["middle"], seen["leaf"]} < ids
    assert fiddler_trace.current_event_id() is None


def test_the_hosts_callables_see_their_own_call_running_in_sync_and_async_calls():
    """outputs= and metadata= run at the end of the call, still inside it: current_event_id()
    there is the id of that call's event, for sync and async calls alike, also when the call is
    nested in another monitored call. A batch call's rows get their ids after its callables
    ran: those see the call around it, whose events an update() there may name."""
    seen: list[tuple[str, str, Any]] = []

    def watched(kind: str) -> dict[str, Any]:
        def outputs(result: Any) -> dict[str, Any]:
            seen.append((kind, "outputs", fiddler_trace.current_event_id()))
            return {"score": result} if kind != "batch" else result

        def metadata() -> dict[str, Any]:
            seen.append((kind, "metadata", fiddler_trace.current_event_id()))
            return {}

        return {"outputs": outputs, "metadata": metadata}

    @monitor(OTHER, **watched("sync"))
    def sync_call():
        return 1

    @monitor(OTHER, **watched("async"))
    async def async_call():
        return 2

    @monitor(OTHER, batch=True, **watched("batch"))
    def batch_call(rows):
        return [{"score": 3} for _ in rows]

    @monitor(MODEL)
    def outer():
        sync_call()
        asyncio.run(async_call())
        batch_call([{"a": 1}])

    with testing.capture() as events:
        sync_call()
        asyncio.run(async_call())
        batch_call([{"a": 1}])
        outer()
    ids: dict[Any, list[str]] = {1: [], 2: [], 3: []}
    for row in events:
        if "score" in row:
            ids[row["score"]].append(row["event_id"])
    assert [len(ids[score]) for score in (1, 2, 3)] == [2, 2, 2]
    for kind, score in (("sync", 1), ("async", 2)):
        for step in ("outputs", "metadata"):
            assert [seen_id for k, s, seen_id in seen if (k, s) == (kind, step)] == ids[score]
    outer_id = next(row["event_id"] for row, model in zip(events, events.models) if model == MODEL)
    assert [seen_id for k, _, seen_id in seen if k == "batch"] == [None, None, outer_id, outer_id]


def test_a_sync_call_of_another_thread_is_not_current_here():
    """While one thread is inside a sync monitored call, another thread sees no current id."""
    inside, release = threading.Event(), threading.Event()

    @monitor(MODEL)
    def slow():
        inside.set()
        release.wait(timeout=10)

    thread = threading.Thread(target=slow)
    with testing.capture():
        thread.start()
        assert inside.wait(timeout=10)
        try:
            assert fiddler_trace.current_event_id() is None
        finally:
            release.set()
            thread.join(timeout=10)


def test_tasks_a_monitored_coroutine_starts_see_its_id_and_can_update_it():
    """Tasks started inside a monitored coroutine (gather, create_task, to_thread) run on stacks
    of their own and inherit its context: its id is current there too, and an update() made
    there waits for the call's event, as one made in the call itself does."""
    seen: dict[str, Any] = {}

    def in_a_thread():
        seen["thread"] = fiddler_trace.current_event_id()

    async def child(name):
        await asyncio.sleep(0)
        seen[name] = fiddler_trace.current_event_id()

    @monitor(MODEL)
    async def predict():
        await asyncio.gather(child("gathered"), asyncio.create_task(child("created")))
        await asyncio.to_thread(in_a_thread)
        fiddler_trace.update(seen["created"], {"target": 1})
        return 1

    with testing.capture() as events:
        asyncio.run(predict())
    assert seen == dict.fromkeys(("gathered", "created", "thread"), events[0]["event_id"])
    assert events.updates == [{"event_id": events[0]["event_id"], "target": 1}]


@pytest.mark.parametrize("frozen", [False, True], ids=["clock", "frozen-clock"])
def test_a_task_of_an_async_call_inside_a_sync_one_sees_the_async_call(frozen):
    """A sync monitored function that runs an event loop, an async monitored call inside it,
    and a task that call starts: the task runs on the loop's stack, which holds the sync call's
    frame, yet the async call, which began inside the sync one, is the innermost, whatever the
    clock says; an update() of it from the task waits for its event."""
    seen: dict[str, Any] = {}

    async def child():
        seen["child"] = fiddler_trace.current_event_id()
        fiddler_trace.update(seen["child"], {"target": 1})  # deferred: the call is running

    @monitor(OTHER)
    async def middle():
        seen["middle"] = fiddler_trace.current_event_id()
        await asyncio.create_task(child())

    @monitor(MODEL)
    def outer():
        seen["outer"] = fiddler_trace.current_event_id()
        asyncio.run(middle())

    clock = freeze_time("2026-11-27 10:00:00") if frozen else contextlib.nullcontext()
    with clock, testing.capture() as events:
        outer()
    by_model = dict(zip(events.models, (row["event_id"] for row in events)))
    assert seen == {"outer": by_model[MODEL], "middle": by_model[OTHER], "child": by_model[OTHER]}
    assert events.updates == [{"event_id": by_model[OTHER], "target": 1}]


def test_a_task_that_outlives_the_call_that_started_it_is_outside_any_call():
    """A task a monitored coroutine starts may run on after the call returned (feedback sent
    later): there its id is no longer current, and an update() of it goes out at once instead
    of waiting behind a call that is over."""
    seen: dict[str, Any] = {}
    later = []

    async def feedback(event_id):
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the call has returned by now
        seen["current"] = fiddler_trace.current_event_id()
        fiddler_trace.update(event_id, {"target": 1})

    @monitor(MODEL)
    async def predict(x):
        later.append(asyncio.create_task(feedback(fiddler_trace.current_event_id())))
        return x

    async def main():
        await predict(1)
        seen["returned"] = not later[0].done()
        await later[0]

    with testing.capture() as events:
        asyncio.run(main())
    assert seen == {"returned": True, "current": None}
    assert events.updates == [{"event_id": events[0]["event_id"], "target": 1}]
    assert not _capture.DEFERRED


def test_a_batch_or_async_call_made_from_a_thread_started_in_c_is_captured():
    """A monitored function can be the first Python frame of its thread (a thread started from
    C calls it, a coroutine stepped from C): the walk for the sync call it began in finds an
    empty stack, and the call runs and is captured as any other."""

    @monitor(MODEL, batch=True)
    def score(rows):
        return [0] * len(rows)

    @monitor(OTHER)
    async def handle(x):
        await asyncio.sleep(0)  # suspends once, without an event loop
        return x

    def wait_until(condition):
        deadline = time.monotonic() + 10
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.001)
        return condition()

    with testing.capture() as events:
        _thread.start_new_thread(score, ([{"a": 1}],))  # score is the thread's first frame
        assert wait_until(lambda: len(events) == 1)
        coroutine = handle(2)
        _thread.start_new_thread(coroutine.send, (None,))  # so is the coroutine's wrapper
        assert wait_until(lambda: inspect.getcoroutinestate(coroutine) == "CORO_SUSPENDED")
        with pytest.raises(StopIteration):
            coroutine.send(None)  # the rest of the call, from here
    assert events.models == [MODEL, OTHER]
    assert fiddler_trace.stats()["capture_errors"] == 0


def test_calls_that_share_an_event_id_are_told_apart_by_their_frames():
    """Ids given by event_id= may repeat (one request id for several models): an async call
    begun inside a sync call, and a sync call inside the async one, all with the same id, are
    told apart by which frame runs, not by the id."""
    seen: dict[str, Any] = {}
    request_id = "req-42"

    @monitor(OTHER, event_id=lambda: request_id)
    def rank():
        seen["rank"] = _ids.running_id()
        seen["rank frame"] = sys._getframe(1).f_code.co_filename

    @monitor(OTHER)
    async def middle():
        seen["middle"] = fiddler_trace.current_event_id()
        rank()

    @monitor(MODEL, event_id=lambda: request_id)
    def outer():
        asyncio.run(middle())

    with testing.capture():
        outer()
    assert seen["rank"] == request_id  # not the async call's id
    assert seen["middle"] != request_id


def test_an_uncaptured_batch_call_is_not_the_running_call():
    """A batch=True call whose capture failed (its argument is not rows) runs uncaptured: inside
    it, the running call is the sync call it was made in, not the async call around both."""
    seen: dict[str, Any] = {}

    @monitor(OTHER, batch=True)
    def score_rows(rows):
        seen["batch"] = fiddler_trace.current_event_id()
        return [0]

    @monitor(OTHER)
    def score():
        seen["sync"] = fiddler_trace.current_event_id()
        score_rows(42)  # not rows: not captured

    @monitor(MODEL)
    async def handle():
        score()

    with testing.capture():
        asyncio.run(handle())
    assert seen["batch"] == seen["sync"] is not None


def test_ids_are_per_thread():
    """Threads each see their own current and last ids."""
    results: dict[int, tuple[Any, Any]] = {}
    barrier = threading.Barrier(8)

    @monitor(MODEL)
    def predict(i):
        barrier.wait(timeout=10)
        return fiddler_trace.current_event_id()

    def worker(i):
        inside = predict(i)
        results[i] = (inside, fiddler_trace.last_event_id())

    with testing.capture() as events:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
    by_input = {row["i"]: row["event_id"] for row in events}
    assert len(by_input) == 8
    for i, (inside, last) in results.items():
        assert inside == last == by_input[i]


def test_ids_never_leak_between_concurrent_tasks():
    """Concurrent asyncio tasks interleave, yet each sees only its own ids."""

    @monitor(MODEL)
    async def predict(i):
        mine = fiddler_trace.current_event_id()
        for _ in range(3):
            await asyncio.sleep(0)
            assert fiddler_trace.current_event_id() == mine
        return mine

    async def task(i):
        inside = await predict(i)
        await asyncio.sleep(0)
        return i, inside, fiddler_trace.last_event_id()

    async def main():
        results = await asyncio.gather(*(task(i) for i in range(20)))
        return results, fiddler_trace.last_event_id()

    with testing.capture() as events:
        results, parents_last = asyncio.run(main())
    by_input = {row["i"]: row["event_id"] for row in events}
    assert len(set(by_input.values())) == 20
    for i, inside, last in results:
        assert inside == last == by_input[i]
    assert parents_last is None  # the tasks' ids stayed in the tasks


def in_forked_child(report: Callable[[], str]) -> str:
    """Fork; in the child, run ``report`` and hand its text back; return that text."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, report().encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    text = os.read(read, 1000).decode()
    os.close(read)
    assert os.WEXITSTATUS(status) == 0
    return text


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_the_hot_path_takes_ids_drawn_ahead_and_a_forked_child_none_of_its_parents():
    """A captured call takes its id from the ids the worker drew ahead; a forked child starts
    with none of them (they are its parent's), and seed() empties them too."""
    drawn, pool = _ids.new_event_bits(), _ids.ID_POOL
    with testing.capture() as events:
        pool.append(drawn)
        plain(1)
        pool.append(drawn)
        in_child = in_forked_child(lambda: f"{len(pool)} {plain(2) and 0}")
    assert events[0]["event_id"] == _ids.format_event_id(drawn)
    assert in_child == "0 0"
    assert pool == [drawn]  # the parent's is still there
    _ids.seed(7)
    assert pool == []


def test_the_worker_keeps_ids_drawn_ahead():
    """The worker tops the pool of ids up between its turns; those ids are UUID4s when sent."""
    _ids.ID_POOL.clear()
    with Collector(port=0) as collector:
        fiddler_trace.init(enabled=True, url=collector.url, token="t")
        plain(1)  # starts the worker
        assert fiddler_trace.flush(10)
        assert len(_ids.ID_POOL) >= 1024
        taken = _ids.ID_POOL[-1]
        plain(2)
        assert fiddler_trace.last_event_id() == _ids.format_event_id(taken)
        assert fiddler_trace.flush(10)
        stored = [row["event_id"] for row in collector.events(MODEL)]
        fiddler_trace.shutdown()
    assert stored[-1] == _ids.format_event_id(taken)
    assert uuid.UUID(stored[-1]).version == 4


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_while_another_thread_decides_on_an_update_leaves_the_child_a_free_lock():
    """A thread inside update()'s deferral (it holds the lock for a moment) when the process
    forks does not exist in the child: the child gets a lock of its own, or its async
    monitored calls would wait for that one forever as they end."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:  # as update() does while it decides
        with _capture.DEFER_LOCK:
            _capture._deciding += 1
            holding.set()
            release.wait(10)
            _capture._deciding -= 1

    @monitor(MODEL)
    async def predict(x):
        return x

    def in_child() -> str:
        signal.alarm(10)  # a hang here ends the child without its report
        with testing.capture() as events:
            asyncio.run(predict(1))
        return f"{len(events)} {_capture._deciding}"

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        assert in_forked_child(in_child) == "1 0"
    finally:
        release.set()
        holder.join(10)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_draws_different_ids():
    """After fork the child's random source is reseeded: it never repeats the parent's ids."""
    _ids.seed(1234)
    child_id = in_forked_child(_ids.new_event_id)
    assert uuid.UUID(child_id).version == 4
    assert child_id != _ids.new_event_id()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_call_running_in_another_thread_at_a_fork_is_not_current_in_the_child():
    """A thread inside a monitored call when the process forks does not exist in the child: its
    call is nobody's current call there, and the updates deferred by it are dropped."""
    inside, release = threading.Event(), threading.Event()

    @monitor(MODEL)
    def slow():
        fiddler_trace.update(fiddler_trace.current_event_id(), {"target": 1})  # deferred
        inside.set()
        release.wait(timeout=10)

    with testing.capture():
        thread = threading.Thread(target=slow)
        thread.start()
        assert inside.wait(timeout=10)

        def report() -> str:
            from fiddler_trace._capture import DEFERRED

            return f"{fiddler_trace.current_event_id()} {len(DEFERRED)}"

        try:
            in_child = in_forked_child(report)
        finally:
            release.set()
            thread.join(timeout=10)
    assert in_child == "None 0"


# -- timestamps ------------------------------------------------------------------------------


def test_timestamps_follow_a_frozen_clock():
    """Under freezegun the event's timestamp is the frozen time, ISO 8601 with ms and Z."""
    with testing.capture() as events, freeze_time("2026-01-02T03:04:05.678Z"):
        plain(1)
        asyncio.run(coroutine(1))
    assert [row["timestamp"] for row in events] == ["2026-01-02T03:04:05.678Z"] * 2


def test_an_event_captured_under_a_frozen_clock_can_be_updated_later():
    """Remembering ids for update() does not depend on the (frozen) wall clock."""
    with testing.capture() as events:
        with freeze_time("2001-01-01"):
            plain(1)
            event_id = fiddler_trace.last_event_id()
        fiddler_trace.update(event_id, {"target": 1})
    assert events.updates == [{"target": 1, "event_id": event_id}]


# -- sampling --------------------------------------------------------------------------------


def test_sample_rate_zero_captures_nothing_but_keeps_ids():
    """Sampled-out calls get an id and are counted; updating them is a silent no-op."""

    @monitor(MODEL, sample_rate=0.0)
    def predict(x):
        return x

    with testing.capture() as events:
        predict(1)
        event_id = fiddler_trace.last_event_id()
        fiddler_trace.update(event_id, {"target": 1})
    assert events == []
    assert events.updates == []
    assert uuid.UUID(event_id).version == 4
    assert fiddler_trace.stats()["sampled_out"] == 1


def test_a_monitors_sample_rate_overrides_the_global_one():
    """Per-monitor sample_rate wins over FIDDLER_TRACE_SAMPLE_RATE / init(sample_rate=)."""

    @monitor(MODEL, sample_rate=1.0)
    def always(x):
        return x

    fiddler_trace.init(sample_rate=0.0)
    with testing.capture() as events:
        always(1)
        plain(1)
    assert [row["x"] for row in events] == [1]
    assert events[0]["prediction"] == 1
    assert fiddler_trace.stats()["sampled_out"] == 1


def test_sampling_is_decided_per_call():
    """A seeded rate of 0.3 captures about 30% of calls; every call is counted once."""

    @monitor(MODEL, sample_rate=0.3)
    def predict(x):
        return x

    _ids.seed(42)
    with testing.capture() as events:
        for i in range(2000):
            predict(i)
    stats = fiddler_trace.stats()
    assert stats["captured"] + stats["sampled_out"] == 2000
    assert stats["captured"] == len(events)
    assert math.isclose(len(events) / 2000, 0.3, abs_tol=0.05)


def test_an_id_is_known_in_any_form_a_uuid_is_written_in():
    """update() finds a drawn id remembered by its int (the Python drain loop) or by its
    string (the C one) from the canonical string, upper case, braces or a URN."""
    by_int, by_text = _ids.new_event_bits(), _ids.new_event_bits()
    _ids.RECENT.add(by_int, MODEL, "event_id")
    owner = _ids.RECENT.owner(OTHER, "id")
    _ids.RECENT.current[_ids.format_event_id(by_text)] = owner
    for bits, known in ((by_int, (MODEL, "event_id")), (by_text, (OTHER, "id"))):
        text = _ids.format_event_id(bits)
        for form in (text, text.upper(), "{" + text + "}", "urn:uuid:" + text):
            assert _ids.RECENT.get(form) == known, form
    assert _ids.RECENT.get(_ids.new_event_id()) is None
    assert _ids.RECENT.get("not-a-uuid") is None
