"""The token never appears in logs (ours, httpx's, httpcore's at DEBUG), reprs, errors or stats."""

from __future__ import annotations

import logging
import random

import pytest
from faults import FaultServer, Respond

from fiddler_trace import EventsClient, FiddlerAPIError
from fiddler_trace._config import load_settings
from fiddler_trace._event import Event
from fiddler_trace._pipeline import Pipeline

TOKEN = "tok-SECRET-4f9a2c-do-not-leak"
MODEL = "6f1c0f0e-1111-4222-8333-444455556666"


class NoJitter(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


def test_token_absent_from_debug_logs_errors_and_stats(caplog):
    """With every logger at DEBUG and a failing server, the token shows up nowhere."""
    with FaultServer() as server:
        server.push(Respond(500), Respond(401))
        settings = load_settings(environ={}, enabled=True, url=server.url, token=TOKEN)
        pipeline = Pipeline(settings, rng=NoJitter())
        with caplog.at_level(logging.DEBUG):
            pipeline.enqueue(Event(MODEL, "00000000-0000-4000-8000-000000000001", 0.0, {}))
            assert not pipeline.flush(10)
            pipeline.shutdown(5)
        assert server.received[0].headers["Authorization"] == f"Bearer {TOKEN}"
        assert "httpx" in {r.name for r in caplog.records}  # httpx did log at DEBUG
        texts = [caplog.text, repr(settings), repr(pipeline), str(pipeline.snapshot())]
        for record in caplog.records:
            texts.append(str(record.args))
            texts.append(str(record.__dict__))
        assert not [t for t in texts if TOKEN in t]


def test_token_absent_from_client_errors():
    """FiddlerAPIError from a refused request carries no token, in str or repr."""
    with FaultServer() as server:
        server.push(Respond(403))
        with EventsClient(server.url, TOKEN) as client:
            with pytest.raises(FiddlerAPIError) as caught:
                client.publish(MODEL, [{"x": 1}])
            error = caught.value
            assert TOKEN not in f"{error!s} {error!r} {error.__dict__}"
            assert TOKEN not in repr(client)
