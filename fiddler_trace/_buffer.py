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
encoded bytes plus two 8-byte numbers (:class:`Batch`): the loop only completes the row and
appends it to a run of consecutive items of one batch; a run is then encoded in one call
(:meth:`~fiddler_trace._encode.Encoder.many`) and added to its batch at once.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import struct
import threading
from array import array
from collections.abc import Iterable, Iterator, Sequence
from operator import add
from typing import Any, Callable, Optional, Union
from uuid import UUID

import orjson

from fiddler_trace._event import Event, Update, format_timestamp, update_row
from fiddler_trace._ids import id_text

__all__ = ["PATCH", "POST", "Batch", "BatchBuffer", "Item", "Refusal"]

POST = "POST"
PATCH = "PATCH"
#: A publish (an :class:`Event` or a plain tuple of its fields) or an update.
Item = Union[Event, tuple, Update]
#: An item too large to send: ``(model_id, event_id, method, seq, reason)``.
Refusal = tuple[str, str, str, int, str]
Encoder = Callable[[dict[str, Any]], bytes]
ManyEncoder = Callable[[list[dict[str, Any]]], list[bytes]]

# A drawn id goes into the row as a uuid.UUID made without UUID.__init__ (which only validates):
# orjson writes a UUID as its canonical string in native code, several times cheaper than
# formatting the 128-bit int in Python, and the worker never needs the string itself.
_new_object = object.__new__
_set_uuid_int = UUID.__dict__["int"].__set__
_CHUNK = 4096  # items taken off the queue at a time


