"""Plans and limits from a TOML file (``usageflow plans load plans.toml``).

.. code-block:: toml

    [[plans]]
    name = "Free"
    is_free = true
    limits = { exports = 100, ai_tokens = { limit = 10000, period = "day" } }

    [[plans]]
    name = "Pro"
    stripe_price_id = "price_123"
    price_amount = "19.00"
    price_currency = "usd"
    payment_link_url = "https://buy.stripe.com/test_123"
    limits = { exports = 1000, api_calls = -1 }

The whole file is checked before anything is written; loading it twice changes nothing more.
The format is documented in docs/cli.md, with a complete example in examples/plans.toml.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from usageflow._core import _decimal, _limits
from usageflow.errors import invalid
from usageflow.flow import UsageFlow
from usageflow.models import Plan

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = ["load_plans", "parse_plans"]

_KEYS = {
    "name",
    "stripe_price_id",
    "price_amount",
    "price_currency",
    "is_free",
    "payment_link_url",
    "limits",
}


def parse_plans(text: str) -> list[dict[str, Any]]:
    """Parse and check a plans file; raises ``USAGE_INVALID_PARAMS`` naming the bad entry."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise invalid(f"plans file is not valid TOML: {exc}") from None
    plans = data.get("plans")
    if not isinstance(plans, list) or not plans:
        raise invalid("plans file needs at least one [[plans]] table")
    seen: set[tuple[str, str | None]] = set()
    for index, plan in enumerate(plans):
        where = f"plans[{index}]"
        if not isinstance(plan, Mapping):
            raise invalid(f"{where} must be a table")
        unknown = set(plan) - _KEYS
        if unknown:
            raise invalid(f"{where} has unknown keys {sorted(unknown)}")
        name = plan.get("name")
        if not isinstance(name, str) or not name.strip():
            raise invalid(f"{where} needs a name")
        if not isinstance(plan.get("is_free", False), bool):
            raise invalid(f"{where}.is_free must be true or false")
        _decimal(plan.get("price_amount"))
        _limits(plan.get("limits", {}))
        key = (name, plan.get("stripe_price_id"))
        if key in seen:
            raise invalid(f"{where} repeats plan {name!r}")
        seen.add(key)
    return [dict(p) for p in plans]


def load_plans(flow: UsageFlow, source: str | Path) -> list[Plan]:
    """Create or update every plan in a TOML file (a path, or the TOML text itself)."""
    text = Path(source).read_text() if isinstance(source, Path) else source
    created = []
    for plan in parse_plans(text):
        name = plan.pop("name")
        created.append(flow.create_plan(name, **plan))
    return created
