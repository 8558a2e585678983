"""The ``/v3/events`` wire format: request bodies, response envelopes, limits.

Shared by :class:`~fiddler_trace.EventsClient` and the background worker, so both send the same
bytes. Events arrive here already encoded, which lets a caller size a batch in bytes and split it
without encoding anything twice.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import httpx
import orjson

from fiddler_trace._encode import iso_utc
from fiddler_trace._errors import FiddlerAPIError

__all__ = [
    "ENV_TYPES",
    "EVENTS_PATH",
    "MAX_DELETE_IDS",
    "MAX_EVENTS_PER_REQUEST",
    "Job",
    "check_model_id",
    "chunks",
    "error_from_response",
    "publish_body",
    "utc_time",
]

EVENTS_PATH = "/v3/events"
MAX_EVENTS_PER_REQUEST = 1000  # the spec's maxLength on source.events
MAX_DELETE_IDS = 10_000
ENV_TYPES = ("PRODUCTION", "PRE_PRODUCTION")
_ERROR_TEXT_CHARS = 200


@dataclass(frozen=True)
class Job:
    """A server-side job, as returned by DELETE and by file publishing.

    Attributes:
        id: the job's id (a UUID), to follow it in Fiddler.
        name: the job's name as the server gave it.
    """

    id: str
    name: str


def check_model_id(model_id: Any) -> str:
    """Return ``model_id`` as a canonical UUID string, or raise ValueError saying why."""
    try:
        return str(uuid.UUID(str(model_id)))
    except (ValueError, TypeError, AttributeError):
        raise ValueError(
            f"model_id {model_id!r} is not a UUID; accepted: the model's id as shown in Fiddler, "
            "e.g. '6f1c0f0e-1111-4222-8333-444455556666'"
        ) from None


def publish_body(
    model_id: str,
    joined_events: Union[bytes, bytearray, memoryview, Sequence[Union[bytes, memoryview]]],
    *,
    env_type: str,
    env_name: Optional[str],
) -> bytes:
    """A ``PublishEventsRequest`` with an ``EVENTS`` source around pre-encoded events.

    Args:
        joined_events: the encoded events joined by commas (no brackets); or a list of parts,
            each of encoded events joined by commas, to be joined by commas too (in the body,
            with no copy of their own).
    """
    head: dict[str, Any] = {"model_id": model_id, "env_type": env_type}
    if env_name is not None:
        head["env_name"] = env_name
    # The head's closing brace is dropped to append the source without re-encoding the events.
    pieces: list[Union[bytes, bytearray, memoryview]] = [
        orjson.dumps(head)[:-1] + b',"source":{"type":"EVENTS","events":['
    ]
    parts = [joined_events] if isinstance(joined_events, _BUFFERS) else joined_events
    for part in parts:
        pieces.append(part)
        pieces.append(b",")
    if parts:
        pieces.pop()
    pieces.append(b"]}}")
    return b"".join(pieces)


_BUFFERS = (bytes, bytearray, memoryview)


def chunks(encoded: Sequence[bytes], max_events: int, max_bytes: int) -> Iterator[Sequence[bytes]]:
    """Split encoded events into runs of at most ``max_events`` items and about ``max_bytes``.

    An event larger than ``max_bytes`` on its own still forms a run of one: the caller decides
    what to do with it.
    """
    start, size = 0, 0
    for index, event in enumerate(encoded):
        if index > start and (index - start >= max_events or size + len(event) + 1 > max_bytes):
            yield encoded[start:index]
            start, size = index, 0
        size += len(event) + 1
    if start < len(encoded):
        yield encoded[start:]


def utc_time(name: str, value: Union[dt.datetime, str]) -> str:
    """A time-range bound as UTC ISO 8601 with ``Z``; naive or offset-less input is refused."""
    moment = value
    if isinstance(value, str):
        text = value.strip()
        try:
            moment = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "zZ" else text)
        except ValueError:
            raise ValueError(
                f"{name} {value!r} is not ISO 8601; accepted: an aware datetime or an ISO 8601 "
                "string with an offset, e.g. '2026-01-31T00:00:00Z'"
            ) from None
    if not isinstance(moment, dt.datetime):
        raise ValueError(
            f"{name} is {type(value).__name__}; accepted: an aware datetime or an ISO 8601 "
            "string with an offset"
        )
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(
            f"{name} {value!r} has no time zone, so the range it means is ambiguous; accepted: "
            "an aware datetime (e.g. datetime.now(timezone.utc)) or an ISO string with an offset"
        )
    return iso_utc(moment)


def error_from_response(response: httpx.Response) -> FiddlerAPIError:
    """The :class:`FiddlerAPIError` for an error response, from Fiddler's ``ErrorResponse``."""
    retry_after = response.headers.get("retry-after")
    try:
        body = orjson.loads(response.content)
        error = body["error"]
        message = error.get("message") or ""
        errors = [e for e in error.get("errors") or () if isinstance(e, dict)]
        code = error.get("code")
        return FiddlerAPIError(
            response.status_code,
            str(message),
            code=code if isinstance(code, int) else None,
            errors=errors,
            retry_after=retry_after,
        )
    except Exception:
        text = response.content[: _ERROR_TEXT_CHARS * 4].decode("utf-8", "replace")
        return FiddlerAPIError(
            response.status_code,
            text[:_ERROR_TEXT_CHARS] or response.reason_phrase,
            retry_after=retry_after,
        )


def response_data(response: httpx.Response) -> dict[str, Any]:
    """``data`` of a success envelope; an empty dict for an empty or unexpected body."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return {}
    data = body.get("data") if isinstance(body, dict) else None
    return data if isinstance(data, dict) else {}


def job_from(data: dict[str, Any]) -> Job:
    """The ``job`` of a response's data."""
    job = data.get("job") or {}
    return Job(id=str(job.get("id", "")), name=str(job.get("name", "")))