class Batch:
    """Events of one (method, model_id) sent in one request, with their retry state.

    The encoded events are kept joined by commas, as they go in the request body, with the end
    offset of each (to split the batch) as 8-byte ints in an array. Sequence numbers come in
    runs of consecutive ones (a run of the queue is added at once), kept as the index where
    each run starts and its first number: a few ints per batch rather than one per event.
    Event ids are kept as strings only where the data cannot give them back cheaply: updates
    (:attr:`ids`) and replayed records; a publish's id is in its row, under its id column
    (:attr:`columns`), and is read back from the data on the rare paths that need it (a failed
    publish, the spool): :meth:`event_ids`.
    """

    __slots__ = (
        "attempts",
        "columns",
        "created",
        "data",
        "ends",
        "first_attempt",
        "ids",
        "method",
        "model_id",
        "origin",
        "run_firsts",
        "run_starts",
    )

    def __init__(self, method: str, model_id: str, created: float) -> None:
        self.method = method
        self.model_id = model_id
        self.created = created
        self.data: Union[bytes, bytearray] = bytearray()
        self.ends = array("q")
        #: Index of each run of consecutive sequence numbers, and the run's first number.
        self.run_starts: list[int] = []
        self.run_firsts: list[int] = []
        #: Event ids when known as strings (updates, replayed records); None: read from data.
        self.ids: Optional[list[str]] = None
        #: The id column of every event, or a list with the id column of each.
        self.columns: Union[str, list[str]] = "event_id"
        self.attempts = 0  # failed attempts so far
        self.first_attempt: Optional[float] = None
        self.origin: Optional[object] = None  # a replayed spool record's mark

    def __len__(self) -> int:
        return len(self.ends)

    def __repr__(self) -> str:
        return f"Batch({self.method} {self.model_id}, {len(self.ends)} events)"

    @property
    def nbytes(self) -> int:
        return len(self.data)

    @property
    def first_seq(self) -> Optional[int]:
        """The sequence number of the first event; None for an empty batch."""
        return self.run_firsts[0] if self.ends else None

    @property
    def last_seq(self) -> Optional[int]:
        """The sequence number of the last event; None for an empty batch."""
        if not self.ends:
            return None
        return self.run_firsts[-1] + len(self.ends) - 1 - self.run_starts[-1]

    def seq(self, index: int) -> int:
        """The sequence number of the event at ``index``."""
        run = bisect.bisect_right(self.run_starts, index) - 1
        return self.run_firsts[run] + index - self.run_starts[run]

    @property
    def seqs(self) -> list[int]:
        """Every event's sequence number, in order (built on each call)."""
        return [self.seq(i) for i in range(len(self.ends))]

    def _note_seqs(self, first_seq: int) -> None:
        """Events from ``first_seq`` on are about to be appended."""
        if self.last_seq is None or first_seq != self.last_seq + 1:
            self.run_starts.append(len(self.ends))
            self.run_firsts.append(first_seq)

    def add(self, event_id: Optional[str], encoded: bytes, seq: int, column: str) -> None:
        """Append one encoded event (``event_id`` None: a publish, whose id is in its row)."""
        self._note(None if event_id is None else [event_id], column, 1)
        self._append(encoded, seq)

    def _append(self, encoded: bytes, seq: int) -> None:
        self._note_seqs(seq)
        data = self.data
        if not isinstance(data, bytearray):
            data = self.data = bytearray(data)
        if data:
            data += b","
        data += encoded
        self.ends.append(len(data))

    def extend(
        self, encoded: list[bytes], first_seq: int, column: str, ids: Optional[list[str]]
    ) -> None:
        """Append consecutive events at once: sequence numbers from ``first_seq``."""
        self._note(ids, column, len(encoded))
        self._note_seqs(first_seq)
        data = self.data
        if not isinstance(data, bytearray):
            data = self.data = bytearray(data)
        start = len(data) + 1 if data else 0
        if data:
            data += b","
        data += b",".join(encoded)
        # End of event i: start + the lengths of events 0..i + the i commas between them.
        # Packed by struct: array.extend would convert each int through PyArg_Parse.
        ends = map(add, itertools.accumulate(map(len, encoded)), itertools.count(start))
        self.ends.frombytes(struct.pack(f"{len(encoded)}q", *ends))

    def _note(self, ids: Optional[list[str]], column: str, n: int) -> None:
        """Keep the ids (or the id column) of ``n`` events about to be appended."""
        if ids is not None:
            if self.ids is None:
                self.ids = []
            self.ids.extend(ids)
            return
        columns = self.columns
        if not self.ends:
            self.columns = column
        elif isinstance(columns, list):
            columns.extend([column] * n)
        elif columns != column:
            self.columns = [columns] * len(self.ends) + [column] * n

    def event(self, index: int) -> bytes:
        """The encoded event at ``index``."""
        start = self.ends[index - 1] + 1 if index else 0
        return bytes(self.data[start : self.ends[index]])

    def event_ids(self) -> list[str]:
        """The id of each event, in order; "" for one that cannot be read back. A publish's
        ids are parsed from the data: for the rare paths only (a failure, the spool)."""
        if self.ids is not None:
            return self.ids
        try:
            rows = orjson.loads(b"[" + self.data + b"]")
        except orjson.JSONDecodeError:  # e.g. a value passed as an invalid orjson.Fragment
            rows = [_loads_or_none(self.event(i)) for i in range(len(self.ends))]
        columns = self.columns
        ids = []
        for index, row in enumerate(rows):
            column = columns if isinstance(columns, str) else columns[index]
            value = row.get(column) if isinstance(row, dict) else None
            ids.append(value if isinstance(value, str) else "")
        return ids

    def _subset(self, indexes: Sequence[int]) -> Batch:
        part = Batch(self.method, self.model_id, self.created)
        part.first_attempt = self.first_attempt
        part.origin = self.origin
        if self.ids is not None:
            part.ids = [self.ids[i] for i in indexes]
        columns = self.columns
        part.columns = columns if isinstance(columns, str) else [columns[i] for i in indexes]
        for i in indexes:
            part._append(self.event(i), self.seq(i))
        return part

    def halves(self) -> tuple[Batch, Batch]:
        """Two batches with the first and second half of the events, keeping the retry clock."""
        middle = len(self.ends) // 2
        return self._subset(range(middle)), self._subset(range(middle, len(self.ends)))

    def split_off(self, indexes: Iterable[int]) -> Batch:
        """Remove the events at ``indexes`` and return them as a batch of their own."""
        taken = sorted(set(indexes))
        gone = self._subset(taken)
        dropped = set(taken)
        kept = self._subset([i for i in range(len(self.ends)) if i not in dropped])
        self.ids, self.columns, self.data, self.ends = kept.ids, kept.columns, kept.data, kept.ends
        self.run_starts, self.run_firsts = kept.run_starts, kept.run_firsts
        return gone

    @classmethod
    def replayed(
        cls, method: str, model_id: str, ids: list[str], ends: Sequence[int], data: bytes
    ) -> Batch:
        """A batch of a spooled record: its events count as already resolved (seq -1)."""
        batch = cls(method, model_id, 0.0)
        batch.ids, batch.ends, batch.data = ids, array("q", ends), data
        batch.run_starts, batch.run_firsts = list(range(len(ends))), [-1] * len(ends)
        return batch


