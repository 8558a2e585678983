"""The events client's own HTTP/1.1 transport, over loopback sockets: framing, keep-alive,
TLS, timeouts, proxies, forks; against a server that answers with scripted bytes."""

from __future__ import annotations

import gc
import gzip
import os
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, Optional

import httpx
import orjson
import pytest
import trustme

from fiddler_trace import EventsClient, FiddlerAPIError
from fiddler_trace._transport import EventsTransport

MODEL = "6f1c0f0e-1111-4222-8333-444455556666"
TOKEN = "tok-0123456789-secret"
ANSWER = orjson.dumps({"kind": "NORMAL", "data": {"source_type": "EVENTS", "event_ids": ["a"]}})


def answer(body: bytes = ANSWER, *, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status.encode(),
        len(body),
        extra,
        body,
    )


class Closing(bytes):
    """Scripted bytes after which the server closes the connection."""


class ScriptedServer:
    """Accepts connections on 127.0.0.1; answers each request with the next scripted bytes
    (the default: a 200 with a Content-Length), or closes the connection on ``None``."""

    def __init__(self, tls: Optional[ssl.SSLContext] = None, receive_buffer: int = 0) -> None:
        self.script: deque[Optional[bytes]] = deque()  # Closing: then close
        self.requests: list[tuple[int, bytes, bytes]] = []  # (connection, head, body)
        self.connections = 0
        self.closed = 0  # connections this server closed
        self.close_after_answer = False
        self.before_body: Optional[bytes] = None
        self.read_pace: Optional[tuple[int, float]] = None  # bytes per read, pause after each
        self._closing = False
        self._tls = tls
        self._listener = socket.socket()
        if receive_buffer:  # set before listen(): connections take it, and the window, from it
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self._open: list[socket.socket] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self._listener.getsockname()[1]}"

    def wait_for_closed(self, count: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.closed >= count, 10.0)

    def close(self) -> None:
        with self._changed:
            self._closing = True  # a connection accepted from now on is closed at once
            self._listener.close()
            accepted = list(self._open)
        for sock in accepted:
            with _suppressed():
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            if self._tls is not None:
                try:
                    sock = self._tls.wrap_socket(sock, server_side=True)
                except (OSError, ssl.SSLError):
                    sock.close()
                    continue
            with self._changed:
                if self._closing:
                    sock.close()
                    return
                self.connections += 1
                self._open.append(sock)
            threading.Thread(target=self._serve, args=(sock, self.connections), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        reader = sock.makefile("rb")
        with _suppressed():
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                if self.before_body is not None:  # answers without reading the body
                    sock.sendall(self.before_body)
                    reader.close()
                    sock.close()
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if self.read_pace is None:
                    body = reader.read(length)
                else:  # a slow link
                    step, pause = self.read_pace
                    parts = []
                    while sum(map(len, parts)) < length:
                        parts.append(reader.read(min(step, length - sum(map(len, parts)))))
                        time.sleep(pause)
                    body = b"".join(parts)
                with self._changed:
                    self.requests.append((number, head, body))
                    self._changed.notify_all()
                reply = self.script.popleft() if self.script else answer()
                if reply is not None:
                    sock.sendall(reply)
                if reply is None or isinstance(reply, Closing) or self.close_after_answer:
                    reader.close()  # the socket's file descriptor stays open while it is
                    sock.close()
                    with self._changed:
                        self.closed += 1
                        self._changed.notify_all()
                    return


class _suppressed:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    running = ScriptedServer()
    yield running
    running.close()


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def publish(client: EventsClient) -> list[str]:
    return client.publish(MODEL, [{"x": 1}])


def test_the_events_client_uses_it_and_reuses_one_connection(server):
    """Without a proxy the client sends through this transport, on one kept-alive connection;
    the request is the contract's, headers and body whole."""
    with EventsClient(server.url, TOKEN) as client:
        assert type(client._http._transport) is EventsTransport
        for _ in range(3):
            assert publish(client) == ["a"]
    assert server.connections == 1
    _, head, body = server.requests[0]
    assert head.startswith(b"POST /v3/events HTTP/1.1\r\n")
    assert f"Authorization: Bearer {TOKEN}".encode() in head
    assert b"Host: 127.0.0.1:" in head
    assert orjson.loads(body)["source"]["events"] == [{"x": 1}]


def test_a_large_body_arrives_whole(server):
    """A body past the single-write size goes out as head and body: the server gets all of it."""
    events = [{"x": i, "text": "y" * 100} for i in range(2_000)]
    with EventsClient(server.url, TOKEN) as client:
        client.publish(MODEL, events)
    sent = [
        event for _, _, body in server.requests for event in orjson.loads(body)["source"]["events"]
    ]
    assert sent == events


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(
                b"%x;ext=1\r\n%s\r\n" % (len(part), part) for part in (ANSWER[:10], ANSWER[10:])
            )
            + b"0\r\nX-Trailer: 1\r\n\r\n",
            id="chunked",
        ),
        pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(), id="100-continue first"),
        pytest.param(answer(gzip.compress(ANSWER), extra=b"Content-Encoding: gzip\r\n"), id="gzip"),
        pytest.param(answer(extra=b"X-Many: 1\r\n" * 50), id="many headers"),
        pytest.param(answer(extra=b"X-Folded: a\r\n  b\r\n"), id="a folded header"),
    ],
)
def test_framings_of_an_answer_that_keep_the_connection(server, reply):
    server.script.extend([reply, answer()])
    with EventsClient(server.url, TOKEN) as client:
        assert publish(client) == ["a"]
        assert publish(client) == ["a"]  # the connection stays in step
    assert server.connections == 1


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(answer(extra=b"Connection: close\r\n"), id="Connection: close"),
        pytest.param(answer().replace(b"HTTP/1.1", b"HTTP/1.0"), id="HTTP/1.0"),
        pytest.param(b"HTTP/1.1 200 OK\r\n\r\n" + ANSWER, id="no length: until closed"),
    ],
)
def test_answers_that_end_the_connection(server, reply):
    """An answer that ends its connection is read whole; the next request opens a new one."""
    server.script.append(reply)
    server.close_after_answer = True
    with EventsClient(server.url, TOKEN) as client:
        assert publish(client) == ["a"]
        server.close_after_answer = False
        assert publish(client) == ["a"]
    assert server.connections == 2


