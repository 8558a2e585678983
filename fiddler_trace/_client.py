"""EventsClient: the synchronous, low-level client for Fiddler's ``/v3/events``."""

from __future__ import annotations

import datetime as dt
import encodings.idna  # noqa: F401  (see httpcore below)
import platform
import ssl
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Optional, Union

# httpx imports httpcore (and h11, certifi; the socket module imports the idna codec) only when
# the first client is built: on the worker's first request. There, every file read of those
# ~40 modules gives up the GIL, and a busy caller thread then holds it for a switch interval
# (5 ms): that import took ~1 s (measured) while the queue filled with raw events, the peak of
# the memory held. Imported with the library instead: ~20 ms, once, on no caller's call.
import httpcore  # noqa: F401
import httpx
import orjson

from fiddler_trace import _wire
from fiddler_trace._encode import dumps
from fiddler_trace._transport import EventsTransport
from fiddler_trace._version import __version__
from fiddler_trace._wire import Job

__all__ = ["EventsClient", "Job", "user_agent"]

TimeBound = Union[dt.datetime, str]


def user_agent() -> str:
    """``fiddler-trace/<version> python/<x.y>``."""
    major, minor, _ = platform.python_version_tuple()
    return f"fiddler-trace/{__version__} python/{major}.{minor}"


