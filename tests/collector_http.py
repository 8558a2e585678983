"""Talking to the collector over HTTP with plain httpx, for the collector's own tests."""

from __future__ import annotations

import socket
from typing import Any, Optional

import httpx

from fiddler_trace.collector import Collector

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"
AUTH = {"Authorization": "Bearer t"}


def client_for(collector: Collector, headers: Optional[dict[str, str]] = None) -> httpx.Client:
    """A keep-alive client of the collector; plain HTTP on loopback, so no CA bundle to load."""
    return httpx.Client(
        base_url=collector.url, headers=AUTH if headers is None else headers, verify=False
    )


def body(events: list[Any], model_id: str = MODEL, **fields: Any) -> dict[str, Any]:
    """A PublishEventsRequest with an EVENTS source."""
    return {
        "model_id": model_id,
        "env_type": "PRODUCTION",
        "source": {"type": "EVENTS", "events": events},
        **fields,
    }


def publish(client: httpx.Client, events: list[Any], model_id: str = MODEL) -> list[str]:
    """POST the events; assert 200 and return the event ids."""
    response = client.post("/v3/events", json=body(events, model_id))
    assert response.status_code == 200, response.text
    return list(response.json()["data"]["event_ids"])


def raw_exchange(port: int, request: bytes) -> tuple[bytes, bytes]:
    """Send raw bytes; return the response head and what follows until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    return head, rest
