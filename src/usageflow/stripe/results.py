"""What the Stripe operations return: one frozen model each (re-exported by
:mod:`usageflow.integrations.stripe`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from usageflow.models import Grant, Plan

__all__ = [
    "ExportResult",
    "PlanSyncResult",
    "ReconcileResult",
    "WebhookAction",
    "WebhookReason",
    "WebhookResult",
]

WebhookAction = Literal["applied", "duplicate", "pending", "ignored"]
WebhookReason = Literal["stale", "unknown_price", "no_user", "not_used", "already_granted"]


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
    uses, or any but a ``price.*`` event under ``manual_stripe_integration``) or
    ``already_granted`` (a credit pack's session granted by an earlier event). ``user_id`` is
    the user it concerned, when known. ``warning`` is set when the event needs the app to act
    (a price no plan sells, a refund that could not take back credits already spent); it is
    the text logged, once, at warning level.

    ``grants``: the credit grants a paid checkout of a credit pack made (or, when granted
    before, found). ``unrecovered``: per feature, the credits a refund could not take back
    because they were spent.
    """

    event_id: str
    type: str
    action: WebhookAction
    user_id: str | None = None
    reason: WebhookReason | None = None
    warning: str | None = None
    grants: list[Grant] = []
    unrecovered: dict[str, int] = {}


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
