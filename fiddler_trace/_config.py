"""Settings: one frozen dataclass, one ``FIDDLER_*`` variable per field.

Every value is parsed and checked here, so that a bad one fails at ``init()`` or at decoration
time with a message naming the setting, the value and what is accepted, and never inside a
monitored call. ``SETTINGS`` is the single table the docs' configuration reference is built from.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit

from fiddler_trace._errors import ConfigurationError

__all__ = ["SETTINGS", "Setting", "Settings", "load_settings"]

logger = logging.getLogger("fiddler_trace")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

Redactor = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Setting:
    """How one setting is named, parsed and documented."""

    name: str
    env: Optional[str]
    parse: Callable[[str, Any], Any]
    doc: str


def _where(name: str, env: Optional[str], from_env: bool) -> str:
    return f"environment variable {env}" if from_env and env else f"setting {name!r}"


def _bool(where: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigurationError(
        f"{where} is {value!r}; accepted: true/false, or one of 1/true/yes/on, 0/false/no/off"
    )


def _number(
    kind: type,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
) -> Callable[[str, Any], Any]:
    """A parser for an int or float setting within [low, high] (or (low, high])."""
    low_text = f"greater than {low:g}" if low_open else f"at least {low:g}"
    high_text = "" if high == math.inf else f" and at most {high:g}"
    accepted = f"{'a whole number' if kind is int else 'a number'} {low_text}{high_text}"

    def parse(where: str, value: Any) -> Any:
        try:
            if isinstance(value, bool):
                raise TypeError
            number = kind(value.strip()) if isinstance(value, str) else kind(value)
            if kind is int and not isinstance(value, (int, str)):
                raise TypeError
        except (TypeError, ValueError):
            raise ConfigurationError(f"{where} is {value!r}; accepted: {accepted}") from None
        too_low = number <= low if low_open else number < low
        if too_low or number > high or (kind is float and math.isnan(number)):
            raise ConfigurationError(f"{where} is {value!r}; accepted: {accepted}")
        return number

    return parse


def _optional_text(where: str, value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigurationError(f"{where} is {type(value).__name__}; accepted: a string")
    text = os.fspath(value).strip()
    return text or None


def _url(where: str, value: Any) -> Optional[str]:
    text = _optional_text(where, value)
    if text is None:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{where} is {text!r}; accepted: an http(s) URL of a Fiddler instance, "
            "e.g. https://your-company.fiddler.ai"
        )
    return text.rstrip("/")


def _verify(where: str, value: Any) -> Union[bool, str]:
    if value is False:
        # Only as an explicit argument in code: a stray environment value must not switch TLS
        # verification off for a whole deployment.
        logger.warning("fiddler_trace: TLS verification is off (verify=False)")
        return False
    if value is True:
        return True
    text = _optional_text(where, value)
    if text is None or text.lower() in _TRUE:
        return True
    if not os.path.isfile(text):
        raise ConfigurationError(
            f"{where} is {text!r}, which is not a file; accepted: the path of a PEM CA bundle "
            "(verification cannot be switched off from the environment; pass verify=False to "
            "init() if you must)"
        )
    return text


def _redact(where: str, value: Any) -> Union[frozenset[str], Redactor, None]:
    if value is None:
        return None
    if callable(value):
        return value  # type: ignore[no-any-return]
    if isinstance(value, str):
        value = [value]
    try:
        names = frozenset(value)
    except TypeError:
        names = frozenset({None})
    if not all(isinstance(n, str) for n in names):
        raise ConfigurationError(
            f"{where} is {value!r}; accepted: a list of column names, or a callable event -> event"
        )
    return names


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "enabled",
        "FIDDLER_TRACE_ENABLED",
        _bool,
        "Capture and send events. Off by default, so the same code runs in tests and "
        "notebooks without sending anything.",
    ),
    Setting(
        "url",
        "FIDDLER_URL",
        _url,
        "The Fiddler instance, e.g. `https://acme.fiddler.ai`. Required when enabled.",
    ),
    Setting(
        "token",
        "FIDDLER_TOKEN",
        _optional_text,
        "API token, sent as `Authorization: Bearer`. Required when enabled; never logged or shown.",
    ),
    Setting(
        "sample_rate",
        "FIDDLER_TRACE_SAMPLE_RATE",
        _number(float, 0.0, 1.0),
        "Fraction of monitored calls captured (0.0 to 1.0), decided per call.",
    ),
    Setting(
        "batch_size",
        "FIDDLER_TRACE_BATCH_SIZE",
        _number(int, 1, 1000),
        "Most events in one request (1 to 1000, the API's limit).",
    ),
    Setting(
        "max_batch_bytes",
        "FIDDLER_TRACE_MAX_BATCH_BYTES",
        _number(int, 1024),
        "Most encoded bytes of events in one request.",
    ),
    Setting(
        "flush_interval",
        "FIDDLER_TRACE_FLUSH_INTERVAL",
        _number(float, 0.0, 3600.0, low_open=True),
        "Seconds a batch waits for more events before it is sent.",
    ),
    Setting(
        "max_queue_size",
        "FIDDLER_TRACE_MAX_QUEUE_SIZE",
        _number(int, 1),
        "Most events held in memory, counting those batched, in flight and retrying; "
        "past it new events are dropped and counted.",
    ),
    Setting(
        "retry_deadline",
        "FIDDLER_TRACE_RETRY_DEADLINE",
        _number(float, 0.0),
        "Seconds from a batch's first attempt after which it fails (or goes to the spool).",
    ),
    Setting(
        "timeout",
        "FIDDLER_TRACE_TIMEOUT",
        _number(float, 0.0, low_open=True),
        "Seconds per HTTP request.",
    ),
    Setting(
        "exit_timeout",
        "FIDDLER_TRACE_EXIT_TIMEOUT",
        _number(float, 0.0),
        "The most seconds interpreter exit waits for delivery.",
    ),
    Setting(
        "spool_dir",
        "FIDDLER_TRACE_SPOOL_DIR",
        _optional_text,
        "Directory where undeliverable batches are kept and replayed from. None: memory only.",
    ),
    Setting(
        "max_spool_bytes",
        "FIDDLER_TRACE_MAX_SPOOL_BYTES",
        _number(int, 1024),
        "Most bytes the spool keeps on disk; beyond, its oldest segments are dropped (counted).",
    ),
    Setting(
        "spool_fsync",
        "FIDDLER_TRACE_SPOOL_FSYNC",
        _bool,
        "fsync each spooled batch: survives a machine crash, not only a process crash.",
    ),
    Setting(
        "allow_insecure_http",
        "FIDDLER_TRACE_ALLOW_INSECURE_HTTP",
        _bool,
        "Allow an `http://` URL to a host that is not loopback (the token then travels "
        "in clear text).",
    ),
    Setting(
        "verify",
        "FIDDLER_CA_BUNDLE",
        _verify,
        "TLS verification: on by default; the path of a CA bundle for a private CA.",
    ),
    Setting(
        "max_value_chars",
        "FIDDLER_TRACE_MAX_VALUE_CHARS",
        _number(int, 1),
        "Strings longer than this are truncated.",
    ),
    Setting(
        "update_cache_size",
        "FIDDLER_TRACE_UPDATE_CACHE_SIZE",
        _number(int, 1),
        "How many captured event ids `update()` remembers without a `model_id`.",
    ),
    Setting(
        "update_cache_ttl",
        "FIDDLER_TRACE_UPDATE_CACHE_TTL",
        _number(float, 0.0, low_open=True),
        "Seconds `update()` remembers a captured event id, at least; ids are kept in four "
        "generations of `update_cache_size / 4`, and a generation is forgotten this long after "
        "it filled up.",
    ),
    Setting(
        "redact",
        None,
        _redact,
        "Column names to drop from every event, or a callable `event -> event` (argument only).",
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    """Validated settings. Build with :func:`load_settings`, never by hand."""

    enabled: bool = False
    url: Optional[str] = None
    token: Optional[str] = field(default=None, repr=False)
    sample_rate: float = 1.0
    batch_size: int = 1000
    max_batch_bytes: int = 4 * 1024 * 1024
    flush_interval: float = 1.0
    max_queue_size: int = 100_000
    retry_deadline: float = 300.0
    timeout: float = 10.0
    exit_timeout: float = 5.0
    spool_dir: Optional[str] = None
    max_spool_bytes: int = 1 << 30
    spool_fsync: bool = False
    allow_insecure_http: bool = False
    verify: Union[bool, str] = True
    max_value_chars: int = 65_536
    update_cache_size: int = 100_000
    update_cache_ttl: float = 24 * 3600.0
    redact: Union[frozenset[str], Redactor, None] = None

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={'***' if f.name == 'token' and self.token else getattr(self, f.name)!r}"
            for f in fields(self)
        )
        return f"Settings({shown})"

    def with_changes(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` parsed, applied and validated as a whole."""
        parsed = {name: _parse(name, value, from_env=False) for name, value in changes.items()}
        return _validated(replace(self, **parsed))