def _loads_or_none(encoded: bytes) -> Any:
    try:
        return orjson.loads(encoded)
    except orjson.JSONDecodeError:
        return None


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
        encode: row -> JSON bytes; if it has a ``many`` method (rows -> list of JSON bytes, as
            :class:`~fiddler_trace._encode.Encoder` has), runs of rows are encoded with it.
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
        many: Optional[ManyEncoder] = getattr(encode, "many", None)
        self._encode_many: ManyEncoder = many if many is not None else self._encode_each
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
        # The last timestamp string and the range of time.time() * 1000 it stands for.
        self._stamp = ""
        self._stamp_from = self._stamp_to = 0.0

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
        # This runs once per event, with the GIL the callers need: the loop only completes the
        # row (publish_row, inlined, with one timestamp string per millisecond: a burst of
        # events shares most of them) and appends it to the current run, consecutive items of
        # one (method, model_id, id column) that fit in one batch; _add_run encodes and adds a
        # run at once. Everything it reads is a local.
        refused: list[Refusal] = []
        queue = self.queue
        if not queue:
            return refused
        pending, batch_size, popleft = self.pending, self.batch_size, queue.popleft
        new_object, set_uuid_int, uuid_type, update_type = _new_object, _set_uuid_int, UUID, Update
        plain, number = tuple, int
        stamp, stamp_from, stamp_to = self._stamp, self._stamp_from, self._stamp_to
        first = self.drained  # sequence number of this chunk's first item
        index = first - 1  # of the last item taken
        counted = added = 0
        run_method: Optional[str] = None
        run_model = run_column = ""
        post_model: Optional[str] = None  # run_model when the run is of publishes
        run_first = room = 0
        rows: list[dict[str, Any]] = []
        ids: Optional[list[str]] = None
        try:
            while queue:
                chunk = min(len(queue), _CHUNK)
                # Counted before they leave the queue: producers bound the memory held by the
                # queue plus this, so it must never miss an item in between.
                self.outstanding += chunk
                counted += chunk
                for index in range(first, first + chunk):
                    try:
                        item = popleft()
                    except IndexError:  # shutdown's take_all drained from another thread
                        index -= 1
                        break
                    if type(item) is plain or not isinstance(item, update_type):
                        model_id, event_id, timestamp, row, id_column, ts_column = item
                        if type(event_id) is number:
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
                            rows.append(row)
                            room -= 1
                            continue
                        method, column, event_ids = POST, id_column, None
                    else:
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
                        added += self._add_run(
                            run_method, run_model, run_column, rows, ids, run_first, now, refused
                        )
                    run_method, run_model, run_column, run_first = method, model_id, column, index
                    post_model = model_id if method is POST else None
                    rows, ids = [row], event_ids
                    batch = pending.get((method, model_id))
                    room = batch_size - 1 - (len(batch.ends) if batch is not None else 0)
                if index < first + chunk - 1:
                    break
                first += chunk
            if rows:
                added += self._add_run(
                    run_method, run_model, run_column, rows, ids, run_first, now, refused
                )
        finally:
            self._stamp, self._stamp_from, self._stamp_to = stamp, stamp_from, stamp_to
            self.drained = index + 1
            # Refused items, items lost to an error and items not taken are not held.
            self.outstanding -= counted - added
        return refused

    def _encode_each(self, rows: list[dict[str, Any]]) -> list[bytes]:
        return [self._encode(row) for row in rows]

    def _add_run(
        self,
        method: Optional[str],
        model_id: str,
        column: str,
        rows: list[dict[str, Any]],
        ids: Optional[list[str]],
        first_seq: int,
        now: float,
        refused: list[Refusal],
    ) -> int:
        """Encode a run and add it to its batch; returns how many events were added."""
        assert method is not None
        encoded = self._encode_many(rows)
        key = (method, model_id)
        batch = self.pending.get(key)
        size = len(batch.data) + 1 if batch is not None and batch.data else 0
        size += sum(map(len, encoded)) + len(encoded) - 1
        # Each event is checked against max_batch_bytes without the comma before it: the last
        # event's check is the tightest, and when it passes every event fits as it comes.
        if size - (1 if size > len(encoded[-1]) else 0) < self.max_batch_bytes:
            if batch is None:
                batch = self.pending[key] = Batch(method, model_id, now)
                self.open.add(batch)
            batch.extend(encoded, first_seq, column, ids)
            if len(batch.ends) >= self.batch_size:
                self._seal(key)
            return len(encoded)
        return self._add_each(key, column, rows, ids, encoded, first_seq, now, refused)

    def _add_each(
        self,
        key: tuple[str, str],
        column: str,
        rows: list[dict[str, Any]],
        ids: Optional[list[str]],
        encoded: list[bytes],
        first_seq: int,
        now: float,
        refused: list[Refusal],
    ) -> int:
        """A run that does not fit in its batch: event by event, sealing on the byte budget and
        refusing what is too large alone."""
        method, model_id = key
        max_bytes = self.max_batch_bytes
        added = 0
        for index, event in enumerate(encoded):
            event_id = None if ids is None else ids[index]
            if len(event) >= max_bytes:
                text = ids[index] if ids is not None else _row_id(rows[index], column)
                reason = self._too_large(rows[index], len(event))
                refused.append((model_id, text, method, first_seq + index, reason))
                continue
            batch = self.pending.get(key)
            if batch is not None and len(batch.data) + len(event) >= max_bytes:
                self._seal(key)
                batch = None
            if batch is None:
                batch = self.pending[key] = Batch(method, model_id, now)
                self.open.add(batch)
            batch.add(event_id, event, first_seq + index, column)
            added += 1
            if len(batch.ends) >= self.batch_size:
                self._seal(key)
        return added

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
            if batch.ends:
                self.ready.append(batch)
            else:
                self.open.discard(batch)
        self.held = still

    def _publishes_before(self, model_id: str, seq: Optional[int]) -> bool:
        return seq is not None and any(
            b.method == POST and b.model_id == model_id and b.ends and b.run_firsts[0] < seq
            for b in self.open
        )

    def resolve(self, batch: Batch, delivered: bool, remember: bool = True) -> None:
        """The batch is done: delivered, or failed for good (``remember``: drop the updates of
        its events later), or kept on disk (not ``remember``)."""
        self.open.discard(batch)
        self.outstanding -= len(batch)
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
            if batch.ends and batch.run_firsts[0] < lowest:
                lowest = batch.run_firsts[0]
        return lowest

    def take_all(self) -> list[Batch]:
        """Remove and return every unresolved batch and queued item (as batches): for the exit."""
        self.drain(float("-inf"))
        self.seal_due(0.0, force=True)
        # In capture order, so that on disk every update stays behind its publish.
        batches = sorted(self.open, key=lambda b: b.run_firsts[0] if b.ends else -1)
        self.open.clear()
        self.ready.clear()
        self.held.clear()
        self.outstanding = 0
        return batches


def _row_id(row: dict[str, Any], column: str) -> str:
    """The id a drained publish's row carries (a drawn one is a UUID there)."""
    value = row.get(column, "")
    return str(value) if isinstance(value, UUID) else id_text(value)
