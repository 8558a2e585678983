"""The ``fiddler-trace`` command line: argument errors, and the collector as a real process."""

from __future__ import annotations

import re
import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from fiddler_trace import _cli

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The process's next stdout line, or fail after ``timeout`` seconds without one."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            pytest.fail(f"no output within {timeout} s")
    return process.stdout.readline()


@pytest.fixture
def collector_process() -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "fiddler_trace", "collector", "--port", "0", "--db", ":memory:"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_collector_process_serves_then_exits_0_on_signal(
    collector_process: subprocess.Popen[str], signum: int
) -> None:
    """`python -m fiddler_trace collector --port 0` prints its URL, answers, stops on TERM/INT."""
    line = read_line(collector_process, timeout=20)
    match = re.search(r"listening on (http://127\.0\.0\.1:(\d+)) ", line)
    assert match, line
    assert int(match.group(2)) > 0
    assert ":memory:" in line
    response = httpx.post(
        f"{match.group(1)}/v3/events",
        json={
            "model_id": MODEL,
            "env_type": "PRODUCTION",
            "source": {"type": "EVENTS", "events": [{"event_id": "e1"}]},
        },
        headers={"Authorization": "Bearer any"},
        verify=False,  # plain HTTP on loopback: no CA bundle to load
    )
    assert response.json()["data"]["event_ids"] == ["e1"]
    collector_process.send_signal(signum)
    assert collector_process.wait(timeout=10) == 0
    assert "stopped" in read_line(collector_process, timeout=5)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["serve"], "invalid choice: 'serve'"),
        (["collector", "--port", "http"], "--port: must be a TCP port"),
        (["collector", "--port", "70000"], "--port: must be a TCP port"),
        (["collector", "--max-body-bytes", "0"], "--max-body-bytes: must be a positive integer"),
        (["collector", "--token", ""], "--token: must not be empty"),
        (["collector", "--verbose=yes"], "ignored explicit argument"),
    ],
)
def test_bad_arguments_exit_2_with_argparse_message(
    capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    """Bad arguments exit with status 2 and argparse's message naming the argument."""
    with pytest.raises(SystemExit) as exit_info:
        _cli.main(argv)
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_version_prints_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the package version."""
    with pytest.raises(SystemExit) as exit_info:
        _cli.main(["--version"])
    assert exit_info.value.code == 0
    assert re.fullmatch(r"fiddler-trace \S+\n", capsys.readouterr().out)


def test_collector_on_a_taken_port_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A port already in use is reported on stderr with exit status 1, nothing served."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = _cli.main(["collector", "--port", str(port), "--db", ":memory:"])
    assert status == 1
    assert f"cannot start on 127.0.0.1:{port}" in capsys.readouterr().err
