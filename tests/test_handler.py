"""FiddlerHandler: records carrying a mapping become events; nothing else, and never a crash."""

from __future__ import annotations

import logging
import logging.config
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from freezegun import freeze_time

import fiddler_trace
from fiddler_trace import ConfigurationError, FiddlerHandler, _pipeline, testing
from fiddler_trace._worker import THREAD_NAME

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"
OTHER = "0b5e3b62-2222-4333-8444-555566667777"


@pytest.fixture
def log() -> Iterator[logging.Logger]:
    """A logger of the application with a FiddlerHandler for MODEL, not propagating."""
    logger = logging.getLogger("app.scoring")
    handler = FiddlerHandler(MODEL)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger
    logger.removeHandler(handler)
    logger.propagate = True


def test_a_record_with_a_mapping_becomes_an_event(log):
    """extra={"fiddler": {...}} -> one event with those columns, record time and a new id."""
    with testing.capture() as events, freeze_time("2026-01-02T03:04:05.678Z"):
        log.info("scored", extra={"fiddler": {"age": 41, "prediction": 0.7}})
    assert len(events) == 1
    row = events[0]
    assert row["age"] == 41
    assert row["prediction"] == 0.7
    assert row["timestamp"] == "2026-01-02T03:04:05.678Z"
    assert uuid.UUID(row["event_id"]).version == 4
    assert events.models == [MODEL]
    assert fiddler_trace.stats()["captured"] == 1


def test_other_records_are_ignored(log):
    """Records without the field, of any level and shape, make no event."""
    with testing.capture() as events:
        log.info("plain message")
        log.warning("with args %s", 1)
        log.info("other extra", extra={"user": "x"})
    assert events == []
    assert fiddler_trace.stats()["capture_errors"] == 0


def test_the_mappings_event_id_is_used(log):
    """An event id column in the mapping is the event's id (so updates can find it)."""
    with testing.capture() as events:
        log.info("scored", extra={"fiddler": {"event_id": "req-7", "x": 1}})
        fiddler_trace.update("req-7", {"target": 1})
    assert events[0]["event_id"] == "req-7"
    assert events.updates == [{"target": 1, "event_id": "req-7"}]
    assert events.update_models == [MODEL]


def test_the_model_may_come_from_the_record():
    """Without a handler model_id each record names its model in fiddler_model_id."""
    logger = logging.getLogger("app.models")
    handler = FiddlerHandler()
    logger.addHandler(handler)
    try:
        with testing.capture() as events:
            logger.warning("a", extra={"fiddler": {"x": 1}, "fiddler_model_id": OTHER.upper()})
            logger.warning("b", extra={"fiddler": {"x": 2}})  # no model: counted, not raised
            logger.warning("c", extra={"fiddler": {"x": 3}, "fiddler_model_id": "nope"})
    finally:
        logger.removeHandler(handler)
    assert events.models == [OTHER]
    stats = fiddler_trace.stats()
    assert stats["capture_errors"] == 2
    assert "fiddler_model_id" in stats["last_error"]


def test_bad_records_are_counted_and_never_raise(log, monkeypatch):
    """A field that is not a mapping, or breaks when read, is counted; handleError not called."""

    class Exploding(dict):
        def __iter__(self):
            raise RuntimeError("cannot iterate")

        def keys(self):
            raise RuntimeError("cannot list keys")

    handler = log.handlers[0]
    monkeypatch.setattr(handler, "handleError", lambda record: pytest.fail("handleError"))
    with testing.capture() as events:
        log.info("a", extra={"fiddler": ["not", "a", "mapping"]})
        log.info("b", extra={"fiddler": Exploding(x=1)})
        log.info("c", extra={"fiddler": "text"})
    assert events == []
    assert fiddler_trace.stats()["capture_errors"] == 3


def test_failures_are_reported_at_most_once_a_minute(log, caplog):
    """Many bad records of one logger give one warning, not one per record."""
    with testing.capture():
        for _ in range(50):
            log.info("bad", extra={"fiddler": 1})
    warned = [r for r in caplog.records if r.name == "fiddler_trace"]
    assert len(warned) == 1
    assert "app.scoring" in warned[0].getMessage()


@pytest.mark.parametrize(
    "name", ["httpx", "httpcore", "httpcore.connection", "fiddler_trace", "fiddler_trace.x"]
)
def test_the_librarys_own_traffic_is_skipped(name):
    """Records of httpx, httpcore and fiddler_trace (and children) never become events."""
    handler = FiddlerHandler(MODEL)
    record = logging.LogRecord(name, logging.INFO, __file__, 1, "m", None, None)
    record.fiddler = {"x": 1}
    with testing.capture() as events:
        handler.handle(record)
    assert events == []


def test_records_from_the_worker_thread_are_skipped():
    """A record logged on the pipeline's worker thread never feeds back into the pipeline."""
    handler = FiddlerHandler(MODEL)

    def emit():
        record = logging.LogRecord("some.lib", logging.INFO, __file__, 1, "m", None, None)
        record.fiddler = {"x": 1}
        handler.handle(record)

    with testing.capture() as events:
        thread = threading.Thread(target=emit, name=THREAD_NAME)
        thread.start()
        thread.join(timeout=10)
    assert events == []


