"""EventsClient against httpx.MockTransport: bodies, headers, chunking, errors, validation."""

from __future__ import annotations

import datetime as dt
import math
import platform
import ssl
from typing import Any, Callable

import certifi
import httpx
import orjson
import pytest

import fiddler_trace
from fiddler_trace import EventsClient, FiddlerAPIError, Job

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"
TOKEN = "tok-0123456789-secret"


class Recorder:
    """A MockTransport handler that keeps each request and answers like Fiddler."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.answer = answer

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.answer is not None:
            return self.answer(request)
        body = orjson.loads(request.content)
        if request.method == "DELETE":
            job = {"id": "1a2b3c4d-0000-4000-8000-000000000000", "name": "delete events"}
            return httpx.Response(202, json={"kind": "NORMAL", "data": {"job": job}})
        source = body["source"]
        if source["type"] == "FILE":
            job = {"id": "1a2b3c4d-0000-4000-8000-000000000001", "name": "ingest"}
            data = {"source_type": "FILE", "job": job}
            return httpx.Response(202, json={"kind": "NORMAL", "data": data})
        ids = [e.get("event_id", f"gen-{i}") for i, e in enumerate(source["events"])]
        data = {"source_type": "EVENTS", "event_ids": ids}
        return httpx.Response(200, json={"api_version": "3.0", "kind": "NORMAL", "data": data})

    def bodies(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.content) for r in self.requests]


def client_with(recorder: Recorder, **kwargs: Any) -> EventsClient:
    return EventsClient(
        "https://fiddler.example", TOKEN, transport=httpx.MockTransport(recorder), **kwargs
    )


def test_publish_sends_the_contract_body_and_headers(request_log):
    """publish POSTs a PublishEventsRequest with bearer auth, JSON and our User-Agent."""
    recorder = Recorder()
    with client_with(recorder) as client:
        ids = client.publish(MODEL, [{"event_id": "a", "x": 1}, {"event_id": "b", "x": 2}])
    assert ids == ["a", "b"]
    (request,) = recorder.requests
    assert request.method == "POST"
    assert request.url == "https://fiddler.example/v3/events"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    major, minor, _ = platform.python_version_tuple()
    assert request.headers["user-agent"] == (
        f"fiddler-trace/{fiddler_trace.__version__} python/{major}.{minor}"
    )
    assert orjson.loads(request.content) == {
        "model_id": MODEL,
        "env_type": "PRODUCTION",
        "source": {
            "type": "EVENTS",
            "events": [{"event_id": "a", "x": 1}, {"event_id": "b", "x": 2}],
        },
    }
    assert request_log.requests == [("POST", "/v3/events")]


def test_publish_chunks_to_1000_and_keeps_id_order():
    """2,500 events go as 1000 + 1000 + 500, and the ids come back in order."""
    recorder = Recorder()
    events = [{"event_id": f"e{i}"} for i in range(2500)]
    with client_with(recorder) as client:
        ids = client.publish(MODEL, events)
    assert [len(b["source"]["events"]) for b in recorder.bodies()] == [1000, 1000, 500]
    assert ids == [f"e{i}" for i in range(2500)]


def test_publish_chunks_by_bytes():
    """Requests stay under max_request_bytes of events."""
    recorder = Recorder()
    events = [{"event_id": f"e{i}", "pad": "x" * 100} for i in range(50)]
    with client_with(recorder, max_request_bytes=1000) as client:
        client.publish(MODEL, events)
    assert len(recorder.requests) > 5
    assert all(len(orjson.dumps(b["source"]["events"])) <= 1000 for b in recorder.bodies())


def test_nan_and_inf_become_null():
    """NaN and ±Inf are sent as null, keeping the body valid JSON."""
    recorder = Recorder()
    with client_with(recorder) as client:
        client.publish(MODEL, [{"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.5}])
    assert recorder.bodies()[0]["source"]["events"] == [{"a": None, "b": None, "c": None, "d": 1.5}]


def test_update_patches_with_env_name():
    """update PATCHes the events; env_name is sent when given."""
    recorder = Recorder()
    with client_with(recorder) as client:
        assert client.update(MODEL, [{"event_id": "a", "target": 1}], env_name="prod-eu") == ["a"]
    (request,) = recorder.requests
    assert request.method == "PATCH"
    assert orjson.loads(request.content)["env_name"] == "prod-eu"


def test_publish_file_returns_the_job():
    """publish_file sends a FILE source and returns the job."""
    recorder = Recorder()
    file_id = "9d9d9d9d-0000-4000-8000-000000000000"
    with client_with(recorder) as client:
        job = client.publish_file(MODEL, file_id)
    assert job == Job(id="1a2b3c4d-0000-4000-8000-000000000001", name="ingest")
    assert recorder.bodies()[0] == {
        "model_id": MODEL,
        "env_type": "PRE_PRODUCTION",
        "source": {"type": "FILE", "file_id": file_id},
    }


def test_publish_refuses_pre_production_events():
    """Streaming to PRE_PRODUCTION is refused before sending: Fiddler takes files there."""
    recorder = Recorder()
    with client_with(recorder) as client, pytest.raises(ValueError, match="publish_file"):
        client.publish(MODEL, [{}], env_type="PRE_PRODUCTION")
    assert recorder.requests == []


def test_bad_model_id_is_refused_before_sending():
    """A model_id that is not a UUID raises ValueError naming it."""
    recorder = Recorder()
    with client_with(recorder) as client, pytest.raises(ValueError, match="not a UUID"):
        client.publish("my-model", [{}])
    assert recorder.requests == []


def test_delete_by_ids_chunks_at_10000():
    """25,000 ids go in three DELETE requests; one job each; update_metrics always sent."""
    recorder = Recorder()
    ids = [f"e{i}" for i in range(25_000)]
    with client_with(recorder) as client:
        jobs = client.delete(MODEL, event_ids=ids)
    assert len(jobs) == 3
    bodies = recorder.bodies()
    assert [len(b["event_ids"]) for b in bodies] == [10_000, 10_000, 5_000]
    assert all(b["update_metrics"] is False for b in bodies)


def test_delete_by_range_sends_utc_with_z():
    """Aware datetimes and offset strings are sent as UTC ISO 8601 with Z."""
    recorder = Recorder()
    start = dt.datetime(2026, 1, 1, 2, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    with client_with(recorder) as client:
        (job,) = client.delete(
            MODEL, start_time=start, end_time="2026-01-02T00:00:00+00:00", update_metrics=True
        )
    assert job.name == "delete events"
    assert recorder.bodies()[0] == {
        "model_id": MODEL,
        "time_range": {
            "start_time": "2026-01-01T00:00:00.000Z",
            "end_time": "2026-01-02T00:00:00.000Z",
        },
        "update_metrics": True,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "delete every event"),
        ({"event_ids": ["a"], "start_time": "2026-01-01T00:00:00Z"}, "not both"),
        ({"start_time": "2026-01-01T00:00:00Z"}, "end_time is missing"),
        ({"end_time": "2026-01-01T00:00:00Z"}, "start_time is missing"),
        (
            {"start_time": dt.datetime(2026, 1, 1), "end_time": "2026-01-02T00:00:00Z"},
            "no time zone",
        ),
        ({"start_time": "2026-01-01T00:00:00", "end_time": "2026-01-02T00:00:00Z"}, "no time zone"),
        ({"start_time": "yesterday", "end_time": "2026-01-02T00:00:00Z"}, "not ISO 8601"),
        ({"event_ids": ["a"], "update_metrics": True}, "update_metrics=True"),
        ({"event_ids": []}, "empty"),
        ({"event_ids": "abc"}, "is a string"),
        ({"start_time": "2026-01-02T00:00:00Z", "end_time": "2026-01-01T00:00:00Z"}, "not before"),
    ],
)
def test_delete_refuses_before_sending(kwargs, message):
    """Every unsafe or ambiguous delete raises ValueError saying why, and sends nothing."""
    recorder = Recorder()
    with client_with(recorder) as client, pytest.raises(ValueError, match=message):
        client.delete(MODEL, **kwargs)
    assert recorder.requests == []


def test_error_envelope_becomes_fiddler_api_error():
    """An ErrorResponse body fills status, code, message and errors."""
    envelope = {
        "api_version": "3.0",
        "kind": "ERROR",
        "error": {
            "code": 400,
            "message": "env_type is invalid",
            "errors": [{"reason": "invalid", "message": "env_type is invalid", "help": "docs"}],
        },
    }
    recorder = Recorder(lambda r: httpx.Response(400, json=envelope))
    with client_with(recorder) as client, pytest.raises(FiddlerAPIError) as caught:
        client.publish(MODEL, [{}])
    error = caught.value
    assert (error.status, error.code, error.message) == (400, 400, "env_type is invalid")
    assert error.errors == [{"reason": "invalid", "message": "env_type is invalid", "help": "docs"}]
    assert TOKEN not in str(error) + repr(error)


def test_non_json_error_keeps_status_and_200_characters():
    """A non-JSON error body still gives the status and its first 200 characters."""
    recorder = Recorder(
        lambda r: httpx.Response(
            502, text="<html>" + "bad gateway " * 100, headers={"Retry-After": "5"}
        )
    )
    with client_with(recorder) as client, pytest.raises(FiddlerAPIError) as caught:
        client.publish(MODEL, [{}])
    assert caught.value.status == 502
    assert caught.value.message.startswith("<html>bad gateway")
    assert len(caught.value.message) == 200
    assert caught.value.retry_after == "5"


def test_any_2xx_is_success():
    """A 202 (or an empty 204) to a publish is success."""
    recorder = Recorder(lambda r: httpx.Response(204))
    with client_with(recorder) as client:
        assert client.publish(MODEL, [{"x": 1}]) == []


def test_repr_hides_the_token():
    """repr() shows the URL, never the token."""
    client = EventsClient("https://fiddler.example", TOKEN)
    try:
        assert TOKEN not in repr(client)
        assert "fiddler.example" in repr(client)
    finally:
        client.close()


def test_verify_takes_a_ca_bundle_path(tmp_path):
    """verify= accepts a CA bundle path; a missing file fails at construction."""
    with pytest.raises((OSError, ValueError)):
        EventsClient("https://fiddler.example", TOKEN, verify=str(tmp_path / "missing.pem"))


def test_verify_ca_bundle_is_loaded(tmp_path):
    """A CA bundle path becomes the TLS trust store; a file that is no bundle fails at once."""
    client = EventsClient("https://fiddler.example", TOKEN, verify=certifi.where())
    client.close()
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ssl.SSLError):
        EventsClient("https://fiddler.example", TOKEN, verify=str(bad))


@pytest.mark.parametrize(
    ("url", "proxy", "loads"),
    [
        ("http://127.0.0.1:8080", None, False),  # no TLS connection is ever made
        ("HTTP://127.0.0.1:8080", None, False),
        ("https://fiddler.example", None, True),
        ("http://127.0.0.1:8080", ("HTTP_PROXY", "https://proxy.example:3128"), True),
        ("http://127.0.0.1:8080", ("all_proxy", "https://proxy.example:3128"), True),
    ],
)
def test_the_ca_bundle_is_loaded_only_where_tls_may_be_used(monkeypatch, url, proxy, loads):
    """verify=True loads the CA bundle (tens of ms per client) only when the client may make a
    TLS connection: to an https:// URL, or through a proxy from the environment."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    if proxy is not None:
        monkeypatch.setenv(*proxy)
    loaded: list[Any] = []
    real = ssl.SSLContext.load_verify_locations

    def load_verify_locations(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loaded.append(args or kwargs)
        real(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", load_verify_locations)
    EventsClient(url, TOKEN).close()
    assert bool(loaded) is loads
