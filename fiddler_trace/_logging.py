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

from fiddler_trace import _forks, _otel, _pipeline
from fiddler_trace._capture import (
    apply_redact,
    check_column,
    check_model_id,
    check_redact,
    check_sample_rate,
    describe,
    remember,
    report,
)
from fiddler_trace._config import Settings
from fiddler_trace._encode import keep_whole
from fiddler_trace._ids import EventId, draw, draw_id, id_text
from fiddler_trace._worker import THREAD_NAME

__all__ = ["MODEL_ID_FIELD", "FiddlerHandler"]

#: The record attribute naming the model when the handler has no ``model_id``.
MODEL_ID_FIELD = "fiddler_model_id"
_SKIPPED_LOGGERS = frozenset({"httpx", "httpcore", "fiddler_trace"})
_MAX_MODEL_IDS = 1024  # validated record model ids kept; cleared past that (ids are few)
_MAX_LOGGER_NAMES = 4096  # logger names whose verdict is kept; cleared past that
_get_ident = threading.get_ident
_current_thread = threading.current_thread
_otel_context = _otel.get_context

#: Logger name -> whether its records are the library's own traffic. A dict lookup per record
#: where splitting the name costs a tuple and two strings.
_skipped_names: dict[Any, bool] = {}
#: Idents of the threads capturing a record in a way that may run the host's code (a redactor,
#: a ``Mapping``'s methods, an OpenTelemetry SDK): what that code logs is skipped. Usually
#: empty, so the plain record pays one truth test, not a thread-local read and two writes.
_busy: set[int] = set()
#: The handler's attributes its plan (see FiddlerHandler._make_plan) is derived from.
_PLANNED = frozenset({"model_id", "event_id_column", "timestamp_column", "redact", "sample_rate"})
#: settings, model_id, id column, timestamp column, sample rate, column names to drop, whether
#: the handler has a model_id (else each record names its model) and whether no redactor needs
#: calling.
_Plan = tuple[Settings, str, str, str, float, Optional[frozenset], bool, bool]
_NOT_A_DICT = object()  # stands for the id of a field that is not a dict: never a plain record


def _skipped_name(name: Any) -> bool:
    skipped = type(name) is str and name.partition(".")[0] in _SKIPPED_LOGGERS
    try:
        if len(_skipped_names) >= _MAX_LOGGER_NAMES:
            _skipped_names.clear()
        _skipped_names[name] = skipped
    except TypeError:  # an unhashable name on a hand-made record: decided, not kept
        pass
    return skipped


def _after_fork_in_child() -> None:
    # Only the forking thread lives on; another thread of the child may get a dead one's ident.
    _busy.intersection_update({_get_ident()})


