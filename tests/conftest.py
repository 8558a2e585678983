"""Shared fixtures: state reset between tests, and a check of every request the library sends.

Every request carrying the library's User-Agent, through any transport, is validated against
the OpenAPI file as it is sent; the session fails at the end if any did not validate.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openapi
import orjson
import pytest

from fiddler_trace import testing

_sent: list[tuple[str, str]] = []
_invalid: list[str] = []
_original_send = httpx.Client.send


def _recording_send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
    if request.headers.get("user-agent", "").startswith("fiddler-trace/"):
        try:
            body = orjson.loads(request.content) if request.content else None
            errors = openapi.request_errors(request.method, request.url.path, body)
        except orjson.JSONDecodeError as error:
            errors = [f"body is not JSON: {error}"]
        _sent.append((request.method, request.url.path))
        if errors:
            _invalid.append(f"{request.method} {request.url.path}: {'; '.join(errors)}")
    return _original_send(self, request, **kwargs)


httpx.Client.send = _recording_send  # type: ignore[method-assign]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _invalid:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"{len(_invalid)} of {len(_sent)} requests sent did not validate:", *_invalid]
        if reporter is not None:
            reporter.write_sep("=", "requests outside the OpenAPI contract", red=True)
            for line in lines[:50]:
                reporter.write_line(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


class RequestLog:
    """The library's requests sent since the fixture started, each checked against the spec."""

    def __init__(self) -> None:
        self._start = len(_sent)
        self._invalid_start = len(_invalid)

    @property
    def requests(self) -> list[tuple[str, str]]:
        return _sent[self._start :]

    @property
    def invalid(self) -> list[str]:
        return _invalid[self._invalid_start :]


@pytest.fixture
def request_log() -> Iterator[RequestLog]:
    """Requests the library sends during the test; the test fails if one breaks the contract."""
    log = RequestLog()
    yield log
    assert log.invalid == []


@pytest.fixture(autouse=True)
def _fresh_library_state() -> Iterator[None]:
    """Each test starts and ends without library state: settings, pipeline, sinks, ids."""
    testing.reset()
    yield
    testing.reset()
