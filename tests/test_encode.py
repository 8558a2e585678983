"""Value encoding: every awkward value becomes valid JSON that means what the value meant."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import logging
import math
import uuid
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fiddler_trace
from fiddler_trace._encode import CYCLE, TRUNCATED, Encoder, dumps
from fiddler_trace.collector import Collector

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"
OTHER = "0b5e3b62-2222-4333-8444-555566667777"


def roundtrip(value: Any, **kwargs: Any) -> Any:
    return json.loads(Encoder(**kwargs)(value))


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: float


class Model:
    """Stands in for a pydantic model."""

    def model_dump(self) -> dict[str, Any]:
        return {"a": 1}


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque>"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.int64(3), 3),
        (np.float32(1.5), 1.5),
        (np.bool_(True), True),
        (np.array([[1, 2], [3, 4]]), [[1, 2], [3, 4]]),
        (np.array([1.0, np.nan, np.inf]), [1.0, None, None]),
        (math.nan, None),
        (-math.inf, None),
        (decimal.Decimal("2.50"), 2.5),
        (decimal.Decimal("NaN"), None),
        (uuid.UUID("6f1c0f0e-1111-4222-8333-444455556666"), "6f1c0f0e-1111-4222-8333-444455556666"),
        (Color.RED, "red"),
        ({3}, [3]),
        (frozenset({"a"}), ["a"]),
        ((1, "a"), [1, "a"]),
        (b"text", "text"),
        (b"\xff\x00", "/wA="),
        (Point(1, 2.0), {"x": 1, "y": 2.0}),
        (Model(), {"a": 1}),
        ({"nested": {"deep": [1, {"k": 2}]}}, {"nested": {"deep": [1, {"k": 2}]}}),
        ({1: "int key"}, {"1": "int key"}),
        (dt.date(2026, 1, 2), "2026-01-02"),
        (dt.time(3, 4, 5), "03:04:05"),
        (dt.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05"),
        (
            dt.datetime(2026, 1, 2, 5, 4, 5, 678000, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "2026-01-02T03:04:05.678Z",
        ),
        (pd.Timestamp("2026-01-02T03:04:05", tz="UTC"), "2026-01-02T03:04:05.000Z"),
        (pd.NaT, None),
        (pd.NA, None),
        (pd.Series([1, 2]), [1, 2]),
        (Opaque(), "<Opaque>"),
        (BadRepr(), "<unrepresentable BadRepr>"),
    ],
)
def test_value_rules(value, expected):
    """Each kind of value has one JSON form."""
    assert roundtrip({"v": value}) == {"v": expected}


def test_unknown_type_warns_once_per_type(caplog):
    """A value with no JSON form is sent as repr(), with one warning per type."""
    encoder = Encoder()
    with caplog.at_level(logging.WARNING, logger="fiddler_trace"):
        for _ in range(3):
            encoder({"v": Opaque()})
    assert caplog.text.count("Opaque") == 1


def test_cycles_are_cut():
    """A structure that contains itself is encoded with a marker instead of hanging."""
    loop: dict[str, Any] = {"a": 1}
    loop["self"] = loop
    items: list[Any] = [1]
    items.append(items)
    assert roundtrip({"d": loop, "l": items}) == {
        "d": {"a": 1, "self": CYCLE},
        "l": [1, CYCLE],
    }


def test_very_deep_nesting_does_not_crash():
    """Nesting deeper than any encoder allows still gives a row object; other columns intact."""
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    row = json.loads(Encoder()({"deep": deep, "x": 1}))
    assert row["x"] == 1
    assert set(row) == {"deep", "x"}


@dataclasses.dataclass
class Node:
    child: Any = None


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("cyclic-dataclass", id="cyclic-dataclass"),
        pytest.param(np.datetime64("NaT", "ns"), id="numpy-nat"),
        pytest.param({2**70: "huge key"}, id="huge-int-key"),
    ],
)
def test_a_bad_column_never_turns_the_row_into_a_string(bad):
    """Whatever one column holds, the row stays a JSON object with every column."""
    if bad == "cyclic-dataclass":
        bad = Node()
        bad.child = bad
    row = json.loads(Encoder()({"bad": bad, "good": [1, 2]}))
    assert isinstance(row, dict)
    assert row["good"] == [1, 2]
    assert "bad" in row


def test_bytes_and_converted_values_are_truncated_too():
    """Long bytes, and strings inside dataclasses, are cut like strings."""
    counted: list[int] = []
    encoder = Encoder(max_value_chars=10, on_truncate=counted.append)
    row = json.loads(encoder({"b": b"x" * 100, "d": Point(1, 2.0), "m": Node("y" * 50)}))
    assert row["b"] == "x" * 10 + TRUNCATED
    assert row["m"] == {"child": "y" * 10 + TRUNCATED}
    assert counted == [2]


def test_long_strings_are_truncated_and_counted():
    """Strings over max_value_chars are cut, nested ones too; each cut is counted."""
    counted: list[int] = []
    encoder = Encoder(max_value_chars=10, on_truncate=counted.append)
    row = {"a": "x" * 50, "b": {"c": ["y" * 11, "short"]}, "d": "z" * 10}
    assert json.loads(encoder(row)) == {
        "a": "x" * 10 + TRUNCATED,
        "b": {"c": ["y" * 10 + TRUNCATED, "short"]},
        "d": "z" * 10,
    }
    assert counted == [2]


def test_short_rows_are_not_walked():
    """Rows that encode shorter than the limit are never searched for long strings."""
    counted: list[int] = []
    Encoder(max_value_chars=1000, on_truncate=counted.append)({"a": "x" * 999})
    assert counted == []


def test_dumps_never_truncates():
    """The client's encoder keeps strings whole."""
    assert orjson.loads(dumps({"a": "x" * 100_000}))["a"] == "x" * 100_000


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.binary(max_size=20),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.datetimes(timezones=st.none() | st.timezones()),
    st.dates(),
    st.uuids(),
    st.builds(Opaque),
    st.builds(BadRepr),
    st.builds(lambda a: np.array(a), st.lists(st.floats(allow_nan=True), max_size=4)),
)
anything = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.frozensets(st.integers(), max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers()), children, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=anything)
def test_anything_encodes_to_valid_json(value):
    """Whatever the value, the encoder returns a JSON object with the row's column."""
    row = json.loads(Encoder(max_value_chars=50)({"v": value}))
    assert isinstance(row, dict)
    assert list(row) == ["v"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=anything, b=anything)
