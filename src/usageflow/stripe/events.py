"""Stripe events, read: verify a webhook, and decide what an event asks of the store.

Pure: no I/O, no clock (the ``stripe`` library only checks the signature). :func:`decide` turns
a Stripe event (a dict) into the :class:`Changes` that one atomic store call,
:meth:`~usageflow.stores.base.Store.apply_stripe_event`, applies; :mod:`usageflow.stripe.webhooks`
runs it.

Ordering. Stripe delivers events at least once and in any order. Each subscription state
carries an *order key*, a string that sorts in the order the states happened::

    <terminal 0|1> | <event created, 12 digits> | <kind rank> | <period end, 12 digits> | <status>

A canceled (terminal) state outranks every live one (a canceled subscription never comes
back); then the event's ``created``; then, within one second, the kind of event
(``invoice.paid`` < ``customer.subscription.created`` < other subscription events <
reconcile: an invoice does not know a trial from a paid period, and a subscription is created
before it changes), the later period and the later status. The store keeps a state only when
its key is greater than the stored one, so any permutation of the same events ends in the
same state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, cast

from usageflow import _validate as v
from usageflow._core import _decimal
from usageflow.cache import Catalog
from usageflow.errors import (
    ErrorCodes,
    UsageFlowError,
    config_error,
    invalid,
    missing_dependency,
)
from usageflow.ops import (
    StripeGrant,
    StripeLink,
    StripePrice,
    StripeRefund,
    StripeSubscription,
)
from usageflow.quota import ENDED_STATUSES
from usageflow.stripe.prices import price_amount
from usageflow.stripe.results import WebhookAction, WebhookReason

__all__ = [
    "DEFAULT_TOLERANCE",
    "MAX_EPOCH",
    "Changes",
    "decide",
    "line_items_wanted",
    "object_id",
    "outcome",
    "subscription_key",
    "subscription_state",
    "unsold_price",
    "unsold_warning",
    "verify",
]

#: Seconds a signed webhook stays valid, either way from now (Stripe's default).
DEFAULT_TOLERANCE = 300
#: Statuses a subscription never leaves.
TERMINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})
_STATUS_RANK = {
    "incomplete": 0,
    "trialing": 1,
    "active": 2,
    "past_due": 3,
    "paused": 4,
    "unpaid": 5,
    "canceled": 6,
    "incomplete_expired": 6,
}
_KIND_RANK = {
    "invoice.paid": 0,
    "customer.subscription.created": 1,
    "customer.subscription.updated": 2,
    "customer.subscription.deleted": 2,
    "customer.subscription.paused": 2,
    "customer.subscription.resumed": 2,
    "reconcile": 3,
}
PRICE_EVENTS = frozenset({"price.created", "price.updated", "price.deleted"})
#: The events about a Checkout Session: a completed one links its customer; a paid one that
#: bought credit packs grants them.
CHECKOUT_EVENTS = frozenset(
    {"checkout.session.completed", "checkout.session.async_payment_succeeded"}
)
SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.paused",
        "customer.subscription.resumed",
    }
)
#: The latest Unix timestamp an event may carry: 9999-01-01 UTC (a year short of what
#: ``datetime`` holds, so that a billing period after it still fits; the order key's 12 digits
#: hold it too).
MAX_EPOCH = 253_370_764_800


def _signature_error(message: str) -> UsageFlowError:
    return UsageFlowError(ErrorCodes.USAGE_WEBHOOK_SIGNATURE_ERROR, message)


def _payload_error(message: str, **details: Any) -> UsageFlowError:
    return UsageFlowError(ErrorCodes.USAGE_WEBHOOK_PAYLOAD_ERROR, message, details)


def verify(
    raw_body: bytes | str, signature: str | None, secret: str | None, tolerance: int
) -> dict[str, Any]:
    """Check ``Stripe-Signature`` with the ``stripe`` library (HMAC-SHA256 of ``t.body``, any
    ``v1`` accepted, constant-time compare, ``t`` older than ``tolerance`` refused), refuse a
    ``t`` more than ``tolerance`` seconds in the future, and parse the event."""
    try:
        import stripe
    except ImportError:  # pragma: no cover
        raise missing_dependency("stripe", "stripe") from None
    if not secret:
        raise config_error(
            "the Stripe webhook secret is not set: pass stripe_webhook_secret= or set "
            "STRIPE_WEBHOOK_SECRET"
        )
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance <= 0:
        raise invalid("tolerance must be a positive number of seconds", field="tolerance")
    if not isinstance(raw_body, (bytes, bytearray, str)):
        raise invalid("raw_body must be the request body as bytes or str", field="raw_body")
    if not isinstance(signature, str) or not signature:
        raise _signature_error("the Stripe-Signature header is missing")
    try:
        body = raw_body.decode("utf-8") if isinstance(raw_body, (bytes, bytearray)) else raw_body
    except UnicodeDecodeError:
        raise _signature_error("the webhook body is not UTF-8") from None
    try:
        stripe.WebhookSignature.verify_header(body, signature, secret, tolerance)
    except stripe.SignatureVerificationError as exc:
        raise _signature_error(f"Stripe-Signature does not verify: {exc.user_message}") from None
    stamps = [p[2:] for p in signature.split(",") if p.startswith("t=")]
    if not stamps or int(stamps[0]) > time.time() + tolerance:
        raise _signature_error("Stripe-Signature timestamp is in the future")
    try:
        event = json.loads(body)
    except ValueError:
        raise _payload_error("the webhook body is not JSON") from None
    if (
        not isinstance(event, dict)
        or not isinstance(event.get("id"), str)
        or not isinstance(event.get("type"), str)
        or not isinstance(event.get("created"), int)
        or not isinstance(event.get("data"), dict)
        or not isinstance(event["data"].get("object"), dict)
    ):
        raise _payload_error("the webhook body is not a Stripe event")
    _text(event["id"], "event id")
    _text(event["type"], "event type")
    _epoch(event["created"], "event created")
    return event


@dataclass(frozen=True)
class Changes:
    """What an event asks of the store (``None`` everywhere: nothing to do)."""

    price: StripePrice | None = None
    link: StripeLink | None = None
    subscription: StripeSubscription | None = None
    grant: StripeGrant | None = None
    refund: StripeRefund | None = None


def _epoch(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_EPOCH:
        raise _payload_error(f"{what} must be a Unix timestamp between 0 and {MAX_EPOCH}")
    return value


def _moment(value: object, what: str) -> datetime | None:
    """A timestamp field (``None`` when absent or not a number; a number out of range is a
    payload error)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return datetime.fromtimestamp(_epoch(value, what), tz=timezone.utc)


