"""The collector as a server: connections, persistence, waiting, counters, lifecycle."""

from __future__ import annotations

import http.client
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from collector_http import body, client_for, publish

from fiddler_trace.collector import Collector

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector() as running:
        yield running


@pytest.fixture
def client(collector: Collector) -> Iterator[httpx.Client]:
    with client_for(collector) as http:
        yield http


def test_keep_alive_serves_many_requests_on_one_connection(collector: Collector) -> None:
    """HTTP/1.1 keep-alive: several requests on one connection, which stays open."""
    connection = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=5)
    try:
        for i in range(3):
            connection.request(
                "POST",
                "/v3/events",
                body=orjson.dumps(body([{"event_id": str(i)}])),
                headers={"Authorization": "Bearer t", "Content-Type": "application/json"},
            )
            response = connection.getresponse()
            assert (response.status, response.version) == (200, 11)
            assert response.getheader("Connection") is None
            response.read()
            sock = connection.sock
            assert sock is not None
            if i == 0:
                first = sock
            assert sock is first
    finally:
        connection.close()
    assert collector.count() == 3


def test_file_database_persists_across_restart(tmp_path: Path) -> None:
    """A file database keeps events and updates when a new collector opens it."""
    db = tmp_path / "events.sqlite"
    with Collector(db=str(db)) as first, client_for(first) as http:
        publish(http, [{"event_id": "e1"}, {"event_id": "e2"}])
        http.patch("/v3/events", json=body([{"event_id": "e1", "target": 1}]))
    with Collector(db=str(db)) as second, client_for(second) as http:
        assert second.events(MODEL) == [{"event_id": "e1", "target": 1}, {"event_id": "e2"}]
        assert len(second.updates()) == 1
        publish(http, [{"event_id": "e3"}, {"event_id": "e1", "v": "again"}])
        assert [e["event_id"] for e in second.events()] == ["e1", "e2", "e3"]
        assert second.stats()["duplicates"] == 1


def test_wait_for_count_wakes_when_a_batch_is_stored(
    collector: Collector, client: httpx.Client
) -> None:
    """wait_for_count returns True as soon as another thread's batch makes the count."""
    sender = threading.Thread(target=publish, args=(client, [{"a": 1}, {"a": 2}]))
    sender.start()
    try:
        assert collector.wait_for_count(2, model_id=MODEL, timeout=5.0)
    finally:
        sender.join()
    assert collector.wait_for_count(2)


def test_concurrent_publishers_store_every_event_once(collector: Collector) -> None:
    """Requests from several connections at once are all stored, a shared id only once."""

    def send(worker: int) -> None:
        with client_for(collector) as http:
            for batch in range(10):
                events = [{"event_id": f"{worker}-{batch}-{i}"} for i in range(50)]
                publish(http, [*events, {"event_id": "shared"}])

    threads = [threading.Thread(target=send, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert collector.count(MODEL) == 4 * 10 * 50 + 1
    assert len({event["event_id"] for event in collector.events()}) == 2001
    assert collector.stats()["duplicates"] == 4 * 10 - 1


def test_wait_for_count_gives_up_after_timeout(collector: Collector) -> None:
    """wait_for_count returns False when the count is not reached in time."""
    assert not collector.wait_for_count(1, timeout=0.01)


def test_stats_count_requests_and_rejections_by_status(
    collector: Collector, client: httpx.Client
) -> None:
    """stats() counts requests, events and rejections by status."""
    publish(client, [{"a": 1}, {"a": 2}])
    client.get("/nowhere")
    client.post("/v3/events", content=b"{")
    assert collector.stats() == {
        "requests": 3,
        "published": 2,
        "duplicates": 0,
        "updated": 0,
        "unknown_updates": 0,
        "deleted": 0,
        "file_jobs": 0,
        "rejected": {400: 1, 404: 1},
    }


def test_clear_forgets_events_updates_and_counters(
    collector: Collector, client: httpx.Client
) -> None:
    """clear() empties the store and zeroes stats; a cleared id is new again."""
    publish(client, [{"event_id": "e1"}])
    client.patch("/v3/events", json=body([{"event_id": "e1", "target": 1}]))
    collector.clear()
    assert collector.count() == 0
    assert collector.events() == []
    assert collector.updates() == []
    assert collector.stats()["requests"] == 0
    publish(client, [{"event_id": "e1"}])
    assert collector.events() == [{"event_id": "e1"}]
    assert collector.stats()["duplicates"] == 0


def test_lifecycle_url_thread_and_idempotent_stop() -> None:
    """start() serves on a named daemon thread at .url; stop() is idempotent and ends it."""
    collector = Collector()
    with pytest.raises(RuntimeError):
        collector.url  # noqa: B018
    assert collector.start() is collector
    try:
        assert collector.url == f"http://127.0.0.1:{collector.port}"
        thread = next(t for t in threading.enumerate() if t.name == "fiddler-trace-collector")
        assert thread.daemon
        with pytest.raises(RuntimeError, match="already running"):
            collector.start()
    finally:
        collector.stop()
    collector.stop()
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="not running"):
        collector.events()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{collector.url}/v3/events", headers={"Authorization": "Bearer t"}, verify=False)


def test_stop_ends_idle_keep_alive_connections(collector: Collector) -> None:
    """stop() closes a client's idle keep-alive connection instead of leaving it served."""
    connection = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=5)
    connection.request("GET", "/v3/events", headers={"Authorization": "Bearer t"})
    connection.getresponse().read()
    collector.stop()
    sock = connection.sock
    assert sock is not None
    assert sock.recv(1) == b""  # the server's side is closed
    connection.close()


def test_token_is_absent_from_repr() -> None:
    """The configured token never shows in the collector's repr."""
    collector = Collector(token="s3cret-token")
    assert "s3cret" not in repr(collector)
    with collector:
        assert "s3cret" not in repr(collector)


def test_verbose_prints_one_line_per_request(capsys: pytest.CaptureFixture[str]) -> None:
    """verbose=True prints method, path, status, events and ms for each request on stderr."""
    with Collector(verbose=True) as collector, client_for(collector) as http:
        publish(http, [{"a": 1}, {"a": 2}])
        http.get("/missing")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"POST /v3/events 200 OK events=2 \d+\.\dms", lines[0])
    assert lines[1].startswith("GET /missing 404 ")
