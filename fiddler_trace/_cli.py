"""The ``fiddler-trace`` command line.

Each subcommand is a pair of functions: ``_add_<name>(subparsers)`` declares its arguments and
sets ``run`` to ``_run_<name>(args) -> int``. Subcommands import what they need when they run,
so ``fiddler-trace --help`` stays cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any, Callable, Optional

from fiddler_trace._spool_cli import add_spool
from fiddler_trace._version import __version__

__all__ = ["build_parser", "main"]

PROG = "fiddler-trace"


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; returns the exit status (argparse exits 2 on bad arguments)."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Monitor a model in production: tools around fiddler_trace."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    subparsers.required = True
    _add_collector(subparsers)
    add_spool(subparsers)
    return parser


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(
            f"must be a TCP port 0..65535 (0: any free port): {text!r}"
        )
    return int(text)


def _positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer: {text!r}")
    return int(text)


def _non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


# -- collector -------------------------------------------------------------------------------


def _add_collector(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "collector",
        help="run a local server that speaks the /v3/events contract and stores events",
        description=(
            "Serve Fiddler's /v3/events contract (strict validation, Fiddler's envelopes) and "
            "store events and updates in SQLite. Read them back with GET /v3/events?model_id=... "
            "Stops cleanly on Ctrl-C or SIGTERM."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: %(default)s)")
    parser.add_argument(
        "--port", type=_port, default=8008, help="TCP port, 0 for any free one (default: 8008)"
    )
    parser.add_argument(
        "--db",
        default="./fiddler-events.sqlite",
        help="SQLite file, or :memory: (default: %(default)s)",
    )
    parser.add_argument(
        "--token", type=_non_empty, help="accept only this bearer token (default: any token)"
    )
    parser.add_argument(
        "--event-id-column",
        type=_non_empty,
        default="event_id",
        help="the event column holding the event id (default: %(default)s)",
    )
    parser.add_argument(
        "--timestamp-column",
        type=_non_empty,
        default="timestamp",
        help="the event column holding the event time, for range deletes (default: %(default)s)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=16 * 2**20,
        help="larger request bodies are answered 413 (default: %(default)s)",
    )
    parser.add_argument(
        "--reject-duplicates",
        action="store_true",
        help="answer 409 to a publish repeating a stored event id (default: keep the first)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="print one line per request on stderr"
    )
    parser.set_defaults(run=_run_collector)


def _run_collector(args: argparse.Namespace) -> int:
    import sqlite3

    from fiddler_trace.collector import Collector

    collector = Collector(
        host=args.host,
        port=args.port,
        db=args.db,
        token=args.token,
        event_id_column=args.event_id_column,
        timestamp_column=args.timestamp_column,
        max_body_bytes=args.max_body_bytes,
        verbose=args.verbose,
        reject_duplicates=args.reject_duplicates,
    )
    # Signals are caught before the listening line is printed: whoever reads that line to know
    # the server is up may stop it right away.
    with _stop_signals() as stop:
        try:
            collector.start()
        except (OSError, sqlite3.Error) as exc:
            print(
                f"{PROG} collector: cannot start on {args.host}:{args.port} with db {args.db}: "
                f"{exc}",
                file=sys.stderr,
            )
            return 1
        where = args.db if args.db == ":memory:" else os.path.abspath(args.db)
        auth = "only the --token bearer token" if args.token else "any bearer token"
        print(
            f"{PROG} collector listening on {collector.url} (set FIDDLER_URL to it), storing in "
            f"{where}, accepting {auth}; Ctrl-C to stop",
            flush=True,
        )
        try:
            # A timed wait, because an untimed one is not interrupted by Ctrl-C on Windows.
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            collector.stop()
    print(f"{PROG} collector stopped", flush=True)
    return 0


@contextlib.contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    """An event set by Ctrl-C or SIGTERM while inside (caught only on the main thread)."""
    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda _signum, _frame: stop.set())
    try:
        yield stop
    finally:
        for caught, handler in previous.items():
            signal.signal(caught, handler)
