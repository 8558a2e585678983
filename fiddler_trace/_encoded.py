"""A batch's events, as the encoded bytes that go in its request body, and its retry state.

The worker's memory per held event is what :class:`Batch` keeps: see its docstring. Splitting a
batch (413, a 400 bisected, updates of failed events taken out) and writing it to the spool need
where each event ends, found again from the bytes when a run was encoded at once
(:func:`find_ends`).
"""

from __future__ import annotations

import bisect
import itertools
import re
from array import array
from collections.abc import Iterable, Sequence
from operator import add
from typing import Any, Optional, Union

import orjson

__all__ = ["PATCH", "POST", "Batch", "find_ends"]

POST = "POST"
PATCH = "PATCH"


class Batch:
    """Events of one (method, model_id) sent in one request, with their retry state.

    Held per event: the encoded bytes, nothing else. The events are kept joined by commas, as
    they go in the request body (a pending batch keeps the parts it was given and joins them
    when first read: :attr:`data`). Where each event ends is known for events added one by one;
    for runs encoded at once it is found again on the rare paths that need it (splitting the
    batch, the spool): :meth:`offsets`. Sequence numbers come in runs of consecutive numbers (a
    run of the queue is added at once), kept as the index where each run starts and its first
    number. Event ids are kept as strings only for updates (:attr:`ids`) and replayed records;
    a publish's id is in its row, under its id column (:attr:`columns`): :meth:`event_ids`.
    """

    __slots__ = (
        "_data",
        "_ends",
        "_parts",
        "attempts",
        "columns",
        "created",
        "first_attempt",
        "ids",
        "method",
        "model_id",
        "nbytes",
        "origin",
        "run_firsts",
        "run_starts",
        "size",
    )

    def __init__(self, method: str, model_id: str, created: float) -> None:
        self.method = method
        self.model_id = model_id
        self.created = created
        self._data = b""
        self._parts: list[Union[bytes, memoryview]] = []  # not yet joined into _data
        self.nbytes = 0  # of the data, commas included
        self.size = 0  # events
        self._ends: Optional[array[int]] = array("q")  # None: unknown, found on demand
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
        return self.size

    def __repr__(self) -> str:
        return f"Batch({self.method} {self.model_id}, {self.size} events)"

    @property
    def data(self) -> bytes:
        """The encoded events joined by commas, as they go in the request body."""
        if self._parts:
            parts = self._parts
            if self._data:
                parts.insert(0, self._data)
            self._data = b",".join(parts)
            self._parts = []
        return self._data

    def parts(self) -> list[Union[bytes, memoryview]]:
        """:attr:`data` in parts, each of events joined by commas, without joining them: the
        request body is the one copy a send needs (a large buffer made and dropped per batch
        costs page faults once the allocator gives freed memory back)."""
        return [self._data, *self._parts] if self._data else list(self._parts)

    @property
    def first_seq(self) -> Optional[int]:
        """The sequence number of the first event; None for an empty batch."""
        return self.run_firsts[0] if self.size else None

    @property
    def last_seq(self) -> Optional[int]:
        """The sequence number of the last event; None for an empty batch."""
        if not self.size:
            return None
        return self.run_firsts[-1] + self.size - 1 - self.run_starts[-1]

    def seq(self, index: int) -> int:
        """The sequence number of the event at ``index``."""
        run = bisect.bisect_right(self.run_starts, index) - 1
        return self.run_firsts[run] + index - self.run_starts[run]

    @property
    def seqs(self) -> list[int]:
        """Every event's sequence number, in order (built on each call)."""
        return [self.seq(i) for i in range(self.size)]

    def _note_seqs(self, first_seq: int) -> None:
        """Events from ``first_seq`` on are about to be appended."""
        last = self.last_seq
        if last is None or first_seq != last + 1:
            self.run_starts.append(self.size)
            self.run_firsts.append(first_seq)

    def add(self, event_id: Optional[str], encoded: bytes, seq: int, column: str) -> None:
        """Append one encoded event (``event_id`` None: a publish, whose id is in its row)."""
        self._note(None if event_id is None else [event_id], column, 1)
        self._append(encoded, seq)

    def _append(self, encoded: Union[bytes, memoryview], seq: int) -> None:
        self._note_seqs(seq)
        self._parts.append(encoded)
        self.nbytes += len(encoded) + 1 if self.nbytes else len(encoded)
        if self._ends is not None:
            self._ends.append(self.nbytes)
        self.size += 1

    def extend(
        self,
        joined: list[Union[bytes, memoryview]],
        nbytes: int,
        count: int,
        first_seq: int,
        column: str,
        ids: Optional[list[str]],
    ) -> None:
        """Append ``count`` consecutive events (sequence numbers from ``first_seq``), given as
        parts of encoded events joined by commas, ``nbytes`` in all."""
        self._note(ids, column, count)
        self._note_seqs(first_seq)
        if self._ends is not None and len(joined) == count:  # one event a part: ends known
            start = self.nbytes + 1 if self.nbytes else 0
            lengths = itertools.accumulate(map(len, joined))
            self._ends.extend(map(add, lengths, itertools.count(start)))
        else:
            self._ends = None
        self._parts.extend(joined)
        self.nbytes += nbytes + 1 if self.nbytes else nbytes
        self.size += count

    def _note(self, ids: Optional[list[str]], column: str, n: int) -> None:
        """Keep the ids (or the id column) of ``n`` events about to be appended."""
        if ids is not None:
            if self.ids is None:
                self.ids = []
            self.ids.extend(ids)
            return
        columns = self.columns
        if not self.size:
            self.columns = column
        elif isinstance(columns, list):
            columns.extend([column] * n)
        elif columns != column:
            self.columns = [columns] * self.size + [column] * n

    def offsets(self) -> Optional[Sequence[int]]:
        """Where each event ends in :attr:`data`; None if the data cannot be cut into as many
        JSON values (only a value passed as an invalid ``orjson.Fragment`` does that)."""
        if self._ends is None:
            self._ends = find_ends(self.data, self.size)
        return self._ends

    def event(self, index: int) -> bytes:
        """The encoded event at ``index``; the batch's :meth:`offsets` must be known."""
        ends = self.offsets()
        assert ends is not None
        start = ends[index - 1] + 1 if index else 0
        return self.data[start : ends[index]]

    def event_ids(self) -> list[str]:
        """The id of each event, in order; "" for one that cannot be read back. A publish's
        ids are parsed from the data: for the rare paths only (a failure, the spool)."""
        if self.ids is not None:
            return self.ids
        rows: list[Any]
        try:
            rows = orjson.loads(b"[" + self.data + b"]")
        except orjson.JSONDecodeError:  # e.g. a value passed as an invalid orjson.Fragment
            if self.offsets() is None:
                return [""] * self.size
            rows = [_loads_or_none(self.event(i)) for i in range(self.size)]
        columns = self.columns
        ids = []
        for index, row in enumerate(rows[: self.size]):
            column = columns if isinstance(columns, str) else columns[index]
            value = row.get(column) if isinstance(row, dict) else None
            ids.append(value if isinstance(value, str) else "")
        return ids + [""] * (self.size - len(ids))

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

    def halves(self) -> Optional[tuple[Batch, Batch]]:
        """Two batches with the first and second half of the events, keeping the retry clock;
        None if the events cannot be told apart (see :meth:`offsets`)."""
        if self.offsets() is None:
            return None
        middle = self.size // 2
        return self._subset(range(middle)), self._subset(range(middle, self.size))

    def split_off(self, indexes: Iterable[int]) -> Batch:
        """Remove the events at ``indexes`` and return them as a batch of their own (all of
        them if the events cannot be told apart)."""
        taken = sorted(set(indexes))
        empty = Batch(self.method, self.model_id, self.created)
        if self.offsets() is None:
            gone, kept = Batch(self.method, self.model_id, self.created), empty
            for name in _EVENTS:
                setattr(gone, name, getattr(self, name))
        else:
            dropped = set(taken)
            gone = self._subset(taken)
            kept = self._subset([i for i in range(self.size) if i not in dropped])
        for name in _EVENTS:
            setattr(self, name, getattr(kept, name))
        return gone

    @classmethod
    def replayed(
        cls, method: str, model_id: str, ids: list[str], ends: Sequence[int], data: bytes
    ) -> Batch:
        """A batch of a spooled record: its events count as already resolved (seq -1)."""
        batch = cls(method, model_id, 0.0)
        batch.ids, batch._data, batch.nbytes, batch.size = ids, data, len(data), len(ends)
        starts = [0, *(end + 1 for end in ends[:-1])]
        if ends and ends[-1] == len(data) and all(s < e for s, e in zip(starts, ends)):
            batch._ends = array("q", ends)
        else:  # not written by this library: find them again if needed
            batch._ends = None
        batch.run_starts, batch.run_firsts = list(range(len(ends))), [-1] * len(ends)
        return batch


