"""Python values -> JSON bytes. Pure functions; runs on the worker thread, never the caller's.

orjson handles the common types natively (str, numbers, dict, list, tuple, dataclass, UUID, Enum,
numpy with ``OPT_SERIALIZE_NUMPY``) and turns NaN and ±Inf into null. The ``default`` hook covers
the rest; whatever it cannot map becomes its ``repr()``. :func:`dumps` never raises.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import math
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["dumps", "iso_utc"]

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
_MAX_REPR_CHARS = 1024
_CYCLE = "<cycle>"


def iso_utc(moment: dt.datetime) -> str:
    """An aware datetime as UTC ISO 8601 with milliseconds and ``Z``."""
    utc = moment.astimezone(dt.timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _safe_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"
    return text if len(text) <= _MAX_REPR_CHARS else text[:_MAX_REPR_CHARS] + "..."


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None and value.utcoffset() is not None:
            return iso_utc(value)
        return value.isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        number = float(value)
        return None if math.isnan(number) or math.isinf(number) else number
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii")
    if isinstance(value, Mapping):
        return dict(value)
    item = getattr(value, "item", None)  # numpy/pandas scalars orjson does not take natively
    if callable(item) and type(value).__module__.startswith(("numpy", "pandas")):
        try:
            return item()
        except Exception:
            pass
    to_list = getattr(value, "tolist", None)
    if callable(to_list) and type(value).__module__.startswith(("numpy", "pandas")):
        try:
            return to_list()
        except Exception:
            pass
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):
        try:
            return model_dump()
        except Exception:
            pass
    return _safe_repr(value)


def _sanitize(value: Any, seen: set[int]) -> Any:
    """A copy with cycles cut and every leaf made encodable; the slow path after a failure."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (Mapping, list, tuple, set, frozenset)):
        if id(value) in seen:
            return _CYCLE
        seen.add(id(value))
        try:
            if isinstance(value, Mapping):
                return {_key(k): _sanitize(v, seen) for k, v in list(value.items())}
            return [_sanitize(v, seen) for v in list(value)]
        finally:
            seen.discard(id(value))
    try:
        orjson.dumps(value, default=_default, option=_OPTIONS)
    except Exception:
        return _safe_repr(value)
    return value


def _key(key: Any) -> Any:
    return key if isinstance(key, (str, int, float, bool)) or key is None else _safe_repr(key)


def dumps(value: Any) -> bytes:
    """Encode ``value`` as JSON; never raises."""
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS)
    except Exception:
        pass
    try:
        return orjson.dumps(_sanitize(value, set()), default=_default, option=_OPTIONS)
    except Exception:
        return orjson.dumps(_safe_repr(value))
