"""The collector's storage: batches across requests, restarts, the sqlite3 view, migration."""

from __future__ import annotations

import contextlib
import gzip
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from collector_http import body, client_for, publish

from fiddler_trace.collector import Collector

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"
OTHER_MODEL = "0b9f5a2e-2222-4333-8444-555566667777"


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "events.sqlite")


def delete(client: httpx.Client, **fields: Any) -> httpx.Response:
    return client.request("DELETE", "/v3/events", json={"model_id": MODEL, **fields})


def ids_of(events: list[dict[str, Any]]) -> list[str]:
    return [str(event["event_id"]) for event in events]


def test_paging_across_requests_and_models_keeps_arrival_order() -> None:
    """Pages cut across requests; the all-models listing interleaves models by arrival."""
    with Collector() as collector, client_for(collector) as http:
        publish(http, [{"event_id": f"a{i}"} for i in range(3)])
        publish(http, [{"event_id": "o1"}], model_id=OTHER_MODEL)
        publish(http, [{"event_id": f"b{i}"} for i in range(3)])
        publish(http, [{"event_id": "o2"}], model_id=OTHER_MODEL)
        page = http.get("/v3/events", params={"model_id": MODEL, "limit": 3, "offset": 2})
        assert ids_of(page.json()["data"]["events"]) == ["a2", "b0", "b1"]
        every = http.get("/v3/events", params={"limit": 4, "offset": 2}).json()["data"]
        assert ids_of(every["events"]) == ["a2", "o1", "b0", "b1"]
        assert every["total"] == 8
        assert http.get("/v3/events", params={"offset": 8}).json()["data"]["events"] == []


def test_state_survives_a_restart(db: str) -> None:
    """Deletions, re-publishes and updates read back the same after the file is reopened."""
    with Collector(db=db) as first, client_for(first) as http:
        publish(http, [{"event_id": "a", "v": 1}, {"event_id": "b"}, {"event_id": "c"}])
        delete(http, event_ids=["a"])
        publish(http, [{"event_id": "a", "v": 2}, {"event_id": "d", "timestamp": 100}])
        http.patch("/v3/events", json=body([{"event_id": "b", "target": 1}]))
        before = first.events()
    assert ids_of(before) == ["b", "c", "a", "d"]
    with Collector(db=db) as second, client_for(second) as http:
        assert second.events() == before
        assert second.count(MODEL) == 4
        assert publish(http, [{"event_id": "c"}, {"event_id": "e"}]) == ["c", "e"]
        assert second.stats()["duplicates"] == 1
        assert delete(http, time_range={"start_time": 50, "end_time": 150}).status_code == 202
        assert delete(http, event_ids=["b"]).status_code == 202
        http.patch("/v3/events", json=body([{"event_id": "a", "target": 0}]))
        assert second.events() == [
            {"event_id": "c"},
            {"event_id": "a", "v": 2, "target": 0},
            {"event_id": "e"},
        ]


def test_update_after_more_publishes_and_deletes() -> None:
    """Updates find events wherever they are, also after later publishes and deletions."""
    with Collector() as collector, client_for(collector) as http:
        publish(http, [{"event_id": "x", "n": 0}, {"event_id": "y", "n": 0}])
        http.patch("/v3/events", json=body([{"event_id": "x", "n": 1}]))
        publish(http, [{"event_id": "z", "n": 0}])
        delete(http, event_ids=["y"])
        updates = [{"event_id": "z", "n": 1}, {"event_id": "y", "n": 1}, {"event_id": "x", "n": 2}]
        data = http.patch("/v3/events", json=body(updates)).json()["data"]
        assert data["event_ids"] == ["z", "x"]
        assert [error["event_id"] for error in data["errors"]] == ["y"]
        assert collector.events() == [{"event_id": "x", "n": 2}, {"event_id": "z", "n": 1}]


def test_events_are_read_back_as_sent_whatever_the_encoding() -> None:
    """Events read back equal to what was sent: plain, gzip, with ids generated or repeated."""
    sent = [{"event_id": "p", "x": [1, {"y": None}], "s": "é\u2028"}, {"event_id": 3, "f": 1.5}]
    with Collector() as collector, client_for(collector) as http:
        publish(http, sent)
        raw = orjson.dumps(body([{"event_id": "g", "n": 1}]))
        headers = {"Content-Encoding": "gzip"}
        assert http.post("/v3/events", content=gzip.compress(raw), headers=headers).is_success
        mixed = [{"event_id": "p"}, {"n": 2}, {"event_id": "q"}]
        generated = publish(http, mixed)[1]
        assert collector.events() == [
            *sent,
            {"event_id": "g", "n": 1},
            {"n": 2, "event_id": generated},
            {"event_id": "q"},
        ]


