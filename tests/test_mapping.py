"""@monitor's mapping rules: arguments and results -> columns; failures that skip an event."""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from typing import Any, Callable

import pytest

import fiddler_trace
from fiddler_trace import _pipeline, monitor, testing

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"


@monitor(MODEL)
def plain(x, y=2):
    return x + y


def run(value: Any) -> Any:
    return asyncio.run(value) if inspect.iscoroutine(value) else value


# -- mapping rules ---------------------------------------------------------------------------


def capture_one(func: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    with testing.capture() as events:
        run(func(*args, **kwargs))
    assert len(events) == 1, events
    row = dict(events[0])
    row.pop("event_id")
    row.pop("timestamp")
    return row


def test_keyword_arguments_and_defaults_become_columns():
    """Arguments by parameter name, given positionally or by keyword, defaults applied."""

    @monitor(MODEL)
    def predict(age, income=1.0, *, region="EU", segment=None):
        return 0.5

    assert capture_one(predict, 41, region="US") == {
        "age": 41,
        "income": 1.0,
        "region": "US",
        "segment": None,
        "prediction": 0.5,
    }
    assert capture_one(predict, age=1, income=2.0)["income"] == 2.0


def test_every_argument_by_position_gives_the_same_columns_as_by_keyword():
    """The compiled all-positional path agrees with the general one, for functions and methods."""

    @monitor(MODEL)
    def predict(age, income=1.0, region="EU"):
        return {"score": 0.5}

    class Model:
        @monitor(MODEL)
        def predict(self, age, income=1.0):
            return 0.5

        @classmethod
        @monitor(MODEL)
        def build(cls, age, income=1.0):
            return 0.5

    expected = {"age": 41, "income": 2.0, "region": "EU", "score": 0.5}
    assert capture_one(predict, 41, 2.0, "EU") == expected
    assert capture_one(predict, age=41, income=2.0) == expected
    assert capture_one(predict, 41) == {**expected, "income": 1.0}
    method = {"age": 41, "income": 2.0, "prediction": 0.5}
    assert capture_one(Model().predict, 41, 2.0) == method
    assert capture_one(Model.predict, Model(), 41, 2.0) == method
    assert capture_one(Model.build, 41, 2.0) == method
    assert capture_one(Model().predict, 41) == {**method, "income": 1.0}


def test_var_positional_and_var_keyword_arguments():
    """Extra positional arguments form one column; **kwargs keywords become their own."""

    @monitor(MODEL)
    def predict(a, *rest, scale=1, **features):
        return a

    row = capture_one(predict, 1, 2, 3, color="red", size=4)
    assert row == {"a": 1, "rest": (2, 3), "scale": 1, "color": "red", "size": 4, "prediction": 1}
    assert "rest" not in capture_one(predict, 1)


def test_a_single_mapping_argument_is_expanded():
    """A function of one mapping gets the mapping's keys as columns, given either way."""

    @monitor(MODEL)
    def predict(features):
        return 1

    assert capture_one(predict, {"age": 41, "region": "EU"}) == {
        "age": 41,
        "region": "EU",
        "prediction": 1,
    }
    assert capture_one(predict, features={"age": 2})["age"] == 2
    assert capture_one(predict, 7) == {"features": 7, "prediction": 1}


def test_a_mapping_among_several_arguments_stays_one_column():
    """Only a function's one data argument is expanded; otherwise a mapping is a column."""

    class Scorer:
        @monitor(MODEL)
        def predict(self, features, threshold=0.5):
            return 1

    row = capture_one(Scorer().predict, {"age": 41})
    assert row == {"features": {"age": 41}, "threshold": 0.5, "prediction": 1}


def test_inputs_list_keeps_named_columns():
    """inputs=[names] keeps those columns; for a one-mapping function they name its keys."""

    @monitor(MODEL, inputs=["age"])
    def predict(age, income, region="EU"):
        return 1

    @monitor(MODEL, inputs=["age", "missing"])
    def predict_features(features):
        return 1

    assert capture_one(predict, 41, 1.0) == {"age": 41, "prediction": 1}
    assert capture_one(predict_features, {"age": 3, "ssn": "x"}) == {"age": 3, "prediction": 1}


def test_inputs_callable_supplies_the_columns():
    """inputs=callable gets the call's arguments (without self) and returns the columns."""

    class Scorer:
        @monitor(MODEL, inputs=lambda text, **kw: {"length": len(text), **kw})
        def predict(self, text, lang="en"):
            return 1

    assert capture_one(Scorer().predict, "hello", lang="fr") == {
        "length": 5,
        "lang": "fr",
        "prediction": 1,
    }


def test_outputs_rules():
    """A mapping result gives its keys; a scalar goes to output_column; names zip a tuple."""

    @monitor(MODEL)
    def as_mapping(x):
        return {"score": 0.7, "label": "yes"}

    @monitor(MODEL, output_column="score")
    def as_scalar(x):
        return 0.7

    @monitor(MODEL, outputs=["score", "label"])
    def as_tuple(x):
        return 0.7, "yes"

    @monitor(MODEL, outputs=lambda result: {"score": result[0]})
    def converted(x):
        return [0.7, 0.3]

    assert capture_one(as_mapping, 1) == {"x": 1, "score": 0.7, "label": "yes"}
    assert capture_one(as_scalar, 1) == {"x": 1, "score": 0.7}
    assert capture_one(as_tuple, 1) == {"x": 1, "score": 0.7, "label": "yes"}
    assert capture_one(converted, 1) == {"x": 1, "score": 0.7}


def test_an_output_wins_over_an_input_of_the_same_name():
    """Where an input and an output share a name, the output's value is kept."""

    @monitor(MODEL)
    def predict(score):
        return {"score": "from the output"}

    assert capture_one(predict, "from the input")["score"] == "from the output"


def test_metadata_dict_and_callable():
    """metadata adds constant columns (copied at decoration) or a callable's columns."""
    constant = {"model_version": "1.2"}
    counter = iter(range(10))

    @monitor(MODEL, metadata=constant)
    def with_dict(x):
        return x

    @monitor(MODEL, metadata=lambda: {"call": next(counter)})
    def with_callable(x):
        return x

    constant["model_version"] = "changed later"
    assert capture_one(with_dict, 1)["model_version"] == "1.2"
    assert capture_one(with_callable, 1)["call"] == 0
    assert capture_one(with_callable, 1)["call"] == 1


def test_event_id_callable_and_column_names():
    """event_id= supplies the id from the arguments; id/timestamp column names are settable."""

    @monitor(
        MODEL,
        event_id=lambda request_id, x: request_id,
        event_id_column="request_id",
        timestamp_column="ts",
    )
    def predict(request_id, x):
        return x

    with testing.capture() as events:
        predict("req-1", 5)
    assert events[0]["request_id"] == "req-1"
    assert "ts" in events[0]
    assert "event_id" not in events[0]
    assert fiddler_trace.last_event_id() == "req-1"


def test_a_failing_event_id_callable_falls_back_to_a_uuid():
    """An event_id= callable that raises costs the custom id, not the event."""

    @monitor(MODEL, event_id=lambda x: 1 / 0)
    def predict(x):
        return x

    with testing.capture() as events:
        assert predict(1) == 1
    assert uuid.UUID(events[0]["event_id"]).version == 4
    assert "ZeroDivisionError" in fiddler_trace.stats()["last_error"]


def test_top_level_values_are_those_of_call_time():
    """Mutating a dict argument or result after the call leaves the event as captured."""
    features = {"age": 41}
    result = {"score": 0.7}

    @monitor(MODEL)
    def predict(features):
        return result

    with testing.capture() as events:
        predict(features)
    features["age"] = 99
    result["score"] = 0.0
    assert events[0]["age"] == 41
    assert events[0]["score"] == 0.7


def test_redact_names_and_callable_and_global():
    """redact= drops columns or rewrites them; the global redact setting applies as well."""

    @monitor(MODEL, redact=["ssn"])
    def by_name(ssn, age):
        return 1

    @monitor(MODEL, redact=lambda columns: {k: v for k, v in columns.items() if k != "age"})
    def by_callable(ssn, age):
        return 1

    class Redactor:  # a callable that is false: an object with a length, say
        def __len__(self):
            return 0

        def __call__(self, columns):
            return {k: v for k, v in columns.items() if k != "ssn"}

    @monitor(MODEL, redact=Redactor())
    def by_falsy_callable(ssn, age):
        return 1

    assert capture_one(by_name, "123", 41) == {"age": 41, "prediction": 1}
    assert capture_one(by_callable, "123", 41) == {"ssn": "123", "prediction": 1}
    assert capture_one(by_falsy_callable, "123", 41) == {"age": 41, "prediction": 1}
    fiddler_trace.init(redact=["ssn"])
    assert capture_one(by_callable, "123", 41) == {"prediction": 1}


@pytest.mark.parametrize(
    "options",
    [
        {"inputs": lambda x: 42},
        {"outputs": ["a", "b", "c"]},
        {"outputs": lambda result: "not a mapping"},
        {"metadata": lambda: 1 / 0},
        {"redact": lambda columns: None},
    ],
    ids=["inputs", "outputs-names", "outputs-callable", "metadata", "redact"],
)
def test_an_event_that_cannot_be_built_is_skipped_and_reported(options, caplog):
    """A capture failure never reaches the caller: result returned, counted, logged once."""

    @monitor(MODEL, **options)
    def predict(x):
        return (1, 2)

    with testing.capture() as events:
        assert predict(1) == (1, 2)
        assert predict(2) == (1, 2)
    assert events == []
    stats = fiddler_trace.stats()
    assert (stats["capture_errors"], stats["errors"]) == (2, 0)
    assert "predict" in stats["last_error"]
    warned = [r for r in caplog.records if r.name == "fiddler_trace"]
    assert len(warned) == 1


def test_a_failing_pipeline_never_breaks_the_call(monkeypatch):
    """Even a failure inside the library's own submit leaves the host's result untouched."""

    def broken(item):
        raise RuntimeError("pipeline exploded")

    _pipeline.install_sink(broken)
    assert plain(1) == 3
    assert "pipeline exploded" in fiddler_trace.stats()["last_error"]


def test_the_hot_path_does_not_log(caplog):
    """A captured call logs nothing (logging belongs to rare failures only)."""
    caplog.set_level(logging.DEBUG)
    with testing.capture():
        for i in range(20):
            plain(i)
    assert caplog.records == []
