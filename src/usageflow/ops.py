"""The edge between the core and the stores: every store operation, declared once.

An operation is a typed request, :class:`StoreCall[T] <StoreCall>`, made by one of the
functions below. The core yields it and gets a ``T`` back::

    charge = yield from ops.charge(user_id=..., feature_name=..., ...)   # a Charge

a flow's driver hands it to its store (``store.call(op)`` / ``await astore.call(op)``), and
mypy checks both what the core asks and what it gets. A store implements an operation under
its name: the SQLite store as a method, the PostgreSQL and Supabase stores as the SQL function
their one table (:data:`usageflow.stores.sql.OPERATIONS`) maps it to. Each function's
docstring is the promise every store keeps; the conformance suite checks it.

The values operations answer with live here too: they belong to neither side.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, NamedTuple, ParamSpec, TypeVar

from usageflow.models import (
    Alert,
    CreditPack,
    FeatureLimit,
    Grant,
    LimitAdjustment,
    Membership,
    Plan,
    Profile,
    StripeEventRecord,
    UsageEvent,
)

__all__ = [
    "OPERATIONS",
    "PROFILE_FIELDS",
    "STRIPE_OPERATIONS",
    "Charge",
    "HourlyTotal",
    "ResetInfo",
    "StoreCall",
    "StripeApplied",
    "StripeLink",
    "StripePrice",
    "StripeGrant",
    "StripeRefund",
    "StripeSubscription",
    "UsageRead",
]

T = TypeVar("T")
P = ParamSpec("P")


class StoreCall(Generic[T]):
    """One store operation: its name and keyword arguments; it answers a ``T``.

    ``yield from`` it inside a core operation to yield it and get the store's answer back.
    """

    __slots__ = ("kwargs", "method")

    def __init__(self, method: str, kwargs: dict[str, Any]) -> None:
        self.method = method
        self.kwargs = kwargs

    def __iter__(self) -> Generator[StoreCall[T], Any, T]:
        result: T = yield self
        return result

    def __repr__(self) -> str:
        return f"StoreCall({self.method!r})"  # no arguments: they may hold user data


#: The profile columns :func:`upsert_profile` may set.
PROFILE_FIELDS = (
    "email",
    "plan",
    "subscription_status",
    "stripe_customer_id",
    "current_period_start",
    "current_period_end",
    "seats",
)

#: The name of every operation, in the order they are declared here.
OPERATIONS: list[str] = []


def _operation(fn: Callable[P, StoreCall[T]]) -> Callable[P, StoreCall[T]]:
    OPERATIONS.append(fn.__name__)
    return fn


# -- the values operations answer with --------------------------------------------------------
class Charge(NamedTuple):
    """What a store did for a charge or a reservation (a named tuple: one is built per
    decision, and a tuple is built in a third of a frozen dataclass's time).

    ``used`` is the recorded usage in the window after the operation, ``held`` the credits held
    by live reservations (this one included when it was granted). ``event`` is the ledger row
    written (or, when ``replayed``, the one an idempotency key matched). ``reservation_id`` is
    set for reservations; ``first_credits``, for a replayed one, is what its first request
    held (so that a replay with other credits is refused). ``alerts`` are the thresholds
    whose alerts this charge recorded.

    ``granted`` is the part of ``used`` that credit grants paid for (so ``used - granted`` is
    what the plan's allowance paid), ``balance`` the credits left on live grants, both after
    the operation; both are 0 for an unlimited feature, which never touches grants.
    """

    allowed: bool
    used: int
    held: int
    event: UsageEvent | None = None
    replayed: bool = False
    reservation_id: str | None = None
    first_credits: int | None = None
    alerts: tuple[int, ...] = ()
    granted: int = 0
    balance: int = 0
    #: A team member's decision: the numbers above are the account's pool; these are the
    #: member's own, ``(used, held, granted, balance)``; ``scope`` says which constraint
    #: refused (``account`` or ``member``).
    member: tuple[int, int, int, int] | None = None
    scope: str | None = None


class UsageRead(NamedTuple):
    """What :func:`usage` reads: the recorded usage in the window, the credits held now, the
    part of ``used`` grants paid for, and the credits left on live grants (with ``pool_id``:
    the pool's, and ``member`` the member's own ``(used, held, granted, balance)``)."""

    used: int
    held: int
    granted: int = 0
    balance: int = 0
    member: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class ResetInfo:
    total: int
    last_reset_at: datetime | None
    pre_reset_total: int


@dataclass(frozen=True)
class HourlyTotal:
    user_id: str
    feature_name: str
    hour: datetime
    total: int


@dataclass(frozen=True)
class StripePrice:
    """A price change from a ``price.*`` event: what :func:`update_price` writes."""

    stripe_price_id: str
    price_amount: Decimal | None
    price_currency: str | None


@dataclass(frozen=True)
class StripeLink:
    """A Stripe customer to link to a user (from ``checkout.session.completed``).

    ``user_id`` is the ``client_reference_id`` the app put on the Payment Link; without it the
    user is the one profile whose ``email`` equals ``email`` (case-insensitively). ``order_key``
    orders links of one customer: a link never replaces one with a greater or equal key.
    """

    customer_id: str
    user_id: str | None
    email: str | None
    order_key: str


@dataclass(frozen=True)
class StripeSubscription:
    """The state of one Stripe subscription as an event (or the API) shows it.

    ``order_key`` is a string that sorts (bytewise) in the order the states happened; a state
    never replaces one with a greater or equal key. With ``period_guard`` (``invoice.paid``,
    which may be paid late for an old period) it also never replaces a state whose
    ``current_period_end`` is later than its own. ``started`` is the subscription's own
    ``created`` (``None`` when the event does not carry it: ``invoice.paid``) and ``ended`` is
    true for statuses after which its plan no longer applies: both choose which of a user's
    subscriptions the profile shows.
    """

    subscription_id: str
    customer_id: str
    order_key: str
    started: datetime | None
    ended: bool
    plan: str
    status: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    period_guard: bool = False
    #: The subscription's quantity (seats), from the item whose price was chosen.
    quantity: int | None = None


@dataclass(frozen=True)
class StripeGrant:
    """Credits bought in one Checkout Session (a credit pack): the grants to make, once per
    session.

    The user is ``user_id`` (the session's ``client_reference_id``), else the user the
    session's ``customer_id`` is linked to, else the one profile with ``email``. Each grant is
    ``(feature_name, credits, expires_at)``, keyed ``checkout:<session_id>:<feature_name>``
    (so a session grants once, whatever the events that carry it), with source ``stripe``,
    ``reason`` the pack's name and ``payment_ref`` the session's payment intent."""

    session_id: str
    user_id: str | None
    customer_id: str | None
    email: str | None
    payment_ref: str | None
    reason: str
    grants: tuple[tuple[str, int, datetime | None], ...]


@dataclass(frozen=True)
class StripeRefund:
    """A charge refunded (``charge.refunded``): ``refunded`` of ``amount`` (cumulative, in the
    currency's smallest unit) of the payment ``payment_ref``."""

    payment_ref: str
    refunded: int
    amount: int


@dataclass(frozen=True)
class StripeApplied:
    """What :func:`apply_stripe_event` did: ``action`` is ``applied``, ``duplicate`` (the
    event id was processed before: nothing written), ``stale`` (an older state than the stored
    one: only the event id recorded), ``pending`` (a subscription whose customer is linked to
    no user yet: stored, applied when the customer is linked) or ``ignored``. ``user_id`` is
    the user whose profile the event concerns, when known. ``grants`` are the grants a credit
    pack made (or, for a session granted before, found); ``unrecovered`` the credits a refund
    could not take back, per feature (already spent)."""

    action: str
    user_id: str | None = None
    grants: tuple[Grant, ...] = ()
    unrecovered: tuple[tuple[str, int], ...] = ()


# -- plans, limits, profiles, adjustments -------------------------------------------------------
@_operation
def load_catalog() -> StoreCall[list[Plan]]:
    """Every plan, with its feature limits."""
    return StoreCall("load_catalog", {})


@_operation
def upsert_plan(
    *,
    name: str,
    stripe_price_id: str | None,
    price_amount: Decimal | None,
    price_currency: str | None,
    is_free: bool,
    payment_link_url: str | None,
) -> StoreCall[Plan]:
    """Create a plan, or update the one with this ``stripe_price_id`` (or, when that is
    ``None``, the price-less plan with this ``name``)."""
    return StoreCall("upsert_plan", locals())


@_operation
def set_feature_limit(
    *, plan_id: int, feature_name: str, limit_value: int, period: str, per_seat: bool = False
) -> StoreCall[FeatureLimit]:
    """Create or replace the limit of ``feature_name`` in a plan (unknown plan: error);
    ``per_seat``: the limit is per seat of the subscription."""
    return StoreCall("set_feature_limit", locals())


@_operation
def update_price(
    *, stripe_price_id: str, price_amount: Decimal | None, price_currency: str | None
) -> StoreCall[int]:
    """Set the price of the plan sold at ``stripe_price_id``; answer the rows changed."""
    return StoreCall("update_price", locals())


@_operation
def get_profile(*, user_id: str) -> StoreCall[Profile | None]:
    """The user's profile, ``None`` when there is none."""
    return StoreCall("get_profile", locals())


@_operation
def upsert_profile(*, user_id: str, fields: dict[str, Any]) -> StoreCall[Profile]:
    """Create the profile or set the given columns (a subset of :data:`PROFILE_FIELDS`)."""
    return StoreCall("upsert_profile", locals())


@_operation
def add_limit_adjustment(
    *,
    user_id: str,
    feature_name: str,
    amount: int,
    type: str,
    start_date: datetime,
    end_date: datetime,
    metadata: dict[str, Any] | None,
) -> StoreCall[LimitAdjustment]:
    """Record a limit adjustment of the user's feature."""
    return StoreCall("add_limit_adjustment", locals())


@_operation
def get_limit_adjustments(
    *, user_id: str, feature_name: str, ending_after: datetime
) -> StoreCall[list[LimitAdjustment]]:
    """The user's adjustments of a feature that end after ``ending_after``."""
    return StoreCall("get_limit_adjustments", locals())


# -- the ledger -------------------------------------------------------------------------------
@_operation
def charge(
    *,
    user_id: str,
    feature_name: str,
    credits: int,
    event_type: str,
    limit: int | None,
    window_start: datetime | None,
    now: datetime,
    metadata: dict[str, Any] | None,
    idempotency_key: str | None,
    alert_thresholds: Sequence[int] | None = None,
    resets_at: datetime | None = None,
    force: bool = False,
    pool_id: str | None = None,
    member_cap: int | None = None,
) -> StoreCall[Charge]:
    """Atomically: if the credits fit, append an event and bump the counter. ``limit=None``
    always records (tracking, refunds) and never touches grants. A known idempotency key
    records nothing and answers the earlier event with ``replayed=True``.

    Grants (with a ``limit``): the plan's allowance left is ``free = max(0, limit -
    max(used - granted, 0))``; the credits fit when ``credits + held <= free + balance``, and
    the part beyond ``free`` is drawn from live grants, the one expiring first first (grants
    without expiry last). ``force`` (``increment_usage``) always records: it draws what the
    grants hold and records the rest beyond the limit. A negative ``credits`` (a refund)
    gives back up to ``granted`` to the grants it was drawn from, in the reverse order (an
    expired grant keeps nothing); the event's ``granted`` is what it paid from (or gave back
    to) grants.

    A team member (``pool_id``: their account): ``limit`` is the account's and the pool is
    the account's key; ``member_cap`` (``None``: none) bounds what the member draws from the
    pool in the window. The room is ``min(pool room, cap room)`` (pool room: allowance left
    plus the account's balance less the pool's holds; cap room: ``cap - max(member used -
    member granted, 0) - member held``); beyond it the member's own grants pay (beyond the
    pool and the cap); a charge that fits none of them is refused with ``scope`` the tighter
    of the two. The member's key records the whole charge (``granted``: what their own
    grants paid), the account's key the part the pool paid (metadata ``_usageflow_member``)
    with its grant share. A refund gives back to the member's own grants first, then to the
    pool. The idempotency key is the member's.
    With ``alert_thresholds`` (percents of ``limit``), in the same transaction: for each
    threshold ``t`` the charge crossed (``used * 100 < t * limit <= (used + credits) * 100``),
    record an alert unless one for the same (user, feature, threshold) was recorded at or
    after the start of the alert window: ``window_start``, or the key's last reset when that
    is later (``None`` and no reset: ever). ``resets_at`` is stored with the alert."""
    return StoreCall("charge", locals())


@_operation
def reserve(
    *,
    reservation_id: str,
    user_id: str,
    feature_name: str,
    credits: int,
    limit: int | None,
    window_start: datetime | None,
    now: datetime,
    expires_at: datetime,
    idempotency_key: str | None,
    alert_thresholds: Sequence[int] | None = None,
    resets_at: datetime | None = None,
    pool_id: str | None = None,
    member_cap: int | None = None,
) -> StoreCall[Charge]:
    """Atomically: if the credits fit (as :func:`charge` decides, grants and teams included),
    hold them
    until ``expires_at``. A reservation id used before is invalid input
    (``USAGE_INVALID_PARAMS``) on every store. The hold keeps ``limit`` and ``window_start``
    (and ``alert_thresholds`` with ``resets_at``): its commit is split between the plan's
    allowance and grants as a forced :func:`charge` in that window, and records alerts as
    :func:`charge` does."""
    return StoreCall("reserve", locals())


@_operation
def settle(
    *, reservation_id: str, credits: int | None, now: datetime, metadata: dict[str, Any] | None
) -> StoreCall[UsageEvent | None]:
    """Commit (``credits`` given: record them, free the hold) or release (``None``) a
    reservation. Committing twice answers the first event; an expired hold still commits;
    committing a released one, or an unknown id, is a ``USAGE_RESERVATION_ERROR``."""
    return StoreCall("settle", locals())


@_operation
def usage(
    *,
    user_id: str,
    feature_name: str,
    window_start: datetime | None,
    now: datetime,
    pool_id: str | None = None,
) -> StoreCall[UsageRead]:
    """The recorded usage in the window, the credits held now, the part of the usage grants
    paid for in the window, and the credits left on live grants, read consistently."""
    return StoreCall("usage", locals())


@_operation
def reset(
    *,
    user_id: str,
    feature_name: str,
    window_start: datetime | None,
    now: datetime,
    metadata: dict[str, Any] | None,
) -> StoreCall[UsageEvent]:
    """Record a reset event: usage in windows containing ``now`` restarts from zero. The
    usage it zeroed is stored as ``metadata['pre_reset_total']``."""
    return StoreCall("reset", locals())


@_operation
def usage_since_reset(*, user_id: str, feature_name: str) -> StoreCall[ResetInfo]:
    """The key's total, its last reset and the usage that reset zeroed."""
    return StoreCall("usage_since_reset", locals())


@_operation
def hourly_totals(
    *,
    user_ids: Sequence[str],
    feature_names: Sequence[str],
    start: datetime | None,
    end: datetime,
    by_member: bool = False,
) -> StoreCall[list[HourlyTotal]]:
    """Net credits per (user, feature, UTC hour) in ``[start, end)``, resets excluded,
    in one query. ``by_member``: the events of the accounts ``user_ids`` grouped by the
    member that spent them (metadata ``_usageflow_member``; the account itself when none)."""
    return StoreCall("hourly_totals", locals())


@_operation
def list_events(
    *, user_id: str, feature_name: str | None = None, limit: int = 100
) -> StoreCall[list[UsageEvent]]:
    """The user's most recent events, newest first."""
    return StoreCall("list_events", locals())


@_operation
def ledger_check(*, user_id: str, feature_name: str) -> StoreCall[tuple[int, int]]:
    """``(counter total, SUM of the ledger)`` of a key: equal in a healthy store."""
    return StoreCall("ledger_check", locals())


@_operation
def top_usage(
    *, feature_name: str, window_start: datetime | None, limit: int
) -> StoreCall[list[tuple[str, int]]]:
    """``(user_id, used)`` of the users with the most recorded usage of ``feature_name`` in
    the window starting at ``window_start`` (``None``: lifetime), measured as :func:`usage`
    measures it (holds left out), most first, ties by user id (bytewise); users whose usage
    is zero or less are left out; at most ``limit`` rows. Read from the feature's counters
    rows (one prefix seek each): the cost grows with the number of users of the feature,
    not with the ledger."""
    return StoreCall("top_usage", locals())


@_operation
def list_recent_events(*, feature_name: str | None, limit: int) -> StoreCall[list[UsageEvent]]:
    """The most recent ledger events of every user (of ``feature_name`` when given), newest
    (greatest id) first, at most ``limit``."""
    return StoreCall("list_recent_events", locals())


# -- team accounts ----------------------------------------------------------------------------
@_operation
def add_member(
    *, account_id: str, user_id: str, limits: dict[str, int], now: datetime
) -> StoreCall[Membership]:
    """Make ``user_id`` a member of ``account_id`` with these caps (a member of it already:
    the caps replaced). Refused (``USAGE_INVALID_PARAMS``) when the user is a member of
    another account, when the account is itself a member, or when the user has members."""
    return StoreCall("add_member", locals())


@_operation
def remove_member(*, account_id: str, user_id: str, now: datetime) -> StoreCall[bool]:
    """End the membership (kept with ``removed_at``); answers whether there was one."""
    return StoreCall("remove_member", locals())


@_operation
def list_members(*, account_id: str, removed: bool) -> StoreCall[list[Membership]]:
    """The account's members by user id (with ``removed``: past members too)."""
    return StoreCall("list_members", locals())


@_operation
def get_membership(*, user_id: str) -> StoreCall[Membership | None]:
    """The user's current membership, if any."""
    return StoreCall("get_membership", locals())


@_operation
def has_members() -> StoreCall[bool]:
    """Whether any account has a current member (read with the catalog: with none, a
    decision need not look for the user's account)."""
    return StoreCall("has_members", {})


# -- credits ----------------------------------------------------------------------------------
@_operation
def grant_credits(
    *,
    user_id: str,
    feature_name: str,
    credits: int,
    expires_at: datetime | None,
    source: str,
    reason: str | None,
    metadata: dict[str, Any] | None,
    idempotency_key: str | None,
    payment_ref: str | None,
    now: datetime,
) -> StoreCall[Grant]:
    """Add a grant of ``credits`` (usable while ``now < expires_at``; ``None``: forever). A
    grant with the same ``idempotency_key`` for the user answers instead (``replayed=True``),
    nothing written. Written under the key's lock, so it never races a decision."""
    return StoreCall("grant_credits", locals())


@_operation
def list_grants(*, user_id: str, feature_name: str | None) -> StoreCall[list[Grant]]:
    """The user's grants (of ``feature_name`` when given), spent and expired ones included,
    newest (greatest id) first."""
    return StoreCall("list_grants", locals())


@_operation
def upsert_credit_pack(
    *,
    name: str,
    credits: dict[str, int],
    stripe_price_id: str | None,
    stripe_payment_link_id: str | None,
    payment_link_url: str | None,
    expires_in_days: int | None,
) -> StoreCall[CreditPack]:
    """Create a credit pack, or update the one with this ``stripe_price_id``, else this
    ``stripe_payment_link_id``, else (with neither) the one of this ``name`` that has
    neither."""
    return StoreCall("upsert_credit_pack", locals())


@_operation
def load_credit_packs() -> StoreCall[list[CreditPack]]:
    """Every credit pack, by id."""
    return StoreCall("load_credit_packs", {})


# -- alerts -----------------------------------------------------------------------------------
@_operation
def load_alert_thresholds() -> StoreCall[list[tuple[str, int | None, list[int]]]]:
    """Every ``(feature_name, plan_id, thresholds)`` set (``plan_id`` ``None``: every plan)."""
    return StoreCall("load_alert_thresholds", {})


@_operation
def set_alert_thresholds(
    *, feature_name: str, plan_id: int | None, thresholds: list[int]
) -> StoreCall[list[int]]:
    """Replace the thresholds of a feature (of one plan, or of every plan when ``plan_id`` is
    ``None``); ``[]`` removes them. Answers the thresholds stored."""
    return StoreCall("set_alert_thresholds", locals())


@_operation
def claim_alerts(*, now: datetime, lease_until: datetime, limit: int) -> StoreCall[list[Alert]]:
    """Lease up to ``limit`` undelivered alerts nobody holds a live lease on (lease expired or
    none) until ``lease_until``, in one transaction: those never tried first, then by
    ``attempts``, then by id. Concurrent callers never get the same alert while its lease
    lasts."""
    return StoreCall("claim_alerts", locals())


@_operation
def finish_alert(*, alert_id: int, delivered: bool, now: datetime) -> StoreCall[bool]:
    """End the lease of an alert: ``delivered`` marks it delivered at ``now``; else its
    ``attempts`` grows by one and it is offered again at the next claim. Answers whether the
    alert exists and was not delivered before."""
    return StoreCall("finish_alert", locals())


@_operation
def list_alerts(*, user_id: str | None, undelivered: bool, limit: int) -> StoreCall[list[Alert]]:
    """The alerts (of ``user_id`` when given; only undelivered ones with ``undelivered``),
    newest (greatest id) first, at most ``limit``."""
    return StoreCall("list_alerts", locals())


# -- Stripe (webhooks, reconcile, metered billing export) --------------------------------------
@_operation
def apply_stripe_event(
    *,
    event_id: str | None,
    event_type: str,
    created: datetime,
    now: datetime,
    price: StripePrice | None = None,
    link: StripeLink | None = None,
    subscription: StripeSubscription | None = None,
    grant: StripeGrant | None = None,
    refund: StripeRefund | None = None,
) -> StoreCall[StripeApplied]:
    """Apply what one Stripe event decided, atomically (all of it or nothing), once.

    In one transaction:

    1. ``event_id`` already in ``stripe_events``: answer ``duplicate`` with the user id
       recorded then; write nothing. (``event_id=None``, used by reconcile, is never
       recorded and never a duplicate.)
    2. ``price``: as :func:`update_price` (plans keep their row when a price is deleted).
    3. ``link``: the user is ``link.user_id`` (its profile created when missing) or the
       single profile with ``lower(email) = lower(link.email)``; none or several: ``ignored``.
       If ``stripe_customers`` holds the customer with an ``order_key`` >= the link's:
       ``stale``. Else upsert ``(customer_id, user_id, order_key)``, set the profile's
       ``email`` when it is NULL, and refresh the user's profile (below).
    4. ``subscription``: if ``stripe_subscriptions`` holds it with ``order_key`` >= the new
       one (or, with ``period_guard``, with a later ``current_period_end``): ``stale`` (but a
       stored ``started`` that is NULL is still set from a non-NULL one). Else upsert the row,
       keeping the stored ``started`` when the new one is NULL. The user is the customer's row
       in ``stripe_customers``, else the profile whose ``stripe_customer_id`` is the customer
       (then a customer row with ``order_key = ''`` is written); neither: ``pending``. Else
       refresh the profile.
    5. ``grant``: the user as :class:`StripeGrant` says (none: ``ignored``); each of its
       grants made as :func:`grant_credits` makes it (a key granted before answers its grant).
    6. ``refund``: for each grant whose ``payment_ref`` is the refund's, the credits to take
       back are ``credits * refunded // amount`` minus what earlier refunds of it targeted;
       take what is left of them (``remaining``), record the rest as ``unrecovered``.
    7. Record ``(event_id, event_type, created, action, user_id, now)`` in ``stripe_events``.

    *Refresh the profile of user U* (the row is created when missing): among the
    subscriptions of every customer linked to U, take the first by ``ended`` (false first),
    ``started`` descending (NULL last), ``subscription_id`` descending, and set the profile's
    ``stripe_customer_id``, ``plan``, ``subscription_status``, ``current_period_start`` and
    ``current_period_end`` from it; with no subscription, set only ``stripe_customer_id`` to
    U's customer with the greatest ``order_key``. The action is ``applied`` unless a step
    above said otherwise.

    Order keys and ids compare bytewise (in PostgreSQL: ``COLLATE "C"``). When several
    profiles have the customer as ``stripe_customer_id``, the one with the lowest id wins.
    """
    return StoreCall("apply_stripe_event", locals())


@_operation
def stripe_export_batch(
    *, meter: str, feature_name: str | None, limit: int
) -> StoreCall[tuple[int, list[tuple[UsageEvent, str | None]]]]:
    """``(cursor, rows)``: the meter's cursor in ``stripe_exports`` (0 when none) and up to
    ``limit`` ledger events with ``id > cursor`` (of ``feature_name`` when given), by id
    ascending, each with its user's ``profiles.stripe_customer_id`` (``None`` without)."""
    return StoreCall("stripe_export_batch", locals())


@_operation
def advance_stripe_cursor(*, meter: str, event_id: int) -> StoreCall[int]:
    """Set the meter's cursor to ``max(cursor, event_id)``; answer the new cursor."""
    return StoreCall("advance_stripe_cursor", locals())


@_operation
def pending_stripe_subscriptions(*, limit: int) -> StoreCall[list[StripeSubscription]]:
    """The subscriptions kept ``pending`` (see :func:`apply_stripe_event`): rows of
    ``stripe_subscriptions`` whose customer has no row in ``stripe_customers``, ordered by
    ``started`` descending (NULL last), then ``subscription_id`` (bytewise), at most
    ``limit``. ``period_guard`` is always false."""
    return StoreCall("pending_stripe_subscriptions", locals())


@_operation
def recent_stripe_events(*, limit: int) -> StoreCall[list[StripeEventRecord]]:
    """The Stripe events recorded in ``stripe_events``, most recently processed first
    (then by event id, bytewise), at most ``limit``."""
    return StoreCall("recent_stripe_events", locals())


#: The operations of Stripe's storage: a store offers all of them or none
#: (:attr:`usageflow.stores.base.Store.stripe`).
STRIPE_OPERATIONS = frozenset(
    {
        "apply_stripe_event",
        "stripe_export_batch",
        "advance_stripe_cursor",
        "pending_stripe_subscriptions",
        "recent_stripe_events",
    }
)


# -- lifecycle: every store runs these as its own methods ----------------------------------------
def migrate() -> StoreCall[int]:
    """Create or upgrade the schema, idempotently; answer the schema version."""
    return StoreCall("migrate", {})


def connection_check() -> StoreCall[bool]:
    """True when the store answers a trivial query."""
    return StoreCall("connection_check", {})
