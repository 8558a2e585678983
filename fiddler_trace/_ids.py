"""Event ids: how they are made, which ones the caller can see, and which ones ``update()`` knows.

- An id this library draws is an RFC 4122 version-4 UUID taken as one ``getrandbits(128)``
  draw with the version and variant bits set (:func:`new_event_bits`). The hot path keeps the
  raw draw; its version and variant bits are set on the worker when the row is built (which
  also remembers it for ``update()``), and it becomes the canonical 36-character string
  (:func:`format_event_id`) there or when someone asks (``last_event_id()``, a span's
  attribute). So an id is seen only as a string, and the caller's thread never formats one.
  The random source is this module's own ``random.Random`` (the host's ``random.seed()``
  neither affects nor is affected by it), reseeded from ``os.urandom`` in a forked child so
  that parent and child never share ids; :data:`seeded_in` lets a child forked without the
  fork hooks notice.
- ``last_event_id()`` / ``last_event_ids()`` read a context variable. ``current_event_id()``
  finds the innermost of a sync call, on the caller's stack, and an async or batch call, in a
  context variable (:func:`running_id`): each thread, greenlet and asyncio task sees only its
  own, so ids never leak between concurrent tasks.
- :class:`RecentIds` remembers, for ``update()``, the model and event id column of ids captured
  by this process (keyed by the int for drawn ids, by the string for ids the caller supplied).
  The worker fills it as it drains the queue; an id still queued is found in the queue
  (:meth:`~fiddler_trace._buffer.BatchBuffer.find_queued`).
"""

from __future__ import annotations

import contextvars
import os
import random
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from itertools import repeat
from types import CodeType, FrameType
from typing import Optional, Union, cast

from fiddler_trace._clock import monotonic
from fiddler_trace._native import speedups

__all__ = [
    "CURRENT",
    "ID_POOL",
    "KEEP_BITS",
    "LAST",
    "RECENT",
    "SYNC_CALL_FILE",
    "TASK_CODES",
    "V4_BITS",
    "EventId",
    "RecentIds",
    "TaskCall",
    "after_fork",
    "current_event_id",
    "draw",
    "draw_id",
    "enter_task",
    "format_event_id",
    "getrandbits",
    "id_bits",
    "id_text",
    "last_event_id",
    "last_event_ids",
    "leave_task",
    "mark_task_wrapper",
    "new_event_bits",
    "new_event_id",
    "refill_ids",
    "reset",
    "running_call_of",
    "running_id",
    "running_ids",
    "seed",
    "take_id",
]

#: An event id: its string, or the 128-bit int of a UUID4 this library drew (formatted later).
EventId = Union[str, int]

_rng = random.Random()  # sampling decisions
_id_rng = random.Random()  # ids: drawn ahead, so the sampling draws' sequence is not disturbed
#: The pid the random source was seeded in: a child forked without the fork hooks differs.
seeded_in = os.getpid()
#: ``getrandbits(128)`` is a new id: the worker sets its version bits. The bound methods stay
#: valid across :func:`seed` and the fork hook, which reseed the sources in place.
getrandbits = _id_rng.getrandbits
#: A uniform draw in [0, 1) for sampling decisions.
draw = _rng.random
#: Ids drawn ahead (128 random bits each) by the worker between its turns (:func:`refill_ids`),
#: so that the hot path takes one with ``take_id()``, a list's pop: ~1,000 instructions less on
#: the caller's thread than ``getrandbits(128)`` (measured), and each id drawn in a C loop. The
#: hot path draws its own when the pool is empty. Emptied by :func:`seed`, hence in a forked
#: child before its first id.
ID_POOL: list[int] = []
take_id = ID_POOL.pop
_POOL_SIZE = 8192


def draw_id() -> int:
    """A new id's 128 random bits: one drawn ahead if there is one."""
    try:
        return take_id()
    except IndexError:  # none left (the hot path tests the pool first, then pops like this)
        return getrandbits(128)


def refill_ids() -> None:
    """Top the id pool up once a quarter of it is used (on the worker, ~0.1 ms per 1,000 ids,
    during which the interpreter lock is held: at least 2,048 ids a time, not 50,000)."""
    missing = _POOL_SIZE - len(ID_POOL)
    if missing >= _POOL_SIZE // 4:
        ID_POOL.extend(map(getrandbits, repeat(128, missing)))


# Clear the version nibble and the two variant bits, then set version 4 and variant 10.
KEEP_BITS = 0xFFFFFFFF_FFFF_0FFF_3FFF_FFFFFFFFFFFF
V4_BITS = 0x00000000_0000_4000_8000_000000000000


