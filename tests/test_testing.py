"""fiddler_trace.testing: capture(), reset() and the fiddler_events pytest fixture."""

from __future__ import annotations

import threading

import fiddler_trace
from fiddler_trace import _ids, _pipeline, monitor, testing

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"
OTHER = "0b5e3b62-2222-4333-8444-555566667777"


@monitor(MODEL)
def predict(x):
    return {"score": x / 10}


def test_capture_keeps_rows_while_disabled():
    """Capture works with the library disabled; rows hold columns, id and timestamp."""
    assert not _pipeline.capturing
    with testing.capture() as events:
        predict(5)
    assert isinstance(events, list)
    assert len(events) == 1
    assert events[0]["x"] == 5
    assert events[0]["score"] == 0.5
    assert events[0]["event_id"] == fiddler_trace.last_event_id()
    assert events[0]["timestamp"].endswith("Z")


def test_capture_sends_nothing_while_enabled(monkeypatch):
    """Enabled from the environment, capture keeps events in memory and starts no pipeline."""
    monkeypatch.setenv("FIDDLER_TRACE_ENABLED", "true")
    monkeypatch.setenv("FIDDLER_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("FIDDLER_TOKEN", "t")
    with testing.capture() as events:
        predict(1)
    assert len(events) == 1
    assert _pipeline.current() is None


def test_the_previous_state_comes_back_on_exit():
    """After the block capture is off again; later calls are not kept."""
    with testing.capture() as events:
        predict(1)
    predict(2)
    assert [row["x"] for row in events] == [1]
    assert not _pipeline.capturing


def test_nested_captures_each_keep_their_own_events():
    """An inner capture takes events while it is open; the outer one gets the rest."""
    with testing.capture() as outer:
        predict(1)
        with testing.capture() as inner:
            predict(2)
        predict(3)
    assert [row["x"] for row in outer] == [1, 3]
    assert [row["x"] for row in inner] == [2]


def test_the_state_comes_back_after_an_exception():
    """An exception inside the block still restores the previous destination."""
    try:
        with testing.capture():
            raise RuntimeError("test failure")
    except RuntimeError:
        pass
    assert not _pipeline.capturing


def test_updates_and_models_are_kept_apart():
    """Updates are in .updates; each event's and update's model is recorded."""

    @monitor(OTHER)
    def other(x):
        return x

    with testing.capture() as events:
        predict(1)
        first = fiddler_trace.last_event_id()
        other(2)
        fiddler_trace.update(first, {"target": 1})
    assert events.models == [MODEL, OTHER]
    assert [row["x"] for row in events.for_model(OTHER)] == [2]
    assert events.updates == [{"target": 1, "event_id": first}]
    assert events.update_models == [MODEL]


def test_capture_is_thread_safe():
    """Events from many threads all land in the list."""
    with testing.capture() as events:
        threads = [
            threading.Thread(target=lambda: [predict(i) for i in range(100)]) for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert len(events) == 800
    assert len(events.models) == 800


def test_reset_forgets_ids_counters_and_settings():
    """reset() clears remembered ids, this context's ids, counters and settings."""
    fiddler_trace.init(sample_rate=0.5)
    with testing.capture():
        predict(1)
    assert fiddler_trace.last_event_id() is not None
    testing.reset()
    assert fiddler_trace.last_event_id() is None
    assert len(_ids.RECENT) == 0
    assert fiddler_trace.stats()["captured"] == 0
    assert _pipeline.settings().sample_rate == 1.0


def test_the_fixture_captures_the_tests_events(fiddler_events):
    """The fiddler_events fixture (pytest11 plugin) captures for the whole test."""
    predict(7)
    assert [row["x"] for row in fiddler_events] == [7]


def test_the_plugin_is_registered_through_its_entry_point(pytestconfig):
    """The pytest11 entry point registers fiddler_trace's plugin."""
    plugin = pytestconfig.pluginmanager.get_plugin("fiddler_trace")
    assert plugin is not None
    assert plugin.__name__ == "fiddler_trace._pytest_plugin"
