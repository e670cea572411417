"""Input checks shared by every public method. Each failure is ``USAGE_INVALID_PARAMS``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from usageflow.errors import invalid
from usageflow.models import INT64_MAX
from usageflow.periods import GroupBy, Period, to_utc

MAX_ID_LENGTH = 255
MAX_METADATA_BYTES = 64 * 1024
#: How deep metadata may nest (dicts and lists): JSON this deep is never a log line's detail,
#: and deeper values would reach Python's recursion limit while being encoded.
MAX_METADATA_DEPTH = 32


def _depth(value: object) -> int:
    """How deeply ``value`` nests dicts and lists, counted without recursion (and without
    going further than one level past the limit)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > deepest:
            deepest = level
            if deepest > MAX_METADATA_DEPTH:
                return deepest
        if isinstance(item, Mapping):
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((child, level + 1) for child in item)
    return deepest


def name(value: object, field: str) -> str:
    """A user id, feature name or similar: a non-empty ``str`` of printable characters."""
    if not isinstance(value, str):
        raise invalid(f"{field} must be a string, not {type(value).__name__}", field=field)
    if not value or not value.strip():
        raise invalid(f"{field} must not be empty", field=field)
    if len(value) > MAX_ID_LENGTH:
        raise invalid(f"{field} must be at most {MAX_ID_LENGTH} characters", field=field)
    if not value.isprintable():
        raise invalid(f"{field} must not contain control characters", field=field)
    return value


def integer(value: object, field: str, *, minimum: int, maximum: int = INT64_MAX) -> int:
    """A Python ``int`` (not ``bool``, float or numeric string) within bounds."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{field} must be an int, not {type(value).__name__}", field=field)
    if value < minimum or value > maximum:
        raise invalid(f"{field} must be between {minimum} and {maximum}", field=field)
    return value


def credits(value: object, field: str = "credits") -> int:
    return integer(value, field, minimum=1)


def metadata(value: object) -> dict[str, Any] | None:
    """``None`` or a JSON-serializable mapping with string keys (at most 64 KiB as JSON)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise invalid("metadata must be a dict", field="metadata")
    if _depth(value) > MAX_METADATA_DEPTH:
        raise invalid(
            f"metadata must not nest deeper than {MAX_METADATA_DEPTH} levels", field="metadata"
        )
    try:
        encoded = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise invalid(f"metadata must be JSON-serializable: {exc}", field="metadata") from None
    if not all(isinstance(k, str) for k in value):
        raise invalid("metadata keys must be strings", field="metadata")
    if len(encoded) > MAX_METADATA_BYTES:
        raise invalid("metadata must be at most 64 KiB as JSON", field="metadata")
    result: dict[str, Any] = json.loads(encoded)
    return result


#: Keys UsageFlow writes itself: a reservation's commit is keyed ``reservation:<id>`` and is
#: found by that key once its hold is gone, so a caller's key may not take that form.
RESERVED_KEY_PREFIX = "reservation:"


def optional_key(value: object) -> str | None:
    if value is None:
        return None
    key = name(value, "idempotency_key")
    if key.startswith(RESERVED_KEY_PREFIX):
        raise invalid(
            f"idempotency keys starting with {RESERVED_KEY_PREFIX!r} are reserved for "
            "reservation commits; choose another key",
            field="idempotency_key",
        )
    return key


def period(value: object, *, allow_none: bool = False) -> Period | None:
    if value is None and allow_none:
        return None
    if isinstance(value, Period):
        return value
    if isinstance(value, str):
        try:
            return Period(value)
        except ValueError:
            pass
    choices = ", ".join(p.value for p in Period)
    raise invalid(f"period must be one of {choices}", field="period")


def group_by(value: object) -> GroupBy:
    if isinstance(value, GroupBy):
        return value
    if isinstance(value, str):
        try:
            return GroupBy(value)
        except ValueError:
            pass
    choices = ", ".join(g.value for g in GroupBy)
    raise invalid(f"group_by must be one of {choices}", field="group_by")


def moment(value: object, field: str) -> datetime:
    if not isinstance(value, datetime):
        raise invalid(f"{field} must be a datetime", field=field)
    try:
        result = to_utc(value)
        result.timestamp()
    except (OverflowError, ValueError, OSError):
        raise invalid(f"{field} is out of range", field=field) from None
    if result.year < 1970 or result.year > 9998:
        raise invalid(f"{field} must be between 1970 and 9998", field=field)
    return result


def seconds(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(f"{field} must be a number of seconds", field=field)
    if not math.isfinite(value) or value <= 0 or value > 366 * 86400:
        raise invalid(f"{field} must be between 0 and one year", field=field)
    return float(value)


def name_list(values: object, field: str) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, set, frozenset)):
        raise invalid(f"{field} must be a list of strings", field=field)
    items = [name(v, field) for v in values]
    if not items:
        raise invalid(f"{field} must not be empty", field=field)
    if len(items) > 1000:
        raise invalid(f"{field} may hold at most 1000 entries", field=field)
    return list(dict.fromkeys(items))


def thresholds(values: object) -> list[int]:
    """Alert thresholds: a list of whole percents from 1 to 1000, answered sorted and
    without repeats (``[]``: none)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise invalid(
            "thresholds must be a list of percents, such as [80, 100]", field="thresholds"
        )
    found = {integer(value, "thresholds", minimum=1, maximum=1000) for value in values}
    return sorted(found)