class EventsClient:
    """Synchronous client for ``/v3/events``: publish, update and delete events.

    One request per call of a method, or several when the events exceed a request's limits
    (1000 events, ``max_request_bytes``). It does not retry: the background pipeline does that;
    errors reach the caller. Thread-safe, as the underlying ``httpx.Client`` is.

    Args:
        url: the Fiddler instance, e.g. ``https://acme.fiddler.ai``.
        token: API token, sent as ``Authorization: Bearer``; never shown in reprs or errors.
        timeout: seconds per request.
        verify: TLS verification; ``True``, ``False``, the path of a CA bundle (PEM) or an
            ``ssl.SSLContext``.
        transport: an ``httpx`` transport, e.g. ``httpx.MockTransport`` in tests. By default
            the library's own HTTP/1.1 transport, or httpx's when a proxy from the environment
            applies to ``url``.
        max_request_bytes: the most encoded event bytes in one request.

    Raises:
        FiddlerAPIError: from each method, when the server answers 4xx or 5xx.
        httpx.TransportError: from each method, when the server cannot be reached or times out.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 10.0,
        verify: Union[bool, str, ssl.SSLContext] = True,
        transport: Optional[httpx.BaseTransport] = None,
        max_request_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.url = url.rstrip("/")
        self._max_request_bytes = max_request_bytes
        may_use_tls = _may_use_tls(self.url)
        # A CA bundle is read (or refused) here, once.
        tls = _tls(verify) if verify is not True or may_use_tls else False
        if transport is None and not _proxied(self.url):
            # Ours, unless a proxy from the environment applies: httpx's speaks to proxies.
            transport = EventsTransport(_ssl_context(tls) if may_use_tls else None)
        self._http = httpx.Client(
            base_url=self.url,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": user_agent(),
            },
            timeout=timeout,
            verify=tls,  # for httpx's transport; ours has its context
            transport=transport,
        )
        # Merged once: Client.request merges the client's URL, headers and timeout anew for
        # every request, ~15% of a request's CPU (measured), always to the same result.
        self._events_url = self._http.build_request("POST", _wire.EVENTS_PATH).url
        self._extensions = {"timeout": self._http.timeout.as_dict()}
        if type(getattr(self._http, "_cookies", None)) is httpx.Cookies:
            self._http._cookies = _ReadSetCookieOnly(self._http._cookies)

    def __repr__(self) -> str:
        return f"EventsClient(url={self.url!r})"

    def __enter__(self) -> EventsClient:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool. Idempotent."""
        self._http.close()

    def send(
        self, method: str, body: bytes, *, headers: Optional[Mapping[str, str]] = None
    ) -> httpx.Response:
        """Send one pre-encoded request to ``/v3/events``; raise for an error status.

        The seam the background worker uses, so that it sends exactly what this client sends.
        """
        merged = self._http.headers
        if headers:
            merged = httpx.Headers(merged)
            merged.update(headers)
        request = httpx.Request(
            method,
            self._events_url,
            content=body,
            headers=merged,
            cookies=self._http.cookies,  # sent back as Client.request does (a load balancer)
            extensions=self._extensions,
        )
        response = self._http.send(request)
        if not response.is_success:
            raise _wire.error_from_response(response)
        return response

    def publish(
        self,
        model_id: str,
        events: Iterable[Mapping[str, Any]],
        *,
        env_type: str = "PRODUCTION",
        env_name: Optional[str] = None,
    ) -> list[str]:
        """Publish events (``POST``); return the server's event ids, in order.

        Events stream only to ``PRODUCTION``: Fiddler takes pre-production data as files
        (:meth:`publish_file`).
        """
        if env_type != "PRODUCTION":
            raise ValueError(
                f"env_type {env_type!r} cannot take streamed events; accepted: 'PRODUCTION' "
                "(pre-production data goes through publish_file)"
            )
        return self._send_events("POST", model_id, events, env_type, env_name)

    def update(
        self,
        model_id: str,
        events: Iterable[Mapping[str, Any]],
        *,
        env_type: str = "PRODUCTION",
        env_name: Optional[str] = None,
    ) -> list[str]:
        """Update published events (``PATCH``): each holds the event id column and the changes."""
        if env_type not in _wire.ENV_TYPES:
            raise ValueError(f"env_type {env_type!r}; accepted: {', '.join(_wire.ENV_TYPES)}")
        return self._send_events("PATCH", model_id, events, env_type, env_name)

    def publish_file(
        self,
        model_id: str,
        file_id: str,
        *,
        env_type: str = "PRE_PRODUCTION",
        env_name: Optional[str] = None,
    ) -> Job:
        """Publish a file already uploaded to Fiddler; return the ingestion job."""
        if env_type not in _wire.ENV_TYPES:
            raise ValueError(f"env_type {env_type!r}; accepted: {', '.join(_wire.ENV_TYPES)}")
        body: dict[str, Any] = {
            "model_id": _wire.check_model_id(model_id),
            "env_type": env_type,
            "source": {"type": "FILE", "file_id": _file_id(file_id)},
        }
        if env_name is not None:
            body["env_name"] = env_name
        return _wire.job_from(_wire.response_data(self.send("POST", orjson.dumps(body))))

    def delete(
        self,
        model_id: str,
        *,
        event_ids: Optional[Sequence[str]] = None,
        start_time: Optional[TimeBound] = None,
        end_time: Optional[TimeBound] = None,
        update_metrics: bool = False,
    ) -> list[Job]:
        """Delete events by ids or by a time range (``DELETE``); return the jobs, one a request.

        Ids go 10,000 to a request. Refuses before sending, with a ValueError that says why: no
        filter (it would delete everything), ids and a range together, one end of a range alone,
        naive datetimes, ``update_metrics=True`` with ids.
        """
        bodies = delete_bodies(
            model_id,
            event_ids=event_ids,
            start_time=start_time,
            end_time=end_time,
            update_metrics=update_metrics,
        )
        return [
            _wire.job_from(_wire.response_data(self.send("DELETE", orjson.dumps(b))))
            for b in bodies
        ]

    def _send_events(
        self,
        method: str,
        model_id: str,
        events: Iterable[Mapping[str, Any]],
        env_type: str,
        env_name: Optional[str],
    ) -> list[str]:
        model_id = _wire.check_model_id(model_id)
        encoded = [dumps(dict(event)) for event in events]
        ids: list[str] = []
        for run in _wire.chunks(encoded, _wire.MAX_EVENTS_PER_REQUEST, self._max_request_bytes):
            body = _wire.publish_body(
                model_id, b",".join(run), env_type=env_type, env_name=env_name
            )
            data = _wire.response_data(self.send(method, body))
            ids.extend(str(i) for i in data.get("event_ids") or ())
        return ids


