"""fiddler_trace: monitor a model in production with one decorator."""

from fiddler_trace._client import EventsClient, Job
from fiddler_trace._errors import ConfigurationError, FiddlerAPIError
from fiddler_trace._version import __version__

__all__ = [
    "ConfigurationError",
    "EventsClient",
    "FiddlerAPIError",
    "Job",
    "__version__",
]
