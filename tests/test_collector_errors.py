"""The collector's refusals: validation (400), auth (401), routing (404/405), framing (413)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional

import httpx
import orjson
import pytest
from collector_http import client_for, raw_exchange

from fiddler_trace.collector import Collector
from fiddler_trace.collector._validate import parse_time

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"
AUTH = {"Authorization": "Bearer t"}
_DROP = object()  # an events_body() override that removes the field


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector(max_body_bytes=64 * 1024) as running:
        yield running


@pytest.fixture
def client(collector: Collector) -> Iterator[httpx.Client]:
    with client_for(collector) as http:
        yield http


def assert_error(response: httpx.Response, status: int, reason: str, fragment: str = "") -> None:
    """The response is Fiddler's ErrorResponse for ``status`` whose message holds ``fragment``."""
    assert response.status_code == status, response.text
    envelope = response.json()
    assert set(envelope) == {"api_version", "kind", "error"}
    assert (envelope["api_version"], envelope["kind"]) == ("3.0", "ERROR")
    error = envelope["error"]
    assert error["code"] == status
    assert fragment in error["message"]
    [detail] = error["errors"]
    assert detail["reason"] == reason
    assert detail["message"] == error["message"]
    assert isinstance(detail["help"], str)
    assert detail["help"]


def events_body(events: Any = None, **overrides: Any) -> dict[str, Any]:
    source = {"type": "EVENTS", "events": [{"event_id": "e1"}] if events is None else events}
    request = {"model_id": MODEL, "env_type": "PRODUCTION", "source": source}
    request.update(overrides)
    return {key: value for key, value in request.items() if value is not _DROP}


PUBLISH_ERRORS = [
    (events_body(model_id=_DROP), "missing_field", "model_id is required"),
    (events_body(model_id="not-a-uuid"), "invalid_field", "model_id must be a UUID"),
    (events_body(model_id=42), "invalid_field", "model_id must be a UUID"),
    (events_body(env_type=_DROP), "missing_field", "env_type is required"),
    (events_body(env_type="STAGING"), "invalid_field", "env_type must be one of"),
    (events_body(env_type="PRE_PRODUCTION"), "invalid_field", "accepts only a FILE source"),
    (events_body(env_name=3), "invalid_field", "env_name must be a string or null"),
    (events_body(source=_DROP), "missing_field", "source is required"),
    (events_body(source=[]), "invalid_field", "source must be an object"),
    (events_body(source={"events": []}), "missing_field", "source.type is required"),
    (events_body(source={"type": "S3"}), "invalid_field", "source.type must be one of"),
    (events_body(source={"type": "EVENTS"}), "missing_field", "source.events is required"),
    (events_body(events={"a": 1}), "invalid_field", "source.events must be an array"),
    (events_body(events=[]), "invalid_field", "source.events must not be empty"),
    (events_body(events=[{"a": 1}, 5]), "invalid_field", "source.events[1] must be an object"),
    (events_body(events=[{"event_id": [1]}]), "invalid_field", "source.events[0].event_id"),
    (events_body(events=[{}] * 1001), "too_many_events", "1001 items; at most 1000"),
    (
        events_body(source={"type": "FILE", "file_id": "x"}),
        "invalid_field",
        "source.file_id must be a UUID",
    ),
]


@pytest.mark.parametrize(("request_body", "reason", "fragment"), PUBLISH_ERRORS)
def test_publish_validation_errors_name_the_field(
    collector: Collector,
    client: httpx.Client,
    request_body: dict[str, Any],
    reason: str,
    fragment: str,
) -> None:
    """Each contract violation of a publish is a 400 naming the field; nothing is stored."""
    assert_error(client.post("/v3/events", json=request_body), 400, reason, fragment)
    assert collector.count() == 0


def test_update_without_event_id_names_index_and_column(client: httpx.Client) -> None:
    """PATCH events must carry the event id column: the 400 names the index and the column."""
    response = client.patch("/v3/events", json=events_body([{"event_id": "a"}, {"target": 1}]))
    assert_error(response, 400, "missing_event_id", "source.events[1] has no 'event_id' column")


def test_update_is_validated_like_publish(client: httpx.Client) -> None:
    """PATCH bodies are PublishEventsRequests, checked the same way."""
    response = client.patch("/v3/events", json=events_body(env_type=_DROP))
    assert_error(response, 400, "missing_field", "env_type is required")


