"""``@monitor``: one call of the decorated function -> one event.

The wrapper is a ``wrapt.FunctionWrapper``, so name, docstring, signature, ``inspect``'s
coroutine check and method binding survive. Whether it is sync or async is decided once, at
decoration. wrapt first tests ``_pipeline.CAPTURING`` (a list's truth, in C) and, when capture
is off, calls the function itself. When it is on, the wrapper does only this on the caller's
thread: take ``time.time()`` and an id, build the columns dict from the arguments, call, add
the result's columns, and put a tuple of the event's fields on the pipeline's queue.
Formatting, encoding and sending happen on the background thread. The sync wrapper, the hot
path, is compiled per function (:mod:`fiddler_trace._compiled`).
"""

from __future__ import annotations

import inspect
import time
import types
from collections.abc import Mapping
from typing import Any, Callable, Optional, TypeVar

import wrapt

from fiddler_trace import _batch, _pipeline
from fiddler_trace._capture import (
    Redact,
    check_column,
    check_model_id,
    check_redact,
    check_sample_rate,
    deliver,
    describe,
    end_task_call,
    release_updates,
    remember,
    report,
)
from fiddler_trace._compiled import compile_sync_wrapper
from fiddler_trace._config import Settings
from fiddler_trace._encode import keep_whole
from fiddler_trace._errors import ConfigurationError
from fiddler_trace._ids import (
    LAST,
    RECENT,
    EventId,
    draw,
    draw_id,
    enter_task,
    mark_task_wrapper,
    new_event_id,
)
from fiddler_trace._inputs import CallPlan, Names, check_names, output_adder

__all__ = ["Capture", "monitor"]

F = TypeVar("F", bound=Callable[..., Any])
Wrapper = Callable[[Callable[..., Any], Any, tuple, dict], Any]
State = tuple[EventId, float, Optional[dict], Settings]  # event id, start, columns, settings


