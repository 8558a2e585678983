"""SQLite storage of the collector: events, the update log, and a condition for waiters.

One connection guarded by one lock serves every request thread; each request is one
transaction. A file database runs in WAL mode with ``synchronous=NORMAL``: a crash of the
process loses nothing committed, a power cut may lose the last transactions, which is the right
trade for a local test server that must ingest tens of thousands of events a second.

Events are stored as the JSON the client sent (re-encoded once by orjson, with a generated event
id added when the event had none), keyed by ``(model_id, event_id)``. Republishing an id that is
already stored for the model keeps the first event and counts a duplicate: a client retry that
repeats a batch which had in fact landed must not change or reorder what is stored.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Optional

import orjson

from fiddler_trace.collector._validate import parse_time

__all__ = ["DuplicateEventError", "EventStore", "PublishResult", "UpdateResult"]

SCHEMA_VERSION = 1
# Per-request facts (model, environment, arrival time) live in `requests`, not in each event row:
# with one index to maintain, an event row is the smallest that dedup and lookups allow, which
# is what keeps ingest above 50,000 events/s. The view joins them back for people using sqlite3.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY,
    model_id TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    model INTEGER NOT NULL REFERENCES models (id),
    env_type TEXT NOT NULL,
    env_name TEXT,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    model INTEGER NOT NULL REFERENCES models (id),
    event_id TEXT NOT NULL,
    ts REAL,
    request INTEGER NOT NULL REFERENCES requests (id),
    body BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_id ON events (model, event_id);
CREATE TABLE IF NOT EXISTS updates (
    seq INTEGER PRIMARY KEY,
    model INTEGER NOT NULL REFERENCES models (id),
    event_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE VIEW IF NOT EXISTS stored_events AS
    SELECT events.seq, models.model_id, events.event_id, events.ts, requests.env_type,
           requests.env_name, requests.received_at, CAST(events.body AS TEXT) AS event
    FROM events
    JOIN models ON models.id = events.model
    JOIN requests ON requests.id = events.request;
"""
# A WAL checkpoint copies pages back into the database; doing it every ~40 MB instead of every
# 4 MB lets the random index pages each batch dirties be copied once for many batches.
_FILE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA cache_size=-65536",
    "PRAGMA wal_autocheckpoint=10000",
)


class DuplicateEventError(Exception):
    """A publish repeated an event id already stored for the model (only when rejecting)."""

    def __init__(self, event_id: str) -> None:
        super().__init__(event_id)
        self.event_id = event_id


@dataclass(frozen=True)
class PublishResult:
    """What a publish stored: the event ids in request order and how many were duplicates."""

    event_ids: list[str]
    duplicates: int


@dataclass(frozen=True)
class UpdateResult:
    """What an update did: ids merged into stored events, and ids with no stored event."""

    applied: list[str]
    unknown: list[str]


