"""A loopback ``/v3/events`` server that can misbehave on cue, for delivery tests.

By default it answers like Fiddler (200 with the event ids) and keeps what it accepted. Queue
faults with :meth:`FaultServer.push` to answer the next requests with them, in order: a status
(with headers, e.g. ``Retry-After``), a dropped connection, a hang until released, a delay, or
events kept with the answer lost.
``max_body_bytes`` answers 413 above a size and ``reject`` answers 400 for a batch holding an event
it refuses, as a server validating events one by one does; ``conflict_on_duplicate`` answers 409
to a batch whose events all arrived before.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, Union

import orjson

HANG_LIMIT = 30.0  # a hang ends by itself, so a failed test never leaves a thread behind


@dataclass
class Respond:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Optional[dict[str, Any]] = None


@dataclass
class Drop:
    """Close the connection without answering."""


@dataclass
class Hang:
    """Answer nothing until :meth:`FaultServer.release` (or ``HANG_LIMIT``), then drop."""


@dataclass
class Stall:
    """Answer nothing until :meth:`FaultServer.release` (or ``HANG_LIMIT``), then as usual: a
    server slower than the client's patience but not its timeout."""


@dataclass
class LandThenDrop:
    """Accept and keep the events, then close the connection before answering."""


@dataclass
class Delay:
    seconds: float


Fault = Union[Respond, Drop, Hang, Stall, Delay, LandThenDrop]


@dataclass
class Received:
    method: str
    headers: dict[str, str]
    body: Any
    answered: int = 0  # status sent; 0 for none


class FaultServer:
    """Serve on 127.0.0.1 at a free port on a daemon thread; use as a context manager."""

    def __init__(
        self,
        *,
        max_body_bytes: Optional[int] = None,
        reject: Optional[Callable[[dict[str, Any]], Optional[str]]] = None,
        id_column: str = "event_id",
        conflict_on_duplicate: bool = False,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.reject = reject
        self.id_column = id_column
        self.conflict_on_duplicate = conflict_on_duplicate
        self.faults: collections.deque[Fault] = collections.deque()
        self.received: list[Received] = []
        self.stored: dict[str, list[dict[str, Any]]] = {"POST": [], "PATCH": []}
        self.released = threading.Event()
        self._changed = threading.Condition()
        self._server = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def push(self, *faults: Fault) -> None:
        """Answer the next requests with these faults, in order."""
        self.faults.extend(faults)

    def release(self) -> None:
        """End every hang."""
        self.released.set()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Wait until ``predicate()`` holds, re-checked on every request; False on timeout."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def events(self, method: str = "POST") -> list[dict[str, Any]]:
        with self._changed:
            return list(self.stored[method])

    def _record(self, received: Received) -> None:
        with self._changed:
            self.received.append(received)
            self._changed.notify_all()

    def _answered(self, received: Received, status: int, events: list[dict[str, Any]]) -> None:
        with self._changed:
            received.answered = status
            self.stored.setdefault(received.method, []).extend(events)
            self._changed.notify_all()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        received = Received(handler.command, dict(handler.headers.items()), body)
        self._record(received)
        fault = self.faults.popleft() if self.faults else None
        if isinstance(fault, Delay):
            time.sleep(fault.seconds)  # a slow server, on the server's thread
            fault = None
        if isinstance(fault, Hang):
            self.released.wait(HANG_LIMIT)
            fault = Drop()
        if isinstance(fault, Stall):
            self.released.wait(HANG_LIMIT)
            fault = None
        if isinstance(fault, LandThenDrop):
            events = (received.body or {}).get("source", {}).get("events", [])
            self._answered(received, 0, events)
            fault = Drop()
        if isinstance(fault, Drop):
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if isinstance(fault, Respond):
            self._send(
                handler,
                received,
                fault.status,
                fault.body or _error(fault.status, "fault"),
                fault.headers,
            )
            return
        self._default(handler, received, raw)

    def _default(self, handler: BaseHTTPRequestHandler, received: Received, raw: bytes) -> None:
        if self.max_body_bytes is not None and len(raw) > self.max_body_bytes:
            self._send(handler, received, 413, _error(413, "request body too large"))
            return
        body = received.body or {}
        if handler.command == "DELETE":
            job = {"id": "1a2b3c4d-0000-4000-8000-000000000000", "name": "delete"}
            self._send(handler, received, 202, {"kind": "NORMAL", "data": {"job": job}})
            return
        events = body.get("source", {}).get("events", [])
        if self.reject is not None:
            for event in events:
                reason = self.reject(event)
                if reason:
                    self._send(handler, received, 400, _error(400, reason))
                    return
        ids = [str(e.get(self.id_column, "")) for e in events]
        if self.conflict_on_duplicate and handler.command == "POST":
            with self._changed:
                known = {str(e.get(self.id_column)) for e in self.stored["POST"]}
            if ids and all(i in known for i in ids):
                self._send(handler, received, 409, _error(409, "events already exist"))
                return
        answer = {
            "api_version": "3.0",
            "kind": "NORMAL",
            "data": {"source_type": "EVENTS", "event_ids": ids},
        }
        self._send(handler, received, 200, answer, events=events)

    def _send(
        self,
        handler: BaseHTTPRequestHandler,
        received: Received,
        status: int,
        body: dict[str, Any],
        headers: Optional[dict[str, str]] = None,
        events: Optional[list[dict[str, Any]]] = None,
    ) -> None:
        payload = orjson.dumps(body)
        # Recorded before the answer leaves, so a client that saw it finds it recorded.
        self._answered(received, status, events or [])
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(payload)


def _error(status: int, message: str) -> dict[str, Any]:
    return {
        "api_version": "3.0",
        "kind": "ERROR",
        "error": {
            "code": status,
            "message": message,
            "errors": [{"reason": "fault", "message": message, "help": ""}],
        },
    }


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a slow answer is part of the test, not an error


def _handler_for(server: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            server.handle(self)

        do_PATCH = do_POST
        do_DELETE = do_POST

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def fault_server(**kwargs: Any) -> Iterator[FaultServer]:
    with FaultServer(**kwargs) as server:
        yield server
