"""The documentation stays true to the code: generated references, names, snippets, the build."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import fiddler_trace
from fiddler_trace._config import SETTINGS, Settings
from fiddler_trace._native import NO_EXTENSIONS_VARIABLE

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
# The settings' variables, and the one read at import to turn the C extension off.
VARIABLES = {s.env for s in SETTINGS if s.env} | {NO_EXTENSIONS_VARIABLE}
# Public modules besides the package itself, and names users reach as fiddler_trace.<name>.
SUBMODULES = {"testing", "collector"}


def _hook(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"docs_hook_{name}", DOCS / "hooks" / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _text_files() -> list[Path]:
    return [*PAGES, ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(ROOT.glob("examples/*.py"))]


def test_configuration_reference_has_every_setting_with_its_variable_and_default():
    """The generated reference has one section per setting: variable, default, doc, range."""
    hook = _hook("settings_reference")
    text = hook.render()
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    sections = re.findall(r"^### `(\w+)`", text, flags=re.MULTILINE)
    assert sections == [s.name for s in SETTINGS]
    for setting in SETTINGS:
        section = text.split(f"### `{setting.name}`", 1)[1].split("\n### ", 1)[0]
        assert (f"`{setting.env}`" if setting.env else "init()") in section
        assert hook.format_default(setting.name, defaults[setting.name]) in section
        assert setting.doc in section
    assert "Accepted: a whole number at least 1 and at most 1000." in text  # batch_size's range


def test_configuration_page_is_generated_by_the_hook():
    """configuration.md carries the marker the hook replaces, and mkdocs.yml runs the hook."""
    assert _hook("settings_reference").MARKER in (DOCS / "configuration.md").read_text()
    assert _hook("cli_reference").MARKER in (DOCS / "reference" / "cli.md").read_text()
    config = (ROOT / "mkdocs.yml").read_text()
    assert "docs/hooks/settings_reference.py" in config
    assert "docs/hooks/cli_reference.py" in config


def test_cli_reference_has_every_subcommand():
    """The generated command-line reference has a section for each fiddler-trace subcommand."""
    from fiddler_trace._cli import build_parser

    hook = _hook("cli_reference")
    text = hook.render()
    for name, _ in hook._subcommands(build_parser()):
        assert f"## `fiddler-trace {name}`" in text


def test_every_fiddler_variable_named_in_the_docs_exists():
    """No page, example or README names a FIDDLER_* variable the library does not read."""
    unknown = {}
    for path in _text_files():
        named = set(re.findall(r"\bFIDDLER_[A-Z_]*[A-Z]\b", path.read_text()))
        if named - VARIABLES:
            unknown[str(path.relative_to(ROOT))] = sorted(named - VARIABLES)
    assert unknown == {}


def test_every_public_name_used_in_the_docs_exists():
    """Every fiddler_trace.<name> in the docs is a public name (or a public module)."""
    public = set(fiddler_trace.__all__) | SUBMODULES
    unknown = {}
    for path in _text_files():
        # not "fiddler_trace._config" and friends: the docs may name the source of a table
        used = set(re.findall(r"\bfiddler_trace\.([A-Za-z]\w*)", path.read_text()))
        if used - public:
            unknown[str(path.relative_to(ROOT))] = sorted(used - public)
    assert unknown == {}


def test_concepts_lists_every_stats_key():
    """The stats table in concepts.md lists every key stats() returns."""
    text = (DOCS / "concepts.md").read_text()
    for key in fiddler_trace.stats():
        assert f"`{key}`" in text, key


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_python_blocks_parse(path: Path):
    """Every ```python block in the docs is valid Python (snippet includes aside)."""
    text = path.read_text()
    for match in re.finditer(r"^( *)```python\n(.*?)^\1```", text, flags=re.DOTALL | re.MULTILINE):
        indent = len(match.group(1))
        code = "\n".join(line[indent:] for line in match.group(2).splitlines())
        if code.startswith("--8<--"):
            continue
        ast.parse(code, filename=str(path))


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path):
    """``mkdocs build --strict`` passes: nav, links, anchors, snippets and the API reference."""
    if (
        importlib.util.find_spec("mkdocs") is None
        or importlib.util.find_spec("mkdocstrings") is None
    ):
        pytest.skip("needs the docs extra: pip install -e '.[docs]'")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    site = tmp_path / "site"
    api = (site / "reference" / "api" / "index.html").read_text()
    for name in fiddler_trace.__all__:
        if name != "__version__":
            assert f'id="fiddler_trace.{name}"' in api, name
    assert ":func:" not in api
    assert ":class:" not in api
    assert "<!-- settings-reference -->" not in (site / "configuration" / "index.html").read_text()
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "fiddler-trace collector" in cli
