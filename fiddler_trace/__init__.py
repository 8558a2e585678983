"""fiddler_trace: monitor a model in production with one decorator."""

from fiddler_trace._api import (
    current_event_id,
    delete_events,
    flush,
    init,
    last_event_id,
    last_event_ids,
    shutdown,
    stats,
    update,
)
from fiddler_trace._client import EventsClient, Job
from fiddler_trace._errors import ConfigurationError, FiddlerAPIError
from fiddler_trace._logging import FiddlerHandler
from fiddler_trace._monitor import monitor
from fiddler_trace._version import __version__

__all__ = [
    "ConfigurationError",
    "EventsClient",
    "FiddlerAPIError",
    "FiddlerHandler",
    "Job",
    "__version__",
    "current_event_id",
    "delete_events",
    "flush",
    "init",
    "last_event_id",
    "last_event_ids",
    "monitor",
    "shutdown",
    "stats",
    "update",
]
