"""What the decorator, the batch path and the log handler share: checking their arguments,
redacting, handing an event to the pipeline, and reporting what could not be captured.

Argument checks run when a monitor decorates or a handler is built (import time) and raise
:class:`ConfigurationError`. Everything else runs inside a monitored call or a log call and must
never raise into it: :func:`report` is how a failure becomes visible instead (``stats()``'s
``capture_errors`` and ``last_error``, and a warning at most once a minute per kind).
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import uuid
from collections.abc import Mapping
from typing import Any, Callable, Optional, Union

from fiddler_trace import _forks, _ids, _otel, _pipeline
from fiddler_trace._clock import monotonic
from fiddler_trace._config import Settings
from fiddler_trace._errors import ConfigurationError
from fiddler_trace._event import Update
from fiddler_trace._ids import EventId, id_text

__all__ = [
    "Redact",
    "apply_redact",
    "check_column",
    "check_model_id",
    "check_redact",
    "check_sample_rate",
    "defer_update",
    "deliver",
    "end_task_call",
    "release_updates",
    "remember",
    "report",
]

logger = logging.getLogger("fiddler_trace")
Redactor = Callable[[dict[str, Any]], Any]
#: Column names to drop, or a callable ``columns -> columns``; None: nothing to redact.
Redact = Union[frozenset, Redactor, None]

_otel_context = _otel.get_context
_REPORT_EVERY = 60.0  # seconds between two warnings of one kind
_reported: dict[str, float] = {}


#: The updates waiting for one call: ``(columns, model_id, id column)`` each.
Waiting = list[tuple[dict[str, Any], Optional[str], Optional[str]]]
#: Updates made inside the monitored call of their own event (or a call within it), by event
#: id: that event is submitted only when the call returns, so they wait for it here (see
#: :func:`release_updates`).
DEFERRED: dict[EventId, Waiting] = {}
#: Held while an update() finds its call still running and adds to :data:`DEFERRED`. An async
#: call's context, and so its running mark, can reach another thread (``to_thread``, an
#: executor) that the call does not wait for: when the call ends, it is marked done first, then
#: its waiting updates are taken under this lock if one waits or an update() is deciding
#: (:data:`_deciding`); an update() there so either waits for the call's end or finds the call
#: done and goes out as any other, never after the end took the waiting ones. Re-entrant: the
#: garbage collector may close a suspended monitored coroutine on a thread holding it, and that
#: call's end takes it again. Never held while host code runs.
DEFER_LOCK = threading.RLock()
#: How many update()s are inside :data:`DEFER_LOCK` (changed only under it).
_deciding = 0


def _after_fork_in_child() -> None:
    global DEFER_LOCK, _deciding
    # Only the forking thread lives on: the lock, if another thread held it at the fork, would
    # never be released here, and the updates deferred by other threads' calls would wait for
    # events that are never submitted here.
    DEFER_LOCK, _deciding = threading.RLock(), 0
    mine = set(_ids.running_ids())
    for event_id in [key for key in DEFERRED if key not in mine]:
        DEFERRED.pop(event_id, None)


_forks.in_child(_after_fork_in_child)


def defer_update(
    running: EventId, changes: dict[str, Any], model_id: Optional[str], column: Optional[str]
) -> bool:
    """Keep an update of the event of a call that was running (``running``, found by the caller
    with :func:`~fiddler_trace._ids.running_call_of`), until the call returns. False when the
    call has returned since (an async call, seen from another thread) with its event
    submitted: the update goes out as any other. True when it is kept, or dropped because that
    call made no event (it raised, or was sampled out), as an update made inside such a call
    is."""
    global _deciding
    with DEFER_LOCK:
        _deciding += 1
        try:
            if _ids.running_call_of(running) is not None:  # by the id itself: no formatting
                DEFERRED.setdefault(running, []).append((changes, model_id, column))
                return True
        finally:
            _deciding -= 1
    task = _ids.CURRENT.get()
    while task is not None and not (task.done and task.event_id == running):
        task = task.outer
    return task is not None and not task.sent


def end_task_call(entered: object, event_id: Optional[EventId], sent: bool) -> Optional[Waiting]:
    """An async call ends (:func:`~fiddler_trace._ids.leave_task`), its event submitted or not
    (``sent``): the updates still waiting for it, which no update() can add to any more."""
    _ids.leave_task(entered, sent)  # done: an update() that looks from now on finds it so
    if event_id is None or not (DEFERRED or _deciding):
        return None  # none waits, and no update() is deciding now: no lock for the usual case
    with DEFER_LOCK:  # one deciding now has finished
        return DEFERRED.pop(event_id, None)


def release_updates(
    event_id: EventId,
    model_id: str,
    id_column: str,
    submitted: bool,
    waiting: Optional[Waiting] = None,
) -> None:
    """The call of ``event_id`` ended: submit its deferred updates behind its event, or drop
    them (the call raised, or was sampled out: there is no event to update). ``waiting``: those
    already taken off :data:`DEFERRED` (:func:`end_task_call`)."""
    if waiting is None:
        waiting = DEFERRED.pop(event_id, None)
    if not waiting or not submitted:
        return
    text = id_text(event_id)
    for columns, own_model, own_column in waiting:
        _pipeline.submit(Update(own_model or model_id, text, columns, own_column or id_column))


def report(kind: str, message: str, *, count: bool = True) -> None:
    """Record that an event could not be captured; never raises.

    Counted in ``capture_errors`` (unless ``count`` is False), kept as ``last_error``, and
    logged as a warning at most once a minute per ``kind`` (e.g. ``"monitor:predict"``), so a
    failure on every call costs a dict lookup, not a log line.
    """
    try:
        stats = _pipeline.STATS
        if count:
            next(stats.capture_errors)
        stats.last_error = message
        now = monotonic()
        last = _reported.get(kind)
        if last is not None and now - last < _REPORT_EVERY:
            return
        _reported[kind] = now
        logger.warning("fiddler_trace: %s (repeats are not logged for a minute)", message)
    except Exception:  # reporting must not become a failure of its own
        pass


def forget_reports() -> None:
    """Let every kind of warning be logged again (``testing.reset``)."""
    _reported.clear()


def describe(error: BaseException) -> str:
    """``TypeName: message`` for a report; safe for any exception."""
    try:
        text = str(error)
    except Exception:
        text = ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# -- checks at decoration time -------------------------------------------------------------


def check_model_id(where: str, value: Any) -> str:
    """``value`` as a canonical UUID string, or ConfigurationError naming ``where``."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value.strip()))
        except ValueError:
            pass
    shown = value if isinstance(value, str) else f"a {type(value).__name__}"
    raise ConfigurationError(
        f"{where} is {shown!r}, which is not a UUID; accepted: the model's id as shown in "
        "Fiddler, e.g. '6f1c0f0e-1111-4222-8333-444455556666'"
    )


