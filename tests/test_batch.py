"""@monitor(batch=True): one event per row, with pandas, numpy and plain lists."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pandas as pd
import pytest
from freezegun import freeze_time

import fiddler_trace
from fiddler_trace import _ids, monitor, testing

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"


def strip(rows):
    """Rows without the id and timestamp columns."""
    return [{k: v for k, v in row.items() if k not in ("event_id", "timestamp")} for row in rows]


def test_a_dataframe_in_and_a_list_out():
    """A DataFrame's rows become events, each with its output and its own id."""

    @monitor(MODEL, batch=True)
    def predict(frame):
        return [0.1 * age for age in frame["age"]]

    frame = pd.DataFrame({"age": [10, 20, 30], "region": ["EU", "US", "EU"]})
    with testing.capture() as events:
        result = predict(frame)
    assert strip(events) == [
        {"age": 10, "region": "EU", "prediction": result[0]},
        {"age": 20, "region": "US", "prediction": result[1]},
        {"age": 30, "region": "EU", "prediction": result[2]},
    ]
    ids = fiddler_trace.last_event_ids()
    assert ids == [row["event_id"] for row in events]
    assert len(set(ids)) == 3
    assert all(uuid.UUID(i).version == 4 for i in ids)
    assert fiddler_trace.last_event_id() is None  # a batch has no single id
    assert fiddler_trace.stats()["captured"] == 3


def test_series_and_dataframe_results():
    """A Series gives output_column; a DataFrame result gives its columns."""

    class Scorer:
        @monitor(MODEL, batch=True, output_column="score")
        def series(self, frame):
            return pd.Series([1.0, 2.0])

        @monitor(MODEL, batch=True)
        def frame(self, frame):
            return pd.DataFrame({"score": [1.0, 2.0], "label": ["a", "b"]})

    frame = pd.DataFrame({"x": [1, 2]})
    with testing.capture() as events:
        Scorer().series(frame)
        Scorer().frame(frame)
    assert strip(events) == [
        {"x": 1, "score": 1.0},
        {"x": 2, "score": 2.0},
        {"x": 1, "score": 1.0, "label": "a"},
        {"x": 2, "score": 2.0, "label": "b"},
    ]


def test_a_numpy_array_with_input_names():
    """A 2-D array's columns are named by inputs=; an array result gives one value per row."""

    @monitor(MODEL, batch=True, inputs=["age", "income"])
    def predict(matrix, threshold=0.5):
        return matrix[:, 0] > threshold

    with testing.capture() as events:
        predict(np.array([[0.1, 10.0], [0.9, 20.0]]))
    assert strip(events) == [
        {"age": 0.1, "income": 10.0, "prediction": False},
        {"age": 0.9, "income": 20.0, "prediction": True},
    ]


def test_unnamed_array_columns_and_named_outputs():
    """Without inputs= array columns are "0", "1", ...; outputs= names a 2-D result's columns."""

    @monitor(MODEL, batch=True, outputs=["p0", "p1"])
    def predict(matrix):
        return np.array([[0.2, 0.8], [0.6, 0.4]])

    with testing.capture() as events:
        predict(np.array([[1, 2], [3, 4]]))
    assert strip(events) == [
        {"0": 1, "1": 2, "p0": 0.2, "p1": 0.8},
        {"0": 3, "1": 4, "p0": 0.6, "p1": 0.4},
    ]


def test_a_list_of_mappings_and_a_mapping_of_columns():
    """Rows as mappings; a result mapping of equally long columns gives one output per row."""

    @monitor(MODEL, batch=True, inputs=["age"])
    def predict(rows):
        return {"score": np.array([0.5, 0.7]), "label": ["no", "yes"]}

    rows = [{"age": 1, "ssn": "x"}, {"age": 2, "ssn": "y"}]
    with testing.capture() as events:
        predict(rows)
    assert strip(events) == [
        {"age": 1, "score": 0.5, "label": "no"},
        {"age": 2, "score": 0.7, "label": "yes"},
    ]
    assert rows[0] == {"age": 1, "ssn": "x"}  # the caller's rows are not modified


def test_rows_given_by_keyword_and_metadata_on_every_row():
    """The rows may be passed by keyword; metadata and the timestamp go on every row."""

    @monitor(MODEL, batch=True, metadata={"version": "2"})
    def predict(*, rows):
        return [1, 2]

    with testing.capture() as events, freeze_time("2026-01-02T03:04:05.678Z"):
        predict(rows=[{"a": 1}, {"a": 2}])
    assert [row["version"] for row in events] == ["2", "2"]
    assert {row["timestamp"] for row in events} == {"2026-01-02T03:04:05.678Z"}


def test_event_ids_from_a_column():
    """event_id= returns one id per row, e.g. a column of the frame."""

    @monitor(MODEL, batch=True, event_id=lambda frame: frame["request_id"])
    def predict(frame):
        return [0, 1]

    frame = pd.DataFrame({"request_id": ["r1", "r2"], "x": [1, 2]})
    with testing.capture() as events:
        predict(frame)
    assert [row["event_id"] for row in events] == ["r1", "r2"]
    assert fiddler_trace.last_event_ids() == ["r1", "r2"]


