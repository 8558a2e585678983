"""``@monitor(..., batch=True)``: one call scores many rows -> one event per row.

The first data argument holds the rows: a pandas DataFrame, a list of mappings, or a 2-D numpy
array or list of lists whose columns ``inputs=`` names (unnamed columns are called ``"0"``,
``"1"``, ...). The result holds one output per row: a sequence, a numpy array, a pandas Series or
DataFrame, or a mapping of equally long columns (``{"score": [...], "label": [...]}``).

numpy and pandas stay optional: values are recognised by ``type(x).__module__`` and duck-typed
(``to_dict``, ``tolist``), so neither is ever imported here.

A result whose length differs from the input's is logged (at most once a minute) and counted in
``capture_errors``, and no event is sent for that call (rows and outputs can no longer be
paired); the result still reaches the caller untouched.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional

from fiddler_trace import _otel, _pipeline
from fiddler_trace._capture import apply_redact, describe, remember, report
from fiddler_trace._config import Settings
from fiddler_trace._event import Event
from fiddler_trace._ids import (
    LAST,
    draw,
    enter_task,
    leave_task,
    mark_task_wrapper,
    new_event_id,
)
from fiddler_trace._inputs import CallPlan, Names
from fiddler_trace._stats import Stats

if TYPE_CHECKING:
    from fiddler_trace._monitor import Capture

__all__ = ["input_rows", "output_rows", "wrapper"]

Wrapper = Callable[[Callable[..., Any], Any, tuple, dict], Any]
State = tuple[float, list, Settings, tuple, dict]  # start, rows, settings, args, kwargs


def _module(value: Any) -> str:
    return type(value).__module__ or ""


def _from_lists(values: list, names: Optional[Sequence[str]]) -> list[dict[str, Any]]:
    rows = []
    for value in values:
        if isinstance(value, (list, tuple)):
            keys = names if names is not None else [str(i) for i in range(len(value))]
            rows.append(dict(zip(keys, value)))
        else:
            rows.append({names[0] if names else "0": value})
    return rows


def input_rows(value: Any, names: Optional[Sequence[str]]) -> list[dict[str, Any]]:
    """One new dict per row of ``value``; ``names`` keeps (or, for arrays, names) columns.

    Raises:
        TypeError: ``value`` is none of the accepted kinds.
    """
    module = _module(value)
    if module.startswith("pandas") and hasattr(value, "columns"):
        records: list[dict[str, Any]] = value.to_dict("records")
    elif module.startswith("numpy") and getattr(value, "ndim", 0) in (1, 2):
        return _from_lists(value.tolist(), names)
    elif isinstance(value, (list, tuple)):
        if all(isinstance(row, Mapping) for row in value):
            records = [dict(row) for row in value]
        else:
            return _from_lists(
                [row.tolist() if _module(row).startswith("numpy") else row for row in value],
                names,
            )
    else:
        raise TypeError(
            f"batch=True needs the rows as the first argument (a pandas DataFrame, a list of "
            f"mappings or a 2-D array); got {type(value).__name__}"
        )
    if names is not None:
        return [{name: row[name] for name in names if name in row} for row in records]
    return records


def output_rows(
    result: Any, count: int, outputs: Names, output_column: str
) -> list[dict[str, Any]]:
    """One dict of output columns per row.

    Raises:
        ValueError: the result does not have ``count`` rows.
        TypeError: the result is not a sequence of rows.
    """
    if callable(outputs):
        values: Any = outputs(result)
        names: Optional[Sequence[str]] = None
    else:
        values, names = result, outputs
    module = _module(values)
    if module.startswith("pandas"):
        values = values.to_dict("records") if hasattr(values, "columns") else values.tolist()
    elif module.startswith("numpy") and hasattr(values, "tolist"):
        values = values.tolist()
    elif isinstance(values, Mapping):
        columns = {
            key: column.tolist() if hasattr(column, "tolist") else list(column)
            for key, column in values.items()
        }
        lengths = {len(column) for column in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"the result's columns have different lengths {sorted(lengths)}")
        values = [dict(zip(columns, row)) for row in zip(*columns.values())]
    if not isinstance(values, (list, tuple)):
        raise TypeError(
            f"batch=True needs a result with one output per row; got {type(values).__name__}"
        )
    if len(values) != count:
        raise ValueError(f"the result has {len(values)} rows for {count} input rows")
    rows = []
    for value in values:
        if isinstance(value, Mapping):
            row = dict(value)
            rows.append({n: row[n] for n in names if n in row} if names else row)
        elif names is not None and isinstance(value, (list, tuple)):
            rows.append(dict(zip(names, value)))
        else:
            rows.append({names[0] if names else output_column: value})
    return rows


class _BatchSteps:
    """The halves of a batch call around the host's function; neither raises."""

    def __init__(self, capture: Capture, plan: CallPlan) -> None:
        self.capture = capture
        self.plan = plan
        self.kind = f"monitor:{plan.name}"

    def begin(self, instance: Any, args: tuple, kwargs: dict) -> Optional[State]:
        capture = self.capture
        try:
            settings = _pipeline.settings()
            start = time.time()  # looked up per call: freezegun replaces it
            if callable(capture.inputs):
                rows = input_rows(capture.inputs(*args, **kwargs), None)
            else:
                data = self.plan.first_data(instance, args, kwargs)
                rows = input_rows(data, capture.inputs)
            return start, rows, settings, args, kwargs
        except Exception as error:
            name = self.plan.name
            report(self.kind, f"could not capture a batch call of {name}: {describe(error)}")
            return None

    def _ids(self, count: int, args: tuple, kwargs: dict) -> list[str]:
        if self.capture.event_id is not None:
            try:
                given = [str(i) for i in self.capture.event_id(*args, **kwargs)]
                if len(given) == count:
                    return given
                raise ValueError(f"it gave {len(given)} ids for {count} rows")
            except Exception as error:
                report(
                    self.kind, f"event_id= failed, UUID4s were used: {describe(error)}", count=False
                )
        return [new_event_id() for _ in range(count)]

    def finish(self, state: State, result: Any) -> tuple[str, ...]:
        """Submit the events; return the ids of all rows (empty when nothing was captured)."""
        start, rows, settings, args, kwargs = state
        capture = self.capture
        try:
            outputs = output_rows(result, len(rows), capture.outputs, capture.output_column)
        except Exception as error:
            report(
                f"{self.kind}:batch",
                f"batch call of {self.plan.name} not captured: {describe(error)}",
            )
            return ()
        try:
            return self._submit(start, rows, outputs, settings, args, kwargs)
        except Exception as error:
            report(
                self.kind, f"could not capture a batch call of {self.plan.name}: {describe(error)}"
            )
            return ()

    def _submit(
        self, start: float, rows: list, outputs: list, settings: Settings, args: tuple, kwargs: dict
    ) -> tuple[str, ...]:
        capture = self.capture
        ids = self._ids(len(rows), args, kwargs)
        rate = settings.sample_rate if capture.sample_rate is None else capture.sample_rate
        trace_columns: dict[str, Any] = {}
        span = _otel.add_trace_columns(trace_columns)
        kept: list[str] = []
        stats: Stats = _pipeline.STATS
        model_id, id_column, ts_column = capture.model_id, capture.id_column, capture.ts_column
        for event_id, columns, output in zip(ids, rows, outputs):
            if rate < 1.0 and draw() >= rate:
                remember(event_id, None, id_column)
                next(stats.sampled_out)
                continue
            try:
                columns.update(output)
                capture.add_metadata(columns)
                columns.update(trace_columns)
                if capture.redact is not None:
                    columns = apply_redact(columns, capture.redact)
                if settings.redact is not None:
                    columns = apply_redact(columns, settings.redact)
            except Exception as error:  # this row is lost, not the others
                name = self.plan.name
                report(self.kind, f"a row of a batch call of {name}: {describe(error)}")
                continue
            _pipeline.submit(Event(model_id, event_id, start, columns, id_column, ts_column))
            kept.append(event_id)
        if span is not None and kept:
            _otel.tag(span, kept)
        return tuple(ids)


