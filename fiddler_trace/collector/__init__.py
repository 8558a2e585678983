"""A local server that speaks Fiddler's ``/v3/events`` contract and stores what it receives.

It is the embedded default for trying the library, for this project's tests and for users'
own tests; production points ``FIDDLER_URL`` at a Fiddler instance instead. From the shell::

    fiddler-trace collector --port 8008 --db ./fiddler-events.sqlite

In a test::

    from fiddler_trace.collector import Collector

    with Collector() as collector:             # port 0: a free port; db ":memory:"
        run_code_that_sends_to(collector.url)  # any bearer token is accepted
        assert collector.wait_for_count(3, model_id=MODEL_ID)
        assert collector.events(MODEL_ID)[0]["prediction"] == 0.7

The contract
------------
``POST``, ``PATCH`` and ``DELETE /v3/events`` as in ``fiddler-events-v3.openapi.json``, with
Fiddler's envelopes (``{"api_version": "3.0", "kind": "NORMAL", "data": ...}`` and
``{"api_version": "3.0", "kind": "ERROR", "error": {"code", "message", "errors"}}``):

- Validation is strict; each 400 names the field (``source.events[3]``, ``time_range.end_time``)
  and ``error.errors[0].reason`` says what kind of error it is. At most 1000 events per request.
  Streaming events are accepted for ``PRODUCTION`` only (Fiddler takes ``PRE_PRODUCTION`` data
  as files). A DELETE is refused with no filter (it would delete everything), with both filters,
  with an empty ``event_ids``, with ``update_metrics`` and ids, with one end of a range, or with
  a range bound that is a date without a UTC offset. ``error.code`` is always the HTTP status,
  also for those the spec's enum does not list (401, 405, 409, 413, 415).
- ``Authorization: Bearer <token>`` is required (401 otherwise); any token is accepted unless
  the collector was given one. Unknown path: 404 (checked before auth); other method: 405 with
  ``Allow``; body over ``max_body_bytes``: 413, decided from ``Content-Length`` before reading,
  then the connection is closed (after draining, so the client reads the 413). A request with
  neither ``Content-Length`` nor chunked framing has an empty body: 400 ``missing_body``.
  ``Content-Encoding: gzip`` is accepted (the limit applies to the decompressed size too).
- POST answers each event's id (its ``event_id_column`` value as a string, or a new uuid4 that
  is also stored into the event). A FILE source answers 202 with a job and stores nothing.
- Republishing an event id already stored for the model keeps the first event (a retried batch
  that had landed changes nothing) and counts it in ``stats()["duplicates"]``; with
  ``reject_duplicates=True`` the request is answered 409 instead and nothing of it is stored.
- PATCH merges the given columns into the stored event with that id and logs the update. An
  update for an id not stored is not applied; the 200 response lists the applied ids in
  ``data.event_ids`` and the others in ``data.errors`` (reason ``event_not_found``).
- DELETE by ``event_ids``, or by ``time_range`` on the event's timestamp column, start inclusive
  and end exclusive, bounds as ISO 8601 with an offset or epoch seconds; answered 202 with a job
  after the events are gone. Event timestamps are read as ISO 8601 (naive means UTC) or epoch
  seconds; an event whose timestamp is neither is stored but no range selects it.

Storage
-------
SQLite: each publish is one row of ``batches`` (model, ``env_type``, ``env_name``, arrival time,
the events' ids, and the events as JSON, which is the request body itself when every event was
stored as sent), beside ``models``, ``updates`` (the update log), ``patched`` (events as merged
with their updates) and ``removed`` (deleted events); the view ``stored_events`` shows one row
per stored event, updates merged, for a person with ``sqlite3``. A file database runs in WAL
mode; each request is one transaction. Which event ids are stored is also kept in memory
(rebuilt when a database is opened), so one collector at a time may use a database file. A
database written by the first version (a row per event) is converted when it is opened.

Read side (an extension of the API, same auth)
----------------------------------------------
- ``GET /v3/events?model_id=&limit=&offset=``: ``data.events``, the stored events with their
  updates merged, in arrival order, and ``data.total``. ``model_id`` is optional (all models),
  ``limit`` is 1..10000 (default 1000), ``offset`` defaults to 0.
- ``GET /v3/events/updates?model_id=&limit=&offset=``: ``data.updates``, the applied updates in
  arrival order as ``{"model_id", "event_id", "columns"}``, and ``data.total``.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any, Optional

from fiddler_trace.collector._api import EventsApp, print_line
from fiddler_trace.collector._server import CollectorServer
from fiddler_trace.collector._store import EventStore

__all__ = ["Collector"]

THREAD_NAME = "fiddler-trace-collector"


class Collector:
    """The ``/v3/events`` collector, served from a daemon thread of this process.

    Args:
        host: interface to listen on; ``"::1"``-style hosts listen on IPv6.
        port: TCP port; 0 picks a free one (read it from :attr:`port` after :meth:`start`).
        db: SQLite file path, or ``":memory:"`` for storage that ends with :meth:`stop`.
        token: the one bearer token to accept; None accepts any non-empty token.
        event_id_column: the event column holding the event id.
        timestamp_column: the event column holding the event time.
        max_body_bytes: largest request body accepted (413 beyond), compressed or not.
        verbose: print one line per request on stderr (method, path, status, events, ms).
        reject_duplicates: answer 409 to a publish that repeats a stored event id, instead of
            keeping the first event.

    All methods are thread-safe. The reading methods raise RuntimeError unless it is running.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        db: str = ":memory:",
        token: Optional[str] = None,
        event_id_column: str = "event_id",
        timestamp_column: str = "timestamp",
        max_body_bytes: int = 16 * 2**20,
        verbose: bool = False,
        reject_duplicates: bool = False,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port!r}")
        if token is not None and not token.strip():
            raise ValueError("token must be a non-empty string or None (accept any token)")
        if not event_id_column or not timestamp_column:
            raise ValueError("event_id_column and timestamp_column must be non-empty")
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be a positive byte count, got {max_body_bytes}")
        self.host, self.db = host, str(db)
        self._requested_port = port
        self._token = token
        self._event_id_column, self._timestamp_column = event_id_column, timestamp_column
        self._max_body_bytes, self._verbose = max_body_bytes, verbose
        self._reject_duplicates = reject_duplicates
        self._lifecycle = threading.Lock()
        self._server: Optional[CollectorServer] = None
        self._thread: Optional[threading.Thread] = None
        self._app: Optional[EventsApp] = None
        self._port: Optional[int] = None

    def __repr__(self) -> str:
        state = f"url={self.url!r}" if self._port is not None else "not started"
        return f"Collector({state}, db={self.db!r})"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Collector:
        """Bind, open the database and serve on a daemon thread; returns self.

        Raises:
            RuntimeError: it is already running.
            OSError: the address cannot be bound.
            sqlite3.Error: the database cannot be opened.
        """
        with self._lifecycle:
            if self._server is not None:
                raise RuntimeError("the collector is already running")
            store = EventStore(
                self.db,
                event_id_column=self._event_id_column,
                timestamp_column=self._timestamp_column,
            )
            app = EventsApp(
                store,
                token=self._token,
                event_id_column=self._event_id_column,
                reject_duplicates=self._reject_duplicates,
                log=print_line if self._verbose else None,
            )
            try:
                server = CollectorServer(
                    self.host, self._requested_port, app, max_body_bytes=self._max_body_bytes
                )
            except BaseException:
                store.close()
                raise
            self._thread = threading.Thread(target=server.serve, name=THREAD_NAME, daemon=True)
            self._server, self._app, self._port = server, app, server.server_address[1]
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end open connections and close the database; idempotent.

        Requests in flight get up to two seconds to finish.
        """
        with self._lifecycle:
            server, thread, app = self._server, self._thread, self._app
            self._server = self._thread = self._app = None
        if server is None or thread is None or app is None:
            return
        server.stop_serving()
        thread.join()
        server.close()
        app.store.close()

    def __enter__(self) -> Collector:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The TCP port it listens on (the last one, once stopped)."""
        if self._port is None:
            raise RuntimeError("the collector has not been started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL for clients, e.g. ``http://127.0.0.1:54321`` (``FIDDLER_URL``)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    # -- what arrived ------------------------------------------------------------------------

    def _running(self) -> EventsApp:
        app = self._app
        if app is None:
            raise RuntimeError("the collector is not running: start() it first")
        return app

    def events(self, model_id: Optional[str] = None) -> list[dict[str, Any]]:
        """Stored events (of one model, or all), updates merged, in arrival order."""
        return self._running().store.events(model_id)

    def updates(self, model_id: Optional[str] = None) -> list[dict[str, Any]]:
        """Applied updates in arrival order: ``{"model_id", "event_id", "columns"}`` each."""
        return self._running().store.updates(model_id)

    def count(self, model_id: Optional[str] = None) -> int:
        """Number of stored events (of one model, or all)."""
        return self._running().store.count(model_id)

    def stats(self) -> dict[str, Any]:
        """Counters since start or :meth:`clear`.

        Keys: ``requests`` (answered), ``published`` (events newly stored), ``duplicates``
        (republished ids kept as first stored), ``updated`` (updates applied),
        ``unknown_updates``, ``deleted`` (events), ``file_jobs``, and ``rejected``: a dict of
        HTTP status -> requests answered with it (4xx and 5xx).
        """
        return self._running().stats()

    def clear(self) -> None:
        """Delete every stored event and update and zero the counters."""
        app = self._running()
        app.store.clear()
        app.reset_stats()

    def wait_for_count(
        self, n: int, model_id: Optional[str] = None, timeout: Optional[float] = 5.0
    ) -> bool:
        """Block until at least ``n`` events are stored (for one model, or all).

        Wakes on each stored batch (no polling), so it is exact and cheap in tests.

        Returns:
            True once the count is reached; False after ``timeout`` seconds (None: no limit)
            or if the collector stops meanwhile.
        """
        store = self._running().store
        return store.wait_until(lambda: store.count(model_id) >= n, timeout)
