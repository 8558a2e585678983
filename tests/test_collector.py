"""The collector over real HTTP on loopback: publish, update, delete and the read side."""

from __future__ import annotations

import gzip
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from collector_http import body, client_for, publish

from fiddler_trace.collector import Collector

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"
OTHER_MODEL = "0b9f5a2e-2222-4333-8444-555566667777"
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector() as running:
        yield running


@pytest.fixture
def client(collector: Collector) -> Iterator[httpx.Client]:
    with client_for(collector) as http:
        yield http


def delete(client: httpx.Client, **fields: Any) -> httpx.Response:
    return client.request("DELETE", "/v3/events", json={"model_id": MODEL, **fields})


def test_publish_answers_envelope_with_ids_in_order_and_stores(
    collector: Collector, client: httpx.Client
) -> None:
    """POST answers 200 with Fiddler's envelope and the event ids in order; events are stored."""
    events = [{"event_id": "b", "x": 1}, {"event_id": "a", "x": 2}]
    response = client.post("/v3/events", json=body(events, env_name="live"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "api_version": "3.0",
        "kind": "NORMAL",
        "data": {"source_type": "EVENTS", "event_ids": ["b", "a"]},
    }
    assert collector.events(MODEL) == events
    assert collector.count() == 2


def test_publish_generates_uuid4_for_events_without_id(
    collector: Collector, client: httpx.Client
) -> None:
    """An event without the id column (or with null) gets a new uuid4, also stored in it."""
    ids = publish(client, [{"x": 1}, {"event_id": None, "x": 2}, {"event_id": "given"}])
    assert UUID4.fullmatch(ids[0])
    assert UUID4.fullmatch(ids[1])
    assert ids[0] != ids[1]
    assert ids[2] == "given"
    assert [event["event_id"] for event in collector.events()] == ids


def test_publish_stringifies_non_string_ids_in_the_response(client: httpx.Client) -> None:
    """A numeric event id comes back as its string."""
    assert publish(client, [{"event_id": 7}, {"event_id": 2.5}]) == ["7", "2.5"]


def test_custom_event_id_column() -> None:
    """The event id column is configurable."""
    with Collector(event_id_column="row_id") as collector, client_for(collector) as http:
        response = http.post("/v3/events", json=body([{"row_id": "r1"}, {"event_id": "ignored"}]))
        ids = response.json()["data"]["event_ids"]
        assert ids[0] == "r1"
        assert UUID4.fullmatch(ids[1])
        assert collector.events()[1]["row_id"] == ids[1]


def test_publish_accepts_exactly_1000_events(collector: Collector, client: httpx.Client) -> None:
    """1000 events in one request is the limit, and it is accepted."""
    assert len(publish(client, [{"i": i} for i in range(1000)])) == 1000
    assert collector.count(MODEL) == 1000


def test_file_source_answers_202_job_and_stores_nothing(
    collector: Collector, client: httpx.Client
) -> None:
    """POST with a FILE source answers 202 with a job and stores nothing."""
    request = {
        "model_id": MODEL,
        "env_type": "PRE_PRODUCTION",
        "env_name": "baseline",
        "source": {"type": "FILE", "file_id": str(uuid.uuid4())},
    }
    response = client.post("/v3/events", json=request)
    assert response.status_code == 202
    data = response.json()["data"]
    assert data["source_type"] == "FILE"
    assert uuid.UUID(data["job"]["id"])
    assert isinstance(data["job"]["name"], str)
    assert collector.count() == 0
    assert collector.stats()["file_jobs"] == 1


def test_republished_id_keeps_first_event_and_counts_duplicate(
    collector: Collector, client: httpx.Client
) -> None:
    """Republishing a stored id answers 200 but keeps the first event; counted as duplicate."""
    publish(client, [{"event_id": "e1", "v": "first"}])
    assert publish(client, [{"event_id": "e1", "v": "second"}, {"event_id": "e2"}]) == [
        "e1",
        "e2",
    ]
    assert collector.events() == [{"event_id": "e1", "v": "first"}, {"event_id": "e2"}]
    assert collector.stats()["published"] == 2
    assert collector.stats()["duplicates"] == 1


def test_same_event_id_under_two_models_is_two_events(
    collector: Collector, client: httpx.Client
) -> None:
    """Event ids are unique per model, not globally."""
    publish(client, [{"event_id": "e1"}])
    publish(client, [{"event_id": "e1"}], model_id=OTHER_MODEL.upper())
    assert collector.count(MODEL) == 1
    assert collector.count(OTHER_MODEL) == 1


def test_reject_duplicates_answers_409_and_stores_none_of_the_batch() -> None:
    """With reject_duplicates, a repeated id is a 409 naming it, and the batch is not stored."""
    with Collector(reject_duplicates=True) as collector, client_for(collector) as http:
        publish(http, [{"event_id": "e1"}])
        response = http.post("/v3/events", json=body([{"event_id": "e2"}, {"event_id": "e1"}]))
        assert response.status_code == 409
        assert response.json()["error"]["errors"][0]["reason"] == "duplicate_event_id"
        assert "'e1'" in response.json()["error"]["message"]
        within = [{"event_id": "x"}, {"event_id": "x"}]
        assert http.post("/v3/events", json=body(within, OTHER_MODEL)).status_code == 409
        assert collector.events() == [{"event_id": "e1"}]
        assert publish(http, [{"event_id": "e2"}]) == ["e2"]


def test_update_merges_columns_and_logs_updates_in_order(
    collector: Collector, client: httpx.Client
) -> None:
    """PATCH merges columns into the stored event and logs each applied update in order."""
    publish(client, [{"event_id": "e1", "x": 1, "target": None}, {"event_id": "e2", "x": 2}])
    response = client.patch("/v3/events", json=body([{"event_id": "e2", "target": 0}]))
    assert response.status_code == 200
    assert response.json()["data"] == {"source_type": "EVENTS", "event_ids": ["e2"]}
    client.patch("/v3/events", json=body([{"event_id": "e1", "target": 1, "x": 10}]))
    assert collector.events() == [
        {"event_id": "e1", "x": 10, "target": 1},
        {"event_id": "e2", "x": 2, "target": 0},
    ]
    assert collector.updates(MODEL) == [
        {"model_id": MODEL, "event_id": "e2", "columns": {"event_id": "e2", "target": 0}},
        {"model_id": MODEL, "event_id": "e1", "columns": {"event_id": "e1", "target": 1, "x": 10}},
    ]
    assert collector.stats()["updated"] == 2


def test_update_of_unknown_id_is_reported_not_stored(
    collector: Collector, client: httpx.Client
) -> None:
    """An update for an id not stored (for that model) is counted and listed in data.errors."""
    publish(client, [{"event_id": "e1"}])
    publish(client, [{"event_id": "other"}], model_id=OTHER_MODEL)
    updates = [{"event_id": "nope", "t": 1}, {"event_id": "e1", "t": 2}, {"event_id": "other"}]
    response = client.patch("/v3/events", json=body(updates))
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["event_ids"] == ["e1"]
    assert [(e["reason"], e["event_id"]) for e in data["errors"]] == [
        ("event_not_found", "nope"),
        ("event_not_found", "other"),
    ]
    assert "nope" in data["errors"][0]["message"]
    assert [u["event_id"] for u in collector.updates()] == ["e1"]
    assert collector.stats()["unknown_updates"] == 2


def test_delete_by_ids_answers_202_job(collector: Collector, client: httpx.Client) -> None:
    """DELETE by event_ids removes them (of that model only) and answers 202 with a job."""
    publish(client, [{"event_id": "a"}, {"event_id": "b"}, {"event_id": "c"}])
    publish(client, [{"event_id": "a"}], model_id=OTHER_MODEL)
    response = delete(client, event_ids=["a", "c", "missing"])
    assert response.status_code == 202
    envelope = response.json()
    assert envelope["kind"] == "NORMAL"
    assert set(envelope["data"]["job"]) == {"id", "name"}
    assert uuid.UUID(envelope["data"]["job"]["id"])
    assert collector.events(MODEL) == [{"event_id": "b"}]
    assert collector.count(OTHER_MODEL) == 1
    assert collector.stats()["deleted"] == 2
    publish(client, [{"event_id": "a", "v": "new"}])  # a deleted id may be published again
    assert collector.events(MODEL) == [{"event_id": "b"}, {"event_id": "a", "v": "new"}]


def test_delete_by_time_range_is_start_inclusive_end_exclusive(
    collector: Collector, client: httpx.Client
) -> None:
    """A range deletes events timed in [start, end), whatever the spelling of their times."""
    publish(
        client,
        [
            {"event_id": "before", "timestamp": "2024-01-01T09:59:59.999Z"},
            {"event_id": "start", "timestamp": "2024-01-01T10:00:00Z"},
            {"event_id": "offset", "timestamp": "2024-01-01T12:30:00+02:00"},
            {"event_id": "naive-utc", "timestamp": "2024-01-01T10:45:00.123456"},
            {"event_id": "epoch", "timestamp": 1704103200.5},
            {"event_id": "end", "timestamp": "2024-01-01T11:00:00Z"},
            {"event_id": "untimed", "timestamp": "yesterday"},
        ],
    )
    response = delete(
        client,
        time_range={"start_time": "2024-01-01T10:00:00Z", "end_time": "2024-01-01T12:00:00+01:00"},
    )
    assert response.status_code == 202
    assert [e["event_id"] for e in collector.events()] == ["before", "end", "untimed"]


def test_delete_by_range_in_epoch_seconds(collector: Collector, client: httpx.Client) -> None:
    """Range bounds may be epoch seconds."""
    publish(client, [{"event_id": str(t), "timestamp": t} for t in (100, 200, 300)])
    assert delete(client, time_range={"start_time": 150, "end_time": 300.0}).status_code == 202
    assert [e["event_id"] for e in collector.events()] == ["100", "300"]


def test_range_follows_an_updated_timestamp(collector: Collector, client: httpx.Client) -> None:
    """An update that changes the timestamp column moves the event in time."""
    publish(client, [{"event_id": "e1", "timestamp": 100}])
    client.patch("/v3/events", json=body([{"event_id": "e1", "timestamp": 500}]))
    delete(client, time_range={"start_time": 400, "end_time": 600})
    assert collector.count() == 0


def test_get_events_reads_merged_events_in_arrival_order_with_paging(
    client: httpx.Client,
) -> None:
    """GET /v3/events lists a model's events, updates merged, in arrival order, paged."""
    publish(client, [{"event_id": f"e{i}"} for i in range(5)])
    publish(client, [{"event_id": "x"}], model_id=OTHER_MODEL)
    client.patch("/v3/events", json=body([{"event_id": "e3", "target": 1}]))
    response = client.get("/v3/events", params={"model_id": MODEL, "limit": 2, "offset": 2})
    assert response.status_code == 200
    assert response.json() == {
        "api_version": "3.0",
        "kind": "NORMAL",
        "data": {"events": [{"event_id": "e2"}, {"event_id": "e3", "target": 1}], "total": 5},
    }
    assert client.get("/v3/events").json()["data"]["total"] == 6
    unknown = client.get("/v3/events", params={"model_id": str(uuid.uuid4())})
    assert unknown.json()["data"] == {"events": [], "total": 0}


def test_get_updates_lists_the_update_log(client: httpx.Client) -> None:
    """GET /v3/events/updates lists applied updates in arrival order."""
    publish(client, [{"event_id": "e1"}])
    client.patch("/v3/events", json=body([{"event_id": "e1", "target": 1}]))
    client.patch("/v3/events", json=body([{"event_id": "e1", "target": 0}]))
    data = client.get("/v3/events/updates", params={"model_id": MODEL}).json()["data"]
    assert data["total"] == 2
    assert [u["columns"]["target"] for u in data["updates"]] == [1, 0]


def test_gzip_and_chunked_bodies_are_accepted(collector: Collector, client: httpx.Client) -> None:
    """A gzip-encoded body and a chunked body are read like a plain one."""
    raw = orjson.dumps(body([{"event_id": "gz"}]))
    zipped = client.post(
        "/v3/events", content=gzip.compress(raw), headers={"Content-Encoding": "gzip"}
    )
    assert zipped.status_code == 200, zipped.text
    chunked = client.post("/v3/events", content=iter([raw[:10], raw[10:]]))
    assert chunked.status_code == 200, chunked.text
    assert collector.count() == 1
    assert collector.stats()["duplicates"] == 1
