"""@monitor: the decorator matrix, exceptions, what survives wrapping, enabling, configuration."""

from __future__ import annotations

import asyncio
import functools
import inspect
import traceback
import uuid
from typing import Any, Callable

import pytest

import fiddler_trace
from fiddler_trace import ConfigurationError, _pipeline, monitor, testing

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"
OTHER = "0b5e3b62-2222-4333-8444-555566667777"


class Boom(Exception):
    """The monitored function's own error."""


def score(x: Any, y: Any) -> Any:
    if x == "boom":
        raise Boom("model failed")
    return x + y


# -- the decorator matrix -------------------------------------------------------------------


def passthrough(func: Callable[..., Any]) -> Callable[..., Any]:
    """Another library's decorator (functools.wraps), to nest with monitor."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


@monitor(MODEL)
def plain(x, y=2):
    """Plain doc."""
    return score(x, y)


@monitor(MODEL)
async def coroutine(x, y=2):
    """Async doc."""
    await asyncio.sleep(0)
    return score(x, y)


@monitor(MODEL)
@passthrough
def nested_outer(x, y=2):
    return score(x, y)


@passthrough
@monitor(MODEL)
def nested_inner(x, y=2):
    return score(x, y)


class Model:
    bias = 0

    @monitor(MODEL)
    def method(self, x, y=2):
        """Method doc."""
        return score(x, y) + self.bias

    @monitor(MODEL)
    async def async_method(self, x, y=2):
        await asyncio.sleep(0)
        return score(x, y)

    @monitor(MODEL)
    @classmethod
    def class_outer(cls, x, y=2):
        return score(x, y) + cls.bias

    @classmethod
    @monitor(MODEL)
    def class_inner(cls, x, y=2):
        return score(x, y) + cls.bias

    @monitor(MODEL)
    @staticmethod
    def static_outer(x, y=2):
        return score(x, y)

    @staticmethod
    @monitor(MODEL)
    def static_inner(x, y=2):
        return score(x, y)


def run(value: Any) -> Any:
    return asyncio.run(value) if inspect.iscoroutine(value) else value


CALLS: dict[str, Callable[[Any], Any]] = {
    "function": lambda x: plain(x),
    "async-function": lambda x: run(coroutine(x)),
    "nested-monitor-outside": lambda x: nested_outer(x),
    "nested-monitor-inside": lambda x: nested_inner(x),
    "method": lambda x: Model().method(x),
    "method-through-class": lambda x: Model.method(Model(), x),
    "async-method": lambda x: run(Model().async_method(x)),
    "classmethod-monitor-outside": lambda x: Model.class_outer(x),
    "classmethod-monitor-inside": lambda x: Model.class_inner(x),
    "classmethod-through-instance": lambda x: Model().class_outer(x),
    "staticmethod-monitor-outside": lambda x: Model.static_outer(x),
    "staticmethod-monitor-inside": lambda x: Model.static_inner(x),
    "staticmethod-through-instance": lambda x: Model().static_inner(x),
}


@pytest.mark.parametrize("kind", sorted(CALLS))
def test_each_call_is_one_event_with_its_arguments_and_result(kind):
    """Every kind of callable gives exactly one event: arguments by name, defaults, result."""
    with testing.capture() as events:
        assert CALLS[kind](40) == 42
    assert len(events) == 1
    row = events[0]
    assert {k: row[k] for k in ("x", "y", "prediction")} == {"x": 40, "y": 2, "prediction": 42}
    assert set(row) == {"x", "y", "prediction", "event_id", "timestamp"}
    if not kind.startswith("async"):  # asyncio.run keeps the task's ids in the task
        assert row["event_id"] == fiddler_trace.last_event_id()
    assert events.models == [MODEL]


@pytest.mark.parametrize("kind", sorted(CALLS))
def test_a_call_that_raises_passes_the_exception_and_makes_no_event(kind):
    """The host's exception reaches the caller as the same object; no event; errors counted."""
    with testing.capture() as events, pytest.raises(Boom, match="model failed") as caught:
        CALLS[kind]("boom")
    assert events == []
    assert fiddler_trace.stats()["errors"] == 1
    assert fiddler_trace.last_event_id() is None
    frames = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert "score" in frames  # the traceback still reaches the raise