def _text(value: object, what: str) -> str:
    """A string the store can hold (printable, at most 255 characters), else a payload error."""
    try:
        return v.name(value, what)
    except UsageFlowError as exc:
        raise _payload_error(exc.message) from None


def object_id(value: object, what: str = "id") -> str | None:
    """An id, whether the field is expanded (an object) or not (a string)."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return _text(value, what) if isinstance(value, str) and value else None


def _items(value: object, what: str) -> list[Any]:
    """A Stripe list's ``data`` (absent: empty)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _payload_error(f"{what} must be a list")
    return value


def _webhook_price(obj: Mapping[str, Any]) -> StripePrice:
    """A price event's price, with the checks :meth:`UsageFlow.create_plan` applies."""
    price_id = object_id(obj.get("id"), "price id")
    if price_id is None:
        raise _payload_error("a price event needs the price id")
    currency = obj.get("currency")
    if currency is not None:
        currency = _text(currency, "price currency").lower()
    for key in ("unit_amount_decimal", "unit_amount"):
        raw = obj.get(key)
        if raw is not None and (isinstance(raw, bool) or not isinstance(raw, (str, int))):
            raise _payload_error(f"price {key} must be a number")
    try:
        amount = _decimal(price_amount(obj))
    except (UsageFlowError, ArithmeticError, ValueError):
        raise _payload_error(
            "the price amount must be a number between 0 and 99999999.99", price=price_id
        ) from None
    return StripePrice(price_id, amount, currency)