def monitor(
    model_id: str,
    *,
    inputs: Names = None,
    outputs: Names = None,
    output_column: str = "prediction",
    event_id: Optional[Callable[..., Any]] = None,
    event_id_column: str = "event_id",
    timestamp_column: str = "timestamp",
    metadata: Optional[Any] = None,
    sample_rate: Optional[float] = None,
    redact: Any = None,
    batch: bool = False,
) -> Callable[[F], F]:
    """Capture each call of the decorated function as an event of model ``model_id``.

    Works on sync and async functions, methods, classmethods and staticmethods; the wrapper keeps
    the function's name, docstring and signature. When capture is off (``FIDDLER_TRACE_ENABLED``
    unset and no ``testing.capture()``) it checks one flag and calls through.

    Columns of the event, later ones winning over earlier ones of the same name: the inputs, the
    outputs (so an output wins over an input), ``metadata``, then ``trace_id``/``span_id`` of the
    current OpenTelemetry span; the id and timestamp columns always hold the event's id and
    capture time.

    Args:
        model_id: the Fiddler model's id (a UUID string).
        inputs: None: the call's arguments by parameter name, defaults applied, without
            ``self``/``cls``, and a single mapping argument expanded into its keys. A list of
            names keeps only those columns; a callable ``(*args, **kwargs) -> mapping`` (called
            with the call's arguments, without ``self``/``cls``) supplies them.
        outputs: None: a returned mapping gives its keys, anything else goes into
            ``output_column``. A list of names for the items of a tuple result (or the keys to
            keep of a mapping); a callable ``result -> mapping``.
        output_column: the column of a result that is not a mapping. Default ``"prediction"``.
        event_id: a callable on the call's arguments returning the event's id (e.g. a request
            id); default: a new UUID4 string. If it raises or returns None, a UUID4 is used.
        event_id_column: the model's event id column. Default ``"event_id"``.
        timestamp_column: the model's timestamp column; it gets the time the call started, UTC,
            ISO 8601 with milliseconds and ``Z``, following the caller's (possibly frozen) clock.
        metadata: constant extra columns (a mapping, copied now), or a callable without
            arguments returning a mapping, called per event.
        sample_rate: fraction of calls to capture, 0.0 to 1.0, decided per call; None uses the
            global ``FIDDLER_TRACE_SAMPLE_RATE``. A sampled-out call still gets an id and is
            counted in ``stats()["sampled_out"]``.
        redact: column names to drop, or a callable ``columns -> columns``, applied on the
            caller's thread before the event leaves it (the global ``redact`` setting is applied
            after it). An event whose redactor fails is not sent.
        batch: the first data argument is a pandas DataFrame, a list of mappings or a 2-D array
            (``inputs=`` then names its columns), the result a sequence of the same length: one
            event per row, each with its own id (:func:`fiddler_trace.last_event_ids`).

    Returns:
        The decorator.

    Raises:
        ConfigurationError: at decoration (import time): an argument is invalid (the message
            names it, its value and what is accepted), ``inputs=`` names a parameter the
            function does not have, or a ``FIDDLER_*`` variable is invalid.

    A call that raises passes its exception through unchanged and produces no event; it is
    counted in ``stats()["errors"]``. Nothing the library does inside the call raises into it:
    an event that cannot be built (a failing ``inputs``/``outputs``/``metadata`` callable, a
    result that does not fit ``outputs=``) is skipped, counted in ``capture_errors``, kept in
    ``last_error`` and logged at most once a minute. Thread-safe and asyncio-safe.
    """
    if callable(model_id) and not isinstance(model_id, str):
        raise ConfigurationError(
            "monitor needs the model's id: write @monitor(model_id='<uuid>') (or "
            "@monitor('<uuid>')), not a bare @monitor"
        )
    capture = Capture(
        model_id=check_model_id("monitor(model_id=...)", model_id),
        inputs=check_names("monitor(inputs=...)", inputs),
        outputs=check_names("monitor(outputs=...)", outputs),
        output_column=check_column("monitor(output_column=...)", output_column),
        event_id=event_id,
        event_id_column=check_column("monitor(event_id_column=...)", event_id_column),
        timestamp_column=check_column("monitor(timestamp_column=...)", timestamp_column),
        metadata=metadata,
        sample_rate=check_sample_rate("monitor(sample_rate=...)", sample_rate),
        redact=check_redact("monitor(redact=...)", redact),
        batch=batch,
    )
    _pipeline.settings()  # a bad FIDDLER_* variable fails here, at import time

    def decorate(func: F) -> F:
        return capture.wrap(func)  # type: ignore[no-any-return]

    return decorate


