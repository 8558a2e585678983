"""Helpers for tests of code that uses fiddler_trace: keep events in memory instead of sending.

In a test::

    from fiddler_trace import testing

    def test_scoring_is_monitored():
        with testing.capture() as events:
            predict(41, 72000.0, "EU")
        assert events[0]["prediction"] == 0.7
        assert events.models == ["6f1c0f0e-1111-4222-8333-444455556666"]

With pytest the ``fiddler_events`` fixture does the same for the whole test (it is registered
when fiddler-trace is installed, and resets the library's state before and after the test)::

    def test_feedback_is_sent(fiddler_events):
        predict(41, 72000.0, "EU")
        fiddler_trace.update(fiddler_trace.last_event_id(), {"defaulted": False})
        assert fiddler_events.updates[0]["defaulted"] is False

Tests that call ``fiddler_trace.init()`` or change ``FIDDLER_*`` variables should call
:func:`reset` before and after (an autouse fixture), so that no state leaks between them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Union

from fiddler_trace import _capture, _ids, _pipeline
from fiddler_trace._event import Event, Update, publish_row, update_row

__all__ = ["CapturedEvents", "capture", "reset"]


class CapturedEvents(list):  # type: ignore[type-arg]
    """The events captured inside :func:`capture`, as the rows Fiddler would store.

    It is a list of dicts, one per event in capture order: the captured columns plus the event
    id and timestamp columns (the timestamp as sent: UTC ISO 8601 with milliseconds and ``Z``).

    Attributes:
        models: the model id of each event, index for index.
        updates: the rows of ``update()`` calls (event id column and changed columns), in order.
        update_models: the model id of each update, index for index.
    """

    def __init__(self) -> None:
        super().__init__()
        self.models: list[str] = []
        self.updates: list[dict[str, Any]] = []
        self.update_models: list[str] = []
        self._lock = threading.Lock()

    def for_model(self, model_id: str) -> list[dict[str, Any]]:
        """The events of one model, in capture order (a new list)."""
        with self._lock:
            return [row for row, model in zip(self, self.models) if model == model_id]

    def keep(self, item: Union[Event, tuple, Update]) -> bool:
        """Store the row of an event or an update: the sink :func:`capture` installs.

        Called by the library, not by tests. Thread-safe; always returns True (kept).
        """
        if not isinstance(item, Update):  # a publish: an Event or a plain tuple of its fields
            row = publish_row(item)
            with self._lock:
                self.append(row)
                self.models.append(item[0])
        else:
            row = update_row(item)
            with self._lock:
                self.updates.append(row)
                self.update_models.append(item.model_id)
        return True


@contextmanager
def capture() -> Iterator[CapturedEvents]:
    """Keep events and updates in memory instead of sending them, inside the ``with`` block.

    Works whether or not ``FIDDLER_TRACE_ENABLED`` is set; capture, sampling, redaction and
    ids work as in production, only delivery is replaced. On exit the previous destination comes
    back (nested blocks each keep their own events). Yields the :class:`CapturedEvents` list.
    """
    events = CapturedEvents()
    previous = _pipeline.install_sink(events.keep)
    try:
        yield events
    finally:
        _pipeline.install_sink(previous)


def reset() -> None:
    """Forget all library state, so that one test cannot affect the next.

    Resets the settings (re-read from the environment on next use), the pipeline (stopped
    without waiting for delivery), the counters of ``stats()``, installed test sinks, the ids
    ``update()`` remembers, this context's current and last event ids, and the rate limit of
    warnings. For tests only, never for production code.
    """
    _pipeline.reset()
    _ids.reset()
    _capture.forget_reports()
    _capture.DEFERRED.clear()