@pytest.mark.parametrize(
    ("raw", "reason", "fragment"),
    [
        (b'{"model_id": ', "invalid_json", "not valid JSON"),
        (b"", "missing_body", "request body is empty"),
        (b" \n", "missing_body", "request body is empty"),
        (b"[1, 2]", "invalid_body", "must be a JSON object, got array"),
        (b'"text"', "invalid_body", "must be a JSON object, got string"),
    ],
)
def test_malformed_bodies_are_400(
    client: httpx.Client, raw: bytes, reason: str, fragment: str
) -> None:
    """A body that is not JSON, or not an object, is a 400 saying so."""
    for method in ("POST", "PATCH", "DELETE"):
        assert_error(client.request(method, "/v3/events", content=raw), 400, reason, fragment)


DELETE_ERRORS = [
    ({"event_ids": ["a"]}, "missing_field", "model_id is required"),
    ({"model_id": "abc", "event_ids": ["a"]}, "invalid_field", "model_id must be a UUID"),
    ({"model_id": MODEL}, "missing_filter", "would delete every event"),
    ({"model_id": MODEL, "event_ids": None, "time_range": None}, "missing_filter", "neither"),
    (
        {"model_id": MODEL, "event_ids": ["a"], "time_range": {"start_time": 1, "end_time": 2}},
        "conflicting_filters",
        "not both",
    ),
    ({"model_id": MODEL, "event_ids": [1]}, "invalid_field", "event_ids must be an array of"),
    ({"model_id": MODEL, "event_ids": "a"}, "invalid_field", "event_ids must be an array of"),
    ({"model_id": MODEL, "event_ids": []}, "invalid_field", "event_ids must not be empty"),
    (
        {"model_id": MODEL, "event_ids": ["a"], "update_metrics": "yes"},
        "invalid_field",
        "update_metrics must be a boolean",
    ),
    (
        {"model_id": MODEL, "event_ids": ["a"], "update_metrics": True},
        "invalid_field",
        "update_metrics applies to a time_range",
    ),
    ({"model_id": MODEL, "time_range": [1, 2]}, "invalid_field", "time_range must be an object"),
    (
        {"model_id": MODEL, "time_range": {"end_time": 2}},
        "missing_field",
        "time_range.start_time is required",
    ),
    (
        {"model_id": MODEL, "time_range": {"start_time": 1}},
        "missing_field",
        "time_range.end_time is required",
    ),
    (
        {"model_id": MODEL, "time_range": {"start_time": "soon", "end_time": 2}},
        "invalid_field",
        "time_range.start_time must be an ISO 8601 string or epoch seconds",
    ),
    (
        {"model_id": MODEL, "time_range": {"start_time": 1, "end_time": True}},
        "invalid_field",
        "time_range.end_time must be",
    ),
    (
        {"model_id": MODEL, "time_range": {"start_time": "2024-01-01T00:00:00", "end_time": 2}},
        "invalid_field",
        "time_range.start_time '2024-01-01T00:00:00' has no UTC offset",
    ),
    (
        {"model_id": MODEL, "time_range": {"start_time": 5, "end_time": 5}},
        "invalid_field",
        "end_time must be later than",
    ),
]


@pytest.mark.parametrize(("request_body", "reason", "fragment"), DELETE_ERRORS)
def test_delete_validation_errors_name_the_field(
    client: httpx.Client, request_body: dict[str, Any], reason: str, fragment: str
) -> None:
    """Each contract violation of a delete is a 400 naming the field."""
    response = client.request("DELETE", "/v3/events", json=request_body)
    assert_error(response, 400, reason, fragment)


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "missing bearer token"),
        ("Basic dXNlcjpwYXNz", "missing bearer token"),
        ("Bearer", "missing bearer token"),
    ],
)
def test_requests_without_a_bearer_token_are_401(
    collector: Collector, authorization: Optional[str], message: str
) -> None:
    """Without 'Authorization: Bearer <token>' every route answers 401, body unread."""
    headers = {} if authorization is None else {"Authorization": authorization}
    with client_for(collector, headers) as http:
        for method, path in (("POST", "/v3/events"), ("GET", "/v3/events/updates")):
            response = http.request(method, path, json=events_body())
            assert_error(response, 401, "unauthorized", message)
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert collector.count() == 0


def test_configured_token_is_the_only_one_accepted() -> None:
    """With a token, another bearer token is a 401 (without echoing it); that token passes."""
    with Collector(token="right") as collector, client_for(collector, {}) as http:
        wrong = http.post("/v3/events", json=events_body(), headers={"Authorization": "Bearer x"})
        assert_error(wrong, 401, "unauthorized", "invalid bearer token")
        assert "right" not in wrong.text
        right = http.post(
            "/v3/events", json=events_body(), headers={"Authorization": "bearer right"}
        )
        assert right.status_code == 200