def check_sample_rate(where: str, value: Any) -> Optional[float]:
    """None, or a float in [0, 1]; else ConfigurationError."""
    if value is None:
        return None
    number = float(value) if isinstance(value, numbers.Real) else math.nan
    if isinstance(value, bool) or math.isnan(number) or not 0.0 <= number <= 1.0:
        raise ConfigurationError(
            f"{where} is {value!r}; accepted: a number from 0.0 (capture no call) to 1.0 "
            "(every call), or None for the global FIDDLER_TRACE_SAMPLE_RATE"
        )
    return number


def check_column(where: str, value: Any) -> str:
    """A non-empty column name; else ConfigurationError."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{where} is {value!r}; accepted: a non-empty column name")
    return value


def check_redact(where: str, value: Any) -> Redact:
    """None, a callable, or a collection of column names (as a frozenset)."""
    if value is None or callable(value):
        return value
    names = [value] if isinstance(value, str) else value
    try:
        result = frozenset(names)
    except TypeError:
        result = frozenset({None})
    if not all(isinstance(name, str) for name in result):
        raise ConfigurationError(
            f"{where} is {value!r}; accepted: a list of column names to drop, or a callable "
            "that takes the event's columns (a dict) and returns the columns to send"
        )
    return result


# -- on the caller's thread ----------------------------------------------------------------


def apply_redact(columns: dict[str, Any], redact: Redact) -> dict[str, Any]:
    """Drop the named columns, or pass the columns through the callable.

    Raises:
        TypeError: the callable returned something other than a mapping (the event is then not
            sent: an unredacted event must never leave).
    """
    if isinstance(redact, frozenset):
        for name in redact:
            columns.pop(name, None)
        return columns
    if redact is None:
        return columns
    result = redact(columns)
    if type(result) is dict:
        return result
    if isinstance(result, Mapping):
        return dict(result)
    raise TypeError(f"redact returned {type(result).__name__}; accepted: a mapping of columns")


def remember(
    event_id: EventId,
    model_id: Optional[str],
    id_column: str,
    owner: Optional[int] = None,
) -> None:
    """Let ``update()`` find ``event_id`` without a ``model_id``; None marks a sampled-out call.
    (The worker remembers the events it drains: this is for the events that never reach it.)

    ``owner``: ``RECENT.owner(model_id, id_column)`` if the caller keeps it (saves a lookup).
    """
    _ids.RECENT.add(event_id, model_id, id_column, owner)


def deliver(
    model_id: str,
    event_id: EventId,
    timestamp: float,
    columns: dict[str, Any],
    id_column: str,
    ts_column: str,
    redact: Redact,
    settings: Settings,
) -> None:
    """Add the trace columns, redact and submit the event (the worker remembers its id).

    The decorator's sync wrapper inlines this function: keep the two alike.
    May raise (a redactor, an OpenTelemetry SDK): the caller reports it.
    """
    # The empty-context check of add_trace_columns, inlined: most calls have no span.
    span = _otel.add_trace_columns(columns) if _otel_context() else None
    if redact is not None:
        columns = apply_redact(columns, redact)
    if settings.redact is not None:
        columns = apply_redact(columns, settings.redact)
    _pipeline.submit((model_id, event_id, timestamp, columns, id_column, ts_column))
    if span is not None:
        _otel.tag(span, id_text(event_id))
