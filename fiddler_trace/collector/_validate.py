"""Validation of ``/v3/events`` requests against the server contract; pure functions.

Each ``*_request`` function takes a decoded body and returns a small frozen dataclass, or raises
:class:`ValidationError` whose message names the offending field (``source.events[3]``,
``time_range.end_time``), so a client bug shows up as a precise 400 rather than stored garbage.
Nothing here touches the network, the database or a clock.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Optional
from urllib.parse import parse_qs

import orjson

__all__ = [
    "ENV_TYPES",
    "MAX_EVENTS_PER_REQUEST",
    "DeleteRequest",
    "PublishRequest",
    "ReadQuery",
    "ValidationError",
    "decode_body",
    "delete_request",
    "parse_time",
    "publish_request",
    "read_query",
]

MAX_EVENTS_PER_REQUEST = 1000  # the spec's `maxLength: 1000` on source.events, read as items
ENV_TYPES = ("PRODUCTION", "PRE_PRODUCTION")
SOURCE_TYPES = ("EVENTS", "FILE")
DEFAULT_READ_LIMIT = 1000
MAX_READ_LIMIT = 10_000

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Python < 3.11 `fromisoformat` refuses `Z` and fractions other than 3 or 6 digits; this
# covers what it misses so stored timestamps do not depend on the interpreter.
_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?"
)
_VALUE_CHARS = 60
_DICTS = {dict}
# What an event id may be as orjson decodes it: a string or a number (bool is its own type).
_ID_TYPES = frozenset((str, int, float))
_OPTIONAL_ID_TYPES = _ID_TYPES | {type(None)}


class ValidationError(ValueError):
    """A request that breaks the contract: answered with ``status`` and this message.

    Attributes:
        reason: a stable identifier for the kind of error (``missing_field``, ``invalid_field``,
            ``too_many_events``...), sent as ``error.errors[0].reason``.
        message: a human-readable sentence naming the field, sent as ``error.message``.
        status: the HTTP status to answer with (400 unless said otherwise).
    """

    def __init__(self, reason: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status


@dataclass(frozen=True)
class PublishRequest:
    """A valid ``PublishEventsRequest`` (POST to publish, PATCH to update)."""

    model_id: str
    env_type: str
    env_name: Optional[str]
    source_type: str
    events: list[dict[str, Any]]
    file_id: Optional[str] = None
    event_ids: Optional[list[Any]] = None  # each event's id column value, None where absent


@dataclass(frozen=True)
class DeleteRequest:
    """A valid ``DeleteEventsRequest``: exactly one of ``event_ids`` or the time range is set.

    ``start_time`` and ``end_time`` are epoch seconds; the range is ``[start_time, end_time)``.
    """

    model_id: str
    event_ids: Optional[list[str]]
    start_time: Optional[float]
    end_time: Optional[float]
    update_metrics: bool


@dataclass(frozen=True)
class ReadQuery:
    """The query string of a read-side ``GET``."""

    model_id: Optional[str]
    limit: int
    offset: int


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _VALUE_CHARS else text[: _VALUE_CHARS - 3] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def decode_body(raw: bytes) -> dict[str, Any]:
    """Parse a request body that must be one JSON object."""
    if not raw or raw.isspace():  # strip() would copy a body only to test it
        raise ValidationError("missing_body", "request body is empty; a JSON object is required")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationError("invalid_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValidationError(
            "invalid_body", f"request body must be a JSON object, got {_json_type(body)}"
        )
    return body


def _uuid(body: dict[str, Any], field: str, where: str = "") -> str:
    if field not in body or body[field] is None:
        raise ValidationError("missing_field", f"{where}{field} is required")
    value = body[field]
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise ValidationError(
            "invalid_field", f"{where}{field} must be a UUID string, got {_show(value)}"
        )
    return value.lower()


def publish_request(
    body: dict[str, Any], *, event_id_column: str, is_update: bool = False
) -> PublishRequest:
    """Check a ``PublishEventsRequest``; with ``is_update``, every event must carry its id.

    Raises:
        ValidationError: the first problem found, naming the field (and index for events).
    """
    model_id = _uuid(body, "model_id")
    if body.get("env_type") is None:
        raise ValidationError("missing_field", "env_type is required")
    env_type = body["env_type"]
    if env_type not in ENV_TYPES:
        raise ValidationError(
            "invalid_field",
            f"env_type must be one of {', '.join(ENV_TYPES)}, got {_show(env_type)}",
        )
    env_name = body.get("env_name")
    if env_name is not None and not isinstance(env_name, str):
        raise ValidationError(
            "invalid_field", f"env_name must be a string or null, got {_json_type(env_name)}"
        )
    source = body.get("source")
    if source is None:
        raise ValidationError("missing_field", "source is required")
    if not isinstance(source, dict):
        raise ValidationError(
            "invalid_field", f"source must be an object, got {_json_type(source)}"
        )
    source_type = source.get("type")
    if source_type is None:
        raise ValidationError("missing_field", "source.type is required")
    if source_type not in SOURCE_TYPES:
        raise ValidationError(
            "invalid_field",
            f"source.type must be one of {', '.join(SOURCE_TYPES)}, got {_show(source_type)}",
        )
    if source_type == "FILE":
        file_id = _uuid(source, "file_id", "source.")
        return PublishRequest(model_id, env_type, env_name, "FILE", [], file_id)
    if env_type != "PRODUCTION":
        raise ValidationError(
            "invalid_field",
            f"env_type {env_type} accepts only a FILE source; stream events to PRODUCTION",
        )
    events, event_ids = _events(source.get("events"), event_id_column, is_update)
    return PublishRequest(model_id, env_type, env_name, "EVENTS", events, event_ids=event_ids)


def _events(
    events: Any, event_id_column: str, is_update: bool
) -> tuple[list[dict[str, Any]], list[Any]]:
    """The events and their id column values (None where absent), checked."""
    if events is None:
        raise ValidationError("missing_field", "source.events is required for an EVENTS source")
    if not isinstance(events, list):
        raise ValidationError(
            "invalid_field", f"source.events must be an array, got {_json_type(events)}"
        )
    if not events:
        raise ValidationError("invalid_field", "source.events must not be empty")
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise ValidationError(
            "too_many_events",
            f"source.events has {len(events)} items; at most {MAX_EVENTS_PER_REQUEST} are "
            "accepted in one request",
        )
    # The same checks as the loop below, made by C iterations over the batch; the loop runs
    # only to name the first offending event when something is off.
    if set(map(type, events)) == _DICTS:
        ids = list(map(dict.get, events, repeat(event_id_column)))
        if set(map(type, ids)) <= (_ID_TYPES if is_update else _OPTIONAL_ID_TYPES):
            return events, ids
    for index, event in enumerate(events):
        if type(event) is not dict:
            raise ValidationError(
                "invalid_field",
                f"source.events[{index}] must be an object, got {_json_type(event)}",
            )
        event_id = event.get(event_id_column)
        if event_id is None:
            if is_update:
                raise ValidationError(
                    "missing_event_id",
                    f"source.events[{index}] has no {event_id_column!r} column: an update must "
                    "name the event it changes",
                )
        elif isinstance(event_id, (bool, dict, list)):
            raise ValidationError(
                "invalid_field",
                f"source.events[{index}].{event_id_column} must be a string or a number, "
                f"got {_json_type(event_id)}",
            )
    raise AssertionError("the fast check refused events that every check accepts")


def delete_request(body: dict[str, Any]) -> DeleteRequest:
    """Check a ``DeleteEventsRequest``: one filter, never none (that would delete everything).

    Raises:
        ValidationError: the first problem found, naming the field.
    """
    model_id = _uuid(body, "model_id")
    update_metrics = body.get("update_metrics", False)
    if not isinstance(update_metrics, bool):
        raise ValidationError(
            "invalid_field",
            f"update_metrics must be a boolean, got {_json_type(update_metrics)}",
        )
    event_ids, time_range = body.get("event_ids"), body.get("time_range")
    if event_ids is not None and time_range is not None:
        raise ValidationError(
            "conflicting_filters", "give either event_ids or time_range, not both"
        )
    if event_ids is None and time_range is None:
        raise ValidationError(
            "missing_filter",
            "neither event_ids nor time_range given: that would delete every event of the model",
        )
    if event_ids is not None:
        if not isinstance(event_ids, list) or not all(isinstance(e, str) for e in event_ids):
            raise ValidationError("invalid_field", "event_ids must be an array of strings")
        if not event_ids:
            raise ValidationError("invalid_field", "event_ids must not be empty")
        if update_metrics:
            raise ValidationError(
                "invalid_field", "update_metrics applies to a time_range deletion, not event_ids"
            )
        return DeleteRequest(model_id, list(event_ids), None, None, update_metrics)
    if not isinstance(time_range, dict):
        raise ValidationError(
            "invalid_field", f"time_range must be an object, got {_json_type(time_range)}"
        )
    start = _range_bound(time_range, "start_time")
    end = _range_bound(time_range, "end_time")
    if end <= start:
        raise ValidationError(
            "invalid_field", "time_range.end_time must be later than time_range.start_time"
        )
    return DeleteRequest(model_id, None, start, end, update_metrics)


def _range_bound(time_range: dict[str, Any], field: str) -> float:
    value = time_range.get(field)
    if value is None:
        raise ValidationError("missing_field", f"time_range.{field} is required")
    if isinstance(value, str):
        moment = _datetime(value)
        if moment is not None and moment.tzinfo is None:
            # The client refuses naive datetimes; a naive string here means it skipped that.
            raise ValidationError(
                "invalid_field",
                f"time_range.{field} {_show(value)} has no UTC offset; add 'Z' or '+HH:MM'",
            )
    seconds = parse_time(value)
    if seconds is None:
        raise ValidationError(
            "invalid_field",
            f"time_range.{field} must be an ISO 8601 string or epoch seconds, got {_show(value)}",
        )
    return seconds


def parse_time(value: Any) -> Optional[float]:
    """Epoch seconds for an ISO 8601 string (naive means UTC) or a number; else None.

    Numbers are taken as epoch seconds as they are; booleans, NaN and infinities are not times.
    """
    if type(value) is str:  # the common case first: this runs once per stored event
        moment = _datetime(value)
        if moment is None:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.timezone.utc)
        return moment.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    return None


def _datetime(text: str) -> Optional[dt.datetime]:
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return _parse_iso(text.strip())


def _parse_iso(text: str) -> Optional[dt.datetime]:
    match = _ISO.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    tz: Optional[dt.tzinfo] = None
    if offset in ("Z", "z"):
        tz = dt.timezone.utc
    elif offset:
        digits = offset[1:].replace(":", "")
        delta = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
        tz = dt.timezone(-delta if offset[0] == "-" else delta)
    try:
        return dt.datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0),
            micros, tzinfo=tz,
        )  # fmt: skip
    except ValueError:
        return None


def read_query(query: str) -> ReadQuery:
    """Parse ``model_id``, ``limit`` and ``offset`` of a read-side ``GET``.

    Raises:
        ValidationError: a malformed model_id, or limit/offset that are not integers in range.
    """
    params = {key: values[-1] for key, values in parse_qs(query, keep_blank_values=True).items()}
    model_id = _uuid(params, "model_id") if "model_id" in params else None
    limit = _int_param(params, "limit", DEFAULT_READ_LIMIT, 1, MAX_READ_LIMIT)
    offset = _int_param(params, "offset", 0, 0, None)
    return ReadQuery(model_id, limit, offset)


def _int_param(
    params: dict[str, str], name: str, default: int, low: int, high: Optional[int]
) -> int:
    if name not in params:
        return default
    text = params[name]
    value = int(text) if (text.isascii() and text.isdigit()) else -1
    if value < low or (high is not None and value > high):
        accepted = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValidationError(
            "invalid_field", f"{name} must be an integer {accepted}, got {_show(text)}"
        )
    return value
