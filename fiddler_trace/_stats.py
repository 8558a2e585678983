"""Counters behind ``stats()``: cheap to bump from any thread, consistent to read.

Counters bumped on the caller's thread are ``itertools.count`` objects: ``next()`` on one is a
single C call that the GIL makes atomic, where ``x += 1`` on a shared int can lose updates. The
worker's own counters are plain ints, written by that one thread only.
"""

from __future__ import annotations

import collections
import itertools
from typing import Any, Optional

__all__ = ["HOT_COUNTERS", "WORKER_COUNTERS", "Stats", "read_count"]

HOT_COUNTERS = ("captured", "dropped", "errors", "sampled_out", "capture_errors")
WORKER_COUNTERS = (
    "sent",
    "updated",
    "failed",
    "retried",
    "spooled",
    "replayed",
    "truncated",
)


def read_count(counter: itertools.count) -> int:  # type: ignore[type-arg]
    """The next value of ``counter`` without advancing it."""
    # count's repr is "count(N)": the only way to read it without advancing it.
    return int(repr(counter)[6:-1])


class Stats:
    """All counters of one pipeline, in events (not requests)."""

    def __init__(self) -> None:
        # Publishes handed to a pipeline or the test sink. Counted where an event ends up, not
        # on the caller's thread: the worker counts those it takes off the queue, stats() adds
        # those still queued, submit() and the buffer the others (test sink, buffer full, no
        # pipeline), and a replaced pipeline those it never took.
        self.captured = itertools.count()
        self.dropped = itertools.count()
        self.errors = itertools.count()
        self.sampled_out = itertools.count()
        # Events we could not build (a failing inputs/outputs/metadata callable or redactor, a
        # batch result of the wrong length, an unusable log record); ``errors`` counts only
        # monitored calls that raised.
        self.capture_errors = itertools.count()
        self.sent = 0
        self.updated = 0
        self.failed = 0
        self.retried = 0
        self.spooled = 0
        self.replayed = 0
        self.truncated = 0  # strings cut at max_value_chars
        self.last_error: Optional[str] = None

    @staticmethod
    def add(counter: itertools.count, n: int) -> None:  # type: ignore[type-arg]
        """Advance a hot counter by ``n`` (in one C loop)."""
        if n > 0:
            collections.deque(itertools.islice(counter, n), maxlen=0)

    def snapshot(self, queue_depth: int, queued_publishes: int = 0) -> dict[str, Any]:
        """The counters as a plain dict, for ``stats()``; ``queued_publishes``: the publishes
        in the queue, captured and not counted yet (see :attr:`captured`)."""
        out: dict[str, Any] = {name: read_count(getattr(self, name)) for name in HOT_COUNTERS}
        out["captured"] += queued_publishes
        out.update({name: getattr(self, name) for name in WORKER_COUNTERS})
        out["queue_depth"] = queue_depth
        out["last_error"] = self.last_error
        return out
