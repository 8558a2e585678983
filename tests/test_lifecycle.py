"""The process-wide pipeline: lazy start, interpreter exit, fork."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from faults import FaultServer, Hang

import fiddler_trace
from fiddler_trace import _pipeline
from fiddler_trace._buffer import DEEP_CHECK
from fiddler_trace._event import Event
from fiddler_trace._stats import read_count

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"


def event(i: int) -> Event:
    return Event(MODEL, f"00000000-0000-4000-8000-{i:012d}", 1_700_000_000.0, {"x": i})


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_state() -> Iterator[None]:
    _pipeline.reset()
    yield
    _pipeline.reset()


def run_script(body: str, url: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(
        f"""
        from fiddler_trace import _pipeline
        from fiddler_trace._event import Event
        MODEL = {MODEL!r}
        def event(i):
            return Event(MODEL, "00000000-0000-4000-8000-%012d" % i, 1700000000.0, {{"x": i}})
        """
    ) + textwrap.dedent(body)
    env = {**os.environ, "FIDDLER_URL": url, "FIDDLER_TOKEN": "secret-token-value"}
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_nothing_starts_until_the_first_event(server):
    """No pipeline or thread exists before the first event; one starts with it."""
    _pipeline.configure(enabled=True, url=server.url, token="t")
    assert _pipeline.current() is None
    assert _pipeline.submit(event(1))
    pipeline = _pipeline.current()
    assert pipeline is not None
    assert pipeline.running
    assert _pipeline.flush(10)


def test_the_hot_paths_lane_is_the_running_pipelines_buffer_and_only_that(server):
    """Captured calls append straight to ``_pipeline.lane``: it must be the running pipeline's
    buffer, and None while a test sink is installed, before the first event and after
    ``shutdown()`` or ``init()``, so that no event lands in a queue no thread drains."""
    _pipeline.configure(enabled=True, url=server.url, token="t")
    assert _pipeline.lane is None
    assert _pipeline.submit(event(1))
    first = _pipeline.current()
    assert first is not None
    assert _pipeline.lane is first.buffer
    previous = _pipeline.install_sink(lambda item: True)
    assert _pipeline.lane is None
    _pipeline.install_sink(previous)
    assert _pipeline.lane is first.buffer
    _pipeline.configure(enabled=True, url=server.url, token="t")  # init(): a new pipeline
    assert _pipeline.lane is None
    assert not first.running
    assert _pipeline.submit(event(2))
    second = _pipeline.current()
    assert second is not None
    assert _pipeline.lane is second.buffer
    _pipeline.shutdown(10)
    assert _pipeline.lane is None
    assert sorted(e["x"] for e in server.events()) == [1, 2]


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def _worker_waits(pipeline: _pipeline.Pipeline) -> bool:
    """The worker thread is blocked in the wait for its wake-up event."""
    assert pipeline._thread is not None
    frame = sys._current_frames().get(pipeline._thread.ident or 0)
    while frame is not None:
        if frame.f_code is threading.Event.wait.__code__:
            return True
        frame = frame.f_back
    return False


@pytest.mark.parametrize("path", ["monitor", "submit"])
def test_past_a_full_batch_every_deep_check_th_event_wakes_the_worker(server, path, monkeypatch):
    """The worker is woken when a batch starts and when it fills, and does not wait while the
    queue holds anything: events queued past a full batch are appended without waking it
    (a function call less on the caller's thread), except every DEEP_CHECK-th. So a wake-up
    missed (two producers reading the same depth) holds events back for at most DEEP_CHECK
    more, not for flush_interval. Both paths in: a monitored call, and submit() (the handler)."""

    submitted: list[object] = []
    submit = _pipeline.submit
    monkeypatch.setattr(_pipeline, "submit", lambda item: submitted.append(item) or submit(item))

    @fiddler_trace.monitor(MODEL)  # its compiled wrapper calls the submit() of now
    def predict(x):
        return {"y": x}

    capture = predict if path == "monitor" else (lambda i: _pipeline.submit(event(i)))
    _pipeline.configure(enabled=True, url=server.url, token="t", flush_interval=3600.0)
    capture(0)  # starts the worker: it takes the event into a batch due in an hour, and waits
    pipeline = _pipeline.current()
    assert pipeline is not None
    buffer = pipeline.buffer
    assert _until(lambda: not buffer.queue and _worker_waits(pipeline))
    # A missed wake-up: a batch and a tenth queued, none of them waking the worker.
    buffer.queue.extend(event(i) for i in range(1, 1101))
    pipeline.wake.clear()
    check = 3 * DEEP_CHECK  # the first multiple past the depth of 1,100
    submitted.clear()
    for i in range(1101, check + 1):  # queued at depths 1,100 to check - 1
        capture(i)
    if path == "monitor":
        assert submitted == []  # appended by the wrapper itself: no function call
    assert not pipeline.wake.is_set()  # appended straight, none woke the worker
    assert _worker_waits(pipeline)
    assert len(buffer.queue) == check
    capture(check + 1)  # at the depth of a multiple of DEEP_CHECK
    assert server.wait_for(lambda: len(server.events()) >= 1000)


def test_an_event_dropped_by_a_full_buffer_leaves_the_worker_waiting(server):
    """A full buffer drops new events without waking the worker: during an outage it waits out
    its backoff, and a wake-up per drop made it step every few hundred drops and doubled the
    cost of each dropped call (measured)."""
    _pipeline.configure(
        enabled=True, url=server.url, token="t", flush_interval=3600.0, max_queue_size=5
    )
    for i in range(5):  # queued, not woken for (a batch of 5 fills at none): the buffer is full
        _pipeline.submit(event(i))
    pipeline = _pipeline.current()
    assert pipeline is not None
    buffer = pipeline.buffer
    assert _until(lambda: len(buffer.queue) + buffer.outstanding == 5 and _worker_waits(pipeline))
    pipeline.wake.clear()
    assert not _pipeline.submit(event(5))
    assert read_count(_pipeline.STATS.dropped) == 1
    assert not pipeline.wake.is_set()


@pytest.mark.parametrize("path", ["monitor", "submit"])
def test_a_lone_event_does_not_wake_the_worker_and_leaves_within_flush_interval(server, path):
    """A publish into an empty queue (a call made while the worker sleeps) does not wake it: a
    wake-up cost such a call ~38 µs of the caller's CPU. The worker's own timer picks it up and
    counts its batch's age from when it last looked at the queue, so it leaves within
    flush_interval of its capture: here 2 s, where counting from the pickup would take ~4 s.
    An update into an empty queue still wakes the worker."""
    _pipeline.configure(enabled=True, url=server.url, token="t", flush_interval=2.0)
    monitored = fiddler_trace.monitor(MODEL)(lambda x: {"y": x})
    monitored(0)  # starts the worker
    assert fiddler_trace.flush(10)
    pipeline = _pipeline.current()
    assert pipeline is not None
    assert _until(lambda: _worker_waits(pipeline) and not pipeline.buffer.queue)
    pipeline.wake.clear()
    captured = time.monotonic()
    if path == "monitor":
        monitored(1)
    else:
        assert _pipeline.submit(event(1))
    assert not pipeline.wake.is_set()
    assert server.wait_for(lambda: len(server.events()) == 2)
    assert time.monotonic() - captured < 3.0
    assert _until(lambda: _worker_waits(pipeline) and not pipeline.buffer.queue)
    pipeline.wake.clear()
    fiddler_trace.update(fiddler_trace.last_event_id(), {"target": 1}, model_id=MODEL)
    assert pipeline.wake.is_set()


@pytest.mark.parametrize(
    "settings", [{"batch_size": 1}, {"flush_interval": 0.01}], ids=["batch of one", "short"]
)
def test_a_lone_event_wakes_the_worker_where_its_timer_would_be_late(server, settings):
    """A publish into an empty queue still wakes the worker when it fills a batch of one, or
    when flush_interval is shorter than the idle worker's wait (IDLE_WAIT)."""
    _pipeline.configure(enabled=True, url=server.url, token="t", **settings)
    assert _pipeline.submit(event(0))  # starts the worker
    assert fiddler_trace.flush(10)
    pipeline = _pipeline.current()
    assert pipeline is not None
    assert _until(lambda: _worker_waits(pipeline) and not pipeline.buffer.queue)
    pipeline.wake.clear()
    assert _pipeline.submit(event(1))
    assert pipeline.wake.is_set()


def test_disabled_submit_sends_nothing(server):
    """With the library off, submit keeps nothing and starts nothing."""
    _pipeline.configure(enabled=False)
    assert _pipeline.submit(event(1)) is False
    assert _pipeline.current() is None
    assert _pipeline.flush(1)


def test_pending_events_are_delivered_at_exit(server):
    """Events still batched when the program ends are sent by the exit flush."""
    result = run_script(
        """
        _pipeline.configure(enabled=True, flush_interval=60)
        for i in range(20):
            _pipeline.submit(event(i))
        """,
        server.url,
    )
    assert result.returncode == 0, result.stderr
    assert len(server.events()) == 20
    assert result.stderr == ""


def test_exit_is_bounded_when_the_server_hangs(server):
    """With the server hanging, exit waits exit_timeout and reports what is left in one line."""
    server.push(Hang())
    start = time.monotonic()
    result = run_script(
        """
        _pipeline.configure(enabled=True, exit_timeout=1.0, timeout=30)
        for i in range(20):
            _pipeline.submit(event(i))
        """,
        server.url,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 0
    assert elapsed < 10  # 1 s bound plus interpreter start; a hang would take 30 s
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "20 events not delivered" in lines[0]
    assert "secret-token-value" not in result.stderr


def test_exit_is_bounded_when_the_server_is_down():
    """With nothing listening, exit still ends within the bound."""
    start = time.monotonic()
    result = run_script(
        """
        _pipeline.configure(enabled=True, exit_timeout=1.0)
        for i in range(5):
            _pipeline.submit(event(i))
        """,
        "http://127.0.0.1:9",
    )
    assert result.returncode == 0
    assert time.monotonic() - start < 10
    assert "5 events not delivered" in result.stderr


def _child(url: str) -> None:
    for i in range(1000, 1050):
        _pipeline.submit(event(i))
    os._exit(0 if _pipeline.flush(20) else 3)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+ warns on fork with threads
def test_fork_child_sends_only_its_own_events(server):
    """Parent 100 events + child 50: exactly 150 distinct events arrive, none twice."""
    _pipeline.configure(enabled=True, url=server.url, token="t", flush_interval=60)
    for i in range(100):
        _pipeline.submit(event(i))
    child = multiprocessing.get_context("fork").Process(target=_child, args=(server.url,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert _pipeline.flush(20)
    ids = [e["event_id"] for e in server.events()]
    assert len(ids) == 150
    assert len(set(ids)) == 150


def test_after_fork_hook_gives_child_fresh_state(server):
    """The at-fork hook forgets the parent's pipeline and counters."""
    _pipeline.configure(enabled=True, url=server.url, token="t", flush_interval=60)
    _pipeline.submit(event(1))
    parent = _pipeline.current()
    _pipeline._after_fork_in_child()
    assert _pipeline.current() is None
    assert _pipeline.stats()["queue_depth"] == 0
    assert parent is not None
    assert parent.shutdown(10)


def test_shutdown_is_idempotent_and_restarts_lazily(server):
    """shutdown() twice is fine; a later event starts a new pipeline."""
    _pipeline.configure(enabled=True, url=server.url, token="t")
    _pipeline.submit(event(1))
    assert _pipeline.shutdown(10)
    assert _pipeline.shutdown(10)
    _pipeline.submit(event(2))
    assert _pipeline.flush(10)
    assert len(server.events()) == 2
    assert _pipeline.stats()["sent"] == 2


def test_a_fork_the_hooks_missed_is_caught_when_a_batch_starts(server, monkeypatch):
    """A child forked without os.register_at_fork (uWSGI) gets a new pipeline and new ids."""
    from fiddler_trace import _ids

    _pipeline.configure(enabled=True, url=server.url, token="t")
    _pipeline.submit(event(1))
    parent = _pipeline.current()
    assert parent is not None
    assert parent.flush(10)  # the queue is empty: the next event starts a batch
    reseeded: list[bool] = []
    original = _ids.seed
    monkeypatch.setattr(_ids, "seed", lambda value=None: reseeded.append(True) or original(value))
    monkeypatch.setattr(parent, "pid", -1)  # as seen from a child the hooks missed
    _pipeline.submit(event(2))
    child = _pipeline.current()
    assert child is not None
    assert child is not parent
    assert reseeded == [True]
    assert _pipeline.flush(10)
    parent.shutdown(5)
    assert sorted(e["x"] for e in server.events()) == [1, 2]


FORK_WITHOUT_HOOKS = """
import ctypes, os, sys, types
if UWSGI:  # as inside the uWSGI server, which has a built-in `uwsgi` module
    sys.modules["uwsgi"] = types.ModuleType("uwsgi")
import fiddler_trace
from fiddler_trace import _pipeline

@fiddler_trace.monitor(model_id="6f1c0f0e-1111-4222-8333-444455556666")
def predict(x):
    return {"y": x}

def capture(n):
    ids = []
    for i in range(n):
        predict(i)
        ids.append(fiddler_trace.last_event_id())
    return ids

parent_ids = capture(PARENT_EVENTS)
assert fiddler_trace.flush(10)
pipeline = _pipeline.current()
if pipeline is not None:
    # The worker thread ends before the fork, its pipeline stays: a thread running at a C fork
    # may hold a lock (the interpreter's own) the child then waits on forever, the hazard the
    # fork hooks exist for, and not what this test is about.
    pipeline.worker.stopping = True
    pipeline.wake.set()
    pipeline._thread.join()
    pipeline.running = True  # so that events queue up as if it were still there
parent_ids += capture(QUEUED)  # events still queued at the fork
read, write = os.pipe()
# libc's fork, called with the GIL held, as uWSGI forks: Python's fork hooks do not run.
pid = ctypes.PyDLL(None).fork()
if pid == 0:
    os.close(read)
    if UWSGI:
        sys.modules["uwsgi"].post_fork_hook()  # what uWSGI calls in a new worker
    ids = capture(CHILD_EVENTS)
    delivered = fiddler_trace.flush(10)
    os.write(write, (" ".join(ids) + ("" if delivered else " NOT-DELIVERED")).encode())
    os._exit(0)
os.close(write)
child_ids = os.read(read, 100_000).decode().split()
os.waitpid(pid, 0)
if pipeline is not None:
    pipeline.running = False  # the next event starts a worker again
    pipeline.worker.stopping = False
parent_ids += capture(5)
assert fiddler_trace.flush(10)
print(" ".join(parent_ids))
print(" ".join(child_ids))
"""


def run_enabled(script: str, url: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter with capture on towards ``url``; it must exit 0."""
    env = {**os.environ, "FIDDLER_TRACE_ENABLED": "1", "FIDDLER_URL": url, "FIDDLER_TOKEN": "t"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done


def run_forking_script(
    url: str, parent_events: int, queued: int, uwsgi: bool, child_events: int = 5
) -> list[str]:
    script = (
        FORK_WITHOUT_HOOKS.replace("PARENT_EVENTS", str(parent_events))
        .replace("QUEUED", str(queued))
        .replace("UWSGI", str(uwsgi))
        .replace("CHILD_EVENTS", str(child_events))
    )
    done = run_enabled(script, url)
    return [*done.stdout.splitlines(), done.stderr]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs libc's fork")
@pytest.mark.parametrize(
    ("parent_events", "queued", "uwsgi"),
    [(0, 0, False), (3, 0, False), (3, 4, True)],
    ids=["idle-parent", "capturing-parent", "uwsgi-parent-with-events-queued"],
)
def test_a_fork_that_bypasses_the_hooks_sends_the_childs_events_with_ids_of_its_own(
    server, parent_events, queued, uwsgi
):
    """A pre-fork server forking from C (uWSGI without --py-call-osafterfork): the child starts
    its own pipeline and no id repeats between parent and child, whether the parent had
    captured nothing, captured and delivered, or (under uWSGI, through its post-fork hook) still
    had events queued at the fork."""
    parent_line, child_line, _ = run_forking_script(server.url, parent_events, queued, uwsgi)
    parent_ids, child_ids = parent_line.split(), child_line.split()
    assert len(child_ids) == 5, child_line  # NOT-DELIVERED would make it 6
    assert len(parent_ids) == parent_events + queued + 5
    assert not set(parent_ids) & set(child_ids)
    sent = [event["event_id"] for event in server.events()]
    assert sorted(sent) == sorted(parent_ids + child_ids)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs libc's fork")
def test_a_fork_without_hooks_noticed_late_says_what_it_may_have_lost(server):
    """Outside uWSGI, a C fork made while the parent had events queued is noticed when the
    child's batch fills or it flushes: the child does not claim delivery, and says why."""
    parent_line, child_line, stderr = run_forking_script(server.url, 3, 4, False)
    assert child_line.endswith("NOT-DELIVERED")
    assert "forked without Python's fork hooks" in stderr
    assert len(parent_line.split()) == 3 + 4 + 5
    sent = {event["event_id"] for event in server.events()}
    assert set(parent_line.split()) <= sent


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs libc's fork")
def test_a_fork_without_hooks_with_a_queue_deeper_than_a_batch_is_caught_within_deep_check(
    server,
):
    """Past a full batch, captured calls append without a look at the pid but once every
    DEEP_CHECK events: a child forked from C with its parent's queue that deep loses at most
    that many events to the copied queue (and says so), then sends the rest itself."""
    queued, child_events = 1100, 600
    parent_line, child_line, stderr = run_forking_script(server.url, 3, queued, False, child_events)
    child_ids = child_line.split()
    assert child_ids[-1] == "NOT-DELIVERED"
    assert "forked without Python's fork hooks" in stderr
    first_check = (queued // DEEP_CHECK + 1) * DEEP_CHECK
    lost = first_check - queued  # the child's events queued below the depth of that check
    parent_ids = parent_line.split()
    sent = [event["event_id"] for event in server.events()]
    # (The lost ones took their ids from the parent's pool, copied: the parent sends those ids
    # with its own next events. Hence counts, not ids, for them.)
    assert len(sent) == len(parent_ids) + child_events - lost
    assert set(child_ids[lost:child_events]) | set(parent_ids) == set(sent)


INIT_IN_A_CHILD_FORKED_FROM_C = """
import ctypes, os, threading
import fiddler_trace
from fiddler_trace import _pipeline

@fiddler_trace.monitor(model_id="6f1c0f0e-1111-4222-8333-444455556666")
def predict(x):
    return {"y": x}

predict(1)
assert fiddler_trace.flush(10)
parent = _pipeline.current()
# Another thread holds the parent's drain lock at the fork, as its worker does while it moves
# events: in a child forked from C that thread does not exist and the lock is never released.
held, release = threading.Event(), threading.Event()

def hold():
    with parent.buffer._drain_lock:
        held.set()
        release.wait()

holder = threading.Thread(target=hold)
holder.start()
held.wait()
read, write = os.pipe()
pid = ctypes.PyDLL(None).fork()  # libc's fork: Python's fork hooks do not run
if pid == 0:
    try:  # the child leaves by os._exit: its parent's threads, copied, would hold up an exit
        os.close(read)
        done = threading.Event()
        def configure():
            # exit_timeout: how long a replaced pipeline of this process is waited for.
            fiddler_trace.init(
                url=os.environ["FIDDLER_URL"], token="t", enabled=True, exit_timeout=60
            )
            done.set()
        threading.Thread(target=configure, daemon=True).start()
        if not done.wait(10):
            os.write(write, b"HUNG")
            os._exit(0)
        predict(2)
        child_id = fiddler_trace.last_event_id()
        delivered = fiddler_trace.flush(10)
        os.write(write, f"{child_id} {delivered} {parent._client._http.is_closed}".encode())
    finally:
        os._exit(0)
os.close(write)
answer = os.read(read, 10_000).decode()
os.waitpid(pid, 0)
release.set()
holder.join()
predict(3)
assert fiddler_trace.flush(10)
print(answer)
print(parent._client._http.is_closed)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs libc's fork")
def test_init_in_a_child_forked_from_c_leaves_its_parents_pipeline_alone(server):
    """``init()`` in a child forked without the fork hooks, before its first capture, finds its
    parent's pipeline: it must not wait on it (a parent's thread may have held one of its locks
    at the fork, and that thread does not exist here) nor close anything the parent still
    uses."""
    done = run_enabled(INIT_IN_A_CHILD_FORKED_FROM_C, server.url)
    child_line, parent_closed = done.stdout.splitlines()
    assert child_line != "HUNG"
    child_id, delivered, closed_in_child = child_line.split()
    assert delivered == "True"
    assert closed_in_child == "False"  # the parent's client, as the child saw it
    assert parent_closed == "False"
    assert child_id in {event["event_id"] for event in server.events()}
    assert len(server.events()) == 3


LOST_BEFORE_INIT_IN_A_CHILD_FORKED_FROM_C = """
import ctypes, os, threading
import fiddler_trace
from fiddler_trace import _pipeline

@fiddler_trace.monitor(model_id="6f1c0f0e-1111-4222-8333-444455556666")
def predict(x):
    return {"y": x}

fiddler_trace.init(enabled=True, url=os.environ["FIDDLER_URL"], token="t", flush_interval=3600.0)
predict(0)
assert fiddler_trace.flush(10)
_pipeline.current().buffer._wake = threading.Event()  # the worker sleeps on: 1 and 2 stay queued
predict(1)
predict(2)
read, write = os.pipe()
pid = ctypes.PyDLL(None).fork()  # libc's fork: Python's fork hooks do not run
if pid == 0:
    try:
        os.close(read)
        predict(3)  # lands in the parent's queue, copied: lost
        fiddler_trace.init(enabled=True, url=os.environ["FIDDLER_URL"], token="t")
        first = fiddler_trace.flush(10)
        predict(4)
        second = fiddler_trace.flush(10)
        os.write(write, f"{first} {second} {fiddler_trace.stats()['dropped']}".encode())
    finally:
        os._exit(0)
os.close(write)
print(os.read(read, 1000).decode())
os.waitpid(pid, 0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs libc's fork")
def test_init_in_a_child_forked_from_c_reports_what_was_lost_with_its_parents_queue(server):
    """A child forked from C captures an event into its parent's queue (copied, never sent
    from here), then calls init(): the next flush() says not everything was delivered, once."""
    done = run_enabled(LOST_BEFORE_INIT_IN_A_CHILD_FORKED_FROM_C, url=server.url)
    assert done.stdout.split() == ["False", "True", "3"]  # 1 and 2 (the parent's), and 3
    assert "forked without Python's fork hooks" in done.stderr
