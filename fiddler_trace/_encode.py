"""Python values -> JSON bytes, on the worker thread, never the caller's. Never raises.

orjson handles the common types natively (str, numbers, dict, list, tuple, dataclass, UUID, Enum,
numpy with ``OPT_SERIALIZE_NUMPY``) and turns NaN and ±Inf into null. The ``default`` hook maps
the rest (see :func:`to_json_value`); whatever it cannot map becomes its ``repr()``.

Long strings: a string longer than ``max_value_chars`` encodes to more than that many bytes, so a
row whose encoding is shorter needs no search at all; only longer rows are walked and truncated.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import logging
import math
import sys
from collections.abc import Mapping
from typing import Any, Callable, Optional, Union

import orjson

__all__ = ["KEY_COLUMNS", "Encoder", "dumps", "iso_utc", "keep_whole", "to_json_value"]

logger = logging.getLogger("fiddler_trace")

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
# OPT_NON_STR_KEYS makes orjson check every key's type (+60% on a row of scalars, measured):
# rows are tried without it first; it changes nothing when every key is a string, and orjson
# raises when one is not.
_STR_KEYS = _OPTIONS & ~orjson.OPT_NON_STR_KEYS
_MAX_REPR_CHARS = 1024
CYCLE = "<cycle>"
_MAX_LIST = 4096  # most values Encoder.joined hands orjson at once
TRUNCATED = "...[truncated]"


def iso_utc(moment: dt.datetime) -> str:
    """An aware datetime as UTC ISO 8601 with milliseconds and ``Z``."""
    utc = moment.astimezone(dt.timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def safe_repr(value: Any) -> str:
    """``repr(value)``, cut at 1024 characters; a placeholder naming the type if repr raises."""
    try:
        text = repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"
    return text if len(text) <= _MAX_REPR_CHARS else text[:_MAX_REPR_CHARS] + TRUNCATED


def _is_missing(value: Any) -> bool:
    """pandas' NaT and NA, and numpy's NaT, which mean a missing value.

    Looked up in ``sys.modules``: a value can only be one of them if its library was imported,
    and importing pandas here would cost the worker a second or more.
    """
    module = type(value).__module__
    if module.startswith("pandas"):
        pandas = sys.modules.get("pandas")
        return pandas is not None and (value is pandas.NaT or value is pandas.NA)
    if module.startswith("numpy"):
        numpy = sys.modules.get("numpy")
        try:
            return (
                numpy is not None
                and isinstance(value, numpy.datetime64)
                and bool(numpy.isnat(value))
            )
        except Exception:
            return False
    return False


def to_json_value(value: Any) -> Any:
    """A JSON-able stand-in for a value orjson does not take natively; ``repr`` as a last resort.

    Raises TypeError for the last resort, so :class:`Encoder` can warn once per type.
    """
    if _is_missing(value):  # before datetime: pandas' NaT is a datetime subclass
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None and value.utcoffset() is not None:
            return iso_utc(value)
        return value.isoformat()  # naive: sent as it is, the caller's local meaning unknown
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
    if type(value).__module__.startswith(("numpy", "pandas")):
        for name in ("tolist", "item", "to_dict"):  # arrays, scalars, Series/DataFrame
            method = getattr(value, name, None)
            if callable(method):
                try:
                    return method()
                except Exception:
                    continue
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    model_dump = getattr(value, "model_dump", None)  # pydantic v2
    if callable(model_dump):
        try:
            return model_dump()
        except Exception:
            pass
    raise TypeError(type(value).__name__)


#: The id and timestamp columns of every monitor and handler, as they are made: a row's own
#: string there is never cut, whatever ``max_value_chars`` is (it is the key updates and time
#: ranges match on; a drawn id is one too, a 36-character string).
KEY_COLUMNS: set[str] = {"event_id", "timestamp"}


def keep_whole(*columns: str) -> None:
    """Add columns to :data:`KEY_COLUMNS`."""
    KEY_COLUMNS.update(columns)


class Encoder:
    """Encodes rows as JSON with the value rules above. Used by the worker thread only.

    Args:
        max_value_chars: strings longer than this are cut (``...[truncated]`` appended).
        on_truncate: called with the number of strings cut in a row.
    """

    def __init__(
        self, max_value_chars: int = 65_536, on_truncate: Optional[Callable[[int], None]] = None
    ) -> None:
        self.max_value_chars = max_value_chars
        self._on_truncate = on_truncate
        self._step = 64  # values per orjson call in joined(), adapted to the values' size
        self._warned_types: set[str] = set()

    def _default(self, value: Any) -> Any:
        try:
            return to_json_value(value)
        except TypeError:
            pass
        name = f"{type(value).__module__}.{type(value).__qualname__}"
        if name not in self._warned_types:
            self._warned_types.add(name)
            logger.warning(
                "fiddler_trace: values of type %s have no JSON form; sending their repr()", name
            )
        return safe_repr(value)

    def __call__(self, value: Any) -> bytes:
        """Encode ``value``; never raises."""
        try:
            encoded = orjson.dumps(value, default=self._default, option=_STR_KEYS)
        except Exception:
            encoded = self._any_keys(value)
        if len(encoded) > self.max_value_chars:
            encoded = self._shorten(value, encoded)
        return encoded

    def _any_keys(self, value: Any) -> bytes:
        try:
            return orjson.dumps(value, default=self._default, option=_OPTIONS)
        except Exception:
            return self._slow(value)

    def joined(self, values: list[Any]) -> list[tuple[Union[bytes, memoryview], int]]:
        """Encode each value as :meth:`__call__` does (the same bytes), joined by commas, in as
        few orjson calls as the truncation rule allows: parts of ``(encoded, how many values)``.

        A call per value costs more than the encoding of a small row, so values go to orjson
        as lists. A list encoding to at most ``max_value_chars`` bytes holds no string to cut,
        so no value needs the search :meth:`__call__` makes for a longer one; lists are sized
        to about half that from the values seen so far, and halved when one encodes longer.
        Never raises.
        """
        limit = self.max_value_chars
        parts: list[tuple[Union[bytes, memoryview], int]] = []
        start, count, step = 0, len(values), self._step
        while start < count:
            chunk = values[start : start + step]
            whole = self._dumps_list(chunk)
            if whole is None:  # value by value, with the fallbacks of __call__
                parts.append((b",".join([self(value) for value in chunk]), len(chunk)))
            elif len(whole) - 2 <= limit:
                parts.append((memoryview(whole)[1:-1], len(chunk)))  # without the brackets
            elif len(chunk) > 1:
                step = len(chunk) // 2
                continue
            else:
                parts.append((self._shorten(chunk[0], whole[1:-1]), 1))
            start += len(chunk)
            if whole is not None:
                step = max(1, min(_MAX_LIST, limit // 2 * len(chunk) // len(whole)))
        self._step = step
        return parts

    def _dumps_list(self, values: list[Any]) -> Optional[bytes]:
        for option in (_STR_KEYS, _OPTIONS):
            try:
                return orjson.dumps(values, default=self._default, option=option)
            except Exception:
                continue
        return None

    def _shorten(self, value: Any, encoded: bytes) -> bytes:
        """``value`` encodes to more than max_value_chars bytes: cut its long strings, if any,
        but a row's own id and timestamp (:data:`KEY_COLUMNS`)."""
        cut = [0]
        if type(value) is dict:
            limit, seen = self.max_value_chars, {id(value)}
            shortened = {
                k: v if k in KEY_COLUMNS and type(v) is str else _truncate(v, limit, cut, seen)
                for k, v in list(value.items())
            }
        else:
            shortened = _truncate(value, self.max_value_chars, cut, set())
        if cut[0]:
            if self._on_truncate is not None:
                self._on_truncate(cut[0])
            encoded = self._slow(shortened)
        return encoded

    def _slow(self, value: Any) -> bytes:
        """After a failure (a cycle, nesting too deep, a key orjson refuses): sanitize, retry;
        then column by column, so a row stays an object and only a bad column is replaced."""
        try:
            return orjson.dumps(_sanitize(value, set()), default=self._default, option=_OPTIONS)
        except Exception:
            pass
        if isinstance(value, Mapping):
            try:
                columns = {_text_key(k): self._column(v) for k, v in list(value.items())}
                return orjson.dumps(columns)
            except Exception:
                pass
        return orjson.dumps(safe_repr(value))

    def _column(self, value: Any) -> Any:
        for attempt in (lambda: value, lambda: _sanitize(value, set())):
            try:
                return orjson.Fragment(
                    orjson.dumps(attempt(), default=self._default, option=_OPTIONS)
                )
            except Exception:  # RecursionError too: nesting deeper than Python allows
                continue
        return safe_repr(value)