def test_the_exception_object_is_the_one_raised():
    """Identity, args and context of the host's exception survive the wrapper."""
    error = Boom("the one")

    @monitor(MODEL)
    def fail():
        raise error

    with testing.capture(), pytest.raises(Boom) as caught:
        fail()
    assert caught.value is error
    assert caught.value.__context__ is None


def test_base_exceptions_pass_without_being_counted():
    """KeyboardInterrupt-like exceptions pass through; they are not counted as errors."""

    class Stop(BaseException):
        pass

    @monitor(MODEL)
    def interrupted():
        raise Stop

    with testing.capture() as events, pytest.raises(Stop):
        interrupted()
    assert events == []
    assert fiddler_trace.stats()["errors"] == 0


def test_name_doc_signature_and_coroutine_check_survive():
    """The wrapper keeps name, qualname, docstring, signature and coroutine-function checks."""
    assert plain.__name__ == "plain"
    assert plain.__doc__ == "Plain doc."
    assert str(inspect.signature(plain)) == "(x, y=2)"
    assert coroutine.__name__ == "coroutine"
    assert coroutine.__doc__ == "Async doc."
    assert inspect.iscoroutinefunction(coroutine)
    assert asyncio.iscoroutinefunction(coroutine)
    assert not inspect.iscoroutinefunction(plain)
    assert inspect.iscoroutinefunction(Model().async_method)
    assert Model.method.__qualname__ == "Model.method"
    assert Model.method.__doc__ == "Method doc."
    assert str(inspect.signature(Model().method)) == "(x, y=2)"
    assert str(inspect.signature(Model.class_outer)) == "(x, y=2)"
    assert str(inspect.signature(Model.static_outer)) == "(x, y=2)"
    assert inspect.unwrap(nested_inner).__name__ == "nested_inner"


def test_decorating_leaves_the_hosts_function_object_as_it_was():
    """The wrapper calls a copy of a plain function (see _monitor._probe_free): the host's own
    function object gains no attribute, and its attributes, defaults and closure carry over."""
    factor = 10

    def scale(x, y=2, *, z=3):
        return {"value": (x + y + z) * factor}

    scale.version = "v7"  # type: ignore[attr-defined]
    before = dict(scale.__dict__)
    monitored = monitor(MODEL)(scale)
    assert scale.__dict__ == before
    assert monitored.version == "v7"
    assert monitored.__wrapped__.__code__ is scale.__code__
    assert getattr(monitored, "__self__", None) is None
    with testing.capture() as events:
        assert monitored(1) == {"value": 60}
        assert monitored(1, 1, z=1) == {"value": 30}
    assert [row["value"] for row in events] == [60, 30]
    assert (events[0]["x"], events[0]["y"], events[0]["z"]) == (1, 2, 3)


def test_two_monitors_on_one_function_make_one_event_each():
    """Stacked monitors of two models: one event per model per call."""

    @monitor(MODEL)
    @monitor(OTHER)
    def both(x):
        return x

    with testing.capture() as events:
        both(1)
    assert sorted(events.models) == sorted([MODEL, OTHER])
    assert events[0]["event_id"] != events[1]["event_id"]


def test_methods_see_their_instance():
    """A method's self is bound as usual (not a column) and its state affects the result."""
    model = Model()
    model.bias = 100
    with testing.capture() as events:
        assert model.method(1) == 103
    assert "self" not in events[0]
    assert events[0]["prediction"] == 103


def test_disabled_calls_through_without_capturing():
    """With capture off the function runs, no event exists and no id is set."""
    seen = []

    @monitor(MODEL)
    def work(x):
        seen.append(fiddler_trace.current_event_id())
        return x * 2

    assert not _pipeline.capturing
    assert work(4) == 8
    assert seen == [None]
    assert fiddler_trace.last_event_id() is None
    assert fiddler_trace.stats()["captured"] == 0


