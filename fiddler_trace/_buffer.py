"""The bounded buffer and its batching decisions. No threads, no I/O; the clock is passed in.

Producers call :meth:`BatchBuffer.offer` (O(1), never blocks). Everything else runs on the one
worker thread: :meth:`drain` takes items off the queue in order, encodes them and groups them into
batches by (method, model_id); :meth:`seal_due` closes batches that are full, old enough or
flushed; the worker sends :attr:`ready` batches and reports back with :meth:`resolve`.

Every drained item gets a sequence number in queue order. That gives the two ordering rules:
an update batch waits in :attr:`held` until every publish of its model drained before it is
resolved (so a PATCH never overtakes the POST of its event), and ``flush()`` waits until every item
with a number below its mark is resolved.

Per event, the worker's cost is the drain loop and the encoding, and the memory held is the
encoded bytes (:class:`Batch`): the loop only completes the row and appends it to a run of
consecutive items of one batch; a run is then encoded in a few orjson calls
(:meth:`~fiddler_trace._encode.Encoder.joined`) and added to its batch at once.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import threading
from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat, starmap
from typing import Any, Callable, Optional, Union
from uuid import UUID

from fiddler_trace._encoded import PATCH, POST, Batch, find_ends
from fiddler_trace._event import Event, Update, format_timestamp, update_row
from fiddler_trace._ids import KEEP_BITS, RECENT, V4_BITS, id_bits, id_text
from fiddler_trace._native import speedups
from fiddler_trace._stats import Stats

__all__ = ["DEEP_CHECK", "IDLE_WAIT", "BatchBuffer", "Item", "Refusal", "remember_publish"]

#: In a queue deeper than a batch, producers wake the worker (and check the pid) once every
#: this many events, a power of two (the hot path tests ``depth & DEEP_CHECK - 1``). The worker
#: was woken when the batch filled and does not wait while the queue holds anything, so this
#: only bounds what a missed wake-up (two producers reading the same depth) can hold back; a
#: test on every event cost each call in a burst a function call (~1,000 instructions). A full
#: buffer does not wake the worker: during an outage that made it step once per few hundred
#: dropped events and doubled their cost; a missed wake-up in a buffer too small to reach the
#: next check waits for the worker's own timer (``flush_interval``), as an event queued at
#: depth 0 does (see :func:`fiddler_trace._pipeline.submit`).
DEEP_CHECK = 512
#: The shortest wait of an idle worker, seconds: with nothing to do it wakes every
#: ``max(flush_interval, IDLE_WAIT)``.
IDLE_WAIT = 0.05
#: A publish (an :class:`Event` or a plain tuple of its fields) or an update.
Item = Union[Event, tuple, Update]
#: An item too large to send: ``(model_id, event_id, method, seq, reason)``.
Refusal = tuple[str, str, str, int, str]
Encoder = Callable[[dict[str, Any]], bytes]
#: Rows -> parts of them encoded and joined by commas: ``(encoded, how many rows)``.
JoinedEncoder = Callable[[list[dict[str, Any]]], Sequence[tuple[Union[bytes, memoryview], int]]]

# A drawn id goes into the row as a uuid.UUID made without UUID.__init__ (which only validates):
# orjson writes a UUID as its canonical string in native code, several times cheaper than
# formatting the 128-bit int in Python, and the worker never needs the string itself.
_new_object = object.__new__
#: The drain loop's iterator in C (fiddler_trace._speedups.Absorber), which also takes the items
#: that continue a run, as the loop would; None: the loop takes every item.
_absorber = speedups.Absorber if speedups is not None else None
_set_uuid_int = UUID.__dict__["int"].__set__


def remember_publish(item: Item, *, lost: bool = False) -> bool:
    """Remember the id of a publish that will not reach the worker (which remembers the ids
    it drains), so that ``update()`` knows it; ``lost``: it will never be sent, and its
    update is dropped, as for a sampled-out call. False for an update."""
    if type(item) is not tuple and isinstance(item, Update):
        return False
    RECENT.add(item[1], None if lost else item[0], item[4])
    return True


class _IdHashes:
    """Hashes of (model_id, event_id) of events that will never be published, the oldest
    forgotten first past ``maxsize``.

    Hashes, not the strings: 100,000 ints held where tuples of two strings in an LRU cache held
    ~30 MB. A collision of two 64-bit hashes among that many ids (about one in 10**14) would
    drop one valid update. The order is a ring of 8-byte ints rather than a dict's entries,
    which also keeps ``add`` O(1) where deleting a dict's oldest key walks the deleted slots.
    """

    def __init__(self, maxsize: int) -> None:
        self._keys: set[int] = set()
        self._order = array("q")  # insertion order; a ring once maxsize is reached
        self._next = 0  # the ring's oldest slot
        self._maxsize = max(1, maxsize)

    def add(self, key: int) -> None:
        keys = self._keys
        if key in keys:
            return
        order = self._order
        if len(order) < self._maxsize:
            order.append(key)
        else:
            oldest = self._next
            keys.discard(order[oldest])
            order[oldest] = key
            self._next = (oldest + 1) % self._maxsize
        keys.add(key)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)


class BatchBuffer:
    """Bounded queue plus the batches built from it.

    Args:
        max_events: most events held, counting queued, batched, in flight and retrying.
        batch_size: most events in a batch.
        max_batch_bytes: most encoded bytes in a batch.
        flush_interval: seconds a batch waits for more events.
        encode: row -> JSON bytes; if it has a ``joined`` method (rows -> parts of them
            encoded and joined by commas, as :class:`~fiddler_trace._encode.Encoder` has), runs
            of rows are encoded with that.
        wake: set (cheaply, rarely) when a producer should wake the worker.
        dropped: the counter of events refused because the buffer was full.
        captured: the counter of publishes captured: this buffer counts those it drops and
            those the worker takes; :meth:`counted` tells those still queued.
        failed_id_memory: how many failed event ids are remembered to drop their updates.
    """

    def __init__(
        self,
        *,
        max_events: int,
        batch_size: int,
        max_batch_bytes: int,
        flush_interval: float,
        encode: Encoder,
        wake: threading.Event,
        dropped: itertools.count,  # type: ignore[type-arg]
        captured: Optional[itertools.count] = None,  # type: ignore[type-arg]
        failed_id_memory: int = 100_000,
    ) -> None:
        self.max_events = max_events
        self.batch_size = batch_size
        #: The depth at which an event queued fills a batch: the producer wakes the worker, as
        #: at depth 0 (a batch starts). Between the two, and past it but once every
        #: :data:`DEEP_CHECK` events, the hot path appends without waking (see
        #: :func:`~fiddler_trace._pipeline.submit`).
        self.fill_at = batch_size - 1
        self.max_batch_bytes = max_batch_bytes
        self.flush_interval = flush_interval
        #: The worker's clock when it last looked at the queue (:meth:`drain`), and the
        #: creation time of the batches the current pass opens: the look before.
        self.looked_at: Optional[float] = None
        self.batch_start = 0.0
        #: A publish into an empty queue wakes the worker too: it fills a batch of one, or the
        #: worker's idle wait (``IDLE_WAIT``) is longer than ``flush_interval``.
        self.wake_empty = batch_size == 1 or flush_interval < IDLE_WAIT
        self._encode = encode
        joined: Optional[JoinedEncoder] = getattr(encode, "joined", None)
        self._encode_joined: JoinedEncoder = joined if joined is not None else self._encode_each
        self._wake = wake
        self._dropped = dropped
        self._captured = itertools.count() if captured is None else captured
        self.queue: collections.deque[Item] = collections.deque()
        self.outstanding = 0  # drained but not yet resolved; written by the worker only
        self.drained = 0  # next sequence number
        # Held by the worker while it moves items off the queue, and released while it encodes
        # (which can run the host's code: a value's __repr__, tolist, model_dump): a queued item
        # is then either still queued or drained, numbered and its id remembered for update()
        # (see flush_mark, find_queued).
        self._drain_lock = threading.RLock()
        self.pending: dict[tuple[str, str], Batch] = {}
        self.ready: collections.deque[Batch] = collections.deque()
        self.held: list[Batch] = []  # update batches waiting for their publishes
        self.open: set[Batch] = set()  # every drained, unresolved batch
        self._failed_ids = _IdHashes(failed_id_memory)
        self.dropped_ids: dict[int, bool] = {}  # id hashes, written by producers on a drop
        self.forgot = False  # forget_unsent() ran: a late delivery gives ids their model back
        # The last timestamp string and the range of time.time() * 1000 it stands for.
        self._stamp = ""
        self._stamp_from = self._stamp_to = 0.0

    # -- producer side: any thread -------------------------------------------------------------

    def offer(self, item: Item) -> bool:
        """Queue an item; False (and counted) when the buffer is full. Never blocks."""
        queue = self.queue
        if len(queue) + self.outstanding >= self.max_events:
            next(self._dropped)
            if remember_publish(item):
                next(self._captured)
                if len(self.dropped_ids) < self.max_events:
                    # A later update of this event is dropped too, not sent for an event the
                    # server never got. A dict set is atomic; the worker moves these on.
                    self.dropped_ids[hash((item[0], id_text(item[1])))] = True  # type: ignore[index]
            return False
        queue.append(item)
        depth = len(queue)
        # Wake the worker when a batch starts and when one fills. This is submit()'s slow path
        # (a pipeline starting, a forked child, a full buffer), where the wake-up that
        # submit() spares a lone publish costs too seldom to matter.
        if (depth == 1 or depth >= self.batch_size) and not self._wake.is_set():
            self._wake.set()
        return True

    def depth(self) -> int:
        """Events held: queued plus drained and unresolved."""
        return len(self.queue) + self.outstanding

    @contextlib.contextmanager
    def counted(self) -> Iterator[int]:
        """Hold the queue still (the drain lock) and give the number of publishes in it: with
        the captured counter read inside, every publish is counted once, by the worker when it
        took it or here while it is queued. For ``stats()``; O(queue)."""
        with self._drain_lock:
            if self.forgot:  # forget_unsent() counted them
                yield 0
                return
            queued = list(self.queue)
            yield sum(1 for item in queued if type(item) is tuple or not isinstance(item, Update))

    def flush_mark(self) -> int:
        """The sequence number the next item queued will get: a flush now waits for every
        item below it. Any thread."""
        # Counted here rather than by each producer: a counter bumped per event would cost the
        # caller's thread more than this costs a flush.
        with self._drain_lock:
            return self.drained + len(self.queue)

    def find_queued(self, event_id: str) -> Optional[tuple[str, str]]:
        """``(model_id, id_column)`` of a publish of ``event_id`` still queued, or None (once it
        is drained, :data:`~fiddler_trace._ids.RECENT` knows it). For an ``update()`` made right
        after the capture; any thread, O(queue)."""
        bits = id_bits(event_id)
        drawn = None if bits is None else bits & KEEP_BITS  # a queued drawn id is 128 raw bits
        with self._drain_lock:  # held only while the worker moves items, never in host code
            queued_now = list(self.queue)
        for item in queued_now:  # searched without the lock
            if type(item) is not tuple and isinstance(item, Update):
                continue
            queued = item[1]
            if queued == event_id or (type(queued) is int and queued & KEEP_BITS == drawn):
                return item[0], item[4]
        return None

    def forget_unsent(self) -> None:
        """After this buffer's last flush (its pipeline replaced or shut down): the publishes
        it did not deliver, still queued or in a batch it gave up on, are not sent by this
        process any more, so an ``update()`` of one is dropped, as for a sampled-out call,
        instead of going out through the next pipeline ahead of its event, or without it. A
        request in flight that is answered 200 after all gives its events back their model
        (:meth:`resolve`). A spool's batches are not here (``keep_all`` took them). Any thread
        of this process; never raises (a stuck worker may wake and change the batches)."""
        try:
            with self._drain_lock:  # not while the worker moves an item it will remember
                self.forgot = True
                # Counted below as captured: stats() no longer sees this queue. (A worker stuck
                # in a request ends its loop when the request returns, without draining more.)
                queued_now = list(self.queue)
                unsent = [b for b in tuple(self.open) if b.method == POST]
            for item in queued_now:
                if remember_publish(item, lost=True):
                    next(self._captured)
            for batch in unsent:
                self._remember_batch(batch, None)
        except Exception:  # the updates of those events then raise, as for an unknown id
            pass

    @staticmethod
    def _remember_batch(batch: Batch, model_id: Optional[str]) -> None:
        # By the text, which update() looks up first: one entry per event.
        columns = batch.columns
        for index, text in enumerate(batch.event_ids()):  # read back from the encoded rows
            if text:
                RECENT.add(text, model_id, columns if isinstance(columns, str) else columns[index])

    # -- worker side: the worker thread only ---------------------------------------------------

    def drain(self, now: float) -> list[Refusal]:
        """Move queued items into batches. Returns the items refused, as
        ``(model_id, event_id, method, seq, reason)``."""
        refused: list[Refusal] = []
        # Nothing wakes the worker for a lone publish (see submit()): the batches this pass
        # opens count their age from the last time the worker looked at the queue, before
        # which none of these items was queued, so that none waits longer than if it had.
        self.batch_start = self.looked_at if self.looked_at is not None else now
        self.looked_at = now
        if not self.queue or self.forgot:  # forgot: the queue was given up on, and counted
            return refused
        with self._drain_lock:
            self._drain(refused)
        return refused

    def _drain(self, refused: list[Refusal]) -> None:
        # This runs once per event, with the GIL the callers need: the loop only completes the
        # row (publish_row, inlined, with one timestamp string per millisecond: a burst of
        # events shares most of them), remembers the id for update() and appends the row to
        # the current run, consecutive items of one (method, model_id, id column) that fit in
        # one batch; _add_run encodes and adds a run at once. Everything it reads is a local.
        queue = self.queue
        pending, batch_size, popleft = self.pending, self.batch_size, queue.popleft
        new_object, set_uuid_int, uuid_type, update_type = _new_object, _set_uuid_int, UUID, Update
        plain, number, keep_bits, v4_bits = tuple, int, KEEP_BITS, V4_BITS
        absorber = _absorber
        # The ids update() can find: consecutive publishes of a run share one owner.
        recent = RECENT
        remembered, owner_of, generation_size = recent.current, recent.owner, recent.generation_size
        run_owner = 0
        stamp, stamp_from, stamp_to = self._stamp, self._stamp_from, self._stamp_to
        first = self.drained  # sequence number of the first item
        # Counted one by one, at once: producers bound the memory held by the queue plus this.
        # No other counter: the items taken so far are the growth of this one.
        base = self.outstanding
        added = 0
        run_method: Optional[str] = None
        run_model = run_column = ""
        post_model: Optional[str] = None  # run_model when the run is of publishes
        run_first = room = 0
        rows: list[dict[str, Any]] = []
        ids: Optional[list[str]] = None
        # Publishes are counted as captured here, once a run, before the lock is let go: a
        # stats() reading under it then finds each one counted or still queued.
        updates = counted = 0
        try:
            # The items queued now, popped from C (a starmap), then those queued meanwhile. Until
            # forget_unsent() gives up on the queue, while the lock is let go to encode a run.
            while queue and not self.forgot:
                if absorber is None:
                    items: Iterator[Any] = starmap(popleft, repeat((), len(queue)))
                else:  # the same items; its follow() takes the ones that continue a run
                    items = absorber(queue, self, len(queue))
                    follow = items.follow  # type: ignore[attr-defined]
                for item in items:
                    self.outstanding += 1
                    if type(item) is plain or not isinstance(item, update_type):
                        model_id, event_id, timestamp, row, id_column, ts_column = item
                        if type(event_id) is number:
                            # The caller's thread drew 128 bits: the version and variant bits
                            # are set here, where every drawn id passes (see _ids).
                            event_id = event_id & keep_bits | v4_bits
                            uid = new_object(uuid_type)
                            set_uuid_int(uid, event_id)
                            row[id_column] = uid
                        else:
                            row[id_column] = event_id
                        millis = timestamp * 1000.0
                        if not stamp_from <= millis < stamp_to:
                            stamp = format_timestamp(timestamp)
                            # int() truncates toward zero: before 1970 a range would be wrong.
                            stamp_from = float(int(millis)) if millis >= 0.0 else 0.0
                            stamp_to = stamp_from + 1.0 if millis >= 0.0 else 0.0
                        row[ts_column] = stamp
                        # The run goes on: identity first, the strings are usually the same.
                        if (
                            room
                            and (model_id is post_model or model_id == post_model)
                            and (id_column is run_column or id_column == run_column)
                        ):
                            remembered[event_id] = run_owner
                            rows.append(row)
                            room -= 1
                            if absorber is not None and room:
                                room -= follow(
                                    rows, remembered, run_owner, post_model, run_column, room,
                                    stamp_from, stamp, stamp_to,
                                )  # fmt: skip
                            continue
                        if len(remembered) >= generation_size:  # checked once a run
                            recent.rotate()
                            remembered = recent.current
                        run_owner = owner_of(model_id, id_column)
                        remembered[event_id] = run_owner
                        method, column, event_ids = POST, id_column, None
                    else:
                        updates += 1
                        row = update_row(item)
                        model_id = item.model_id
                        if room and run_method is PATCH and model_id == run_model:
                            rows.append(row)
                            ids.append(item.event_id)  # type: ignore[union-attr]
                            room -= 1
                            continue
                        method, column, event_ids = PATCH, item.id_column, [item.event_id]
                    # A new run starts with this item: add the one before.
                    if rows:
                        self.drained = first + self.outstanding - base
                        counted = self._count(self.outstanding - base - updates, counted)
                        added += self._add_run_unlocked(
                            run_method, run_model, run_column, rows, ids, run_first, refused
                        )
                        stop = self.forgot  # the rest of the queue was given up on meanwhile
                    else:
                        stop = False
                    run_method, run_model, run_column = method, model_id, column
                    run_first = first + self.outstanding - base - 1
                    post_model = model_id if method is POST else None
                    rows, ids = [row], event_ids
                    batch = pending.get((method, model_id))
                    room = batch_size - 1 - (batch.size if batch is not None else 0)
                    if stop:  # this item was taken before: it goes on; the queue stays
                        break
                    if absorber is not None and room and post_model is not None:
                        room -= follow(
                            rows, remembered, run_owner, post_model, run_column, room,
                            stamp_from, stamp, stamp_to,
                        )  # fmt: skip
            if rows:
                self.drained = first + self.outstanding - base
                counted = self._count(self.outstanding - base - updates, counted)
                added += self._add_run_unlocked(
                    run_method, run_model, run_column, rows, ids, run_first, refused
                )
                rows = []
        except BaseException:
            # An item that breaks the loop is lost, as it would be alone; the run before it
            # is not.
            if rows:
                with contextlib.suppress(Exception):
                    self.drained = first + self.outstanding - base
                    counted = self._count(self.outstanding - base - updates, counted)
                    added += self._add_run_unlocked(
                        run_method, run_model, run_column, rows, ids, run_first, refused
                    )
            raise
        finally:
            self._stamp, self._stamp_from, self._stamp_to = stamp, stamp_from, stamp_to
            taken = self.outstanding - base
            self._count(taken - updates, counted)
            self.drained = first + taken
            # Refused items, and items lost to an error, are not held.
            self.outstanding -= taken - added

    def _count(self, taken: int, counted: int) -> int:
        """Count as captured the publishes taken in this pass (``taken``) beyond the ``counted``
        ones; returns the new count."""
        Stats.add(self._captured, taken - counted)
        return taken

    def _add_run_unlocked(self, *args: Any) -> int:
        """:meth:`_add_run` with the drain lock released: encoding may run the host's code."""
        self._drain_lock.release()
        try:
            return self._add_run(*args)
        finally:
            self._drain_lock.acquire()

    def _encode_each(self, rows: list[dict[str, Any]]) -> list[tuple[bytes, int]]:
        return [(self._encode(row), 1) for row in rows]

    def _fits(self, batch: Optional[Batch], nbytes: int, count: int) -> bool:
        """``count`` events of ``nbytes`` (joined) can go into ``batch`` (None: a new one).

        The check each event gets when added one by one (the batch's bytes plus the event's,
        without the comma between) is tightest for the last one: when it passes, all do.
        """
        before = batch.nbytes if batch is not None else 0
        after = before + nbytes + 1 if before else nbytes
        return after - (1 if count > 1 or before else 0) < self.max_batch_bytes

    def _add_run(
        self,
        method: Optional[str],
        model_id: str,
        column: str,
        rows: list[dict[str, Any]],
        ids: Optional[list[str]],
        first_seq: int,
        refused: list[Refusal],
    ) -> int:
        """Encode a run and add it to its batch; returns how many events were added."""
        assert method is not None
        parts = self._encode_joined(rows)
        key = (method, model_id)
        batch = self.pending.get(key)
        nbytes = sum(len(part) for part, _ in parts) + len(parts) - 1
        if not self._fits(batch, nbytes, len(rows)):
            return self._add_parts(key, column, rows, ids, parts, first_seq, refused)
        if batch is None:
            batch = self.pending[key] = Batch(method, model_id, self.batch_start)
            self.open.add(batch)
        batch.extend([part for part, _ in parts], nbytes, len(rows), first_seq, column, ids)
        if batch.size >= self.batch_size:
            self._seal(key)
        return len(rows)

    def _add_parts(
        self,
        key: tuple[str, str],
        column: str,
        rows: list[dict[str, Any]],
        ids: Optional[list[str]],
        parts: Sequence[tuple[Union[bytes, memoryview], int]],
        first_seq: int,
        refused: list[Refusal],
    ) -> int:
        """A run that does not fit in its batch: part by part, and event by event in a part
        that does not fit, sealing on the byte budget and refusing what is too large alone."""
        method, model_id = key
        max_bytes, pending = self.max_batch_bytes, self.pending
        added = start = 0
        for part, count in parts:
            batch = pending.get(key)
            part_ids = None if ids is None else ids[start : start + count]
            if self._fits(batch, len(part), count):
                if batch is None:
                    batch = pending[key] = Batch(method, model_id, self.batch_start)
                    self.open.add(batch)
                batch.extend([part], len(part), count, first_seq + start, column, part_ids)
                added += count
            else:
                for index, event in enumerate(self._events_of(part, rows[start : start + count])):
                    seq = first_seq + start + index
                    event_id = None if ids is None else ids[start + index]
                    row = rows[start + index]
                    if len(event) >= max_bytes:
                        text = event_id if event_id is not None else _row_id(row, column)
                        refused.append(
                            (model_id, text, method, seq, self._too_large(row, len(event)))
                        )
                        continue
                    batch = pending.get(key)
                    if batch is not None and batch.nbytes + len(event) >= max_bytes:
                        self._seal(key)
                        batch = None
                    if batch is None:
                        batch = pending[key] = Batch(method, model_id, self.batch_start)
                        self.open.add(batch)
                    batch.add(event_id, event, seq, column)
                    added += 1
                    if batch.size >= self.batch_size:
                        self._seal(key)
            if batch is not None and batch.size >= self.batch_size and pending.get(key) is batch:
                self._seal(key)
            start += count
        return added

    def _events_of(self, part: Union[bytes, memoryview], rows: list[dict[str, Any]]) -> list[bytes]:
        """The encoded events of a part, one by one."""
        data = bytes(part)
        ends = find_ends(data, len(rows)) if len(rows) > 1 else array("q", [len(data)])
        if ends is None:  # a value was an invalid orjson.Fragment: encode the rows again
            return [self._encode(row) for row in rows]
        starts = [0, *(end + 1 for end in ends[:-1])]
        return [data[s:e] for s, e in zip(starts, ends)]

    def _too_large(self, row: dict[str, Any], size: int) -> str:
        sizes = sorted(((len(self._encode(v)), str(k)) for k, v in row.items()), reverse=True)
        largest = ", ".join(f"{name} ({n:,} bytes)" for n, name in sizes[:3])
        return (
            f"it encodes to {size:,} bytes, over max_batch_bytes ({self.max_batch_bytes:,}); "
            f"largest columns: {largest}"
        )

    def seal_due(self, now: float, force: bool = False) -> None:
        """Close batches that waited ``flush_interval`` (all of them when ``force``)."""
        for key, batch in list(self.pending.items()):
            if force or now - batch.created >= self.flush_interval:
                self._seal(key)

    def next_due(self) -> Optional[float]:
        """When the oldest pending batch is due, on the worker's clock; None if none pends."""
        if not self.pending:
            return None
        return min(b.created for b in self.pending.values()) + self.flush_interval

    def _seal(self, key: tuple[str, str]) -> None:
        batch = self.pending.pop(key)
        if batch.method == PATCH:
            self.held.append(batch)
        else:
            self.ready.append(batch)

    def forget(self, model_id: str, event_id: str) -> None:
        """This event will never be published: drop its updates."""
        self._failed_ids.add(hash((model_id, event_id)))

    def release_updates(self) -> Iterator[Batch]:
        """Move held update batches whose publishes are all resolved to :attr:`ready`.

        Yields, as batches of their own, the updates taken out because the publish of their
        event failed for good; the caller resolves those as failed.
        """
        while self.dropped_ids:
            key, _ = self.dropped_ids.popitem()
            self._failed_ids.add(key)
        still: list[Batch] = []
        for batch in self.held:
            if self._publishes_before(batch.model_id, batch.last_seq):
                still.append(batch)
                continue
            model, failed = batch.model_id, self._failed_ids
            if failed:
                dead = [
                    i
                    for i, event_id in enumerate(batch.event_ids())
                    if hash((model, event_id)) in failed
                ]
                if dead:
                    lost = batch.split_off(dead)
                    self.outstanding -= len(lost)
                    yield lost
            if batch.size:
                self.ready.append(batch)
            else:
                self.open.discard(batch)
        self.held = still

    def _publishes_before(self, model_id: str, seq: Optional[int]) -> bool:
        return seq is not None and any(
            b.method == POST and b.model_id == model_id and b.size and b.run_firsts[0] < seq
            for b in self.open
        )

    def resolve(self, batch: Batch, delivered: bool, remember: bool = True) -> None:
        """The batch is done: delivered, or failed for good (``remember``: drop the updates of
        its events later), or kept on disk (not ``remember``)."""
        self.open.discard(batch)
        self.outstanding -= len(batch)
        if delivered and self.forgot and batch.method == POST:
            self._remember_batch(batch, batch.model_id)  # landed after forget_unsent after all
        if not delivered and remember and batch.method == POST:
            model_id, failed = batch.model_id, self._failed_ids
            for event_id in batch.event_ids():
                failed.add(hash((model_id, event_id)))

    def replace(self, batch: Batch, parts: Iterable[Batch]) -> None:
        """Put split parts of ``batch`` at the front of the send order, in order."""
        self.open.discard(batch)
        for part in reversed(list(parts)):
            self.open.add(part)
            self.ready.appendleft(part)

    def lowest_open_seq(self) -> int:
        """The smallest sequence number not yet resolved (``drained`` when all are)."""
        lowest = self.drained
        for batch in self.open:
            if batch.size and batch.run_firsts[0] < lowest:
                lowest = batch.run_firsts[0]
        return lowest

    def take_all(self) -> list[Batch]:
        """Remove and return every unresolved batch and queued item (as batches): for the exit."""
        self.drain(float("-inf"))
        self.seal_due(0.0, force=True)
        # In capture order, so that on disk every update stays behind its publish.
        batches = sorted(self.open, key=lambda b: b.run_firsts[0] if b.size else -1)
        self.open.clear()
        self.ready.clear()
        self.held.clear()
        self.outstanding = 0
        return batches


def _row_id(row: dict[str, Any], column: str) -> str:
    """The id a drained publish's row carries (a drawn one is a UUID there)."""
    value = row.get(column, "")
    return str(value) if isinstance(value, UUID) else id_text(value)
