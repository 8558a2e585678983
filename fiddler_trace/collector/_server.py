"""The collector's HTTP transport: a threaded, keep-alive server that stops promptly.

The handler only moves bytes: it asks :class:`~fiddler_trace.collector._api.EventsApp` about
the route and the token before reading a body (so a 404, 401 or 413 costs no upload), reads the
body (``Content-Length``, or chunked; ``gzip`` content encoding accepted), and writes the reply,
head and body in one write. Nagle is off: a response's last partial segment would otherwise wait
for the client's delayed ACK, ~40 ms per keep-alive request. The header block is parsed here
rather than by ``http.server``'s ``email``-based parser: the same values at under half the cost.

Stopping does not poll: the accept loop also watches a wake-up socket, and connections idle in
keep-alive are shut down so their threads end before the database is closed.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import selectors
import socket
import socketserver
import sys
import threading
import time
import traceback
import zlib
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import SplitResult, urlsplit

from fiddler_trace._version import __version__
from fiddler_trace.collector._api import EventsApp, Reply, error_reply
from fiddler_trace.collector._validate import ValidationError

__all__ = ["CollectorServer"]

_LINE_BYTES = 65537  # the longest chunk-size or trailer line read, as http.server does
_MAX_HEADER_LINE, _MAX_HEADERS = 65536, 100  # http.client's limits
# The email feed parser's line ends and field-line pattern (email.feedparser.headerRE).
_LINE_END = re.compile(r"(\r\n|\r|\n)")
_FIELD_LINE = re.compile(r"From |[\041-\071\073-\176]*:|[\t ]")
_IDLE_TIMEOUT = 300.0  # seconds a connection may wait for its next request
# After refusing a body it did not read, the server reads and drops what the client still
# sends, up to these bounds, before closing: closing a socket with unread input sends a reset,
# and a client still writing its body would see that reset instead of the 413.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 256 * 2**20


_SERVER = f"fiddler-trace-collector/{__version__} Python/{sys.version.split()[0]}"
_date = (0, "")  # (epoch second, its HTTP date): formatting a date per response adds up


def _http_date() -> str:
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True))
    return _date[1]


def _http_version(text: str) -> Optional[tuple[int, int]]:
    """``(major, minor)`` of ``HTTP/x.y`` (RFC 2145: one dot, digits), or None if malformed."""
    if not text.startswith("HTTP/"):
        return None
    parts = text[5:].split(".")
    if len(parts) != 2 or not all(p.isdigit() and len(p) <= 10 for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def _read_headers(rfile: Any) -> http.client.HTTPMessage:
    """The header block as ``http.client.parse_headers`` reads and parses it, minus its cost.

    The same lines are read under the same limits, and split into fields by the rules of the
    ``email`` package's feed parser and its ``compat32`` policy (which ``parse_headers`` uses),
    so every request gets the header values it got before: a line that is not a field ends
    the block, a continuation line extends the previous value, names are kept as sent.
    """
    lines: list[bytes] = []
    while True:
        line = rfile.readline(_MAX_HEADER_LINE + 1)
        if len(line) > _MAX_HEADER_LINE:
            raise http.client.LineTooLong("header line")
        lines.append(line)
        if len(lines) > _MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {_MAX_HEADERS} headers")
        if line in (b"\r\n", b"\n", b""):
            break
    parts = _LINE_END.split(b"".join(lines).decode("iso-8859-1"))
    headers = http.client.HTTPMessage()
    name, value = "", ""  # the field being read, "" between fields
    for index in range(0, len(parts), 2):
        text = parts[index] + (parts[index + 1] if index + 1 < len(parts) else "")
        if not text or not _FIELD_LINE.match(text):
            break
        if text[0] in " \t":
            if name:
                value += text
            continue
        if name:
            headers.set_raw(name, value.rstrip("\r\n"))
            name = ""
        colon = text.find(":")
        if text.startswith("From ") or colon <= 0:
            continue  # an mbox "From " line, or a field without a name: no field
        name, value = text[:colon], text[colon + 1 :].lstrip(" \t")
    if name:
        headers.set_raw(name, value.rstrip("\r\n"))
    return headers


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class _BodyError(ValidationError):
    """The body could not be read as framed; the connection cannot be reused."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = _IDLE_TIMEOUT
    server: CollectorServer
    raw_requestline: bytes  # set by http.server before parse_request

    def setup(self) -> None:
        super().setup()
        threading.current_thread().name = "fiddler-trace-collector-connection"
        self.server.track(self.connection)
        self._unread_body = 0  # bytes of the current request's body left unread; -1: unknown

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def parse_request(self) -> bool:
        """http.server's request-line and header checks, with a plain header parser.

        ``http.server`` parses the header block with the ``email`` package; :func:`_read_headers`
        gives the same values at under half the cost. Same refusals: 400 for a bad request line,
        505 for HTTP/2+, 431 for a header line over 64 KiB or more than 100 header lines.
        """
        self.command = ""  # set in case of an error on the first line
        self.request_version = version = self.default_request_version
        self.close_connection = True
        requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        self.requestline = requestline
        words = requestline.split()
        if not words:
            return False
        if len(words) >= 3:
            version = words[-1]
            number = _http_version(version)
            if number is None:
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request version ({version!r})")
                return False
            if number >= (1, 1):
                self.close_connection = False
            if number >= (2, 0):
                self.send_error(
                    HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
                    f"Invalid HTTP version ({version.split('/', 1)[1]})",
                )
                return False
            self.request_version = version
        if not 2 <= len(words) <= 3:
            self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({requestline!r})")
            return False
        command, path = words[:2]
        if len(words) == 2:
            self.close_connection = True
            if command != "GET":
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad HTTP/0.9 request type ({command!r})")
                return False
        self.command = command
        # As http.server does: a leading '//' would read as a host to some clients.
        self.path = "/" + path.lstrip("/") if path.startswith("//") else path
        try:
            self.headers = _read_headers(self.rfile)
        except http.client.LineTooLong as exc:
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long", str(exc))
            return False
        except http.client.HTTPException as exc:
            self.send_error(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers", str(exc)
            )
            return False
        connection = (self.headers["Connection"] or "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        expect = (self.headers["Expect"] or "").lower()
        if expect == "100-continue" and self.request_version >= "HTTP/1.1":
            return self.handle_expect_100()
        return True

    def log_message(self, format: str, *args: Any) -> None:
        """Silence http.server's per-request stderr line; ``verbose`` logs through the app."""

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PATCH = do_DELETE = do_PUT = do_HEAD = do_OPTIONS = do_GET

    def _serve(self) -> None:
        started = time.perf_counter()
        self._unread_body = 0
        self.server.set_busy(self.connection, True)
        url = urlsplit(self.path)
        try:
            try:
                reply = self._reply(url)
            except _BodyError as exc:
                self.close_connection = True
                reply = error_reply(exc.status, exc.reason, exc.message)
            except ValidationError as exc:  # a readable body with a bad encoding
                reply = error_reply(exc.status, exc.reason, exc.message)
            except Exception as exc:
                # A bug or a database failure: say so to the client and keep the trace.
                traceback.print_exc()
                self.close_connection = True
                reply = error_reply(500, "internal_error", f"{type(exc).__name__}: {exc}")
            if self.server.stopping:
                reply.close = True
            elapsed = time.perf_counter() - started
            self.server.app.finished(self.command, url.path, reply, elapsed)
            self._send(reply)
            if self._unread_body and self.close_connection:
                self._linger()
        finally:
            self.server.set_busy(self.connection, False)

    def _reply(self, url: SplitResult) -> Reply:
        app, method = self.server.app, self.command
        path = url.path.rstrip("/") if url.path != "/" else url.path
        refusal = app.check_route(method, path) or app.check_auth(self.headers["Authorization"])
        if refusal is not None or method == "GET":
            self._skip_body()
            return refusal or app.handle(method, path, url.query, b"")
        return app.handle(method, path, url.query, self._read_body())

    def _read_body(self) -> bytes:
        limit = self.server.max_body_bytes
        encoding = (self.headers["Transfer-Encoding"] or "").strip().lower()
        if encoding == "chunked":
            raw = self._read_chunked(limit)
        elif encoding:
            self._unread_body = -1
            raise _BodyError(
                "unsupported_transfer_encoding",
                f"Transfer-Encoding {encoding!r} is not supported; send Content-Length",
                501,
            )
        else:
            # Without Content-Length or chunked framing an HTTP/1.1 request has no body; the
            # empty body then gets a 400 that says so, which helps more than a bare 411.
            length = self._content_length() or 0
            if length > limit:
                self._unread_body = length
                raise _BodyError(
                    "payload_too_large",
                    f"request body of {length} bytes exceeds the limit of {limit} bytes",
                    413,
                )
            raw = self.rfile.read(length)
            if len(raw) < length:
                raise _BodyError("invalid_body", "connection closed before the body was complete")
        return self._decode(raw, limit)

    def _content_length(self) -> Optional[int]:
        text = self.headers["Content-Length"]
        if text is None:
            return None
        text = text.strip()
        if not (text.isascii() and text.isdigit()):
            raise _BodyError("invalid_header", f"Content-Length {text!r} is not a byte count")
        return int(text)

    def _read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(_LINE_BYTES)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BodyError("invalid_body", "malformed chunked body") from None
            if size == 0:
                break
            total += size
            if total > limit:
                self._unread_body = -1
                raise _BodyError(
                    "payload_too_large",
                    f"chunked request body exceeds the limit of {limit} bytes",
                    413,
                )
            parts.append(self.rfile.read(size))
            self.rfile.readline(_LINE_BYTES)
        while self.rfile.readline(_LINE_BYTES) not in (b"\r\n", b"\n", b""):
            pass  # trailers carry nothing the collector needs
        return b"".join(parts)

    def _decode(self, raw: bytes, limit: int) -> bytes:
        encoding = (self.headers["Content-Encoding"] or "identity").strip().lower()
        if encoding == "identity":
            return raw
        if encoding != "gzip":
            raise ValidationError(
                "unsupported_content_encoding",
                f"Content-Encoding {encoding!r} is not supported; accepted: gzip, identity",
                415,
            )
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            # Bounded, so a small compressed body cannot expand past the limit in memory.
            data = inflater.decompress(raw, limit + 1)
        except zlib.error as exc:
            raise ValidationError("invalid_body", f"body is not valid gzip: {exc}") from None
        if len(data) > limit:
            raise ValidationError(
                "payload_too_large",
                f"decompressed request body exceeds the limit of {limit} bytes",
                413,
            )
        if not inflater.eof:
            raise ValidationError("invalid_body", "gzip body is truncated")
        return data

    def _skip_body(self) -> None:
        """Consume a body that will not be used, or give up the connection if that is costly."""
        try:
            length = self._content_length()
        except _BodyError:
            length = None
        chunked = (self.headers["Transfer-Encoding"] or "").strip()
        if chunked or (length is not None and length > self.server.max_body_bytes):
            self.close_connection = True
            self._unread_body = -1 if chunked or length is None else length
        elif length:
            self.rfile.read(length)

    def _linger(self) -> None:
        """Half-close, then drop what the client still sends (bounded) so it reads the reply."""
        budget = _LINGER_BYTES if self._unread_body < 0 else min(self._unread_body, _LINGER_BYTES)
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(_LINGER_SECONDS)
            deadline = time.monotonic() + _LINGER_SECONDS
            while budget > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(budget, 2**16))
                if not chunk:
                    break
                budget -= len(chunk)
        except OSError:
            pass  # the client closed or reset first: nothing left to protect

    def _send(self, reply: Reply) -> None:
        # One write for head and body: written apart, each wakes the client for a fraction of
        # the response, which on a loaded machine costs more than the copy.
        close = reply.close or self.close_connection
        lines = [
            f"{self.protocol_version} {reply.status} {_phrase(reply.status)}\r\n"
            f"Server: {_SERVER}\r\nDate: {_http_date()}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(reply.body)}\r\n"
        ]
        lines.extend(f"{name}: {value}\r\n" for name, value in reply.headers)
        if close:
            self.close_connection = True
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        # An HTTP/0.9 request gets a bare body, as http.server answers it.
        head = b"" if self.request_version == "HTTP/0.9" else "".join(lines).encode("latin-1")
        self.wfile.write(head if self.command == "HEAD" else head + reply.body)

    def send_error(
        self, code: int, message: Optional[str] = None, explain: Optional[str] = None
    ) -> None:
        """Answer http.server's own errors (bad request line, unknown method) in the envelope."""
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        reply = error_reply(code, phrase.lower().replace(" ", "_"), message or phrase)
        # No path yet when the request line itself is refused.
        self.server.app.finished(str(self.command), getattr(self, "path", ""), reply, 0.0)
        with contextlib.suppress(OSError):  # the client is gone: nothing left to tell it
            self._send(reply)