class EventStore:
    """Events and updates of a collector in one SQLite database; safe to share across threads.

    Args:
        path: a file path, or ``":memory:"`` for a database that lives as long as the store.
        event_id_column: the event column holding the event id.
        timestamp_column: the event column holding the event time (ISO 8601 or epoch seconds).

    Raises:
        sqlite3.Error: the database cannot be opened, or was written by another schema version.
    """

    def __init__(self, path: str, *, event_id_column: str, timestamp_column: str) -> None:
        self.path = path
        self._id_column = event_id_column
        self._ts_column = timestamp_column
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._closed = False
        self._models: dict[str, int] = {}
        # isolation_level=None: transactions are opened explicitly, one per request.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            self._setup()
        except BaseException:
            self._db.close()
            raise

    def _setup(self) -> None:
        if self.path != ":memory:":
            for pragma in _FILE_PRAGMAS:
                self._db.execute(pragma)
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise sqlite3.DatabaseError(
                f"{self.path} has collector schema version {version}; this fiddler-trace "
                f"reads version {SCHEMA_VERSION}: use another --db file"
            )
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._models = dict(self._db.execute("SELECT model_id, id FROM models"))

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                # A model first seen in this transaction is gone again: forget its cached id.
                self._models = dict(self._db.execute("SELECT model_id, id FROM models"))
                raise
            self._db.execute("COMMIT")
        with self._changed:
            self._changed.notify_all()

    def _model(self, db: sqlite3.Connection, model_id: str) -> int:
        """The model's row id, created on first use; call inside a transaction."""
        model_id = model_id.lower()  # one model, however the client spelled its UUID
        key = self._models.get(model_id)
        if key is None:
            cursor = db.execute("INSERT INTO models (model_id) VALUES (?)", (model_id,))
            key = self._models[model_id] = int(cursor.lastrowid or 0)
        return key

    def publish(
        self,
        model_id: str,
        env_type: str,
        env_name: Optional[str],
        events: list[dict[str, Any]],
        *,
        reject_duplicates: bool = False,
    ) -> PublishResult:
        """Store validated events; return their ids in order (generating those missing).

        An event without an id gets a new uuid4 string, written into the stored event too.

        Raises:
            DuplicateEventError: with ``reject_duplicates``, when an id is already stored for
                the model or repeats within the batch; nothing of the batch is stored then.
        """
        id_column, ts_column, dumps = self._id_column, self._ts_column, orjson.dumps
        ids: list[str] = []
        rows: list[tuple[Any, ...]] = []
        for event in events:
            event_id = event.get(id_column)
            if event_id is None:
                event_id = event[id_column] = str(uuid.uuid4())
            elif type(event_id) is not str:
                event_id = str(event_id)
            ids.append(event_id)
            rows.append((event_id, parse_time(event.get(ts_column)), dumps(event)))
        verb = "INSERT" if reject_duplicates else "INSERT OR IGNORE"
        try:
            with self._transaction() as db:
                model = self._model(db, model_id)
                request = db.execute(
                    "INSERT INTO requests (model, env_type, env_name, received_at) "
                    "VALUES (?, ?, ?, ?)",
                    (model, env_type, env_name, time.time()),
                ).lastrowid
                stored = db.executemany(
                    f"{verb} INTO events (model, event_id, ts, request, body) "
                    f"VALUES ({model}, ?, ?, {request}, ?)",
                    rows,
                ).rowcount
        except sqlite3.IntegrityError:
            raise DuplicateEventError(self._first_duplicate(model_id, ids)) from None
        return PublishResult(ids, len(rows) - stored)

    def _first_duplicate(self, model_id: str, ids: list[str]) -> str:
        seen: set[str] = set()
        model = self._models.get(model_id.lower())
        with self._lock:
            for event_id in ids:
                found = self._db.execute(
                    "SELECT 1 FROM events WHERE model = ? AND event_id = ?", (model, event_id)
                ).fetchone()
                if found or event_id in seen:
                    return event_id
                seen.add(event_id)
        return ids[0]

    def update(self, model_id: str, events: list[dict[str, Any]]) -> UpdateResult:
        """Merge each update's columns into the stored event with its id, in order.

        Updates whose event is not stored for the model are neither merged nor logged; their
        ids are returned in ``unknown``.
        """
        id_column, ts_column, received_at = self._id_column, self._ts_column, time.time()
        applied: list[str] = []
        unknown: list[str] = []
        with self._transaction() as db:
            model = self._models.get(model_id.lower())
            for columns in events:
                event_id = str(columns[id_column])
                row = db.execute(
                    "SELECT seq, body FROM events WHERE model = ? AND event_id = ?",
                    (model, event_id),
                ).fetchone()
                if row is None:
                    unknown.append(event_id)
                    continue
                merged = orjson.loads(row[1])
                stored_id = merged.get(id_column)
                merged.update(columns)
                # The stored spelling of the id wins: an update may send "7" for a stored 7.
                merged[id_column] = stored_id
                db.execute(
                    "UPDATE events SET body = ?, ts = ? WHERE seq = ?",
                    (orjson.dumps(merged), parse_time(merged.get(ts_column)), row[0]),
                )
                db.execute(
                    "INSERT INTO updates (model, event_id, received_at, body) VALUES (?, ?, ?, ?)",
                    (model, event_id, received_at, orjson.dumps(columns)),
                )
                applied.append(event_id)
        return UpdateResult(applied, unknown)

    def delete_ids(self, model_id: str, event_ids: list[str]) -> int:
        """Delete the model's events with these ids; return how many were stored."""
        with self._transaction() as db:
            model = self._models.get(model_id.lower())
            return db.executemany(
                "DELETE FROM events WHERE model = ? AND event_id = ?",
                [(model, event_id) for event_id in event_ids],
            ).rowcount

    def delete_range(self, model_id: str, start: float, end: float) -> int:
        """Delete the model's events with a timestamp in ``[start, end)``; return the count.

        A scan, not an index lookup: deletions are rare and an index on time would slow every
        publish.
        """
        with self._transaction() as db:
            return db.execute(
                "DELETE FROM events WHERE model = ? AND ts >= ? AND ts < ?",
                (self._models.get(model_id.lower()), start, end),
            ).rowcount

    def events(
        self, model_id: Optional[str] = None, *, limit: int = -1, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Stored events, updates merged, in arrival order (``limit=-1``: no limit)."""
        rows = self._select("body", "events", model_id, limit, offset)
        return [orjson.loads(row[0]) for row in rows]

    def updates(
        self, model_id: Optional[str] = None, *, limit: int = -1, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Applied updates in arrival order: ``{"model_id", "event_id", "columns"}`` each."""
        rows = self._select("model, event_id, body", "updates", model_id, limit, offset)
        with self._lock:
            names = {key: name for name, key in self._models.items()}
        return [
            {"model_id": names.get(model), "event_id": event_id, "columns": orjson.loads(body)}
            for model, event_id, body in rows
        ]

    def _select(
        self, columns: str, table: str, model_id: Optional[str], limit: int, offset: int
    ) -> list[tuple[Any, ...]]:
        where, params = self._where(model_id)
        sql = f"SELECT {columns} FROM {table} {where} ORDER BY seq LIMIT ? OFFSET ?"
        with self._lock:
            return self._db.execute(sql, (*params, limit, offset)).fetchall()

    def _where(self, model_id: Optional[str]) -> tuple[str, tuple[Any, ...]]:
        if model_id is None:
            return "", ()
        return "WHERE model = ?", (self._models.get(model_id.lower()),)

    def count(self, model_id: Optional[str] = None, *, table: str = "events") -> int:
        """Number of stored events (or, with ``table="updates"``, logged updates)."""
        if table not in ("events", "updates"):
            raise ValueError(f"table must be 'events' or 'updates', got {table!r}")
        where, params = self._where(model_id)
        with self._lock:
            return int(
                self._db.execute(f"SELECT COUNT(*) FROM {table} {where}", params).fetchone()[0]
            )

    def wait_until(self, predicate: Callable[[], bool], timeout: Optional[float]) -> bool:
        """Block until ``predicate()`` holds, re-checked after each commit; False on timeout.

        Also returns False once the store is closed.
        """

        def ready() -> bool:
            try:
                return self._closed or predicate()
            except sqlite3.ProgrammingError:  # closed between the flag check and the query
                return True

        with self._changed:
            return self._changed.wait_for(ready, timeout) and not self._closed

    def clear(self) -> None:
        """Delete every event, update and request record (model ids are kept)."""
        with self._transaction() as db:
            db.execute("DELETE FROM events")
            db.execute("DELETE FROM updates")
            db.execute("DELETE FROM requests")

    def close(self) -> None:
        """Close the database and wake waiters; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()
        with self._changed:
            self._changed.notify_all()
