"""Event ids: how they are made, which ones the caller can see, and which ones ``update()`` knows.

- :func:`new_event_id` makes an RFC 4122 version-4 UUID string from one ``getrandbits(128)``
  draw, several times faster than ``str(uuid.uuid4())``. The random source is this module's
  own ``random.Random`` (the host's ``random.seed()`` neither affects nor is affected by it),
  reseeded from ``os.urandom`` in a forked child so that parent and child never share ids.
- ``current_event_id()`` / ``last_event_id()`` / ``last_event_ids()`` read context variables:
  each thread and each asyncio task has its own, so ids never leak between concurrent tasks.
- :class:`RecentIds` remembers, for ``update()``, the model and event id column of ids captured
  by this process.
"""

from __future__ import annotations

import contextvars
import os
import random
import threading
from typing import Optional, Union

from fiddler_trace._clock import monotonic

__all__ = [
    "CURRENT",
    "LAST",
    "RECENT",
    "RecentIds",
    "current_event_id",
    "draw",
    "last_event_id",
    "last_event_ids",
    "new_event_id",
    "reset",
    "seed",
]

_rng = random.Random()
_getrandbits = _rng.getrandbits
#: A uniform draw in [0, 1) for sampling decisions.
draw = _rng.random

# Clear the version nibble and the two variant bits, then set version 4 and variant 10.
_KEEP_BITS = 0xFFFFFFFF_FFFF_0FFF_3FFF_FFFFFFFFFFFF
_V4_BITS = 0x00000000_0000_4000_8000_000000000000


def new_event_id() -> str:
    """A new random UUID4 as its canonical 36-character string. Thread-safe."""
    # int.to_bytes().hex() is the cheapest way from 128 bits to 32 hex digits in CPython.
    h = (_getrandbits(128) & _KEEP_BITS | _V4_BITS).to_bytes(16, "big").hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def seed(value: Optional[int] = None) -> None:
    """Reseed the id and sampling source: a fixed ``value`` makes sampling reproducible in tests;
    None draws a fresh seed from ``os.urandom``."""
    _rng.seed(value)


#: The event id of the monitored call running now in this context.
CURRENT: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "fiddler_trace_current_event_id", default=None
)
#: The id of the last finished monitored call in this context, or a tuple for a batch call.
LAST: contextvars.ContextVar[Union[str, tuple[str, ...], None]] = contextvars.ContextVar(
    "fiddler_trace_last_event_id", default=None
)


def current_event_id() -> Optional[str]:
    """The event id of the monitored call running now in this thread or asyncio task.

    Inside a monitored function it is the id its event will carry (for a sampled-out call too),
    so the function can hand it on (e.g. in a response header). None outside a monitored call,
    when capture is off, and inside a ``batch=True`` call (its rows get their ids afterwards).
    """
    return CURRENT.get()


def last_event_id() -> Optional[str]:
    """The event id of the last monitored call that finished in this thread or asyncio task.

    Set for sampled-out calls too (``update()`` on such an id is a silent no-op). None when no
    monitored call has finished here, when the last one raised (it produced no event), when
    capture is off, and after a ``batch=True`` call: use :func:`last_event_ids` for those.
    """
    last = LAST.get()
    return last if isinstance(last, str) else None


def last_event_ids() -> list[str]:
    """The event ids of the last monitored call that finished in this thread or asyncio task.

    One id per row for a ``batch=True`` call, a one-element list for any other call, and an empty
    list when there is none (see :func:`last_event_id`). A new list on each call.
    """
    last = LAST.get()
    if last is None:
        return []
    return [last] if isinstance(last, str) else list(last)


class RecentIds:
    """Ids captured by this process -> ``(model_id, id_column, monotonic time of capture)``.

    The hot path only does ``recent.current[event_id] = entry`` and a length check: a dict set is
    atomic under the GIL and costs ~0.1 µs, where a ``cachetools.TTLCache`` insert costs ~2 µs.
    Memory stays bounded by keeping ids in ``GENERATIONS`` dicts: when the newest holds
    ``max_ids / GENERATIONS`` ids the oldest is dropped whole. So ``update()`` knows at least
    the last ``max_ids * (GENERATIONS - 1) / GENERATIONS`` ids and never more than ``max_ids``;
    an id older than ``ttl`` seconds is unknown. The age is measured on the unfreezable
    monotonic clock, so a test that freezes time while capturing can still update afterwards.
    A ``model_id`` of None marks an id whose call was sampled out.
    """

    GENERATIONS = 4

    def __init__(self, max_ids: int, ttl: float) -> None:
        self.current: dict[str, tuple[Optional[str], str, float]] = {}
        self.older: tuple[dict[str, tuple[Optional[str], str, float]], ...] = ()
        self.max_ids = max_ids
        self.ttl = ttl
        self.generation_size = max(1, max_ids // self.GENERATIONS)
        #: The settings object the limits were taken from (compared by identity).
        self.sized_for: object = None
        self._lock = threading.Lock()

    def resize(self, max_ids: int, ttl: float, settings: object = None) -> None:
        """Apply new limits (after ``init()``); a smaller size applies at the next rotation."""
        self.max_ids, self.ttl = max_ids, ttl
        self.generation_size = max(1, max_ids // self.GENERATIONS)
        self.sized_for = settings

    def rotate(self) -> None:
        """Start a new generation, dropping the oldest. Cheap; called when the newest is full."""
        # Non-blocking: a thread that finds another one rotating just goes on (no hot-path wait).
        if not self._lock.acquire(blocking=False):
            return
        try:
            if len(self.current) < self.generation_size:
                return
            self.older = (self.current, *self.older)[: self.GENERATIONS - 1]
            self.current = {}
        finally:
            self._lock.release()

    def get(self, event_id: str) -> Optional[tuple[Optional[str], str, float]]:
        """The entry for ``event_id``, or None when unknown or older than ``ttl``."""
        entry = self.current.get(event_id)
        if entry is None:
            for generation in self.older:
                entry = generation.get(event_id)
                if entry is not None:
                    break
        if entry is None or monotonic() - entry[2] > self.ttl:
            return None
        return entry

    def __len__(self) -> int:
        return len(self.current) + sum(len(g) for g in self.older)

    def clear(self) -> None:
        """Forget every id."""
        self.current = {}
        self.older = ()
        self.sized_for = None

    def after_fork(self) -> None:
        """A fork can copy the lock in the held state; the child needs a fresh one."""
        self._lock = threading.Lock()


#: The process's registry; sized from the settings in force when the pipeline first reads them.
RECENT = RecentIds(100_000, 24 * 3600.0)


def reset() -> None:
    """Forget remembered ids, clear this context's current/last ids and reseed the random
    source from ``os.urandom`` (undoing a test's :func:`seed`). For ``testing.reset``."""
    _rng.seed()
    RECENT.clear()
    CURRENT.set(None)
    LAST.set(None)


def _after_fork_in_child() -> None:
    _rng.seed()
    RECENT.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
