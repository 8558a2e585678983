"""End-to-end delivery rate to the local collector, and the worker's CPU time per event.

Starts ``fiddler-trace collector`` in a subprocess (so the server does not share this process's
GIL), submits events from one producer thread as fast as it can, and waits until the collector
acknowledged every one. Prints a table and optionally writes JSON.

    python benchmarks/delivery.py [--events 200000] [--repeats 3] [--ids text|drawn] [--json F]

``--ids drawn`` submits the 128-bit ints the hot path draws (formatted on the worker) instead of
id strings, as plain tuples as the hot path does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from hotpath import start_collector  # benchmarks/ is on sys.path when run as a script

from fiddler_trace import _pipeline
from fiddler_trace._event import Event
from fiddler_trace._ids import KEEP_BITS, V4_BITS, EventId, getrandbits

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"


def thread_cpu(thread_ident: int) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(thread_ident))


def run_once(url: str, events: int, drawn: bool = False) -> dict[str, float]:
    _pipeline.reset()
    _pipeline.configure(enabled=True, url=url, token="bench", max_queue_size=max(events, 100_000))
    columns = {"age": 41, "income": 72000.0, "region": "EU", "score": 0.93, "label": 1}
    ids: list[EventId]
    if drawn:
        ids = [getrandbits(128) & KEEP_BITS | V4_BITS for _ in range(events)]
    else:
        ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(events)]
    now = time.time()
    start = time.perf_counter()
    producer_cpu_start = time.thread_time()
    if drawn:
        for event_id in ids:
            _pipeline.submit((MODEL, event_id, now, dict(columns), "event_id", "timestamp"))
    else:
        for event_id in ids:
            _pipeline.submit(Event(MODEL, event_id, now, dict(columns)))
    producer_cpu = time.thread_time() - producer_cpu_start
    pipeline = _pipeline.current()
    assert pipeline is not None
    assert pipeline._thread is not None
    delivered = _pipeline.flush(120)
    elapsed = time.perf_counter() - start
    worker_cpu = thread_cpu(pipeline._thread.ident or 0)
    stats = _pipeline.stats()
    _pipeline.shutdown(10)
    if not delivered or stats["sent"] != events:
        raise SystemExit(f"delivery incomplete: {stats}")
    return {
        "events_per_s": events / elapsed,
        "producer_us_per_event": producer_cpu / events * 1e6,
        "worker_us_per_event": worker_cpu / events * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--ids", choices=("text", "drawn"), default="text", help="id strings or drawn ints"
    )
    parser.add_argument("--url", help="a running collector instead of a new one")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    process = None
    url = args.url
    if url is None:
        process, url = start_collector()
    try:
        runs = [run_once(url, args.events, args.ids == "drawn") for _ in range(args.repeats)]
    finally:
        if process is not None:
            process.terminate()
            process.wait(10)
    result: dict[str, Any] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    result.update(events=args.events, repeats=args.repeats, ids=args.ids, runs=runs)
    print(f"{'metric':<28}{'median':>14}")
    print(f"{'events/s end to end':<28}{result['events_per_s']:>14,.0f}")
    print(f"{'producer CPU us/event':<28}{result['producer_us_per_event']:>14.2f}")
    print(f"{'worker CPU us/event':<28}{result['worker_us_per_event']:>14.2f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
