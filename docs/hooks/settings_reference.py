"""MkDocs hook: the configuration reference, rendered from ``fiddler_trace._config.SETTINGS``.

A page that contains the line ``<!-- settings-reference -->`` gets it replaced with a summary
table and one section per setting: its ``init()`` argument, environment variable, default (from
the ``Settings`` dataclass), description (``Setting.doc``) and accepted values (the text of the
``ConfigurationError`` a bad value raises). Nothing is copied by hand, so the page cannot drift
from the code. ``tests/test_docs.py`` imports :func:`render` to pin it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

MARKER = "<!-- settings-reference -->"
_PROBES: tuple[Any, ...] = ("not-a-value", object())  # what each parser refuses, in turn
_UNITS = ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace the marker, if the page has it."""
    return markdown.replace(MARKER, render()) if MARKER in markdown else markdown


def render() -> str:
    """The Markdown of the whole reference: the table, then one section per setting."""
    from fiddler_trace._config import SETTINGS, Settings

    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    lines = [
        "| setting | environment variable | default |",
        "|---|---|---|",
    ]
    for setting in SETTINGS:
        variable = f"`{setting.env}`" if setting.env else "(argument only)"
        default = format_default(setting.name, defaults[setting.name])
        lines.append(f"| [`{setting.name}`](#{setting.name}) | {variable} | {default} |")
    for setting in SETTINGS:
        lines += ["", f"### `{setting.name}` {{#{setting.name}}}", ""]
        where = f"`{setting.env}`" if setting.env else "no environment variable: `init()` only"
        default = format_default(setting.name, defaults[setting.name])
        lines += [f"{where} · default {default}", "", setting.doc]
        accepted = accepted_values(setting)
        if accepted:
            lines += ["", f"Accepted: {accepted}."]
    return "\n".join(lines) + "\n"


def format_default(name: str, value: Any) -> str:
    """A default as a user would write it, with byte sizes spelled out."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int) and name.endswith("_bytes"):
        for size, unit in _UNITS:
            if value >= size and value % size == 0:
                return f"`{value}` ({value // size} {unit})"
    return f"`{value!r}`"


def accepted_values(setting: Any) -> str:
    """What the setting's parser accepts, from the message of the error it raises."""
    from fiddler_trace._errors import ConfigurationError

    for probe in _PROBES:
        try:
            setting.parse(setting.name, probe)
        except ConfigurationError as error:
            text = str(error)
            return text.partition("accepted: ")[2].strip().rstrip(".")
    return ""
