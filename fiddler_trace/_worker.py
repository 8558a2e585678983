"""The background thread: drain, batch, send, retry; and the bookkeeping behind ``flush()``.

One request is in flight at a time. After a transient failure the whole worker backs off (the
failed batch goes first when it resumes), so an outage costs one probe per backoff, not one per
batch. :meth:`BatchWorker.step` is one turn of the loop and runs without a thread in unit tests.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, Optional

from fiddler_trace import _retry
from fiddler_trace._buffer import BatchBuffer
from fiddler_trace._clock import Clock
from fiddler_trace._encoded import POST, Batch
from fiddler_trace._errors import FiddlerAPIError
from fiddler_trace._ids import refill_ids
from fiddler_trace._retry import Outcome
from fiddler_trace._spooler import ReplayMark, Spooler
from fiddler_trace._stats import Stats, read_count
from fiddler_trace._wire import publish_body

__all__ = ["THREAD_NAME", "BatchWorker", "FlushWaiter"]

THREAD_NAME = "fiddler-trace-worker"
logger = logging.getLogger("fiddler_trace")
_LOG_EVERY = 60.0  # seconds between repeats of one warning

Sender = Callable[[str, bytes, Optional[dict[str, str]]], object]


class FlushWaiter:
    """One ``flush()`` call: done when every item below ``mark`` is resolved."""

    __slots__ = ("delivered", "done", "mark")

    def __init__(self, mark: int) -> None:
        self.mark = mark
        self.delivered = True
        self.done = threading.Event()


class BatchWorker:
    """Runs the send loop over a :class:`BatchBuffer`.

    Args:
        send: ``(method, body, headers) -> response``; raises FiddlerAPIError or a transport
            error (``EventsClient.send``).
        retry_deadline: seconds from a batch's first attempt after which it fails.
        clock: monotonic seconds; injected so tests drive time.
        spooler: keeps undeliverable batches on disk and replays them; None: memory only.
    """

    def __init__(
        self,
        buffer: BatchBuffer,
        send: Sender,
        stats: Stats,
        *,
        retry_deadline: float,
        clock: Clock,
        wake: threading.Event,
        rng: Optional[random.Random] = None,
        spooler: Optional[Spooler] = None,
    ) -> None:
        self.buffer = buffer
        self._send = send
        self.stats = stats
        self.retry_deadline = retry_deadline
        self.clock = clock
        self.wake = wake
        self.rng = rng or random.Random()
        self.spooler = spooler
        self.blocked_until = 0.0
        self.failing = False  # the last attempt failed with a transient error
        self.stopping = False
        self._lock = threading.Lock()
        self._waiters: list[FlushWaiter] = []
        self._force = False
        self._warned: dict[str, float] = {}
        self._dropped_seen = read_count(stats.dropped)  # counters outlive a pipeline
        self._keep_lock = threading.Lock()
        self._kept_all = False
        self.kept_at_exit = 0

    # -- flush -----------------------------------------------------------------------------

    def add_waiter(self) -> FlushWaiter:
        """Register a flush of everything accepted so far and wake the loop."""
        mark = self.buffer.flush_mark()
        waiter = FlushWaiter(mark)
        with self._lock:
            self._waiters.append(waiter)
            self._force = True
        self.wake.set()
        return waiter

    def remove_waiter(self, waiter: FlushWaiter) -> None:
        with self._lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _failed(self, lowest: Optional[int]) -> None:
        """Flushes whose mark covers items from ``lowest`` on can no longer answer True."""
        if lowest is None:
            return
        with self._lock:
            for waiter in self._waiters:
                if lowest < waiter.mark:
                    waiter.delivered = False

    def _settle_waiters(self) -> None:
        lowest = self.buffer.lowest_open_seq()
        replaying = self.spooler is not None and (
            self.spooler.replaying or self.spooler.in_flight is not None
        )
        with self._lock:
            for waiter in list(self._waiters):
                if lowest >= waiter.mark and not replaying:
                    self._waiters.remove(waiter)
                    waiter.done.set()
            if not self._waiters:
                self._force = False

    # -- the loop --------------------------------------------------------------------------

    def step(self) -> Optional[float]:
        """One turn: drain, seal, send at most one batch. Returns seconds until the next turn
        is due (0 for at once, None when idle)."""
        buffer = self.buffer
        now = self.clock()
        refill_ids()  # the ids the caller's thread takes, drawn here
        for model_id, event_id, method, seq, reason in buffer.drain(now):
            self._refuse(model_id, event_id, method, seq, reason)
        buffer.seal_due(now, force=self._force or self.stopping)
        self._release_updates()
        self._warn_drops()
        if self.failing:
            self._expire(now)
            self._spill_backlog()
        if buffer.ready and now >= self.blocked_until:
            batch = buffer.ready.popleft()
            if self.spooler is not None and self.spooler.must_follow(batch):
                if not self._keep(batch):  # the disk refused: fail it, never hold it forever
                    self.buffer.resolve(batch, delivered=False)
                    self.stats.failed += len(batch)
                    self._failed(batch.first_seq)
            else:
                self._deliver(batch)
            self._release_updates()
        elif not buffer.ready and not self.failing and self.spooler is not None:
            replay = self.spooler.next_batch(now)
            if replay is not None:
                buffer.ready.append(replay)
        self._settle_waiters()
        if buffer.ready:
            return max(0.0, self.blocked_until - self.clock())
        if buffer.queue:
            return 0.0
        due = buffer.next_due()
        return None if due is None else max(0.0, due - self.clock())

    def run(self, idle_wait: float) -> None:
        """The thread body: loop until stopped. Never raises."""
        try:
            while not self.stopping:
                try:
                    delay = self.step()
                except Exception as error:  # never die silently: count, log, go on
                    self.stats.last_error = f"internal error: {error!r}"
                    if self._warn(f"internal:{type(error).__name__}", "", log=False):
                        logger.exception("fiddler_trace: internal error in the worker; continuing")
                    delay = idle_wait
                if delay == 0.0:
                    continue
                self.wake.wait(idle_wait if delay is None else min(delay, idle_wait))
                self.wake.clear()
        finally:
            if self.spooler is not None:
                try:
                    self.keep_all()
                except Exception as error:
                    self.stats.last_error = f"spool at exit: {error!r}"
            self.abandon_waiters()

    def abandon_waiters(self) -> None:
        """The loop ends: every flush still waiting returns now, with False."""
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.delivered = False
            waiter.done.set()

    def exit_now(self) -> None:
        """Exit has begun: a batch in backoff gets one more try at once, since the process may
        be gone before the backoff ends."""
        self.blocked_until = 0.0
        self.wake.set()

    # -- sending and outcomes --------------------------------------------------------------

    def _expire(self, now: float) -> None:
        """While the server fails, every waiting batch's deadline runs; fail the expired ones
        without another attempt, so an outage does not cost a timeout per batch."""
        ready = self.buffer.ready
        for batch in ready:
            if batch.first_attempt is None:
                batch.first_attempt = now
        while ready and now >= ready[0].first_attempt + self.retry_deadline:  # type: ignore[operator]
            batch = ready.popleft()
            why = f"the server failed for {self.retry_deadline:g} s"
            self._fail(batch, why, key="deadline", transient=True)

    def _deliver(self, batch: Batch) -> None:
        now = self.clock()
        if batch.first_attempt is None:
            batch.first_attempt = now
        headers = {"X-Fiddler-Client-Retry": str(batch.attempts)} if batch.attempts else None
        body = publish_body(batch.model_id, batch.parts(), env_type="PRODUCTION", env_name=None)
        try:
            self._send(batch.method, body, headers)
        except Exception as error:
            self._handle_failure(batch, error)
            return
        self._delivered(batch)

    def _delivered(self, batch: Batch) -> None:
        if self.failing and self.spooler is not None:
            self.spooler.start_replay()
        self.failing = False
        self._resolve(batch, delivered=True)
        if batch.method == POST:
            self.stats.sent += len(batch)
        else:
            self.stats.updated += len(batch)

    def _handle_failure(self, batch: Batch, error: Exception) -> None:
        outcome = _retry.classify(error)
        status = error.status if isinstance(error, FiddlerAPIError) else None
        self.stats.last_error = _describe(error)
        if outcome is Outcome.RETRY:
            self._retry_later(batch, error)
        elif outcome is Outcome.CONFLICT and (batch.attempts > 0 or batch.origin is not None):
            self._delivered(batch)  # a retry, or a replay: an earlier attempt landed
        elif outcome in (Outcome.SPLIT, Outcome.BISECT) and len(batch) > 1 and self._split(batch):
            pass  # its halves go first
        elif outcome is Outcome.BISECT:
            self._fail(
                batch,
                f"the server rejected an event: {_describe(error)}",
                key=f"400:{_describe(error)}",
            )
        elif outcome is Outcome.SPLIT:
            self._fail(batch, "an event is larger than the server accepts (413)", key="413")
        else:
            hint = _retry.hint(status) if status is not None else "unexpected error"
            # A replayed record refused for its token stays on disk: the next run may fix the
            # token. Any other refusal would block the spool behind it for good.
            self._fail(
                batch,
                f"{_describe(error)}; {hint}",
                key=f"fail:{status}",
                transient=batch.origin is not None and status in (401, 403),
            )

    def _retry_later(self, batch: Batch, error: Exception) -> None:
        now = self.clock()
        batch.attempts += 1
        delay = _retry.backoff(batch.attempts, self.rng)
        if isinstance(error, FiddlerAPIError):
            hinted = _retry.retry_after_seconds(error.retry_after, time.time())
            if hinted is not None:
                delay = max(delay, hinted)
        assert batch.first_attempt is not None
        if self.stopping or now + delay > batch.first_attempt + self.retry_deadline:
            self._fail(
                batch,
                f"gave up after {batch.attempts} attempts: {_describe(error)}",
                key="deadline",
                transient=True,
            )
            return
        self.stats.retried += len(batch)
        self.failing = True
        self.blocked_until = now + delay
        self.buffer.ready.appendleft(batch)

    def _fail(self, batch: Batch, why: str, *, key: str, transient: bool = False) -> None:
        """The batch failed for good, or for now (``transient``): then the spool keeps it."""
        if batch.origin is not None:  # a replayed record: it is on disk already
            if not transient:
                self.stats.failed += len(batch)
            assert self.spooler is not None
            self.spooler.resolved(batch, delivered=False, transient=transient)
            self._failed(-1)  # a flush waiting for the replay cannot say "delivered"
        elif transient and self.spooler is not None and self._keep(batch):
            why += f"; kept in the spool {self.spooler.spool.directory}"
        else:
            self.buffer.resolve(batch, delivered=False)
            self.stats.failed += len(batch)
            self._failed(batch.first_seq)
        self._warn(
            key,
            f"fiddler_trace: {_count(batch)} for model {batch.model_id} not delivered: {why}",
        )

    def _resolve(self, batch: Batch, delivered: bool) -> None:
        if isinstance(batch.origin, ReplayMark):
            assert self.spooler is not None
            self.spooler.resolved(batch, delivered)
        else:
            self.buffer.resolve(batch, delivered)

    def _split(self, batch: Batch) -> bool:
        """Send the batch as two halves; False if its events cannot be told apart."""
        parts = batch.halves()
        if parts is None:
            return False
        if isinstance(batch.origin, ReplayMark):
            assert self.spooler is not None
            self.spooler.split(batch.origin, len(parts))
            self.buffer.ready.extendleft(reversed(parts))
        else:
            self.buffer.replace(batch, parts)
        return True

    def _keep(self, batch: Batch) -> bool:
        """Write a live batch to the spool; it then counts as resolved, not delivered."""
        assert self.spooler is not None
        if self._kept_all:
            # Shutdown already wrote everything held, this batch included (it was in flight).
            self.buffer.resolve(batch, delivered=False, remember=False)
            return True
        if not self.spooler.keep(batch):
            return False
        self.buffer.resolve(batch, delivered=False, remember=False)
        self._failed(batch.first_seq)  # a flush covering it cannot say "delivered"
        return True

    def _spill_backlog(self) -> None:
        """During an outage with a spool, the backlog goes to disk, keeping the buffer free
        for new events instead of dropping them."""
        buffer = self.buffer
        if self.spooler is None or len(buffer.ready) < 2 or buffer.depth() < buffer.max_events // 2:
            return
        # Oldest first, so that on disk a model's updates keep their order; the head is the
        # batch being retried, and parts of a replayed record are on disk already.
        head, *rest = buffer.ready
        kept: list[Batch] = [head]
        for index, batch in enumerate(rest):
            if batch.origin is None and not self._keep(batch):
                kept.extend(rest[index:])
                break
            if batch.origin is not None:
                kept.append(batch)
        buffer.ready.clear()
        buffer.ready.extend(kept)

    def keep_all(self) -> int:
        """At shutdown, after the bound: every event still held goes to the spool, once (the
        worker does it as its loop ends; shutdown, if the worker is stuck in a request).
        Returns how many events were kept by this call."""
        with self._keep_lock:
            if self.spooler is None or self._kept_all:
                return 0
            self._kept_all = True
            kept = 0
            for batch in self.buffer.take_all():
                if batch.origin is None and self.spooler.keep(batch):
                    kept += len(batch)
            self.spooler.spool.close()
            self.kept_at_exit = kept
            return kept

    def _release_updates(self) -> None:
        for lost in self.buffer.release_updates():
            self.stats.failed += len(lost)
            self._failed(lost.first_seq)
            self._warn(
                "lost-updates",
                f"fiddler_trace: {len(lost)} updates for model {lost.model_id} dropped: the "
                "publish of their event failed",
            )

    def _refuse(self, model_id: str, event_id: str, method: str, seq: int, reason: str) -> None:
        self.stats.failed += 1
        self.stats.last_error = f"an event was dropped: {reason}"
        self._failed(seq)
        if method == POST:
            self.buffer.forget(model_id, event_id)
        self._warn(
            f"refused:{model_id}",
            f"fiddler_trace: an event for model {model_id} was dropped: {reason}",
        )

    def _warn_drops(self) -> None:
        dropped = read_count(self.stats.dropped)
        if dropped > self._dropped_seen and self._warn(
            "dropped",
            f"fiddler_trace: buffer full ({self.buffer.max_events} "
            f"events); {dropped - self._dropped_seen} events dropped",
        ):
            self._dropped_seen = dropped

    def _warn(self, key: str, message: str, *, log: bool = True) -> bool:
        """Log a warning at most once a minute per key; True if it was (or may be) logged."""
        now = self.clock()
        last = self._warned.get(key)
        if last is not None and now - last < _LOG_EVERY:
            return False
        if len(self._warned) > 1000:  # distinct 400 messages must not grow this without bound
            self._warned.clear()
        self._warned[key] = now
        if log:
            logger.warning(message)
        return True


def _count(batch: Batch) -> str:
    noun = "event" if batch.method == POST else "update"
    return f"{len(batch)} {noun}{'' if len(batch) == 1 else 's'}"


def _describe(error: BaseException) -> str:
    if isinstance(error, FiddlerAPIError):
        return str(error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
