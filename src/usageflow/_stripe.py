"""Stripe, written once for both flows: webhook decisions, plan sync, reconcile, meter export.

Every operation here is a generator like those of :mod:`usageflow._core`: it yields store calls
and :class:`StripeCall` steps (Stripe API requests, run by the sync flow with the ``stripe``
library's sync client and by the async flow with its ``*_async`` methods). Deciding what an
event means is pure: :func:`decide` turns a Stripe event (a dict) into the changes that one
atomic store call, :meth:`~usageflow.stores.base.Store.apply_stripe_event`, applies.

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
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict

from usageflow import _log
from usageflow import _validate as v
from usageflow._core import Core, Op, _decimal, _price_amount, call
from usageflow.cache import Catalog
from usageflow.errors import (
    ErrorCodes,
    UsageFlowError,
    config_error,
    invalid,
    missing_dependency,
)
from usageflow.models import Plan
from usageflow.periods import Period
from usageflow.quota import ENDED_STATUSES
from usageflow.stores.base import (
    StripeApplied,
    StripeLink,
    StripePrice,
    StripeSubscription,
)

__all__ = [
    "DEFAULT_TOLERANCE",
    "ExportResult",
    "PlanSyncResult",
    "ReconcileResult",
    "StripeCall",
    "WebhookAction",
    "WebhookReason",
    "WebhookResult",
    "decide",
    "export_usage",
    "handle_webhook",
    "reconcile",
    "sync_plans",
    "verify",
]

T = TypeVar("T")
logger = _log.logger

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
SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.paused",
        "customer.subscription.resumed",
    }
)
#: Meter events older than this are refused by Stripe; they are skipped, not sent.
METER_MAX_AGE = timedelta(days=35)
_METADATA_PREFIX = "usageflow:"
_SECRET_TOKEN = re.compile(r"\b(sk|rk|whsec)_[A-Za-z0-9_*]+")
#: The latest Unix timestamp an event may carry: 9999-01-01 UTC (a year short of what
#: ``datetime`` holds, so that a billing period after it still fits; the order key's 12 digits
#: hold it too).
MAX_EPOCH = 253_370_764_800

WebhookAction = Literal["applied", "duplicate", "pending", "ignored"]
WebhookReason = Literal["stale", "unknown_price", "no_user", "not_used"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WebhookResult(_Model):
    """What :meth:`UsageFlow.handle_webhook` did with one event.

    ``action``: ``applied`` (written), ``duplicate`` (this event id was processed before:
    nothing written), ``pending`` (a subscription whose customer is not linked to a user yet:
    kept, applied when the checkout links it) or ``ignored`` (nothing changed; the event id is
    recorded). ``reason`` says why an event was ignored, and is ``None`` otherwise: ``stale``
    (older than the state already stored), ``unknown_price`` (a ``price.*`` event for a price
    no plan sells), ``no_user`` (a checkout that names no user and whose email is no single
    profile's) or ``not_used`` (an event type UsageFlow does not use, one without anything it
    uses, or any but a ``price.*`` event under ``manual_stripe_integration``). ``user_id`` is
    the user it concerned, when known. ``warning`` is set when the event needs the app to act
    (a price no plan sells); it is the text logged, once, at warning level.
    """

    event_id: str
    type: str
    action: WebhookAction
    user_id: str | None = None
    reason: WebhookReason | None = None
    warning: str | None = None


class PlanSyncResult(_Model):
    """Plans written by :meth:`UsageFlow.sync_plans_from_stripe`; ``warnings`` lists prices or
    metadata entries that were skipped, and why."""

    plans: list[Plan]
    warnings: list[str] = []


class ReconcileResult(_Model):
    """Counts of what :meth:`UsageFlow.reconcile` did with the subscriptions it read:
    ``applied`` to profiles (a state read now is newer than every webhook sent before the
    read), ``stale`` (a webhook newer than the read had already been applied, or the store
    already holds a state read in the same second), ``pending`` (kept for customers linked to
    no user yet). ``links``: customers linked to users from completed checkout sessions."""

    subscriptions: int
    applied: int
    stale: int
    pending: int
    links: int = 0


class ExportResult(_Model):
    """What :meth:`UsageFlow.export_usage_to_stripe` sent. ``skipped_no_customer`` counts usage
    of users without a ``stripe_customer_id``; ``skipped`` counts refunds, resets and events
    older than Stripe accepts (35 days). ``cursor`` is the last ledger id handled."""

    event_name: str
    sent: int
    skipped_no_customer: int
    skipped: int
    cursor: int


# -- Stripe API steps -----------------------------------------------------------------------------
@dataclass(frozen=True)
class StripeCall:
    """One Stripe API request: ``client.<path>.<method>(*args, params=..., options=...)`` (or
    its ``_async`` twin), answered as plain dicts. A failure is sent back as a
    :class:`UsageFlowError` (``USAGE_CONFIG_ERROR``) instead of a result, so that the operation
    can record what it finished before it re-raises."""

    client: Any
    path: tuple[str, ...]
    method: str
    args: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] | None = None

    def _target(self, suffix: str) -> Any:
        obj = self.client
        for part in self.path:
            # stripe < 13 had the v1 services on the client itself.
            obj = getattr(obj, part, obj) if part == "v1" else getattr(obj, part)
        return getattr(obj, self.method + suffix)

    def _log(self, flow: Any) -> None:
        if getattr(getattr(flow, "options", None), "debug", False):
            _log.debug("usageflow stripe %s.%s %s", ".".join(self.path), self.method, self.args)

    def run(self, flow: Any) -> Any:
        import stripe

        self._log(flow)
        try:
            method = self._target("")
            return _plain(method(*self.args, params=self.params, options=self.options))
        except stripe.StripeError as exc:
            return _api_error(self, exc)

    async def arun(self, flow: Any) -> Any:
        import stripe

        self._log(flow)
        try:
            method = self._target("_async")
            result = await method(*self.args, params=self.params, options=self.options)
            return _plain(result)
        except stripe.StripeError as exc:
            return _api_error(self, exc)


def _client(flow: Any, *, sync: bool) -> tuple[Any, Any]:
    """A ``StripeClient`` over a new httpx client (returned too, to be closed), at the
    ``stripe`` module's ``api_base`` (so ``stripe.api_base = ...`` points UsageFlow at
    stripe-mock or a test server too)."""
    try:
        import stripe
    except ImportError:  # pragma: no cover - stripe is an optional dependency
        raise missing_dependency("stripe", "stripe") from None
    api_key = (
        getattr(flow, "stripe_api_key", None) or os.environ.get("STRIPE_API_KEY") or stripe.api_key
    )
    if not api_key:
        raise config_error("a Stripe API key is needed: pass stripe_api_key= or set STRIPE_API_KEY")
    # Sync: the library's default client (requests when installed); async: its httpx client.
    http = stripe.new_default_http_client() if sync else stripe.HTTPXClient()
    client = stripe.StripeClient(
        api_key,
        base_addresses={"api": stripe.api_base, "meter_events": stripe.meter_events_api_base},
        http_client=http,
    )
    return client, http


def run_with_client(flow: Any, make_op: Callable[[Any], Op[T]], client: Any) -> T:
    """Run a Stripe operation on the sync flow with ``client`` (or one made for it, closed
    after)."""
    if client is not None:
        return cast(T, flow._run(make_op(client)))
    client, http = _client(flow, sync=True)
    try:
        return cast(T, flow._run(make_op(client)))
    finally:
        http.close()


async def arun_with_client(flow: Any, make_op: Callable[[Any], Op[T]], client: Any) -> T:
    """The async twin of :func:`run_with_client`."""
    if client is not None:
        return cast(T, await flow._run(make_op(client)))
    client, http = _client(flow, sync=False)
    try:
        return cast(T, await flow._run(make_op(client)))
    finally:
        await http.close_async()


def _plain(value: Any) -> Any:
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else value


def _api_error(step: StripeCall, exc: Exception) -> UsageFlowError:
    message = _SECRET_TOKEN.sub(lambda m: f"{m.group(1)}_***", str(exc) or type(exc).__name__)
    return config_error(
        f"Stripe API {'.'.join(step.path)}.{step.method} failed: {message}",
        operation=f"stripe.{'.'.join(step.path)}.{step.method}",
        http_status=getattr(exc, "http_status", None),
        original_error=type(exc).__name__,
    )


def _request(step: StripeCall) -> Op[Any]:
    result = yield step
    if isinstance(result, UsageFlowError):
        raise result
    return result


def _list_all(
    path: tuple[str, ...],
    params: Mapping[str, Any],
    client: Any,
    args: tuple[str, ...] = (),
) -> Op[list[dict[str, Any]]]:
    """Every object of a Stripe list endpoint, page by page (``starting_after``)."""
    items: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page_params = {**params, "limit": 100}
        if after is not None:
            page_params["starting_after"] = after
        page = yield from _request(StripeCall(client, path, "list", args, page_params))
        data = page.get("data") or []
        items.extend(data)
        if not page.get("has_more") or not data:
            return items
        after = str(data[-1]["id"])


# -- webhooks ---------------------------------------------------------------------------------
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


def _id(value: object, what: str = "id") -> str | None:
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
    price_id = _id(obj.get("id"), "price id")
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
        amount = _decimal(_price_amount(obj))
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
    sub_id = _id(sub.get("id"), "subscription id")
    customer = _id(sub.get("customer"), "customer id")
    status = sub.get("status")
    if sub_id is None or customer is None or not isinstance(status, str):
        raise _payload_error("a subscription needs an id, a customer and a status")
    status = _text(status, "subscription status")
    items = [
        (price, item)
        for item in _items(_get(sub, "items", "data"), "subscription items")
        if isinstance(item, Mapping) and (price := _id(item.get("price"), "price id"))
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
    )


def _invoice_state(
    invoice: Mapping[str, Any], created: int, catalog: Catalog
) -> StripeSubscription | None:
    sub_id = _id(invoice.get("subscription"), "subscription id") or _id(
        _get(invoice, "parent", "subscription_details", "subscription"), "subscription id"
    )
    customer = _id(invoice.get("customer"), "customer id")
    if sub_id is None or customer is None:
        return None  # a one-off invoice
    lines = []
    for line in _items(_get(invoice, "lines", "data"), "invoice lines"):
        if not isinstance(line, Mapping):
            continue
        details = _get(line, "parent", "subscription_item_details")
        proration = line.get("proration") or (details or {}).get("proration")
        from_subscription = line.get("type") == "subscription" or details is not None
        price = _id(line.get("price"), "price id") or _id(
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
    if kind == "checkout.session.completed":
        customer = _id(obj.get("customer"), "customer id")
        user_id = _valid_name(obj.get("client_reference_id"))
        email = _valid_name(_get(obj, "customer_details", "email") or obj.get("customer_email"))
        if customer is None or not (user_id or email):
            return Changes()
        return Changes(
            link=StripeLink(
                customer_id=customer,
                user_id=user_id,
                email=email,
                order_key=f"{created:012d}|{event['id']}",
            )
        )
    if kind in SUBSCRIPTION_EVENTS:
        return Changes(subscription=subscription_state(obj, created, kind, catalog))
    if kind == "invoice.paid":
        return Changes(subscription=_invoice_state(obj, created, catalog))
    return Changes()


def _apply(
    core: Core, event_id: str | None, kind: str, created: int, changes: Changes
) -> Op[StripeApplied]:
    now = core.now()
    applied: StripeApplied = yield call(
        "apply_stripe_event",
        event_id=event_id,
        event_type=kind,
        created=datetime.fromtimestamp(created, tz=timezone.utc),
        now=now,
        price=changes.price,
        link=changes.link,
        subscription=changes.subscription,
    )
    if changes.price is not None:
        core.cache.invalidate_plans()
    if applied.user_id is not None:
        core.cache.invalidate_user(applied.user_id)
    return applied


def _unsold(changes: Changes, catalog: Catalog) -> str | None:
    """The price id the changes would record that no plan sells, if any. An ended
    subscription's price does not count: no plan would apply to it anyway."""
    if changes.price is not None and changes.price.stripe_price_id not in catalog.by_price:
        return changes.price.stripe_price_id
    sub = changes.subscription
    if sub is not None and not sub.ended and sub.plan not in catalog.by_price:
        return sub.plan
    return None


