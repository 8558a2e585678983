"""A real scikit-learn model, monitored one DataFrame at a time with ``batch=True``.

    pip install -e ".[examples]" && python examples/sklearn_model.py

It trains a classifier on the breast cancer data set that ships inside scikit-learn (nothing is
downloaded), then scores the held-out rows in DataFrames of 25, as a batch scoring service
would. ``@monitor(batch=True)`` turns each scored DataFrame into one event per row, each with its
own id (``last_event_ids()``). The true diagnoses are then sent as ground truth with
``update()``, and the script reads back from the local collector what Fiddler would compute
from: predictions joined with their labels.
"""

from __future__ import annotations

import json

import pandas as pd
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import fiddler_trace
from fiddler_trace.collector import Collector

MODEL_ID = "0b9e3c52-5a7d-4e0e-9a51-7c1f3d2e4a10"
ROWS_PER_CALL = 25


def load_data() -> tuple[pd.DataFrame, pd.Series]:
    """The features with column names Fiddler accepts (no spaces), and the target."""
    data = load_breast_cancer(as_frame=True)
    features = data.frame.drop(columns="target")
    features.columns = [name.replace(" ", "_") for name in features.columns]
    return features, data.frame["target"]


features, target = load_data()
train_x, test_x, train_y, test_y = train_test_split(
    features, target, test_size=0.25, random_state=0, stratify=target
)
classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
classifier.fit(train_x, train_y)


# batch=True: the first argument is the rows (a DataFrame here; a list of dicts or a 2-D array
# also work), the result has one entry per row. Inputs are the DataFrame's columns; the returned
# DataFrame's columns are the outputs.
@fiddler_trace.monitor(model_id=MODEL_ID, batch=True, metadata={"model_version": "lr-1"})
def predict(rows: pd.DataFrame) -> pd.DataFrame:
    """Probability of a benign tumour and the predicted class, one row per input row."""
    probability = classifier.predict_proba(rows)[:, 1]
    return pd.DataFrame({"probability_benign": probability, "prediction": probability >= 0.5})


def main() -> None:
    with Collector() as collector:
        fiddler_trace.init(enabled=True, url=collector.url, token="local-token")

        event_ids: list[str] = []
        for start in range(0, len(test_x), ROWS_PER_CALL):
            predict(test_x.iloc[start : start + ROWS_PER_CALL])
            event_ids.extend(fiddler_trace.last_event_ids())  # one id per row, in row order

        # Later, the diagnoses are confirmed: send each as ground truth, keyed by event id.
        for event_id, label in zip(event_ids, test_y):
            fiddler_trace.update(event_id, {"target": bool(label)})

        delivered = fiddler_trace.flush(timeout=30)
        stored = collector.events(MODEL_ID)
        labelled = [event for event in stored if "target" in event]
        correct = sum(event["prediction"] == event["target"] for event in labelled)
        print(f"scored {len(test_x)} rows in {-(-len(test_x) // ROWS_PER_CALL)} calls")
        print(f"delivered: {delivered}; the collector stored {len(stored)} events")
        print(f"accuracy from the stored predictions and labels: {correct / len(labelled):.3f}")
        print("one stored event, abridged:")
        first = stored[0]
        shown = ["event_id", "timestamp", "mean_radius", "probability_benign", "prediction"]
        print("  " + json.dumps({k: first[k] for k in [*shown, "target", "model_version"]}))
        stats = fiddler_trace.stats()
        print("stats: " + json.dumps({k: v for k, v in stats.items() if v}, sort_keys=True))
        fiddler_trace.shutdown()
        if not delivered or len(stored) != len(test_x) or len(labelled) != len(test_x):
            raise SystemExit("sklearn_model: not everything arrived")


if __name__ == "__main__":
    main()