def _valid_name(value: object) -> str | None:
    """``value`` when it is a usable user id or email, else ``None``."""
    try:
        return v.name(value, "client_reference_id")
    except UsageFlowError:
        return None


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def subscription_key(created: int, kind: str, status: str, period_end: datetime | None) -> str:
    """The order key of a subscription state (see the module docstring)."""
    end = int(period_end.timestamp()) if period_end else 0
    return (
        f"{int(status in TERMINAL_STATUSES)}|{created:012d}|{_KIND_RANK.get(kind, 2)}|"
        f"{end:012d}|{_STATUS_RANK.get(status, 9)}"
    )


def _pick(candidates: list[tuple[str, Any]], catalog: Catalog) -> tuple[str, Any] | None:
    """The first candidate whose price is a plan, else the first."""
    for candidate in candidates:
        if candidate[0] in catalog.by_price:
            return candidate
    return candidates[0] if candidates else None


def subscription_state(
    sub: Mapping[str, Any], created: int, kind: str, catalog: Catalog
) -> StripeSubscription | None:
    """The state a subscription object shows (``None``: it has no priced item)."""
    sub_id = object_id(sub.get("id"), "subscription id")
    customer = object_id(sub.get("customer"), "customer id")
    status = sub.get("status")
    if sub_id is None or customer is None or not isinstance(status, str):
        raise _payload_error("a subscription needs an id, a customer and a status")
    status = _text(status, "subscription status")
    items = [
        (price, item)
        for item in _items(_get(sub, "items", "data"), "subscription items")
        if isinstance(item, Mapping) and (price := object_id(item.get("price"), "price id"))
    ]
    chosen = _pick(items, catalog)
    if chosen is None:
        return None
    price, item = chosen
    # API versions from 2025-03-31 put the period on the item; older ones on the subscription.
    start = _moment(item.get("current_period_start"), "current_period_start") or _moment(
        sub.get("current_period_start"), "current_period_start"
    )
    end = _moment(item.get("current_period_end"), "current_period_end") or _moment(
        sub.get("current_period_end"), "current_period_end"
    )
    started = _moment(sub.get("created"), "subscription created") or _moment(
        sub.get("start_date"), "start_date"
    )
    return StripeSubscription(
        subscription_id=sub_id,
        customer_id=customer,
        order_key=subscription_key(created, kind, status, end),
        started=started or datetime.fromtimestamp(created, tz=timezone.utc),
        ended=status in ENDED_STATUSES,
        plan=price,
        status=status,
        current_period_start=start,
        current_period_end=end,
        quantity=_seats(item.get("quantity")),
    )


