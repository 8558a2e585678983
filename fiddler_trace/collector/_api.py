"""The collector's ``/v3/events`` semantics, independent of sockets.

:class:`EventsApp` answers one decoded request with a :class:`Reply`: routing (404/405), bearer
auth (401), validation (400), storage, Fiddler's response and error envelopes, and counters.
The HTTP handler in ``_server`` reads the bytes and writes the reply.

Routes (the two ``GET`` ones are this collector's read-side extension of the API):

- ``POST /v3/events``: publish; 200 with the event ids, or 202 with a job for a FILE source.
- ``PATCH /v3/events``: update stored events; 200 with the applied ids, plus ``data.errors``
  (reason ``event_not_found``) for updates whose event is not stored.
- ``DELETE /v3/events``: delete by ids or ``[start, end)`` time range; 202 with a job.
- ``GET /v3/events?model_id=&limit=&offset=``: ``data.events`` (updates merged, arrival order)
  and ``data.total``.
- ``GET /v3/events/updates?model_id=&limit=&offset=``: ``data.updates``, the applied updates
  in arrival order, and ``data.total``.
"""

from __future__ import annotations

import hmac
import sys
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Callable, Optional

import orjson

from fiddler_trace.collector import _validate
from fiddler_trace.collector._store import DuplicateEventError, EventStore
from fiddler_trace.collector._validate import ValidationError

__all__ = ["EVENTS_PATH", "UPDATES_PATH", "EventsApp", "Reply", "error_reply"]

API_VERSION = "3.0"
EVENTS_PATH = "/v3/events"
UPDATES_PATH = "/v3/events/updates"
ROUTES: dict[str, tuple[str, ...]] = {
    EVENTS_PATH: ("DELETE", "GET", "PATCH", "POST"),
    UPDATES_PATH: ("GET",),
}
_HELP = {
    "POST": "See PublishEventsRequest in the /v3/events OpenAPI contract.",
    "PATCH": "See PublishEventsRequest in the /v3/events OpenAPI contract.",
    "DELETE": "See DeleteEventsRequest in the /v3/events OpenAPI contract.",
}
_DEFAULT_HELP = "See the /v3/events OpenAPI contract."


@dataclass
class Reply:
    """A response to send: status, JSON body, extra headers; ``events`` is for the log line."""

    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    events: int = 0
    close: bool = False


def ok_reply(data: dict[str, Any], status: int = 200, events: int = 0) -> Reply:
    """A success envelope: ``{"api_version", "kind": "NORMAL", "data"}``."""
    body = {"api_version": API_VERSION, "kind": "NORMAL", "data": data}
    return Reply(status, orjson.dumps(body), events=events)


def error_reply(status: int, reason: str, message: str, *, help_text: str = _DEFAULT_HELP) -> Reply:
    """Fiddler's ``ErrorResponse`` envelope with one entry in ``error.errors``."""
    error = {
        "code": status,
        "message": message,
        "errors": [{"reason": reason, "message": message, "help": help_text}],
    }
    body = {"api_version": API_VERSION, "kind": "ERROR", "error": error}
    return Reply(status, orjson.dumps(body))


