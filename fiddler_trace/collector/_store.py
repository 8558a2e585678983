"""SQLite storage of the collector: events, the update log, and a condition for waiters.

One connection guarded by one lock serves every request thread; each request is one
transaction. A file database runs in WAL mode with ``synchronous=NORMAL``: a crash of the
process loses nothing committed, a power cut may lose the last transactions, which is the right
trade for a local test server that must ingest tens of thousands of events a second.

Events are stored as the JSON the client sent (re-encoded once by orjson, with a generated event
id added when the event had none). Republishing an id that is already stored for the model keeps
the first event and counts a duplicate: a client retry that repeats a batch which had in fact
landed must not change or reorder what is stored.

The map from ``(model, event id)`` to the row is kept in memory, rebuilt from the table on
open, rather than as a unique SQLite index: event ids are random UUIDs, and keeping a
random-key B-tree up to date made every insert several times slower as the table grew (and, in
a file, rewrote most of the index's pages on each commit). It costs ~150 bytes of memory per
stored event and means one collector per database file at a time.
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
# Per-request facts (environment, arrival time) live in `requests`, not in each event row, to
# keep event rows small; the view joins them back for people using the sqlite3 shell.
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
CREATE INDEX IF NOT EXISTS events_by_model ON events (model, seq);
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
_FILE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA cache_size=-65536",
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
        self._models: dict[str, int] = {}  # model_id -> models.id
        self._rows: dict[int, dict[str, int]] = {}  # models.id -> event id -> events.seq
        self._next_seq = 1
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
        self._load()

    def _load(self) -> None:
        """Rebuild the in-memory maps from the tables (on open, and after a failed write)."""
        self._models = dict(self._db.execute("SELECT model_id, id FROM models"))
        self._rows = {model: {} for model in self._models.values()}
        for model, event_id, seq in self._db.execute("SELECT model, event_id, seq FROM events"):
            self._rows[model][event_id] = seq
        last = self._db.execute("SELECT MAX(seq) FROM events").fetchone()[0]
        self._next_seq = (last or 0) + 1

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except DuplicateEventError:
                self._db.execute("ROLLBACK")  # raised before anything was written
                raise
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                self._load()  # the maps may hold what was just rolled back
                raise
        with self._changed:
            self._changed.notify_all()

    def _model(self, db: sqlite3.Connection, model_id: str) -> int:
        """The model's row id, created on first use; call inside a transaction."""
        key = self._models.get(model_id)
        if key is None:
            cursor = db.execute("INSERT INTO models (model_id) VALUES (?)", (model_id,))
            key = self._models[model_id] = int(cursor.lastrowid or 0)
            self._rows[key] = {}
        return key

    def _known(self, model_id: str) -> dict[str, int]:
        """Event id -> seq of a model's stored events (empty for an unknown model)."""
        key = self._models.get(model_id.lower())
        return self._rows.get(key, {}) if key is not None else {}

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
        prepared: list[tuple[str, Optional[float], bytes]] = []
        for event in events:  # outside the lock: this is most of the per-event Python work
            event_id = event.get(id_column)
            if event_id is None:
                event_id = event[id_column] = str(uuid.uuid4())
            elif type(event_id) is not str:
                event_id = str(event_id)
            ids.append(event_id)
            prepared.append((event_id, parse_time(event.get(ts_column)), dumps(event)))
        with self._transaction() as db:
            known = self._known(model_id)
            seq = first_seq = self._next_seq
            added: dict[str, int] = {}
            rows: list[tuple[int, str, Optional[float], bytes]] = []
            for event_id, ts, body in prepared:
                if event_id in known or event_id in added:
                    if reject_duplicates:
                        raise DuplicateEventError(event_id)  # before anything is written
                    continue
                added[event_id] = seq
                rows.append((seq, event_id, ts, body))
                seq += 1
            model = self._model(db, model_id.lower())
            request = db.execute(
                "INSERT INTO requests (model, env_type, env_name, received_at) VALUES (?, ?, ?, ?)",
                (model, env_type, env_name, time.time()),
            ).lastrowid
            # model and request are integers from SQLite itself, inlined to bind fewer values.
            db.executemany(
                f"INSERT INTO events (seq, model, event_id, ts, request, body) "
                f"VALUES (?, {model}, ?, ?, {int(request or 0)}, ?)",
                rows,
            )
            self._rows[model].update(added)
            self._next_seq = seq
        return PublishResult(ids, len(prepared) - (seq - first_seq))

    def update(self, model_id: str, events: list[dict[str, Any]]) -> UpdateResult:
        """Merge each update's columns into the stored event with its id, in order.

        Updates whose event is not stored for the model are neither merged nor logged; their
        ids are returned in ``unknown``.
        """
        id_column, ts_column, received_at = self._id_column, self._ts_column, time.time()
        applied: list[str] = []
        unknown: list[str] = []
        with self._transaction() as db:
            known = self._known(model_id)
            model = self._models.get(model_id.lower())
            for columns in events:
                event_id = str(columns[id_column])
                seq = known.get(event_id)
                if seq is None:
                    unknown.append(event_id)
                    continue
                row = db.execute("SELECT body FROM events WHERE seq = ?", (seq,)).fetchone()
                merged = orjson.loads(row[0])
                stored_id = merged.get(id_column)
                merged.update(columns)
                # The stored spelling of the id wins: an update may send "7" for a stored 7.
                merged[id_column] = stored_id
                db.execute(
                    "UPDATE events SET body = ?, ts = ? WHERE seq = ?",
                    (orjson.dumps(merged), parse_time(merged.get(ts_column)), seq),
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
            known = self._known(model_id)
            seqs = [(seq,) for seq in (known.pop(e, None) for e in event_ids) if seq is not None]
            db.executemany("DELETE FROM events WHERE seq = ?", seqs)
        return len(seqs)

    def delete_range(self, model_id: str, start: float, end: float) -> int:
        """Delete the model's events with a timestamp in ``[start, end)``; return the count.

        A scan, not an index lookup: deletions are rare and an index on time would slow every
        publish.
        """
        with self._transaction() as db:
            known = self._known(model_id)
            doomed = db.execute(
                "SELECT seq, event_id FROM events WHERE model = ? AND ts >= ? AND ts < ?",
                (self._models.get(model_id.lower()), start, end),
            ).fetchall()
            db.executemany("DELETE FROM events WHERE seq = ?", [(seq,) for seq, _ in doomed])
            for _, event_id in doomed:
                known.pop(event_id, None)
        return len(doomed)

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

    def count(self, model_id: Optional[str] = None) -> int:
        """Number of stored events, of one model or all; no query, so cheap to call often."""
        with self._lock:
            if self._closed:
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            if model_id is None:
                return sum(len(known) for known in self._rows.values())
            return len(self._known(model_id))

    def count_updates(self, model_id: Optional[str] = None) -> int:
        """Number of logged updates, of one model or all."""
        where, params = self._where(model_id)
        with self._lock:
            return int(
                self._db.execute(f"SELECT COUNT(*) FROM updates {where}", params).fetchone()[0]
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
            for known in self._rows.values():
                known.clear()

    def close(self) -> None:
        """Close the database and wake waiters; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()
        with self._changed:
            self._changed.notify_all()
