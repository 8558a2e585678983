"""HTTP/1.1 for the events client, on the standard library's sockets: an ``httpx`` transport.

httpx's default transport (httpcore and h11) spends ~310 µs of CPU on a 1,000-event request
where this one spends ~150 µs and a raw socket's work is ~70-90 µs (measured with the same
``httpx.Client`` around both), on the worker thread and holding the interpreter lock that the
host's threads need: ~0.16 µs per event saved. The events client sends a
handful of request shapes to one origin and reads small JSON answers, which needs far less: the
request goes out in one or two writes, and the answer is parsed by the buffered reader's
``readline`` and ``read``, in C. Everything around the transport (headers, cookies, timeouts,
the response object, the errors) stays httpx's.

The events client uses it for ``http://`` and ``https://`` URLs that no proxy from the
environment applies to; with a proxy, httpx's own transport (which speaks to proxies) is used.
Connections are kept alive and reused; one found closed by the server while idle, or idle for
longer than httpx keeps one (5 s: load balancers and firewalls drop idle connections without a
word), is dropped before it is used. A request that fails is not sent again here: the pipeline
retries whole batches. No lock: a list's ``append`` and ``pop`` are atomic, and a lock held by
another thread at a fork would stay held in the child for good.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import time
from typing import Any, Callable, Optional

import httpx

__all__ = ["EventsTransport"]

_MAX_LINE = 65_536  # bytes of a status, header or chunk-size line
_MAX_HEADERS = 100
_MAX_BODY = 64 * 1024 * 1024  # an answer of /v3/events is a few hundred bytes
_MAX_IDLE = 4  # connections kept per origin; one is all the worker uses
KEEP_IDLE = 5.0  # seconds an idle connection is kept: httpx's default keepalive_expiry
_JOIN_BELOW = 64 * 1024  # a smaller body is sent with the head in one write
_WRITE_STEP = 1024 * 1024  # bytes per write of a larger one
_NO_BODY_STATUS = frozenset({204, 304})

Origin = tuple[bytes, str, int]


class _Connection:
    """A socket to one origin, its buffered reader, and when it went idle."""

    __slots__ = ("idle_since", "reader", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")
        self.idle_since = 0.0

    def closed_by_peer(self) -> bool:
        """True when an idle connection can be read: the server closed it (or sent something
        unasked, which would be taken for the next answer)."""
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        try:
            if hasattr(select, "poll"):
                poller = select.poll()
                poller.register(self.sock, select.POLLIN)
                return bool(poller.poll(0))
            return bool(select.select([self.sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        for closable in (self.reader, self.sock):
            with contextlib.suppress(OSError):
                closable.close()


class EventsTransport(httpx.BaseTransport):
    """A keep-alive HTTP/1.1 transport without proxies or HTTP/2. Thread-safe.

    Args:
        ssl_context: the TLS context of ``https://`` origins; None: httpx's default (certifi's
            bundle), built on the first connection to one.
        clock: monotonic seconds, for the idle connections' age.
    """

    def __init__(
        self,
        ssl_context: Optional[ssl.SSLContext] = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._context = ssl_context
        self._clock = clock
        self._idle: dict[Origin, list[_Connection]] = {}
        self._pid = os.getpid()
        self._closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        port = url.port or (443 if url.scheme == "https" else 80)
        # The ASCII form (IDNA 2008, as httpx writes the Host header), never Python's own
        # encoding of the Unicode name, which maps some names to another host.
        origin: Origin = (url.raw_scheme, url.raw_host.decode("ascii"), port)
        timeouts: dict[str, Optional[float]] = request.extensions.get("timeout", {})
        head = _head(request)  # refused before a connection is made
        body = request.read()  # the events client's bodies are bytes already
        connection = self._take(origin) or self._connect(origin, timeouts.get("connect"))
        try:
            keep, response = self._exchange(connection, head, body, request.method, timeouts)
        except BaseException:
            connection.close()
            raise
        if keep:
            self._give_back(origin, connection)
        else:
            connection.close()
        return response

    def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        _close_all(idle)

    # -- connections ---------------------------------------------------------------------------

    def _take(self, origin: Origin) -> Optional[_Connection]:
        if self._pid != os.getpid():
            # A forked child holds copies of its parent's sockets: it must never write to them.
            # Closing its copies leaves the parent's connections open (and a TLS socket's
            # close() sends no close_notify: only unwrap() does).
            self._pid, inherited = os.getpid(), self._idle
            self._idle = {}
            _close_all(inherited)
        connections = self._idle.get(origin)
        while connections:
            try:
                connection = connections.pop()  # the most recently used
            except IndexError:  # another thread took the last one
                break
            if self._clock() - connection.idle_since <= KEEP_IDLE and not (
                connection.closed_by_peer()
            ):
                return connection
            connection.close()
        return None

    def _give_back(self, origin: Origin, connection: _Connection) -> None:
        connections = self._idle.setdefault(origin, [])
        if self._closed or self._pid != os.getpid():
            connection.close()
            return
        connection.idle_since = self._clock()
        connections.append(connection)
        # Since the test above, close() may have emptied this list, or other threads added to
        # it: the oldest go.
        while (self._closed and connections) or len(connections) > _MAX_IDLE:
            with contextlib.suppress(IndexError):
                connections.pop(0).close()

    def _connect(self, origin: Origin, timeout: Optional[float]) -> _Connection:
        scheme, host, port = origin
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except socket.timeout as error:  # TimeoutError from 3.10; not a subclass before
            raise httpx.ConnectTimeout(_text(error, "connect")) from error
        except OSError as error:
            raise httpx.ConnectError(_text(error, "connect")) from error
        try:
            # The head and a large body are two writes: Nagle would hold the second for the
            # peer's delayed acknowledgement of the first.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == b"https":
                if self._context is None:
                    self._context = httpx.create_ssl_context()
                sock = self._context.wrap_socket(sock, server_hostname=host)
        except socket.timeout as error:
            sock.close()
            raise httpx.ConnectTimeout(_text(error, "TLS handshake")) from error
        except (OSError, ValueError) as error:  # ssl.SSLError and CertificateError included
            sock.close()
            raise httpx.ConnectError(_text(error, "TLS handshake")) from error
        return _Connection(sock)

    # -- one request ---------------------------------------------------------------------------

    def _exchange(
        self,
        connection: _Connection,
        head: bytes,
        body: bytes,
        method: str,
        timeouts: dict[str, Optional[float]],
    ) -> tuple[bool, httpx.Response]:
        """Send the request and read its answer; returns whether the connection may be reused,
        and the response."""
        sock = connection.sock
        write_error: Optional[httpx.TransportError] = None
        try:
            sock.settimeout(timeouts.get("write"))
            if len(body) < _JOIN_BELOW:
                sock.sendall(head + body)
            else:
                sock.sendall(head)
                # The write timeout bounds each write, as httpcore's does, not the whole body
                # (sendall's timeout is its total since Python 3.5): a large batch on a slow
                # link must not time out on every attempt while it makes progress.
                view = memoryview(body)
                while view:
                    view = view[sock.send(view[:_WRITE_STEP]) :]
        except socket.timeout as error:
            raise httpx.WriteTimeout(_text(error, "write")) from error
        except OSError as error:
            # A server may answer before it has read the whole body and close: a 413 for a
            # body over its limit, which the pipeline must see to split the batch. As httpcore
            # does, read what it answered; the write's error stands if there is nothing.
            write_error = httpx.WriteError(_text(error, "write"))
            write_error.__cause__ = error
        try:
            sock.settimeout(timeouts.get("read"))
            keep, response = _read_response(connection.reader, method)
        except (OSError, httpx.RemoteProtocolError) as error:
            if write_error is not None:
                raise write_error from write_error.__cause__
            if isinstance(error, socket.timeout):
                raise httpx.ReadTimeout(_text(error, "read")) from error
            if isinstance(error, OSError):
                raise httpx.ReadError(_text(error, "read")) from error
            raise
        return keep and write_error is None, response


def _close_all(idle: dict[Origin, list[_Connection]]) -> None:
    for connections in idle.values():
        while connections:
            with contextlib.suppress(IndexError):  # another thread took the last one
                connections.pop().close()


def _head(request: httpx.Request) -> bytes:
    """The request line and headers (httpx has set ``Host`` and ``Content-Length``)."""
    if "transfer-encoding" in request.headers:
        # A streamed body (httpx sets Transfer-Encoding: chunked): the events client never
        # sends one, and this transport does not frame it.
        raise httpx.LocalProtocolError("a request body without a Content-Length")
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    for name, value in request.headers.raw:
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
            raise httpx.LocalProtocolError(f"header {name!r} holds a line break")
        lines.append(name + b": " + value)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def _read_response(reader: Any, method: str) -> tuple[bool, httpx.Response]:
    while True:
        version, status, reason = _status_line(reader)
        headers = _headers(reader)
        if not 100 <= status < 200 or status == 101:
            break  # an interim answer (100 Continue) is skipped
    names = {name.lower(): value for name, value in headers}  # the last of repeated ones
    connection = {token.strip().lower() for token in names.get(b"connection", b"").split(b",")}
    keep = version == b"HTTP/1.1" and b"close" not in connection
    if method == "HEAD" or status in _NO_BODY_STATUS or status < 200:
        body = b""
    elif b"transfer-encoding" in names:
        codings = names[b"transfer-encoding"].lower().split(b",")
        if codings[-1].strip() == b"chunked":
            body = _chunked(reader)
            # With a Content-Length as well, the answer is suspect (RFC 9112, 6.3): not reused.
            keep = keep and b"content-length" not in names
        else:
            body, keep = _until_closed(reader), False
    elif b"content-length" in names:
        body = _exactly(reader, _length(headers))
    else:
        body, keep = _until_closed(reader), False
    response = httpx.Response(
        status,
        headers=headers,
        stream=httpx.ByteStream(body),
        extensions={"http_version": version, "reason_phrase": reason},
    )
    return keep, response


def _line(reader: Any) -> bytes:
    line: bytes = reader.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise httpx.RemoteProtocolError("a line of the answer is longer than 64 KiB")
    return line


def _status_line(reader: Any) -> tuple[bytes, int, bytes]:
    line = _line(reader)
    if not line:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
    version, _, rest = line.rstrip(b"\r\n").partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise httpx.RemoteProtocolError(f"not an HTTP/1.1 status line: {line[:100]!r}")
    return version, int(code), reason


def _headers(reader: Any) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    while True:
        line = _line(reader)
        if line in (b"\r\n", b"\n"):
            return headers
        if not line.endswith(b"\n"):
            raise httpx.RemoteProtocolError("Server disconnected in the middle of the headers.")
        if line[:1] in (b" ", b"\t") and headers:  # an obsolete folded line: joined, as h11 does
            name, value = headers.pop()
            headers.append((name, value + b" " + line.strip()))
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise httpx.RemoteProtocolError(f"not a header line: {line[:100]!r}")
        headers.append((name, value.strip()))
        if len(headers) > _MAX_HEADERS:
            raise httpx.RemoteProtocolError(f"more than {_MAX_HEADERS} headers in the answer")


def _length(headers: list[tuple[bytes, bytes]]) -> int:
    values = {
        part.strip()
        for name, value in headers
        if name.lower() == b"content-length"
        for part in value.split(b",")
    }
    value = values.pop() if len(values) == 1 else b""
    if not value.isdigit():
        raise httpx.RemoteProtocolError("the answer's Content-Length is not one number")
    length = int(value)
    if length > _MAX_BODY:
        raise httpx.RemoteProtocolError(f"an answer of {length:,} bytes; the limit is 64 MiB")
    return length


def _exactly(reader: Any, length: int) -> bytes:
    data: bytes = reader.read(length)
    if len(data) < length:
        raise httpx.RemoteProtocolError("Server disconnected in the middle of the answer.")
    return data


def _chunked(reader: Any) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        size_text = _line(reader).split(b";", 1)[0].strip()
        if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
            raise httpx.RemoteProtocolError(f"not a chunk size: {size_text[:20]!r}")
        size = int(size_text, 16)
        if size == 0:
            break
        total += size
        if total > _MAX_BODY:
            raise httpx.RemoteProtocolError("a chunked answer over 64 MiB")
        chunks.append(_exactly(reader, size))
        if _line(reader) not in (b"\r\n", b"\n"):
            raise httpx.RemoteProtocolError("a chunk is longer than its size")
    _headers(reader)  # trailers, unused
    return b"".join(chunks)


def _until_closed(reader: Any) -> bytes:
    data: bytes = reader.read(_MAX_BODY + 1)
    if len(data) > _MAX_BODY:
        raise httpx.RemoteProtocolError("an answer over 64 MiB")
    return data


def _text(error: BaseException, step: str) -> str:
    return f"{step}: {error}" if str(error) else step
