"""SQLite storage of the collector: events, the update log, and a condition for waiters.

One connection guarded by one lock serves every request thread; each request is one
transaction. A file database runs in WAL mode with ``synchronous=NORMAL``: a crash of the
process loses nothing committed, a power cut may lose the last transactions, which is the right
trade for a local test server that must ingest hundreds of thousands of events a second.

A publish is stored as one row of ``batches``: its events as JSON (the request body as it came
when every event is stored unchanged, else an array of the stored ones), and their ids as a
JSON array. Python's sqlite3 costs over a microsecond per inserted row before any storage work
(binding, stepping), and over three for a row per event with its body, which alone capped
ingest near 300,000 events/s; one row per request costs the same whatever its size. An event's
place is its ``seq``, ``batch id * 1024 + index`` (at most 1000 events per request), so seqs
grow in arrival order. What later requests change is kept beside the batches rather than by
rewriting them: ``patched`` holds the merged body of each updated event, ``removed`` the seqs of
deleted ones. The timestamp of an event is read from its body when a time range is deleted,
rather than parsed for every event at publish: ranges are rare, publishes are not.

Republishing an id that is already stored for the model keeps the first event and counts a
duplicate: a client retry that repeats a batch which had in fact landed must not change or
reorder what is stored. Which ids each model has stored is kept in memory, rebuilt from the
tables on open, so one collector at a time may use a database file.
"""

from __future__ import annotations

import contextlib
import heapq
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count, islice
from typing import Any, Callable, Optional

import orjson

from fiddler_trace.collector._validate import MAX_EVENTS_PER_REQUEST, parse_time

__all__ = ["DuplicateEventError", "EventStore", "PublishResult", "UpdateResult"]

SCHEMA_VERSION = 2
SEQ_BITS = 10  # seq = batch id << SEQ_BITS | index in the batch
BATCH_SLOTS = 1 << SEQ_BITS
assert MAX_EVENTS_PER_REQUEST <= BATCH_SLOTS
_STR = {str}
_NO_IDS: frozenset[str] = frozenset()
# Where a batch's events are in its blob: the blob is the array, or the request that held it.
_WHOLE, _IN_REQUEST = "$", "$.source.events"
_IN_CHUNK = 500  # ids bound per `IN (...)` query, under SQLite's old 999-variable limit
_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY,
    model_id TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    model INTEGER NOT NULL REFERENCES models (id),
    env_type TEXT NOT NULL,
    env_name TEXT,
    received_at REAL NOT NULL,
    event_ids BLOB NOT NULL,
    events BLOB NOT NULL,
    events_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_by_model ON batches (model, id);