def test_an_answer_with_both_framings_is_read_chunked_and_its_connection_not_reused(server):
    """Transfer-Encoding and Content-Length together (RFC 9112, 6.3): the chunks are the body,
    and the connection, whose next bytes are in doubt, is not used again."""
    server.script.append(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(ANSWER), ANSWER)
    )
    with EventsClient(server.url, TOKEN) as client:
        assert publish(client) == ["a"]
        assert publish(client) == ["a"]
    assert server.connections == 2


def test_a_connection_the_server_closed_while_idle_is_not_used(server):
    """The server closing a kept-alive connection between requests (its idle timeout) costs
    no failed request: the transport sees it closed and connects again."""
    server.close_after_answer = True
    with EventsClient(server.url, TOKEN) as client:
        assert publish(client) == ["a"]
        for closed in range(1, 4):
            assert server.wait_for_closed(closed)  # closed before the next request starts
            assert publish(client) == ["a"]
    assert server.connections == 4


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (None, "Server disconnected without sending a response"),
        (Closing(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}"), "in the middle of the answer"),
        (Closing(b"HTTP/1.1 200 OK\r\nContent-Le"), "in the middle of the headers"),
        (b"SPDY/3 200 OK\r\n\r\n", "not an HTTP/1.1 status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\n{}", "not one number"),
        (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "not a header line"),  # folds nothing
        (b"HTTP/1.1 200 OK\r\nnot a header\r\n\r\n", "not a header line"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x7\r\n",
            "not a chunk size",
        ),
        (b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 101 + b"\r\n", "more than 100 headers"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000 + b"\r\n\r\n", "longer than 64 KiB"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "not a chunk size"),
    ],
)
def test_a_broken_answer_is_a_protocol_error_and_the_connection_is_dropped(server, reply, error):
    """What the pipeline retries (an httpx transport error), naming what was wrong; the next
    request goes on a new connection."""
    server.script.append(reply)
    with EventsClient(server.url, TOKEN) as client:
        with pytest.raises(httpx.RemoteProtocolError, match=error):
            publish(client)
        assert publish(client) == ["a"]
    assert server.connections == 2


def test_an_answer_sent_before_the_body_was_read_is_seen():
    """A server refusing a body over its limit may answer 413 after the head and close with the
    body unread; the client's write fails, and the 413 is still what the caller gets (the
    pipeline splits the batch on it, where a transport error would only be retried)."""
    server = ScriptedServer(receive_buffer=16 * 1024)  # the client's write must fail
    server.before_body = answer(
        b'{"kind":"ERROR","error":{"code":413}}',
        status="413 Content Too Large",
        extra=b"Connection: close\r\n",
    )
    events = [{"x": "y" * 16_000} for _ in range(1_000)]  # one request of 16 MB
    client = EventsClient(server.url, TOKEN, max_request_bytes=64 * 1024 * 1024)
    try:
        with pytest.raises(FiddlerAPIError) as caught:
            client.publish(MODEL, events)
    finally:
        client.close()
        server.close()
    assert caught.value.status == 413


