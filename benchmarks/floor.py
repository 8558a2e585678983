"""The floor under the figures of ``hotpath.py``: the least any pure-Python capture costs.

Two references, timed in the same process and the same way as ``@monitor``:

- **pass-through**: a ``wrapt.FunctionWrapper`` whose wrapper only calls the function. Every
  decorator built on wrapt pays this before it does anything. It wraps the function as
  ``@monitor`` does, with wrapt's ``__self__`` probe answered (``_probe_free``): without that,
  wrapt's C wrapper builds and clears an AttributeError on every call, ~0.45 µs.
- **minimal capture**: the same wrapper, which also takes 128 random bits and the time and
  appends ``(bits, time, args, result)`` to a deque; a worker thread turns each into a dict
  (inputs by name, the dict result merged, bits and time added), encodes 1,000 at a time with
  one orjson call and POSTs them over one keep-alive ``http.client`` connection.

The minimal capture cuts every corner ``@monitor`` may not: no ids for ``update()`` or
``last_event_id()``, no sampling, OpenTelemetry, redaction, limits, retries or stats, the id sent
as a number and the time as a float. So it bounds any real implementation from below: a target
it misses in a run, no capture built on wrapt could meet in that run.
"""

from __future__ import annotations

import collections
import contextvars
import datetime as dt
import http.client
import random
import socket
import threading
import time
import timeit
import uuid
from itertools import repeat
from typing import Any, Callable, Optional

import orjson
import wrapt
from opentelemetry import trace

from fiddler_trace._monitor import _probe_free

__all__ = ["ISSUE_REFERENCE_US", "MinimalPipeline", "pass_through", "reference_operations"]

#: The operations issue #7 timed "for scale" on the machine its targets were set on, µs each.
ISSUE_REFERENCE_US = {
    "bare call": 0.13,
    "wrapt pass-through, added": 0.47,
    "str(uuid.uuid4())": 2.0,
    "v4 string from getrandbits": 0.57,
    "ISO timestamp": 1.0,
    "contextvar set + reset": 0.08,
    "current-span check": 0.18,
}

BATCH = 1000


def pass_through(func: Callable[..., Any], *, probe_free: bool = True) -> Callable[..., Any]:
    """``func`` behind a wrapt wrapper that does nothing else; ``probe_free=False``: wrapt as
    anyone would use it, the issue's "pass-through wrapt wrapper"."""

    def wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        return wrapped(*args, **kwargs) if kwargs else wrapped(*args)

    target = _probe_free(func) if probe_free else func
    return wrapt.FunctionWrapper(target, wrapper)  # type: ignore[no-any-return]


class MinimalPipeline:
    """The minimal capture: :meth:`wrap` a function of ``age, income, region, tenure, plan``
    returning a dict, then call it; :meth:`flush` waits until the worker has sent everything."""

    def __init__(self, url: str, model_id: str) -> None:
        self.queue: collections.deque[tuple[int, float, tuple, Any]] = collections.deque()
        self.sent = 0
        self._flushing = False  # send partial batches too, then set _drained
        self._wake = threading.Event()  # set by flush() only: producers never wake the worker
        self._drained = threading.Event()
        self._error: Optional[BaseException] = None
        self._stopping = False
        host, port = url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
        self._conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self._head = (
            b'{"model_id":"' + model_id.encode() + b'","env_type":"PRODUCTION",'
            b'"source":{"type":"EVENTS","events":'
        )
        self._headers = {"Content-Type": "application/json", "Authorization": "Bearer floor"}
        self.thread = threading.Thread(target=self._run, name="floor-worker", daemon=True)
        self.thread.start()

    def wrap(self, func: Callable[..., Any]) -> Callable[..., Any]:
        append, bits, now = self.queue.append, random.Random().getrandbits, time.time

        def wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            result = wrapped(*args, **kwargs) if kwargs else wrapped(*args)
            append((bits(128), now(), args, result))
            return result

        return wrapt.FunctionWrapper(_probe_free(func), wrapper)  # type: ignore[no-any-return]

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every event queued so far is sent; raise what stopped the worker."""
        if self._error is None:
            self._drained.clear()
            self._flushing = True
            self._wake.set()
            if not self._drained.wait(timeout):
                raise SystemExit("floor: the minimal pipeline did not drain")
        if self._error is not None:
            raise SystemExit(f"floor: the worker failed: {self._error!r}")

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self.thread.join(10)
        self._conn.close()

    def _run(self) -> None:
        try:
            self._conn.connect()
            self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            queue = self.queue
            while not self._stopping:
                if len(queue) >= BATCH or (self._flushing and queue):
                    self._send(min(len(queue), BATCH))
                elif self._flushing and not queue:  # everything flush() waits for is sent
                    self._flushing = False
                    self._drained.set()
                else:
                    # Polled for full batches: the cheapest wake-up for the caller is none at
                    # all. Each poll takes the interpreter lock from the caller within a switch
                    # interval (5 ms), about as often as @monitor's worker is woken.
                    self._wake.wait(0.005)
                    self._wake.clear()
        except BaseException as error:
            self._error = error
            self._drained.set()

    def _send(self, count: int) -> None:
        popleft = self.queue.popleft
        rows: list[dict[str, Any]] = []
        add = rows.append
        for _ in repeat(None, count):
            bits, stamp, args, result = popleft()
            # A dict display, as @monitor's compiled wrapper builds it: the cheapest dict.
            row = {
                "age": args[0],
                "income": args[1],
                "region": args[2],
                "tenure": args[3],
                "plan": args[4],
                **result,
            }
            row["event_id"] = bits >> 64
            row["timestamp"] = stamp
            add(row)
        body = self._head + orjson.dumps(rows) + b"}}"
        self._conn.request("POST", "/v3/events", body, self._headers)
        response = self._conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"the sink answered {response.status}")
        self.sent += count


def reference_operations(number: int = 100_000) -> dict[str, float]:
    """The operations of :data:`ISSUE_REFERENCE_US` timed here, µs each (best of 5 timeit runs):
    how this machine, today, compares with the one the targets were set on."""

    def predict(age: Any, income: Any, region: Any, tenure: Any, plan: Any) -> dict[str, Any]:
        return {"score": 0.93, "label": 1}

    variable: contextvars.ContextVar[int] = contextvars.ContextVar("reference")
    bits = random.Random().getrandbits

    def version_4() -> str:
        text = f"{bits(128) & ~(0xF000 << 64) & ~(0xC << 60) | 0x4000 << 64 | 0x8 << 60:032x}"
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"

    def set_and_reset() -> None:
        variable.reset(variable.set(1))

    names = {
        "predict": predict,
        "wrapped": pass_through(predict, probe_free=False),
        "uuid": uuid,
        "version_4": version_4,
        "set_and_reset": set_and_reset,
        "now": dt.datetime.now,
        "utc": dt.timezone.utc,
        "current_span": trace.get_current_span,
    }

    def best(statement: str) -> float:
        runs = timeit.repeat(statement, globals=names, number=number, repeat=5)
        return min(runs) / number * 1e6

    bare = best("predict(41, 72000.0, 'EU', 3, 'gold')")
    return {
        "bare call": bare,
        "wrapt pass-through, added": best("wrapped(41, 72000.0, 'EU', 3, 'gold')") - bare,
        "str(uuid.uuid4())": best("str(uuid.uuid4())"),
        "v4 string from getrandbits": best("version_4()"),
        "ISO timestamp": best("now(utc).isoformat()"),
        "contextvar set + reset": best("set_and_reset()"),
        "current-span check": best("current_span()"),
    }
