"""Stripe API calls: plan sync, reconcile and meter export, written once for both flows.

Each operation is a generator like those of :mod:`usageflow._core`: it yields store calls and
:class:`StripeRequest` steps, which the sync flow runs with the ``stripe`` library's sync client
and the async flow with its ``*_async`` methods. The ``stripe`` library is imported only when a
request runs or a client is made, and its absence is a ``USAGE_CONFIG_ERROR`` naming the
``pip install`` line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, TypeVar, cast

from usageflow import ops
from usageflow._core import Core, Op
from usageflow.errors import UsageFlowError, config_error, invalid, missing_dependency
from usageflow.models import Plan
from usageflow.stripe._request import StripeRequest, _request
from usageflow.stripe.events import Changes, decide, object_id, subscription_state
from usageflow.stripe.prices import metadata_limits, price_amount
from usageflow.stripe.results import ExportResult, PlanSyncResult, ReconcileResult
from usageflow.stripe.webhooks import apply_changes

__all__ = [
    "METER_MAX_AGE",
    "StripeRequest",
    "arun_with_client",
    "export_usage",
    "reconcile",
    "run_with_client",
    "sync_plans",
]

T = TypeVar("T")

#: Meter events older than this are refused by Stripe; they are skipped, not sent.
METER_MAX_AGE = timedelta(days=35)


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
        page = yield from _request(StripeRequest(client, path, "list", args, page_params))
        data = page.get("data") or []
        items.extend(data)
        if not page.get("has_more") or not data:
            return items
        after = str(data[-1]["id"])


def sync_plans(core: Core, client: Any) -> Op[PlanSyncResult]:
    """Active recurring prices (with their products) -> plans; Payment Links -> their URLs;
    product (then price) metadata -> limits."""
    prices = yield from _list_all(
        ("v1", "prices"), {"active": "true", "expand": ["data.product"]}, client
    )
    links = yield from _list_all(("v1", "payment_links"), {"active": "true"}, client)
    link_of: dict[str, str] = {}
    for link in links:
        link_id, url = object_id(link.get("id")), link.get("url")
        if link_id is None or not isinstance(url, str):
            continue
        items = yield from _list_all(("v1", "payment_links", "line_items"), {}, client, (link_id,))
        for item in items:
            price_id = object_id(item.get("price"))
            if price_id is not None:
                link_of.setdefault(price_id, url)
    plans: list[Plan] = []
    warnings: list[str] = []
    for price in prices:
        price_id = object_id(price.get("id"))
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
        amount = price_amount(price)
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
            applied = yield from apply_changes(core, None, "reconcile", created, changes)
            links += applied.action == "applied"
    subs = yield from _list_all(("v1", "subscriptions"), {"status": "all"}, client)
    counts = {"applied": 0, "stale": 0, "pending": 0}
    total = 0
    for sub in subs:
        state = subscription_state(sub, created, "reconcile", catalog)
        if state is None:
            continue
        total += 1
        applied = yield from apply_changes(
            core, None, "reconcile", created, Changes(subscription=state)
        )
        counts[applied.action] = counts.get(applied.action, 0) + 1
    return ReconcileResult(
        subscriptions=total,
        applied=counts["applied"],
        stale=counts["stale"],
        pending=counts["pending"],
        links=links,
    )


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
        cursor, rows = yield from ops.stripe_export_batch(
            meter=meter, feature_name=feature_name, limit=batch_size
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
                result = yield StripeRequest(
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
                        yield from ops.advance_stripe_cursor(meter=meter, event_id=done)
                    raise result
                sent += 1
            done = event.id
        cursor = yield from ops.advance_stripe_cursor(meter=meter, event_id=done)
        if len(rows) < batch_size:
            break
    return ExportResult(
        event_name=event_name,
        sent=sent,
        skipped_no_customer=no_customer,
        skipped=skipped,
        cursor=cursor,
    )
