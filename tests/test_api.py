"""The module-level API: init, update, delete_events, flush/shutdown/stats, and end-to-end runs
through the local collector, in process and in a subprocess configured only by environment."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from faults import Hang, Stall, fault_server

import fiddler_trace
from fiddler_trace import (
    ConfigurationError,
    FiddlerHandler,
    Job,
    _capture,
    _ids,
    _pipeline,
    monitor,
    testing,
)
from fiddler_trace.collector import Collector

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"
OTHER = "0b5e3b62-2222-4333-8444-555566667777"
UNKNOWN_ID = "11111111-2222-4333-8444-555555555555"


@monitor(MODEL)
def predict(age, region="EU"):
    return {"score": age / 100}


@monitor(OTHER, event_id_column="request_id")
def predict_other(x):
    return x


def test_public_names_are_pinned():
    """The package's public surface, sorted."""
    assert fiddler_trace.__all__ == [
        "ConfigurationError",
        "EventsClient",
        "FiddlerAPIError",
        "FiddlerHandler",
        "Job",
        "__version__",
        "current_event_id",
        "delete_events",
        "flush",
        "init",
        "last_event_id",
        "last_event_ids",
        "monitor",
        "shutdown",
        "stats",
        "update",
    ]
    assert fiddler_trace.__all__ == sorted(fiddler_trace.__all__)


# -- init ------------------------------------------------------------------------------------


def test_init_applies_settings_over_the_environment(monkeypatch):
    """init(**settings) overrides FIDDLER_* values; what it does not name comes from them."""
    monkeypatch.setenv("FIDDLER_TRACE_FLUSH_INTERVAL", "2.5")
    assert fiddler_trace.init(sample_rate=0.25) is None
    active = _pipeline.settings()
    assert active.sample_rate == 0.25
    assert active.flush_interval == 2.5


def test_init_with_a_bad_value_names_it_and_changes_nothing():
    """A bad init() argument raises ConfigurationError naming it; the old settings stay."""
    fiddler_trace.init(sample_rate=0.5)
    with pytest.raises(ConfigurationError, match=r"sample_rate.*7"):
        fiddler_trace.init(sample_rate=7)
    with pytest.raises(ConfigurationError, match="FIDDLER_URL"):
        fiddler_trace.init(enabled=True)
    assert _pipeline.settings().sample_rate == 0.5


# -- update ----------------------------------------------------------------------------------


def test_an_update_carries_only_the_id_and_the_changes():
    """The PATCH row is {event id column: id, **columns}; the model comes from memory."""
    with testing.capture() as events:
        predict(41)
        event_id = fiddler_trace.last_event_id()
        fiddler_trace.update(event_id, {"target": 1})
    assert events.updates == [{"target": 1, "event_id": event_id}]
    assert events.update_models == [MODEL]


def test_an_update_uses_the_monitors_id_column():
    """The event id column the event was captured with is remembered for its update."""
    with testing.capture() as events:
        predict_other(1)
        fiddler_trace.update(fiddler_trace.last_event_id(), {"label": "x"})
    assert events.updates == [{"label": "x", "request_id": events[0]["request_id"]}]
    assert events.update_models == [OTHER]


def test_an_update_follows_its_event():
    """Through the sink, events and updates arrive in call order."""
    order = []
    with testing.capture():
        _pipeline.install_sink(lambda item: order.append(type(item).__name__) or True)
        predict(1)
        fiddler_trace.update(fiddler_trace.last_event_id(), {"target": 0})
        predict(2)
    assert order == ["tuple", "Update", "tuple"]


