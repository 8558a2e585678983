"""The pytest plugin of fiddler-trace (entry point ``pytest11``): the ``fiddler_events`` fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fiddler_trace import testing

__all__ = ["fiddler_events"]


@pytest.fixture
def fiddler_events() -> Iterator[testing.CapturedEvents]:
    """Events captured during the test, kept in memory instead of sent (``testing.capture()``).

    State is reset before and after the test, so events, ids and counters of other tests never
    show up.
    """
    testing.reset()
    try:
        with testing.capture() as events:
            yield events
    finally:
        testing.reset()