CREATE TABLE IF NOT EXISTS patched (
    seq INTEGER PRIMARY KEY,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS removed (
    seq INTEGER PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS updates (
    seq INTEGER PRIMARY KEY,
    model INTEGER NOT NULL REFERENCES models (id),
    event_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    body BLOB NOT NULL
);
"""
# For a person with the sqlite3 shell: one row per stored event, updates merged. Rebuilt on
# each open because it names the event id and timestamp columns the collector was given.
_VIEW = """
CREATE VIEW stored_events AS
    SELECT seq, model_id, CAST(json_extract(event, {id_path}) AS TEXT) AS event_id,
           json_extract(event, {ts_path}) AS timestamp, env_type, env_name, received_at, event
    FROM (
        SELECT b.id * {slots} + e.key AS seq, m.model_id, b.env_type, b.env_name, b.received_at,
               coalesce(CAST(p.body AS TEXT), e.value) AS event
        FROM batches AS b
        JOIN models AS m ON m.id = b.model
        JOIN json_each(CAST(b.events AS TEXT), b.events_at) AS e
        LEFT JOIN patched AS p ON p.seq = b.id * {slots} + e.key
        WHERE b.id * {slots} + e.key NOT IN (SELECT seq FROM removed)
    );
"""
_FILE_PRAGMAS = (
    # Batches are 100-200 KB blobs: bigger pages mean fewer WAL frames to write and checksum
    # per commit. Only a new file takes it; an existing one keeps its page size.
    "PRAGMA page_size=16384",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA cache_size=-65536",
)
# A checkpoint copies the WAL into the database and syncs both; at SQLite's default (4 MB)
# that happened every ~20 batches and made a file database ingest at half the rate.
_CHECKPOINT_BYTES = 64 * 2**20


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


def _json_path(column: str) -> str:
    """A SQL literal for the JSON path of a top-level key; NULL if a path cannot name it."""
    if '"' in column:
        return "NULL"
    return "'$.\"" + column.replace("'", "''") + "\"'"


def _decode_events(events_json: bytes, events_at: str) -> list[dict[str, Any]]:
    """A batch's events from its ``events`` blob, found at JSON path ``events_at``."""
    decoded = orjson.loads(events_json)
    events: list[dict[str, Any]] = decoded if events_at == _WHOLE else decoded["source"]["events"]
    return events


def _chunks(values: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start : start + _IN_CHUNK]


class _Model:
    """What is stored for one model, in memory: which event ids, and where each event is.

    A publish only adds its ids to a set and appends the batch's id list: lookups in a set of
    a million ids miss the CPU cache about half as often as in a dict. The map from event id
    to seq that updates and deletions need is built on their first use, then kept up to date.
    """

    __slots__ = ("batches", "ids", "index", "key", "model_id")

    def __init__(self, key: int, model_id: str) -> None:
        self.key, self.model_id = key, model_id
        self.ids: set[str] = set()  # the ids of its stored (not removed) events
        # (batch id, the ids it stored, in order) in arrival order; removed ones stay listed.
        self.batches: list[tuple[int, list[str]]] = []
        self.index: Optional[dict[str, int]] = None  # event id -> seq, once needed

    def add(self, batch: int, ids: list[str]) -> None:
        """Record a stored batch (ids all new to the model); call with the store's lock."""
        self.batches.append((batch, ids))
        if self.index is not None:
            self.index.update(zip(ids, range(batch << SEQ_BITS, (batch + 1) << SEQ_BITS)))

    def seqs(self, removed: set[int]) -> Iterator[int]:
        """Seqs of its stored events in arrival order."""
        for batch, ids in self.batches:
            first = batch << SEQ_BITS
            every = range(first, first + len(ids))
            yield from (seq for seq in every if seq not in removed) if removed else every

    def seq_index(self, removed: set[int]) -> dict[str, int]:
        """Event id -> seq of its stored events."""
        if self.index is None:
            index: dict[str, int] = {}
            for batch, ids in self.batches:
                first = batch << SEQ_BITS
                pairs = zip(ids, range(first, first + len(ids)))
                index.update((p for p in pairs if p[1] not in removed) if removed else pairs)
            self.index = index
        return self.index

    def forget(self, event_id: str) -> None:
        """Drop a removed event's id; call with the store's lock."""
        self.ids.discard(event_id)
        if self.index is not None:
            self.index.pop(event_id, None)

    def clear(self) -> None:
        self.ids.clear()
        self.batches.clear()
        self.index = None


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
        self._models: dict[str, _Model] = {}  # by model_id (lowercase)
        self._removed: set[int] = set()  # seqs of deleted events
        self._next_batch = 1
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
            page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
            self._db.execute(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_BYTES // page_size}")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, 1, SCHEMA_VERSION):
            raise sqlite3.DatabaseError(
                f"{self.path} has collector schema version {version}; this fiddler-trace "
                f"reads version {SCHEMA_VERSION}: use another --db file"
            )
        self._db.execute("BEGIN")
        try:
            self._db.execute("DROP VIEW IF EXISTS stored_events")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            if version == 1:
                self._migrate_from_v1()
            self._create_view()
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._load()

    def _migrate_from_v1(self) -> None:
        """Turn version 1's row per event (bodies already merged) into a batch per request."""
        rows = self._db.execute(
            "SELECT e.request, r.model, r.env_type, r.env_name, r.received_at, e.event_id, e.body"
            " FROM events AS e JOIN requests AS r ON r.id = e.request ORDER BY e.seq"
        ).fetchall()
        batches: list[tuple[Any, ...]] = []
        ids: list[str] = []
        bodies: list[bytes] = []
        for index, (request, model, env_type, env_name, received_at, event_id, body) in enumerate(
            rows
        ):
            ids.append(event_id)
            bodies.append(bytes(body))
            # A request's events had consecutive seqs, so a batch ends where its request does.
            if index + 1 == len(rows) or rows[index + 1][0] != request:
                events = b"[" + b",".join(bodies) + b"]"
                batch = (model, env_type, env_name, received_at, orjson.dumps(ids), events, "$")
                batches.append(batch)
                ids, bodies = [], []
        self._db.executemany(
            "INSERT INTO batches (model, env_type, env_name, received_at, event_ids, events,"
            " events_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            batches,
        )
        self._db.execute("DROP TABLE events")
        self._db.execute("DROP TABLE requests")

    def _create_view(self) -> None:
        view = _VIEW.format(
            id_path=_json_path(self._id_column),
            ts_path=_json_path(self._ts_column),
            slots=BATCH_SLOTS,
        )
        # An SQLite built without JSON functions gets no view: it is a convenience only.
        with contextlib.suppress(sqlite3.OperationalError):
            self._db.execute(view)

    def _load(self) -> None:
        """Rebuild the in-memory state from the tables (on open, and after a failed write)."""
        db = self._db
        self._models = {
            model_id: _Model(key, model_id)
            for key, model_id in db.execute("SELECT id, model_id FROM models")
        }
        by_key = {model.key: model for model in self._models.values()}
        self._removed = removed = {seq for (seq,) in db.execute("SELECT seq FROM removed")}
        query = "SELECT id, model, event_ids FROM batches ORDER BY id"
        for batch, key, ids_json in db.execute(query):
            model, ids = by_key[key], orjson.loads(ids_json)
            model.batches.append((batch, ids))
            if removed:
                first = batch << SEQ_BITS
                model.ids.update(i for i, seq in zip(ids, count(first)) if seq not in removed)
            else:
                model.ids.update(ids)
        last = db.execute("SELECT MAX(id) FROM batches").fetchone()[0]
        self._next_batch = (last or 0) + 1

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

    def _model(self, db: sqlite3.Connection, model_id: str) -> _Model:
        """The model (``model_id`` in lowercase), created on first use; inside a transaction."""
        model = self._models.get(model_id)
        if model is None:
            cursor = db.execute("INSERT INTO models (model_id) VALUES (?)", (model_id,))
            model = self._models[model_id] = _Model(int(cursor.lastrowid or 0), model_id)
        return model

    def _known(self, model_id: str) -> Optional[_Model]:
        """The model if anything was ever stored for it."""
        return self._models.get(model_id.lower())

    def _event_ids(
        self, events: list[dict[str, Any]], given: Optional[list[Any]]
    ) -> tuple[list[str], bool]:
        """The events' ids as strings, and whether any event was given a new uuid4 as its id."""
        id_column = self._id_column
        ids: list[Any] = [event.get(id_column) for event in events] if given is None else given
        if set(map(type, ids)) <= _STR:  # the common case, checked without a Python loop
            return ids, False
        strings: list[str] = []
        generated = False
        for event, event_id in zip(events, ids):
            if event_id is None:
                event_id = event[id_column] = str(uuid.uuid4())
                generated = True
            elif type(event_id) is not str:
                event_id = str(event_id)
            strings.append(event_id)
        return strings, generated

    def publish(
        self,
        model_id: str,
        env_type: str,
        env_name: Optional[str],
        events: list[dict[str, Any]],
        *,
        event_ids: Optional[list[Any]] = None,
        request_body: Optional[bytes] = None,
        reject_duplicates: bool = False,
    ) -> PublishResult:
        """Store validated events; return their ids in order (generating those missing).

        An event without an id gets a new uuid4 string, written into the stored event too.
        ``event_ids``, if given, are the events' id column values as validation read them.
        ``request_body``, if given, is the JSON that ``events`` were decoded from, as
        ``source.events``; it is stored as it is when every event is stored unchanged, which
        saves encoding them again.

        Raises:
            DuplicateEventError: with ``reject_duplicates``, when an id is already stored for
                the model or repeats within the batch; nothing of the batch is stored then.
            ValueError: more events than a batch holds.
        """
        if len(events) > BATCH_SLOTS:
            raise ValueError(f"at most {BATCH_SLOTS} events are stored in one batch")
        ids, generated = self._event_ids(events, event_ids)
        # Encoded outside the lock, on the bet that nothing is a duplicate; redone if it is.
        if request_body is not None and not generated:
            events_json, events_at = request_body, _IN_REQUEST
        else:
            events_json, events_at = orjson.dumps(events), _WHOLE
        ids_json = orjson.dumps(ids)
        kept_ids, new = ids, set(ids)
        with self._transaction() as db:
            # Created only once something is stored: a refused batch leaves no trace.
            model = self._models.get(model_id.lower())
            known = model.ids if model is not None else _NO_IDS
            if len(new) != len(ids) or not known.isdisjoint(new):
                kept_ids, kept = self._new_events(known, ids, events, reject_duplicates)
                events_json, ids_json = orjson.dumps(kept), orjson.dumps(kept_ids)
                events_at, new = _WHOLE, set(kept_ids)
            if kept_ids:
                model = model or self._model(db, model_id.lower())
                batch = self._next_batch
                db.execute(
                    "INSERT INTO batches (id, model, env_type, env_name, received_at, event_ids,"
                    " events, events_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        batch,
                        model.key,
                        env_type,
                        env_name,
                        time.time(),
                        ids_json,
                        events_json,
                        events_at,
                    ),
                )
                model.ids |= new
                model.add(batch, kept_ids)
                self._next_batch = batch + 1
        return PublishResult(ids, len(ids) - len(kept_ids))

    @staticmethod
    def _new_events(
        known: AbstractSet[str],
        ids: list[str],
        events: list[dict[str, Any]],
        reject_duplicates: bool,
    ) -> tuple[list[str], list[dict[str, Any]]]:
        """The ids and events not stored yet, first occurrence only, in request order."""
        kept_ids: list[str] = []
        kept: list[dict[str, Any]] = []
        seen: set[str] = set()
        for event_id, event in zip(ids, events):
            if event_id in known or event_id in seen:
                if reject_duplicates:
                    raise DuplicateEventError(event_id)  # before anything is written
                continue
            seen.add(event_id)
            kept_ids.append(event_id)
            kept.append(event)
        return kept_ids, kept

    def _stored_event(
        self, db: sqlite3.Connection, seq: int, batches: dict[int, list[dict[str, Any]]]
    ) -> dict[str, Any]:
        """The event at ``seq`` as stored now (updates merged); ``batches`` caches decodes."""
        row = db.execute("SELECT body FROM patched WHERE seq = ?", (seq,)).fetchone()
        if row is not None:
            event: dict[str, Any] = orjson.loads(row[0])
            return event
        batch = seq >> SEQ_BITS
        decoded = batches.get(batch)
        if decoded is None:
            sql = "SELECT events, events_at FROM batches WHERE id = ?"
            decoded = batches[batch] = _decode_events(*db.execute(sql, (batch,)).fetchone())
        return dict(decoded[seq & (BATCH_SLOTS - 1)])

    def update(self, model_id: str, events: list[dict[str, Any]]) -> UpdateResult:
        """Merge each update's columns into the stored event with its id, in order.

        Updates whose event is not stored for the model are neither merged nor logged; their
        ids are returned in ``unknown``.
        """
        id_column, received_at = self._id_column, time.time()
        applied: list[str] = []
        unknown: list[str] = []
        with self._transaction() as db:
            model = self._known(model_id)
            known = model.seq_index(self._removed) if model is not None else {}
            key = model.key if model is not None else None
            merged: dict[int, dict[str, Any]] = {}  # seq -> event with this request's updates
            batches: dict[int, list[dict[str, Any]]] = {}
            log: list[tuple[Any, ...]] = []
            for columns in events:
                event_id = str(columns[id_column])
                seq = known.get(event_id)
                if seq is None:
                    unknown.append(event_id)
                    continue
                event = merged.get(seq)
                if event is None:
                    event = merged[seq] = self._stored_event(db, seq, batches)
                stored_id = event.get(id_column)
                event.update(columns)
                # The stored spelling of the id wins: an update may send "7" for a stored 7.
                event[id_column] = stored_id
                log.append((key, event_id, received_at, orjson.dumps(columns)))
                applied.append(event_id)
            db.executemany(
                "INSERT OR REPLACE INTO patched (seq, body) VALUES (?, ?)",
                [(seq, orjson.dumps(event)) for seq, event in merged.items()],
            )
            db.executemany(
                "INSERT INTO updates (model, event_id, received_at, body) VALUES (?, ?, ?, ?)",
                log,
            )
        return UpdateResult(applied, unknown)

    def _remove(self, db: sqlite3.Connection, model: _Model, doomed: dict[int, str]) -> None:
        """Delete events (seq -> event id) of the model; call inside a transaction."""
        rows = [(seq,) for seq in doomed]
        db.executemany("INSERT INTO removed (seq) VALUES (?)", rows)
        db.executemany("DELETE FROM patched WHERE seq = ?", rows)
        self._removed.update(doomed)
        for event_id in doomed.values():
            model.forget(event_id)

    def delete_ids(self, model_id: str, event_ids: list[str]) -> int:
        """Delete the model's events with these ids; return how many were stored."""
        with self._transaction() as db:
            model = self._known(model_id)
            if model is None:
                return 0
            index = model.seq_index(self._removed)
            doomed = {index[e]: e for e in event_ids if e in index}
            self._remove(db, model, doomed)
        return len(doomed)

    def delete_range(self, model_id: str, start: float, end: float) -> int:
        """Delete the model's events with a timestamp in ``[start, end)``; return the count.

        A scan of the model's events, each timestamp parsed from the body: deletions are rare,
        and keeping a parsed time per event would slow every publish.
        """
        ts_column = self._ts_column
        with self._transaction() as db:
            model = self._known(model_id)
            if model is None:
                return 0
            removed, batch_ids = self._removed, dict(model.batches)
            patched = dict(
                db.execute(
                    "SELECT p.seq, p.body FROM patched AS p JOIN batches AS b"
                    f" ON b.id = p.seq >> {SEQ_BITS} WHERE b.model = ?",
                    (model.key,),
                )
            )
            doomed: dict[int, str] = {}
            query = "SELECT id, events, events_at FROM batches WHERE model = ? ORDER BY id"
            for batch, events_json, events_at in db.execute(query, (model.key,)):
                first, ids = batch << SEQ_BITS, batch_ids[batch]
                for seq, event in enumerate(_decode_events(events_json, events_at), first):
                    if seq in removed:
                        continue
                    body = patched.get(seq)
                    if body is not None:
                        event = orjson.loads(body)
                    ts = parse_time(event.get(ts_column))
                    if ts is not None and start <= ts < end:
                        doomed[seq] = ids[seq - first]
            self._remove(db, model, doomed)
        return len(doomed)

    def events(
        self, model_id: Optional[str] = None, *, limit: int = -1, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Stored events, updates merged, in arrival order (``limit=-1``: no limit)."""
        with self._lock:
            self._check_open()
            seqs = self._window(model_id, limit, offset)
            if not seqs:
                return []
            batches: dict[int, tuple[bytes, str]] = {}
            wanted = sorted({seq >> SEQ_BITS for seq in seqs})
            for chunk in _chunks(wanted):
                marks = ", ".join("?" * len(chunk))
                sql = f"SELECT id, events, events_at FROM batches WHERE id IN ({marks})"
                batches.update((row[0], row[1:]) for row in self._db.execute(sql, chunk))
            patched: dict[int, bytes] = dict(
                self._db.execute(
                    "SELECT seq, body FROM patched WHERE seq BETWEEN ? AND ?", (seqs[0], seqs[-1])
                )
            )
        # Decoded outside the lock: publishes need not wait for a reader.
        loads = orjson.loads
        decoded = {batch: _decode_events(*batches[batch]) for batch in wanted}
        mask = BATCH_SLOTS - 1
        return [
            loads(patched[seq]) if seq in patched else decoded[seq >> SEQ_BITS][seq & mask]
            for seq in seqs
        ]

    def _window(self, model_id: Optional[str], limit: int, offset: int) -> list[int]:
        """Seqs of stored events in arrival order, ``offset`` skipped, at most ``limit``."""
        stop = None if limit < 0 else offset + limit
        if model_id is not None:
            model = self._known(model_id)
            every = model.seqs(self._removed) if model is not None else iter(())
        else:
            every = heapq.merge(*(model.seqs(self._removed) for model in self._models.values()))
        return list(islice(every, offset, stop))

    def _check_open(self) -> None:
        if self._closed:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")

    def updates(
        self, model_id: Optional[str] = None, *, limit: int = -1, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Applied updates in arrival order: ``{"model_id", "event_id", "columns"}`` each."""
        rows = self._select("model, event_id, body", "updates", model_id, limit, offset)
        with self._lock:
            names = {model.key: model.model_id for model in self._models.values()}
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
        model = self._known(model_id)
        return "WHERE model = ?", (model.key if model is not None else None,)

    def count(self, model_id: Optional[str] = None) -> int:
        """Number of stored events, of one model or all; no query, so cheap to call often."""
        with self._lock:
            self._check_open()
            if model_id is None:
                return sum(len(model.ids) for model in self._models.values())
            model = self._known(model_id)
            return len(model.ids) if model is not None else 0

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
        """Delete every event and update (model ids are kept)."""
        with self._transaction() as db:
            for table in ("batches", "patched", "removed", "updates"):
                db.execute(f"DELETE FROM {table}")
            for model in self._models.values():
                model.clear()
            self._removed.clear()

    def close(self) -> None:
        """Close the database and wake waiters; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()
        with self._changed:
            self._changed.notify_all()
