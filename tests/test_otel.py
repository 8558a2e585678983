"""OpenTelemetry: trace_id/span_id columns and the fiddler.event_id attribute on the caller's span.

The SDK's tracer provider is used directly (never installed globally: the global provider can
be set once per process); ``start_as_current_span`` makes its span current all the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import fiddler_trace
from fiddler_trace import FiddlerHandler, monitor, testing

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Where the test tracer's finished spans land."""
    memory = InMemorySpanExporter()
    yield memory
    memory.shutdown()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> Iterator[trace.Tracer]:
    """A tracer of its own SDK provider (shutting it down also stops ``exporter``)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("tests")
    provider.shutdown()


@monitor(MODEL)
def predict(x):
    return x


def predict_in_span(tracer: trace.Tracer, name: str) -> trace.Span:
    with tracer.start_as_current_span(name) as span:
        predict(1)
    return span


def ids_of(span: trace.Span) -> tuple[str, str]:
    context = span.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def test_an_event_inside_a_span_carries_its_ids(tracer, exporter):
    """Inside a span: trace_id (32 hex) and span_id (16 hex) columns; the span gets the id."""
    with testing.capture() as events, tracer.start_as_current_span("request") as span:
        predict(1)
    trace_id, span_id = ids_of(span)
    assert events[0]["trace_id"] == trace_id
    assert events[0]["span_id"] == span_id
    assert len(trace_id) == 32
    assert len(span_id) == 16
    [finished] = exporter.get_finished_spans()
    assert finished.attributes["fiddler.event_id"] == events[0]["event_id"]


def test_no_span_no_columns(tracer, exporter):
    """Outside any span nothing is added and no span is created by the library."""
    with testing.capture() as events:
        predict(1)
    assert "trace_id" not in events[0]
    assert "span_id" not in events[0]
    assert exporter.get_finished_spans() == ()


def test_the_library_creates_no_spans(tracer, exporter):
    """The only span exported is the caller's own."""
    with testing.capture(), tracer.start_as_current_span("request"):
        predict(1)
        predict(2)
    assert [span.name for span in exporter.get_finished_spans()] == ["request"]


def test_an_invalid_current_span_adds_nothing():
    """A current but invalid span (no SDK) gives no columns."""
    with testing.capture() as events, trace.use_span(trace.INVALID_SPAN):
        predict(1)
    assert "trace_id" not in events[0]


def test_a_propagated_remote_context_gives_the_columns():
    """A valid non-recording span (e.g. from incoming headers, no SDK) still links the event."""
    context = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0x00F067AA0BA902B7,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    with testing.capture() as events, trace.use_span(NonRecordingSpan(context)):
        predict(1)
    assert events[0]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert events[0]["span_id"] == "00f067aa0ba902b7"


def test_the_innermost_current_span_is_used(tracer, exporter):
    """With nested spans the event is tied to the one current at the call."""
    with testing.capture() as events, tracer.start_as_current_span("outer"):
        inner = predict_in_span(tracer, "inner")
    assert events[0]["span_id"] == ids_of(inner)[1]
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert spans["inner"].attributes["fiddler.event_id"] == events[0]["event_id"]
    assert "fiddler.event_id" not in spans["outer"].attributes


def test_async_calls_in_a_span(tracer, exporter):
    """An async monitored call inside a span of its task is linked the same way."""

    @monitor(MODEL)
    async def apredict(x):
        await asyncio.sleep(0)
        return x

    async def main():
        with tracer.start_as_current_span("task") as span:
            await apredict(1)
            return span

    with testing.capture() as events:
        span = asyncio.run(main())
    assert (events[0]["trace_id"], events[0]["span_id"]) == ids_of(span)


def test_a_sampled_out_call_does_not_tag_the_span(tracer, exporter):
    """No event, no attribute: the span never points at an event that was not sent."""

    @monitor(MODEL, sample_rate=0.0)
    def never(x):
        return x

    with testing.capture(), tracer.start_as_current_span("request"):
        never(1)
    [finished] = exporter.get_finished_spans()
    assert "fiddler.event_id" not in finished.attributes


def test_a_batch_call_tags_the_span_with_every_id(tracer, exporter):
    """Every row of a batch carries the span's ids; the attribute lists all event ids."""

    @monitor(MODEL, batch=True)
    def score(rows):
        return [0] * len(rows)

    with testing.capture() as events, tracer.start_as_current_span("batch") as span:
        score([{"a": 1}, {"a": 2}])
    assert {(row["trace_id"], row["span_id"]) for row in events} == {ids_of(span)}
    [finished] = exporter.get_finished_spans()
    assert list(finished.attributes["fiddler.event_id"]) == fiddler_trace.last_event_ids()


def test_a_log_record_in_a_span_is_linked(tracer, exporter):
    """FiddlerHandler events get the current span's ids too."""
    logger = logging.getLogger("app.traced")
    handler = FiddlerHandler(MODEL)
    logger.addHandler(handler)
    try:
        with testing.capture() as events, tracer.start_as_current_span("request") as span:
            logger.warning("scored", extra={"fiddler": {"x": 1}})
    finally:
        logger.removeHandler(handler)
    assert (events[0]["trace_id"], events[0]["span_id"]) == ids_of(span)
    [finished] = exporter.get_finished_spans()
    assert finished.attributes["fiddler.event_id"] == events[0]["event_id"]


def test_redaction_can_drop_the_trace_columns(tracer):
    """Trace columns are columns like any other: redact= may drop them."""

    @monitor(MODEL, redact=["trace_id", "span_id"])
    def private(x):
        return x

    with testing.capture() as events, tracer.start_as_current_span("request"):
        private(1)
    assert "trace_id" not in events[0]