def new_event_bits() -> int:
    """A new random UUID4 as its 128-bit int. Thread-safe."""
    return getrandbits(128) & KEEP_BITS | V4_BITS


def format_event_id(bits: int) -> str:
    """The canonical 36-character string of a drawn id: a UUID4 given as its 128-bit int, with
    or without its version and variant bits set (they are set here)."""
    bits = bits & KEEP_BITS | V4_BITS
    # int.to_bytes().hex() is the cheapest way from 128 bits to hex digits in CPython; with a
    # dash every 4 digits ("aaaa-bbbb-cccc-dddd-eeee-ffff-gggg-hhhh"), dropping the 3 dashes a
    # UUID has not takes one join of 4 slices: ~9% fewer instructions than 5 slices (measured).
    h = bits.to_bytes(16, "big").hex("-", 2)
    return "".join((h[:4], h[5:29], h[30:34], h[35:]))


def new_event_id() -> str:
    """A new random UUID4 as its canonical 36-character string. Thread-safe."""
    return format_event_id(getrandbits(128) & KEEP_BITS | V4_BITS)


def id_text(event_id: EventId) -> str:
    """An event id as the string everyone sees."""
    if type(event_id) is int:
        return format_event_id(event_id)
    return event_id  # type: ignore[return-value]


def seed(value: Optional[int] = None) -> None:
    """Reseed the id and sampling sources and empty the id pool: a fixed ``value`` makes
    sampling reproducible in tests; None draws fresh seeds from ``os.urandom``."""
    global seeded_in
    ID_POOL.clear()
    _rng.seed(value)
    _id_rng.seed(None if value is None else ~value)  # not the sampling draws' sequence
    seeded_in = os.getpid()


#: The file name of every compiled sync wrapper (:mod:`fiddler_trace._compiled`), this very
#: string object, which the wrapper's code keeps: the stack walk tests it by identity. A sync call
#: cannot be suspended, so the call running now in this thread (or greenlet) is on the caller's
#: stack: its wrapper's frame holds the call's ``event_id`` as a local, and :func:`running_id`
#: finds it there. The hot path then stores nothing per call to say which
#: call is running: a per-thread entry set and cleared on every call cost ~1,500 instructions.
SYNC_CALL_FILE = "<fiddler_trace monitor>"
#: The sync calls the C wrapper took (:mod:`fiddler_trace._speedups`), which has no frame of its
#: own to hold the id: ``entered_at(frame, depth=0)`` is the id of the innermost one running that
#: the frame made (the monitored function's frame has it as its ``f_back``; depth 1: the one
#: around it, made from the same frame by a caller in C), or None. None without C.
_entered_at: Optional[Callable[..., Optional[EventId]]] = (
    speedups.entered_at if speedups is not None else None
)
#: The code of the async and ``batch=True`` wrappers, which mark the call running in
#: :data:`CURRENT` (they can be suspended, and the tasks they start run on stacks of their own).
TASK_CODES: set[CodeType] = set()
_task_files: tuple[str, ...] = ()  # their files' names: a cheap first test per frame


def mark_task_wrapper(code: CodeType) -> None:
    """Register the code of a wrapper that marks its call in :data:`CURRENT`."""
    global _task_files
    TASK_CODES.add(code)
    if code.co_filename not in _task_files:
        _task_files = (*_task_files, code.co_filename)


class TaskCall:
    """An async or ``batch=True`` call, marked running in its context (:data:`CURRENT`)."""

    __slots__ = ("done", "event_id", "outer", "sent", "within")

    def __init__(
        self,
        event_id: Optional[EventId],
        within: Optional[tuple[int, EventId]],
        outer: Optional[TaskCall],
    ) -> None:
        self.event_id = event_id  # None for a batch call: its rows get their ids afterwards
        #: The innermost sync call running on the stack when this call began, if any, as
        #: ``(id of its wrapper's frame, its event id)``: this call is inside that one.
        self.within = within
        self.outer = outer  # the task call running in this context when this one began
        #: The call has returned. A task it started may run on, with this entry in its context.
        self.done = False
        #: Set before ``done``: the call's event was submitted (False: it raised, was sampled
        #: out, or its capture failed), for an update() that finds the call over.
        self.sent = False


#: For async and ``batch=True`` calls, which can be suspended: the innermost one running in this
#: context. A context variable: the tasks such a call starts (``create_task``, ``gather``,
#: ``to_thread``) inherit it, and skip it once the call is done.
CURRENT: contextvars.ContextVar[Optional[TaskCall]] = contextvars.ContextVar(
    "fiddler_trace_current_event_id", default=None
)
#: The id of the last finished monitored call in this context, or a tuple for a batch call.
LAST: contextvars.ContextVar[Union[EventId, tuple[str, ...], None]] = contextvars.ContextVar(
    "fiddler_trace_last_event_id", default=None
)


