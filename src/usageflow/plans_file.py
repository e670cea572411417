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
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from usageflow._config import validate
from usageflow.errors import invalid
from usageflow.flow import UsageFlow
from usageflow.models import INT64_MAX, Plan
from usageflow.periods import Period

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = ["load_plans", "parse_plans"]


def _printable(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    if not value.isprintable():
        raise ValueError("must not contain control characters")
    return value


def _price(value: Decimal) -> Decimal:
    if not Decimal(0) <= value < Decimal("1e8"):
        raise ValueError("must be between 0 and 99999999.99")
    return value.quantize(Decimal("0.01"))


def _limit_table(value: object) -> object:
    """``x = 100`` is short for ``x = { limit = 100 }``."""
    return value if isinstance(value, dict) else {"limit": value}


_Name = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_printable)]


class _Limit(BaseModel):
    """One feature's limit: ``limit`` (``-1`` or absent: unlimited) per ``period``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    limit: Annotated[int, Field(ge=-1, le=INT64_MAX)] | None = None
    period: Annotated[Period, Field(strict=False)] = Period.CURRENT_MONTH


class _PlanEntry(BaseModel):
    """One ``[[plans]]`` table."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: _Name
    stripe_price_id: str | None = None
    price_amount: (
        Annotated[Decimal, Field(strict=False, allow_inf_nan=False), AfterValidator(_price)] | None
    ) = None
    price_currency: str | None = None
    is_free: bool = False
    payment_link_url: str | None = None
    limits: dict[_Name, Annotated[_Limit, BeforeValidator(_limit_table)]] = Field(
        default_factory=dict
    )

    def create_plan_kwargs(self) -> dict[str, Any]:
        """The keys the file set, as :meth:`UsageFlow.create_plan` takes them."""
        kwargs = self.model_dump(exclude_unset=True, exclude={"limits"})
        if "limits" in self.model_fields_set:
            kwargs["limits"] = {
                feature: (-1 if spec.limit is None else spec.limit, spec.period)
                for feature, spec in self.limits.items()
            }
        return kwargs


def parse_plans(text: str) -> list[dict[str, Any]]:
    """Parse and check a plans file; raises ``USAGE_INVALID_PARAMS`` naming the bad entry
    and key (``plans[1].limits.exports.period must be ...``)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise invalid(f"plans file is not valid TOML: {exc}") from None
    plans = data.get("plans")
    if not isinstance(plans, list) or not plans:
        raise invalid("plans file needs at least one [[plans]] table")
    seen: set[tuple[str, str | None]] = set()
    parsed = []
    for index, plan in enumerate(plans):
        where = f"plans[{index}]"
        if not isinstance(plan, dict):
            raise invalid(f"{where} must be a table")
        entry = validate(_PlanEntry, plan, invalid, prefix=where)
        key = (entry.name, entry.stripe_price_id)
        if key in seen:
            raise invalid(f"{where} repeats plan {entry.name!r}")
        seen.add(key)
        parsed.append(entry.create_plan_kwargs())
    return parsed


def load_plans(flow: UsageFlow, source: str | Path) -> list[Plan]:
    """Create or update every plan in a TOML file (a path, or the TOML text itself)."""
    text = Path(source).read_text() if isinstance(source, Path) else source
    created = []
    for plan in parse_plans(text):
        name = plan.pop("name")
        created.append(flow.create_plan(name, **plan))
    return created
