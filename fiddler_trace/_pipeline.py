"""The process's one pipeline: settings + buffer + worker + client; lifecycle, exit and fork.

Capture code calls :func:`submit` on the hot path. It costs a few attribute reads and a deque
append; the pipeline and its thread start lazily on the first event, and again in a forked child,
which never sees its parent's events.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import threading
from typing import Any, Callable, Optional

import httpx

from fiddler_trace import _forks, _ids
from fiddler_trace._buffer import DEEP_CHECK, IDLE_WAIT, BatchBuffer, Item, remember_publish
from fiddler_trace._client import EventsClient
from fiddler_trace._clock import Clock, monotonic
from fiddler_trace._config import Settings, load_settings
from fiddler_trace._encode import Encoder
from fiddler_trace._event import Update
from fiddler_trace._native import speedups
from fiddler_trace._spool import Spool
from fiddler_trace._spooler import Spooler
from fiddler_trace._stats import Stats, read_count
from fiddler_trace._worker import THREAD_NAME, BatchWorker

__all__ = [
    "Pipeline",
    "configure",
    "current",
    "flush",
    "install_sink",
    "ready",
    "reset",
    "settings",
    "shutdown",
    "stats",
    "submit",
]

logger = logging.getLogger("fiddler_trace")
Sink = Callable[[Item], bool]


class Pipeline:
    """Buffer, worker thread and client for one process.

    Args:
        settings: validated settings; ``url`` and ``token`` must be set.
        stats: the counters to add to (the process's, shared by successive pipelines).
        transport: an httpx transport for the client (tests).
        clock: the worker's monotonic clock.
        rng: the source of backoff jitter.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        stats: Optional[Stats] = None,
        transport: Optional[httpx.BaseTransport] = None,
        clock: Clock = monotonic,
        rng: Optional[random.Random] = None,
    ) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.stats = Stats() if stats is None else stats
        self._transport = transport
        self._client: Optional[EventsClient] = None
        self.wake = threading.Event()
        self.buffer = BatchBuffer(
            max_events=settings.max_queue_size,
            batch_size=settings.batch_size,
            max_batch_bytes=settings.max_batch_bytes,
            flush_interval=settings.flush_interval,
            encode=Encoder(settings.max_value_chars, on_truncate=self._count_truncated),
            wake=self.wake,
            dropped=self.stats.dropped,
            captured=self.stats.captured,
        )
        self.spooler = _make_spooler(settings, self.stats)
        self.worker = BatchWorker(
            self.buffer,
            self._send,
            self.stats,
            retry_deadline=settings.retry_deadline,
            clock=clock,
            wake=self.wake,
            rng=rng,
            spooler=self.spooler,
        )
        self._running = False
        # The counters outlive a pipeline (init() replaces it): start from what they say now.
        self._dropped_at_flush = read_count(self.stats.dropped)
        self._thread: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"Pipeline(url={self.settings.url!r}, depth={self.buffer.depth()})"

    @property
    def running(self) -> bool:
        """Its worker thread is running (or starting)."""
        return self._running

    @running.setter
    def running(self, value: bool) -> None:
        self._running = value
        _refresh_lane()

    def _count_truncated(self, n: int) -> None:
        self.stats.truncated += n

    def _send(self, method: str, body: bytes, headers: Optional[dict[str, str]]) -> object:
        if self._client is None:  # built on the worker: TLS setup costs milliseconds
            self._client = EventsClient(
                self.settings.url or "",
                self.settings.token or "",
                timeout=self.settings.timeout,
                verify=self.settings.verify,
                transport=self._transport,
                max_request_bytes=self.settings.max_batch_bytes,
            )
        return self._client.send(method, body, headers=headers)

    def enqueue(self, item: Item) -> bool:
        """Queue an item for delivery; False when dropped. O(1); never blocks, never raises."""
        if not self.running:
            self._start()
        return self.buffer.offer(item)

    def start(self) -> None:
        """Start the worker now rather than on the first event (e.g. to replay a spool)."""
        self._start()

    def _start(self) -> None:
        with self._start_lock:
            if self.running or self._closed:
                return
            self.running = True
            self.worker.stopping = False
            thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            self._thread = thread
            thread.start()

    def _run(self) -> None:
        try:
            self.worker.run(idle_wait=max(self.settings.flush_interval, IDLE_WAIT))
        finally:
            self.running = False  # the next enqueue starts a new thread
            if self._closed and self._client is not None:
                self._client.close()  # shutdown could not wait for this thread to end

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued before the call is delivered or failed for good.

        Returns True only when all of it was delivered: False too when events were dropped
        (buffer full) since the previous flush. Never raises.
        """
        if threading.current_thread() is self._thread:
            return False  # e.g. a log handler flushed from the worker: waiting would deadlock
        dropped = read_count(self.stats.dropped)
        none_dropped = dropped == self._dropped_at_flush
        self._dropped_at_flush = dropped
        if self._thread is None:
            return self.buffer.depth() == 0 and none_dropped
        try:
            if not self.running and not self._closed:
                self._start()
        except RuntimeError:  # no thread can be started (interpreter shutting down)
            return False
        waiter = self.worker.add_waiter()
        if not waiter.done.wait(timeout):
            self.worker.remove_waiter(waiter)
            return False
        return waiter.delivered and none_dropped

    def shutdown(self, timeout: Optional[float] = None) -> bool:
        """Flush within ``timeout``, stop the thread, close connections. Idempotent.

        Returns True when everything was delivered.
        """
        start = monotonic()
        self.worker.exit_now()
        delivered = self.flush(timeout)
        with self._start_lock:
            self._closed = True
            self.worker.stopping = True
        self.wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # A moment past the bound at least, so a worker that is not stuck ends its turn
            # (and spools what is left) itself rather than racing this thread.
            left = None if timeout is None else max(0.1, timeout - (monotonic() - start))
            thread.join(left)
        stuck = thread is not None and thread.is_alive()
        if stuck:
            self.worker.abandon_waiters()  # flushes in other threads must not wait forever
        elif self._client is not None:
            self._client.close()
        if self.spooler is not None:
            try:
                # With the worker stuck in a request, its batch is kept too: at-least-once.
                self.worker.keep_all()
            except Exception as error:  # the stuck worker woke and changed the buffer
                self.stats.last_error = f"spool at exit: {error!r}"
            kept = self.worker.kept_at_exit
            if kept:
                logger.warning(
                    "fiddler_trace: %d events kept in the spool %s for the next run",
                    kept,
                    self.spooler.spool.directory,
                )
        return delivered

    def leftover(self) -> int:
        """Events not delivered, after shutdown."""
        return self.buffer.depth()

    def snapshot(self) -> dict[str, Any]:
        """The counters; under the drain lock, so that each publish is counted by the worker
        (which took it) or as still queued."""
        with self.buffer.counted() as queued:
            return self.stats.snapshot(self.buffer.depth(), queued)


def _make_spooler(settings: Settings, stats: Stats) -> Optional[Spooler]:
    if settings.spool_dir is None:
        return None
    try:
        spool = Spool(
            settings.spool_dir,
            max_bytes=settings.max_spool_bytes,
            fsync=settings.spool_fsync,
        )
    except OSError as error:  # never into the caller: run without the spool, say why
        stats.last_error = f"spool: {error}"
        logger.warning("fiddler_trace: cannot use the spool %s: %s", settings.spool_dir, error)
        return None
    return Spooler(spool, stats)


# -- process-wide state ------------------------------------------------------------------------

_lock = threading.RLock()
_settings: Optional[Settings] = None
_current: Optional[Pipeline] = None
_sink: Optional[Sink] = None
_exiting = False
_unflushed_stale = 0  # dropped with a parent's pipeline before this process had its own
#: Pipelines init() or shutdown() replaced and is flushing: stats() still counts the publishes
#: they hold queued, until forget_unsent() has counted them.
_retiring: list[Pipeline] = []
#: The running pipeline's buffer while no test sink is installed, else None: the hot path
#: appends to its queue directly (:mod:`fiddler_trace._compiled`) where it would otherwise test
#: the pipeline, the sink and the thread on every call. Kept by :func:`_refresh_lane`.
lane: Optional[BatchBuffer] = None
#: The process's counters; capture code bumps the hot ones (``next(STATS.sampled_out)``).
STATS = Stats()
_transport: Optional[httpx.BaseTransport] = None  # tests only

#: Read on the hot path: capture is on (enabled, or a test sink is installed).
capturing = False
#: The same, as a list that is non-empty while capture is on: wrapt evaluates a non-callable
#: ``enabled`` by its truth, in C, where a callable would cost a Python call on every call of
#: every monitored function (see :func:`_set_capturing`).
CAPTURING: list[bool] = []


def _set_capturing(on: bool) -> None:
    global capturing
    capturing = on
    if on and not CAPTURING:
        CAPTURING.append(True)
    elif not on:
        CAPTURING.clear()


def settings() -> Settings:
    """The settings in force; read from the environment on first use.

    Raises:
        ConfigurationError: a ``FIDDLER_*`` variable is invalid.
    """
    global _settings
    if _settings is None:
        with _lock:
            if _settings is None:
                loaded = load_settings()
                _ids.RECENT.resize(loaded.update_cache_size, loaded.update_cache_ttl)
                _settings = loaded
                _set_capturing(loaded.enabled or _sink is not None)
    return _settings


def configure(**overrides: Any) -> Settings:
    """Apply ``init(**overrides)``: the environment, then the arguments; restarts the pipeline.

    Raises:
        ConfigurationError: a value is invalid; nothing changes then.
    """
    global _settings, _unflushed_stale
    new = load_settings(**overrides)
    with _lock:
        if _current is not None and _current.pid != os.getpid():
            # A parent's, in a child forked without the fork hooks: nothing of it may be waited
            # on (a parent's thread may have held one of its locks at the fork) or closed (the
            # parent still uses its connections). Forgotten as _start() forgets it; what it
            # held is reported by the next pipeline's first flush().
            _unflushed_stale += _report_stale(_adopt_after_fork_from_c())
        old_pipeline = _replace_pipeline(None)
        if old_pipeline is not None:
            _retiring.append(old_pipeline)
        _ids.RECENT.resize(new.update_cache_size, new.update_cache_ttl)
        _settings = new
        _set_capturing(new.enabled or _sink is not None)
    if old_pipeline is not None:
        old_pipeline.shutdown(new.exit_timeout)
        _retire(old_pipeline)
    return new


def _retire(pipeline: Pipeline) -> None:
    """After its last flush: what it did not deliver is given up on (and counted), then it is
    no longer counted by stats()."""
    pipeline.buffer.forget_unsent()
    with _lock:
        if pipeline in _retiring:
            _retiring.remove(pipeline)


def _replace_pipeline(new: Optional[Pipeline]) -> Optional[Pipeline]:
    global _current
    old, _current = _current, new
    _refresh_lane()
    return old


def _refresh_lane() -> None:
    """Recompute :data:`lane` after the pipeline, the sink or the pipeline's thread changed.

    Under the lock, from the state as it is then: of two threads changing it at once (a worker
    ending while ``init()`` replaces its pipeline), the later recomputation sees both changes.
    """
    global lane
    with _lock:
        current = _current
        lane = current.buffer if _sink is None and current is not None and current.running else None
        if speedups is not None:  # the C wrapper keeps what it read of the lane until told
            speedups.lane_changed()


def current() -> Optional[Pipeline]:
    """The running pipeline of this process, if one was started."""
    pipeline = _current
    return pipeline if pipeline is not None and pipeline.pid == os.getpid() else None


def _start() -> Optional[Pipeline]:
    global _current, _unflushed_stale
    with _lock:
        pid = os.getpid()
        if _current is not None and _current.pid == pid:
            return _current
        stale = 0
        if _current is not None or _ids.seeded_in != pid:
            stale = _adopt_after_fork_from_c()
        active = settings()
        if _exiting or not active.enabled:
            return None
        _current = Pipeline(active, stats=STATS, transport=_transport)
        _refresh_lane()
        _report_stale(stale)  # after the pipeline is made, so that its next flush() reports it
        if _unflushed_stale:  # reported by init() before this pipeline existed
            _current._dropped_at_flush -= _unflushed_stale
            _unflushed_stale = 0
        return _current


def _adopt_after_fork_from_c() -> int:
    """In a child forked without the fork hooks (a C fork outside uWSGI), noticed late: do now
    what the hooks would have done, or this child would draw its parent's (and its siblings')
    ids and use its parent's pipeline. Returns how many events the parent's pipeline held.
    Called with ``_lock`` held."""
    stale = 0 if _current is None else _current.buffer.depth()
    _forks.run_child_hooks()  # forgets the parent's pipeline without closing anything
    return stale


def _report_stale(stale: int) -> int:
    if stale:
        # The parent's queue, copied: its events are the parent's to send, and events this
        # process captured before the fork was noticed are among them. Said, and counted as
        # dropped.
        Stats.add(STATS.dropped, stale)
        logger.warning(
            "fiddler_trace: this process was forked without Python's fork hooks while up "
            "to %d events were queued; events it captured before noticing are not sent",
            stale,
        )
    return stale


def ready() -> bool:
    """Make sure this process has its own pipeline (or the test sink) before a captured call
    draws its id. Never raises.

    Capture calls this when no pipeline exists and whenever the queue is empty as a call
    starts (once per turn of the worker under load): a child forked without the fork hooks
    (uWSGI forks from C) then replaces its parent's pipeline and reseeds its id source before
    its first id, unless its parent had events queued at the fork; :func:`submit` catches that
    case when a batch fills or, in a queue deeper than a batch, within ``DEEP_CHECK`` events.
    """
    pipeline = _current
    if pipeline is not None and pipeline.pid == os.getpid():
        return True
    if _sink is not None:
        return True
    try:
        return _start() is not None
    except Exception:  # e.g. no thread can start during interpreter shutdown
        return False


_DEEP_MASK = DEEP_CHECK - 1


def submit(item: Item) -> bool:
    """Hand an item to the sink or the pipeline: the hot path. Never raises, never blocks.

    An item is a publish (a plain tuple of :class:`~fiddler_trace._event.Event`'s fields) or an
    :class:`~fiddler_trace._event.Update`.
    """
    sink = _sink
    if sink is not None:
        if remember_publish(item):
            next(STATS.captured)
        return sink(item)
    pipeline = _current
    if pipeline is None or not pipeline.running:
        return _submit_slowly(item)
    # BatchBuffer.offer, inlined: this is every captured call.
    buffer = pipeline.buffer
    queue = buffer.queue
    depth = len(queue)
    if depth + buffer.outstanding >= buffer.max_events:
        return _submit_slowly(item)
    fill_at = buffer.fill_at
    if depth == 0 or depth == fill_at or (depth > fill_at and not depth & _DEEP_MASK):
        # The pid is checked at these points only (a system call costs as much as the rest
        # of this function): a child forked without the fork hooks, with its parent's
        # pipeline, is caught at its first event if the copied queue is empty (ready()), else
        # when its batch fills, or, past a full batch, within DEEP_CHECK events.
        if pipeline.pid != os.getpid():
            return _submit_slowly(item)
        # The worker is woken when a batch fills, in a deeper queue once every DEEP_CHECK
        # events (see _buffer), and for an update that starts a batch. Not for a publish that
        # does: the idle worker wakes every flush_interval by itself and counts a new batch's
        # age from the last time it looked at the queue, so the event leaves no later than if
        # it had woken it (unless a batch holds one event, or flush_interval is shorter than
        # the idle wait: wake_empty). A wake-up is a system call and a thread switch: a call
        # made while the worker slept paid ~38 µs more for it (measured, 60 ms between calls).
        if depth or buffer.wake_empty or (type(item) is not tuple and isinstance(item, Update)):
            wake = buffer._wake
            if not wake.is_set():
                wake.set()
    queue.append(item)
    return True


def _submit_slowly(item: Item) -> bool:
    """:func:`submit` when the pipeline is missing, stopped, not this process's, or full."""
    pipeline = _current
    if pipeline is None or pipeline.pid != os.getpid():
        try:
            pipeline = _start()
        except Exception:  # e.g. no thread can start during interpreter shutdown
            pipeline = None
        if pipeline is None:
            if _exiting:
                next(STATS.dropped)  # captured after the exit flush: lost, and said so
            if remember_publish(item):  # so that its update() is a silent no-op
                next(STATS.captured)
            return False
    try:
        return pipeline.enqueue(item)
    except RuntimeError:  # "can't start new thread"
        next(STATS.dropped)
        if remember_publish(item):
            next(STATS.captured)
        return False


def install_sink(sink: Optional[Sink]) -> Optional[Sink]:
    """Route items to ``sink`` instead of the network (``testing.capture``); returns the old."""
    global _sink
    with _lock:
        old, _sink = _sink, sink
        _refresh_lane()
        _set_capturing(sink is not None or (_settings is not None and _settings.enabled))
    return old


def flush(timeout: Optional[float] = None) -> bool:
    """See :func:`fiddler_trace.flush`."""
    if _current is not None and _current.pid != os.getpid():
        ready()  # a fork that bypassed the hooks, not noticed yet: what it lost counts
    global _unflushed_stale
    pipeline = current()
    if pipeline is None:
        with _lock:  # events lost with a parent's pipeline: this flush reports them, once
            lost, _unflushed_stale = _unflushed_stale, 0
        return not lost
    return pipeline.flush(timeout)


def shutdown(timeout: Optional[float] = None) -> bool:
    """See :func:`fiddler_trace.shutdown`."""
    with _lock:
        pipeline = current()
        _replace_pipeline(None)
        if pipeline is not None:
            _retiring.append(pipeline)
    if pipeline is None:
        return True
    delivered = pipeline.shutdown(timeout)
    if not _exiting:
        _retire(pipeline)
    left = pipeline.leftover()
    if left:
        logger.warning(
            "fiddler_trace: %d events not delivered at shutdown (last error: %s)",
            left,
            pipeline.stats.last_error,
        )
    return delivered


def stats() -> dict[str, Any]:
    """See :func:`fiddler_trace.stats`."""
    pipeline = current()
    out = STATS.snapshot(0) if pipeline is None else pipeline.snapshot()
    for retiring in tuple(_retiring):  # being flushed by init() or shutdown()
        with retiring.buffer.counted() as queued:
            out["captured"] += queued
    return out


def reset() -> None:
    """Forget all state: stop the pipeline without waiting, drop settings, counters and sink."""
    global _settings, _sink, _exiting, _unflushed_stale, STATS
    with _lock:
        pipeline = _replace_pipeline(None)
        _settings = None
        _sink = None
        _exiting = False
        _unflushed_stale = 0
        _set_capturing(False)
        STATS = Stats()
    if pipeline is not None:
        pipeline.shutdown(0.0)


def _at_exit() -> None:
    global _exiting
    try:
        _exiting = True
        active = _settings
        shutdown(active.exit_timeout if active is not None else 5.0)
    except Exception:  # nothing of ours may reach the interpreter's exit
        pass


def _after_fork_in_child() -> None:
    global _lock, _unflushed_stale, STATS
    # The parent's pipeline, thread and connections are not ours: forget them without closing
    # anything, or the child could shut a socket the parent still uses.
    _lock = threading.RLock()
    _unflushed_stale = 0  # the parent's to report
    _retiring.clear()
    parent = _replace_pipeline(None)
    if parent is not None and parent.spooler is not None:
        parent.spooler.spool.after_fork()
    STATS = Stats()


atexit.register(_at_exit)
_forks.in_child(_ids.after_fork)
_forks.in_child(_after_fork_in_child)
_forks.register_with_uwsgi()