def test_disabled_async_returns_the_hosts_own_coroutine():
    """With capture off an async monitored call is the host coroutine itself."""

    async def raw(x):
        return x

    wrapped = monitor(MODEL)(raw)
    pending = wrapped(1)
    assert pending.cr_code is raw.__code__
    assert asyncio.run(pending) == 1


def test_init_turns_capture_on_and_off_at_run_time():
    """init(enabled=...) changes capture for already-decorated functions."""
    fiddler_trace.init(enabled=True, url="http://127.0.0.1:9", token="t")
    assert _pipeline.capturing
    fiddler_trace.init(enabled=False)
    assert not _pipeline.capturing
    with testing.capture() as events:
        plain(1)
    assert len(events) == 1


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"model_id": "not-a-uuid"}, ["model_id", "not-a-uuid", "UUID"]),
        ({"model_id": 42}, ["model_id", "int", "UUID"]),
        ({"sample_rate": 1.5}, ["sample_rate", "1.5", "0.0"]),
        ({"sample_rate": -0.1}, ["sample_rate", "-0.1"]),
        ({"sample_rate": True}, ["sample_rate", "True"]),
        ({"sample_rate": float("nan")}, ["sample_rate", "nan"]),
        ({"sample_rate": "0.5"}, ["sample_rate", "'0.5'"]),
        ({"inputs": "age"}, ["inputs", "'age'", "list"]),
        ({"inputs": ["age", "nope"]}, ["inputs", "'nope'", "age"]),
        ({"outputs": 3}, ["outputs", "3"]),
        ({"output_column": ""}, ["output_column", "''"]),
        ({"event_id_column": None}, ["event_id_column", "None"]),
        ({"timestamp_column": 5}, ["timestamp_column", "5"]),
        ({"metadata": ["a"]}, ["metadata", "['a']", "mapping"]),
        ({"event_id": "fixed"}, ["event_id", "'fixed'", "callable"]),
        ({"redact": [1]}, ["redact", "[1]", "column names"]),
        ({"batch": "yes"}, ["batch", "'yes'", "True or False"]),
    ],
)
def test_bad_arguments_fail_at_decoration_naming_the_argument_and_value(options, names):
    """Each bad argument raises ConfigurationError at decoration with name, value, accepted."""
    arguments = {"model_id": MODEL, **options}
    with pytest.raises(ConfigurationError) as caught:

        @monitor(**arguments)
        def predict(age, income):
            return 1

    for name in names:
        assert name in str(caught.value)


def test_a_bare_monitor_says_how_to_use_it():
    """@monitor without arguments explains that the model id is needed."""
    with pytest.raises(ConfigurationError, match="model_id"):

        @monitor  # type: ignore[arg-type]
        def predict(x):
            return x


def test_only_functions_can_be_monitored():
    """Decorating something that is not callable is refused at decoration."""
    with pytest.raises(ConfigurationError, match="function"):
        monitor(MODEL)(42)


def test_a_bad_environment_variable_fails_at_decoration(monkeypatch):
    """A bad FIDDLER_* value raises at import (decoration) time, naming the variable."""
    monkeypatch.setenv("FIDDLER_TRACE_SAMPLE_RATE", "lots")
    with pytest.raises(ConfigurationError, match=r"FIDDLER_TRACE_SAMPLE_RATE.*lots"):
        monitor(MODEL)(score)


def test_enabled_without_url_fails_at_decoration(monkeypatch):
    """FIDDLER_TRACE_ENABLED=1 without FIDDLER_URL/FIDDLER_TOKEN fails at decoration."""
    monkeypatch.setenv("FIDDLER_TRACE_ENABLED", "1")
    monkeypatch.delenv("FIDDLER_URL", raising=False)
    monkeypatch.delenv("FIDDLER_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="FIDDLER_URL"):
        monitor(MODEL)(score)


def test_uuid_objects_and_uppercase_ids_are_accepted():
    """model_id may be a uuid.UUID or any spelling of one; events carry the canonical form."""

    @monitor(uuid.UUID(MODEL))
    def a(x):
        return x

    @monitor(MODEL.upper())
    def b(x):
        return x

    with testing.capture() as events:
        a(1)
        b(1)
    assert events.models == [MODEL, MODEL]
