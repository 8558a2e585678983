"""MkDocs hook: the command-line reference, rendered from the ``fiddler-trace`` parser.

A page that contains the line ``<!-- cli-reference -->`` gets it replaced with the ``--help``
text of ``fiddler-trace`` and of each of its subcommands, taken from
``fiddler_trace._cli.build_parser()``, so a new option or subcommand appears without editing
the page.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

MARKER = "<!-- cli-reference -->"
_WIDTH = "80"  # argparse wraps help to $COLUMNS


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace the marker, if the page has it."""
    return markdown.replace(MARKER, render()) if MARKER in markdown else markdown


def render() -> str:
    """The Markdown of the reference: the main help, then a section per subcommand."""
    from fiddler_trace._cli import PROG, build_parser

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = _WIDTH
    try:
        parser = build_parser()
        parts = [_block(parser.format_help())]
        for name, sub in _subcommands(parser):
            parts += [f"## `{PROG} {name}`", _block(sub.format_help())]
            for nested, subsub in _subcommands(sub):
                parts += [f"### `{PROG} {name} {nested}`", _block(subsub.format_help())]
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    return "\n\n".join(parts) + "\n"


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.extend(action.choices.items())
    return found


def _block(text: str) -> str:
    return f"```text\n{text.rstrip()}\n```"
