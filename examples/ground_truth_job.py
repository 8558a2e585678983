"""Ground truth from a later process: a job sends labels for event ids stored by the service.

    pip install -e . && python examples/ground_truth_job.py

The service that made the predictions kept each event id next to its business key (here a CSV;
in real life a database row). Weeks later the outcomes are known, joined to those ids, and a
batch job sends them as updates. That job did not capture the events, so it names the model:
``update(event_id, columns, model_id=...)``.

Run as above, the script plays the whole story against an in-process collector: it runs the
service as one process, joins outcomes to its ids, then runs the job as another process. The job
alone is what you would schedule, configured by the environment:

    FIDDLER_URL=https://acme.fiddler.ai FIDDLER_TOKEN=... \\
        python examples/ground_truth_job.py label outcomes.csv
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import fiddler_trace

MODEL_ID = "6f1c0f0e-1111-4222-8333-444455556666"
APPLICANTS = [(101, 41, 72000.0), (102, 29, 31000.0), (103, 55, 128000.0), (104, 37, 54000.0)]


@fiddler_trace.monitor(model_id=MODEL_ID, inputs=["age", "income"])
def score(applicant_id: int, age: int, income: float) -> float:
    """A stand-in credit model; ``applicant_id`` is a business key, not a model input."""
    return round(min(1.0, 0.2 + income / 200_000 + age / 500), 3)


def serve(predictions: Path) -> int:
    """The service: score applicants and keep each event id with the applicant's id."""
    with predictions.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["applicant_id", "event_id"])
        for applicant_id, age, income in APPLICANTS:
            score(applicant_id, age, income)
            writer.writerow([applicant_id, fiddler_trace.last_event_id()])
    return 0 if fiddler_trace.flush(timeout=30) else 1


def label(outcomes: Path) -> int:
    """The job: one update per row of ``event_id,defaulted``; exit 1 unless all were delivered."""
    # enabled=True here, not from the environment: a job whose only purpose is to send must fail
    # (ConfigurationError) when FIDDLER_URL or FIDDLER_TOKEN is missing, instead of doing nothing.
    fiddler_trace.init(enabled=True)
    with outcomes.open(newline="") as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        columns = {"defaulted": row["defaulted"] == "true"}
        fiddler_trace.update(row["event_id"], columns, model_id=MODEL_ID)
    delivered = fiddler_trace.flush(timeout=60)  # a job must wait: exit would cut it short
    stats = fiddler_trace.stats()
    print(
        f"label job: {stats['updated']} of {len(rows)} labels delivered; failed {stats['failed']}"
    )
    return 0 if delivered and stats["updated"] == len(rows) else 1


def demo() -> None:
    from fiddler_trace.collector import Collector

    with Collector() as collector, tempfile.TemporaryDirectory() as folder:
        predictions, outcomes = Path(folder, "predictions.csv"), Path(folder, "outcomes.csv")
        env = {
            **os.environ,
            "FIDDLER_TRACE_ENABLED": "1",
            "FIDDLER_URL": collector.url,
            "FIDDLER_TOKEN": "local-token",
        }
        run = [sys.executable, __file__]
        subprocess.run([*run, "serve", str(predictions)], env=env, check=True)
        print(f"service: {collector.count(MODEL_ID)} events published")

        # Weeks later, in the warehouse: outcomes joined to the stored event ids.
        defaulted = {"101": False, "102": True, "103": False}  # 104: not known yet
        with predictions.open(newline="") as file, outcomes.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["event_id", "defaulted"])
            for row in csv.DictReader(file):
                if row["applicant_id"] in defaulted:
                    writer.writerow([row["event_id"], str(defaulted[row["applicant_id"]]).lower()])

        # The job is a separate process: it never saw these events, so it names the model.
        subprocess.run([*run, "label", str(outcomes)], env=env, check=True)
        for event in collector.events(MODEL_ID):
            print(f"  {event['event_id']}  score={event['prediction']}  {event.get('defaulted')}")
        labelled = [e for e in collector.events(MODEL_ID) if "defaulted" in e]
        if len(labelled) != len(defaulted):
            raise SystemExit("ground_truth_job: the labels did not all arrive")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("serve", "label"):
        command = serve if sys.argv[1] == "serve" else label
        raise SystemExit(command(Path(sys.argv[2])))
    if len(sys.argv) > 1:
        raise SystemExit(f"usage: {sys.argv[0]} [serve PREDICTIONS.csv | label OUTCOMES.csv]")
    demo()