class CollectorServer(ThreadingHTTPServer):
    """A :class:`ThreadingHTTPServer` serving an :class:`EventsApp`, with a prompt stop.

    Call :meth:`serve` on a thread, then :meth:`stop_serving`, join that thread, and
    :meth:`close`.
    """

    daemon_threads = True
    # handle_request() is only called once the listener is readable, so it returns at once;
    # the timeout bounds the rare case of a client that connects and resets before accept().
    timeout = 1.0

    def __init__(self, host: str, port: int, app: EventsApp, *, max_body_bytes: int) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.stopping = False
        self._connections: dict[socket.socket, bool] = {}  # socket -> busy with a request
        self._connections_changed = threading.Condition()
        self._wake_reader, self._wake_writer = socket.socketpair()
        try:
            super().__init__((host, port), _Handler)
        except BaseException:
            self._wake_reader.close()
            self._wake_writer.close()
            raise

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can take seconds of DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client drops its connection; print anything else."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def serve(self) -> None:
        """Accept connections until :meth:`stop_serving`; each is served on its own thread."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while not self.stopping:
                for key, _ in selector.select():
                    if key.fileobj is self.socket and not self.stopping:
                        self.handle_request()

    def stop_serving(self) -> None:
        """Make :meth:`serve` return; requests in flight still finish."""
        self.stopping = True
        with contextlib.suppress(OSError):  # already closed: serve() has nothing to wake
            self._wake_writer.send(b"\0")

    def close(self, drain_timeout: float = 2.0) -> None:
        """Close the listener, end idle connections, wait up to ``drain_timeout`` for busy ones.

        Busy connections answer their request with ``Connection: close``; any left after the
        wait are shut down.
        """
        self.stopping = True
        self.server_close()
        self._shutdown_connections(idle_only=True)
        with self._connections_changed:
            drained = self._connections_changed.wait_for(
                lambda: not self._connections, drain_timeout
            )
        if not drained:
            self._shutdown_connections(idle_only=False)
        self._wake_reader.close()
        self._wake_writer.close()

    def _shutdown_connections(self, *, idle_only: bool) -> None:
        with self._connections_changed:
            for sock, busy in list(self._connections.items()):
                if busy and idle_only:
                    continue
                with contextlib.suppress(OSError):  # already closed by the peer
                    sock.shutdown(socket.SHUT_RDWR)

    def track(self, sock: socket.socket) -> None:
        """Register a connection served by a handler thread."""
        with self._connections_changed:
            self._connections[sock] = False

    def untrack(self, sock: socket.socket) -> None:
        """Forget a connection whose handler thread is done."""
        with self._connections_changed:
            self._connections.pop(sock, None)
            self._connections_changed.notify_all()

    def set_busy(self, sock: socket.socket, busy: bool) -> None:
        """Mark a connection as serving a request (not to be cut off by a stop) or idle."""
        with self._connections_changed:
            if sock in self._connections:
                self._connections[sock] = busy