def _sanitize(value: Any, seen: set[int]) -> Any:
    """A copy with cycles cut and keys made strings; leaves are left to the default hook."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (Mapping, list, tuple, set, frozenset)):
        if id(value) in seen:
            return CYCLE
        seen.add(id(value))
        try:
            if isinstance(value, Mapping):
                return {_key(k): _sanitize(v, seen) for k, v in list(value.items())}
            return [_sanitize(v, seen) for v in list(value)]
        finally:
            seen.discard(id(value))
    return value


def _key(key: Any) -> Any:
    if isinstance(key, int) and not -(2**63) <= key < 2**64:
        return str(key)  # orjson's keys are 64-bit at most
    return key if isinstance(key, (str, int, float, bool)) or key is None else safe_repr(key)


def _text_key(key: Any) -> str:
    return key if isinstance(key, str) else str(_key(key))


def _truncate(value: Any, limit: int, cut: list[int], seen: set[int]) -> Any:
    """A copy with every string over ``limit`` characters cut; counts them in ``cut[0]``."""
    if isinstance(value, str):
        if len(value) > limit:
            cut[0] += 1
            return value[:limit] + TRUNCATED
        return value
    if isinstance(value, (Mapping, list, tuple)):
        if id(value) in seen:
            return CYCLE
        seen.add(id(value))
        try:
            if isinstance(value, Mapping):
                return {k: _truncate(v, limit, cut, seen) for k, v in list(value.items())}
            return [_truncate(v, limit, cut, seen) for v in list(value)]
        finally:
            seen.discard(id(value))
    if (
        isinstance(value, (bytes, bytearray, memoryview))
        or (dataclasses.is_dataclass(value) and not isinstance(value, type))
        or callable(getattr(value, "model_dump", None))
    ):
        try:  # become text or a mapping only when encoded: convert first, then cut
            converted = to_json_value(value)
        except Exception:
            return value
        return _truncate(converted, limit, cut, seen)
    return value


_plain = Encoder(max_value_chars=1 << 62)


def dumps(value: Any) -> bytes:
    """Encode ``value`` as JSON with no truncation; never raises (``EventsClient``'s encoder)."""
    return _plain(value)
