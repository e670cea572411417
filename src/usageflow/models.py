"""The values UsageFlow returns. All are immutable pydantic models with snake_case fields."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

__all__ = [
    "Alert",
    "CreditPack",
    "Decision",
    "FeatureLimit",
    "FeatureUsage",
    "Grant",
    "LimitAdjustment",
    "Membership",
    "PendingSubscription",
    "StripeEventRecord",
    "PeriodTotal",
    "Plan",
    "Profile",
    "TopUsers",
    "Usage",
    "UsageEvent",
    "UsageSinceReset",
    "UsageStats",
    "UserOverview",
    "UserUsage",
]

EventType = Literal["usage", "credit", "reset", "adjustment"]
AdjustmentType = Literal["one_time", "recurring"]


_M = TypeVar("_M", bound="_Model")
_new = object.__new__
_set = object.__setattr__  # past the frozen models' own __setattr__


#: The bound of every credits column and counter: a signed 64-bit integer.
INT64_MAX = 2**63 - 1


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def _trusted(cls: type[_M], **values: Any) -> _M:
        """Build from values UsageFlow computed itself (every field given, already the right
        type), skipping validation: the hot path builds a few of these per decision, and
        ``model_construct`` spends most of its time on defaults we never need."""
        instance = _new(cls)
        _set(instance, "__dict__", values)
        _set(instance, "__pydantic_fields_set__", set(values))
        _set(instance, "__pydantic_extra__", None)
        _set(instance, "__pydantic_private__", None)
        return instance


class Usage(_Model):
    """A user's standing on one feature: ``current`` counts recorded and held credits,
    whatever paid for them (the plan's allowance or credit grants).

    ``limit`` and ``remaining`` are ``None`` when the feature is unlimited. ``credit_balance``
    is the credits left on the user's live grants of the feature, and ``remaining`` includes
    it: what is left of the plan's allowance plus the balance, less what is held.
    """

    current: int
    limit: int | None
    remaining: int | None
    is_unlimited: bool
    credit_balance: int = 0
    #: For a member of a team account: which constraint the numbers are those of, the one
    #: that binds first (``account``: the shared pool; ``member``: the member's own cap).
    #: ``None`` for a user in no account.
    scope: Literal["account", "member"] | None = None


class Decision(_Model):
    """The outcome of :meth:`UsageFlow.consume` (or of a reservation).

    ``current`` is the usage after the decision (the charge included when allowed).
    ``resets_at`` is when the window ends, ``None`` for lifetime and rolling windows.
    ``replayed`` is true when an idempotency key matched an earlier write: nothing was charged
    again, and ``event_id`` is that earlier event. ``remaining`` and ``credit_balance`` count
    credit grants as :class:`Usage` does.
    """

    allowed: bool
    feature_name: str
    credits: int
    current: int
    limit: int | None
    remaining: int | None
    is_unlimited: bool
    resets_at: datetime | None
    event_id: int | None = None
    replayed: bool = False
    #: The alert thresholds (percent of ``limit``) this decision's charge crossed.
    alerts: tuple[int, ...] = ()
    #: The credits left on the user's live grants of the feature after the decision.
    credit_balance: int = 0
    #: For a member of a team account, the constraint the numbers are those of (the one that
    #: binds first, or that refused): ``account`` or ``member``; ``None`` otherwise.
    scope: Literal["account", "member"] | None = None


class Grant(_Model):
    """Credits of one feature that do not reset with the plan's period (bought in a credit
    pack, given by hand): spent after the plan's allowance, the one expiring first first.

    ``remaining`` is what is left (usable while the clock is before ``expires_at``; ``None``:
    never expires). ``source`` says where it came from (``manual``: :meth:`grant_credits`,
    ``stripe``: a credit pack bought, ``admin``: the admin page); ``payment_ref`` is the
    Stripe payment intent that paid for it, which a refund is matched by. ``revoked`` is what
    refunds took back, or tried to (what was already spent stays spent).
    """

    id: int
    user_id: str
    feature_name: str
    credits: int
    remaining: int
    expires_at: datetime | None
    source: str
    reason: str | None = None
    metadata: dict[str, Any] | None = None
    payment_ref: str | None = None
    revoked: int = 0
    created_at: datetime
    replayed: bool = False


class CreditPack(_Model):
    """Credits sold in one purchase ("10,000 tokens for $5"), through a Stripe Payment Link.

    ``credits`` maps each feature to the credits one pack grants. A checkout of the Payment
    Link ``stripe_payment_link_id`` (or of the price ``stripe_price_id``, times the quantity)
    grants them, expiring ``expires_in_days`` after the purchase (``None``: never).
    ``payment_link_url`` is where the top-up button leads.
    """

    id: int
    name: str
    credits: dict[str, int]
    stripe_price_id: str | None = None
    stripe_payment_link_id: str | None = None
    payment_link_url: str | None = None
    expires_in_days: int | None = None


class Alert(_Model):
    """A usage threshold crossed: recorded in the same atomic step as the charge that crossed
    it, once per (user, feature, threshold, window), then delivered at least once.

    ``threshold`` is a percent of ``limit``; ``usage`` is the user's usage of the feature in
    the window right after the charge, ``limit`` the limit at that moment. ``window_start`` is
    the start of the window the crossing happened in (``None`` for a lifetime limit; the
    reset's time when the feature was reset within the window), ``resets_at`` when the window
    ends (``None`` for lifetime and rolling windows). ``delivered_at`` is set once a handler
    of :meth:`UsageFlow.deliver_alerts` returned for it; ``attempts`` counts the handler
    calls that raised.
    """

    id: int
    user_id: str
    feature_name: str
    threshold: int
    usage: int
    limit: int
    window_start: datetime | None
    resets_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None = None
    attempts: int = 0


class StripeEventRecord(_Model):
    """A Stripe webhook event as it was processed: ``action`` is what was done with it
    (``applied``, ``pending``, ``ignored``, or ``stale``: an older state than the stored
    one), ``user_id`` the user it concerned, when known."""

    event_id: str
    type: str
    created: datetime
    action: str
    user_id: str | None
    processed_at: datetime


class UsageEvent(_Model):
    """One row of the usage ledger."""

    id: int
    user_id: str
    feature_name: str
    credits_used: int | None
    event_type: EventType
    metadata: dict[str, Any] | None
    timestamp: datetime
    idempotency_key: str | None = None
    replayed: bool = False


class PeriodTotal(_Model):
    date: str
    total: int


class UsageStats(_Model):
    """Usage over a period, bucketed by ``group_by``; every bucket of the period is listed."""

    total: int
    average: float
    max: int
    min: int
    by_period: list[PeriodTotal]


class UsageSinceReset(_Model):
    """``total``: recorded since the last reset (ever, if none); ``pre_reset_total``: the usage
    the last reset zeroed."""

    total: int
    last_reset_date: datetime | None
    pre_reset_total: int


class FeatureLimit(_Model):
    """A plan's limit of one feature. ``per_seat``: ``limit_value`` is per seat, multiplied
    by the seats of the subscription (``Profile.seats``) of the account that has the plan."""

    plan_id: int
    feature_name: str
    limit_value: int
    period: str = "current_month"
    per_seat: bool = False

    @property
    def is_unlimited(self) -> bool:
        return self.limit_value == -1


class Plan(_Model):
    id: int
    name: str
    stripe_price_id: str | None = None
    price_amount: Decimal | None = None
    price_currency: str | None = None
    is_free: bool = False
    payment_link_url: str | None = None
    limits: dict[str, FeatureLimit] = {}


class Profile(_Model):
    """A user's subscription, in saas-subscription-helper's ``profiles`` shape."""

    id: str
    email: str | None = None
    plan: str | None = None
    subscription_status: str | None = None
    stripe_customer_id: str | None = None
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    #: The quantity of the subscription (seats bought), kept from Stripe's subscription
    #: events; ``None``: not known (counts as one seat).
    seats: int | None = None


class Membership(_Model):
    """A user's membership of a team account: the account's plan and pooled quota apply to
    the member, within the member's own caps (``limits``: feature -> credits per window of
    the plan's period). ``removed_at`` is set once the member is removed (their history
    stays theirs)."""

    account_id: str
    user_id: str
    limits: dict[str, int] = {}
    added_at: datetime
    removed_at: datetime | None = None


class LimitAdjustment(_Model):
    id: int
    user_id: str
    feature_name: str
    amount: int
    type: AdjustmentType
    start_date: datetime
    end_date: datetime
    metadata: dict[str, Any] | None = None


class FeatureUsage(_Model):
    """One feature of a user's plan, as :meth:`UsageFlow.get_user_overview` shows it.

    ``current`` counts recorded and held credits (as :class:`Usage`), ``held`` the held ones.
    ``window_start`` and ``resets_at`` bound the window of ``period`` that contains now
    (``None``: open, as for ``lifetime`` and the rolling windows).
    """

    feature_name: str
    period: str
    current: int
    held: int
    limit: int | None
    remaining: int | None
    is_unlimited: bool
    window_start: datetime | None
    resets_at: datetime | None
    credit_balance: int = 0


class UserOverview(_Model):
    """A user at a glance: the stored profile (``None`` when there is none), the plan that
    applies now (``None``: no plan and no free plan) and every feature of that plan, sorted
    by name."""

    user_id: str
    profile: Profile | None
    plan: Plan | None
    features: list[FeatureUsage]


class UserUsage(_Model):
    """A user's recorded usage of a feature in a window (holds not included)."""

    user_id: str
    used: int


class TopUsers(_Model):
    """The result of :meth:`UsageFlow.top_users`: the window measured (``period`` is ``None``
    when it was given as ``since``; ``window_start`` is ``None`` for ``lifetime``) and its
    users with the most usage, most first."""

    feature_name: str
    period: str | None
    window_start: datetime | None
    users: list[UserUsage]


class PendingSubscription(_Model):
    """A Stripe subscription whose customer is linked to no user yet: its latest state is
    kept and applied when the customer is linked (by a checkout, or a profile's
    ``stripe_customer_id``). ``plan`` is the Stripe price id."""

    subscription_id: str
    customer_id: str
    plan: str
    status: str
    started: datetime | None
    current_period_start: datetime | None
    current_period_end: datetime | None
