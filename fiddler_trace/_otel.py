"""OpenTelemetry: tie an event to the caller's trace, with opentelemetry-api only.

When a valid span is current, the event gets ``trace_id`` (32 hex digits) and ``span_id`` (16 hex
digits) columns, and that span, the caller's, gets the attribute ``fiddler.event_id``: from the
trace one finds the event, from the event the trace. The library creates no spans of its own and
needs no SDK; without one every span is invalid and this costs one context lookup.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

from opentelemetry import context as otel_context
from opentelemetry import trace

__all__ = [
    "CONTEXT_VAR",
    "EVENT_ID_ATTRIBUTE",
    "SPAN_ID_COLUMN",
    "TRACE_ID_COLUMN",
    "add_trace_columns",
    "get_context",
    "tag",
]

EVENT_ID_ATTRIBUTE = "fiddler.event_id"
TRACE_ID_COLUMN = "trace_id"
SPAN_ID_COLUMN = "span_id"


def _context_variable() -> Optional[contextvars.ContextVar[Any]]:
    # get_current() is two Python calls around a context variable's get(); every captured
    # call asks, so take the variable itself when the runtime context is the default
    # contextvars one. Any other runtime context keeps the public function.
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    variable = getattr(runtime, "_current_context", None)
    return variable if isinstance(variable, contextvars.ContextVar) else None


#: The context variable that holds the current OpenTelemetry context, or None when a runtime
#: context of another kind is configured (then only :data:`get_context` reads it).
CONTEXT_VAR = _context_variable()
#: The current OpenTelemetry context; empty (falsy) when nothing, hence no span, is set.
get_context: Callable[[], Any] = (
    CONTEXT_VAR.get if CONTEXT_VAR is not None else otel_context.get_current
)
_get_span = trace.get_current_span


def add_trace_columns(columns: dict[str, Any]) -> Optional[trace.Span]:
    """Add the current span's ``trace_id`` and ``span_id`` to ``columns``.

    Returns the span, to :func:`tag` once the event is submitted, or None when no valid span is
    current. May raise (a broken SDK): callers treat that as a capture failure.
    """
    # An empty context holds no span: without tracing this is one context-variable read.
    if not get_context():
        return None
    span = _get_span()
    span_context = span.get_span_context()
    if not span_context.is_valid:
        return None
    columns[TRACE_ID_COLUMN] = f"{span_context.trace_id:032x}"
    columns[SPAN_ID_COLUMN] = f"{span_context.span_id:016x}"
    return span


def tag(span: trace.Span, event_ids: Union[str, Sequence[str]]) -> None:
    """Set ``fiddler.event_id`` on the caller's span: one id, or the list of a batch call."""
    span.set_attribute(
        EVENT_ID_ATTRIBUTE, event_ids if isinstance(event_ids, str) else list(event_ids)
    )
