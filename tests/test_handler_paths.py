"""FiddlerHandler's two capture paths: the plain record, and the one that may run the host's code.

Both must give the same events; these tests pin what the split could change.
"""

from __future__ import annotations

import logging
import threading
import types
from collections.abc import Iterator

import pytest

import fiddler_trace
from fiddler_trace import FiddlerHandler, _logging, testing
from fiddler_trace._worker import THREAD_NAME

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of the application without handlers, not propagating."""
    log = logging.getLogger("app.paths")
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
    log.propagate = True


def record(name: str = "app.paths", **attributes: object) -> logging.LogRecord:
    made = logging.LogRecord(name, logging.INFO, __file__, 1, "m", None, None)
    made.__dict__.update(attributes)
    return made


def test_filters_apply_and_emit_bypasses_them():
    """handle() applies the handler's filters and says whether the record passed; emit() does not
    filter, as with any logging.Handler."""
    handler = FiddlerHandler(MODEL)
    handler.addFilter(lambda r: r.fiddler["keep"])
    with testing.capture() as events:
        assert handler.handle(record(fiddler={"keep": True})) is True
        assert handler.handle(record(fiddler={"keep": False})) is False
        handler.emit(record(fiddler={"keep": False}))
    assert [row["keep"] for row in events] == [True, False]


def test_a_subclass_that_overrides_emit_is_called():
    """A subclass's emit() runs for each record that passes the filters, and its super().emit()
    captures the record once."""
    seen = []

    class Counting(FiddlerHandler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())
            super().emit(record)

    handler = Counting(MODEL)
    handler.addFilter(lambda r: r.getMessage() != "dropped")
    with testing.capture() as events:
        handler.handle(record(fiddler={"x": 1}))
        handler.handle(logging.makeLogRecord({"msg": "dropped", "fiddler": {"x": 2}}))
    assert seen == ["m"]
    assert [row["x"] for row in events] == [1]


def test_attributes_set_after_construction_apply_to_the_next_record(logger):
    """Changing redact, sample_rate, the column names or the model applies from the next record."""
    handler = FiddlerHandler(MODEL)
    logger.addHandler(handler)
    other = "0b5e3b62-2222-4333-8444-555566667777"
    with testing.capture() as events:
        logger.info("a", extra={"fiddler": {"ssn": "1", "x": 1}})
        handler.redact = frozenset({"ssn"})
        handler.event_id_column = "rid"
        handler.timestamp_column = "ts"
        handler.model_id = other
        logger.info("b", extra={"fiddler": {"ssn": "2", "x": 2, "rid": "r-2"}})
        fiddler_trace.update("r-2", {"target": 1})
        handler.sample_rate = 0.0
        logger.info("c", extra={"fiddler": {"x": 3}})
    assert set(events[0]) == {"ssn", "x", "event_id", "timestamp"}
    assert events[1] == {"x": 2, "rid": "r-2", "ts": events[1]["ts"]}
    assert events.models == [MODEL, other]
    assert events.updates == [{"target": 1, "rid": "r-2"}]
    assert events.update_models == [other]
    assert fiddler_trace.stats()["sampled_out"] == 1


def test_settings_changed_by_init_apply_to_an_existing_handler(logger):
    """init(redact=..., sample_rate=...) after the handler's first record applies to the next."""
    handler = FiddlerHandler(MODEL, redact=["a"])
    logger.addHandler(handler)
    with testing.capture() as events:
        logger.info("1", extra={"fiddler": {"a": 1, "b": 1, "c": 1}})
        fiddler_trace.init(redact=["b"])
        logger.info("2", extra={"fiddler": {"a": 2, "b": 2, "c": 2}})
        fiddler_trace.init(sample_rate=0.0)
        logger.info("3", extra={"fiddler": {"a": 3, "b": 3, "c": 3}})
    assert [sorted(set(row) - {"event_id", "timestamp"}) for row in events] == [
        ["b", "c"],
        ["c"],
    ]
    assert fiddler_trace.stats()["sampled_out"] == 1


def test_a_global_redactor_runs_on_handler_events(logger):
    """A callable redact= of init() is called for handler events too."""
    fiddler_trace.init(redact=lambda columns: {k: v for k, v in columns.items() if k != "pii"})
    logger.addHandler(FiddlerHandler(MODEL, redact=["x"]))
    with testing.capture() as events:
        logger.info("a", extra={"fiddler": {"pii": 1, "x": 1, "y": 1}})
    assert sorted(events[0]) == ["event_id", "timestamp", "y"]