def test_a_redactor_that_logs_does_not_recurse(log):
    """A record logged while the handler is capturing on that thread is skipped."""

    def redact(columns):
        log.info("inner", extra={"fiddler": {"inner": True}})
        return columns

    logger = logging.getLogger("app.redacting")
    handler = FiddlerHandler(MODEL, redact=redact)
    logger.addHandler(handler)
    try:
        with testing.capture() as events:
            logger.warning("outer", extra={"fiddler": {"outer": True}})
    finally:
        logger.removeHandler(handler)
    assert [sorted(row) for row in events] == [["event_id", "outer", "timestamp"]]


def test_redaction_sampling_and_column_names():
    """redact=, sample_rate= and the id/timestamp column names apply to handler events."""
    logger = logging.getLogger("app.options")
    handler = FiddlerHandler(
        MODEL,
        event_field="event",
        event_id_column="request_id",
        timestamp_column="ts",
        redact=["ssn"],
    )
    sampled_out = FiddlerHandler(OTHER, sample_rate=0.0)
    logger.addHandler(handler)
    logger.addHandler(sampled_out)
    try:
        with testing.capture() as events:
            logger.warning("a", extra={"event": {"ssn": "1", "x": 1}, "fiddler": {"y": 1}})
    finally:
        logger.removeHandler(handler)
        logger.removeHandler(sampled_out)
    assert len(events) == 1
    assert set(events[0]) == {"x", "request_id", "ts"}
    assert fiddler_trace.stats()["sampled_out"] == 1


def test_records_are_ignored_while_capture_is_off(log):
    """With capture off the handler does nothing at all."""
    assert not _pipeline.capturing
    log.info("scored", extra={"fiddler": {"x": 1}})
    assert fiddler_trace.stats()["captured"] == 0


def test_dict_config_builds_the_handler():
    """logging.config.dictConfig with class fiddler_trace.FiddlerHandler and its arguments."""
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "fiddler": {
                    "class": "fiddler_trace.FiddlerHandler",
                    "model_id": MODEL,
                    "event_id_column": "rid",
                    "level": "INFO",
                }
            },
            "loggers": {"app.configured": {"handlers": ["fiddler"], "propagate": False}},
        }
    )
    logger = logging.getLogger("app.configured")
    try:
        [handler] = logger.handlers
        assert isinstance(handler, FiddlerHandler)
        assert handler.level == logging.INFO
        with testing.capture() as events:
            logger.warning("x", extra={"fiddler": {"a": 1}})
            logger.debug("below the level", extra={"fiddler": {"a": 2}})
        assert [row["a"] for row in events] == [1]
        assert "rid" in events[0]
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()


def test_dict_config_with_a_bad_model_id_fails_at_configuration():
    """A bad handler argument fails when logging is configured, naming it."""
    with pytest.raises(ValueError, match="handler") as caught:
        logging.config.dictConfig(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "handlers": {"f": {"class": "fiddler_trace.FiddlerHandler", "model_id": "x"}},
            }
        )
    assert isinstance(caught.value.__cause__, ConfigurationError)
    assert "model_id" in str(caught.value.__cause__)


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"model_id": "not-a-uuid"}, "model_id"),
        ({"sample_rate": 2}, "sample_rate"),
        ({"event_field": ""}, "event_field"),
        ({"redact": 5}, "redact"),
    ],
)
def test_bad_arguments_raise_configuration_errors(options, text):
    """Each bad argument raises ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match=text):
        FiddlerHandler(**options)


def test_flush_returns_at_once_even_with_undelivered_events(log):
    """flush() (called by logging.shutdown at exit) never waits for delivery."""
    fiddler_trace.init(enabled=True, url="http://127.0.0.1:9", token="t", flush_interval=60)
    for i in range(10):
        log.info("scored", extra={"fiddler": {"i": i}})
    started = time.perf_counter()
    log.handlers[0].flush()
    assert time.perf_counter() - started < 0.1
    assert fiddler_trace.stats()["captured"] == 10


def test_many_threads_log_concurrently(log):
    """The handler is thread-safe without its lock: every record from every thread is kept."""

    def work(n):
        for i in range(200):
            log.info("scored", extra={"fiddler": {"thread": n, "i": i}})

    with testing.capture() as events:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert len(events) == 1600
    assert len({row["event_id"] for row in events}) == 1600


def test_repr_shows_model_and_field():
    """The handler's repr names its model and field (and nothing secret)."""
    assert repr(FiddlerHandler(MODEL, level=logging.INFO)) == (
        f"<FiddlerHandler model_id={MODEL!r} field='fiddler' (INFO)>"
    )


def test_a_hand_made_record_without_a_name_never_raises():
    """A record built by hand with no logger name still never raises into the log call."""
    handler = FiddlerHandler(model_id=MODEL)
    record = logging.makeLogRecord({"fiddler": {"x": 1}})
    record.name = None  # type: ignore[assignment]
    with testing.capture() as events:
        handler.handle(record)
    assert len(events) == 1
