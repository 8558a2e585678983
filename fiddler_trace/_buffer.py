"""The bounded buffer and its batching decisions. No threads, no I/O; the clock is passed in.

Producers call :meth:`BatchBuffer.offer` (O(1), never blocks). Everything else runs on the one
worker thread: :meth:`drain` takes items off the queue in order, encodes them and groups them into
batches by (method, model_id); :meth:`seal_due` closes batches that are full, old enough or
flushed; the worker sends :attr:`ready` batches and reports back with :meth:`resolve`.

Every drained item gets a sequence number in queue order. That gives the two ordering rules:
an update batch waits in :attr:`held` until every publish of its model drained before it is
resolved (so a PATCH never overtakes the POST of its event), and ``flush()`` waits until every item
with a number below its mark is resolved.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Optional, Union

from fiddler_trace._event import Event, Update, format_timestamp, update_row
from fiddler_trace._ids import format_event_id, id_text

__all__ = ["PATCH", "POST", "Batch", "BatchBuffer", "Item", "Refusal"]

POST = "POST"
PATCH = "PATCH"
#: A publish (an :class:`Event` or a plain tuple of its fields) or an update.
Item = Union[Event, tuple, Update]
#: An item too large to send: ``(model_id, event_id, method, seq, reason)``.
Refusal = tuple[str, str, str, int, str]
Encoder = Callable[[dict[str, Any]], bytes]


class Batch:
    """Events of one (method, model_id) sent in one request, with their retry state.

    The encoded events are kept joined by commas in one bytearray, as they go in the request
    body, with the end offset of each: a bytes object per event would cost an allocation each
    (measured: most of the worker's time), and the offsets still allow splitting the batch.
    """

    __slots__ = (
        "attempts",
        "created",
        "data",
        "ends",
        "first_attempt",
        "ids",
        "method",
        "model_id",
        "origin",
        "seqs",
    )

    def __init__(self, method: str, model_id: str, created: float) -> None:
        self.method = method
        self.model_id = model_id
        self.created = created
        self.ids: list[str] = []  # event ids, to remember failed publishes and match updates
        self.seqs: list[int] = []
        self.data = bytearray()
        self.ends: list[int] = []
        self.attempts = 0  # failed attempts so far
        self.first_attempt: Optional[float] = None
        self.origin: Optional[object] = None  # a replayed spool record's mark

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Batch({self.method} {self.model_id}, {len(self.ids)} events)"

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def add(self, event_id: str, encoded: bytes, seq: int) -> None:
        data = self.data
        if data:
            data += b","
        data += encoded
        self.ends.append(len(data))
        self.ids.append(event_id)
        self.seqs.append(seq)

    def event(self, index: int) -> bytes:
        """The encoded event at ``index``."""
        start = self.ends[index - 1] + 1 if index else 0
        return bytes(self.data[start : self.ends[index]])

    def _subset(self, indexes: Iterable[int]) -> Batch:
        part = Batch(self.method, self.model_id, self.created)
        part.first_attempt = self.first_attempt
        part.origin = self.origin
        for i in indexes:
            part.add(self.ids[i], self.event(i), self.seqs[i])
        return part

    def halves(self) -> tuple[Batch, Batch]:
        """Two batches with the first and second half of the events, keeping the retry clock."""
        middle = len(self.ids) // 2
        return self._subset(range(middle)), self._subset(range(middle, len(self.ids)))

    def split_off(self, indexes: Iterable[int]) -> Batch:
        """Remove the events at ``indexes`` and return them as a batch of their own."""
        taken = sorted(set(indexes))
        gone = self._subset(taken)
        kept = self._subset(i for i in range(len(self.ids)) if i not in set(taken))
        self.ids, self.seqs, self.data, self.ends = kept.ids, kept.seqs, kept.data, kept.ends
        return gone


class _IdHashes:
    """Hashes of (model_id, event_id) of events that will never be published, the oldest
    forgotten first past ``maxsize``.

    Hashes, not the strings: 100,000 ints in a dict hold a few MB where tuples of two strings in
    an LRU cache held ~30 MB. A collision of two 64-bit hashes among that many ids (about one in
    10**14) would drop one valid update.
    """

    def __init__(self, maxsize: int) -> None:
        self._keys: dict[int, None] = {}
        self._maxsize = maxsize

    def add(self, key: int) -> None:
        keys = self._keys
        keys[key] = None
        if len(keys) > self._maxsize:
            del keys[next(iter(keys))]

    def __contains__(self, key: object) -> bool:
        return key in self._keys


class BatchBuffer:
    """Bounded queue plus the batches built from it.

    Args:
        max_events: most events held, counting queued, batched, in flight and retrying.
        batch_size: most events in a batch.
        max_batch_bytes: most encoded bytes in a batch.
        flush_interval: seconds a batch waits for more events.
        encode: row -> JSON bytes.
        wake: set (cheaply, rarely) when a producer should wake the worker.
        dropped: the counter of events refused because the buffer was full.
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
        failed_id_memory: int = 100_000,
    ) -> None:
        self.max_events = max_events
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.flush_interval = flush_interval
        self._encode = encode
        self._wake = wake
        self._dropped = dropped
        self.queue: collections.deque[Item] = collections.deque()
        self.accepted = itertools.count()  # items ever offered and kept; the flush mark
        self.outstanding = 0  # drained but not yet resolved; written by the worker only
        self.drained = 0  # next sequence number
        self.pending: dict[tuple[str, str], Batch] = {}
        self.ready: collections.deque[Batch] = collections.deque()
        self.held: list[Batch] = []  # update batches waiting for their publishes
        self.open: set[Batch] = set()  # every drained, unresolved batch
        self._failed_ids = _IdHashes(failed_id_memory)
        self.dropped_ids: dict[int, bool] = {}  # id hashes, written by producers on a drop

    # -- producer side: any thread -------------------------------------------------------------

    def offer(self, item: Item) -> bool:
        """Queue an item; False (and counted) when the buffer is full. Never blocks."""
        queue = self.queue
        if len(queue) + self.outstanding >= self.max_events:
            next(self._dropped)
            if not isinstance(item, Update) and len(self.dropped_ids) < self.max_events:
                # So that a later update of this event is dropped too, not sent for an event
                # the server never got. A dict set is atomic; the worker moves these on.
                self.dropped_ids[hash((item[0], id_text(item[1])))] = True
            return False
        queue.append(item)
        next(self.accepted)
        depth = len(queue)
        # Wake the worker when a batch starts (so its age counts from now) and when one fills.
        if (depth == 1 or depth >= self.batch_size) and not self._wake.is_set():
            self._wake.set()
        return True

    def depth(self) -> int:
        """Events held: queued plus drained and unresolved."""
        return len(self.queue) + self.outstanding

    # -- worker side: the worker thread only ---------------------------------------------------

    def drain(self, now: float) -> list[Refusal]:
        """Move queued items into batches. Returns the items refused, as
        ``(model_id, event_id, method, seq, reason)``."""
        # This runs once per event, with the GIL the callers need: what it reads is a local,
        # the batch of the previous event is reused while the key stays the same, and
        # publish_row is inlined with one timestamp string per millisecond (a burst of events
        # shares most of them).
        refused: list[Refusal] = []
        pending, encode, popleft = self.pending, self._encode, self.queue.popleft
        max_bytes, batch_size = self.max_batch_bytes, self.batch_size
        seq = self.drained  # the next item's sequence number
        key: Optional[tuple[str, str]] = None
        batch: Optional[Batch] = None
        millis, stamp = -1, ""
        try:
            while True:
                try:
                    item = popleft()
                except IndexError:
                    break
                seq += 1
                if not isinstance(
                    item, Update
                ):  # a publish: an Event or a plain tuple of its fields
                    model_id, event_id, timestamp, row, id_column, ts_column = item
                    method = POST
                    if type(event_id) is int:
                        event_id = format_event_id(event_id)
                    row[id_column] = event_id
                    if int(timestamp * 1000.0) != millis:
                        millis = int(timestamp * 1000.0)
                        stamp = format_timestamp(timestamp)
                    row[ts_column] = stamp
                else:
                    method, row = PATCH, update_row(item)
                    model_id, event_id = item.model_id, item.event_id
                encoded = encode(row)
                if len(encoded) >= max_bytes:
                    refused.append(
                        (model_id, event_id, method, seq - 1, self._too_large(row, len(encoded)))
                    )
                    continue
                if key is None or key[1] != model_id or key[0] != method:
                    key = (method, model_id)
                    batch = pending.get(key)
                if batch is not None and len(batch.data) + len(encoded) >= max_bytes:
                    self._seal(key)
                    batch = None
                if batch is None:
                    batch = pending[key] = Batch(method, model_id, now)
                    self.open.add(batch)
                batch.add(event_id, encoded, seq - 1)  # type: ignore[arg-type]
                self.outstanding += 1  # at once: producers read it to bound the memory held
                if len(batch.ids) >= batch_size:
                    self._seal(key)
                    batch = None
        finally:
            self.drained = seq
        return refused

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
            if self._publishes_before(batch.model_id, batch.seqs[-1]):
                still.append(batch)
                continue
            model, failed = batch.model_id, self._failed_ids
            dead = [i for i, event_id in enumerate(batch.ids) if hash((model, event_id)) in failed]
            if dead:
                lost = batch.split_off(dead)
                self.outstanding -= len(lost)
                yield lost
            if batch.ids:
                self.ready.append(batch)
            else:
                self.open.discard(batch)
        self.held = still

    def _publishes_before(self, model_id: str, seq: int) -> bool:
        return any(
            b.method == POST and b.model_id == model_id and b.seqs and b.seqs[0] < seq
            for b in self.open
        )

    def resolve(self, batch: Batch, delivered: bool, remember: bool = True) -> None:
        """The batch is done: delivered, or failed for good (``remember``: drop the updates of
        its events later), or kept on disk (not ``remember``)."""
        self.open.discard(batch)
        self.outstanding -= len(batch)
        if not delivered and remember and batch.method == POST:
            for event_id in batch.ids:
                self._failed_ids.add(hash((batch.model_id, event_id)))

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
            if batch.seqs and batch.seqs[0] < lowest:
                lowest = batch.seqs[0]
        return lowest

    def take_all(self) -> list[Batch]:
        """Remove and return every unresolved batch and queued item (as batches): for the exit."""
        self.drain(float("-inf"))
        self.seal_due(0.0, force=True)
        # In capture order, so that on disk every update stays behind its publish.
        batches = sorted(self.open, key=lambda b: b.seqs[0] if b.seqs else -1)
        self.open.clear()
        self.ready.clear()
        self.held.clear()
        self.outstanding = 0
        return batches
