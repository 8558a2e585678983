"""The collector's HTTP layer: its header parser and its answers to malformed requests."""

from __future__ import annotations

import email.utils
import http.client
import io
from collections.abc import Iterator
from typing import Any, Union

import orjson
import pytest
from collector_http import raw_exchange
from hypothesis import given, settings
from hypothesis import strategies as st

from fiddler_trace.collector import Collector
from fiddler_trace.collector._server import _read_headers

# Header lines built to exercise the email parser's rules: folding (a leading space or tab),
# mbox "From " lines, names with spaces or none, colons in values, bare CRs, non-ASCII bytes.
_LINE = st.tuples(
    st.sampled_from(["", "", " ", "\t", "From ", ":"]),
    st.sampled_from(["Authorization", "content-length", "X-y", "a", "a b", "é", ""]),
    st.sampled_from([":", ": ", ":\t", " :", ""]),
    st.lists(st.sampled_from(["Bearer", " ", "t", ":", "\r", "\t", "é"]), max_size=4),
    st.sampled_from(["\r\n", "\r\n", "\n"]),
)


def _parsed(message: Union[http.client.HTTPMessage, Exception]) -> Any:
    if isinstance(message, Exception):
        return type(message).__name__
    names = ["authorization", "Content-Length", "x-y", "From", "a", "a b"]
    return list(message.items()), [message.get(name) for name in names]


def _parse(parser: Any, block: bytes) -> Any:
    try:
        return _parsed(parser(io.BytesIO(block)))
    except Exception as exc:  # the same refusal is part of the contract
        return _parsed(exc)


@settings(max_examples=500)
@given(st.lists(_LINE, max_size=6), st.sampled_from(["\r\n", "\n", ""]))
def test_headers_parse_as_http_client_parses_them(
    lines: list[tuple[str, str, str, list[str], str]], last: str
) -> None:
    """Any header block gives the same fields (or refusal) as http.client.parse_headers."""
    text = "".join(
        lead + name + colon + "".join(value) + end for lead, name, colon, value, end in lines
    )
    block = (text + last).encode("latin-1")
    assert _parse(_read_headers, block) == _parse(http.client.parse_headers, block)


@pytest.mark.parametrize(
    "block",
    [
        b"X: " + b"a" * 70000 + b"\r\n\r\n",  # a line over 64 KiB
        b"X: y\r\n" * 101 + b"\r\n",  # more than 100 lines
        b"X: y\r\n" * 99 + b"\r\n",
    ],
)
def test_header_limits_are_http_clients(block: bytes) -> None:
    """The line-length and line-count limits refuse what http.client refuses."""
    assert _parse(_read_headers, block) == _parse(http.client.parse_headers, block)


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector() as running:
        yield running


def test_a_malformed_request_line_is_answered_in_the_envelope(collector: Collector) -> None:
    """A request line http.server refuses gets a 400 in the error envelope, then a close."""
    head, rest = raw_exchange(collector.port, b"POST /v3/events extra HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close" in head.split(b"\r\n")
    error = orjson.loads(rest)["error"]
    assert (error["code"], error["errors"][0]["reason"]) == (400, "bad_request")
    assert collector.stats()["rejected"] == {400: 1}


def test_response_head_has_status_server_date_and_length(collector: Collector) -> None:
    """The head names the server, dates the response and gives the body's length."""
    head, rest = raw_exchange(
        collector.port,
        b"GET /v3/events HTTP/1.1\r\nAuthorization: Bearer t\r\nConnection: close\r\n\r\n",
    )
    status, *lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines)
    assert status == "HTTP/1.1 200 OK"
    assert fields["Server"].startswith("fiddler-trace-collector/")
    assert email.utils.parsedate_to_datetime(fields["Date"]).tzinfo is not None
    assert int(fields["Content-Length"]) == len(rest)
    assert fields["Content-Type"] == "application/json"
    assert orjson.loads(rest)["data"] == {"events": [], "total": 0}