class _ReadSetCookieOnly(httpx.Cookies):
    """The client's cookie jar, read only from responses that set a cookie.

    httpx hands every response to ``http.cookiejar``, which first builds a urllib request and an
    email message from it: ~15% of a request's CPU (measured), for responses that set no cookie.
    """

    def __init__(self, cookies: httpx.Cookies) -> None:
        super().__init__()
        self.jar = cookies.jar

    def extract_cookies(self, response: httpx.Response) -> None:
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            super().extract_cookies(response)


def _tls(verify: Union[bool, str, ssl.SSLContext]) -> Union[bool, ssl.SSLContext]:
    """httpx wants an SSLContext for a CA bundle; build one, failing here if the file is bad."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify


def _ssl_context(tls: Union[bool, ssl.SSLContext]) -> ssl.SSLContext:
    """The TLS context for what :func:`_tls` gave, as httpx builds it (``True``: certifi's
    bundle, or ``SSL_CERT_FILE``/``SSL_CERT_DIR`` when set)."""
    return tls if isinstance(tls, ssl.SSLContext) else httpx.create_ssl_context(verify=tls)


def _proxied(url: str) -> bool:
    """A proxy from the environment may apply to ``url`` (what httpx's ``trust_env`` reads).
    ``NO_PROXY`` is not consulted: httpx's own transport then decides, as it always did."""
    scheme = url.split(":", 1)[0].lower()
    proxies = urllib.request.getproxies()
    return scheme in proxies or "all" in proxies


def _may_use_tls(url: str) -> bool:
    """False for an ``http://`` URL reached without a proxy: such a client never makes a TLS
    connection, and the CA bundle that ``verify=True`` loads costs each client 35-65 ms
    (measured), paid by every pipeline a process or a test suite starts. A proxy from the
    environment may itself be ``https://``: then the default stands."""
    return not url.lower().startswith("http://") or _proxied(url)


def _file_id(file_id: str) -> str:
    try:
        return _wire.check_model_id(file_id)
    except ValueError:
        raise ValueError(f"file_id {file_id!r} is not a UUID") from None


def delete_bodies(
    model_id: str,
    *,
    event_ids: Optional[Sequence[str]],
    start_time: Optional[TimeBound],
    end_time: Optional[TimeBound],
    update_metrics: bool,
) -> list[dict[str, Any]]:
    """Validated ``DeleteEventsRequest`` bodies; raises ValueError before anything is sent."""
    model_id = _wire.check_model_id(model_id)
    has_range = start_time is not None or end_time is not None
    if not isinstance(update_metrics, bool):
        raise ValueError(f"update_metrics is {update_metrics!r}; accepted: True or False")
    if event_ids is not None and has_range:
        raise ValueError("give event_ids or start_time/end_time, not both")
    if event_ids is None and not has_range:
        raise ValueError(
            "no filter given: that would delete every event of the model; pass event_ids, or "
            "both start_time and end_time"
        )
    if event_ids is not None:
        if isinstance(event_ids, str):
            raise ValueError("event_ids is a string; accepted: a list of event id strings")
        ids = [str(i) for i in event_ids]
        if not ids:
            raise ValueError("event_ids is empty; accepted: at least one event id")
        if update_metrics:
            raise ValueError(
                "update_metrics=True works only with a time range; accepted with event_ids: False"
            )
        return [
            {
                "model_id": model_id,
                "event_ids": ids[i : i + _wire.MAX_DELETE_IDS],
                "update_metrics": False,
            }
            for i in range(0, len(ids), _wire.MAX_DELETE_IDS)
        ]
    if start_time is None or end_time is None:
        missing = "end_time" if end_time is None else "start_time"
        raise ValueError(f"a time range needs both ends; {missing} is missing")
    start = _wire.utc_time("start_time", start_time)
    end = _wire.utc_time("end_time", end_time)
    if start >= end:
        raise ValueError(f"start_time {start} is not before end_time {end}")
    return [
        {
            "model_id": model_id,
            "time_range": {"start_time": start, "end_time": end},
            "update_metrics": update_metrics,
        }
    ]
