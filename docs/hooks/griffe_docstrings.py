"""Griffe extension: make the library's reST-flavoured docstrings read well as Markdown.

The docstrings are Google style, as mkdocstrings expects, but cross-references use Sphinx roles
(:func:`fiddler_trace.flush`) and examples are introduced with ``::``. This extension, loaded
by mkdocstrings (``extensions:`` in ``mkdocs.yml``), rewrites them before rendering:

- a role naming a public object rendered in the API reference becomes a link to it;
- any other role (a private helper, a bare method name) becomes inline code;
- a line ending in ``::`` ends in ``:`` (the indented block after it is code in Markdown too).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|exc|obj):`(~?)([\w.]+)`")
_LITERAL_INTRO = re.compile(r"(?<=\S)::$", re.MULTILINE)


def _public_targets() -> frozenset[str]:
    import fiddler_trace
    from fiddler_trace import testing

    names = {f"fiddler_trace.{name}" for name in fiddler_trace.__all__}
    names |= {f"fiddler_trace.testing.{name}" for name in testing.__all__}
    names |= {"fiddler_trace.testing", "fiddler_trace.collector.Collector"}
    return frozenset(names)


class SphinxRolesToMarkdown(griffe.Extension):
    """Rewrite Sphinx roles and ``::`` in every docstring (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.targets = _public_targets()

    def _replace(self, match: re.Match[str]) -> str:
        short, target = match.group(1), match.group(2)
        shown = target.rsplit(".", 1)[-1] if short else target
        if target in self.targets:
            return f"[`{shown}`][{target}]"
        return f"`{shown}`"

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is None:
            return
        text = _ROLE.sub(self._replace, docstring.value)
        docstring.value = _LITERAL_INTRO.sub(":", text)