def _seats(value: object) -> int | None:
    """A subscription item's quantity (the seats bought); ``None`` when absent or unusable."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000_000:
        return None
    return value


def invoice_state(
    invoice: Mapping[str, Any], created: int, catalog: Catalog
) -> StripeSubscription | None:
    sub_id = object_id(invoice.get("subscription"), "subscription id") or object_id(
        _get(invoice, "parent", "subscription_details", "subscription"), "subscription id"
    )
    customer = object_id(invoice.get("customer"), "customer id")
    if sub_id is None or customer is None:
        return None  # a one-off invoice
    lines = []
    for line in _items(_get(invoice, "lines", "data"), "invoice lines"):
        if not isinstance(line, Mapping):
            continue
        details = _get(line, "parent", "subscription_item_details")
        proration = line.get("proration") or (details or {}).get("proration")
        from_subscription = line.get("type") == "subscription" or details is not None
        price = object_id(line.get("price"), "price id") or object_id(
            _get(line, "pricing", "price_details", "price"), "price id"
        )
        if from_subscription and not proration and price:
            lines.append((price, line))
    chosen = _pick(lines, catalog)
    if chosen is None:
        return None
    price, line = chosen
    start = _moment(_get(line, "period", "start"), "invoice line period start")
    end = _moment(_get(line, "period", "end"), "invoice line period end")
    return StripeSubscription(
        subscription_id=sub_id,
        customer_id=customer,
        order_key=subscription_key(created, "invoice.paid", "active", end),
        started=None,  # an invoice does not say; the store keeps what a subscription event said
        ended=False,
        plan=price,
        status="active",
        current_period_start=start,
        current_period_end=end,
        period_guard=True,
    )


def decide(event: Mapping[str, Any], catalog: Catalog, manual: bool) -> Changes:
    """The changes an event asks for. Pure: no I/O, no clock."""
    kind, obj = str(event["type"]), event["data"]["object"]
    created = _epoch(event.get("created"), "event created")
    if kind in PRICE_EVENTS:
        return Changes(price=_webhook_price(obj))
    if manual:
        return Changes()
    if kind in CHECKOUT_EVENTS:
        customer = object_id(obj.get("customer"), "customer id")
        user_id = _valid_name(obj.get("client_reference_id"))
        email = _valid_name(_get(obj, "customer_details", "email") or obj.get("customer_email"))
        grant = pack_grant(obj, kind, created, catalog, user_id, customer, email)
        if customer is None or not (user_id or email) or kind != "checkout.session.completed":
            return Changes(grant=grant)
        return Changes(
            link=StripeLink(
                customer_id=customer,
                user_id=user_id,
                email=email,
                order_key=f"{created:012d}|{event['id']}",
            ),
            grant=grant,
        )
    if kind == "charge.refunded":
        return Changes(refund=_refund(obj))
    if kind in SUBSCRIPTION_EVENTS:
        return Changes(subscription=subscription_state(obj, created, kind, catalog))
    if kind == "invoice.paid":
        return Changes(subscription=invoice_state(obj, created, catalog))
    return Changes()


def _quantity(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
        return 1
    return value


def packs_bought(obj: Mapping[str, Any], catalog: Catalog) -> list[tuple[Any, int]]:
    """The credit packs a payment-mode Checkout Session bought, with their quantities: the
    pack of its Payment Link, else the packs of its line items' prices (``line_items``
    expanded in the payload, or fetched from the API by the caller) times their quantity."""
    link = object_id(obj.get("payment_link"), "payment link id")
    pack = catalog.pack_of_link(link) if link else None
    if pack is not None:
        return [(pack, 1)]
    bought = []
    for item in _items(_get(obj, "line_items", "data"), "line_items"):
        price = object_id(_get(item, "price"), "price id") if isinstance(item, Mapping) else None
        found = catalog.pack_of_price(price) if price else None
        if found is not None:
            bought.append((found, _quantity(item.get("quantity"))))
    return bought


def pack_grant(
    obj: Mapping[str, Any],
    kind: str,
    created: int,
    catalog: Catalog,
    user_id: str | None,
    customer: str | None,
    email: str | None,
) -> StripeGrant | None:
    """The grants of the credit packs a paid Checkout Session bought, or ``None``.

    Only ``mode: payment`` sessions buy packs. ``checkout.session.completed`` grants when the
    session is paid (``payment_status`` ``paid`` or ``no_payment_required``); one paid later
    (``unpaid``: a bank debit, say) grants on ``checkout.session.async_payment_succeeded``.
    Grants expire ``expires_in_days`` after the session's own ``created`` (so every event
    about the session grants the same)."""
    if obj.get("mode") != "payment" or not catalog.packs:
        return None
    status = obj.get("payment_status")
    if kind == "checkout.session.completed" and status not in ("paid", "no_payment_required"):
        return None
    if kind == "checkout.session.async_payment_succeeded" and status == "unpaid":
        return None
    session = object_id(obj.get("id"), "checkout session id")
    bought = packs_bought(obj, catalog)
    if session is None or not bought:
        return None
    start = datetime.fromtimestamp(
        _epoch(obj["created"], "session created")
        if isinstance(obj.get("created"), int)
        else created,
        tz=timezone.utc,
    )
    totals: dict[str, tuple[int, datetime | None]] = {}
    for pack, quantity in bought:
        expires = (
            None if pack.expires_in_days is None else start + timedelta(days=pack.expires_in_days)
        )
        for feature, credits in pack.credits.items():
            before = totals.get(feature, (0, expires))[0]
            totals[feature] = (before + credits * quantity, expires)
    return StripeGrant(
        session_id=session,
        user_id=user_id,
        customer_id=customer,
        email=email,
        payment_ref=object_id(obj.get("payment_intent"), "payment intent id"),
        reason=", ".join(pack.name for pack, _ in bought),
        grants=tuple((f, credits, expires) for f, (credits, expires) in sorted(totals.items())),
    )


def line_items_wanted(event: Mapping[str, Any], catalog: Catalog, changes: Changes) -> str | None:
    """The id of a paid payment-mode Checkout Session whose credit packs only its line items
    can tell (no pack sells its Payment Link, the payload has no ``line_items``, and some pack
    is sold at a price), so that the caller may fetch them from Stripe's API; else ``None``."""
    kind, obj = str(event["type"]), event["data"]["object"]
    if kind not in CHECKOUT_EVENTS or changes.grant is not None or "line_items" in obj:
        return None
    if obj.get("mode") != "payment" or not any(p.stripe_price_id for p in catalog.packs):
        return None
    if obj.get("payment_status") == "unpaid":
        return None
    link = object_id(obj.get("payment_link"), "payment link id")
    if link is not None and catalog.pack_of_link(link) is not None:
        return None
    return object_id(obj.get("id"), "checkout session id")