def current_event_id() -> Optional[str]:
    """The event id of the monitored call running now in this thread or asyncio task.

    Inside a monitored function it is the id its event will carry (for a sampled-out call too),
    so the function can hand it on (e.g. in a response header). None outside a monitored call,
    when capture is off, and inside a ``batch=True`` call (its rows get their ids afterwards).
    """
    current = running_id()
    return None if current is None else id_text(current)


def running_id() -> Optional[EventId]:
    """The id of the innermost monitored call running in this thread or task (None in a
    ``batch=True`` call).

    Walks the caller's stack up to the first monitored call's wrapper: a sync call's frame holds
    its id; an async or batch call's means :data:`CURRENT` is the innermost. A sync call found
    first may still be the outer one: code in a task that an async call started, the async call
    itself started inside that sync call (an event loop run by a sync monitored function), runs
    on the loop's stack, below which the sync call's frame lies; the task call then says it
    began within that sync call.
    """
    task = _undone(CURRENT.get())
    found = _next_call(sys._getframe(1))
    while found is not None:
        frame, event_id, entered = found
        if event_id is not None:  # a sync call's
            if task is not None and task.within == (id(frame), event_id):
                return task.event_id
            return event_id
        if task is not None:  # an async or batch call's: the task call
            return task.event_id
        found = _next_after(frame, entered)
    return None if task is None else task.event_id


def _next_call(
    frame: Optional[FrameType],
) -> Optional[tuple[FrameType, Optional[EventId], Optional[int]]]:
    """From ``frame`` up the stack, the first monitored call captured: ``(frame, event id,
    entered)`` for a sync call, ``(frame, None, None)`` for an async or batch call (its id is in
    :data:`CURRENT`); None at the bottom. ``entered`` says where a sync call's id was found:
    n > 0, the n-th innermost entered by the C wrapper under the frame that made the call; 0,
    the Python wrapper's own frame. Continue a walk with :func:`_next_after`. File names are
    tested by identity first: ~0.1 µs a frame."""
    sync_file, task_files, entered_at = SYNC_CALL_FILE, _task_files, _entered_at
    while frame is not None:
        if entered_at is not None:  # a call the frame made is inside whatever the frame is
            event_id = entered_at(frame)
            if event_id is not None:
                return frame, event_id, 1
        found = _own_call(frame, sync_file, task_files)
        if found is not None:
            return found
        frame = frame.f_back
    return None


def _next_after(
    frame: FrameType, entered: Optional[int]
) -> Optional[tuple[FrameType, Optional[EventId], Optional[int]]]:
    """:func:`_next_call` past the call it found at ``frame`` (``entered`` as it said)."""
    if entered:  # a call the frame made: one around it made from there too, or the frame's own
        assert _entered_at is not None
        event_id = _entered_at(frame, entered)
        if event_id is not None:
            return frame, event_id, entered + 1
        found = _own_call(frame, SYNC_CALL_FILE, _task_files)
        if found is not None:
            return found
    return _next_call(frame.f_back)


def _own_call(
    frame: FrameType, sync_file: str, task_files: tuple[str, ...]
) -> Optional[tuple[FrameType, Optional[EventId], Optional[int]]]:
    """The monitored call whose Python wrapper ``frame`` is, if it is one and captured."""
    code = frame.f_code
    filename = code.co_filename
    if filename is sync_file:
        event_id = frame.f_locals.get("event_id")
        if event_id is not None:  # None: this call is not captured (its capture failed)
            return frame, event_id, 0
    elif (
        filename in task_files
        and code in TASK_CODES
        and frame.f_locals.get("state") is not None  # None: not captured
    ):
        return frame, None, None
    return None


def _undone(task: Optional[TaskCall]) -> Optional[TaskCall]:
    """``task``, or the call it began in if it is done (a task that outlived the call that
    started it carries that call in its context)."""
    while task is not None and task.done:
        task = task.outer
    return task


def running_ids() -> list[EventId]:
    """The ids of every monitored call running in this thread or task (for the fork hook)."""
    return list(_running_calls(sys._getframe(1)))


def running_call_of(event_id: Union[str, EventId]) -> Optional[EventId]:
    """The id of a monitored call running in this thread or task, the innermost or any around
    it, whose event is ``event_id`` (its string, or the id itself); None when there is none.
    Stops at the first match: an update() of the call it is made in walks no further than
    :func:`running_id` does."""
    text = type(event_id) is str
    for running in _running_calls(sys._getframe(1)):
        if (id_text(running) if text else running) == event_id:
            return running
    return None


