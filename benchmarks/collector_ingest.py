"""Ingest throughput of the collector: events/s for batches of 1000 over one keep-alive client.

Starts a :class:`~fiddler_trace.collector.Collector` in this process (or targets ``--url``),
pre-encodes every request body before the clock starts, posts them one after the other on one
``httpx.Client`` and reports the median events/s over ``--repeats`` runs::

    .venv/bin/python benchmarks/collector_ingest.py --batches 100 --repeats 5
    .venv/bin/python benchmarks/collector_ingest.py --db /tmp/bench.sqlite --json out.json
    .venv/bin/python benchmarks/collector_ingest.py --url http://127.0.0.1:8008

Each run publishes new event ids, so nothing is counted as a duplicate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import httpx
import orjson

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


def run_once(client: httpx.Client, bodies: list[bytes], batch_events: int) -> float:
    """Post every body in order; return events per second."""
    headers = {"Content-Type": "application/json"}
    started = time.perf_counter()
    for body in bodies:
        response = client.post("/v3/events", content=body, headers=headers)
        if response.status_code != 200:
            raise SystemExit(f"unexpected {response.status_code}: {response.text[:300]}")
    elapsed = time.perf_counter() - started
    return len(bodies) * batch_events / elapsed


def main(argv: Optional[list[str]] = None) -> int:
    """Run the benchmark and print (and optionally write) the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running collector (default: start one in-process)")
    parser.add_argument("--token", default="benchmark", help="bearer token to send")
    parser.add_argument("--db", default=":memory:", help="in-process collector's db")
    parser.add_argument("--batches", type=int, default=100, help="requests per run")
    parser.add_argument("--batch-events", type=int, default=1000, help="events per request")
    parser.add_argument("--repeats", type=int, default=5, help="runs; the median is reported")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)

    collector = None if args.url else Collector(db=args.db).start()
    url = args.url or collector.url  # type: ignore[union-attr]
    rates = []
    try:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {args.token}"}, timeout=60.0
        ) as client:
            for _ in range(args.repeats):
                bodies = make_bodies(args.batches, args.batch_events)
                rates.append(run_once(client, bodies, args.batch_events))
    finally:
        if collector is not None:
            collector.stop()

    result: dict[str, Any] = {
        "benchmark": "collector_ingest",
        "events_per_second": round(statistics.median(rates)),
        "runs_events_per_second": [round(rate) for rate in rates],
        "batches": args.batches,
        "batch_events": args.batch_events,
        "target": args.url or f"in-process, db {args.db}",
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cpus",
    }
    print(
        f"collector ingest: {result['events_per_second']:,} events/s (median of {args.repeats} "
        f"runs of {args.batches} x {args.batch_events} events; {result['target']})"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
