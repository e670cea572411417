"""Pure quota decisions: which plan applies, what a user's limit is, what a result means.

Nothing here does I/O; the sync and async flows share every line of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

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
    has limit 0. ``period`` overrides the window (not the limit). ``alert_thresholds`` are
    kept only for a limit that is set."""
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
        limit = max(0, row.limit_value + adjustment_total(adjustments, window, now))
    if limit is None or row is None:
        return Quota(plan, feature_name, limit, window_period, window)
    return Quota(plan, feature_name, limit, window_period, window, alert_thresholds)


def remaining(limit: int, used: int, held: int, granted: int, balance: int) -> int:
    """What a user may still spend: the plan's allowance left (usage the grants paid for does
    not count against it) plus the grants' balance, less what is held."""
    return max(max(limit - max(used - granted, 0), 0) + balance - held, 0)


def usage_of(quota: Quota, used: int, held: int, granted: int = 0, balance: int = 0) -> Usage:
    current = max(used, 0) + held
    if quota.limit is None:
        return Usage._trusted(
            current=current, limit=None, remaining=None, is_unlimited=True, credit_balance=0
        )
    return Usage._trusted(
        current=current,
        limit=quota.limit,
        remaining=remaining(quota.limit, used, held, granted, balance),
        is_unlimited=False,
        credit_balance=balance,
    )


def decision(quota: Quota, credits: int, charge: Charge) -> Decision:
    current = max(charge.used, 0) + charge.held  # as usage_of, without the Usage in between
    limit = quota.limit
    return Decision._trusted(
        allowed=charge.allowed,
        feature_name=quota.feature_name,
        credits=credits,
        current=current,
        limit=limit,
        remaining=None
        if limit is None
        else remaining(limit, charge.used, charge.held, charge.granted, charge.balance),
        is_unlimited=limit is None,
        resets_at=quota.window.end,
        event_id=charge.event.id if charge.event else None,
        replayed=charge.replayed,
        alerts=charge.alerts,
        credit_balance=charge.balance,
    )
