"""Pure quota decisions: which plan applies, what a user's limit is, what a result means.

Nothing here does I/O; the sync and async flows share every line of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal, NamedTuple

from usageflow.cache import Catalog
from usageflow.models import Decision, LimitAdjustment, Plan, Profile, Usage
from usageflow.ops import Charge
from usageflow.periods import PERIODS, Period, Window, to_utc, window_for

__all__ = [
    "ENDED_STATUSES",
    "Quota",
    "decision",
    "find_plan",
    "plan_for",
    "quota_for",
    "usage_of",
]

#: Subscription statuses after which a profile's plan no longer applies.
ENDED_STATUSES = frozenset({"canceled", "unpaid", "incomplete_expired", "paused"})


def find_plan(catalog: Catalog, ref: object) -> Plan | None:
    """The catalog's plan that ``ref`` names: a :class:`Plan` (found again by its id, so the
    current copy), a plan id or a ``stripe_price_id``. ``None`` when no plan has that name, or
    when ``ref`` is none of these (each caller says what that means for it)."""
    if isinstance(ref, Plan):
        return catalog.plans.get(ref.id)
    if isinstance(ref, int) and not isinstance(ref, bool):
        return catalog.plans.get(ref)
    if isinstance(ref, str):
        return catalog.by_price.get(ref)
    return None


def plan_for(catalog: Catalog, profile: Profile | None) -> Plan | None:
    """The plan that applies to a user: the profile's plan while its subscription lasts,
    else the free plan (``None`` when there is none)."""
    if (
        profile is not None
        and profile.plan
        and (profile.subscription_status or "active") not in ENDED_STATUSES
    ):
        plan = catalog.by_price.get(profile.plan)
        if plan is not None:
            return plan
    return catalog.free_plan


def adjustment_total(adjustments: Iterable[LimitAdjustment], window: Window, now: datetime) -> int:
    """The sum of the adjustments active at ``now``.

    ``recurring`` ones apply to every window while active; ``one_time`` ones only to the
    window in which they start.
    """
    total = 0
    for adj in adjustments:
        start, end = to_utc(adj.start_date), to_utc(adj.end_date)
        if not start <= now < end:
            continue
        if adj.type == "one_time" and window.start is not None and start < window.start:
            continue
        total += adj.amount
    return total


class Quota(NamedTuple):
    """A user's quota on one feature at one moment. ``limit=None`` is unlimited. (A named
    tuple: one is built per decision.)"""

    plan: Plan
    feature_name: str
    limit: int | None
    period: Period
    window: Window
    #: The alert thresholds (percents of ``limit``) of the feature; empty when unlimited.
    alert_thresholds: tuple[int, ...] = ()

    @property
    def is_unlimited(self) -> bool:
        return self.limit is None


def quota_for(
    plan: Plan,
    feature_name: str,
    profile: Profile | None,
    adjustments: Iterable[LimitAdjustment],
    now: datetime,
    period: Period | None = None,
    alert_thresholds: tuple[int, ...] = (),
) -> Quota:
    """Limit and window of ``feature_name`` under ``plan``. A feature the plan does not list
    has limit 0; a limit per seat is multiplied by the profile's ``seats`` (at least one).
    ``period`` overrides the window (not the limit). ``alert_thresholds`` are kept only for a
    limit that is set."""
    row = plan.limits.get(feature_name)
    limit_period = PERIODS[row.period] if row is not None else Period.CURRENT_MONTH
    window_period = period or limit_period
    window = window_for(
        window_period,
        now,
        cycle_start=profile.current_period_start if profile else None,
        cycle_end=profile.current_period_end if profile else None,
    )
    limit: int | None
    if row is None:
        limit = 0
    elif row.limit_value == -1:
        limit = None
    else:
        value = row.limit_value
        if row.per_seat:  # per seat bought; a subscription that does not say has one
            value *= max(profile.seats or 1, 1) if profile is not None else 1
        limit = max(0, value + adjustment_total(adjustments, window, now))
    if limit is None or row is None:
        return Quota(plan, feature_name, limit, window_period, window)
    return Quota(plan, feature_name, limit, window_period, window, alert_thresholds)


def remaining(limit: int, used: int, held: int, granted: int, balance: int) -> int:
    """What a user may still spend: the plan's allowance left (usage the grants paid for does
    not count against it) plus the grants' balance, less what is held."""
    return max(max(limit - max(used - granted, 0), 0) + balance - held, 0)


