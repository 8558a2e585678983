"""Every example runs as a user runs it, ``python examples/NAME.py``, and exits 0."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# example -> the modules it needs beyond fiddler-trace itself (all in the "examples" extra)
NEEDS: dict[str, tuple[str, ...]] = {
    "quickstart.py": (),
    "sklearn_model.py": ("sklearn", "pandas"),
    "fastapi_app.py": ("fastapi", "httpx"),
    "logging_handler.py": (),
    "ground_truth_job.py": (),
    "prefork.py": (),
}


def test_every_example_is_run_here():
    """A new file in examples/ cannot escape this suite: each one is listed in NEEDS."""
    assert sorted(path.name for path in EXAMPLES.glob("*.py")) == sorted(NEEDS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NEEDS))
def test_example_runs_and_exits_0(name: str, tmp_path: Path):
    """``python examples/NAME.py`` exits 0 against its in-process collector, with no traceback."""
    missing = [module for module in NEEDS[name] if importlib.util.find_spec(module) is None]
    if missing:
        pytest.skip(f"{name} needs {', '.join(missing)}: pip install -e '.[examples]'")
    # The environment of a new user: no FIDDLER_* variable from the caller's shell.
    env = {key: value for key, value in os.environ.items() if not key.startswith("FIDDLER")}
    env["PYTHONWARNINGS"] = "error::DeprecationWarning:__main__"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=tmp_path,  # an example must not depend on the directory it is started from
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, output
    assert "Traceback" not in result.stderr, output
    assert result.stdout.strip(), output
