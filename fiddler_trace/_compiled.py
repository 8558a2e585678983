"""The sync wrapper of ``@monitor``, compiled once per decorated function.

The capture of a call is a dozen small steps, and as Python functions each would cost a call
(~0.1 µs, as much as the step itself). So the wrapper is compiled from source once per decorated
function, as ``collections.namedtuple`` and ``dataclasses`` compile their methods, with the usual
case of each step written inline:

- the columns of a call that passes every parameter by position are a dict display over
  ``args`` (``{'age': args[0], ...}``); any other call uses the plan's input builder;
- a result that is a dict is merged with ``dict.update``; anything else uses the output adder;
- the item goes straight onto the pipeline's queue unless it starts or fills a batch, or lands
  in a queue deeper than a batch at a multiple of ``DEEP_CHECK``; those, a full buffer, a missing
  or stopped pipeline and the test sink go through :func:`fiddler_trace._pipeline.submit`.

The generated source is :data:`_TEMPLATE` with the blanks filled from the function's
:class:`~fiddler_trace._inputs.CallPlan` and the monitor's options; names are inserted with
``repr()``, so no user text is ever code. Behaviour is that of ``_Steps.begin``/``finish`` in
:mod:`fiddler_trace._monitor`, which the async wrapper uses, and of ``SyncCall`` in
``_speedups.c``: where the C extension is built, the wrapper returned is a ``SyncCall`` that
takes the usual call and hands any other to this one. Keep the three alike.
"""

from __future__ import annotations

import time
from types import BuiltinFunctionType
from typing import Any, Callable, Optional

from fiddler_trace import _otel, _pipeline
from fiddler_trace._buffer import DEEP_CHECK
from fiddler_trace._capture import (
    DEFERRED,
    apply_redact,
    describe,
    release_updates,
    remember,
    report,
)
from fiddler_trace._ids import (
    ID_POOL,
    LAST,
    SYNC_CALL_FILE,
    draw,
    getrandbits,
    id_text,
    take_id,
)
from fiddler_trace._native import speedups

__all__ = ["compile_sync_wrapper"]


def _set_up_speedups() -> Any:
    """The C wrapper's module, given what it reads; None without it."""
    if speedups is None:
        return None

    def count_error() -> None:  # STATS is replaced on reset: looked up per call
        next(_pipeline.STATS.errors)

    speedups.setup(
        pipeline_dict=vars(_pipeline),
        time_dict=vars(time),
        # The builtin, which the C wrapper reads the clock for itself (one call less); anything
        # else in time.time (freezegun's fake) is called.
        system_time=time.time if isinstance(time.time, BuiltinFunctionType) else None,
        id_pool=ID_POOL,
        getrandbits=getrandbits,
        last_var=LAST,
        otel_var=_otel.CONTEXT_VAR,
        otel_get=_otel.get_context,
        add_trace_columns=_otel.add_trace_columns,
        tag=_otel.tag,
        id_text=id_text,
        deferred=DEFERRED,
        release_updates=release_updates,
        submit=_pipeline.submit,
        ready=_pipeline.ready,
        count_error=count_error,
        deep_mask=DEEP_CHECK - 1,
    )
    return speedups


#: The C wrapper's module, or None: every sync wrapper is then the Python one.
_c = _set_up_speedups()

Wrapper = Callable[[Callable[..., Any], Any, tuple, dict], Any]

