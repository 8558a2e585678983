"""Ingest throughput of the collector: events/s for batches of 1000 over one keep-alive client.

Starts ``fiddler-trace collector`` in a subprocess (its own interpreter and GIL, as a user runs
it), or in this process with ``--in-process``, or targets ``--url``. Every request body is
encoded before the clock starts; the bodies are posted one after the other on one keep-alive
``httpx.Client`` (the library's own HTTP client) and the median events/s over ``--repeats``
runs is reported::

    .venv/bin/python benchmarks/collector_ingest.py --batches 100 --repeats 5
    .venv/bin/python benchmarks/collector_ingest.py --db /tmp/bench.sqlite --json out.json
    .venv/bin/python benchmarks/collector_ingest.py --url http://127.0.0.1:8008

Each run publishes new event ids, so nothing is counted as a duplicate. A file ``--db`` is
deleted first (with its WAL), so every run of the command starts from an empty database.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import httpx
import orjson
from hotpath import start_collector  # benchmarks/ is on sys.path when run as a script

from fiddler_trace.collector import Collector

MODEL_ID = "6f1c0f0e-1111-4222-8333-444455556666"
REGIONS = ("EU", "US", "APAC", "LATAM")


def make_bodies(batches: int, batch_events: int) -> list[bytes]:
    """Request bodies shaped like the library's events: id, timestamp, inputs, outputs."""
    now = dt.datetime.now(dt.timezone.utc)
    bodies = []
    for b in range(batches):
        events = [
            {
                "event_id": str(uuid.uuid4()),
                "timestamp": (now + dt.timedelta(milliseconds=b * batch_events + i))
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                "age": 20 + i % 50,
                "income": 30000.0 + i * 1.5,
                "region": REGIONS[i % len(REGIONS)],
                "prediction": (i % 100) / 100,
                "label": i % 2,
            }
            for i in range(batch_events)
        ]
        body = {
            "model_id": MODEL_ID,
            "env_type": "PRODUCTION",
            "source": {"type": "EVENTS", "events": events},
        }
        bodies.append(orjson.dumps(body))
    return bodies


def process_cpu(pid: Optional[int]) -> Optional[float]:
    """CPU seconds (user + system) a process has used so far; None where /proc cannot say."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(
    client: httpx.Client, bodies: list[bytes], batch_events: int, server_pid: Optional[int]
) -> dict[str, Optional[float]]:
    """Post every body in order; return events/s and the CPU µs per event of both sides.

    CPU time says where the cost is even when other work shares the cores and makes the
    wall-clock rate noisy.
    """
    headers = {"Content-Type": "application/json"}
    server_before = process_cpu(server_pid) if server_pid is not None else None
    client_before = time.process_time()
    started = time.perf_counter()
    for body in bodies:
        response = client.post("/v3/events", content=body, headers=headers)
        if response.status_code != 200:
            raise SystemExit(f"unexpected {response.status_code}: {response.text[:300]}")
    elapsed = time.perf_counter() - started
    events = len(bodies) * batch_events
    client_cpu = time.process_time() - client_before
    server_after = process_cpu(server_pid) if server_pid is not None else None
    server_cpu = (
        server_after - server_before
        if server_after is not None and server_before is not None
        else None
    )
    return {
        "events_per_second": events / elapsed,
        "client_cpu_us_per_event": client_cpu / events * 1e6,
        "server_cpu_us_per_event": None if server_cpu is None else server_cpu / events * 1e6,
    }


def remove_database(db: str) -> None:
    """Delete a file database and its WAL, so the run starts from an empty store."""
    if db != ":memory:":
        for suffix in ("", "-wal", "-shm"):
            Path(db + suffix).unlink(missing_ok=True)


def main(argv: Optional[list[str]] = None) -> int:
    """Run the benchmark and print (and optionally write) the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running collector (default: start one)")
    parser.add_argument(
        "--in-process", action="store_true", help="serve from a thread of this process instead"
    )
    parser.add_argument("--token", default="benchmark", help="bearer token to send")
    parser.add_argument("--db", default=":memory:", help="the started collector's db")
    parser.add_argument("--batches", type=int, default=100, help="requests per run")
    parser.add_argument("--batch-events", type=int, default=1000, help="events per request")
    parser.add_argument("--repeats", type=int, default=5, help="runs; the median is reported")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)

    collector: Optional[Collector] = None
    process: Optional[subprocess.Popen[str]] = None
    if args.url:
        url, target = args.url, args.url
    elif args.in_process:
        remove_database(args.db)
        collector = Collector(db=args.db).start()
        url, target = collector.url, f"in-process, db {args.db}"
    else:
        remove_database(args.db)
        process, url = start_collector(args.db)
        target = f"subprocess, db {args.db}"
    runs: list[dict[str, Optional[float]]] = []
    try:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {args.token}"}, timeout=60.0
        ) as client:
            server_pid = process.pid if process is not None else None
            warm_up = make_bodies(5, args.batch_events)
            run_once(client, warm_up, args.batch_events, server_pid)
            for _ in range(args.repeats):
                bodies = make_bodies(args.batches, args.batch_events)
                runs.append(run_once(client, bodies, args.batch_events, server_pid))
    finally:
        if collector is not None:
            collector.stop()
        if process is not None:
            process.terminate()
            process.wait(10)
        if not args.url:
            remove_database(args.db)

    rates = [run["events_per_second"] or 0.0 for run in runs]
    server_cpu = [run["server_cpu_us_per_event"] for run in runs]
    result: dict[str, Any] = {
        "benchmark": "collector_ingest",
        "events_per_second": round(statistics.median(rates)),
        "runs_events_per_second": [round(rate) for rate in rates],
        "client_cpu_us_per_event": round(
            statistics.median(run["client_cpu_us_per_event"] or 0.0 for run in runs), 3
        ),
        "server_cpu_us_per_event": (
            round(statistics.median(cpu for cpu in server_cpu if cpu is not None), 3)
            if None not in server_cpu
            else None
        ),
        "batches": args.batches,
        "batch_events": args.batch_events,
        "target": target,
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cpus",
    }
    print(
        f"collector ingest: {result['events_per_second']:,} events/s (median of {args.repeats} "
        f"runs of {args.batches} x {args.batch_events} events; {target}); runs: "
        + ", ".join(f"{rate:,}" for rate in result["runs_events_per_second"])
    )
    measured = "this process (client and collector)" if collector is not None else "client"
    cpu = f"CPU per event (median): {measured} {result['client_cpu_us_per_event']:.2f} µs"
    if result["server_cpu_us_per_event"] is not None:
        cpu += f", collector process {result['server_cpu_us_per_event']:.2f} µs"
    print(cpu)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
