"""The module-level functions of ``fiddler_trace``: configure, update, delete, flush, inspect."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from fiddler_trace import _ids, _pipeline
from fiddler_trace._capture import apply_redact, defer_update, describe, report
from fiddler_trace._client import EventsClient, TimeBound, delete_bodies
from fiddler_trace._config import Settings
from fiddler_trace._errors import ConfigurationError
from fiddler_trace._event import Update
from fiddler_trace._ids import (
    RECENT,
    current_event_id,
    last_event_id,
    last_event_ids,
)
from fiddler_trace._wire import MAX_DELETE_IDS, Job, check_model_id

__all__ = [
    "current_event_id",
    "delete_events",
    "flush",
    "init",
    "last_event_id",
    "last_event_ids",
    "shutdown",
    "stats",
    "update",
]


def init(**settings: Any) -> None:
    """Configure the library; anything not given comes from the ``FIDDLER_*`` environment.

    Takes the settings of the configuration reference by name (``enabled``, ``url``, ``token``,
    ``sample_rate``, ...; each also a ``FIDDLER_*`` variable). Calling it again replaces the
    configuration: the running pipeline is flushed (within ``exit_timeout``) and a new one starts
    with the next event. ``init(enabled=True)`` turns capture on at run time,
    ``init(enabled=False)`` off.

    Raises:
        ConfigurationError: a value is invalid or unusable (e.g. enabled without url or token);
            the message names the setting, the value and what is accepted. Nothing changes then.
    """
    _pipeline.configure(**settings)


def update(
    event_id: str,
    columns: Mapping[str, Any],
    *,
    model_id: Optional[str] = None,
    event_id_column: Optional[str] = None,
) -> None:
    """Queue an update of a published event (ground truth, a correction): ``PATCH /v3/events``.

    The update carries only the event id column and ``columns``; it is sent after the publish of
    its event was acknowledged. It returns at once (delivery is in the background, like events);
    an id this process has not yet remembered is looked for among the events still queued
    (~0.1 µs per queued event) unless ``model_id`` and ``event_id_column`` are both given.

    Args:
        event_id: the event's id, e.g. from :func:`fiddler_trace.last_event_id`.
        columns: the columns to set (Fiddler ignores inputs and outputs in updates).
        model_id: the model's id; may be omitted for events captured by this process in the last
            ``update_cache_ttl`` seconds (24 h by default, among the last ``update_cache_size``
            ids).
        event_id_column: the model's event id column; default: the one the event was captured
            with, else ``"event_id"``.

    Raises:
        TypeError: ``columns`` is not a mapping, or ``event_id`` not a string or UUID.
        ValueError: ``model_id`` is not a UUID, or it is omitted for an id this process does not
            know (pass ``model_id=``).

    When capture is off this does nothing (after checking its arguments). An update for a call
    that was sampled out is silently dropped: its event was never sent. The global ``redact``
    setting applies to ``columns``; a redactor failing drops the update (counted, logged).
    Thread-safe.
    """
    if isinstance(event_id, uuid.UUID):
        event_id = str(event_id)
    if not isinstance(event_id, str) or not event_id:
        raise TypeError(f"event_id is {event_id!r}; accepted: the event's id, a string")
    if not isinstance(columns, Mapping):
        raise TypeError(
            f"columns is a {type(columns).__name__}; accepted: a mapping of column -> value"
        )
    if model_id is not None:
        model_id = check_model_id(model_id)
    if event_id_column is not None and not (isinstance(event_id_column, str) and event_id_column):
        raise ValueError(f"event_id_column is {event_id_column!r}; accepted: a column name")
    settings = _pipeline.settings()  # first use in a process that only sends ground truth
    if not _pipeline.capturing:
        return
    changes: Optional[dict[str, Any]] = None
    running = _ids.running_call_of(event_id)
    if running is not None:
        # Inside the monitored call of this very event, or a call within it: its event is
        # submitted when that call returns, and this update must not overtake it.
        changes = _redacted(dict(columns), settings)
        if changes is None or defer_update(running, changes, model_id, event_id_column):
            return
        # An async call that returned meanwhile (this is another thread): sent as any other.
    known = RECENT.get(event_id)
    if known is None and (model_id is None or event_id_column is None):
        # Captured so recently that the worker has not taken it yet? (Nothing to look up when
        # both are given: an update from another process, the usual case, skips the search.)
        pipeline = _pipeline.current()
        known = None if pipeline is None else pipeline.buffer.find_queued(event_id)
        if known is None:  # taken since: the worker remembers an id before it lets go of it
            known = RECENT.get(event_id)
    if known is not None:
        known_model, known_column = known
        if known_model is None:
            return  # sampled out: there is no event to update
        model_id = model_id or known_model
        event_id_column = event_id_column or known_column
    elif model_id is None:
        raise ValueError(
            f"event id {event_id!r} was not captured by this process in the last "
            f"{settings.update_cache_ttl:g} s (or is no longer remembered), so its model is "
            "unknown; pass model_id='<the model's uuid>'"
        )
    if changes is None:
        changes = _redacted(dict(columns), settings)
    if changes is not None:
        _pipeline.submit(Update(model_id, event_id, changes, event_id_column or "event_id"))


def _redacted(changes: dict[str, Any], settings: Settings) -> Optional[dict[str, Any]]:
    if settings.redact is None:
        return changes
    try:
        return apply_redact(changes, settings.redact)
    except Exception as error:
        report("update:redact", f"an update was dropped: redact failed: {describe(error)}")
        return None


def delete_events(
    model_id: str,
    *,
    event_ids: Optional[Sequence[str]] = None,
    start_time: Optional[TimeBound] = None,
    end_time: Optional[TimeBound] = None,
    update_metrics: bool = False,
) -> Job:
    """Delete events of a model, by ids or by a time range: ``DELETE /v3/events``.

    Synchronous: one request through a short-lived :class:`~fiddler_trace.EventsClient` built from
    the settings (``url``, ``token``, ``timeout``, ``verify``); works whether or not capture is
    enabled. Events still queued in this process are not waited for: call
    :func:`fiddler_trace.flush` first if they must be included.

    Args:
        model_id: the model's id.
        event_ids: the ids to delete (at most 10,000; for more use ``EventsClient.delete``, which
            sends several requests and returns their jobs).
        start_time: start of the time range (inclusive): an aware datetime or ISO 8601 string
            with an offset.
        end_time: end of the time range (exclusive), as ``start_time``.
        update_metrics: recompute the model's metrics (with a time range only).

    Returns:
        The server's deletion job (``id``, ``name``).

    Raises:
        ValueError: before anything is sent: no filter (it would delete everything), ids and a
            range together, one end of a range alone, naive datetimes, ``update_metrics=True``
            with ids, more than 10,000 ids.
        ConfigurationError: ``url`` or ``token`` is not set.
        FiddlerAPIError: the server answered with an error.
        httpx.TransportError: the server could not be reached.
    """
    if event_ids is not None and not isinstance(event_ids, str):
        event_ids = list(event_ids)  # an iterator would be used up by the check below
    bodies = delete_bodies(
        model_id,
        event_ids=event_ids,
        start_time=start_time,
        end_time=end_time,
        update_metrics=update_metrics,
    )
    if len(bodies) > 1:
        count = sum(len(body["event_ids"]) for body in bodies)
        raise ValueError(
            f"{count:,} event ids need {len(bodies)} requests (at most "
            f"{MAX_DELETE_IDS:,} ids each) and delete_events returns one job; use "
            "EventsClient(url, token).delete(...), which chunks the ids and returns every job"
        )
    settings = _pipeline.settings()
    missing = [name for name in ("url", "token") if getattr(settings, name) is None]
    if missing:
        raise ConfigurationError(
            f"delete_events needs {' and '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not set; accepted: FIDDLER_URL and "
            "FIDDLER_TOKEN in the environment, or init(url=..., token=...)"
        )
    with EventsClient(
        settings.url or "",
        settings.token or "",
        timeout=settings.timeout,
        verify=settings.verify,
        transport=_pipeline._transport,
    ) as client:
        return client.delete(
            model_id,
            event_ids=event_ids,
            start_time=start_time,
            end_time=end_time,
            update_metrics=update_metrics,
        )[0]


def flush(timeout: Optional[float] = None) -> bool:
    """Wait until everything captured before the call is delivered or has failed for good.

    Includes any spool being replayed. Returns True only when all of it was delivered (also
    when there was nothing to send); False when something failed or ``timeout`` seconds passed
    (None: no limit). Never raises. Thread-safe.
    """
    return _pipeline.flush(timeout)


def shutdown(timeout: Optional[float] = None) -> None:
    """Flush within ``timeout`` seconds, stop the background thread and close connections.

    Also runs at interpreter exit, bounded by ``exit_timeout``. Events left undelivered are
    counted and logged. Capturing again afterwards starts a new pipeline. Never raises.
    """
    _pipeline.shutdown(timeout)


def stats() -> dict[str, Any]:
    """Counters of this process, in events (not requests); a new dict on each call.

    Keys: ``captured``, ``sent``, ``updated``, ``dropped`` (queue or spool full), ``failed``
    (delivery gave up), ``errors`` (monitored calls that raised), ``retried``, ``sampled_out``,
    ``spooled``, ``replayed``, ``truncated`` (strings cut at ``max_value_chars``),
    ``capture_errors``, ``queue_depth``, and ``last_error`` (text or None). ``capture_errors``
    counts calls and log records the library could not turn into an event (a failing
    ``inputs``/``outputs``/``metadata`` callable or redactor, a batch result of the wrong length,
    a record without a mapping or model); ``last_error`` says which. A forked child starts from
    zero.
    """
    return _pipeline.stats()
