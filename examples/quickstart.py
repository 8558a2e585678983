"""fiddler_trace in one minute, against the embedded collector. No extra dependencies.

    pip install -e . && python examples/quickstart.py

It starts a local collector (the same ``/v3/events`` contract as a Fiddler instance), monitors a
small model with one decorator, sends ground truth for some predictions, and prints what the
collector stored. In production the same code runs unchanged with ``FIDDLER_TRACE_ENABLED=1``,
``FIDDLER_URL`` and ``FIDDLER_TOKEN`` set in the environment instead of calling ``init()``.
"""

from __future__ import annotations

import json
import random

import fiddler_trace
from fiddler_trace.collector import Collector

MODEL_ID = "6f1c0f0e-1111-4222-8333-444455556666"


@fiddler_trace.monitor(model_id=MODEL_ID)
def predict(age: int, income: float, region: str = "EU") -> dict[str, object]:
    """A stand-in credit model: a score and a decision."""
    score = min(1.0, 0.2 + income / 200_000 + (0.1 if region == "EU" else 0.0))
    return {"score": round(score, 3), "approved": score > 0.6}


def main() -> None:
    with Collector() as collector:  # a free port on 127.0.0.1, stored in memory
        fiddler_trace.init(enabled=True, url=collector.url, token="local-token")

        rng = random.Random(7)
        event_ids = []
        for _ in range(5):
            predict(rng.randint(21, 70), rng.uniform(20_000, 150_000), rng.choice(["EU", "US"]))
            event_ids.append(fiddler_trace.last_event_id())  # hand it to the caller, store it

        # Days later, the outcome is known: send it keyed by the event id.
        for event_id in event_ids[:3]:
            fiddler_trace.update(event_id, {"defaulted": rng.random() < 0.2})

        delivered = fiddler_trace.flush(timeout=10)
        print(f"delivered: {delivered}")
        print(f"the collector at {collector.url} stored:")
        for event in collector.events(MODEL_ID):
            print("  " + json.dumps(event, sort_keys=True))
        stats = fiddler_trace.stats()
        print("stats: " + json.dumps({k: v for k, v in stats.items() if v}, sort_keys=True))
        fiddler_trace.shutdown()
        if not delivered or collector.count(MODEL_ID) != 5:
            raise SystemExit("quickstart: not everything arrived")


if __name__ == "__main__":
    main()
