"""Code that already logs its predictions: ``FiddlerHandler``, configured through ``dictConfig``.

    pip install -e . && python examples/logging_handler.py

A log record becomes an event when it carries a mapping in its ``fiddler`` attribute (set with
``extra=``); every other record is ignored, so the handler can sit on the root logger next to the
console handler. The record's time is the event's timestamp. Put your own id in the mapping
(``event_id``) to update the event later; without one the handler makes a UUID4.
"""

from __future__ import annotations

import json
import logging
import logging.config
import uuid

import fiddler_trace
from fiddler_trace.collector import Collector

MODEL_ID = "2d7a8f4e-3c1b-4f6a-9e2d-5b8c7a6f1e30"


def logging_config(model_id: str) -> dict[str, object]:
    """The configuration a service would keep in its settings file (YAML, JSON or Python)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "plain"},
            "fiddler": {
                "class": "fiddler_trace.FiddlerHandler",  # keyword arguments follow
                "model_id": model_id,
                "event_field": "fiddler",  # the default, shown for clarity
                "redact": ["email"],  # never leaves the process
                "level": "INFO",
            },
        },
        "root": {"handlers": ["console", "fiddler"], "level": "INFO"},
        # httpx logs each request the library sends at INFO. FiddlerHandler skips those records
        # (and its own); this only keeps them off the console.
        "loggers": {"httpx": {"level": "WARNING"}},
    }


log = logging.getLogger("pricing")


def quote(request_id: str, customer: dict[str, object]) -> float:
    """A stand-in pricing model that logs each quote as an event."""
    price = round(80.0 + 0.4 * float(customer["age"]) - (15.0 if customer["loyal"] else 0.0), 2)
    log.info(
        "quoted %.2f for request %s",
        price,
        request_id,
        extra={"fiddler": {"event_id": request_id, **customer, "price": price}},
    )
    return price


def main() -> None:
    with Collector() as collector:
        # init() before dictConfig: the handler checks the FIDDLER_* settings when it is built.
        fiddler_trace.init(enabled=True, url=collector.url, token="local-token")
        logging.config.dictConfig(logging_config(MODEL_ID))

        log.info("service started")  # no "fiddler" attribute: logged, not an event
        request_ids = []
        for age, loyal in [(34, True), (58, False), (23, False)]:
            request_id = str(uuid.uuid4())
            quote(request_id, {"age": age, "loyal": loyal, "email": f"user{age}@example.com"})
            request_ids.append(request_id)

        # The customer accepted the first quote: ground truth for that event, by its id.
        fiddler_trace.update(request_ids[0], {"accepted": True})

        delivered = fiddler_trace.flush(timeout=10)
        stored = collector.events(MODEL_ID)
        print(f"delivered: {delivered}; the collector stored {len(stored)} events:")
        for event in stored:
            print("  " + json.dumps(event, sort_keys=True))
        fiddler_trace.shutdown()
        if not delivered or [event["event_id"] for event in stored] != request_ids:
            raise SystemExit("logging_handler: not everything arrived")
        if any("email" in event for event in stored) or stored[0].get("accepted") is not True:
            raise SystemExit("logging_handler: redaction or the update did not apply")


if __name__ == "__main__":
    main()
