"""Every UsageFlow operation, written once, as a generator that yields the store calls it needs.

This is the "sans-I/O" core: an operation never touches a database itself. It yields a
:class:`~usageflow.ops.StoreCall` (``charge = yield from ops.charge(...)``), and the driver
(``UsageFlow`` for threads, ``AsyncUsageFlow`` for asyncio) performs it and sends the result
back. All validation, plan resolution, periods, adjustments and arithmetic happen here,
identically for both drivers.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol, TypeVar

from usageflow import _log, _observe, ops
from usageflow import _validate as v
from usageflow.cache import MISSING, Catalog, PlanCache, _Missing
from usageflow.errors import (
    UsageFlowError,
    adjustment_error,
    config_error,
    idempotency_error,
    invalid,
    limit_error,
)
from usageflow.models import (
    INT64_MAX,
    Alert,
    CreditPack,
    Decision,
    FeatureLimit,
    FeatureUsage,
    Grant,
    LimitAdjustment,
    Membership,
    PendingSubscription,
    PeriodTotal,
    Plan,
    Profile,
    StripeEventRecord,
    TopUsers,
    Usage,
    UsageEvent,
    UsageSinceReset,
    UsageStats,
    UserOverview,
    UserUsage,
)
from usageflow.ops import (
    PROFILE_FIELDS,
    HourlyTotal,
    StoreCall,
)
from usageflow.periods import (
    Clock,
    GroupBy,
    Period,
    bucket_key,
    bucket_label,
    bucket_starts,
    system_clock,
    window_for,
)
from usageflow.quota import (
    Quota,
    adjustment_total,
    decision,
    find_plan,
    plan_for,
    quota_for,
    usage_of,
)
from usageflow.stripe.prices import payment_link, price_amount, upgrade_target

T = TypeVar("T")


def new_reservation_id() -> str:
    """A reservation id: 32 hex digits in the UUIDv7 layout (RFC 9562), the Unix time in
    milliseconds, then 74 random bits.

    Time-ordered on purpose: the id keys the holds table and, as ``reservation:<id>``, the
    unique index of the ledger's idempotency keys, and ids that grow with time insert at the
    right edge of those B-trees (the pages in cache) instead of at a random leaf each time,
    whose cost grows with the size of the ledger.
    """
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (time.time_ns() // 1_000_000) << 80
        | 0x7 << 76
        | (rand >> 62 & 0xFFF) << 64
        | 0b10 << 62
        | (rand & 0x3FFF_FFFF_FFFF_FFFF)
    )
    return f"{value:032x}"


Op = Generator["StoreCall[Any] | Effect", Any, T]

_SECRET_WORDS = ("key", "secret", "token", "password", "authorization", "signature")


class Effect(Protocol):
    """A step that is not a store call (a Stripe API request, the app's ``plan_resolver``):
    the sync flow calls :meth:`run`, the async flow awaits :meth:`arun`; the result is sent
    back into the operation."""

    def run(self, flow: Any) -> Any: ...

    async def arun(self, flow: Any) -> Any: ...


#: The app's plan resolver: user id -> a stripe price id, a plan id, a Plan or None (the free
#: plan); an ``async def`` is accepted by ``AsyncUsageFlow``.
PlanResolver = Callable[[str], object]


@dataclass(frozen=True)
class ResolvePlan:
    """Ask the app's ``plan_resolver`` which plan a user is on."""

    resolver: PlanResolver
    user_id: str

    def run(self, flow: Any) -> Any:
        result = self.resolver(self.user_id)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise config_error("an async plan_resolver needs AsyncUsageFlow")
        return result

    async def arun(self, flow: Any) -> Any:
        result = self.resolver(self.user_id)
        if inspect.isawaitable(result):
            result = await result
        return result


@dataclass(frozen=True)
class Deliver:
    """Hand one alert to the app's handler (``deliver_alerts``)."""

    handler: Callable[[Alert], object]
    alert: Alert

    def run(self, flow: Any) -> None:
        result = self.handler(self.alert)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise config_error("an async alert handler needs AsyncUsageFlow")

    async def arun(self, flow: Any) -> None:
        result = self.handler(self.alert)
        if inspect.isawaitable(result):
            await result


def resolved_plan(catalog: Catalog, chosen: object, user_id: str) -> Plan | None:
    """The plan a ``plan_resolver`` answer names (``None``: the free plan)."""
    if chosen is None:
        return catalog.free_plan
    found = find_plan(catalog, chosen)
    if found is None:
        raise limit_error(
            "plan_resolver returned a plan that does not exist "
            "(give a stripe_price_id, a plan id, a Plan or None)",
            user_id=user_id,
        )
    return found


def quota_exhausted(refused: Decision, user_id: str) -> UsageFlowError:
    """The ``USAGE_LIMIT_ERROR`` of a refused decision, its numbers in the details."""
    return limit_error(
        f"quota exhausted for {refused.feature_name!r}: {refused.credits} more credits do not fit",
        decision=refused,
        user_id=user_id,
        feature_name=refused.feature_name,
        limit=refused.limit,
        current=refused.current,
        remaining=refused.remaining,
        resets_at=refused.resets_at,
    )


def same_request(
    key: str, kind: str, credits: int, first_kind: str, first_credits: int | None
) -> None:
    """Refuse a replay whose arguments differ from the first request's (Stripe's rule): a key
    names one request, so the same key with other credits or another kind of write is a
    bug in the caller, not a retry. Metadata is not compared."""
    if kind != first_kind or credits != first_credits:
        raise idempotency_error(
            f"idempotency key {key!r} was first used for {first_credits} credits ({first_kind}); "
            f"this call asks for {credits} ({kind}): a retry must repeat the same request, "
            "a new request needs a new key",
            idempotency_key=key,
            first={"kind": first_kind, "credits": first_credits},
            given={"kind": kind, "credits": credits},
        )


def redact(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` fit for a log line: anything that looks like a secret is masked."""
    return {
        k: "***" if any(word in k.lower() for word in _SECRET_WORDS) else val
        for k, val in values.items()
    }


@dataclass(frozen=True)
class Options:
    """The behaviour switches of a flow, validated once at construction."""

    manual_stripe_integration: bool = False
    enable_user_adjustments: bool = False
    debug: bool = False
    reservation_ttl: float = 300.0
    plan_resolver: PlanResolver | None = None


def as_mapping(obj: object, field: str) -> Mapping[str, Any]:
    """A Stripe object (a dict subclass) or a plain dict."""
    if isinstance(obj, Mapping):
        return obj
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        result = to_dict()
        if isinstance(result, Mapping):
            return result
    raise invalid(f"{field} must be a Stripe object or a dict", field=field)


class Core:
    """The operations of UsageFlow, shared by the sync and async flows."""

    def __init__(self, options: Options, cache: PlanCache, clock: Clock | None) -> None:
        self.options = options
        self.cache = cache
        self.clock: Clock = clock or system_clock

    def now(self) -> datetime:
        if self.clock is system_clock:  # already aware UTC
            return system_clock()
        return v.moment(self.clock(), "clock()")

    # -- plan and quota resolution --------------------------------------------------------------
    def _catalog(self) -> Op[Catalog]:
        catalog = self.cache.catalog()
        if catalog is None:
            plans = yield from ops.load_catalog()
            thresholds = yield from ops.load_alert_thresholds()
            packs = yield from ops.load_credit_packs()
            teams = yield from ops.has_members()
            catalog = self.cache.put_catalog(plans, thresholds, packs, teams)
        return catalog

    def _profile(self, user_id: str) -> Op[Profile | None]:
        profile = self.cache.profile(user_id)
        if profile is MISSING:
            profile = yield from ops.get_profile(user_id=user_id)
            self.cache.put_profile(user_id, profile)
        assert not isinstance(profile, _Missing)
        return profile

    def _user_plan(
        self, user_id: str, catalog: Catalog, profile: Profile | None
    ) -> Op[Plan | None]:
        """The plan that applies: the app's ``plan_resolver`` when it has one, else the
        profile's."""
        if self.options.plan_resolver is None:
            return plan_for(catalog, profile)
        chosen = yield ResolvePlan(self.options.plan_resolver, user_id)
        return resolved_plan(catalog, chosen, user_id)

    def _membership(self, user_id: str) -> Op[Membership | None]:
        """The user's team membership (from the cache)."""
        membership = self.cache.membership(user_id)
        if membership is MISSING:
            membership = yield from ops.get_membership(user_id=user_id)
            self.cache.put_membership(user_id, membership)
        assert not isinstance(membership, _Missing)
        return membership

    def _target(
        self, user_id: str, feature_name: str, now: datetime, period: Period | None = None
    ) -> Op[tuple[Quota, str | None, int | None]]:
        """What a decision of ``user_id`` is made against: ``(quota, pool_id, cap)``. A user
        in no account: their own quota. A team member: their account's quota (plan, seats,
        the account's adjustments), the account as the pool, and their own cap of the
        feature (their adjustments added, when enabled; ``None``: no cap)."""
        catalog = self.cache.catalog()
        if catalog is None:
            catalog = yield from self._catalog()
        membership: Membership | None = None
        if catalog.teams:  # some account has members: is this user one?
            found = self.cache.membership(user_id)
            if found is MISSING:
                found = yield from self._membership(user_id)
            assert not isinstance(found, _Missing)
            membership = found
        owner = user_id if membership is None else membership.account_id
        quota = yield from self._quota_or_none(owner, feature_name, now, period, catalog)
        if quota is None:
            raise _no_plan(owner, feature_name)
        if membership is None:
            return quota, None, None
        cap = membership.limits.get(feature_name)
        if cap is not None and self.options.enable_user_adjustments:
            adjustments = yield from self._adjustments(user_id, feature_name, now)
            cap = max(0, cap + adjustment_total(adjustments, quota.window, now))
        return quota, membership.account_id, cap

    def _quota(
        self, user_id: str, feature_name: str, now: datetime, period: Period | None = None
    ) -> Op[Quota]:
        quota = yield from self._quota_or_none(user_id, feature_name, now, period)
        if quota is None:
            raise _no_plan(user_id, feature_name)
        return quota

    def _quota_or_none(
        self,
        user_id: str,
        feature_name: str,
        now: datetime,
        period: Period | None = None,
        catalog: Catalog | None = None,
    ) -> Op[Quota | None]:
        """The quota of the user's feature, ``None`` when no plan applies to the user
        (``catalog``: the plans, when the caller has just read them)."""
        # The cache answers almost always: read it here, and step into the loading
        # sub-operations (a generator each) only on a miss.
        cache = self.cache
        if catalog is None:
            catalog = cache.catalog()
            if catalog is None:
                catalog = yield from self._catalog()
        profile = cache.profile(user_id)
        if profile is MISSING:
            profile = yield from self._profile(user_id)
        assert not isinstance(profile, _Missing)
        if self.options.plan_resolver is None:
            plan = plan_for(catalog, profile)
        else:
            plan = yield from self._user_plan(user_id, catalog, profile)
        if plan is None:
            return None
        adjustments: Sequence[LimitAdjustment] = ()
        row = plan.limits.get(feature_name)
        if self.options.enable_user_adjustments and row is not None and row.limit_value != -1:
            adjustments = yield from self._adjustments(user_id, feature_name, now)
        thresholds = catalog.alert_thresholds(feature_name, plan.id) if catalog.thresholds else ()
        return quota_for(plan, feature_name, profile, adjustments, now, period, thresholds)

    def _adjustments(
        self, user_id: str, feature_name: str, now: datetime
    ) -> Op[Sequence[LimitAdjustment]]:
        """The user's adjustments of a feature that end after ``now`` (from the cache)."""
        cached = self.cache.adjustments(user_id, feature_name)
        if cached is None:
            rows = yield from ops.get_limit_adjustments(
                user_id=user_id,
                feature_name=feature_name,
                ending_after=now,
            )
            cached = self.cache.put_adjustments(user_id, feature_name, rows)
        return cached

    def _window_start(self, user_id: str, period: Period, now: datetime) -> Op[datetime | None]:
        profile = None
        if period is Period.BILLING_CYCLE:
            profile = yield from self._profile(user_id)
        return window_for(
            period,
            now,
            cycle_start=profile.current_period_start if profile else None,
            cycle_end=profile.current_period_end if profile else None,
        ).start

    # -- enforcement ------------------------------------------------------------------------------
    def consume(
        self,
        user_id: str,
        feature_name: str,
        credits: int,
        metadata: Mapping[str, Any] | None,
        idempotency_key: str | None,
    ) -> Op[Decision]:
        user_id = v.name(user_id, "user_id")
        feature_name = v.name(feature_name, "feature_name")
        credits = v.credits(credits)
        meta = v.metadata(metadata)
        key = v.optional_key(idempotency_key)
        now = self.now()
        quota, pool_id, cap = yield from self._target(user_id, feature_name, now)
        charge = yield from ops.charge(
            user_id=user_id,
            feature_name=feature_name,
            credits=credits,
            event_type="usage",
            limit=quota.limit,
            window_start=quota.window.start,
            now=now,
            metadata=meta,
            idempotency_key=key,
            alert_thresholds=quota.alert_thresholds or None,
            resets_at=quota.window.end,
            pool_id=pool_id,
            member_cap=cap,
        )
        if charge.replayed and key is not None and charge.event is not None:
            same_request(key, "usage", credits, charge.event.event_type, charge.event.credits_used)
        return decision(quota, credits, charge, cap)

    def authorize(self, user_id: str, feature_name: str, credits: int) -> Op[bool]:
        usage = yield from self.fetch_usage(user_id, feature_name, None, credits)
        return usage.is_unlimited or credits <= (usage.remaining or 0)

    def fetch_usage(
        self, user_id: str, feature_name: str, period: object, credits: int = 1
    ) -> Op[Usage]:
        user_id = v.name(user_id, "user_id")
        feature_name = v.name(feature_name, "feature_name")
        v.credits(credits)
        chosen = v.period(period, allow_none=True)
        now = self.now()
        quota, pool_id, cap = yield from self._target(user_id, feature_name, now, chosen)
        read = yield from ops.usage(
            user_id=user_id,
            feature_name=feature_name,
            window_start=quota.window.start,
            now=now,
            pool_id=pool_id,
        )
        return usage_of(quota, *read, cap=cap)

    def reserve(
        self,
        user_id: str,
        feature_name: str,
        credits: int,
        ttl: float | None,
        idempotency_key: str | None,
    ) -> Op[tuple[str, datetime, Decision]]:
        user_id = v.name(user_id, "user_id")
        feature_name = v.name(feature_name, "feature_name")
        credits = v.credits(credits)
        seconds = self.options.reservation_ttl if ttl is None else v.seconds(ttl, "ttl")
        key = v.optional_key(idempotency_key)
        now = self.now()
        quota, pool_id, cap = yield from self._target(user_id, feature_name, now)
        reservation_id = new_reservation_id()
        expires_at = now + timedelta(seconds=seconds)
        charge = yield from ops.reserve(
            reservation_id=reservation_id,
            user_id=user_id,
            feature_name=feature_name,
            credits=credits,
            limit=quota.limit,
            window_start=quota.window.start,
            now=now,
            expires_at=expires_at,
            idempotency_key=key,
            alert_thresholds=quota.alert_thresholds or None,
            resets_at=quota.window.end,
            pool_id=pool_id,
            member_cap=cap,
        )
        if charge.replayed and key is not None:
            same_request(key, "reservation", credits, "reservation", charge.first_credits)
        result = decision(quota, credits, charge, cap)
        if not charge.allowed:
            raise quota_exhausted(result, user_id)
        return charge.reservation_id or reservation_id, expires_at, result

    def settle(
        self, reservation_id: str, credits: int | None, metadata: Mapping[str, Any] | None
    ) -> Op[UsageEvent | None]:
        reservation_id = v.name(reservation_id, "reservation_id")
        if credits is not None:
            credits = v.integer(credits, "actual_credits", minimum=0)
        meta = v.metadata(metadata)
        now = self.now()
        event = yield from ops.settle(
            reservation_id=reservation_id, credits=credits, now=now, metadata=meta
        )
        return event

    # -- recording ------------------------------------------------------------------------------
    def increment_usage(
        self,
        user_id: str,
        feature_name: str,
        credits_used: int,
        metadata: Mapping[str, Any] | None,
        idempotency_key: str | None,
    ) -> Op[UsageEvent]:
        user_id = v.name(user_id, "user_id")
        feature_name = v.name(feature_name, "feature_name")
        credits_used = v.credits(credits_used, "credits_used")
        return (
            yield from self._record(
                user_id, feature_name, credits_used, "usage", metadata, idempotency_key
            )
        )

    def adjust_usage(
        self,
        user_id: str,
        feature_name: str,
        amount: int,
        metadata: Mapping[str, Any] | None,
        idempotency_key: str | None,
    ) -> Op[UsageEvent]:
        user_id = v.name(user_id, "user_id")
        feature_name = v.name(feature_name, "feature_name")
        amount = v.integer(amount, "amount", minimum=-INT64_MAX)
        if amount == 0:
            raise invalid("amount must not be zero", field="amount")
        reason = metadata.get("reason") if isinstance(metadata, Mapping) else None
        if not isinstance(reason, str) or not reason.strip():
            raise invalid(
                "adjust_usage needs metadata={'reason': '...'} explaining the adjustment",
                field="metadata",
            )
        event_type = "credit" if amount < 0 else "adjustment"
        return (
            yield from self._record(
                user_id, feature_name, amount, event_type, metadata, idempotency_key
            )
        )

    def _record(
        self,
        user_id: str,
        feature_name: str,
        credits: int,
        event_type: str,
        metadata: Mapping[str, Any] | None,
        idempotency_key: str | None,
    ) -> Op[UsageEvent]:
        meta = v.metadata(metadata)
        key = v.optional_key(idempotency_key)
        now = self.now()
        # Recorded whatever the limit, but split between the plan's allowance and grants as a
        # decision would (a refund gives grants back what they paid): that takes the quota.
        # With no plan the usage is tracked only, as before grants existed.
        catalog = yield from self._catalog()
        membership = (yield from self._membership(user_id)) if catalog.teams else None
        pool_id, cap = None, None
        if membership is None:
            quota = yield from self._quota_or_none(user_id, feature_name, now)
        else:
            quota, pool_id, cap = yield from self._target(user_id, feature_name, now)
        charge = yield from ops.charge(
            user_id=user_id,
            feature_name=feature_name,
            credits=credits,
            event_type=event_type,
            limit=None if quota is None else quota.limit,
            window_start=None if quota is None else quota.window.start,
            now=now,
            metadata=meta,
            idempotency_key=key,
            force=True,
            pool_id=pool_id,
            member_cap=cap,
        )
        assert charge.event is not None
        if charge.replayed:
            assert key is not None
            first = charge.event
            same_request(key, event_type, credits, first.event_type, first.credits_used)
            return first.model_copy(update={"replayed": True})
        return charge.event

    def reset_feature_usage(
        self, user_id: str, feature_name: str, metadata: Mapping[str, Any] | None
    ) -> Op[UsageEvent]:
        user_id = v.name(user_id, "user_id")
        feature_name = v.name(feature_name, "feature_name")
        meta = v.metadata(metadata)
        now = self.now()
        catalog = yield from self._catalog()
        profile = yield from self._profile(user_id)
        plan = yield from self._user_plan(user_id, catalog, profile)
        # The usage the reset zeroes is measured over the feature's own window.
        quota = quota_for(plan, feature_name, profile, (), now) if plan else None
        start = quota.window.start if quota else window_for(Period.CURRENT_MONTH, now).start
        event = yield from ops.reset(
            user_id=user_id,
            feature_name=feature_name,
            window_start=start,
            now=now,
            metadata=meta,
        )
        return event

    # -- reading --------------------------------------------------------------------------------
    def get_total_usage(self, user_id: str, feature_name: str, period: object) -> Op[int]:
        user_id = v.name(user_id, "user_id")
        feature_name = v.name(feature_name, "feature_name")
        chosen = v.period(period, allow_none=True)
        now = self.now()
        if chosen is None:
            catalog = yield from self._catalog()
            profile = yield from self._profile(user_id)
            plan = yield from self._user_plan(user_id, catalog, profile)
            row = plan.limits.get(feature_name) if plan else None
            chosen = Period(row.period) if row else Period.CURRENT_MONTH
        start = yield from self._window_start(user_id, chosen, now)
        read = yield from ops.usage(
            user_id=user_id, feature_name=feature_name, window_start=start, now=now
        )
        return max(int(read.used), 0)

    def get_usage_since_reset(self, user_id: str, feature_name: str) -> Op[UsageSinceReset]:
        user_id = v.name(user_id, "user_id")
        feature_name = v.name(feature_name, "feature_name")
        info = yield from ops.usage_since_reset(user_id=user_id, feature_name=feature_name)
        return UsageSinceReset(
            total=info.total,
            last_reset_date=info.last_reset_at,
            pre_reset_total=info.pre_reset_total,
        )

    def get_batch_usage_stats(
        self, user_ids: object, feature_names: object, period: object, group_by: object
    ) -> Op[dict[str, dict[str, UsageStats]]]:
        users = v.name_list(user_ids, "user_ids")
        features = v.name_list(feature_names, "feature_names")
        chosen = v.period(period)
        grouping = v.group_by(group_by)
        assert chosen is not None
        now = self.now()
        starts: dict[str, datetime | None] = {}
        for user in users:
            starts[user] = yield from self._window_start(user, chosen, now)
        known = [s for s in starts.values() if s is not None]
        earliest = None if len(known) < len(starts) else min(known)
        rows = yield from ops.hourly_totals(
            user_ids=users,
            feature_names=features,
            start=earliest,
            end=now + timedelta(microseconds=1),
        )
        grouped: dict[tuple[str, str], list[HourlyTotal]] = {}
        for row in rows:
            grouped.setdefault((row.user_id, row.feature_name), []).append(row)
        return {
            user: {
                feature: _stats(grouped.get((user, feature), []), starts[user], now, grouping)
                for feature in features
            }
            for user in users
        }

    def get_member_stats(
        self, account_id: str, feature_name: str, period: object, group_by: object
    ) -> Op[dict[str, UsageStats]]:
        """The account's pooled usage broken down by the member that spent it (every member
        it ever had, and the account itself for its own calls): the parts add up to the
        account's total, bucket by bucket."""
        account_id = v.name(account_id, "user_id")
        feature_name = v.name(feature_name, "feature_name")
        chosen = v.period(period)
        grouping = v.group_by(group_by)
        assert chosen is not None
        now = self.now()
        start = yield from self._window_start(account_id, chosen, now)
        rows = yield from ops.hourly_totals(
            user_ids=[account_id],
            feature_names=[feature_name],
            start=start,
            end=now + timedelta(microseconds=1),
            by_member=True,
        )
        members = yield from ops.list_members(account_id=account_id, removed=True)
        grouped: dict[str, list[HourlyTotal]] = {}
        for row in rows:
            grouped.setdefault(row.user_id, []).append(row)
        who = sorted({account_id, *(m.user_id for m in members), *grouped})
        return {user: _stats(grouped.get(user, []), start, now, grouping) for user in who}

    def get_usage_stats(
        self, user_id: str, feature_name: str, period: object, group_by: object
    ) -> Op[UsageStats]:
        user_id = v.name(user_id, "user_id")
        feature_name = v.name(feature_name, "feature_name")
        result = yield from self.get_batch_usage_stats([user_id], [feature_name], period, group_by)
        return result[user_id][feature_name]

    def list_events(
        self, user_id: str, feature_name: str | None, limit: int
    ) -> Op[list[UsageEvent]]:
        user_id = v.name(user_id, "user_id")
        if feature_name is not None:
            feature_name = v.name(feature_name, "feature_name")
        limit = v.integer(limit, "limit", minimum=1, maximum=10_000)
        events = yield from ops.list_events(user_id=user_id, feature_name=feature_name, limit=limit)
        return events

    def list_recent_events(self, feature_name: str | None, limit: int) -> Op[list[UsageEvent]]:
        if feature_name is not None:
            feature_name = v.name(feature_name, "feature_name")
        limit = v.integer(limit, "limit", minimum=1, maximum=10_000)
        events = yield from ops.list_recent_events(feature_name=feature_name, limit=limit)
        return events

    def top_users(
        self, feature_name: str, limit: int, period: object, since: object
    ) -> Op[TopUsers]:
        feature_name = v.name(feature_name, "feature_name")
        limit = v.integer(limit, "limit", minimum=1, maximum=1000)
        now = self.now()
        chosen: Period | None = None
        if since is not None:
            if period is not None:
                raise invalid("give period or since, not both", field="since")
            start: datetime | None = v.moment(since, "since")
        else:
            chosen = v.period(period, allow_none=True)
            if chosen is None:
                catalog = yield from self._catalog()
                periods = sorted(
                    {
                        p.limits[feature_name].period
                        for p in catalog.plans.values()
                        if feature_name in p.limits
                    }
                )
                if len(periods) > 1:
                    raise invalid(
                        f"plans limit {feature_name!r} over different periods "
                        f"({', '.join(periods)}): give a period or since",
                        field="period",
                    )
                chosen = Period(periods[0]) if periods else Period.CURRENT_MONTH
            if chosen is Period.BILLING_CYCLE:
                raise invalid(
                    "a billing_cycle window differs from user to user: give another period, "
                    "or since",
                    field="period",
                )
            start = window_for(chosen, now).start
        rows = yield from ops.top_usage(feature_name=feature_name, window_start=start, limit=limit)
        return TopUsers(
            feature_name=feature_name,
            period=None if chosen is None else chosen.value,
            window_start=start,
            users=[UserUsage(user_id=user, used=used) for user, used in rows],
        )

    def get_user_overview(self, user_id: str) -> Op[UserOverview]:
        user_id = v.name(user_id, "user_id")
        now = self.now()
        catalog = yield from self._catalog()
        profile = yield from self._profile(user_id)
        plan = yield from self._user_plan(user_id, catalog, profile)
        features: list[FeatureUsage] = []
        for feature_name, row in sorted((plan.limits if plan else {}).items()):
            assert plan is not None
            adjustments: Sequence[LimitAdjustment] = ()
            if self.options.enable_user_adjustments and row.limit_value != -1:
                adjustments = yield from self._adjustments(user_id, feature_name, now)
            quota = quota_for(plan, feature_name, profile, adjustments, now)
            read = yield from ops.usage(
                user_id=user_id,
                feature_name=feature_name,
                window_start=quota.window.start,
                now=now,
            )
            usage = usage_of(quota, *read)
            features.append(
                FeatureUsage(
                    feature_name=feature_name,
                    period=quota.period.value,
                    current=usage.current,
                    held=int(read.held),
                    limit=usage.limit,
                    remaining=usage.remaining,
                    is_unlimited=usage.is_unlimited,
                    window_start=quota.window.start,
                    resets_at=quota.window.end,
                    credit_balance=usage.credit_balance,
                )
            )
        return UserOverview(user_id=user_id, profile=profile, plan=plan, features=features)

    # -- plans and limits -----------------------------------------------------------------------
    def fetch_feature_limit(self, plan_id: int, feature_name: str) -> Op[int | None]:
        plan_id = v.integer(plan_id, "plan_id", minimum=1)
        feature_name = v.name(feature_name, "feature_name")
        catalog = yield from self._catalog()
        plan = catalog.plans.get(plan_id)
        if plan is None:
            raise invalid(f"no plan with id {plan_id}", plan_id=plan_id)
        row = plan.limits.get(feature_name)
        if row is None:
            return 0
        return None if row.limit_value == -1 else row.limit_value

    def fetch_feature_limit_for_user(self, user_id: str, feature_name: str) -> Op[int | None]:
        user_id = v.name(user_id, "user_id")
        feature_name = v.name(feature_name, "feature_name")
        quota = yield from self._quota(user_id, feature_name, self.now())
        return quota.limit

    def get_user_plan(self, user_id: str) -> Op[Plan | None]:
        user_id = v.name(user_id, "user_id")
        catalog = yield from self._catalog()
        profile = yield from self._profile(user_id)
        return (yield from self._user_plan(user_id, catalog, profile))

    def upgrade_url(self, user_id: str, plan: object, feature_name: str | None) -> Op[str | None]:
        user_id = v.name(user_id, "user_id")
        if feature_name is not None:
            feature_name = v.name(feature_name, "feature_name")
        membership = yield from self._membership(user_id)
        if membership is not None:  # a member's plan is the account's: it buys for them
            user_id = membership.account_id
        catalog = yield from self._catalog()
        profile = yield from self._profile(user_id)
        if plan is None:
            current = yield from self._user_plan(user_id, catalog, profile)
            target = upgrade_target(catalog, current, feature_name)
        else:
            target = find_plan(catalog, plan)
            if target is None:
                raise no_such_plan(plan)
        if target is None or not target.payment_link_url:
            return None
        return payment_link(target.payment_link_url, user_id, profile.email if profile else None)

    def get_plans(self) -> Op[list[Plan]]:
        catalog = yield from self._catalog()
        return sorted(catalog.plans.values(), key=lambda p: p.id)

    def create_plan(
        self,
        name: str,
        stripe_price_id: str | None,
        price_amount: Decimal | float | int | str | None,
        price_currency: str | None,
        is_free: bool,
        payment_link_url: str | None,
        limits: Mapping[str, object] | None,
        per_seat: object = (),
    ) -> Op[Plan]:
        name = v.name(name, "name")
        if stripe_price_id is not None:
            stripe_price_id = v.name(stripe_price_id, "stripe_price_id")
        if price_currency is not None:
            price_currency = v.name(price_currency, "price_currency").lower()
        if payment_link_url is not None:
            payment_link_url = v.name(payment_link_url, "payment_link_url")
            if not payment_link_url.startswith(("https://", "http://")):
                raise invalid("payment_link_url must be an http(s) URL", field="payment_link_url")
        if not isinstance(is_free, bool):
            raise invalid("is_free must be a bool", field="is_free")
        amount = _decimal(price_amount)
        parsed = _limits(limits or {})
        if isinstance(per_seat, str) or not isinstance(per_seat, (list, tuple, set, frozenset)):
            raise invalid("per_seat must be a list of feature names", field="per_seat")
        seated = set(per_seat)
        unknown = sorted(str(f) for f in seated - set(parsed))
        if unknown:
            raise invalid(
                f"per_seat names features without a limit in this plan: {unknown}",
                field="per_seat",
            )
        plan = yield from ops.upsert_plan(
            name=name,
            stripe_price_id=stripe_price_id,
            price_amount=amount,
            price_currency=price_currency,
            is_free=is_free,
            payment_link_url=payment_link_url,
        )
        for feature, (value, per) in parsed.items():
            yield from ops.set_feature_limit(
                plan_id=plan.id,
                feature_name=feature,
                limit_value=value,
                period=per.value,
                per_seat=feature in seated,
            )
        self.cache.invalidate_plans()
        catalog = yield from self._catalog()
        return catalog.plans.get(plan.id, plan)

    def set_feature_limit(
        self, plan_id: int, feature_name: str, limit_value: int, period: object
    ) -> Op[FeatureLimit]:
        plan_id = v.integer(plan_id, "plan_id", minimum=1)
        feature_name = v.name(feature_name, "feature_name")
        limit_value = v.integer(limit_value, "limit_value", minimum=-1, maximum=INT64_MAX)
        chosen = v.period(period)
        assert chosen is not None
        row = yield from ops.set_feature_limit(
            plan_id=plan_id,
            feature_name=feature_name,
            limit_value=limit_value,
            period=chosen.value,
        )
        self.cache.invalidate_plans()
        return row

    def assign_plan(
        self,
        user_id: str,
        plan: object,
        email: str | None,
        subscription_status: str | None,
        current_period_start: datetime | None,
        current_period_end: datetime | None,
    ) -> Op[Profile]:
        user_id = v.name(user_id, "user_id")
        catalog = yield from self._catalog()
        price_id = None
        if plan is not None:
            found = find_plan(catalog, plan)
            if found is None:
                raise no_such_plan(plan)
            price_id = _price_of(found)
        fields: dict[str, Any] = {"plan": price_id}
        if subscription_status is not None:
            fields["subscription_status"] = v.name(subscription_status, "subscription_status")
        elif price_id is not None:
            fields["subscription_status"] = "active"
        if email is not None:
            fields["email"] = v.name(email, "email")
        if current_period_start is not None or current_period_end is not None:
            start = v.moment(current_period_start, "current_period_start")
            end = v.moment(current_period_end, "current_period_end")
            if start >= end:
                raise invalid("current_period_start must be before current_period_end")
            fields["current_period_start"], fields["current_period_end"] = start, end
        profile = yield from self.update_profile(user_id, fields)
        return profile

    def update_profile(self, user_id: str, fields: Mapping[str, Any]) -> Op[Profile]:
        """Set profile columns (for integrations such as the Stripe webhook handler)."""
        user_id = v.name(user_id, "user_id")
        unknown = set(fields) - set(PROFILE_FIELDS)
        if unknown:
            raise invalid(f"unknown profile fields: {sorted(unknown)}")
        checked: dict[str, Any] = {}
        for field, value in fields.items():
            if value is None:
                checked[field] = None
            elif field in ("current_period_start", "current_period_end"):
                checked[field] = v.moment(value, field)
            elif field == "seats":
                checked[field] = v.integer(value, field, minimum=0, maximum=10_000_000)
            else:
                checked[field] = v.name(value, field)
        profile = yield from ops.upsert_profile(user_id=user_id, fields=checked)
        self.cache.invalidate_user(user_id)
        return profile

    def get_profile(self, user_id: str) -> Op[Profile | None]:
        user_id = v.name(user_id, "user_id")
        profile = yield from ops.get_profile(user_id=user_id)
        return profile

    def list_pending_stripe_subscriptions(self, limit: int) -> Op[list[PendingSubscription]]:
        limit = v.integer(limit, "limit", minimum=1, maximum=1000)
        rows = yield from ops.pending_stripe_subscriptions(limit=limit)
        return [
            PendingSubscription(
                subscription_id=s.subscription_id,
                customer_id=s.customer_id,
                plan=s.plan,
                status=s.status,
                started=s.started,
                current_period_start=s.current_period_start,
                current_period_end=s.current_period_end,
            )
            for s in rows
        ]

    def sync_price(self, price: object) -> Op[int]:
        data = as_mapping(price, "price")
        price_id = data.get("id")
        if not isinstance(price_id, str) or not price_id:
            raise invalid("price must have a string id", field="price")
        currency = data.get("currency")
        changed = yield from ops.update_price(
            stripe_price_id=price_id,
            price_amount=price_amount(data),
            price_currency=str(currency).lower() if currency else None,
        )
        self.cache.invalidate_plans()
        return changed

    def add_limit_adjustment(
        self,
        user_id: str,
        feature_name: str,
        amount: int,
        type: str,
        start_date: datetime,
        end_date: datetime,
        metadata: Mapping[str, Any] | None,
    ) -> Op[LimitAdjustment]:
        if not self.options.enable_user_adjustments:
            raise adjustment_error(
                "limit adjustments are disabled: create the flow with enable_user_adjustments=True"
            )
        user_id = v.name(user_id, "user_id")
        feature_name = v.name(feature_name, "feature_name")
        amount = v.integer(amount, "amount", minimum=-(2**31), maximum=2**31 - 1)
        if amount == 0:
            raise invalid("amount must not be zero", field="amount")
        if type not in ("one_time", "recurring"):
            raise invalid("type must be 'one_time' or 'recurring'", field="type")
        start = v.moment(start_date, "start_date")
        end = v.moment(end_date, "end_date")
        if start >= end:
            raise adjustment_error("start_date must be before end_date")
        meta = v.metadata(metadata)
        row = yield from ops.add_limit_adjustment(
            user_id=user_id,
            feature_name=feature_name,
            amount=amount,
            type=type,
            start_date=start,
            end_date=end,
            metadata=meta,
        )
        self.cache.invalidate_user(user_id)
        return row

    # -- team accounts ----------------------------------------------------------------------------
    def add_member(self, account_id: str, user_id: str, limits: object) -> Op[Membership]:
        account_id = v.name(account_id, "account_id")
        user_id = v.name(user_id, "user_id")
        if account_id == user_id:
            raise invalid("an account cannot be its own member", field="user_id")
        if limits is None:
            limits = {}
        if not isinstance(limits, Mapping):
            raise invalid("limits must be a dict of feature name -> cap", field="limits")
        caps = {
            v.name(feature, "limits feature name"): v.integer(
                cap, f"limits[{feature!r}]", minimum=0
            )
            for feature, cap in limits.items()
        }
        membership = yield from ops.add_member(
            account_id=account_id, user_id=user_id, limits=caps, now=self.now()
        )
        self.cache.invalidate_user(user_id)
        self.cache.invalidate_plans()  # the catalog knows whether any account has members
        return membership

    def remove_member(self, account_id: str, user_id: str) -> Op[bool]:
        account_id = v.name(account_id, "account_id")
        user_id = v.name(user_id, "user_id")
        removed = yield from ops.remove_member(
            account_id=account_id, user_id=user_id, now=self.now()
        )
        self.cache.invalidate_user(user_id)
        self.cache.invalidate_plans()
        return removed

    def list_members(self, account_id: str, include_removed: bool) -> Op[list[Membership]]:
        account_id = v.name(account_id, "account_id")
        if not isinstance(include_removed, bool):
            raise invalid("include_removed must be a bool", field="include_removed")
        members = yield from ops.list_members(account_id=account_id, removed=include_removed)
        return members

    def get_account(self, user_id: str) -> Op[str | None]:
        user_id = v.name(user_id, "user_id")
        membership = yield from self._membership(user_id)
        return None if membership is None else membership.account_id

    # -- credits --------------------------------------------------------------------------------
    def grant_credits(
        self,
        user_id: str,
        feature_name: str,
        credits: int,
        expires_at: datetime | None,
        reason: str | None,
        idempotency_key: str | None,
        metadata: Mapping[str, Any] | None = None,
        source: str = "manual",
    ) -> Op[Grant]:
        user_id = v.name(user_id, "user_id")
        feature_name = v.name(feature_name, "feature_name")
        credits = v.credits(credits)
        expires = None if expires_at is None else v.moment(expires_at, "expires_at")
        if reason is not None:
            reason = v.name(reason, "reason")
        key = v.optional_key(idempotency_key)
        meta = v.metadata(metadata)
        source = v.name(source, "source")
        now = self.now()
        if expires is not None and expires <= now:
            raise invalid("expires_at must be in the future", field="expires_at")
        grant = yield from ops.grant_credits(
            user_id=user_id,
            feature_name=feature_name,
            credits=credits,
            expires_at=expires,
            source=source,
            reason=reason,
            metadata=meta,
            idempotency_key=key,
            payment_ref=None,
            now=now,
        )
        if grant.replayed and key is not None:
            same_request(
                key,
                f"grant of {feature_name}",
                credits,
                f"grant of {grant.feature_name}",
                grant.credits,
            )
        return grant

    def get_credit_balance(self, user_id: str, feature_name: str) -> Op[int]:
        user_id = v.name(user_id, "user_id")
        feature_name = v.name(feature_name, "feature_name")
        read = yield from ops.usage(
            user_id=user_id, feature_name=feature_name, window_start=None, now=self.now()
        )
        return read.balance

    def list_grants(self, user_id: str, feature_name: str | None) -> Op[list[Grant]]:
        user_id = v.name(user_id, "user_id")
        if feature_name is not None:
            feature_name = v.name(feature_name, "feature_name")
        grants = yield from ops.list_grants(user_id=user_id, feature_name=feature_name)
        return grants

    def create_credit_pack(
        self,
        name: str,
        credits: object,
        stripe_price_id: str | None,
        stripe_payment_link_id: str | None,
        payment_link_url: str | None,
        expires_in_days: int | None,
    ) -> Op[CreditPack]:
        name = v.name(name, "name")
        if not isinstance(credits, Mapping) or not credits:
            raise invalid(
                "credits must be a non-empty dict of feature name -> credits", field="credits"
            )
        amounts = {
            v.name(feature, "credits feature name"): v.credits(amount, f"credits[{feature!r}]")
            for feature, amount in credits.items()
        }
        if stripe_price_id is not None:
            stripe_price_id = v.name(stripe_price_id, "stripe_price_id")
        if stripe_payment_link_id is not None:
            stripe_payment_link_id = v.name(stripe_payment_link_id, "stripe_payment_link_id")
        if payment_link_url is not None:
            payment_link_url = v.name(payment_link_url, "payment_link_url")
            if not payment_link_url.startswith(("https://", "http://")):
                raise invalid("payment_link_url must be an http(s) URL", field="payment_link_url")
        if expires_in_days is not None:
            expires_in_days = v.integer(
                expires_in_days, "expires_in_days", minimum=1, maximum=36_500
            )
        pack = yield from ops.upsert_credit_pack(
            name=name,
            credits=amounts,
            stripe_price_id=stripe_price_id,
            stripe_payment_link_id=stripe_payment_link_id,
            payment_link_url=payment_link_url,
            expires_in_days=expires_in_days,
        )
        self.cache.invalidate_plans()
        return pack

    def list_credit_packs(self) -> Op[list[CreditPack]]:
        catalog = yield from self._catalog()
        return list(catalog.packs)

    def top_up_url(self, user_id: str, feature_name: str) -> Op[str | None]:
        user_id = v.name(user_id, "user_id")
        feature_name = v.name(feature_name, "feature_name")
        catalog = yield from self._catalog()
        pack = catalog.top_up_pack(feature_name)
        if pack is None or pack.payment_link_url is None:
            return None
        membership = yield from self._membership(user_id)
        if membership is not None:  # credits for the pool the member draws on
            user_id = membership.account_id
        profile = yield from self._profile(user_id)
        return payment_link(pack.payment_link_url, user_id, profile.email if profile else None)

    def refill_urls(self, user_id: str, feature_name: str) -> Op[tuple[str | None, str | None]]:
        """What a refused user is offered: ``(upgrade_url, top_up_url)``."""
        upgrade = yield from self.upgrade_url(user_id, None, feature_name)
        top_up = yield from self.top_up_url(user_id, feature_name)
        return upgrade, top_up

    def recent_stripe_events(self, limit: object) -> Op[list[StripeEventRecord]]:
        count = v.integer(limit, "limit", minimum=1, maximum=1000)
        return (yield from ops.recent_stripe_events(limit=count))

    def list_limit_adjustments(self, user_id: str, feature_name: str) -> Op[list[LimitAdjustment]]:
        user_id = v.name(user_id, "user_id")
        feature_name = v.name(feature_name, "feature_name")
        rows = yield from ops.get_limit_adjustments(
            user_id=user_id, feature_name=feature_name, ending_after=self.now()
        )
        return list(rows)

    # -- alerts ---------------------------------------------------------------------------------
    def set_alert_thresholds(
        self, feature_name: str, thresholds: object, plan_id: object
    ) -> Op[list[int]]:
        feature_name = v.name(feature_name, "feature_name")
        values = v.thresholds(thresholds)
        plan = None
        if plan_id is not None:
            plan = v.integer(plan_id, "plan_id", minimum=1)
            catalog = yield from self._catalog()
            if plan not in catalog.plans:
                raise invalid(f"no plan has id {plan}", field="plan_id", plan_id=plan)
        stored = yield from ops.set_alert_thresholds(
            feature_name=feature_name, plan_id=plan, thresholds=values
        )
        self.cache.invalidate_plans()
        return stored

    def get_alert_thresholds(self, feature_name: str, plan_id: object) -> Op[list[int]]:
        feature_name = v.name(feature_name, "feature_name")
        catalog = yield from self._catalog()
        if plan_id is None:
            return list(catalog.thresholds.get((feature_name, None), ()))
        return list(
            catalog.alert_thresholds(feature_name, v.integer(plan_id, "plan_id", minimum=1))
        )

    def deliver_alerts(self, handler: object, limit: object, lease: object) -> Op[int]:
        if not callable(handler):
            raise invalid("handler must be a function taking an Alert", field="handler")
        count = v.integer(limit, "limit", minimum=1, maximum=10_000)
        seconds = v.seconds(lease, "lease")
        now = self.now()
        alerts = yield from ops.claim_alerts(
            now=now, lease_until=now + timedelta(seconds=seconds), limit=count
        )
        delivered = failed = 0
        for alert in alerts:
            try:
                yield Deliver(handler, alert)
            except Exception as exc:  # logged, not propagated: the alert is offered again
                _log.logger.warning(
                    "usageflow: alert %s (user %r, %s at %s%%) not delivered: %s: %s",
                    alert.id,
                    alert.user_id,
                    alert.feature_name,
                    alert.threshold,
                    type(exc).__name__,
                    exc,
                )
                yield from ops.finish_alert(alert_id=alert.id, delivered=False, now=self.now())
                failed += 1
                continue
            yield from ops.finish_alert(alert_id=alert.id, delivered=True, now=self.now())
            delivered += 1
        _observe.notify("alerts", delivered, failed)
        return delivered

    def list_alerts(self, user_id: object, undelivered: object, limit: object) -> Op[list[Alert]]:
        user = None if user_id is None else v.name(user_id, "user_id")
        if not isinstance(undelivered, bool):
            raise invalid("undelivered must be True or False", field="undelivered")
        count = v.integer(limit, "limit", minimum=1, maximum=10_000)
        return (yield from ops.list_alerts(user_id=user, undelivered=undelivered, limit=count))

    def migrate(self) -> Op[int]:
        version = yield from ops.migrate()
        self.cache.clear()
        return version

    def connection_check(self) -> Op[bool]:
        ok = yield from ops.connection_check()
        return ok


def _no_plan(user_id: str, feature_name: str) -> UsageFlowError:
    return limit_error(
        "no plan applies to this user and no free plan is defined "
        "(create a plan with is_free=True, or assign one)",
        user_id=user_id,
        feature_name=feature_name,
    )


def no_such_plan(ref: object) -> UsageFlowError:
    """The ``USAGE_INVALID_PARAMS`` of a ``plan`` argument that names no plan."""
    if isinstance(ref, str):
        return invalid(f"no plan sold at price {ref!r}", field="plan")
    if isinstance(ref, (Plan, int)) and not isinstance(ref, bool):
        return invalid("no such plan", field="plan")
    return invalid("plan must be a Plan, a plan id or a stripe_price_id", field="plan")


def _price_of(plan: Plan) -> str | None:
    if plan.stripe_price_id is None and not plan.is_free:
        raise invalid(
            "a plan is assigned by its stripe_price_id; give this plan one "
            "(it may be any unique label, such as 'enterprise_manual')",
            field="plan",
        )
    return plan.stripe_price_id


def _decimal(value: object) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, float, str)):
        raise invalid("price_amount must be a number", field="price_amount")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise invalid("price_amount must be a number", field="price_amount") from None
    if not amount.is_finite() or amount < 0 or amount >= Decimal("1e8"):
        raise invalid("price_amount must be between 0 and 99999999.99", field="price_amount")
    return amount.quantize(Decimal("0.01"))


def _limits(limits: Mapping[str, object]) -> dict[str, tuple[int, Period]]:
    """``{feature: 100}``, ``{feature: (100, 'day')}`` or ``{feature: {'limit': 100,
    'period': 'day'}}`` -> ``{feature: (limit, period)}``; ``None`` or ``-1`` is unlimited."""
    if not isinstance(limits, Mapping):
        raise invalid("limits must be a dict of feature name to limit", field="limits")
    parsed: dict[str, tuple[int, Period]] = {}
    for raw_feature, spec in limits.items():
        feature = v.name(raw_feature, "feature_name")
        value: object = spec
        per: object = Period.CURRENT_MONTH
        if isinstance(spec, tuple) and len(spec) == 2:
            value, per = spec
        elif isinstance(spec, Mapping):
            value, per = spec.get("limit"), spec.get("period", "current_month")
        if value is None:
            value = -1
        chosen = v.period(per)
        assert chosen is not None
        parsed[feature] = (v.integer(value, "limit_value", minimum=-1), chosen)
    return parsed


def _stats(
    rows: list[HourlyTotal], start: datetime | None, now: datetime, group_by: GroupBy
) -> UsageStats:
    buckets: dict[datetime, int] = {}
    for row in rows:
        if start is not None and row.hour < start.replace(minute=0, second=0, microsecond=0):
            continue
        key = bucket_key(row.hour, group_by)
        buckets[key] = buckets.get(key, 0) + row.total
    first = start if start is not None else (min(buckets) if buckets else now)
    totals = [
        PeriodTotal(date=bucket_label(b, group_by), total=buckets.get(b, 0))
        for b in bucket_starts(first, now, group_by)
    ]
    values = [t.total for t in totals] or [0]
    total = sum(values)
    return UsageStats(
        total=total,
        average=round(total / len(values), 4),
        max=max(values),
        min=min(values),
        by_period=totals,
    )


__all__ = [
    "Core",
    "Effect",
    "Op",
    "Options",
    "PlanResolver",
    "StoreCall",
    "as_mapping",
    "config_error",
    "redact",
]