def test_a_monitored_call_with_anything_returns_its_result_and_encodes(a, b):
    """Any arguments and any result: the call returns its result, one event, valid JSON."""
    import fiddler_trace
    from fiddler_trace import testing

    result = {"echo": b}

    @fiddler_trace.monitor(model_id="6f1c0f0e-1111-4222-8333-444455556666")
    def predict(x, y):
        return result

    with testing.capture() as events:
        assert predict(a, b) is result
    (row,) = events
    encoded = json.loads(Encoder()(row))
    assert isinstance(encoded, dict)
    assert {"x", "y", "echo", "event_id", "timestamp"} <= set(encoded)


def test_a_row_keeps_its_id_and_timestamp_whole_under_a_small_max_value_chars() -> None:
    """max_value_chars cuts long strings, not a row's id (a drawn one is a 36-character string
    where the C drain loop formats it) or timestamp, nor an id the caller gave."""
    with Collector(port=0) as running:
        fiddler_trace.init(enabled=True, url=running.url, token="t", max_value_chars=10)

        @fiddler_trace.monitor(MODEL)
        def predict(age, note):
            return {"score": age}

        long_id = "caller-" + "x" * 40

        @fiddler_trace.monitor(OTHER, event_id=lambda age, note: long_id)
        def given(age, note):
            return {"score": age}

        for i in range(5):
            predict(i, "a note longer than ten characters")
        given(1, "another long note")
        assert fiddler_trace.flush(10)
        rows = running.events(MODEL)
        (given_row,) = running.events(OTHER)
        fiddler_trace.shutdown()
    assert len(rows) == 5
    for row in rows:
        assert uuid.UUID(row["event_id"]).version == 4
        assert len(row["timestamp"]) == 24
        assert row["note"].startswith("a note lon")
        assert row["note"] != "a note longer than ten characters"
    assert given_row["event_id"] == long_id