def test_an_error_status_keeps_the_connection(server):
    server.script.append(
        answer(b'{"kind":"ERROR","error":{"code":503}}', status="503 Service Unavailable")
    )
    with EventsClient(server.url, TOKEN) as client:
        with pytest.raises(FiddlerAPIError) as caught:
            publish(client)
        assert caught.value.status == 503
        assert publish(client) == ["a"]
    assert server.connections == 1


def test_a_server_that_does_not_answer_times_out(server):
    """The client's timeout bounds the wait for an answer: a ReadTimeout, which the pipeline
    retries."""
    server.script.append(b"")  # answers nothing and keeps the connection open
    with EventsClient(server.url, TOKEN, timeout=0.2) as client, pytest.raises(httpx.ReadTimeout):
        publish(client)


def test_a_connect_that_times_out_is_a_connect_timeout(monkeypatch):
    def create_connection(*args: Any, **kwargs: Any) -> None:
        raise socket.timeout("timed out")

    monkeypatch.setattr(socket, "create_connection", create_connection)
    with EventsClient("http://127.0.0.1:9", TOKEN) as client, pytest.raises(httpx.ConnectTimeout):
        publish(client)


def test_a_slow_upload_that_makes_progress_does_not_time_out():
    """The write timeout bounds each write, as httpx's transport does, not the whole body: a
    batch larger than the socket buffers, read by the server slower than the timeout allows
    for all of it, still arrives (before, every attempt timed out on such a link)."""
    server = ScriptedServer(receive_buffer=16 * 1024)
    server.read_pace = (256 * 1024, 0.02)  # ~12 MB/s: the 8 MB body takes ~0.65 s
    events = [{"x": "y" * 8_000} for _ in range(1_000)]
    try:
        with EventsClient(server.url, TOKEN, timeout=0.3, max_request_bytes=16 << 20) as client:
            client.publish(MODEL, events)
    finally:
        server.close()
    assert len(orjson.loads(server.requests[0][2])["source"]["events"]) == 1_000


def test_a_closed_port_is_a_connect_error():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with (
        EventsClient(f"http://127.0.0.1:{port}", TOKEN) as client,
        pytest.raises(httpx.ConnectError),
    ):
        publish(client)


def test_a_request_it_cannot_frame_is_refused_before_connecting(server, monkeypatch):
    """A line break in a header (an injected header), or a streamed body (which httpx marks
    ``Transfer-Encoding: chunked`` and the events client never sends): refused before any
    connection is made."""
    connected: list[Any] = []
    monkeypatch.setattr(socket, "create_connection", lambda *args, **kw: connected.append(args))
    transport = EventsTransport()
    injected = httpx.Request("POST", f"{server.url}/v3/events", content=b"{}")
    injected.headers._list.append((b"X-Bad", b"x-bad", b"a\r\nInjected: 1"))
    streamed = httpx.Request("POST", f"{server.url}/v3/events", content=iter([b"{}"]))
    for request in (injected, streamed):
        with pytest.raises(httpx.LocalProtocolError):
            transport.handle_request(request)
    transport.close()
    assert connected == []


def test_an_idle_connection_older_than_httpx_keeps_one_is_not_used(server):
    """A load balancer or firewall may drop an idle connection without closing it: past 5 s
    idle (httpx's keepalive_expiry) the transport connects anew instead of waiting out the
    read timeout on a dead one."""
    now = [100.0]
    transport = EventsTransport(clock=lambda: now[0])
    with EventsClient(server.url, TOKEN, transport=transport) as client:
        assert publish(client) == ["a"]
        now[0] += 4.9
        assert publish(client) == ["a"]  # reused
        now[0] += 5.1
        assert publish(client) == ["a"]
    assert [number for number, _, _ in server.requests] == [1, 1, 2]


