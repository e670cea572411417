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
    limits = { exports = { limit = 1000, alert_thresholds = [90] }, api_calls = -1 }

    [[plans]]
    name = "Team"       # for team accounts: ai_credits are per seat of the subscription
    stripe_price_id = "price_456"
    limits = { exports = 5000, ai_credits = { limit = 100, per_seat = true } }

    [alerts]            # alert thresholds (percents of the limit) of every plan
    exports = [80, 100]

    [[packs]]           # credit packs sold through Payment Links (`usageflow packs load`)
    name = "10,000 tokens"
    credits = { ai_tokens = 10000 }
    stripe_payment_link_id = "plink_123"
    payment_link_url = "https://buy.stripe.com/test_456"
    expires_in_days = 365

The whole file is checked before anything is written; loading it twice changes nothing more.
The format is documented in docs/cli.md, with a complete example in examples/plans.toml.
"""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, RootModel

from usageflow._config import validate
from usageflow.errors import invalid
from usageflow.flow import UsageFlow
from usageflow.models import INT64_MAX, CreditPack, Plan
from usageflow.periods import Period

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = ["load_packs", "load_plans", "parse_plans"]


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


_Thresholds = list[Annotated[int, Field(ge=1, le=1000)]]


class _Limit(BaseModel):
    """One feature's limit: ``limit`` (``-1`` or absent: unlimited) per ``period``, and the
    plan's own alert thresholds of the feature."""

    model_config = ConfigDict(extra="forbid", strict=True)

    limit: Annotated[int, Field(ge=-1, le=INT64_MAX)] | None = None
    period: Annotated[Period, Field(strict=False)] = Period.CURRENT_MONTH
    alert_thresholds: _Thresholds | None = None
    per_seat: bool = False


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

    def alert_thresholds(self) -> dict[str, list[int]]:
        """The plan's own alert thresholds, by feature."""
        return {
            feature: spec.alert_thresholds
            for feature, spec in self.limits.items()
            if spec.alert_thresholds is not None
        }

    def create_plan_kwargs(self) -> dict[str, Any]:
        """The keys the file set, as :meth:`UsageFlow.create_plan` takes them."""
        kwargs = self.model_dump(exclude_unset=True, exclude={"limits"})
        if "limits" in self.model_fields_set:
            kwargs["limits"] = {
                feature: (-1 if spec.limit is None else spec.limit, spec.period)
                for feature, spec in self.limits.items()
            }
            kwargs["per_seat"] = [f for f, spec in self.limits.items() if spec.per_seat]
        return kwargs


class _PackEntry(BaseModel):
    """One ``[[packs]]`` table, as :meth:`UsageFlow.create_credit_pack` takes it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: _Name
    credits: dict[_Name, Annotated[int, Field(ge=1, le=INT64_MAX)]] = Field(min_length=1)
    stripe_price_id: _Name | None = None
    stripe_payment_link_id: _Name | None = None
    payment_link_url: _Name | None = None
    expires_in_days: Annotated[int, Field(ge=1, le=36_500)] | None = None


class _Alerts(RootModel[dict[_Name, _Thresholds]]):
    """The ``[alerts]`` table: feature -> thresholds of every plan."""

    model_config = ConfigDict(strict=True)


class PlansFile(BaseModel):
    """A checked plans file: the plans (as :meth:`UsageFlow.create_plan` takes them, with
    their own alert thresholds) and the alert thresholds of every plan."""

    plans: list[tuple[dict[str, Any], dict[str, list[int]]]]
    alerts: dict[str, list[int]]
    packs: list[dict[str, Any]] = []


def parse_plans(text: str, *, packs_only: bool = False) -> PlansFile:
    """Parse and check a plans file; raises ``USAGE_INVALID_PARAMS`` naming the bad entry
    and key (``plans[1].limits.exports.period must be ...``). ``packs_only``: the file must
    hold ``[[packs]]``, and its plans, if any, are checked but not returned."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise invalid(f"plans file is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"plans", "alerts", "packs"})
    if unknown:
        raise invalid(
            f"plans file has unknown tables {unknown}: it holds [[plans]], [alerts] and [[packs]]"
        )
    packs = _packs(data.get("packs", []))
    if packs_only:
        if not packs:
            raise invalid("plans file needs at least one [[packs]] table")
        return PlansFile(plans=[], alerts={}, packs=packs)
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
        parsed.append((entry.create_plan_kwargs(), entry.alert_thresholds()))
    alerts = data.get("alerts", {})
    if not isinstance(alerts, dict):
        raise invalid("alerts must be a table: feature = [80, 100]")
    every = validate(_Alerts, alerts, invalid, prefix="alerts")
    return PlansFile(plans=parsed, alerts=every.root, packs=packs)


def _packs(packs: object) -> list[dict[str, Any]]:
    if not isinstance(packs, list):
        raise invalid("packs must be an array of tables: [[packs]]")
    parsed, seen = [], set()
    for index, pack in enumerate(packs):
        where = f"packs[{index}]"
        if not isinstance(pack, dict):
            raise invalid(f"{where} must be a table")
        entry = validate(_PackEntry, pack, invalid, prefix=where)
        key = (entry.name, entry.stripe_price_id, entry.stripe_payment_link_id)
        if key in seen:
            raise invalid(f"{where} repeats pack {entry.name!r}")
        seen.add(key)
        parsed.append(entry.model_dump())
    return parsed


def _create_packs(flow: UsageFlow, packs: list[dict[str, Any]]) -> list[CreditPack]:
    made = []
    for spec in packs:
        kwargs = dict(spec)
        made.append(flow.create_credit_pack(kwargs.pop("name"), **kwargs))
    return made


def load_packs(flow: UsageFlow, source: str | Path) -> list[CreditPack]:
    """Create or update every credit pack of a TOML file's ``[[packs]]`` (a path, or the
    TOML text itself)."""
    text = Path(source).read_text() if isinstance(source, Path) else source
    return _create_packs(flow, parse_plans(text, packs_only=True).packs)


def load_plans(flow: UsageFlow, source: str | Path) -> list[Plan]:
    """Create or update every plan in a TOML file (a path, or the TOML text itself), set the
    alert thresholds it gives (a feature the file gives none for keeps its own), and create
    or update its credit packs."""
    text = Path(source).read_text() if isinstance(source, Path) else source
    checked = parse_plans(text)
    created = []
    for kwargs, thresholds in checked.plans:
        plan = dict(kwargs)
        name = plan.pop("name")
        made = flow.create_plan(name, **plan)
        for feature, values in thresholds.items():
            flow.set_alert_thresholds(feature, values, plan_id=made.id)
        created.append(made)
    for feature, values in checked.alerts.items():
        flow.set_alert_thresholds(feature, values)
    _create_packs(flow, checked.packs)
    return created
