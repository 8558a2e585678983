"""FiddlerHandler: log records that carry a mapping become events.

For code that already logs its predictions::

    logger.info("scored", extra={"fiddler": {"age": 41, "prediction": 0.7}})

The handler looks at one attribute of each record (``event_field``, default ``fiddler``) and
ignores records without it, so it can sit on the root logger. It never feeds on the library's own
traffic: records of the ``httpx``, ``httpcore`` and ``fiddler_trace`` loggers, records made on the
worker thread, and records logged while it is already capturing one on the same thread (a
redactor that logs, say) are skipped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, Optional

from fiddler_trace import _pipeline
from fiddler_trace._capture import (
    check_column,
    check_model_id,
    check_redact,
    check_sample_rate,
    deliver,
    describe,
    remember,
    report,
)
from fiddler_trace._ids import RECENT, EventId, draw, new_event_bits
from fiddler_trace._worker import THREAD_NAME

__all__ = ["MODEL_ID_FIELD", "FiddlerHandler"]

#: The record attribute naming the model when the handler has no ``model_id``.
MODEL_ID_FIELD = "fiddler_model_id"
_SKIPPED_LOGGERS = frozenset({"httpx", "httpcore", "fiddler_trace"})
_MAX_MODEL_IDS = 1024  # validated record model ids kept; cleared past that (ids are few)
_guard = threading.local()


class FiddlerHandler(logging.Handler):
    """A ``logging.Handler`` that turns records carrying a mapping into events.

    A record whose ``event_field`` attribute (set through ``extra=``) is a mapping becomes one
    event: the mapping's items are its columns; its timestamp is ``record.created``; its id is
    the mapping's ``event_id_column`` value if present, else a new UUID4; its model is the
    handler's ``model_id``, or the record's ``fiddler_model_id`` attribute. Other records are
    ignored. Usable from ``logging.config.dictConfig`` (``"class":
    "fiddler_trace.FiddlerHandler"`` plus these arguments).

    Args:
        model_id: the Fiddler model's id (a UUID); None: each record names it in
            ``fiddler_model_id``.
        event_field: the record attribute holding the event's columns. Default ``"fiddler"``.
        event_id_column: the model's event id column. Default ``"event_id"``.
        timestamp_column: the model's timestamp column. Default ``"timestamp"``.
        redact: column names to drop, or a callable ``columns -> columns``.
        sample_rate: fraction of records captured, 0.0 to 1.0; None: the global setting.
        level: the handler's level. Default ``NOTSET``.

    Raises:
        ConfigurationError: an argument or a ``FIDDLER_*`` variable is invalid (at construction).

    Thread-safe without the handler lock (it takes no lock of its own). It never raises into the
    logging call and never calls ``handleError``: a record it cannot capture (the field is not a
    mapping, no or a bad model id, a failing redactor) is counted in
    ``stats()["capture_errors"]`` and
    reported in a warning at most once a minute. :meth:`flush` returns at once; delivery is the
    background pipeline's, flushed at exit within ``exit_timeout``.
    """

    def __init__(
        self,
        model_id: Optional[str] = None,
        *,
        event_field: str = "fiddler",
        event_id_column: str = "event_id",
        timestamp_column: str = "timestamp",
        redact: Any = None,
        sample_rate: Optional[float] = None,
        level: int = logging.NOTSET,
    ) -> None:
        super().__init__(level)
        self.model_id = (
            None if model_id is None else check_model_id("FiddlerHandler(model_id=...)", model_id)
        )
        self.event_field = check_column("FiddlerHandler(event_field=...)", event_field)
        self.event_id_column = check_column("FiddlerHandler(event_id_column=...)", event_id_column)
        self.timestamp_column = check_column(
            "FiddlerHandler(timestamp_column=...)", timestamp_column
        )
        self.redact = check_redact("FiddlerHandler(redact=...)", redact)
        self.sample_rate = check_sample_rate("FiddlerHandler(sample_rate=...)", sample_rate)
        self._model_ids: dict[Any, str] = {}
        self._owners: dict[str, int] = {}  # model id -> RECENT.owner(model id, id column)
        _pipeline.settings()  # a bad FIDDLER_* variable fails here, at configuration time

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return f"<FiddlerHandler model_id={self.model_id!r} field={self.event_field!r} ({level})>"

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter and emit without the handler lock: :meth:`emit` is thread-safe on its own."""
        accepted = self.filter(record) if self.filters else True  # usually none: skip the call
        if accepted:
            if isinstance(accepted, logging.LogRecord):  # 3.12+: a filter may swap the record
                record = accepted
            self.emit(record)
        return bool(accepted)

    def emit(self, record: logging.LogRecord) -> None:
        """Capture ``record`` if it carries a mapping in ``event_field``; never raises."""
        fields = record.__dict__.get(self.event_field)
        if fields is None or not _pipeline.capturing:
            return
        thread_name = record.threadName or threading.current_thread().name
        name = record.name if type(record.name) is str else ""  # a hand-made record may lack it
        if name.partition(".")[0] in _SKIPPED_LOGGERS or thread_name == THREAD_NAME:
            return
        guard = _guard
        if getattr(guard, "active", False):
            return
        guard.active = True
        try:
            self._capture(record, fields)
        except Exception as error:
            report(
                f"handler:{record.name}",
                f"FiddlerHandler could not capture a record of logger {record.name!r}: "
                f"{describe(error)}",
            )
        finally:
            guard.active = False

    def _capture(self, record: logging.LogRecord, fields: Any) -> None:
        # The ABC check costs more than the rest of this method: skip it for a dict.
        if type(fields) is not dict and not isinstance(fields, Mapping):
            raise TypeError(
                f"its {self.event_field!r} attribute is a {type(fields).__name__}; accepted: a "
                "mapping of columns"
            )
        model_id = self.model_id or self._record_model(record)
        settings = _pipeline.settings()
        columns = dict(fields)
        given = columns.get(self.event_id_column)
        # A drawn id stays an int until the row is built (see _ids).
        event_id: EventId = new_event_bits() if given is None else str(given)
        rate = settings.sample_rate if self.sample_rate is None else self.sample_rate
        if rate < 1.0 and draw() >= rate:
            remember(event_id, None, self.event_id_column, settings)
            next(_pipeline.STATS.sampled_out)
            return
        deliver(
            model_id,
            event_id,
            record.created,
            columns,
            self.event_id_column,
            self.timestamp_column,
            self.redact,
            settings,
            self._owner(model_id),
        )

    def _owner(self, model_id: str) -> int:
        owner = self._owners.get(model_id)
        if owner is None:  # once per model: RECENT.owner builds a tuple key
            if len(self._owners) >= _MAX_MODEL_IDS:
                self._owners.clear()
            owner = self._owners[model_id] = RECENT.owner(model_id, self.event_id_column)
        return owner

    def _record_model(self, record: logging.LogRecord) -> str:
        given = record.__dict__.get(MODEL_ID_FIELD)
        if given is None:
            raise ValueError(
                "it names no model; accepted: FiddlerHandler(model_id=...) or "
                f"extra={{{MODEL_ID_FIELD!r}: '<uuid>', ...}}"
            )
        known = self._model_ids.get(given)
        if known is None:
            known = check_model_id(MODEL_ID_FIELD, given)
            if len(self._model_ids) >= _MAX_MODEL_IDS:
                self._model_ids.clear()
            self._model_ids[given] = known
        return known

    def flush(self) -> None:
        """Return at once: events are sent in the background.

        ``logging.shutdown`` calls this at exit and must not wait; the pipeline's own exit hook
        delivers what is left within ``exit_timeout``. Use :func:`fiddler_trace.flush` to wait.
        """