def _unsold_warning(
    event: Mapping[str, Any], changes: Changes, price: str, user: str | None
) -> str:
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


def _reason(
    store_action: str, changes: Changes, unknown_price: bool
) -> tuple[WebhookAction, WebhookReason | None]:
    """The public action of what the store did, and why when nothing changed."""
    if store_action == "stale":
        return "ignored", "stale"
    if store_action != "ignored":
        return cast(WebhookAction, store_action), None
    if unknown_price:
        return "ignored", "unknown_price"
    return "ignored", "no_user" if changes.link is not None else "not_used"


def handle_webhook(
    core: Core,
    raw_body: bytes | str,
    signature: str | None,
    secret: str | None,
    tolerance: int = DEFAULT_TOLERANCE,
) -> Op[WebhookResult]:
    """Verify, decide and apply one webhook event (nothing is written unless it verifies).

    A price no plan sells is never silent: a ``price.*`` event for it is ``ignored``
    (``unknown_price``); a subscription state with it is recorded as any other (the plan
    applies as soon as it exists) and its result carries a ``warning``. Either way the warning
    is logged once, at warning level, with the price id (not for a redelivery or a stale
    state, which change nothing)."""
    event = verify(raw_body, signature, secret, tolerance)
    kind = str(event["type"])
    manual = core.options.manual_stripe_integration
    catalog = yield from core._catalog()
    changes = decide(event, catalog, manual)
    if _unsold(changes, catalog) is not None:
        # The cached plans may predate a plan created elsewhere: read them again before
        # calling the price unsold (and before choosing among a subscription's items).
        core.cache.invalidate_plans()
        catalog = yield from core._catalog()
        changes = decide(event, catalog, manual)
    unsold = _unsold(changes, catalog)
    unknown_price = unsold is not None and changes.price is not None
    applied = yield from _apply(
        core,
        event["id"],
        kind,
        int(event["created"]),
        Changes() if unknown_price else changes,
    )
    action, reason = _reason(applied.action, changes, unknown_price)
    warning = None
    if unsold is not None and applied.action not in ("duplicate", "stale"):
        warning = _unsold_warning(event, changes, unsold, applied.user_id)
        logger.warning(
            "%s", warning, extra={"stripe_price_id": unsold, "stripe_event_id": event["id"]}
        )
    return WebhookResult(
        event_id=event["id"],
        type=kind,
        action=action,
        user_id=applied.user_id,
        reason=reason,
        warning=warning,
    )