_TEMPLATE = """\
def call_sync(wrapped, instance, args, kwargs):
    # Only called while capture is on: wrapt tests pipeline.CAPTURING first.
    try:
        settings = pipeline._settings or settings_now()
        lane = pipeline.lane
        if lane is None or not lane.queue:
            ready()  # a first capture, or a fork that bypassed the hooks: reseed first
        start = time.time()  # looked up per call: freezegun replaces it
{new_id}
        rate = {rate}
        if rate < 1.0 and draw() >= rate:
            columns = None
{choose_inputs}
    except Exception as error:
        report(kind, f"could not capture a call of {{name}}: {{describe(error)}}")
        event_id = None
    if event_id is None:  # the host's call must not sit inside our except block
        return wrapped(*args, **kwargs)
    # While the host's function runs, this frame's `event_id` says which call is running:
    # current_event_id() finds it on the stack (_ids.running_id).
    try:
        # Without keywords, a call without the empty mapping skips unpacking it.
        result = wrapped(*args, **kwargs) if kwargs else wrapped(*args)
    except BaseException as error:
        if isinstance(error, Exception):  # not cancellation or KeyboardInterrupt
            next(pipeline.STATS.errors)
        set_last(None)
        if DEFERRED:
            DEFERRED.pop(event_id, None)
        raise
    set_last(event_id)
    try:
        if columns is None:
            remember(event_id, None, id_column, sampled_owner)
            next(pipeline.STATS.sampled_out)
        else:
{columns}
{metadata}            span = add_trace_columns(columns) if otel_context() else None
{redact}            if settings.redact is not None:
                columns = apply_redact(columns, settings.redact)
            item = (model_id, event_id, start, columns, id_column, ts_column)
            lane = pipeline.lane  # the running pipeline's buffer; None: a test sink, no thread
            if lane is not None:
                queue = lane.queue
                depth = len(queue)
                fill_at = lane.fill_at
                if (
                    0 < depth < fill_at or (depth > fill_at and depth & {deep_mask})
                ) and depth + lane.outstanding < lane.max_events:
                    queue.append(item)
                else:
                    submit(item)
            else:
                submit(item)
            if span is not None:
                tag(span, id_text(event_id))
        if DEFERRED:  # an update() of this event made during the call
            release_updates(event_id, model_id, id_column, columns is not None)
    except Exception as error:
        if DEFERRED:
            DEFERRED.pop(event_id, None)
        report(kind, f"could not capture a call of {{name}}: {{describe(error)}}")
    return result
"""


