"""What a Stripe price means to a plan: its amount, the limits its metadata gives, the Payment
Link that sells it. Pure: no I/O, no clock, no Stripe library."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from usageflow.cache import Catalog
from usageflow.errors import invalid
from usageflow.models import Plan
from usageflow.periods import Period

__all__ = [
    "METADATA_PREFIX",
    "ZERO_DECIMAL_CURRENCIES",
    "metadata_limits",
    "payment_link",
    "price_amount",
    "upgrade_target",
]

#: Currencies Stripe amounts are not in cents for (https://docs.stripe.com/currencies).
ZERO_DECIMAL_CURRENCIES = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv"}
    | {"xaf", "xof", "xpf"}
)
#: Product and price metadata keys that set a plan's limits start with this.
METADATA_PREFIX = "usageflow:"
_LINK_PARAMS = ("client_reference_id", "prefilled_email")


def price_amount(price: Mapping[str, Any]) -> Decimal | None:
    """A Stripe price's ``unit_amount_decimal`` (else ``unit_amount``) in major units of its
    currency, to the cent (``None`` when it has neither). Raises ``USAGE_INVALID_PARAMS`` when
    the amount is not a finite number."""
    currency = str(price.get("currency") or "").lower()
    raw = price.get("unit_amount_decimal")
    if raw is None:
        raw = price.get("unit_amount")
    if raw is None:
        return None
    try:
        amount = Decimal(str(raw))
    except InvalidOperation:
        raise invalid("price unit_amount must be a number", field="price") from None
    if not amount.is_finite():
        raise invalid("price unit_amount must be a number", field="price")
    major = amount if currency in ZERO_DECIMAL_CURRENCIES else amount / 100
    return major.quantize(Decimal("0.01"))


def metadata_limits(
    metadata: Mapping[str, Any], where: str, warnings: list[str]
) -> dict[str, tuple[int, str]]:
    """``usageflow:<feature>=<limit>`` (``-1`` or ``unlimited``: no limit) and
    ``usageflow:<feature>:period=<period>`` entries -> ``{feature: (limit, period)}``. An entry
    that is neither is skipped, with its reason appended to ``warnings``."""
    limits: dict[str, tuple[int, str]] = {}
    periods: dict[str, str] = {}
    for key, raw in metadata.items():
        if not isinstance(key, str) or not key.startswith(METADATA_PREFIX):
            continue
        name = key[len(METADATA_PREFIX) :]
        value = str(raw).strip().lower()
        if name.endswith(":period"):
            feature = name[: -len(":period")]
            if value not in {p.value for p in Period}:
                warnings.append(f"{where}: {key}={raw!r} is not a period; ignored")
                continue
            periods[feature] = value
            continue
        if value in ("unlimited", "-1"):
            limits[name] = (-1, Period.CURRENT_MONTH.value)
        elif value.isdigit():
            limits[name] = (int(value), Period.CURRENT_MONTH.value)
        else:
            warnings.append(f"{where}: {key}={raw!r} is not a limit; ignored")
    for feature, period in periods.items():
        if feature in limits:
            limits[feature] = (limits[feature][0], period)
        else:
            warnings.append(f"{where}: {METADATA_PREFIX}{feature}:period has no limit; ignored")
    return limits


def _limit_rank(plan: Plan | None, feature_name: str | None) -> float:
    if plan is None:
        return -1.0
    if feature_name is None:
        return float(plan.price_amount or 0)
    row = plan.limits.get(feature_name)
    if row is None:
        return 0.0
    return float("inf") if row.limit_value == -1 else float(row.limit_value)


def upgrade_target(catalog: Catalog, current: Plan | None, feature_name: str | None) -> Plan | None:
    """The cheapest plan sold through a Payment Link that gives more of ``feature_name`` than
    ``current`` (or, without a feature, that costs more)."""
    floor = _limit_rank(current, feature_name)
    candidates = [
        p
        for p in catalog.plans.values()
        if p.payment_link_url
        and (current is None or p.id != current.id)
        and _limit_rank(p, feature_name) > floor
    ]
    if not candidates:
        return None
    return min(
        candidates,
        key=lambda p: (p.price_amount is None, p.price_amount or Decimal(0), p.id),
    )


def payment_link(url: str, user_id: str, email: str | None) -> str:
    """A Payment Link that maps the purchase back to the user: ``client_reference_id`` (and
    ``prefilled_email`` when known) appended to its query string."""
    parts = urlsplit(url)
    query = [(k, val) for k, val in parse_qsl(parts.query) if k not in _LINK_PARAMS]
    query.append(("client_reference_id", user_id))
    if email:
        query.append(("prefilled_email", email))
    return urlunsplit(parts._replace(query=urlencode(query)))