def _running_calls(frame: Optional[FrameType]) -> Iterator[EventId]:
    """The ids of the monitored calls running in this thread or task: the task calls not done
    (no stack walk), then the sync calls on the stack from ``frame`` up."""
    task = _undone(CURRENT.get())
    while task is not None:
        if task.event_id is not None and not task.done:
            yield task.event_id
        task = task.outer
    found = _next_call(frame)
    while found is not None:
        frame, event_id, entered = found
        if event_id is not None:
            yield event_id
        found = _next_after(frame, entered)


def enter_task(event_id: Optional[EventId]) -> object:
    """Mark an async or ``batch=True`` call as running in this context; returns what
    :func:`leave_task` takes. Called by the call's wrapper, whose caller's stack it walks for
    the innermost sync call this one began in (~0.1 µs a frame, once per call)."""
    previous = CURRENT.get()
    outer = _undone(previous)
    within: Optional[tuple[int, EventId]] = None
    # From the wrapper's caller; None when the wrapper is the first frame of its thread (a
    # thread started from C calls it, or a coroutine is stepped from C).
    found = _next_call(sys._getframe(1).f_back)
    while found is not None:
        frame, sync_id, entered = found
        if sync_id is not None:
            within = (id(frame), sync_id)  # the frame: two calls may share an id
            break
        if outer is not None:  # no sync call between that task call and this one
            within = outer.within
            break
        found = _next_after(frame, entered)
    entry = TaskCall(event_id, within, outer)
    CURRENT.set(entry)
    return entry, previous


def leave_task(entered: object, sent: bool = False) -> None:
    """Undo :func:`enter_task`: the call is done (its event submitted, or not: ``sent``), also
    for the tasks it started (by value, not by token: a coroutine may be driven from more than
    one context)."""
    entry, previous = cast("tuple[TaskCall, Optional[TaskCall]]", entered)
    entry.sent = sent
    entry.done = True
    CURRENT.set(previous)


def last_event_id() -> Optional[str]:
    """The event id of the last monitored call that finished in this thread or asyncio task.

    Set for sampled-out calls too (``update()`` on such an id is a silent no-op). None when no
    monitored call has finished here, when the last one raised (it produced no event), when
    capture is off, and after a ``batch=True`` call: use :func:`last_event_ids` for those.
    """
    last = LAST.get()
    if type(last) is int:
        return format_event_id(last)
    return last if isinstance(last, str) else None


def last_event_ids() -> list[str]:
    """The event ids of the last monitored call that finished in this thread or asyncio task.

    One id per row for a ``batch=True`` call, a one-element list for any other call, and an empty
    list when there is none (see :func:`last_event_id`). A new list on each call.
    """
    last = LAST.get()
    if last is None:
        return []
    if isinstance(last, tuple):
        return list(last)
    return [id_text(last)]