def test_a_length_mismatch_is_logged_and_counted_never_raised(caplog):
    """A result of the wrong length: the result is returned, no event, counted, logged once."""
    result = [1, 2, 3]

    @monitor(MODEL, batch=True)
    def predict(rows):
        return result

    with testing.capture() as events:
        assert predict([{"a": 1}, {"a": 2}]) is result
        assert predict([{"a": 1}, {"a": 2}]) is result
    assert events == []
    assert fiddler_trace.last_event_ids() == []
    stats = fiddler_trace.stats()
    assert (stats["capture_errors"], stats["errors"]) == (2, 0)
    assert "3 rows for 2 input rows" in stats["last_error"]
    assert len([r for r in caplog.records if r.name == "fiddler_trace"]) == 1


def test_rows_of_an_unknown_kind_are_reported_not_raised():
    """A first argument that holds no rows is a capture failure, never the caller's error."""

    @monitor(MODEL, batch=True)
    def predict(text):
        return [1]

    with testing.capture() as events:
        assert predict("not rows") == [1]
    assert events == []
    assert "DataFrame" in fiddler_trace.stats()["last_error"]


def test_a_batch_call_that_raises_makes_no_events():
    """The host's exception passes unchanged; no events; counted once."""

    @monitor(MODEL, batch=True)
    def predict(rows):
        raise KeyError("column")

    with testing.capture() as events, pytest.raises(KeyError):
        predict([{"a": 1}])
    assert events == []
    assert fiddler_trace.stats()["errors"] == 1


def test_async_batch_calls():
    """An async batch monitor captures after await; ids stay in the task."""

    @monitor(MODEL, batch=True)
    async def predict(rows):
        await asyncio.sleep(0)
        assert fiddler_trace.current_event_id() is None
        return [len(rows)] * len(rows)

    async def main():
        await predict([{"a": 1}, {"a": 2}])
        return fiddler_trace.last_event_ids()

    with testing.capture() as events:
        ids = asyncio.run(main())
    assert ids == [row["event_id"] for row in events]
    assert [row["prediction"] for row in events] == [2, 2]


def test_sampling_is_decided_per_row():
    """Each row is sampled on its own; all rows keep ids; sampled-out rows are counted."""

    @monitor(MODEL, batch=True, sample_rate=0.5)
    def predict(rows):
        return [0] * len(rows)

    _ids.seed(3)
    with testing.capture() as events:
        predict([{"i": i} for i in range(400)])
    stats = fiddler_trace.stats()
    assert 120 < len(events) < 280
    assert stats["captured"] + stats["sampled_out"] == 400
    assert len(fiddler_trace.last_event_ids()) == 400


def test_redaction_applies_to_each_row():
    """redact= drops the named columns from every row."""

    @monitor(MODEL, batch=True, redact=["ssn"])
    def predict(rows):
        return [0, 0]

    with testing.capture() as events:
        predict([{"ssn": "1", "a": 1}, {"ssn": "2", "a": 2}])
    assert strip(events) == [{"a": 1, "prediction": 0}, {"a": 2, "prediction": 0}]


def test_batch_mode_never_imports_numpy_or_pandas():
    """numpy and pandas stay optional: plain rows never import them."""
    script = textwrap.dedent(
        f"""
        import sys
        import fiddler_trace
        from fiddler_trace import testing

        @fiddler_trace.monitor({MODEL!r}, batch=True)
        def predict(rows):
            return [1] * len(rows)

        with testing.capture() as events:
            predict([{{"a": 1}}, {{"a": 2}}])
        assert len(events) == 2, events
        loaded = sorted(m for m in ("numpy", "pandas") if m in sys.modules)
        print("loaded:", loaded)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout


def test_no_log_line_on_a_good_batch(caplog):
    """A well-formed batch call logs nothing."""
    caplog.set_level(logging.DEBUG)

    @monitor(MODEL, batch=True)
    def predict(rows):
        return [1] * len(rows)

    with testing.capture():
        predict([{"a": 1}])
    assert caplog.records == []


def test_a_row_that_fails_to_build_costs_only_that_row():
    """A redactor failing on one row skips that row; the others are captured and counted."""

    def redact(columns):
        if columns["a"] == 2:
            raise ValueError("cannot redact this row")
        return columns

    @monitor(MODEL, batch=True, redact=redact)
    def predict(rows):
        return [0] * len(rows)

    with testing.capture() as events:
        predict([{"a": 1}, {"a": 2}, {"a": 3}])
    assert [row["a"] for row in events] == [1, 3]
    stats = fiddler_trace.stats()
    assert (stats["captured"], stats["capture_errors"], stats["errors"]) == (2, 1, 0)
    assert len(fiddler_trace.last_event_ids()) == 3