class Capture:
    """A monitor's validated options; :meth:`wrap` builds the wrapper for one function."""

    def __init__(
        self,
        *,
        model_id: str,
        inputs: Names,
        outputs: Names,
        output_column: str,
        event_id: Optional[Callable[..., Any]],
        event_id_column: str,
        timestamp_column: str,
        metadata: Any,
        sample_rate: Optional[float],
        redact: Redact,
        batch: bool,
    ) -> None:
        if event_id is not None and not callable(event_id):
            raise ConfigurationError(
                f"monitor(event_id=...) is {event_id!r}; accepted: a callable taking the call's "
                "arguments and returning the event's id, or None for a new UUID4 per event"
            )
        if metadata is not None and not callable(metadata) and not isinstance(metadata, Mapping):
            raise ConfigurationError(
                f"monitor(metadata=...) is {metadata!r}; accepted: a mapping of constant "
                "columns, a callable returning one, or None"
            )
        if not isinstance(batch, bool):
            raise ConfigurationError(f"monitor(batch=...) is {batch!r}; accepted: True or False")
        self.model_id = model_id
        self.inputs = inputs
        self.outputs = outputs
        self.output_column = output_column
        self.event_id = event_id
        self.id_column = event_id_column
        self.ts_column = timestamp_column
        keep_whole(event_id_column, timestamp_column)
        self.metadata_fn: Optional[Callable[[], Any]] = metadata if callable(metadata) else None
        self.metadata: Optional[dict[str, Any]] = (
            dict(metadata) if isinstance(metadata, Mapping) and metadata else None
        )
        self.sample_rate = sample_rate
        self.redact = redact
        self.batch = batch

    def wrap(self, func: Any) -> Any:
        """Return ``func`` wrapped; ConfigurationError if it cannot be monitored."""
        target = func.__func__ if isinstance(func, (classmethod, staticmethod)) else func
        if not callable(target):
            raise ConfigurationError(
                f"monitor decorates a function or method; got {type(func).__name__}"
            )
        plan = CallPlan(func)
        if isinstance(self.inputs, tuple) and not self.batch:
            plan.check_inputs("monitor(inputs=...)", self.inputs)
        is_async = inspect.iscoroutinefunction(target)
        if self.batch:
            wrapper = _batch.wrapper(self, plan, is_async)
        elif is_async:
            wrapper = _async_wrapper(_Steps(self, plan))
        else:
            free, bound = plan.display_names(self.inputs)
            wrapper = compile_sync_wrapper(
                _Steps(self, plan),
                free_names=free,
                bound_names=bound,
                plain_outputs=self.outputs is None,
            )
        # wrapt tests `enabled` before the wrapper and, when it is false, calls the function
        # itself from C: capture off costs a list's truth test instead of the whole wrapper.
        return wrapt.FunctionWrapper(
            _probe_free(func),
            wrapper,
            enabled=_pipeline.CAPTURING,  # type: ignore[arg-type]  # a list: tested by its truth
        )

    def add_metadata(self, columns: dict[str, Any]) -> None:
        """Add the metadata columns; raises if the metadata callable fails or returns no mapping."""
        if self.metadata_fn is not None:
            extra = self.metadata_fn()
            if not isinstance(extra, Mapping):
                raise TypeError(f"metadata returned {type(extra).__name__}; accepted: a mapping")
            columns.update(extra)
        elif self.metadata is not None:
            columns.update(self.metadata)

    def id_maker(self, kind: str) -> Callable[[tuple, dict], str]:
        """``(args, kwargs) -> event id``: from ``event_id=``, falling back to a new UUID4."""
        make = self.event_id
        if make is None:
            return lambda args, kwargs: new_event_id()

        def from_arguments(args: tuple, kwargs: dict) -> str:
            try:
                value = make(*args, **kwargs)
            except Exception as error:
                report(kind, f"event_id= failed, a UUID4 was used: {describe(error)}", count=False)
                return new_event_id()
            if value is None:
                return new_event_id()
            return value if type(value) is str else str(value)

        return from_arguments


class _Steps:
    """The two halves of a monitored call around the host's function; neither raises.

    The async wrapper calls them; the sync wrapper, the hot path, is compiled with the same
    steps inline (:mod:`fiddler_trace._compiled`): keep the two alike.
    """

    __slots__ = (
        "add_metadata",
        "add_outputs",
        "begin",
        "build_inputs",
        "finish",
        "has_metadata",
        "id_column",
        "id_from",
        "kind",
        "model_id",
        "name",
        "own_rate",
        "redact",
        "sampled_owner",
        "ts_column",
    )

    def __init__(self, capture: Capture, plan: CallPlan) -> None:
        self.kind = kind = f"monitor:{plan.name}"
        self.name = name = plan.name
        self.build_inputs = build_inputs = plan.input_builder(capture.inputs)
        self.add_outputs = add_outputs = output_adder(capture.outputs, capture.output_column)
        self.id_from = id_from = capture.id_maker(kind) if capture.event_id is not None else None
        self.own_rate = own_rate = capture.sample_rate
        self.model_id = model_id = capture.model_id
        self.id_column = id_column = capture.id_column
        self.ts_column = ts_column = capture.ts_column
        self.redact = redact = capture.redact
        self.has_metadata = has_metadata = (
            capture.metadata_fn is not None or capture.metadata is not None
        )
        self.add_metadata = add_metadata = capture.add_metadata
        self.sampled_owner = sampled_owner = RECENT.owner(None, id_column)

        def begin(instance: Any, args: tuple, kwargs: dict) -> Optional[State]:
            try:
                settings = _pipeline.settings()
                current = _pipeline._current
                if current is None or not current.buffer.queue:
                    _pipeline.ready()  # a first capture, or a fork that bypassed the hooks
                start = time.time()  # looked up per call: freezegun replaces it
                # 128 random bits: the worker sets the version bits (see _ids).
                event_id: EventId = draw_id() if id_from is None else id_from(args, kwargs)
                rate = settings.sample_rate if own_rate is None else own_rate
                if rate < 1.0 and draw() >= rate:
                    return event_id, start, None, settings
                return event_id, start, build_inputs(instance, args, kwargs), settings
            except Exception as error:
                report(kind, f"could not capture a call of {name}: {describe(error)}")
                return None

        def finish(state: State, result: Any) -> bool:
            """Submit the call's event; False when there is none (sampled out, or its capture
            failed). The updates made during the call are the caller's to release."""
            event_id, start, columns, settings = state
            try:
                if columns is None:
                    remember(event_id, None, id_column, sampled_owner)
                    next(_pipeline.STATS.sampled_out)
                    return False
                add_outputs(columns, result)
                if has_metadata:
                    add_metadata(columns)
                deliver(
                    model_id,
                    event_id,
                    start,
                    columns,
                    id_column,
                    ts_column,
                    redact,
                    settings,
                )
                return True
            except Exception as error:
                report(kind, f"could not capture a call of {name}: {describe(error)}")
                return False

        self.begin = begin
        self.finish = finish


