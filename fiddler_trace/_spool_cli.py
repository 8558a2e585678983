"""``fiddler-trace spool ls|replay|purge --dir D``: see and manage a spool by hand."""

from __future__ import annotations

import argparse
import sys
from time import monotonic
from typing import Any, TextIO

__all__ = ["add_spool"]

PROG = "fiddler-trace spool"


def add_spool(subparsers: Any) -> None:
    """Declare ``spool`` and its three actions."""
    parser = subparsers.add_parser(
        "spool",
        help="list, replay or purge a spool directory (FIDDLER_TRACE_SPOOL_DIR)",
        description="See and manage the batches a process kept on disk when it could not "
        "deliver them.",
    )
    actions = parser.add_subparsers(title="actions", dest="action", metavar="ACTION")
    actions.required = True
    for name, text in (
        ("ls", "list the segments: size, events still to send, whether a process holds one"),
        ("replay", "send what the spool holds now, to FIDDLER_URL with FIDDLER_TOKEN"),
        ("purge", "delete every segment no process holds (the events in them are lost)"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--dir", required=True, help="the spool directory")
        action.set_defaults(run=_RUNS[name])
    purge = actions.choices["purge"]
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    replay = actions.choices["replay"]
    replay.add_argument("--url", help="the Fiddler instance (default: FIDDLER_URL)")
    replay.add_argument(
        "--timeout", type=float, default=600.0, help="seconds at most (default: %(default)s)"
    )


def _open(directory: str) -> Any:
    from fiddler_trace._spool import Spool

    return Spool(directory)


def _run_ls(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    spool = _open(args.dir)
    listing = spool.listing()
    if not listing:
        print(f"{args.dir}: empty", file=out)
        return 0
    print(f"{'segment':<52} {'bytes':>12} {'events to send':>15}  state", file=out)
    total = 0
    for segment in listing:
        pending = spool.pending_events(segment.path)
        total += pending
        state = "open in a running process" if segment.locked else "replayable"
        print(f"{segment.path.name:<52} {segment.size:>12,} {pending:>15,}  {state}", file=out)
    print(f"{len(listing)} segments, {total:,} events to send", file=out)
    return 0


def _run_purge(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    spool = _open(args.dir)
    victims = [s for s in spool.listing() if not s.locked]
    events = sum(spool.pending_events(s.path) for s in victims)
    if not victims:
        print(f"{args.dir}: nothing to purge", file=out)
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                f"{PROG} purge: would delete {len(victims)} segments ({events:,} events); "
                "pass --yes to confirm",
                file=sys.stderr,
            )
            return 1
        answer = input(f"delete {len(victims)} segments ({events:,} events)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 1
    removed = spool.purge()
    print(f"deleted {removed} segments ({events:,} events)", file=out)
    return 0


def _run_replay(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from fiddler_trace._config import load_settings
    from fiddler_trace._errors import ConfigurationError
    from fiddler_trace._pipeline import Pipeline

    spool = _open(args.dir)
    total = sum(spool.pending_events(s.path) for s in spool.listing() if not s.locked)
    spool.close()
    if not total:
        print(f"{args.dir}: nothing to replay", file=out)
        return 0
    overrides: dict[str, Any] = {"enabled": True, "spool_dir": args.dir}
    if args.url:
        overrides["url"] = args.url
    try:
        settings = load_settings(**overrides)
    except ConfigurationError as error:
        print(f"{PROG} replay: {error}", file=sys.stderr)
        return 2
    pipeline = Pipeline(settings)
    spooler = pipeline.spooler
    if spooler is None:
        print(
            f"{PROG} replay: cannot open {args.dir}: {pipeline.stats.last_error}", file=sys.stderr
        )
        return 1
    tty = out.isatty()
    pipeline.start()
    deadline = monotonic() + args.timeout
    while monotonic() < deadline:
        pipeline.flush(0.25)
        if tty:
            print(f"\rsent {pipeline.stats.replayed:,} of {total:,} events", end="", file=out)
        if spooler.replaying or spooler.in_flight:
            continue
        if pipeline.worker.failing or not _replayable(args.dir):
            break
        spooler.start_replay()  # another process held the directory's replay lock: wait
    pipeline.shutdown(5.0)
    sent, failed = pipeline.stats.replayed, pipeline.stats.failed
    # Another process may replay segments of the same directory at the same time: what counts
    # is that nothing replayable is left, not that this process sent all of it.
    after = _open(args.dir)
    left = sum(after.pending_events(s.path) for s in after.listing() if not s.locked)
    after.close()
    if tty:
        print(file=out)
    summary = f"replayed {sent:,} of {total:,} events; {failed:,} refused by the server"
    if left:
        summary += f"; {left:,} left (last error: {pipeline.stats.last_error})"
    print(summary, file=out)
    return 1 if left else 0


def _replayable(directory: str) -> bool:
    """Events wait in a segment no process holds, or another process is replaying."""
    spool = _open(directory)
    try:
        if any(spool.pending_events(s.path) for s in spool.listing() if not s.locked):
            return True
        return not spool.replay_idle()
    finally:
        spool.close()


_RUNS = {"ls": _run_ls, "replay": _run_replay, "purge": _run_purge}
