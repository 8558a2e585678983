"""The README stays true: its configuration table and set-up commands match the code and CI."""

from __future__ import annotations

import re
from pathlib import Path

from fiddler_trace._config import SETTINGS

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_table_lists_every_setting():
    """Every setting and its variable has a row in the README's table, and no row is stale."""
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (`\w+`|\(argument only\)) \|", text, flags=re.MULTILINE)
    documented = {name: variable.strip("`") for name, variable in rows}
    expected = {s.name: s.env or "(argument only)" for s in SETTINGS}
    assert documented == expected


def test_ci_runs_the_readme_test_command():
    """.ci/run runs exactly the test command the README gives a new user."""
    readme = (ROOT / "README.md").read_text()
    command = 'pip install -e ".[test]" && pytest'
    assert command in readme
    assert command in (ROOT / ".ci" / "run").read_text()
    assert "pip install -e . && python examples/quickstart.py" in readme