# -- plans from Stripe -------------------------------------------------------------------------
def metadata_limits(
    metadata: Mapping[str, Any], where: str, warnings: list[str]
) -> dict[str, tuple[int, str]]:
    """``usageflow:<feature>=<limit>`` (``-1`` or ``unlimited``: no limit) and
    ``usageflow:<feature>:period=<period>`` entries -> ``{feature: (limit, period)}``."""
    limits: dict[str, tuple[int, str]] = {}
    periods: dict[str, str] = {}
    for key, raw in metadata.items():
        if not isinstance(key, str) or not key.startswith(_METADATA_PREFIX):
            continue
        name = key[len(_METADATA_PREFIX) :]
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
            warnings.append(f"{where}: {_METADATA_PREFIX}{feature}:period has no limit; ignored")
    return limits


def sync_plans(core: Core, client: Any) -> Op[PlanSyncResult]:
    """Active recurring prices (with their products) -> plans; Payment Links -> their URLs;
    product (then price) metadata -> limits."""
    prices = yield from _list_all(
        ("v1", "prices"), {"active": "true", "expand": ["data.product"]}, client
    )
    links = yield from _list_all(("v1", "payment_links"), {"active": "true"}, client)
    link_of: dict[str, str] = {}
    for link in links:
        link_id, url = _id(link.get("id")), link.get("url")
        if link_id is None or not isinstance(url, str):
            continue
        items = yield from _list_all(("v1", "payment_links", "line_items"), {}, client, (link_id,))
        for item in items:
            price_id = _id(item.get("price"))
            if price_id is not None:
                link_of.setdefault(price_id, url)
    plans: list[Plan] = []
    warnings: list[str] = []
    for price in prices:
        price_id = _id(price.get("id"))
        product = price.get("product")
        if price_id is None:
            continue
        if not isinstance(product, Mapping):
            warnings.append(f"{price_id}: product not expanded; skipped")
            continue
        if price.get("type") != "recurring":
            warnings.append(f"{price_id}: not a recurring price; skipped")
            continue
        if product.get("active") is False:
            warnings.append(f"{price_id}: product {product.get('id')} is archived; skipped")
            continue
        name = str(product.get("name") or price_id)
        if price.get("nickname"):
            name = f"{name} ({price['nickname']})"
        limits = metadata_limits(product.get("metadata") or {}, str(product.get("id")), warnings)
        limits.update(metadata_limits(price.get("metadata") or {}, price_id, warnings))
        amount = _price_amount(price)
        currency = price.get("currency")
        plan = yield from core.create_plan(
            name[:200],
            price_id,
            amount,
            str(currency).lower() if currency else None,
            amount == 0,
            link_of.get(price_id),
            dict(limits),
        )
        plans.append(plan)
    return PlanSyncResult(plans=plans, warnings=warnings)