def test_an_unknown_id_needs_a_model_id():
    """Without model_id an id this process does not know is a ValueError saying what to pass."""
    with testing.capture() as events:
        with pytest.raises(ValueError, match="model_id="):
            fiddler_trace.update(UNKNOWN_ID, {"target": 1})
        fiddler_trace.update(UNKNOWN_ID, {"target": 1}, model_id=OTHER)
        fiddler_trace.update(UNKNOWN_ID, {"t": 2}, model_id=OTHER, event_id_column="rid")
    assert events.updates == [
        {"target": 1, "event_id": UNKNOWN_ID},
        {"t": 2, "rid": UNKNOWN_ID},
    ]


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((UNKNOWN_ID, [("target", 1)]), {}, TypeError),
        ((UNKNOWN_ID, "target=1"), {}, TypeError),
        ((12345, {"target": 1}), {}, TypeError),
        ((UNKNOWN_ID, {"target": 1}), {"model_id": "nope"}, ValueError),
        ((UNKNOWN_ID, {"target": 1}), {"model_id": MODEL, "event_id_column": ""}, ValueError),
    ],
)
def test_bad_update_arguments_raise_at_the_call(args, kwargs, error):
    """update() is not a monitored call: argument errors raise, enabled or not."""
    with pytest.raises(error):
        fiddler_trace.update(*args, **kwargs)
    with testing.capture(), pytest.raises(error):
        fiddler_trace.update(*args, **kwargs)


def test_update_does_nothing_while_disabled():
    """With capture off update() checks its arguments and returns; no id is needed."""
    fiddler_trace.update(UNKNOWN_ID, {"target": 1})
    assert fiddler_trace.stats()["errors"] == 0


def test_remembered_ids_expire_after_the_ttl(monkeypatch):
    """Ids are kept by generation: a closed one is forgotten update_cache_ttl seconds after it
    closed; the open one is kept."""
    fiddler_trace.init(update_cache_ttl=60, update_cache_size=40)  # generations of 10 ids
    with testing.capture():
        predict(1)
        oldest = fiddler_trace.last_event_id()
        for i in range(10):  # fills the generation of `oldest`, which closes
            predict(i)
        newest = fiddler_trace.last_event_id()
        later = _ids.monotonic() + 61
        monkeypatch.setattr(_ids, "monotonic", lambda: later)
        with pytest.raises(ValueError, match="model_id="):
            fiddler_trace.update(oldest, {"target": 1})
        fiddler_trace.update(newest, {"target": 1})


def test_remembered_ids_are_bounded():
    """update() remembers at most update_cache_size ids, and at least the newest 3/4."""
    fiddler_trace.init(update_cache_size=40)
    ids = []
    with testing.capture():
        for i in range(1000):
            predict(i)
            ids.append(fiddler_trace.last_event_id())
        assert len(_ids.RECENT) <= 40
        for event_id in ids[-30:]:
            fiddler_trace.update(event_id, {"target": 1})
        with pytest.raises(ValueError, match="model_id="):
            fiddler_trace.update(ids[0], {"target": 1})


def test_the_global_redact_setting_applies_to_updates():
    """Columns named in init(redact=...) never leave in an update either."""
    fiddler_trace.init(redact=["email"])
    with testing.capture() as events:
        predict(1)
        fiddler_trace.update(fiddler_trace.last_event_id(), {"target": 1, "email": "a@b"})
    assert events.updates == [{"target": 1, "event_id": events[0]["event_id"]}]


# -- delete_events ---------------------------------------------------------------------------

NOW = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({}, "no filter"),
        ({"event_ids": ["a"], "start_time": NOW, "end_time": NOW}, "not both"),
        ({"start_time": NOW}, "end_time"),
        ({"end_time": NOW}, "start_time"),
        ({"start_time": NOW.replace(tzinfo=None), "end_time": NOW}, "time zone"),
        ({"event_ids": ["a"], "update_metrics": True}, "update_metrics"),
        ({"event_ids": []}, "empty"),
        ({"event_ids": [str(i) for i in range(10_001)]}, "EventsClient"),
    ],
)
def test_delete_events_refuses_before_sending(kwargs, text, request_log):
    """Unsafe or ambiguous deletes are ValueErrors raised before any request."""
    fiddler_trace.init(url="http://127.0.0.1:9", token="t")
    with pytest.raises(ValueError, match=text):
        fiddler_trace.delete_events(MODEL, **kwargs)
    assert request_log.requests == []