def test_close_while_a_connection_is_given_back_closes_it(server):
    """``close()`` from another thread, between a finished request's check that the transport
    is open and its connection going back to the idle list, still closes that connection."""

    def close_now() -> float:  # the clock is read right there, so close() runs at that point
        transport.close()
        return 0.0

    transport = EventsTransport(clock=close_now)
    made: list[Any] = []
    connect = transport._connect
    transport._connect = lambda *args: made.append(connect(*args)) or made[-1]  # type: ignore[method-assign]
    with EventsClient(server.url, TOKEN, transport=transport) as client:
        assert publish(client) == ["a"]
    assert len(made) == 1
    assert made[0].sock.fileno() == -1  # closed, not left in a list nothing will close
    assert all(not idle for idle in transport._idle.values())


def test_an_international_host_name_is_reached_by_its_ascii_form(monkeypatch):
    """The host connected to, and named to TLS, is the IDNA 2008 form httpx writes in the Host
    header, not Python's older encoding, which takes ``faß.de`` to ``fass.de``."""
    reached: list[tuple[str, int]] = []

    def create_connection(address: tuple[str, int], timeout: Optional[float] = None) -> None:
        reached.append(address)
        raise ConnectionRefusedError("not here")

    monkeypatch.setattr(socket, "create_connection", create_connection)
    with EventsClient("https://faß.de", TOKEN) as client, pytest.raises(httpx.ConnectError):
        publish(client)
    assert reached == [("xn--fa-hia.de", 443)]


def test_threads_share_it_and_few_connections_stay_open(server):
    """Requests from many threads each get a connection of their own; at most four stay idle."""
    transport = EventsTransport()
    with EventsClient(server.url, TOKEN, transport=transport) as client:
        errors: list[BaseException] = []

        def send() -> None:
            try:
                for _ in range(20):
                    assert publish(client) == ["a"]
            except BaseException as error:  # reported below
                errors.append(error)

        threads = [threading.Thread(target=send) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(server.requests) == 160
        assert sum(len(idle) for idle in transport._idle.values()) <= 4


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+ warns on fork with threads
def test_a_forked_child_opens_its_own_connection(server):
    """A child never writes on its parent's kept-alive socket: it closes its copy (no socket
    left to the garbage collector) and connects anew; the parent's connection goes on
    working."""
    with EventsClient(server.url, TOKEN) as client:
        assert publish(client) == ["a"]
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            unraisable: list[Any] = []  # e.g. a ResourceWarning for a socket left to the GC
            sys.unraisablehook = unraisable.append
            try:
                code = 0 if publish(client) == ["a"] else 1
                gc.collect()
                code = code or (3 if unraisable else 0)
            except BaseException:
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert publish(client) == ["a"]
    assert server.connections == 2
    assert [number for number, _, _ in server.requests] == [1, 2, 1]


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(authority: trustme.CA) -> Iterator[ScriptedServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    running = ScriptedServer(tls=context)
    yield running
    running.close()


def test_tls_with_the_ca_bundle_given_by_verify(tls_server, authority, tmp_path):
    """https:// goes through this transport too, verified against verify='bundle.pem'."""
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    with EventsClient(tls_server.url, TOKEN, verify=str(bundle)) as client:
        assert type(client._http._transport) is EventsTransport
        assert publish(client) == ["a"]
        assert publish(client) == ["a"]
    assert tls_server.connections == 1
    assert f"Bearer {TOKEN}".encode() in tls_server.requests[0][1]


def test_tls_to_an_untrusted_server_fails_to_connect(tls_server):
    """The default trust store does not know the test authority: a ConnectError, before any
    byte of the request (the token) is sent."""
    with (
        EventsClient(tls_server.url, TOKEN) as client,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        publish(client)
    assert tls_server.requests == []


def test_tls_without_verification_when_asked(tls_server):
    with EventsClient(tls_server.url, TOKEN, verify=False) as client:
        assert publish(client) == ["a"]


@pytest.mark.parametrize(
    ("url", "variable", "ours"),
    [
        ("http://127.0.0.1:9", None, True),
        ("https://fiddler.example", None, True),
        ("http://127.0.0.1:9", "HTTP_PROXY", False),
        ("http://127.0.0.1:9", "all_proxy", False),
        ("https://fiddler.example", "HTTPS_PROXY", False),
        ("https://fiddler.example", "HTTP_PROXY", True),  # a proxy for the other scheme
    ],
)
def test_a_proxy_from_the_environment_leaves_the_request_to_httpx(monkeypatch, url, variable, ours):
    """httpx's own transport speaks to proxies; this one does not, so it is used only where no
    proxy variable applies."""
    if variable is not None:
        monkeypatch.setenv(variable, "http://proxy.example:3128")
    with EventsClient(url, TOKEN) as client:
        assert (type(client._http._transport) is EventsTransport) is ours