def test_a_file_database_has_a_view_of_stored_events(db: str) -> None:
    """stored_events shows one row per stored event, updates merged, deletions left out."""
    with Collector(db=db) as collector, client_for(collector) as http:
        events = [{"event_id": "a", "timestamp": "2024-01-01T00:00:00Z"}, {"event_id": 7}]
        response = http.post("/v3/events", json=body(events, env_name="live"))
        assert response.status_code == 200
        publish(http, [{"event_id": "c"}])
        http.patch("/v3/events", json=body([{"event_id": "7", "target": 1}]))
        delete(http, event_ids=["c"])
        with contextlib.closing(sqlite3.connect(db)) as reader, reader:
            rows = reader.execute(
                "SELECT model_id, event_id, timestamp, env_type, env_name, event"
                " FROM stored_events ORDER BY seq"
            ).fetchall()
    assert [row[:5] for row in rows] == [
        (MODEL, "a", "2024-01-01T00:00:00Z", "PRODUCTION", "live"),
        (MODEL, "7", None, "PRODUCTION", "live"),
    ]
    assert [orjson.loads(row[5]) for row in rows] == [events[0], {"event_id": 7, "target": 1}]


_V1_SCHEMA = """
CREATE TABLE models (id INTEGER PRIMARY KEY, model_id TEXT NOT NULL UNIQUE);
CREATE TABLE requests (
    id INTEGER PRIMARY KEY, model INTEGER NOT NULL, env_type TEXT NOT NULL, env_name TEXT,
    received_at REAL NOT NULL
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY, model INTEGER NOT NULL, event_id TEXT NOT NULL, ts REAL,
    request INTEGER NOT NULL, body BLOB NOT NULL
);
CREATE INDEX events_by_model ON events (model, seq);
CREATE TABLE updates (
    seq INTEGER PRIMARY KEY, model INTEGER NOT NULL, event_id TEXT NOT NULL,
    received_at REAL NOT NULL, body BLOB NOT NULL
);
CREATE VIEW stored_events AS SELECT events.seq FROM events;
PRAGMA user_version=1;
"""


@pytest.fixture
def v1_db(db: str) -> str:
    """A database as the first version of the collector wrote it (a row per event)."""
    with contextlib.closing(sqlite3.connect(db)) as writer, writer:
        writer.executescript(_V1_SCHEMA)
        writer.executemany("INSERT INTO models VALUES (?, ?)", [(1, MODEL), (2, OTHER_MODEL)])
        writer.executemany(
            "INSERT INTO requests VALUES (?, ?, 'PRODUCTION', NULL, 0)", [(1, 1), (2, 2), (3, 1)]
        )
        rows = [
            (1, 1, "a", 1, b'{"event_id":"a","target":1}'),
            (2, 1, "b", 1, b'{"event_id":"b"}'),
            (3, 2, "o", 2, b'{"event_id":"o"}'),
            (5, 1, "7", 3, b'{"event_id":7}'),
        ]
        writer.executemany("INSERT INTO events VALUES (?, ?, ?, NULL, ?, ?)", rows)
        writer.execute(
            'INSERT INTO updates VALUES (1, 1, \'a\', 0, \'{"event_id":"a","target":1}\')'
        )
    return db


def test_a_first_version_database_is_migrated(v1_db: str) -> None:
    """A database of the row-per-event schema opens with its events, order and updates."""
    with Collector(db=v1_db) as collector, client_for(collector) as http:
        assert collector.events() == [
            {"event_id": "a", "target": 1},
            {"event_id": "b"},
            {"event_id": "o"},
            {"event_id": 7},
        ]
        assert collector.count(MODEL) == 3
        assert [update["event_id"] for update in collector.updates()] == ["a"]
        assert publish(http, [{"event_id": "7"}, {"event_id": "new"}]) == ["7", "new"]
        assert collector.stats()["duplicates"] == 1
    with contextlib.closing(sqlite3.connect(v1_db)) as reader, reader:
        assert reader.execute("PRAGMA user_version").fetchone()[0] == 2
        tables = {row[0] for row in reader.execute("SELECT name FROM sqlite_master")}
        assert "events" not in tables
        assert reader.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0] == 5


def test_a_database_of_an_unknown_version_is_refused(db: str) -> None:
    """A database written by a later schema version is not opened (nor changed)."""
    with contextlib.closing(sqlite3.connect(db)) as writer, writer:
        writer.execute("PRAGMA user_version=99")
    with pytest.raises(sqlite3.DatabaseError, match="schema version 99"):
        Collector(db=db).start()


def test_a_refused_batch_of_a_new_model_leaves_no_trace(db: str) -> None:
    """A 409 for the first batch of a model stores nothing, not even the model."""
    with Collector(db=db, reject_duplicates=True) as collector, client_for(collector) as http:
        within = [{"event_id": "x"}, {"event_id": "x"}]
        assert http.post("/v3/events", json=body(within, OTHER_MODEL)).status_code == 409
        assert publish(http, [{"event_id": "x"}], model_id=OTHER_MODEL) == ["x"]
    with Collector(db=db) as reopened:
        assert reopened.events(OTHER_MODEL) == [{"event_id": "x"}]