def test_ids_and_mappings_that_are_not_plain(logger):
    """An id that is not a str becomes its str; a Mapping that is not a dict is read as one;
    the record's own mapping is never changed."""
    logger.addHandler(FiddlerHandler(MODEL, redact=["secret"]))
    given = {"event_id": 7, "secret": "s", "x": 1}
    with testing.capture() as events:
        logger.info("a", extra={"fiddler": given})
        logger.info("b", extra={"fiddler": types.MappingProxyType({"x": 2, "secret": "t"})})
        fiddler_trace.update("7", {"target": 0})
    assert events[0] == {"event_id": "7", "x": 1, "timestamp": events[0]["timestamp"]}
    assert events[1]["x"] == 2
    assert "secret" not in events[1]
    assert events.updates == [{"target": 0, "event_id": "7"}]
    assert given == {"event_id": 7, "secret": "s", "x": 1}


def test_a_sampled_out_record_with_its_own_id_can_be_updated_silently(logger):
    """update() of the id of a sampled-out record is a silent no-op, not an error."""
    logger.addHandler(FiddlerHandler(MODEL, sample_rate=0.0))
    with testing.capture() as events:
        logger.info("a", extra={"fiddler": {"event_id": "req-1", "x": 1}})
        fiddler_trace.update("req-1", {"target": 1})
    assert events == []
    assert events.updates == []
    assert fiddler_trace.stats()["sampled_out"] == 1


def test_another_thread_capturing_with_a_redactor_does_not_skip_this_ones_records(logger):
    """Records are skipped only on the thread whose redactor is running, not on every thread."""
    entered, release = threading.Event(), threading.Event()

    def slow_redact(columns):
        entered.set()
        release.wait(10)
        return columns

    redacting = logging.getLogger("app.paths.redacting")
    redacting.propagate = False
    redacting.addHandler(FiddlerHandler(MODEL, redact=slow_redact))
    logger.addHandler(FiddlerHandler(MODEL))
    try:
        with testing.capture() as events:
            thread = threading.Thread(
                target=lambda: redacting.warning("slow", extra={"fiddler": {"who": "slow"}})
            )
            thread.start()
            assert entered.wait(10)
            logger.info("plain", extra={"fiddler": {"who": "plain"}})
            release.set()
            thread.join(10)
    finally:
        release.set()
        for handler in list(redacting.handlers):
            redacting.removeHandler(handler)
        redacting.propagate = True
    assert sorted(row["who"] for row in events) == ["plain", "slow"]
    assert not _logging._busy


def test_a_fork_keeps_only_the_forking_threads_guard(monkeypatch):
    """In a forked child only the forking thread's capture guard survives: another thread of the
    child may be given the ident of a thread that died with the fork."""
    monkeypatch.setattr(_logging, "_busy", {threading.get_ident(), -1})
    _logging._after_fork_in_child()
    assert _logging._busy == {threading.get_ident()}


def test_records_of_the_worker_thread_are_skipped_without_thread_names():
    """With logging.logThreads off the record has no threadName: the current thread's is used."""
    handler = FiddlerHandler(MODEL)

    def emit():
        handler.handle(record("some.lib", fiddler={"x": 1}, threadName=None))

    with testing.capture() as events:
        thread = threading.Thread(target=emit, name=THREAD_NAME)
        thread.start()
        thread.join(timeout=10)
        handler.handle(record("some.lib", fiddler={"x": 2}, threadName=None))
    assert [row["x"] for row in events] == [2]


@pytest.mark.parametrize("name", [["not", "hashable"], 7, "httpx.custom"])
def test_odd_logger_names_are_decided_once_and_never_raise(name, monkeypatch):
    """A hand-made record's name of any type is captured unless it is the library's own traffic;
    the verdicts kept per name stay bounded."""
    monkeypatch.setattr(_logging, "_MAX_LOGGER_NAMES", 2)
    monkeypatch.setattr(_logging, "_skipped_names", {})
    handler = FiddlerHandler(MODEL)
    with testing.capture() as events:
        for other in ("a", "b", "c"):
            handler.handle(record(other, fiddler={"x": 0}))
        handler.handle(record(name, fiddler={"x": 1}))  # type: ignore[arg-type]
    assert len(_logging._skipped_names) <= 2
    assert len(events) == (3 if name == "httpx.custom" else 4)
    assert fiddler_trace.stats()["capture_errors"] == 0