def test_delete_events_needs_url_and_token(monkeypatch):
    """Without url and token delete_events raises ConfigurationError naming them."""
    monkeypatch.delenv("FIDDLER_URL", raising=False)
    monkeypatch.delenv("FIDDLER_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="url and token"):
        fiddler_trace.delete_events(MODEL, event_ids=["a"])


def test_delete_events_sends_one_request_and_returns_the_job(monkeypatch, request_log):
    """One DELETE with the validated body; the job of the response is returned."""
    bodies = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(orjson.loads(request.content))
        job = {"id": "2bb3a3a4-1111-4222-8333-444455556666", "name": "delete events"}
        return httpx.Response(
            202, json={"api_version": "3.0", "kind": "NORMAL", "data": {"job": job}}
        )

    monkeypatch.setattr(_pipeline, "_transport", httpx.MockTransport(answer))
    fiddler_trace.init(url="https://fiddler.example.com", token="t")
    job = fiddler_trace.delete_events(
        MODEL, start_time="2026-01-01T00:00:00Z", end_time=NOW, update_metrics=True
    )
    assert job == Job(id="2bb3a3a4-1111-4222-8333-444455556666", name="delete events")
    assert bodies == [
        {
            "model_id": MODEL,
            "time_range": {
                "start_time": "2026-01-01T00:00:00.000Z",
                "end_time": "2026-01-02T00:00:00.000Z",
            },
            "update_metrics": True,
        }
    ]
    assert request_log.requests == [("DELETE", "/v3/events")]


# -- flush, shutdown, stats ------------------------------------------------------------------


def test_flush_and_shutdown_without_a_pipeline():
    """With nothing captured flush() is True at once and shutdown() is a no-op."""
    assert fiddler_trace.flush(0.1) is True
    assert fiddler_trace.shutdown(0.1) is None


def test_stats_has_every_counter():
    """stats() returns every counter of the contract, fresh each call."""
    stats = fiddler_trace.stats()
    expected = {
        "captured",
        "sent",
        "updated",
        "dropped",
        "failed",
        "errors",
        "retried",
        "sampled_out",
        "spooled",
        "replayed",
        "queue_depth",
        "last_error",
    }
    assert expected <= set(stats)
    stats["captured"] = 99
    assert fiddler_trace.stats()["captured"] == 0


# -- end to end ------------------------------------------------------------------------------


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector(port=0) as running:
        yield running


def test_monitored_calls_reach_the_collector(collector, request_log):
    """init -> monitored calls -> flush: every event is stored with its columns."""
    fiddler_trace.init(enabled=True, url=collector.url, token="t")
    ids = []
    for age in (20, 30, 40):
        predict(age, region="US")
        ids.append(fiddler_trace.last_event_id())
    assert fiddler_trace.flush(10)
    stored = collector.events(MODEL)
    assert [row["event_id"] for row in stored] == ids
    assert [(row["age"], row["region"], row["score"]) for row in stored] == [
        (20, "US", 0.2),
        (30, "US", 0.3),
        (40, "US", 0.4),
    ]
    assert all(row["timestamp"].endswith("Z") for row in stored)
    stats = fiddler_trace.stats()
    assert (stats["captured"], stats["sent"]) == (3, 3)


def test_an_update_right_after_the_call_is_applied(collector, request_log):
    """An update queued before its event was sent still lands after it."""
    fiddler_trace.init(enabled=True, url=collector.url, token="t")

    @monitor(OTHER)
    def other(x):
        return x

    predict(50)
    fiddler_trace.update(fiddler_trace.last_event_id(), {"target": 1})
    other(7)
    fiddler_trace.update(fiddler_trace.last_event_id(), {"label": "late"})
    assert fiddler_trace.flush(10)
    assert collector.events(MODEL)[0]["target"] == 1
    assert collector.events(OTHER)[0]["label"] == "late"
    assert fiddler_trace.stats()["updated"] == 2
    assert {method for method, _ in request_log.requests} == {"POST", "PATCH"}


def test_handler_events_and_delete_through_the_collector(collector, request_log):
    """Log records become stored events; delete_events removes them by id."""
    fiddler_trace.init(enabled=True, url=collector.url, token="t")
    logger = logging.getLogger("app.e2e")
    handler = FiddlerHandler(MODEL)
    logger.addHandler(handler)
    try:
        for i in range(3):
            logger.warning("scored", extra={"fiddler": {"i": i, "event_id": f"log-{i}"}})
    finally:
        logger.removeHandler(handler)
    assert fiddler_trace.flush(10)
    assert collector.count(MODEL) == 3
    job = fiddler_trace.delete_events(MODEL, event_ids=["log-0", "log-1"])
    assert isinstance(job, Job)
    assert [row["i"] for row in collector.events(MODEL)] == [2]


def test_a_monitored_call_under_a_frozen_clock_still_flushes(collector):
    """Delivery never depends on the caller's clock: frozen time still flushes."""
    from freezegun import freeze_time

    fiddler_trace.init(enabled=True, url=collector.url, token="t")
    with freeze_time("2026-01-02T03:04:05.678Z"):
        predict(1)
        assert fiddler_trace.flush(10)
    assert collector.events(MODEL)[0]["timestamp"] == "2026-01-02T03:04:05.678Z"


@pytest.mark.slow
def test_a_process_configured_only_by_environment_delivers_at_exit(collector):
    """FIDDLER_TRACE_ENABLED/URL/TOKEN alone: the script exits normally, events arrive."""
    script = textwrap.dedent(
        f"""
        import fiddler_trace

        @fiddler_trace.monitor({MODEL!r})
        def predict(x):
            return {{"double": x * 2}}

        for i in range(25):
            predict(i)
        first = fiddler_trace.last_event_id()
        print("done")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIDDLER_")}
    env.update(
        FIDDLER_TRACE_ENABLED="1",
        FIDDLER_URL=collector.url,
        FIDDLER_TOKEN="secret-token",
        FIDDLER_TRACE_FLUSH_INTERVAL="30",  # only the exit flush can deliver in time
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"
    assert done.stderr == ""
    assert collector.count(MODEL) == 25  # acknowledged before the process ended
    stored = collector.events(MODEL)
    assert sorted(row["double"] for row in stored) == [2 * i for i in range(25)]
    assert {row["x"] for row in stored} == set(range(25))


@pytest.mark.slow
def test_a_ground_truth_job_configured_only_by_environment_sends_updates(collector):
    """A later process with only FIDDLER_* set and no decorator sends its updates at exit."""
    fiddler_trace.init(enabled=True, url=collector.url, token="t")
    ids = [predict(i) and fiddler_trace.last_event_id() for i in range(3)]
    assert fiddler_trace.flush(10)
    script = textwrap.dedent(
        f"""
        import fiddler_trace

        for event_id in {ids!r}:
            fiddler_trace.update(event_id, {{"target": 1}}, model_id={MODEL!r})
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIDDLER_")}
    env.update(FIDDLER_TRACE_ENABLED="1", FIDDLER_URL=collector.url, FIDDLER_TOKEN="tok")
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert [row.get("target") for row in collector.events(MODEL)] == [1, 1, 1]


def test_an_update_made_inside_its_own_call_follows_the_event(collector):
    """update(current_event_id()) inside the call waits for the call's event, over HTTP too."""
    fiddler_trace.init(enabled=True, url=collector.url, token="t", flush_interval=0.01)
    seen: list[int] = []

    @fiddler_trace.monitor(model_id=MODEL)
    def predict_and_label(x):
        fiddler_trace.update(fiddler_trace.current_event_id(), {"target": x})
        seen.append(len(collector.updates(MODEL)))
        return {"y": x}

    predict_and_label(7)
    assert fiddler_trace.flush(10)
    assert collector.events(MODEL)[0]["target"] == 7
    assert collector.stats()["unknown_updates"] == 0
    assert seen == [0]


def update_from_a_thread(columns: dict[str, Any], errors: list[BaseException]) -> threading.Thread:
    """Inside an async monitored call: start a thread that updates the call's event with
    ``columns``, in a copy of the call's context (as ``to_thread`` does), and that the call does
    not wait for; what update() raises there goes to ``errors``."""
    event_id = fiddler_trace.current_event_id()

    def label() -> None:
        try:
            fiddler_trace.update(event_id, columns)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=contextvars.copy_context().run, args=(label,))
    thread.start()
    return thread


def redactor_holding_updates() -> tuple[Callable[[Any], Any], threading.Event, threading.Event]:
    """A redactor that holds an update (columns with ``target``) back, after update() found
    its call running: ``(redact, entered, go_on)``; events pass through."""
    entered, go_on = threading.Event(), threading.Event()

    def redact(columns: Any) -> Any:
        if "target" in columns:
            entered.set()
            go_on.wait(10)
        return columns

    return redact, entered, go_on


@pytest.mark.parametrize("outcome", ["returns", "raises"])
def test_an_update_from_a_thread_an_async_call_did_not_wait_for_after_the_call_ended(
    collector, outcome
):
    """An async call's context reaches a thread it starts and does not wait for. An update()
    there that finds the call running, then is held up (here: in the redactor) until the call
    has ended, is not left waiting for a call that is over: it is sent as any update if the
    call made its event, and dropped silently if it raised (as one made inside a call that
    raises is), not refused as an update of an unknown event."""
    redact, entered, go_on = redactor_holding_updates()
    errors: list[BaseException] = []
    threads: list[threading.Thread] = []
    fiddler_trace.init(enabled=True, url=collector.url, token="t", redact=redact)

    @fiddler_trace.monitor(model_id=MODEL)
    async def predict_and_label(x):
        threads.append(update_from_a_thread({"target": x}, errors))
        assert entered.wait(10)  # the update found this call running
        if outcome == "raises":
            raise RuntimeError("model failed")
        return {"y": x}

    with pytest.raises(RuntimeError) if outcome == "raises" else contextlib.nullcontext():
        asyncio.run(predict_and_label(7))
    go_on.set()
    threads[0].join(10)
    assert fiddler_trace.flush(10)
    assert errors == []
    if outcome == "returns":
        assert collector.events(MODEL)[0]["target"] == 7
    else:
        assert collector.updates(MODEL) == []
    assert not _capture.DEFERRED


def test_an_async_call_ending_while_an_update_decides_waits_for_it(collector, monkeypatch):
    """The other order of the race above: the update() from the thread has found the call
    running and holds the lock, about to wait for the call, as the call ends. The end waits for
    the lock, then sends that update behind the event."""
    checking, go_on = threading.Event(), threading.Event()
    real_running_call_of = _ids.running_call_of
    main, looks = threading.get_ident(), []

    def running_call_of_then_pause(event_id):  # in update(): the second look is under the lock
        found = real_running_call_of(event_id)
        if threading.get_ident() != main:
            looks.append(1)
            if len(looks) == 2:
                checking.set()
                go_on.wait(10)
        return found

    def release_once_the_end_waits() -> None:
        # The call's end, on the main thread, waits for the lock: let the update() go on then.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not go_on.is_set():
            frame = sys._current_frames().get(main)
            if frame is not None and frame.f_code is _capture.end_task_call.__code__:
                break
            time.sleep(0.001)
        go_on.set()

    monkeypatch.setattr(_ids, "running_call_of", running_call_of_then_pause)
    fiddler_trace.init(enabled=True, url=collector.url, token="t")
    errors: list[BaseException] = []
    threads = [threading.Thread(target=release_once_the_end_waits)]

    @fiddler_trace.monitor(model_id=MODEL)
    async def predict_and_label(x):
        threads[0].start()
        threads.append(update_from_a_thread({"target": x}, errors))
        assert checking.wait(10)  # the update() holds the lock, the call still running
        return {"y": x}

    asyncio.run(predict_and_label(7))
    for thread in threads:
        thread.join(10)
    assert fiddler_trace.flush(10)
    assert errors == []
    assert collector.events(MODEL)[0]["target"] == 7
    assert not _capture.DEFERRED


GARBAGE_COLLECTED_INSIDE_THE_LOCK = """
import contextvars, gc
import fiddler_trace
from fiddler_trace import _ids, testing

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"

class Suspend:
    def __await__(self):
        yield

@fiddler_trace.monitor(model_id=MODEL)
async def pending(x):
    await Suspend()  # never resumed: a task dropped while it waits
    return {"y": x}

def abandon():
    coroutine = pending(1)
    contextvars.copy_context().run(coroutine.send, None)  # the call runs, suspended
    cycle = [coroutine]
    cycle.append(cycle)  # from here only the garbage collector frees it

real_running_call_of, looks = _ids.running_call_of, []

def running_call_of(event_id):
    looks.append(1)
    if len(looks) == 1:  # update() looks for its call
        abandon()
    else:  # inside the lock: a collection, as any allocation there may start
        gc.collect()
    return real_running_call_of(event_id)

_ids.running_call_of = running_call_of

@fiddler_trace.monitor(model_id=MODEL)
def predict(x):
    fiddler_trace.update(fiddler_trace.current_event_id(), {"target": x})
    return {"y": x}

with testing.capture() as events:
    predict(7)
print(len(events), events.updates[0]["target"])
"""


def test_a_monitored_coroutine_collected_inside_the_update_lock_ends_without_a_deadlock():
    """The garbage collector can run on a thread that holds the lock update() decides under,
    and close a suspended monitored coroutine there, whose end takes that lock too: it must
    not wait for its own thread. (A subprocess: a deadlock would hang the test run.)"""
    done = subprocess.run(
        [sys.executable, "-c", GARBAGE_COLLECTED_INSIDE_THE_LOCK],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "7"]


@pytest.mark.parametrize("model_given", [False, True])
def test_an_update_of_an_enclosing_calls_event_from_a_call_inside_it_waits_for_it(model_given):
    """Inside a monitored call run by another one (here a sync helper run with to_thread by an
    async call), an update() of the outer call's event waits for that event, as one made in the
    outer call itself does: not refused as unknown, and never queued ahead of the publish."""
    model = {"model_id": MODEL} if model_given else {}

    @monitor(MODEL)
    def postprocess(event_id, x):
        fiddler_trace.update(event_id, {"target": x}, **model)
        return {"z": x}

    @monitor(MODEL)
    async def predict_and_label(x):
        await asyncio.to_thread(postprocess, fiddler_trace.current_event_id(), x)
        return {"y": x}

    kinds: list[str] = []
    with testing.capture() as events:
        keep = _pipeline.install_sink(None)
        assert keep is not None
        _pipeline.install_sink(lambda item: kinds.append(type(item).__name__) or keep(item))
        asyncio.run(predict_and_label(7))
    assert kinds[-1] == "Update"  # after both publishes
    outer = next(row for row in events if "y" in row)
    assert events.updates == [{"target": 7, "event_id": outer["event_id"]}]


def test_an_update_made_inside_a_call_that_raises_is_dropped():
    """No event, no update: the deferred update of a call that raised is dropped."""

    @fiddler_trace.monitor(model_id=MODEL)
    def failing(x):
        fiddler_trace.update(fiddler_trace.current_event_id(), {"target": x})
        raise RuntimeError("model failed")

    with testing.capture() as events:
        with pytest.raises(RuntimeError):
            failing(1)
        assert events == []
        assert events.updates == []


def _one_event_stuck_in_the_queue(server) -> tuple[str, str]:
    """Start capture against ``server``, which hangs on its first request: one event waits in
    that request, the next in the queue. Returns their ids: ``(in the request, queued)``."""
    server.push(Hang())
    fiddler_trace.init(enabled=True, url=server.url, token="t", flush_interval=0.01)
    predict(1)
    sending = fiddler_trace.last_event_id()
    assert server.wait_for(lambda: len(server.received) == 1)  # the worker is stuck there
    predict(2)
    assert _pipeline.current().buffer.queue  # not drained
    return sending, fiddler_trace.last_event_id()


def test_an_update_of_an_event_still_queued_finds_its_model():
    """The worker remembers the ids it drains; an update() made while the event still waits in
    the queue (the worker busy with a hung request) finds the event there, over HTTP, and the
    PATCH follows the POST."""
    with fault_server() as server:
        _, second = _one_event_stuck_in_the_queue(server)
        fiddler_trace.update(second, {"target": 2})  # no model_id: found in the queue
        server.release()
        assert fiddler_trace.flush(10)
    assert [row["event_id"] for row in server.events("PATCH")] == [second]
    answered = [r for r in server.received if r.answered == 200]
    posted = next(
        i
        for i, r in enumerate(answered)
        if r.method == "POST" and second in [e["event_id"] for e in r.body["source"]["events"]]
    )
    assert [r.method for r in answered[posted + 1 :]] == ["PATCH"]


def test_captured_counts_each_event_once_wherever_it_is():
    """stats()["captured"] counts each captured event once: in a request (counted by the worker
    as it took it), still queued (counted by stats()), in the queue of a pipeline init()
    replaced, dropped by a full buffer, and delivered, over HTTP."""
    with fault_server() as stuck, fault_server() as server:
        _one_event_stuck_in_the_queue(stuck)
        predict(3)
        assert fiddler_trace.stats()["captured"] == 3  # one in the request, two queued
        replaced = threading.Thread(
            target=fiddler_trace.init,
            kwargs={
                "enabled": True,
                "url": server.url,
                "token": "t",
                "exit_timeout": 2.0,
                "max_queue_size": 2,
                "flush_interval": 60,  # the two it holds stay held while the next two come
            },
        )
        replaced.start()
        assert stuck.wait_for(lambda: _pipeline._current is None and bool(_pipeline._retiring))
        assert fiddler_trace.stats()["captured"] == 3  # while init() flushes the old pipeline
        replaced.join(timeout=10)
        assert fiddler_trace.stats()["captured"] == 3  # the replaced pipeline's, given up on
        for x in range(4, 8):
            predict(x)
        stats = fiddler_trace.stats()
        assert (stats["captured"], stats["dropped"]) == (7, 2)  # the new pipeline held two
        fiddler_trace.flush(10)
        stuck.release()
        stats = fiddler_trace.stats()
    assert (stats["captured"], stats["sent"]) == (7, 2)
    assert len(server.events()) == 2


def test_events_a_replaced_pipeline_gave_up_on_are_counted_once_though_its_worker_resumes():
    """init() gives up on a pipeline whose worker is in the middle of a pass over the queue,
    encoding (the host's __repr__, with the queue's lock let go) with more events of that pass
    behind: those are counted as captured then, and the worker, when it resumes, leaves them
    instead of taking (and counting, and sending) them again."""
    entered, release = threading.Event(), threading.Event()

    class Slow:
        def __repr__(self) -> str:
            entered.set()
            release.wait(10)
            return "slow"

    @monitor(MODEL)
    def first(x):
        return {"y": Slow()}  # no JSON form: encoded by its repr(), on the worker

    @monitor(OTHER)
    def second(x):
        return x

    with fault_server() as old, fault_server() as new:
        old.push(Stall())  # the worker waits in its first request while six events queue up
        fiddler_trace.init(enabled=True, url=old.url, token="t", flush_interval=0.01)
        second(-1)
        assert old.wait_for(lambda: len(old.received) == 1)
        first(0)
        for x in range(1, 6):
            second(x)  # another model: first's run is encoded before these are taken
        old_pipeline = _pipeline.current()
        old.release()  # one pass takes first(0) and second(1), then encodes first's run
        assert entered.wait(10)
        fiddler_trace.init(enabled=True, url=new.url, token="t", exit_timeout=0.1)
        assert fiddler_trace.stats()["captured"] == 7
        release.set()
        old_pipeline._thread.join(timeout=10)
        assert not old_pipeline._thread.is_alive()
        assert fiddler_trace.stats()["captured"] == 7
    sent = {e["x"] for e in old.events() if "x" in e}
    assert not sent & {2, 3, 4, 5}  # the four given up on


def test_an_update_of_an_event_lost_with_a_replaced_pipeline_is_dropped_silently():
    """init() replaces a pipeline that gave up on two events, one in a request that hangs, one
    still queued: neither is sent, so their update() (no model_id) is dropped, as for a
    sampled-out call, rather than raising for an id this process did capture or going out
    through the new pipeline before (or without) its event. The new pipeline's own events are
    updated as usual, over HTTP."""
    with fault_server() as stuck, fault_server() as server:
        sending, queued = _one_event_stuck_in_the_queue(stuck)
        fiddler_trace.init(enabled=True, url=server.url, token="t", exit_timeout=0.1)
        fiddler_trace.update(sending, {"target": 1})
        fiddler_trace.update(queued, {"target": 2})
        predict(3)
        fresh = fiddler_trace.last_event_id()
        fiddler_trace.update(fresh, {"target": 3})
        assert fiddler_trace.flush(10)
        stuck.release()
    assert [row["event_id"] for row in server.events("PATCH")] == [fresh]


def test_an_update_of_an_event_left_unsent_at_shutdown_is_dropped_silently():
    """shutdown() gives up on a stuck worker with one event in its request and one queued: an
    update() of either afterwards is dropped, not sent ahead of its event (or, for the queued
    one, refused as an id this process did not capture)."""
    with fault_server() as stuck:
        sending, queued = _one_event_stuck_in_the_queue(stuck)
        assert not fiddler_trace.shutdown(0.1)
        fiddler_trace.update(sending, {"target": 1})
        fiddler_trace.update(queued, {"target": 2})
        assert _pipeline.current() is None  # dropped: no pipeline was started to send it
        with pytest.raises(ValueError, match="not captured by this process"):
            fiddler_trace.update(UNKNOWN_ID, {"target": 2})
        stuck.release()
    assert not any(r.method == "PATCH" for r in stuck.received)


def test_an_event_answered_after_its_pipeline_gave_up_on_it_can_be_updated():
    """init() gives up on a request that the server answers 200 later after all: its event
    is forgotten meanwhile, then gets its model back, and an update() of it goes out."""
    with fault_server() as slow, fault_server() as server:
        slow.push(Stall())
        fiddler_trace.init(enabled=True, url=slow.url, token="t", flush_interval=0.01)
        predict(1)
        landed = fiddler_trace.last_event_id()
        assert slow.wait_for(lambda: len(slow.received) == 1)  # the worker waits for it
        old = _pipeline.current()
        fiddler_trace.init(enabled=True, url=server.url, token="t", exit_timeout=0.1)
        assert _ids.RECENT.get(landed) == (None, "event_id")  # forgotten, for now
        slow.release()
        old._thread.join(10)  # the old worker ends once the answer is handled
        assert _ids.RECENT.get(landed) == (MODEL, "event_id")
        fiddler_trace.update(landed, {"target": 1})
        assert fiddler_trace.flush(10)
    assert [e["event_id"] for e in slow.events()] == [landed]
    assert [row["event_id"] for row in server.events("PATCH")] == [landed]


def test_an_update_naming_model_and_column_does_not_search_the_queue(monkeypatch):
    """An update from another process (model and id column given, id unknown here) is queued
    without searching the queue for its event."""
    with fault_server() as server:
        fiddler_trace.init(enabled=True, url=server.url, token="t", flush_interval=0.01)
        predict(1)  # a pipeline, with a queue

        def search(self, event_id):
            raise AssertionError("the queue was searched")

        monkeypatch.setattr(_pipeline.BatchBuffer, "find_queued", search)
        fiddler_trace.update(UNKNOWN_ID, {"target": 1}, model_id=MODEL, event_id_column="event_id")
        assert fiddler_trace.flush(10)
    assert [row["event_id"] for row in server.events("PATCH")] == [UNKNOWN_ID]
