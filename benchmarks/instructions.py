"""Instructions per event on each thread, counted by valgrind's callgrind: the figures of
``docs/performance.md`` that do not move with the machine's load or the vCPU a run lands on.

    python benchmarks/instructions.py [monitor|producer|floor|bare ...]  # valgrind; ~1 min each

Each workload calls hotpath.py's ``predict`` in a loop, events going to its loopback sink (a
subprocess, not counted), and runs twice under callgrind, for 20,000 and 60,000 calls; the
difference of each thread's total over the 40,000 extra calls is its cost per call, free of
start-up and shutdown:

- ``monitor``: ``@monitor`` with capture on (thread 1: the caller's; thread 2: the worker);
- ``producer``: the caller's thread of ``monitor`` alone, repeatable to the instruction: the
  worker is stopped after the warm-up, the events stay queued, and the two threads' handover
  is left out (under valgrind, which runs one thread at a time, how often the caller's thread
  finds the queue empty or the pool of ids drawn ahead empty, or waits for the interpreter
  lock, depends on the machine's load: ``monitor``'s thread 1 moves by ~2,000 instructions
  from run to run). The queue grows past a batch, as it does whenever the caller outruns
  the worker (most calls of ``monitor`` find it so): every call takes that path, and one in
  ``DEEP_CHECK`` (512) wakes the stopped worker; ids come from the pool; the garbage collector
  is off;
- ``floor``: ``floor.py``'s minimal capture (thread 2: its worker);
- ``bare``: the function alone.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from itertools import repeat
from typing import Any, Callable, Optional

SHORT, LONG = 20_000, 60_000


def child(workload: str, calls: int) -> None:
    """Run ``workload`` for ``calls`` calls after a warm-up; flush; exit without teardown."""
    import hotpath  # the benchmark's function and sink

    sink, url = hotpath.start_sink()
    func: Callable[..., Any] = hotpath.predict
    flush: Optional[Callable[[], Any]] = None
    if workload == "monitor":
        import fiddler_trace

        # Batches close by size only: by age, their size, and so the requests per event,
        # would depend on how fast the machine runs under valgrind.
        fiddler_trace.init(enabled=True, url=url, token="bench", flush_interval=3600.0)
        func = fiddler_trace.monitor(hotpath.MODEL)(hotpath.predict)
        flush = fiddler_trace.flush
    elif workload == "producer":
        import gc

        import fiddler_trace
        from fiddler_trace import _ids, _pipeline

        fiddler_trace.init(enabled=True, url=url, token="bench", max_queue_size=10**7)
        func = fiddler_trace.monitor(hotpath.MODEL)(hotpath.predict)
        func(41, 72000.0, "EU", 3, "gold")  # starts the pipeline
        running = _pipeline.current()
        assert running is not None
        assert running._thread is not None
        running.worker.stopping = True  # the worker ends; the queue and the lane stay
        running.wake.set()
        running._thread.join()
        running.running = True
        _ids.ID_POOL.extend(repeat(_ids.getrandbits(128), 2_000 + calls + 1))
        gc.disable()
    elif workload == "floor":
        from floor import MinimalPipeline

        pipeline = MinimalPipeline(url, hotpath.MODEL)
        func = pipeline.wrap(hotpath.predict)
        flush = pipeline.flush
    for count in (2_000, calls):  # the warm-up starts threads and connections
        for _ in repeat(None, count):
            func(41, 72000.0, "EU", 3, "gold")
        if flush is not None:
            flush()
    sink.kill()
    os._exit(0)  # the same exit for both lengths: no shutdown to count


def thread_totals(workload: str, calls: int, folder: str) -> list[int]:
    """Callgrind's total per thread of one run, in thread order."""
    out = os.path.join(folder, f"{workload}.{calls}")
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            f"--callgrind-out-file={out}",
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            workload,
            str(calls),
        ],
        check=True,
        capture_output=True,
        # A fixed hash seed: dicts and sets then lay out alike in every run (the seed moves the
        # caller's thread by ~50 instructions a call).
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    totals = []
    for name in sorted(f for f in os.listdir(folder) if f.startswith(f"{workload}.{calls}-")):
        with open(os.path.join(folder, name)) as profile:
            match = re.search(r"^(?:summary|totals): (\d+)", profile.read(), re.MULTILINE)
        totals.append(int(match.group(1)) if match else 0)
    return totals


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", default=["monitor", "floor"])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind (Debian: apt install valgrind)")
    with tempfile.TemporaryDirectory() as folder:
        for workload in args.workloads:
            short = thread_totals(workload, SHORT, folder)
            long = thread_totals(workload, LONG, folder)
            if len(short) != len(long):
                raise SystemExit(f"{workload}: the two runs made different threads")
            per_call = [(b - a) / (LONG - SHORT) for a, b in zip(short, long)]
            threads = ", ".join(
                f"thread {i}: {value:,.0f}" for i, value in enumerate(per_call, 1) if value >= 1
            )
            print(f"{workload}: instructions per call, {threads}; all: {sum(per_call):,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