def reconcile(core: Core, client: Any) -> Op[ReconcileResult]:
    """Re-read every subscription (and completed checkout) and apply what the store lacks,
    through the same order-safe store call as the webhooks."""
    if core.options.manual_stripe_integration:
        raise config_error(
            "reconcile writes subscriptions to profiles; with manual_stripe_integration=True "
            "the app keeps them itself"
        )
    catalog = yield from core._catalog()
    created = math.floor(core.now().timestamp())
    sessions = yield from _list_all(("v1", "checkout", "sessions"), {"status": "complete"}, client)
    links = 0
    for session in sessions:
        event = {"id": f"reconcile:{session.get('id')}", "type": "checkout.session.completed"}
        stamp = session.get("created")
        changes = decide(
            {
                **event,
                "created": stamp if isinstance(stamp, int) else created,
                "data": {"object": session},
            },
            catalog,
            manual=False,
        )
        if changes.link is not None:
            applied = yield from _apply(core, None, "reconcile", created, changes)
            links += applied.action == "applied"
    subs = yield from _list_all(("v1", "subscriptions"), {"status": "all"}, client)
    counts = {"applied": 0, "stale": 0, "pending": 0}
    total = 0
    for sub in subs:
        state = subscription_state(sub, created, "reconcile", catalog)
        if state is None:
            continue
        total += 1
        applied = yield from _apply(core, None, "reconcile", created, Changes(subscription=state))
        counts[applied.action] = counts.get(applied.action, 0) + 1
    return ReconcileResult(
        subscriptions=total,
        applied=counts["applied"],
        stale=counts["stale"],
        pending=counts["pending"],
        links=links,
    )