_forks.in_child(_after_fork_in_child)


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
    ``stats()["capture_errors"]`` and reported in a warning at most once a minute. :meth:`flush`
    returns at once; delivery is the background pipeline's, flushed at exit within
    ``exit_timeout``. The arguments are kept as attributes of the same names; setting one later
    applies from the next record.
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
        self._plan: Optional[_Plan] = None
        self._model_ids: dict[Any, str] = {}
        super().__init__(level)
        self.model_id = (
            None if model_id is None else check_model_id("FiddlerHandler(model_id=...)", model_id)
        )
        self.event_field = check_column("FiddlerHandler(event_field=...)", event_field)
        self.event_id_column = check_column("FiddlerHandler(event_id_column=...)", event_id_column)
        self.timestamp_column = check_column(
            "FiddlerHandler(timestamp_column=...)", timestamp_column
        )
        keep_whole(self.event_id_column, self.timestamp_column)
        self.redact = check_redact("FiddlerHandler(redact=...)", redact)
        self.sample_rate = check_sample_rate("FiddlerHandler(sample_rate=...)", sample_rate)
        _pipeline.settings()  # a bad FIDDLER_* variable fails here, at configuration time

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # handle() captures without calling emit() (a call saved per record): a subclass that
        # overrides emit() gets logging's usual handle() -> emit(), still without the lock.
        if cls.emit is not FiddlerHandler.emit and cls.handle is FiddlerHandler.handle:
            cls.handle = FiddlerHandler._handle_with_emit  # type: ignore[method-assign]

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in _PLANNED:  # the plan is derived from these: rebuild it at the next record
            object.__setattr__(self, "_plan", None)

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return f"<FiddlerHandler model_id={self.model_id!r} field={self.event_field!r} ({level})>"

    def emit(self, record: logging.LogRecord) -> None:
        """Capture ``record`` if it carries a mapping in ``event_field``; never raises.

        The handler's filters are not applied (:meth:`handle` applies them).
        """
        FiddlerHandler.handle(self, record, apply_filters=False)  # not a subclass's handle()

    def _handle_with_emit(self, record: logging.LogRecord, apply_filters: bool = True) -> bool:
        """:meth:`handle` of a subclass that overrides :meth:`emit`: filters, then its emit."""
        accepted = self.filter(record) if apply_filters and self.filters else True
        if accepted:
            if isinstance(accepted, logging.LogRecord):  # 3.12+: a filter may swap the record
                record = accepted
            self.emit(record)
        return bool(accepted)

    def handle(self, record: logging.LogRecord, apply_filters: bool = True) -> bool:
        """Filter ``record`` and capture it if it carries a mapping in ``event_field``.

        Unlike ``logging.Handler.handle`` it takes no lock (nothing here needs one) and captures
        without calling :meth:`emit`. Never raises.

        Returns:
            Whether the record passed the filters, as ``logging.Handler.handle`` does.
        """
        if apply_filters and self.filters:  # usually none: skip the call
            accepted = self.filter(record)
            if not accepted:
                return False
            if isinstance(accepted, logging.LogRecord):  # 3.12+: a filter may swap the record
                record = accepted
        # This runs for every record that reaches the handler: no Python call that can be
        # saved (each costs ~5% of the capture), and the record's attributes read as subscripts
        # of the __dict__ it has anyway, which is cheaper than attribute loads on a record.
        attrs = record.__dict__
        fields = attrs.get(self.event_field)
        if fields is None or not _pipeline.capturing:
            return True
        try:
            if _busy and _get_ident() in _busy:
                return True  # logged from inside a capture on this thread: a redactor, say
            try:
                skipped = _skipped_names[attrs["name"]]
            except (KeyError, TypeError):
                skipped = _skipped_name(record.name)
            # threadName is None when logging.logThreads is off.
            if skipped or (attrs["threadName"] or _current_thread().name) == THREAD_NAME:
                return True
            settings = _pipeline._settings or _pipeline.settings()
            plan = self._plan
            if plan is None or plan[0] is not settings:
                plan = self._make_plan(settings)
            _, model_id, id_column, ts_column, rate, names, named, plain = plan
            if not named:  # the handler has no model_id: the record names its model
                model_id = self._record_model(record)
            given = fields.get(id_column) if type(fields) is dict else _NOT_A_DICT
            if (
                not plain  # a redactor to call
                or (given is not None and type(given) is not str)  # str() of it, or no dict
                or _otel_context()  # most records have no span: one context-variable read
            ):
                self._capture(record, fields, model_id, rate, settings)
                return True
            # Nothing below runs the host's code: no guard needed.
            if rate < 1.0 and draw() >= rate:
                if given is not None:  # update() of this id is then a silent no-op
                    remember(given, None, id_column)
                next(_pipeline.STATS.sampled_out)
                return True
            if given is None:
                if _pipeline._current is None:
                    _pipeline.ready()  # a child forked without the fork hooks reseeds first
                # 128 random bits: the worker makes them a UUID4 and remembers it (see _ids).
                event_id: EventId = draw_id()
            else:
                event_id = given
            columns = fields.copy()  # the event's own: the worker completes it into the row
            if names is not None:
                for name in names:
                    columns.pop(name, None)
            _pipeline.submit((model_id, event_id, attrs["created"], columns, id_column, ts_column))
        except Exception as error:
            self._report(record, error)
        return True

    def _make_plan(self, settings: Settings) -> _Plan:
        """What capture needs of this handler under ``settings``, kept until either changes."""
        rate = settings.sample_rate if self.sample_rate is None else self.sample_rate
        own, common = self.redact, settings.redact
        plain = not callable(own) and not callable(common)
        dropped: frozenset = frozenset()
        for redact in (own, common):
            if isinstance(redact, frozenset):
                dropped |= redact
        names = dropped or None  # name lists of the handler and of init() drop the same way
        model_id = self.model_id
        plan = (
            settings,
            model_id or "",
            self.event_id_column,
            self.timestamp_column,
            rate,
            names,
            model_id is not None,
            plain,
        )
        object.__setattr__(self, "_plan", plan)
        return plan

    def _capture(
        self,
        record: logging.LogRecord,
        fields: Any,
        model_id: str,
        rate: float,
        settings: Settings,
    ) -> None:
        """Capture a record in the way that may run the host's code (a ``Mapping``'s methods,
        an id's ``__str__``, a redactor, an OpenTelemetry SDK); may raise."""
        ident = _get_ident()
        _busy.add(ident)
        try:
            # The ABC check costs more than the rest of the capture: skip it for a dict.
            if type(fields) is not dict and not isinstance(fields, Mapping):
                raise TypeError(
                    f"its {self.event_field!r} attribute is a {type(fields).__name__}; "
                    "accepted: a mapping of columns"
                )
            id_column = self.event_id_column
            columns = dict(fields)
            given = columns.get(id_column)
            if rate < 1.0 and draw() >= rate:
                if given is not None:
                    remember(str(given), None, id_column)
                next(_pipeline.STATS.sampled_out)
                return
            if given is None:
                if _pipeline._current is None:
                    _pipeline.ready()
                event_id: EventId = draw_id()
            else:
                event_id = str(given)
            span = _otel.add_trace_columns(columns) if _otel_context() else None
            if self.redact is not None:
                columns = apply_redact(columns, self.redact)
            if settings.redact is not None:
                columns = apply_redact(columns, settings.redact)
            _pipeline.submit(
                (model_id, event_id, record.created, columns, id_column, self.timestamp_column)
            )
            if span is not None:
                _otel.tag(span, id_text(event_id))
        finally:
            _busy.discard(ident)

    def _report(self, record: logging.LogRecord, error: Exception) -> None:
        name = getattr(record, "name", None)
        report(
            f"handler:{name}",
            f"FiddlerHandler could not capture a record of logger {name!r}: {describe(error)}",
        )

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
