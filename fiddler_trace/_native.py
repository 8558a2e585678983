"""The C extension (:mod:`fiddler_trace._speedups`), where it was built and is not turned off.

It is optional: an install without a compiler has none, and everything runs in Python.
``FIDDLER_TRACE_NO_EXTENSIONS`` set to a true value turns it off where it was built (a check
that the two behave alike, or a way round a fault in the C code), read once, at import, as
the settings' booleans are read.
"""

from __future__ import annotations

import os
from typing import Any

from fiddler_trace._config import _bool

__all__ = ["NO_EXTENSIONS_VARIABLE", "speedups"]

NO_EXTENSIONS_VARIABLE = "FIDDLER_TRACE_NO_EXTENSIONS"


def _load() -> Any:
    """The module; None when turned off or not built. ConfigurationError for a value of the
    variable that is no boolean, as for every setting."""
    value = os.environ.get(NO_EXTENSIONS_VARIABLE)
    if value is not None and _bool(f"environment variable {NO_EXTENSIONS_VARIABLE}", value):
        return None
    try:
        from fiddler_trace import _speedups  # type: ignore[attr-defined]
    except ImportError:  # installed where it could not be built
        return None
    return _speedups


#: :mod:`fiddler_trace._speedups`, or None.
speedups: Any = _load()