#: The attributes of a batch that hold its events.
_EVENTS = (
    "_data",
    "_parts",
    "_ends",
    "nbytes",
    "size",
    "ids",
    "columns",
    "run_starts",
    "run_firsts",
)


def _loads_or_none(encoded: bytes) -> Any:
    try:
        return orjson.loads(encoded)
    except orjson.JSONDecodeError:
        return None


# A JSON string, or a structural character: enough to find the commas between values.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},]', re.DOTALL)


def find_ends(data: bytes, count: int) -> Optional[array[int]]:
    """Where each of ``count`` JSON values joined by commas in ``data`` ends; None if the data
    is not that.

    Encoding again what orjson decodes gives orjson's bytes back (every event was encoded by
    orjson), which a comparison confirms; else, e.g. for an ``orjson.Fragment`` value with
    spaces, a scan for the commas outside strings, brackets and braces.
    """
    try:
        values = orjson.loads(b"[" + data + b"]")
    except orjson.JSONDecodeError:
        values = None
    if values is not None and len(values) == count:
        encoded = [orjson.dumps(value) for value in values]
        if b",".join(encoded) == data:
            lengths = map(len, encoded)
            return array("q", map(add, itertools.accumulate(lengths), itertools.count(0)))
    ends = array("q")
    depth = 0
    for token in _TOKEN.finditer(data):
        char = data[token.start()]
        if char in b"[{":
            depth += 1
        elif char in b"]}":
            depth -= 1
        elif char == ord(",") and depth == 0:
            ends.append(token.start())
    ends.append(len(data))
    return ends if len(ends) == count and depth == 0 else None