def _refund(obj: Mapping[str, Any]) -> StripeRefund | None:
    """A refunded charge, matched to grants by its payment intent."""
    payment = object_id(obj.get("payment_intent"), "payment intent id")
    refunded, amount = obj.get("amount_refunded"), obj.get("amount_captured") or obj.get("amount")
    if payment is None or not isinstance(refunded, int) or not isinstance(amount, int):
        return None
    if isinstance(refunded, bool) or isinstance(amount, bool) or amount <= 0 or refunded < 0:
        return None
    return StripeRefund(payment_ref=payment, refunded=min(refunded, amount), amount=amount)


def unsold_price(changes: Changes, catalog: Catalog) -> str | None:
    """The price id the changes would record that no plan sells, if any. An ended
    subscription's price does not count: no plan would apply to it anyway."""
    if changes.price is not None and changes.price.stripe_price_id not in catalog.by_price:
        return changes.price.stripe_price_id
    sub = changes.subscription
    if sub is not None and not sub.ended and sub.plan not in catalog.by_price:
        return sub.plan
    return None


def unsold_warning(event: Mapping[str, Any], changes: Changes, price: str, user: str | None) -> str:
    """What to tell the app about an event whose price no plan sells."""
    where = f"{event['type']} {event['id']}"
    fix = (
        f"create a plan with stripe_price_id={price!r} (create_plan, `usageflow plans load` or "
        "sync_plans_from_stripe)"
    )
    sub = changes.subscription
    if sub is None:
        return f"Stripe price {price!r} ({where}) is sold by no plan, so it was ignored: {fix}"
    who = f"user {user!r}" if user else f"customer {sub.customer_id!r} (no user linked yet)"
    return (
        f"Stripe price {price!r} of subscription {sub.subscription_id!r} ({where}) is sold by "
        f"no plan, so {who} gets the free plan: {fix}, and it applies with no new webhook"
    )


def outcome(
    store_action: str, changes: Changes, unknown_price: bool, granted_before: bool = False
) -> tuple[WebhookAction, WebhookReason | None]:
    """The public action of what the store did, and why when nothing changed."""
    if store_action == "stale":
        return "ignored", "stale"
    if store_action != "ignored":
        return cast(WebhookAction, store_action), None
    if unknown_price:
        return "ignored", "unknown_price"
    if changes.grant is not None:
        return "ignored", "already_granted" if granted_before else "no_user"
    return "ignored", "no_user" if changes.link is not None else "not_used"