def _probe_free(func: Any) -> Any:
    """``func``, or for a plain function a copy of it that answers wrapt's ``__self__`` probe.

    On every call of a function that is not bound, wrapt's C wrapper asks the function for
    ``__self__`` (a bound method's instance) and a plain function answers with an
    AttributeError: building and clearing that exception is two thirds of wrapt's cost per call
    (~0.45 µs). A copy of the function (same code, globals, defaults, closure and attributes)
    with ``__self__ = None`` makes wrapt take its answer, None, which is what it passes as the
    instance either way. A copy rather than the function itself: the host's function object is
    never changed.
    """
    if type(func) is not types.FunctionType or "__self__" in func.__dict__:
        return func
    copy = types.FunctionType(
        func.__code__, func.__globals__, func.__name__, func.__defaults__, func.__closure__
    )
    copy.__kwdefaults__ = func.__kwdefaults__
    copy.__qualname__ = func.__qualname__
    copy.__module__ = func.__module__
    copy.__doc__ = func.__doc__
    copy.__annotations__ = func.__annotations__
    if hasattr(func, "__type_params__"):  # Python 3.12+
        copy.__type_params__ = func.__type_params__  # type: ignore[attr-defined,unused-ignore]
    copy.__dict__.update(func.__dict__)
    copy.__self__ = None  # type: ignore[attr-defined]
    return copy


def _async_wrapper(steps: _Steps) -> Wrapper:
    begin, finish = steps.begin, steps.finish
    model_id, id_column = steps.model_id, steps.id_column
    set_last = LAST.set

    async def run(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        # Runs in the awaiting task's context: ids set here are that task's alone.
        state = begin(instance, args, kwargs)
        if state is None:
            return await wrapped(*args, **kwargs)
        event_id = state[0]
        previous = enter_task(event_id)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as error:
            end_task_call(previous, event_id, False)  # its updates are dropped: no event
            if isinstance(error, Exception):  # not cancellation
                next(_pipeline.STATS.errors)
            set_last(None)
            raise
        set_last(event_id)
        submitted = False
        try:
            # Still running: the host's outputs= and metadata= callables see this call's id,
            # as a sync call's do.
            submitted = finish(state, result)
        finally:
            waiting = end_task_call(previous, event_id, submitted)
            if waiting:  # update()s of this event made during the call, now behind it
                release_updates(event_id, model_id, id_column, submitted, waiting)
        return result

    mark_task_wrapper(run.__code__)  # its frame marks CURRENT as the running call's
    return run  # only called while capture is on; off, wrapt returns the host's coroutine