def _parse(name: str, value: Any, *, from_env: bool) -> Any:
    setting = _BY_NAME.get(name)
    if setting is None:
        accepted = ", ".join(sorted(_BY_NAME))
        raise ConfigurationError(f"unknown setting {name!r}; accepted: {accepted}")
    return setting.parse(_where(name, setting.env, from_env), value)


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _validated(settings: Settings) -> Settings:
    if settings.url is not None:
        parts = urlsplit(settings.url)
        if (
            parts.scheme == "http"
            and not settings.allow_insecure_http
            and not _is_loopback(parts.hostname or "")
        ):
            raise ConfigurationError(
                f"url (FIDDLER_URL) is {settings.url!r}: plain http:// would send the token in "
                "clear text; accepted: an https:// URL, http:// to a loopback host, or set "
                "FIDDLER_TRACE_ALLOW_INSECURE_HTTP=true (allow_insecure_http=True)"
            )
    if settings.enabled:
        missing = [
            f"{s.env} ({s.name}=)"
            for s in (_BY_NAME["url"], _BY_NAME["token"])
            if getattr(settings, s.name) is None
        ]
        if missing:
            raise ConfigurationError(
                f"fiddler_trace is enabled but {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set; accepted: set "
                "them, or leave FIDDLER_TRACE_ENABLED off"
            )
    return settings


def load_settings(environ: Optional[Mapping[str, str]] = None, **overrides: Any) -> Settings:
    """Read every ``FIDDLER_*`` variable, apply ``overrides`` on top, and validate.

    Raises:
        ConfigurationError: a value is out of range or malformed, or the combination is unusable
            (enabled without URL or token; plain http to a remote host).
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.env is not None and setting.name not in overrides:
            raw = env.get(setting.env)
            if raw is not None and raw.strip() != "":
                values[setting.name] = _parse(setting.name, raw, from_env=True)
    for name, value in overrides.items():
        values[name] = _parse(name, value, from_env=False)
    return _validated(Settings(**values))
