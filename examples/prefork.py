"""Pre-fork workers, as gunicorn runs them: every process sends its own events, once.

    pip install -e . && python examples/prefork.py

The parent loads the model and serves a few warm-up requests, then forks three workers while
its warm-up events are still queued, as ``gunicorn --preload`` forks after importing the app. A
forked child starts with an empty queue, its own background thread and its own connections,
created on its first event: it never re-sends its parent's events, and the parent sends them
alone. The script checks that the collector received each event exactly once.

A process started by ``multiprocessing`` exits without running ``atexit`` hooks, so each worker
calls ``fiddler_trace.flush()`` when its work is done. gunicorn's and uvicorn's workers exit
normally: there the exit hook delivers what is left (within ``FIDDLER_TRACE_EXIT_TIMEOUT``).
Needs the ``fork`` start method (Linux, macOS); on Windows the script says so and exits 0.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys

import fiddler_trace
from fiddler_trace.collector import Collector

MODEL_ID = "6f1c0f0e-1111-4222-8333-444455556666"
WARM_UP, WORKERS, REQUESTS_PER_WORKER = 5, 3, 20


@fiddler_trace.monitor(model_id=MODEL_ID, metadata=lambda: {"pid": os.getpid()})
def predict(age: int, income: float) -> float:
    return round(min(1.0, 0.2 + income / 200_000 + age / 500), 3)


def worker(number: int, results: multiprocessing.Queue) -> None:
    for i in range(REQUESTS_PER_WORKER):
        predict(20 + number * 10 + i, 30_000.0 + 1_000 * i)
    delivered = fiddler_trace.flush(timeout=30)  # multiprocessing skips atexit: flush here
    stats = fiddler_trace.stats()  # a forked child counts from zero
    results.put((os.getpid(), delivered, stats["captured"], stats["sent"]))


def main() -> int:
    if "fork" not in multiprocessing.get_all_start_methods():
        print("prefork: this platform cannot fork (e.g. Windows); nothing to show")
        return 0
    fork = multiprocessing.get_context("fork")
    with Collector() as collector:
        # flush_interval=5: the warm-up events are certainly still queued when the workers fork.
        fiddler_trace.init(enabled=True, url=collector.url, token="local-token", flush_interval=5)
        for i in range(WARM_UP):
            predict(30 + i, 50_000.0)
        queued = fiddler_trace.stats()["queue_depth"]
        print(f"parent {os.getpid()}: {WARM_UP} warm-up events captured, {queued} still queued")

        results = fork.Queue()
        processes = [fork.Process(target=worker, args=(n, results)) for n in range(WORKERS)]
        for process in processes:
            process.start()
        reports = [results.get(timeout=60) for _ in processes]
        for process in processes:
            process.join(timeout=60)
        for pid, delivered, captured, sent in sorted(reports):
            print(f"worker {pid}: captured {captured}, sent {sent}, delivered: {delivered}")

        parent_delivered = fiddler_trace.flush(timeout=30)
        print(
            f"parent {os.getpid()}: sent {fiddler_trace.stats()['sent']}, delivered: "
            f"{parent_delivered}"
        )

        stored = collector.events(MODEL_ID)
        expected = WARM_UP + WORKERS * REQUESTS_PER_WORKER
        by_process: dict[int, int] = {}
        for event in stored:
            by_process[event["pid"]] = by_process.get(event["pid"], 0) + 1
        duplicates = collector.stats()["duplicates"]
        print(
            f"the collector stored {len(stored)} events (expected {expected}), "
            f"{duplicates} duplicates; by process: {json.dumps(by_process)}"
        )
        fiddler_trace.shutdown()
        ok = (
            parent_delivered
            and all(report[1] for report in reports)
            and len(stored) == expected
            and len({event["event_id"] for event in stored}) == expected
            and duplicates == 0
            and all(process.exitcode == 0 for process in processes)
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
