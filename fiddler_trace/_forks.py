"""What a forked child must redo, run by Python's fork hook and by uWSGI's post-fork hook.

Python runs ``os.register_at_fork`` hooks after ``os.fork()``. uWSGI forks its workers from C and,
unless started with ``--py-call-osafterfork``, runs none of them: it calls its own post-fork hook
instead (``uwsgi.post_fork_hook``, chained by ``uwsgidecorators.postfork``). In a uWSGI process
the same hooks are registered there too, so every worker gets its own pipeline and a reseeded id
source before its first event, whatever its parent had captured or queued. Forks from C anywhere
else are caught at the first event if the parent had none queued, else when a batch fills, or
within ``DEEP_CHECK`` (512) events in a queue deeper than a batch (see
:func:`fiddler_trace._pipeline.submit`).

Every hook must be safe to run twice: under ``--py-call-osafterfork`` both mechanisms run it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

__all__ = ["in_child", "run_child_hooks"]

logger = logging.getLogger("fiddler_trace")
_hooks: list[Callable[[], None]] = []


def in_child(hook: Callable[[], None]) -> None:
    """Run ``hook`` in every forked child, in registration order."""
    _hooks.append(hook)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=hook)


def run_child_hooks() -> None:
    """Run every hook, as a child process forked without Python's fork hooks. Never raises."""
    for hook in _hooks:
        try:
            hook()
        except Exception as error:  # a child must start even if one hook fails
            logger.warning("fiddler_trace: a post-fork step failed: %r", error)


def register_with_uwsgi() -> bool:
    """In a uWSGI process, have uWSGI run :func:`run_child_hooks` after it forks a worker.

    Returns whether it was registered (False outside uWSGI).
    """
    uwsgi = sys.modules.get("uwsgi")  # built into the uWSGI server, importable nowhere else
    if uwsgi is None:
        return False
    try:
        import uwsgidecorators  # type: ignore[import-not-found,import-untyped,unused-ignore]

        uwsgidecorators.postfork(run_child_hooks)  # chains with the application's own hooks
        return True
    except Exception:  # no uwsgidecorators: chain by hand
        pass
    previous = getattr(uwsgi, "post_fork_hook", None)

    def chained() -> None:
        run_child_hooks()
        if callable(previous):
            previous()

    uwsgi.post_fork_hook = chained  # type: ignore[attr-defined]
    return True
