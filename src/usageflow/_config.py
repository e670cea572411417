"""Configuration validated by pydantic models, refused as :class:`UsageFlowError`.

The plans file, the flows' constructor options and the middleware's route table are each
described by a pydantic model. :func:`validate` runs one and turns a ``ValidationError`` into
a ``UsageFlowError`` whose message names where the input is wrong (``plans[1].is_free``,
``cache_ttl``, ``route 'POST /v1/x': credits``) and what is wrong with it. A message never
repeats the value it refuses (it may be a store URL or a key), and carries none of pydantic's
own decorations (input echo, documentation link).

Checks that run per request stay hand-written in :mod:`usageflow._validate`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from usageflow.errors import UsageFlowError

__all__ = ["describe", "validate"]

M = TypeVar("M", bound=BaseModel)


def _where(loc: tuple[int | str, ...], prefix: str) -> str:
    """``("limits", "x", "limit")`` -> ``"limits.x.limit"``; an index is ``[i]``."""
    if len(loc) >= 2 and loc[-1] == "[key]":  # a dict key that is itself refused
        return f"{_where(loc[:-2], prefix)} key {loc[-2]!r}"
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _what(error: ErrorDetails) -> str:
    """What is wrong, without the input: pydantic's message reworded where it echoes or
    is vaguer than the rest of usageflow's messages."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "value_error":  # raised by a validator of ours: its message is ours
        return str(ctx.get("error", error["msg"]))
    if kind == "bool_type":
        return "must be a bool (true or false)"
    if kind in {"int_type", "int_parsing", "int_from_float"}:
        return "must be an integer"
    if kind in {"float_type", "float_parsing", "decimal_type", "decimal_parsing"}:
        return "must be a number"
    if kind in {"finite_number", "decimal_max_digits", "decimal_max_places"}:
        return "must be a finite number"
    if kind in {"string_type", "string_sub_type"}:
        return "must be a string"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind in {"dict_type", "model_type", "model_attributes_type"}:
        return "must be a table (a dict)"
    if kind == "list_type":
        return "must be a list"
    if kind == "callable_type":
        return "must be a function"
    if kind == "missing":
        return "is required"
    if kind in {"literal_error", "enum"}:
        return f"must be {ctx.get('expected')}"
    bounds = {
        "greater_than": "greater than",
        "greater_than_equal": "at least",
        "less_than": "less than",
        "less_than_equal": "at most",
    }
    if kind in bounds:
        limit = next(iter(ctx.values()), "")
        return f"must be {bounds[kind]} {limit}"
    return str(error["msg"]).lower()


def describe(
    exc: ValidationError,
    *,
    prefix: str = "",
    unknown: str = "unknown key",
    known: Collection[str] = (),
) -> str:
    """One line per error: ``"<where> <what is wrong>"``; unknown keys are grouped, with the
    closest known name when there is one (``unknown option 'cache_tll' (did you mean
    'cache_ttl'?)``)."""
    lines: list[str] = []
    extra: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden" and loc:
            extra.setdefault(_where(loc[:-1], prefix), []).append(str(loc[-1]))
            continue
        lines.append(f"{_where(loc, prefix)} {_what(error)}".strip())
    for where, names in extra.items():
        plural = "s" if len(names) > 1 else ""
        listed = ", ".join(repr(n) for n in sorted(names))
        hint = ""
        if known and len(names) == 1 and where == prefix:
            close = difflib.get_close_matches(names[0], list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        head = f"{where} has " if where else ""
        lines.insert(0, f"{head}{unknown}{plural} {listed}{hint}")
    return "; ".join(lines)


def validate(
    model: type[M],
    data: Mapping[str, Any],
    error: Callable[[str], UsageFlowError],
    *,
    prefix: str = "",
    unknown: str = "unknown key",
) -> M:
    """``model`` validated from ``data``, or ``error(message)`` raised (with no chained
    pydantic error: its text would repeat the input)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message = describe(exc, prefix=prefix, unknown=unknown, known=model.model_fields)
    raise error(message)
