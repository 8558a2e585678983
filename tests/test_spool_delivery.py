"""The spool end to end: outages longer than a process, kill -9, shared directories, the CLI."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import FaultServer, Respond

from fiddler_trace._config import load_settings
from fiddler_trace._event import Event, Update
from fiddler_trace._pipeline import Pipeline
from fiddler_trace._spool import Spool

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"
DOWN = "http://127.0.0.1:9"  # nothing listens on the discard port


class NoJitter(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


def eid(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as running:
        yield running


@pytest.fixture
def spool_dir(tmp_path: Path) -> str:
    return str(tmp_path / "spool")


def pipeline_for(url: str, spool_dir: str, **overrides: Any) -> Pipeline:
    options: dict[str, Any] = {
        "enabled": True,
        "url": url,
        "token": "t",
        "spool_dir": spool_dir,
        "flush_interval": 0.05,
    }
    options.update(overrides)
    return Pipeline(load_settings(environ={}, **options), rng=NoJitter())


def run_script(body: str, spool_dir: str, url: str = DOWN, **popen: Any) -> Any:
    script = textwrap.dedent(
        f"""
        from fiddler_trace import _pipeline
        from fiddler_trace._event import Event, Update
        MODEL = {MODEL!r}
        SPOOL_DIR = {spool_dir!r}
        def eid(i):
            return "00000000-0000-4000-8000-%012d" % i
        _pipeline.configure(enabled=True, url={url!r}, token="t", spool_dir={spool_dir!r},
                            flush_interval=0.05, exit_timeout=1.0)
        """
    ) + textwrap.dedent(body)
    env = clean_env()
    command = [sys.executable, "-c", script]
    if popen:
        return subprocess.Popen(command, env=env, text=True, **popen)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def spool_events(spool_dir: str, numbers: Any, **spool_options: Any) -> Spool:
    """Write one POST record per event number, as a process would have; returns the spool."""
    spool = Spool(spool_dir, **spool_options)
    for i in numbers:
        data = b'{"event_id":"%s"}' % eid(i).encode()
        spool.append("POST", MODEL, [eid(i)], [len(data)], data)
    spool.close()
    return spool


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without FIDDLER_* variables, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIDDLER_")}
    env.update(variables)
    return env


def replay_command(spool_dir: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fiddler_trace", "spool", "replay", "--dir", spool_dir, *extra]


def replay(server: FaultServer, spool_dir: str) -> Pipeline:
    pipeline = pipeline_for(server.url, spool_dir)
    pipeline.start()
    assert pipeline.flush(30)
    pipeline.shutdown(5)
    return pipeline


def test_outage_exit_restart_delivers_everything_once_updates_after(server, spool_dir):
    """Events and updates kept at exit during an outage arrive once, updates behind events."""
    result = run_script(
        """
        for i in range(50):
            _pipeline.submit(Event(MODEL, eid(i), 1700000000.0, {"x": i}))
        for i in range(10):
            _pipeline.submit(Update(MODEL, eid(i), {"target": i % 2}))
        """,
        spool_dir,
    )
    assert result.returncode == 0, result.stderr
    assert "60 events kept in the spool" in result.stderr
    assert server.received == []
    pipeline = replay(server, spool_dir)
    ids = [e["event_id"] for e in server.events()]
    assert sorted(ids) == [eid(i) for i in range(50)]
    assert len(server.events("PATCH")) == 10
    methods = [r.method for r in server.received]
    assert methods.index("PATCH") > max(i for i, m in enumerate(methods) if m == "POST")
    assert pipeline.stats.replayed == 60
    assert Spool(spool_dir).segments() == []


def test_kill_9_during_an_outage_loses_nothing_past_the_deadline(server, spool_dir):
    """Batches past retry_deadline are on disk; after kill -9 a restart delivers them."""
    process = run_script(
        """
        import sys, time
        _pipeline.configure(enabled=True, url="http://127.0.0.1:9", token="t",
                            spool_dir=SPOOL_DIR, flush_interval=0.05, retry_deadline=0.2)
        for i in range(30):
            _pipeline.submit(Event(MODEL, eid(i), 1700000000.0, {"x": i}))
        _pipeline.flush(20)
        print(_pipeline.stats()["spooled"], flush=True)
        time.sleep(60)
        """,
        spool_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "30"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
    replay(server, spool_dir)
    assert sorted(e["event_id"] for e in server.events()) == [eid(i) for i in range(30)]


def test_a_torn_final_record_after_a_crash_is_skipped(server, spool_dir):
    """A record cut short by a crash is skipped; the records before it are delivered."""
    (segment,) = spool_events(spool_dir, range(3)).segments()
    with open(segment, "r+b") as handle:
        handle.truncate(segment.stat().st_size - 5)
    replay(server, spool_dir)
    assert [e["event_id"] for e in server.events()] == [eid(0), eid(1)]


def test_replay_never_resends_an_acknowledged_record(server, spool_dir):
    """A replay stopped by a failure resumes after the last acknowledged record."""
    spool_events(spool_dir, range(3))
    server.push(Respond(200, body={"kind": "NORMAL", "data": {"event_ids": [eid(0)]}}))
    server.push(Respond(401))
    first = pipeline_for(server.url, spool_dir)
    first.start()
    assert not first.flush(10)
    first.shutdown(5)
    assert first.stats.replayed == 1
    replay(server, spool_dir)
    posted = [r.body["source"]["events"][0]["event_id"] for r in server.received]
    assert posted == [eid(0), eid(1), eid(1), eid(2)]


def test_the_backlog_of_an_outage_goes_to_disk_not_dropped(spool_dir):
    """With a spool, a long outage moves the backlog to disk instead of filling memory."""
    pipeline = pipeline_for(DOWN, spool_dir, max_queue_size=1000, batch_size=100)
    try:
        for i in range(800):
            pipeline.enqueue(Event(MODEL, eid(i), 0.0, {"x": i}))
        assert not pipeline.flush(3)
        assert pipeline.stats.spooled >= 600
        assert pipeline.buffer.depth() <= 200
    finally:
        pipeline.shutdown(1)
    total = sum(Spool(spool_dir).pending_events(p) for p in Spool(spool_dir).segments())
    assert total == 800


def test_two_processes_replaying_one_directory_send_each_event_once(server, spool_dir):
    """Two replayers on one spool directory never send the same segment."""
    assert len(spool_events(spool_dir, range(40), segment_bytes=400).segments()) > 4
    env = clean_env(FIDDLER_URL=server.url, FIDDLER_TOKEN="t")
    command = replay_command(spool_dir)
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=60)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    ids = [e["event_id"] for e in server.events()]
    assert sorted(ids) == [eid(i) for i in range(40)]


def test_spool_command_lists_and_purges(spool_dir):
    """spool ls counts what is left; purge needs --yes without a terminal, then deletes."""
    spool_events(spool_dir, range(3))
    cli = [sys.executable, "-m", "fiddler_trace", "spool"]
    listed = subprocess.run([*cli, "ls", "--dir", spool_dir], capture_output=True, text=True)
    assert listed.returncode == 0
    assert "1 segments, 3 events to send" in listed.stdout
    refused = subprocess.run(
        [*cli, "purge", "--dir", spool_dir],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert refused.returncode == 1
    assert "--yes" in refused.stderr
    purged = subprocess.run(
        [*cli, "purge", "--dir", spool_dir, "--yes"], capture_output=True, text=True
    )
    assert purged.returncode == 0
    assert "3 events" in purged.stdout
    assert Spool(spool_dir).segments() == []


def test_spool_replay_command_reports_progress(server, spool_dir):
    """spool replay sends everything and says how much."""
    spool_events(spool_dir, [1])
    env = clean_env(FIDDLER_TOKEN="t")
    done = subprocess.run(
        replay_command(spool_dir, "--url", server.url),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "replayed 1 of 1 events" in done.stdout
    assert [e["event_id"] for e in server.events()] == [eid(1)]


def test_a_delivery_after_failures_replays_what_was_kept(server, spool_dir):
    """Batches kept during a failure are replayed once a later delivery succeeds."""
    # More failures than any machine fits in the deadline; the rest are cleared once the batch
    # is kept, so the outcome does not depend on how many retries the deadline allowed.
    server.push(*[Respond(503, headers={"Retry-After": "0.05"})] * 1000)
    pipeline = pipeline_for(server.url, spool_dir, retry_deadline=0.2)
    try:
        pipeline.enqueue(Event(MODEL, eid(1), 0.0, {"x": 1}))
        assert not pipeline.flush(10)
        assert pipeline.stats.spooled == 1
        server.faults.clear()
        pipeline.enqueue(Event(MODEL, eid(2), 0.0, {"x": 2}))
        assert pipeline.flush(10)
        assert sorted(e["event_id"] for e in server.events()) == [eid(1), eid(2)]
        assert pipeline.stats.replayed == 1
    finally:
        pipeline.shutdown(5)
    assert Spool(spool_dir).segments() == []


def test_a_409_to_a_replayed_record_counts_as_delivered(spool_dir):
    """A record whose events the server already has (409) is acknowledged, not retried forever."""
    with FaultServer(conflict_on_duplicate=True) as server:
        first = pipeline_for(server.url, spool_dir)
        first.enqueue(Event(MODEL, eid(1), 0.0, {"x": 1}))
        assert first.flush(10)
        first.shutdown(5)
        spool_events(spool_dir, [1])
        pipeline = replay(server, spool_dir)
        assert [r.answered for r in server.received] == [200, 409]
        assert pipeline.stats.replayed == 1
    assert Spool(spool_dir).segments() == []


def test_an_update_the_disk_refuses_fails_instead_of_hanging(server, spool_dir, monkeypatch):
    """If an update cannot be written behind its spooled publish, it fails; flush returns."""
    pipeline = pipeline_for(server.url, spool_dir)
    try:
        assert pipeline.spooler is not None
        pipeline.spooler.models.add(MODEL)  # as if this model's publishes were on disk,
        monkeypatch.setattr(pipeline.spooler.spool, "own_on_disk", lambda: True)  # not replayed
        monkeypatch.setattr(pipeline.spooler, "keep", lambda batch: False)
        pipeline.enqueue(Update(MODEL, eid(1), {"target": 1}))
        assert pipeline.flush(10) is False
        assert pipeline.stats.failed == 1
        assert pipeline.buffer.depth() == 0
    finally:
        pipeline.shutdown(5)


def test_the_spool_stays_near_its_byte_bound(spool_dir):
    """max_spool_bytes holds even when it is smaller than a segment would be."""
    spool = Spool(spool_dir, max_bytes=10_000)
    evicted = 0
    for i in range(1000):
        data = b'{"event_id":"%s"}' % eid(i).encode()
        evicted += spool.append("POST", MODEL, [eid(i)], [len(data)], data)
    assert evicted > 0
    assert spool.size() <= 10_000 + spool.segment_bytes
    spool.close()


def test_spool_replay_shows_progress_on_a_terminal(server, spool_dir):
    """On a terminal, replay shows 'sent N of M events' as it goes."""
    import pty

    spool_events(spool_dir, range(3))
    env = clean_env(FIDDLER_TOKEN="t")
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            replay_command(spool_dir, "--url", server.url),
            env=env,
            stdout=follower,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        os.close(follower)
        follower = -1
        output = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert done.returncode == 0, done.stderr
    assert b"sent 3 of 3 events" in output
    assert b"replayed 3 of 3 events" in output


def test_spool_eviction_is_counted_as_dropped_and_warned(spool_dir, caplog):
    """Past max_spool_bytes the oldest events on disk are dropped, counted and warned."""
    import logging

    pipeline = pipeline_for(
        DOWN, spool_dir, max_spool_bytes=4096, retry_deadline=0.1, batch_size=10
    )
    try:
        with caplog.at_level(logging.WARNING, logger="fiddler_trace"):
            for i in range(300):
                pipeline.enqueue(Event(MODEL, eid(i), 0.0, {"x": i}))
            assert not pipeline.flush(10)
        stats = pipeline.snapshot()
        assert stats["spooled"] == 300
        assert stats["dropped"] > 0
        assert "spool over its size limit" in caplog.text
    finally:
        pipeline.shutdown(1)
    assert Spool(spool_dir).size() <= 4096 + 1024