class RecentIds:
    """Ids captured by this process -> ``(model_id, id_column)``, for ``update()``.

    The worker writes one entry per event it drains: ``RECENT.current[event_id] = owner``, where
    the owner is a small int standing for the ``(model_id, id_column)`` pair (from
    :meth:`owner`), and checks the generation's length once per run of events; the paths that
    do not go through the queue (a full buffer, the test sink) call :meth:`add`, a sampled-out
    call ``_capture.remember``. Keys are ints (drawn ids, remembered in Python) or strings (ids
    the caller supplied, and drawn ids the C drain loop remembers by the string it formats
    anyway: 36 characters take ~40 bytes more than the int), values small ints: the garbage
    collector tracks neither, hence not the dict, so holding 100,000 ids costs a full
    collection nothing. A ``model_id`` of None marks an id whose call was sampled out.

    Memory stays bounded by keeping ids in ``GENERATIONS`` generations: when the newest holds
    ``max_ids / GENERATIONS`` ids it is closed and the oldest dropped whole. So ``update()``
    knows at least the last ``max_ids * (GENERATIONS - 1) / GENERATIONS`` ids, and at most
    ``max_ids`` plus one run of events (a batch).

    Age is kept per generation, not per id (a clock read per captured call would be half the
    cost of remembering it): a closed generation's ids are forgotten ``ttl`` seconds after it
    was closed, and the open one's are kept. So an id is known for at least ``ttl`` seconds
    after its capture, and longer when traffic is low. The clock is the unfreezable monotonic
    one, so a test that freezes time while capturing can still update afterwards.
    """

    GENERATIONS = 4

    def __init__(self, max_ids: int, ttl: float) -> None:
        #: The open generation: event id -> owner. Replaced whole when it is closed.
        self.current: dict[EventId, int] = {}
        #: Closed generations, newest first, with the time each was closed.
        self.older: tuple[tuple[dict[EventId, int], float], ...] = ()
        self.max_ids = max_ids
        self.ttl = ttl
        self.generation_size = max(1, max_ids // self.GENERATIONS)
        self._lock = threading.Lock()
        self._owners: list[tuple[Optional[str], str]] = []  # kept by clear(): callers hold them
        self._owner_of: dict[tuple[Optional[str], str], int] = {}

    def owner(self, model_id: Optional[str], id_column: str) -> int:
        """The small int that stands for ``(model_id, id_column)`` in the generations."""
        key = (model_id, id_column)
        index = self._owner_of.get(key)
        if index is None:
            with self._lock:
                index = self._owner_of.get(key)
                if index is None:
                    index = self._owner_of[key] = len(self._owners)
                    self._owners.append(key)
        return index

    def add(
        self,
        event_id: EventId,
        model_id: Optional[str],
        id_column: str,
        owner: Optional[int] = None,
    ) -> None:
        """Remember one id (a drawn id's int with or without its version bits); the worker
        remembers the ids it drains inline, the other paths call this. ``owner``:
        :meth:`owner` of ``(model_id, id_column)`` if the caller keeps it (saves a lookup)."""
        if type(event_id) is int:
            event_id = event_id & KEEP_BITS | V4_BITS
        ids = self.current
        ids[event_id] = self.owner(model_id, id_column) if owner is None else owner
        if len(ids) >= self.generation_size:
            self.rotate()

    def resize(self, max_ids: int, ttl: float) -> None:
        """Apply new limits (``init()``); a smaller size applies at the next rotation."""
        self.max_ids, self.ttl = max_ids, ttl
        self.generation_size = max(1, max_ids // self.GENERATIONS)

    def rotate(self) -> None:
        """Close the open generation if it is full, dropping the oldest.

        Cheap; called when the open generation is full.
        """
        # Non-blocking: a thread that finds another one rotating just goes on (no wait).
        if not self._lock.acquire(blocking=False):
            return
        try:
            if len(self.current) < self.generation_size:
                return
            self.older = ((self.current, monotonic()), *self.older)[: self.GENERATIONS - 1]
            self.current = {}
        finally:
            self._lock.release()

    def get(self, event_id: str) -> Optional[tuple[Optional[str], str]]:
        """``(model_id, id_column)`` of ``event_id``; None when unknown or expired."""
        now = monotonic()
        others: Optional[tuple[EventId, ...]] = None
        for generation, closed in ((self.current, now), *self.older):
            if now - closed > self.ttl:
                break  # this one and every older one expired
            owner = generation.get(event_id)
            if owner is None:
                if others is None:
                    others = _other_keys(event_id)
                for key in others:
                    owner = generation.get(key)
                    if owner is not None:
                        break
            if owner is not None:
                return self._owners[owner]
        return None

    def __len__(self) -> int:
        return len(self.current) + sum(len(generation) for generation, _ in self.older)

    def clear(self) -> None:
        """Forget every id."""
        self.current = {}
        self.older = ()

    def after_fork(self) -> None:
        """A fork can copy the lock in the held state; the child needs a fresh one."""
        self._lock = threading.Lock()


def _other_keys(text: str) -> tuple[EventId, ...]:
    """The other keys an id given as ``text`` may be remembered by, when it is a UUID: its int
    (an id this library drew, remembered in Python) and its canonical string (one drawn and
    remembered by the C drain loop, or supplied by the caller in another form)."""
    try:
        value = uuid.UUID(text)
    except (ValueError, TypeError, AttributeError):
        return ()
    canonical = str(value)
    return (value.int,) if canonical == text else (value.int, canonical)


def id_bits(text: str) -> Optional[int]:
    """The 128-bit int of an id that is a UUID string; None for any other id."""
    try:
        return uuid.UUID(text).int
    except (ValueError, TypeError, AttributeError):
        return None


#: The process's registry; sized from the settings in force when the pipeline first reads them.
RECENT = RecentIds(100_000, 24 * 3600.0)


def reset() -> None:
    """Forget remembered ids, clear this context's current/last ids and reseed the random
    source from ``os.urandom`` (undoing a test's :func:`seed`). For ``testing.reset``."""
    seed()
    RECENT.clear()
    CURRENT.set(None)
    LAST.set(None)


def after_fork() -> None:
    """In a forked child: a random source of its own."""
    seed()
    RECENT.after_fork()