class EventsApp:
    """Request semantics of the collector over an :class:`EventStore`; thread-safe.

    Args:
        store: where events and updates go.
        token: the only bearer token accepted, or None to accept any non-empty one.
        event_id_column: the event column holding the event id.
        reject_duplicates: answer 409 to a publish repeating a stored event id, instead of
            keeping the first event and counting a duplicate.
        log: called with one line per request (method, path, status, events, ms), or None.
    """

    def __init__(
        self,
        store: EventStore,
        *,
        token: Optional[str] = None,
        event_id_column: str = "event_id",
        reject_duplicates: bool = False,
        log: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.store = store
        self._token = token.encode() if token is not None else None
        self._id_column = event_id_column
        self._reject_duplicates = reject_duplicates
        self._log = log
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[int] = Counter()

    def __repr__(self) -> str:
        auth = "token" if self._token is not None else "any token"
        return f"EventsApp(db={self.store.path!r}, auth={auth!r})"

    # -- before the body is read -------------------------------------------------------------

    def check_route(self, method: str, path: str) -> Optional[Reply]:
        """404 for an unknown path, 405 (with ``Allow``) for a method it does not take."""
        allowed = ROUTES.get(path)
        if allowed is None:
            return error_reply(404, "not_found", f"no route for {path}; the API is {EVENTS_PATH}")
        if method not in allowed:
            reply = error_reply(
                405,
                "method_not_allowed",
                f"{method} is not allowed on {path}; allowed: {', '.join(allowed)}",
            )
            reply.headers.append(("Allow", ", ".join(allowed)))
            return reply
        return None

    def check_auth(self, authorization: Optional[str]) -> Optional[Reply]:
        """401 unless the header is ``Bearer <token>`` (the configured token, if any)."""
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials:
            reply = error_reply(
                401, "unauthorized", "missing bearer token: send 'Authorization: Bearer <token>'"
            )
        elif self._token is not None and not hmac.compare_digest(credentials.encode(), self._token):
            reply = error_reply(401, "unauthorized", "invalid bearer token")
        else:
            return None
        reply.headers.append(("WWW-Authenticate", 'Bearer realm="fiddler"'))
        return reply

    # -- the request proper ------------------------------------------------------------------

    def handle(self, method: str, path: str, query: str, body: bytes) -> Reply:
        """Answer a routed, authorized request; never raises for a bad request (400s)."""
        try:
            if path == UPDATES_PATH:
                return self._read_updates(_validate.read_query(query))
            if method == "GET":
                return self._read_events(_validate.read_query(query))
            request = _validate.decode_body(body)
            if method == "DELETE":
                return self._delete(_validate.delete_request(request))
            publish = _validate.publish_request(
                request, event_id_column=self._id_column, is_update=method == "PATCH"
            )
            if publish.source_type == "FILE":
                return self._file_job(publish)
            if method == "PATCH":
                return self._update(publish)
            return self._publish(publish, body)
        except ValidationError as exc:
            return error_reply(
                exc.status, exc.reason, exc.message, help_text=_HELP.get(method, _DEFAULT_HELP)
            )

    def _publish(self, request: _validate.PublishRequest, body: bytes) -> Reply:
        try:
            result = self.store.publish(
                request.model_id,
                request.env_type,
                request.env_name,
                request.events,
                event_ids=request.event_ids,
                request_body=body,
                reject_duplicates=self._reject_duplicates,
            )
        except DuplicateEventError as exc:
            return error_reply(
                409,
                "duplicate_event_id",
                f"event id {exc.event_id!r} is already stored for model {request.model_id}; "
                "nothing of this request was stored",
            )
        self._count(
            published=len(result.event_ids) - result.duplicates, duplicates=result.duplicates
        )
        data = {"source_type": "EVENTS", "event_ids": result.event_ids}
        return ok_reply(data, events=len(request.events))

    def _update(self, request: _validate.PublishRequest) -> Reply:
        result = self.store.update(request.model_id, request.events)
        self._count(updated=len(result.applied), unknown_updates=len(result.unknown))
        data: dict[str, Any] = {"source_type": "EVENTS", "event_ids": result.applied}
        if result.unknown:
            data["errors"] = [
                {
                    "reason": "event_not_found",
                    "message": f"no event {event_id!r} is stored for model {request.model_id}",
                    "event_id": event_id,
                }
                for event_id in result.unknown
            ]
        return ok_reply(data, events=len(request.events))

    def _file_job(self, request: _validate.PublishRequest) -> Reply:
        # Files are uploaded through another API this collector does not have: acknowledge the
        # job the way Fiddler does and store nothing.
        self._count(file_jobs=1)
        job = {"id": str(uuid.uuid4()), "name": f"Ingest file {request.file_id}"}
        return ok_reply({"source_type": "FILE", "job": job}, status=202)

    def _delete(self, request: _validate.DeleteRequest) -> Reply:
        if request.event_ids is not None:
            deleted = self.store.delete_ids(request.model_id, request.event_ids)
        else:
            start, end = request.start_time or 0.0, request.end_time or 0.0
            deleted = self.store.delete_range(request.model_id, start, end)
        self._count(deleted=deleted)
        job = {"id": str(uuid.uuid4()), "name": f"Delete events of model {request.model_id}"}
        return ok_reply({"job": job}, status=202, events=deleted)

    def _read_events(self, query: _validate.ReadQuery) -> Reply:
        events = self.store.events(query.model_id, limit=query.limit, offset=query.offset)
        total = self.store.count(query.model_id)
        return ok_reply({"events": events, "total": total}, events=len(events))

    def _read_updates(self, query: _validate.ReadQuery) -> Reply:
        updates = self.store.updates(query.model_id, limit=query.limit, offset=query.offset)
        total = self.store.count_updates(query.model_id)
        return ok_reply({"updates": updates, "total": total}, events=len(updates))

    # -- counters and the request log --------------------------------------------------------

    def _count(self, **amounts: int) -> None:
        with self._lock:
            self._counts.update(amounts)

    def finished(self, method: str, path: str, reply: Reply, seconds: float) -> None:
        """Count a request that was answered, and log it when verbose."""
        with self._lock:
            self._counts["requests"] += 1
            if reply.status >= 400:
                self._rejected[reply.status] += 1
        if self._log is not None:
            self._log(
                f"{method} {path} {reply.status} {HTTPStatus(reply.status).phrase} "
                f"events={reply.events} {seconds * 1000:.1f}ms"
            )

    def stats(self) -> dict[str, Any]:
        """Counters since start or the last :meth:`reset_stats`; ``rejected`` is by status."""
        names = ("requests", "published", "duplicates", "updated", "unknown_updates", "deleted")
        with self._lock:
            stats: dict[str, Any] = {name: self._counts[name] for name in names}
            stats["file_jobs"] = self._counts["file_jobs"]
            stats["rejected"] = dict(sorted(self._rejected.items()))
        return stats

    def reset_stats(self) -> None:
        """Zero every counter."""
        with self._lock:
            self._counts.clear()
            self._rejected.clear()


def print_line(line: str) -> None:
    """The verbose request log: one line on stderr (looked up per call, so capture works)."""
    print(line, file=sys.stderr, flush=True)
