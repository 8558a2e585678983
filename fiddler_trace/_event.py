"""What capture hands the pipeline: raw values taken on the hot path, rows built on the worker.

The caller's thread only takes a reference to the columns, an id (an int for the ids this library
draws: see :mod:`fiddler_trace._ids`) and ``time.time()``; building the row (the id's string, the
ISO timestamp) and encoding it happen in :func:`publish_row` and :func:`update_row`, on the worker
or in the testing sink.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, NamedTuple

from fiddler_trace._ids import EventId, format_event_id

__all__ = ["Event", "Update", "format_timestamp", "publish_row", "update_row"]


class Event(NamedTuple):
    """One captured prediction, for ``POST /v3/events``.

    The hot paths hand the pipeline a plain tuple of these six fields in this order (building
    one is a single opcode, where an instance of any class costs a Python ``__init__``); code
    that reads items unpacks them and accepts either. Everything that is not an :class:`Update`
    is a publish.
    """

    model_id: str
    event_id: EventId  # the int of a drawn UUID4 is formatted when the row is built
    timestamp: float  # seconds since the epoch, as time.time() gives
    columns: dict[str, Any]  # owned by the event: the worker completes it into the row
    id_column: str = "event_id"
    ts_column: str = "timestamp"


class Update:
    """Ground truth or a correction for an event, for ``PATCH /v3/events``."""

    __slots__ = ("columns", "event_id", "id_column", "model_id")

    def __init__(
        self, model_id: str, event_id: str, columns: dict[str, Any], id_column: str = "event_id"
    ) -> None:
        self.model_id = model_id
        self.event_id = event_id
        self.columns = columns
        self.id_column = id_column

    def __repr__(self) -> str:
        return f"Update(model_id={self.model_id!r}, event_id={self.event_id!r})"


_second_cache: tuple[int, str] = (-1, "")


def format_timestamp(seconds: float) -> str:
    """UTC ISO 8601 with milliseconds and ``Z``.

    The date-and-time part is cached per whole second: events arrive many to a second, and
    ``strftime`` is most of the cost.
    """
    global _second_cache
    millis = int(seconds * 1000.0)
    whole, ms = divmod(millis, 1000)
    cached_second, prefix = _second_cache
    if whole != cached_second:
        moment = dt.datetime.fromtimestamp(whole, dt.timezone.utc)
        prefix = moment.strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache = (whole, prefix)
    return f"{prefix}.{ms:03d}Z"


def publish_row(event: tuple) -> dict[str, Any]:
    """The event (an :class:`Event` or a plain tuple of its fields) as the flat row Fiddler
    stores: columns, then the id and timestamp columns.

    The id and timestamp columns win over a captured column of the same name: they are the key
    Fiddler matches updates and time ranges on. The row is the event's own ``columns`` dict,
    completed in place: capture builds that dict for this event alone, and a copy per event
    would be the worker's largest cost after encoding.
    """
    _, event_id, timestamp, row, id_column, ts_column = event
    row[id_column] = format_event_id(event_id) if type(event_id) is int else event_id
    row[ts_column] = format_timestamp(timestamp)
    return row


def update_row(update: Update) -> dict[str, Any]:
    """The PATCH row: the event id column and the changed columns, nothing else."""
    row = dict(update.columns)
    row[update.id_column] = update.event_id
    return row
