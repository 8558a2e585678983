"""The library's exception types."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

__all__ = ["ConfigurationError", "FiddlerAPIError"]


class ConfigurationError(ValueError):
    """A setting has a value the library cannot use.

    Raised at ``init()`` or when ``@monitor`` decorates (import time), never inside a monitored
    call. The message names the argument or environment variable, the bad value and what is
    accepted.
    """


class FiddlerAPIError(Exception):
    """The server answered a ``/v3/events`` request with an error status.

    Attributes:
        status: the HTTP status code of the response.
        code: ``error.code`` of Fiddler's ``ErrorResponse`` envelope (the status when absent).
        message: ``error.message``; for a body that is not the envelope, its first 200 characters.
        errors: ``error.errors``, the per-error details (``reason``, ``message``, ``help``).
        retry_after: the response's ``Retry-After`` header as sent, if any.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: Optional[int] = None,
        errors: Sequence[Mapping[str, Any]] = (),
        retry_after: Optional[str] = None,
    ) -> None:
        self.status = status
        self.code = status if code is None else code
        self.message = message
        self.errors: list[dict[str, Any]] = [dict(e) for e in errors]
        self.retry_after = retry_after
        super().__init__(status, message)

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}" if self.message else f"HTTP {self.status}"

    def __repr__(self) -> str:
        return f"FiddlerAPIError(status={self.status}, code={self.code}, message={self.message!r})"
