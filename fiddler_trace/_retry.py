"""What to do with a failed request, and how long to wait before the next try. Pure functions."""

from __future__ import annotations

import email.utils
import enum
import random
from typing import Optional

import httpx

from fiddler_trace._errors import FiddlerAPIError

__all__ = ["Outcome", "backoff", "classify", "retry_after_seconds"]

BASE_DELAY = 0.5
MAX_DELAY = 30.0
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_FATAL_HINTS = {
    401: "check FIDDLER_TOKEN: the server did not accept it",
    403: "check FIDDLER_TOKEN: it is not allowed to publish to this model",
    404: "check FIDDLER_URL and the model_id: the server does not know them",
}


class Outcome(enum.Enum):
    """How the worker handles a failed request."""

    RETRY = "retry"  # transient: back off and send the same batch again
    SPLIT = "split"  # 413: too large, send each half
    BISECT = "bisect"  # 400: find the events the server rejects, deliver the rest
    CONFLICT = "conflict"  # 409: on a retry, the first attempt landed
    FAIL = "fail"  # no retry will help


def classify(error: BaseException) -> Outcome:
    """The outcome for an exception raised by ``EventsClient.send``."""
    if isinstance(error, FiddlerAPIError):
        status = error.status
        if status in _RETRY_STATUSES:
            return Outcome.RETRY
        if status == 413:
            return Outcome.SPLIT
        if status == 400:
            return Outcome.BISECT
        if status == 409:
            return Outcome.CONFLICT
        return Outcome.FAIL
    if isinstance(error, (httpx.TransportError, OSError)):
        return Outcome.RETRY  # connection refused or dropped, timeouts, protocol errors
    return Outcome.FAIL


def hint(status: int) -> str:
    """What to check for a status that no retry will fix."""
    return _FATAL_HINTS.get(status, "the server refused the request")


def backoff(attempt: int, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(30, 0.5 * 2**attempt)] seconds.

    Args:
        attempt: failures so far for this batch, from 1.
    """
    return rng.uniform(0.0, min(MAX_DELAY, BASE_DELAY * 2.0 ** min(attempt, 16)))


def retry_after_seconds(value: Optional[str], now_epoch: float) -> Optional[float]:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if unusable."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None:
        return None
    return max(0.0, moment.timestamp() - now_epoch)