def wrapper(capture: Capture, plan: CallPlan, is_async: bool) -> Wrapper:
    """The wrapt wrapper of a ``batch=True`` monitor, sync or async."""
    steps = _BatchSteps(capture, plan)
    begin, finish = steps.begin, steps.finish

    # Both are only called while capture is on: wrapt checks `enabled` first.
    def call_sync(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        state = begin(instance, args, kwargs)
        if state is None:
            return wrapped(*args, **kwargs)
        previous = enter_task(None)  # rows get their ids after the call
        try:
            result = wrapped(*args, **kwargs)
        except Exception:
            next(_pipeline.STATS.errors)
            LAST.set(None)
            raise
        finally:
            leave_task(previous)
        LAST.set(finish(state, result))
        return result

    async def run(wrapped: Callable[..., Any], instance: Any, args: tuple, kwargs: dict) -> Any:
        state = begin(instance, args, kwargs)
        if state is None:
            return await wrapped(*args, **kwargs)
        previous = enter_task(None)
        try:
            result = await wrapped(*args, **kwargs)
        except Exception:
            next(_pipeline.STATS.errors)
            LAST.set(None)
            raise
        finally:
            leave_task(previous)
        LAST.set(finish(state, result))
        return result

    mark_task_wrapper(call_sync.__code__)  # they mark CURRENT as running
    mark_task_wrapper(run.__code__)
    return run if is_async else call_sync