def test_any_token_is_accepted_without_configuration(client: httpx.Client) -> None:
    """Without a configured token, any non-empty bearer token is accepted."""
    response = client.post("/v3/events", json=events_body(), headers={"Authorization": "Bearer z"})
    assert response.status_code == 200


def test_unknown_path_is_404(client: httpx.Client) -> None:
    """A path other than the API's is a 404 in the error envelope."""
    assert_error(client.post("/v2/events", json=events_body()), 404, "not_found", "/v2/events")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v3/events", "DELETE, GET, PATCH, POST"),
        ("OPTIONS", "/v3/events", "DELETE, GET, PATCH, POST"),
        ("POST", "/v3/events/updates", "GET"),
    ],
)
def test_other_methods_are_405_with_allow(
    client: httpx.Client, method: str, path: str, allow: str
) -> None:
    """A method a route does not take is a 405 listing the allowed ones in Allow."""
    response = client.request(method, path, json=events_body())
    assert_error(response, 405, "method_not_allowed", method)
    assert response.headers["allow"] == allow


def test_head_is_405_without_a_body(client: httpx.Client) -> None:
    """HEAD is not served: 405 with headers only."""
    response = client.head("/v3/events")
    assert response.status_code == 405
    assert response.content == b""


def test_unknown_method_is_answered_in_the_envelope(client: httpx.Client) -> None:
    """A method http.server does not know gets the error envelope too."""
    assert_error(client.request("BREW", "/v3/events"), 501, "not_implemented", "BREW")


def test_oversized_body_is_413_before_reading_and_closes(collector: Collector) -> None:
    """Content-Length over the limit is answered 413 without waiting for the body, then closed."""
    head, rest = raw_exchange(
        collector.port,
        b"POST /v3/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n"
        b"Content-Length: 1000000\r\n\r\n{",
    )
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" in head
    assert orjson.loads(rest)["error"]["errors"][0]["reason"] == "payload_too_large"


@pytest.mark.parametrize("size", [64 * 1024 + 1, 8 * 2**20])
def test_oversized_body_through_httpx_is_413(client: httpx.Client, size: int) -> None:
    """A client still sending a body far over max_body_bytes reads the 413, not a reset."""
    response = client.post("/v3/events", content=b" " * size)
    assert_error(response, 413, "payload_too_large", "exceeds the limit of 65536 bytes")
    assert response.headers["connection"] == "close"
    assert client.post("/v3/events", json=events_body()).status_code == 200


def test_missing_content_length_means_an_empty_body(collector: Collector) -> None:
    """Without Content-Length or chunked framing the body is empty: a 400 that says so."""
    head, rest = raw_exchange(
        collector.port,
        b"POST /v3/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert head.startswith(b"HTTP/1.1 400 ")
    assert orjson.loads(rest)["error"]["errors"][0]["reason"] == "missing_body"


def test_unsupported_content_encoding_is_415(client: httpx.Client) -> None:
    """A Content-Encoding other than gzip or identity is a 415."""
    response = client.post("/v3/events", content=b"{}", headers={"Content-Encoding": "br"})
    assert_error(response, 415, "unsupported_content_encoding", "'br'")


@pytest.mark.parametrize(
    ("read_path", "query", "fragment"),
    [
        ("/v3/events", "model_id=nope", "model_id must be a UUID"),
        ("/v3/events", "limit=0", "limit must be an integer 1..10000"),
        ("/v3/events/updates", "offset=-1", "offset must be an integer >= 0"),
    ],
)
def test_read_side_validates_its_query(
    client: httpx.Client, read_path: str, query: str, fragment: str
) -> None:
    """Bad read-side query parameters are 400s naming the parameter."""
    assert_error(client.get(f"{read_path}?{query}"), 400, "invalid_field", fragment)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1970-01-01T00:00:10Z", 10.0),
        ("1970-01-01T01:00:10+01:00", 10.0),
        ("1970-01-01T00:00:10.5", 10.5),
        ("1970-01-01T00:00:10.1234567z", 10.123456),
        ("1970-01-01 00:00:10.12-0030", 1810.12),
        (42, 42.0),
        (1.5, 1.5),
        ("not a time", None),
        (True, None),
        (float("nan"), None),
        (None, None),
        ("2024-02-30T00:00:00Z", None),
    ],
)
def test_parse_time_reads_iso_8601_and_epoch_seconds(value: Any, seconds: Optional[float]) -> None:
    """Timestamps are ISO 8601 (naive is UTC, any fraction digits) or numbers as epoch seconds."""
    assert parse_time(value) == (pytest.approx(seconds) if seconds is not None else None)