def compile_sync_wrapper(
    steps: Any,
    *,
    free_names: Optional[tuple[str, ...]],
    bound_names: Optional[tuple[str, ...]],
    plain_outputs: bool,
) -> Wrapper:
    """The wrapper for one decorated sync function.

    Args:
        steps: the function's ``_Steps`` (its options and builders).
        free_names: the parameter names of a call of the function itself when every one is
            given by position, for the inline columns; None: always use the input builder.
        bound_names: the same for a call through an instance or class (wrapt took off
            ``self``/``cls``); None: always use the input builder.
        plain_outputs: ``outputs=None``: a dict result is merged inline.
    """
    # The inline columns are built after the call, together with a dict result: one dict
    # display sized for both, where inputs first and outputs added later cost a resize. The
    # values are the same: a display reads the call's own ``args`` tuple.
    choose = ""
    build = ""
    for marker, names, test in (
        ("FREE", free_names, "instance is None"),
        ("BOUND", bound_names, "instance is not None"),
    ):
        if names is None:
            continue
        choose += (
            f"        elif not kwargs and {test} and len(args) == {len(names)}:\n"
            f"            columns = {marker}  # built after the call\n"
        )
        display = ", ".join(f"{name!r}: args[{i}]" for i, name in enumerate(names))
        merged = (
            f"                if type(result) is dict:\n"
            f"                    columns = {{{display}{', ' if names else ''}**result}}\n"
            f"                else:\n"
            f"                    columns = {{{display}}}\n"
            f"                    add_outputs(columns, result)\n"
            if plain_outputs
            else f"                columns = {{{display}}}\n"
            f"                add_outputs(columns, result)\n"
        )
        build += f"            {'if' if not build else 'elif'} columns is {marker}:\n{merged}"
    choose += "        else:\n            columns = build_inputs(instance, args, kwargs)"
    outputs = (
        "if type(result) is dict:\n"
        "                    columns.update(result)\n"
        "                else:\n"
        "                    add_outputs(columns, result)"
        if plain_outputs
        else "add_outputs(columns, result)"
    )
    build += (
        f"            else:\n                {outputs}"
        if build
        else f"            {outputs.replace(chr(10) + '    ', chr(10))}"
    )
    source = _TEMPLATE.format(
        new_id=_DRAWN_ID if steps.id_from is None else "        event_id = id_from(args, kwargs)",
        rate="settings.sample_rate" if steps.own_rate is None else "own_rate",
        choose_inputs=choose,
        deep_mask=DEEP_CHECK - 1,
        columns=build,
        # The monitor's own options, known now: the wrapper has only the steps it needs.
        metadata="            add_metadata(columns)\n" if steps.has_metadata else "",
        redact=(
            "            columns = apply_redact(columns, redact)\n"
            if steps.redact is not None  # not its truth: a redactor may define __len__
            else ""
        ),
    )
    namespace: dict[str, Any] = {
        "time": time,
        "pipeline": _pipeline,
        "settings_now": _pipeline.settings,
        "ready": _pipeline.ready,
        "submit": _pipeline.submit,
        "draw_bits": getrandbits,
        "take_id": take_id,
        "id_pool": ID_POOL,
        "draw": draw,
        "set_last": LAST.set,
        "otel_context": _otel.get_context,
        "add_trace_columns": _otel.add_trace_columns,
        "tag": _otel.tag,
        "id_text": id_text,
        "apply_redact": apply_redact,
        "remember": remember,
        "release_updates": release_updates,
        "report": report,
        "describe": describe,
        "DEFERRED": DEFERRED,
        "kind": steps.kind,
        "name": steps.name,
        "build_inputs": steps.build_inputs,
        "add_outputs": steps.add_outputs,
        "id_from": steps.id_from,
        "own_rate": steps.own_rate,
        "model_id": steps.model_id,
        "id_column": steps.id_column,
        "ts_column": steps.ts_column,
        "redact": steps.redact,
        "add_metadata": steps.add_metadata,
        "sampled_owner": steps.sampled_owner,
        "FREE": _FREE,
        "BOUND": _BOUND,
    }
    # The file name, this very object, marks the wrapper's frame as a running sync call's (see
    # _ids.running_id); a traceback shows the monitored function in the next frame.
    exec(compile(source, SYNC_CALL_FILE, "exec"), namespace)
    wrapper = namespace["call_sync"]
    # Named after the monitor ("monitor:predict"), so that profilers and tracebacks tell the
    # wrappers of different functions apart.
    code_names: dict[str, str] = {"co_name": steps.kind}
    if hasattr(wrapper.__code__, "co_qualname"):  # Python 3.11+
        code_names["co_qualname"] = steps.kind
    wrapper.__code__ = wrapper.__code__.replace(**code_names)
    if (
        _c is None
        or steps.id_from is not None
        or steps.own_rate is not None
        or steps.has_metadata
        or steps.redact is not None
        or (free_names is None and bound_names is None)
    ):
        return wrapper  # type: ignore[no-any-return]
    kind, name = steps.kind, steps.name

    def on_error(error: BaseException, event_id: Any) -> None:
        report(kind, f"could not capture a call of {name}: {describe(error)}")

    # The usual call in C; any other (keywords, sampling or a redactor in the settings) goes
    # to the Python wrapper, which is the reference.
    return _c.SyncCall(  # type: ignore[no-any-return]
        fallback=wrapper,
        free_names=free_names,
        bound_names=bound_names,
        model_id=steps.model_id,
        id_column=steps.id_column,
        ts_column=steps.ts_column,
        add_outputs=steps.add_outputs,
        on_error=on_error,
        plain_outputs=plain_outputs,
    )


#: The id of a call, 128 random bits the worker drew ahead (it makes them a UUID4, see _ids).
_DRAWN_ID = """\
        if id_pool:
            try:
                event_id = take_id()
            except IndexError:  # another thread took the last one between the test and the pop
                event_id = draw_bits(128)
        else:
            event_id = draw_bits(128)"""

#: Markers for "columns to build after the call": of a call of the function itself, of a call
#: through an instance or class.
_FREE = object()
_BOUND = object()
