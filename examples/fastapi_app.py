"""A FastAPI service: each prediction is an event, its id goes back to the caller, and a
``/feedback`` endpoint sends the ground truth for it later.

Run as a script, it drives a short demo through FastAPI's TestClient against an in-process
collector, and exits:

    pip install -e ".[examples]" && python examples/fastapi_app.py

To serve it for real, start a collector (or point ``FIDDLER_URL`` at your Fiddler instance) and
run uvicorn from the repository's root, configured by the environment only:

    fiddler-trace collector --port 8008 &
    FIDDLER_TRACE_ENABLED=1 FIDDLER_URL=http://127.0.0.1:8008 FIDDLER_TOKEN=local-token \\
        uvicorn fastapi_app:app --app-dir examples --port 8000 --workers 2

    curl -s localhost:8000/predict -H 'content-type: application/json' \\
        -d '{"age": 41, "income": 72000, "region": "EU"}'
    curl -s localhost:8000/feedback -H 'content-type: application/json' \\
        -d '{"event_id": "<the event_id from above>", "defaulted": false}'
    curl -s 'localhost:8008/v3/events?model_id=6f1c0f0e-1111-4222-8333-444455556666' \\
        -H 'authorization: Bearer local-token'
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic import BaseModel

import fiddler_trace

MODEL_ID = "6f1c0f0e-1111-4222-8333-444455556666"


# Monitor the model function, not the endpoint: its parameters are the model's input columns.
@fiddler_trace.monitor(model_id=MODEL_ID)
def score(age: int, income: float, region: str) -> dict[str, object]:
    """A stand-in credit model: a score and a decision."""
    value = min(1.0, 0.2 + income / 200_000 + (0.1 if region == "EU" else 0.0))
    return {"score": round(value, 3), "approved": value > 0.6}


class Applicant(BaseModel):
    age: int
    income: float
    region: str = "EU"


class Feedback(BaseModel):
    event_id: str
    defaulted: bool


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    # Deliver what is still queued before this worker process exits (at most 5 s). The same
    # happens at interpreter exit anyway; doing it here makes it explicit and bounded.
    fiddler_trace.shutdown(timeout=5.0)


app = FastAPI(title="credit scoring", lifespan=lifespan)


@app.post("/predict")
def predict(applicant: Applicant) -> dict[str, object]:
    result = score(applicant.age, applicant.income, applicant.region)
    # The id of the event just captured, in this thread: the caller keeps it for /feedback.
    return {**result, "event_id": fiddler_trace.last_event_id()}


@app.post("/feedback")
def feedback(body: Feedback) -> dict[str, object]:
    # model_id= because the feedback may reach another worker process than the prediction did:
    # only the process that captured an event knows its model without being told.
    fiddler_trace.update(body.event_id, {"defaulted": body.defaulted}, model_id=MODEL_ID)
    return {"accepted": body.event_id}


def main() -> None:
    from fastapi.testclient import TestClient

    from fiddler_trace.collector import Collector

    with Collector() as collector:
        # In production the environment does this: FIDDLER_TRACE_ENABLED, FIDDLER_URL, ...
        fiddler_trace.init(enabled=True, url=collector.url, token="local-token")
        applicants = [
            {"age": 41, "income": 72000, "region": "EU"},
            {"age": 29, "income": 31000, "region": "US"},
            {"age": 55, "income": 128000, "region": "EU"},
        ]
        with TestClient(app) as client:  # runs the lifespan: shutdown() when the block ends
            answers = []
            for applicant in applicants:
                response = client.post("/predict", json=applicant)
                response.raise_for_status()
                answers.append(response.json())
                print(f"POST /predict {json.dumps(applicant)} -> {json.dumps(answers[-1])}")
            # Days later, the first applicant's loan is repaid.
            response = client.post(
                "/feedback", json={"event_id": answers[0]["event_id"], "defaulted": False}
            )
            response.raise_for_status()
            print(f"POST /feedback -> {json.dumps(response.json())}")

        stored = {event["event_id"]: event for event in collector.events(MODEL_ID)}
        print(f"the collector stored {len(stored)} events; the first one:")
        print("  " + json.dumps(stored.get(answers[0]["event_id"]), sort_keys=True))
        if sorted(stored) != sorted(answer["event_id"] for answer in answers):
            raise SystemExit("fastapi_app: the stored events are not the ones answered")
        if stored[answers[0]["event_id"]].get("defaulted") is not False:
            raise SystemExit("fastapi_app: the feedback did not arrive")


if __name__ == "__main__":
    main()
