"""The webhook operation: verify an event, decide what it changes, apply it in one store call.

A generator like those of :mod:`usageflow._core`, driven by both flows; it yields store calls
only (no Stripe API request). The decisions are in :mod:`usageflow.stripe.events`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from usageflow import _log, _observe, ops
from usageflow._core import Core, Op
from usageflow.ops import StripeApplied
from usageflow.stripe._request import StripeRequest
from usageflow.stripe.events import (
    DEFAULT_TOLERANCE,
    Changes,
    decide,
    line_items_wanted,
    outcome,
    unsold_price,
    unsold_warning,
    verify,
)
from usageflow.stripe.results import WebhookResult

__all__ = ["apply_changes", "handle_webhook"]

logger = _log.logger


def apply_changes(
    core: Core, event_id: str | None, kind: str, created: int, changes: Changes
) -> Op[StripeApplied]:
    """Apply ``changes`` in one store call (``event_id`` ``None``: nothing recorded as
    processed, as for reconcile), then forget the cached plans or user they touched."""
    now = core.now()
    applied = yield from ops.apply_stripe_event(
        event_id=event_id,
        event_type=kind,
        created=datetime.fromtimestamp(created, tz=timezone.utc),
        now=now,
        price=changes.price,
        link=changes.link,
        subscription=changes.subscription,
        grant=changes.grant,
        refund=changes.refund,
    )
    if changes.price is not None:
        core.cache.invalidate_plans()
    if applied.user_id is not None:
        core.cache.invalidate_user(applied.user_id)
    return applied


def handle_webhook(
    core: Core,
    raw_body: bytes | str,
    signature: str | None,
    secret: str | None,
    tolerance: int = DEFAULT_TOLERANCE,
    client: Any = None,
) -> Op[WebhookResult]:
    """Verify, decide and apply one webhook event (nothing is written unless it verifies).

    A price no plan sells is never silent: a ``price.*`` event for it is ``ignored``
    (``unknown_price``); a subscription state with it is recorded as any other (the plan
    applies as soon as it exists) and its result carries a ``warning``. Either way the warning
    is logged once, at warning level, with the price id (not for a redelivery or a stale
    state, which change nothing).

    With a Stripe ``client`` (a Stripe API key is configured), a paid payment-mode Checkout
    Session whose packs only its line items can tell has them read from the API (one
    request); a failure of that request raises, so that Stripe delivers the event again."""
    event = verify(raw_body, signature, secret, tolerance)
    kind = str(event["type"])
    manual = core.options.manual_stripe_integration
    catalog = yield from core._catalog()
    changes = decide(event, catalog, manual)
    if unsold_price(changes, catalog) is not None:
        # The cached plans may predate a plan created elsewhere: read them again before
        # calling the price unsold (and before choosing among a subscription's items).
        core.cache.invalidate_plans()
        catalog = yield from core._catalog()
        changes = decide(event, catalog, manual)
    session = None if client is None else line_items_wanted(event, catalog, changes)
    if session is not None:
        path = ("v1", "checkout", "sessions", "line_items")
        page = yield StripeRequest(client, path, "list", (session,), {"limit": 100})
        if isinstance(page, Exception):
            raise page
        obj = {**event["data"]["object"], "line_items": page}
        event = {**event, "data": {**event["data"], "object": obj}}
        changes = decide(event, catalog, manual)
    unsold = unsold_price(changes, catalog)
    unknown_price = unsold is not None and changes.price is not None
    applied = yield from apply_changes(
        core,
        event["id"],
        kind,
        int(event["created"]),
        Changes() if unknown_price else changes,
    )
    granted_before = bool(applied.grants) and all(g.replayed for g in applied.grants)
    action, reason = outcome(applied.action, changes, unknown_price, granted_before)
    warning = None
    if unsold is not None and applied.action not in ("duplicate", "stale"):
        warning = unsold_warning(event, changes, unsold, applied.user_id)
        logger.warning(
            "%s", warning, extra={"stripe_price_id": unsold, "stripe_event_id": event["id"]}
        )
    if applied.unrecovered:
        spent = ", ".join(f"{credits} {feature}" for feature, credits in applied.unrecovered)
        warning = (
            f"refund {event['id']} could not take back {spent} credits of user "
            f"{applied.user_id!r}: they were already spent"
        )
        logger.warning("%s", warning, extra={"stripe_event_id": event["id"]})
    _observe.notify("webhook", action)
    return WebhookResult(
        event_id=event["id"],
        type=kind,
        action=action,
        user_id=applied.user_id,
        reason=reason,
        warning=warning,
        grants=list(applied.grants),
        unrecovered=dict(applied.unrecovered),
    )