# -- metered billing ----------------------------------------------------------------------------
def export_usage(
    core: Core,
    event_name: str,
    feature_name: str | None,
    batch_size: int,
    customer_key: str,
    value_key: str,
    identifier_prefix: str,
    client: Any,
) -> Op[ExportResult]:
    """Send new ledger events to a Stripe meter, batch by batch, moving the meter's cursor
    after each batch (and, on a failure, up to the last event Stripe accepted)."""
    for label, text in (
        ("event_name", event_name),
        ("customer_key", customer_key),
        ("value_key", value_key),
    ):
        if not isinstance(text, str) or not text.strip():
            raise invalid(f"{label} must be a non-empty string", field=label)
    if not isinstance(identifier_prefix, str):
        raise invalid("identifier_prefix must be a string", field="identifier_prefix")
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or not 1 <= batch_size <= 1000
    ):
        raise invalid("batch_size must be between 1 and 1000", field="batch_size")
    meter = event_name if feature_name is None else f"{event_name}:{feature_name}"
    sent = skipped = no_customer = 0
    cursor = 0
    oldest = core.now() - METER_MAX_AGE
    while True:
        cursor, rows = yield call(
            "stripe_export_batch", meter=meter, feature_name=feature_name, limit=batch_size
        )
        if not rows:
            break
        done = cursor
        for event, customer in rows:
            credits = event.credits_used or 0
            billable = event.event_type in ("usage", "adjustment") and credits > 0
            if not billable or event.timestamp < oldest:
                skipped += 1
            elif customer is None:
                no_customer += 1
            else:
                identifier = f"{identifier_prefix}{event.id}"
                result = yield StripeCall(
                    client,
                    ("v1", "billing", "meter_events"),
                    "create",
                    params={
                        "event_name": event_name,
                        "payload": {customer_key: customer, value_key: str(credits)},
                        "identifier": identifier,
                        "timestamp": int(event.timestamp.timestamp()),
                    },
                    options={"idempotency_key": identifier},
                )
                if isinstance(result, UsageFlowError):
                    if done > cursor:
                        yield call("advance_stripe_cursor", meter=meter, event_id=done)
                    raise result
                sent += 1
            done = event.id
        cursor = yield call("advance_stripe_cursor", meter=meter, event_id=done)
        if len(rows) < batch_size:
            break
    return ExportResult(
        event_name=event_name,
        sent=sent,
        skipped_no_customer=no_customer,
        skipped=skipped,
        cursor=cursor,
    )