def usage_of(
    quota: Quota,
    used: int,
    held: int,
    granted: int = 0,
    balance: int = 0,
    member: tuple[int, int, int, int] | None = None,
    *,
    cap: int | None = None,
) -> Usage:
    if member is not None:
        current, limit, left, credit, scope = team_numbers(
            quota.limit, (used, held, granted, balance), member, cap, None
        )
        return Usage._trusted(
            current=current,
            limit=limit,
            remaining=left,
            is_unlimited=limit is None,
            credit_balance=credit,
            scope=scope,
        )
    current = max(used, 0) + held
    if quota.limit is None:
        return Usage._trusted(
            current=current,
            limit=None,
            remaining=None,
            is_unlimited=True,
            credit_balance=0,
            scope=None,
        )
    return Usage._trusted(
        current=current,
        limit=quota.limit,
        remaining=remaining(quota.limit, used, held, granted, balance),
        is_unlimited=False,
        credit_balance=balance,
        scope=None,
    )


TeamNumbers = tuple[int, "int | None", "int | None", int, Literal["account", "member"]]


def team_numbers(
    limit: int | None,
    pool: tuple[int, int, int, int],
    member: tuple[int, int, int, int],
    cap: int | None,
    refused_by: str | None,
) -> TeamNumbers:
    """A team member's ``(current, limit, remaining, credit_balance, scope)``: the numbers of
    the constraint that binds first (the smaller ``remaining``; the account's pool on a tie),
    or of the one that refused (``refused_by``). ``remaining`` adds the member's own credits
    (spent beyond both); ``credit_balance`` is the pool's and the member's together."""
    pool_used, pool_held, pool_granted, pool_balance = pool
    used, held, granted, balance = member
    pool_left = (
        None
        if limit is None
        else remaining(limit, pool_used, pool_held, pool_granted, pool_balance)
    )
    cap_left = None if cap is None else max(cap - max(used - granted, 0) - held, 0)
    credit = pool_balance + balance
    member_binds = cap_left is not None and (pool_left is None or cap_left < pool_left)
    if refused_by is not None:
        member_binds = refused_by == "member"
    if member_binds:
        assert cap_left is not None
        return max(used, 0) + held, cap, cap_left + balance, credit, "member"
    if pool_left is None:
        return max(used, 0) + held, None, None, credit, "account"
    return max(pool_used, 0) + pool_held, limit, pool_left + balance, credit, "account"


def decision(quota: Quota, credits: int, charge: Charge, cap: int | None = None) -> Decision:
    limit: int | None = quota.limit
    scope: Literal["account", "member"] | None = None
    credit = charge.balance
    if charge.member is not None:  # a team member: the numbers of the binding constraint
        current, limit, left, credit, scope = team_numbers(
            limit,
            (charge.used, charge.held, charge.granted, charge.balance),
            charge.member,
            cap,
            charge.scope,
        )
    else:
        current = max(charge.used, 0) + charge.held  # as usage_of, without the Usage
        if limit is None:
            left = None
        elif charge.granted or charge.balance:
            left = remaining(limit, charge.used, charge.held, charge.granted, charge.balance)
        else:  # no grant in play: what the plan leaves
            left = limit - current if current < limit else 0
    return Decision._trusted(
        allowed=charge.allowed,
        feature_name=quota.feature_name,
        credits=credits,
        current=current,
        limit=limit,
        remaining=left,
        is_unlimited=limit is None,
        resets_at=quota.window.end,
        event_id=charge.event.id if charge.event else None,
        replayed=charge.replayed,
        alerts=charge.alerts,
        credit_balance=credit,
        scope=scope,
    )
