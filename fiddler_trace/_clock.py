"""The worker's clock: monotonic seconds that freezegun cannot freeze.

freezegun replaces ``time.monotonic`` and ``time.perf_counter`` for every caller, the worker
thread included, so a batch would never age under ``freeze_time``. ``clock_gettime`` is left
alone, and is the same clock ``time.monotonic`` reads on POSIX. Timestamps of captured events
still follow the caller's (possibly frozen) ``time.time``.
"""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["Clock", "monotonic"]

Clock = Callable[[], float]

if hasattr(time, "clock_gettime") and hasattr(time, "CLOCK_MONOTONIC"):
    _CLOCK_ID = time.CLOCK_MONOTONIC

    def monotonic() -> float:
        """Seconds from an arbitrary start; never goes back, never frozen."""
        return time.clock_gettime(_CLOCK_ID)

else:  # pragma: no cover - Windows has no clock_gettime; freezegun can freeze this one
    monotonic = time.monotonic
