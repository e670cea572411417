"""``memory://``: an in-process store for tests and demos. Thread-safe; nothing persists."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from usageflow.errors import invalid, reservation_error
from usageflow.models import FeatureLimit, LimitAdjustment, Plan, Profile, UsageEvent
from usageflow.stores.base import (
    HOLD_GRACE,
    Charge,
    HourlyTotal,
    ResetInfo,
    Store,
    StripeApplied,
    StripeLink,
    StripePrice,
    StripeSubscription,
    Tables,
    check_total,
    fits,
    window_used,
)

__all__ = ["MemoryStore"]


@dataclass
class _Key:
    """One (user, feature): the counters row and the time index of its ledger."""

    total: int = 0
    last_ts: datetime | None = None
    last_reset_at: datetime | None = None
    reset_base: int = 0
    reset_event: UsageEvent | None = None
    times: list[tuple[datetime, int]] = field(default_factory=list)  # (timestamp, event id)
    prefix: list[int] = field(default_factory=list)  # running total after each event


@dataclass
class _Hold:
    id: str
    user_id: str
    feature_name: str
    credits: int
    expires_at: datetime
    status: str = "held"
    event: UsageEvent | None = None
    idempotency_key: str | None = None


class MemoryStore(Store):
    """Keeps everything in dicts behind one lock."""

    schemes: ClassVar[tuple[str, ...]] = ("memory",)
    blocking: ClassVar[bool] = False
    MAX_SETTLED: ClassVar[int] = 100_000

    def __init__(self, tables: Tables | None = None) -> None:
        super().__init__(tables)
        self._lock = threading.Lock()
        self._plans: dict[int, Plan] = {}
        self._limits: dict[tuple[int, str], FeatureLimit] = {}
        self._profiles: dict[str, Profile] = {}
        self._adjustments: list[LimitAdjustment] = []
        self._events: list[UsageEvent] = []
        # Idempotency keys are scoped to their (user, feature): (user, feature, key).
        self._by_idem: dict[tuple[str, str, str], UsageEvent] = {}
        self._commits: dict[str, UsageEvent] = {}  # reservation id -> its commit's event
        self._keys: defaultdict[tuple[str, str], _Key] = defaultdict(_Key)
        self._holds: dict[str, _Hold] = {}
        self._active: defaultdict[tuple[str, str], dict[str, _Hold]] = defaultdict(dict)
        self._settled: deque[str] = deque()  # settled hold ids, oldest first (bounded)
        self._holds_by_idem: dict[tuple[str, str, str], _Hold] = {}
        self._stripe_events: dict[str, StripeApplied] = {}
        self._stripe_subs: dict[str, StripeSubscription] = {}
        self._stripe_customers: dict[str, tuple[str, str]] = {}  # customer -> (user, key)
        self._stripe_cursors: dict[str, int] = {}

    @classmethod
    def from_url(cls, url: str, tables: Tables | None = None) -> MemoryStore:
        return cls(tables)

    def migrate(self) -> int:
        return 1

    def connection_check(self) -> bool:
        return True

    # -- plans --------------------------------------------------------------------------------
    def load_catalog(self) -> list[Plan]:
        with self._lock:
            return [self._with_limits(plan) for plan in self._plans.values()]

    def _with_limits(self, plan: Plan) -> Plan:
        limits = {f: lim for (pid, f), lim in self._limits.items() if pid == plan.id}
        return plan.model_copy(update={"limits": limits})

    def upsert_plan(
        self,
        *,
        name: str,
        stripe_price_id: str | None,
        price_amount: Decimal | None,
        price_currency: str | None,
        is_free: bool,
        payment_link_url: str | None,
    ) -> Plan:
        with self._lock:
            existing = next(
                (
                    p
                    for p in self._plans.values()
                    if (stripe_price_id is not None and p.stripe_price_id == stripe_price_id)
                    or (stripe_price_id is None and p.stripe_price_id is None and p.name == name)
                ),
                None,
            )
            plan_id = existing.id if existing else max(self._plans, default=0) + 1
            plan = Plan(
                id=plan_id,
                name=name,
                stripe_price_id=stripe_price_id,
                price_amount=price_amount,
                price_currency=price_currency,
                is_free=is_free,
                payment_link_url=payment_link_url,
            )
            self._plans[plan_id] = plan
            return self._with_limits(plan)

    def set_feature_limit(
        self, *, plan_id: int, feature_name: str, limit_value: int, period: str
    ) -> FeatureLimit:
        with self._lock:
            if plan_id not in self._plans:
                raise invalid(f"no plan with id {plan_id}", plan_id=plan_id)
            row = FeatureLimit(
                plan_id=plan_id, feature_name=feature_name, limit_value=limit_value, period=period
            )
            self._limits[(plan_id, feature_name)] = row
            return row

    def update_price(
        self, *, stripe_price_id: str, price_amount: Decimal | None, price_currency: str | None
    ) -> int:
        with self._lock:
            changed = 0
            for pid, plan in list(self._plans.items()):
                if plan.stripe_price_id == stripe_price_id:
                    self._plans[pid] = plan.model_copy(
                        update={"price_amount": price_amount, "price_currency": price_currency}
                    )
                    changed += 1
            return changed

    # -- profiles and adjustments ---------------------------------------------------------------
    def get_profile(self, *, user_id: str) -> Profile | None:
        with self._lock:
            return self._profiles.get(user_id)

    def upsert_profile(self, *, user_id: str, fields: dict[str, Any]) -> Profile:
        with self._lock:
            old = self._profiles.get(user_id) or Profile(id=user_id)
            profile = old.model_copy(update=fields)
            self._profiles[user_id] = profile
            return profile

    def add_limit_adjustment(
        self,
        *,
        user_id: str,
        feature_name: str,
        amount: int,
        type: str,
        start_date: datetime,
        end_date: datetime,
        metadata: dict[str, Any] | None,
    ) -> LimitAdjustment:
        with self._lock:
            row = LimitAdjustment(
                id=len(self._adjustments) + 1,
                user_id=user_id,
                feature_name=feature_name,
                amount=amount,
                type=type,  # type: ignore[arg-type]
                start_date=start_date,
                end_date=end_date,
                metadata=metadata,
            )
            self._adjustments.append(row)
            return row

    def get_limit_adjustments(
        self, *, user_id: str, feature_name: str, ending_after: datetime
    ) -> list[LimitAdjustment]:
        with self._lock:
            return [
                a
                for a in self._adjustments
                if a.user_id == user_id
                and a.feature_name == feature_name
                and a.end_date > ending_after
            ]

    # -- ledger ---------------------------------------------------------------------------------
    def _used(self, key: _Key, window_start: datetime | None) -> int:
        prefix = 0
        if window_start is not None:
            i = bisect.bisect_left(key.times, (window_start, -1))
            prefix = key.prefix[i - 1] if i else 0
        return window_used(key.total, window_start, key.last_reset_at, key.reset_base, prefix)

    def _held(self, user_id: str, feature_name: str, now: datetime) -> int:
        active = self._active.get((user_id, feature_name))
        if not active:
            return 0
        for hold in [h for h in active.values() if h.expires_at <= now]:
            del active[hold.id]  # expired: no longer counts (it may still be committed)
            hold.status = "expired"
            self._forget_settled(hold.id, now)
        return sum(h.credits for h in active.values())

    def _append(
        self,
        user_id: str,
        feature_name: str,
        credits: int | None,
        event_type: str,
        now: datetime,
        metadata: dict[str, Any] | None,
        idempotency_key: str | None,
    ) -> UsageEvent:
        key = self._keys[(user_id, feature_name)]
        if credits is not None:
            check_total(key.total, credits)
        ts = now if key.last_ts is None or now > key.last_ts else key.last_ts
        event = UsageEvent._trusted(
            id=len(self._events) + 1,
            user_id=user_id,
            feature_name=feature_name,
            credits_used=credits,
            event_type=event_type,
            metadata=metadata,
            timestamp=ts,
            idempotency_key=idempotency_key,
            replayed=False,
        )
        self._events.append(event)
        key.total += credits or 0
        key.last_ts = ts
        key.times.append((ts, event.id))
        key.prefix.append(key.total)
        if idempotency_key is not None:
            self._by_idem[(user_id, feature_name, idempotency_key)] = event
        return event

    def charge(
        self,
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
    ) -> Charge:
        with self._lock:
            key = self._keys[(user_id, feature_name)]
            held = self._held(user_id, feature_name, now)
            first = (
                None
                if idempotency_key is None
                else self._by_idem.get((user_id, feature_name, idempotency_key))
            )
            if first is not None:
                return Charge(True, self._used(key, window_start), held, first, replayed=True)
            used = self._used(key, window_start)
            if not fits(used, held, credits, limit):
                return Charge(False, used, held)
            event = self._append(
                user_id, feature_name, credits, event_type, now, metadata, idempotency_key
            )
            return Charge(True, used + credits, held, event)

    def reserve(
        self,
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
    ) -> Charge:
        with self._lock:
            key = self._keys[(user_id, feature_name)]
            scoped = None if idempotency_key is None else (user_id, feature_name, idempotency_key)
            if scoped is not None and scoped in self._holds_by_idem:
                first = self._holds_by_idem[scoped]
                return Charge(
                    True,
                    self._used(key, window_start),
                    self._held(user_id, feature_name, now),
                    replayed=True,
                    reservation_id=first.id,
                    first_credits=first.credits,
                )
            if reservation_id in self._holds:
                raise invalid("reservation id already used", reservation_id=reservation_id)
            used = self._used(key, window_start)
            held = self._held(user_id, feature_name, now)
            if not fits(used, held, credits, limit):
                return Charge(False, used, held)
            hold = _Hold(
                reservation_id,
                user_id,
                feature_name,
                credits,
                expires_at,
                "held",
                None,
                idempotency_key,
            )
            self._holds[reservation_id] = hold
            self._active[(user_id, feature_name)][reservation_id] = hold
            if scoped is not None:
                self._holds_by_idem[scoped] = hold
            return Charge(True, used, held + credits, reservation_id=reservation_id)

    def settle(
        self,
        *,
        reservation_id: str,
        credits: int | None,
        now: datetime,
        metadata: dict[str, Any] | None,
    ) -> UsageEvent | None:
        with self._lock:
            hold = self._holds.get(reservation_id)
            if hold is None:  # never made, or committed and forgotten: its event answers
                event = self._commits.get(reservation_id)
                if event is None:
                    raise reservation_error("no such reservation", reservation_id=reservation_id)
                return event.model_copy(update={"replayed": True})
            was_open = self._active[(hold.user_id, hold.feature_name)].pop(reservation_id, None)
            if credits is None:  # release
                if hold.status in ("held", "expired"):
                    hold.status = "released"
                if was_open:
                    self._forget_settled(reservation_id, now)
                return hold.event
            if hold.status == "committed":
                return hold.event.model_copy(update={"replayed": True}) if hold.event else None
            if hold.status == "released":
                raise reservation_error(
                    "reservation was released; it cannot be committed",
                    reservation_id=reservation_id,
                )
            event = self._append(
                hold.user_id,
                hold.feature_name,
                credits,
                "usage",
                now,
                metadata,
                f"reservation:{reservation_id}",
            )
            hold.status = "committed"
            hold.event = event
            self._commits[reservation_id] = event
            if hold.idempotency_key is None:  # its event answers a repeated commit
                del self._holds[reservation_id]
            elif was_open:
                self._forget_settled(reservation_id, now)
            return event

    def _forget_settled(self, reservation_id: str, now: datetime) -> None:
        """Keep at most ``MAX_SETTLED`` settled or expired holds (a late commit records, a commit
        after a release is refused, a keyed reserve replays): the memory store serves
        long-running demos, which must not grow without bound. A commit without a key deletes
        its hold at once. Like the SQL stores, it also forgets those past their expiry by
        :data:`HOLD_GRACE` (oldest settled first)."""
        settled, holds = self._settled, self._holds
        settled.append(reservation_id)
        cutoff = now - HOLD_GRACE
        while settled:
            oldest = holds.get(settled[0])  # None: committed since, and deleted
            if (
                oldest is not None
                and len(settled) <= self.MAX_SETTLED
                and oldest.expires_at >= cutoff
            ):
                break
            settled.popleft()
            if oldest is not None:
                del holds[oldest.id]
                if oldest.idempotency_key is not None:
                    scoped = (oldest.user_id, oldest.feature_name, oldest.idempotency_key)
                    self._holds_by_idem.pop(scoped, None)

    def usage(
        self, *, user_id: str, feature_name: str, window_start: datetime | None, now: datetime
    ) -> tuple[int, int]:
        with self._lock:
            key = self._keys.get((user_id, feature_name)) or _Key()
            return self._used(key, window_start), self._held(user_id, feature_name, now)

    def reset(
        self,
        *,
        user_id: str,
        feature_name: str,
        window_start: datetime | None,
        now: datetime,
        metadata: dict[str, Any] | None,
    ) -> UsageEvent:
        with self._lock:
            key = self._keys[(user_id, feature_name)]
            zeroed = max(self._used(key, window_start), 0)
            meta = {**(metadata or {}), "pre_reset_total": zeroed}
            event = self._append(user_id, feature_name, None, "reset", now, meta, None)
            key.last_reset_at = event.timestamp
            key.reset_base = key.total
            key.reset_event = event
            return event

    def usage_since_reset(self, *, user_id: str, feature_name: str) -> ResetInfo:
        with self._lock:
            key = self._keys.get((user_id, feature_name)) or _Key()
            if key.reset_event is None:
                return ResetInfo(key.total, None, 0)
            pre = int((key.reset_event.metadata or {}).get("pre_reset_total", 0))
            return ResetInfo(key.total - key.reset_base, key.last_reset_at, pre)

    def hourly_totals(
        self,
        *,
        user_ids: Sequence[str],
        feature_names: Sequence[str],
        start: datetime | None,
        end: datetime,
    ) -> list[HourlyTotal]:
        users, features = set(user_ids), set(feature_names)
        sums: defaultdict[tuple[str, str, datetime], int] = defaultdict(int)
        with self._lock:
            for e in self._events:
                if (
                    e.user_id in users
                    and e.feature_name in features
                    and e.event_type != "reset"
                    and (start is None or e.timestamp >= start)
                    and e.timestamp < end
                ):
                    hour = e.timestamp.replace(minute=0, second=0, microsecond=0)
                    sums[(e.user_id, e.feature_name, hour)] += e.credits_used or 0
        return [HourlyTotal(u, f, h, t) for (u, f, h), t in sorted(sums.items())]

    def list_events(
        self, *, user_id: str, feature_name: str | None = None, limit: int = 100
    ) -> list[UsageEvent]:
        with self._lock:
            rows = [
                e
                for e in reversed(self._events)
                if e.user_id == user_id and (feature_name is None or e.feature_name == feature_name)
            ]
            return rows[:limit]

    def ledger_check(self, *, user_id: str, feature_name: str) -> tuple[int, int]:
        with self._lock:
            key = self._keys.get((user_id, feature_name)) or _Key()
            ledger = sum(
                e.credits_used or 0
                for e in self._events
                if e.user_id == user_id and e.feature_name == feature_name
            )
            return key.total, ledger

    def top_usage(
        self, *, feature_name: str, window_start: datetime | None, limit: int
    ) -> list[tuple[str, int]]:
        with self._lock:
            used = [
                (user_id, self._used(key, window_start))
                for (user_id, feature), key in self._keys.items()
                if feature == feature_name
            ]
        ranked = sorted((row for row in used if row[1] > 0), key=lambda r: (-r[1], r[0]))
        return ranked[:limit]

    def list_recent_events(self, *, feature_name: str | None, limit: int) -> list[UsageEvent]:
        with self._lock:
            rows: list[UsageEvent] = []
            for event in reversed(self._events):
                if feature_name is None or event.feature_name == feature_name:
                    rows.append(event)
                    if len(rows) >= limit:
                        break
            return rows

    # -- Stripe ---------------------------------------------------------------------------------
    def apply_stripe_event(
        self,
        *,
        event_id: str | None,
        event_type: str,
        created: datetime,
        now: datetime,
        price: StripePrice | None = None,
        link: StripeLink | None = None,
        subscription: StripeSubscription | None = None,
    ) -> StripeApplied:
        with self._lock:
            if event_id is not None and event_id in self._stripe_events:
                return StripeApplied("duplicate", self._stripe_events[event_id].user_id)
            result = StripeApplied("ignored")
            if price is not None:
                for pid, plan in list(self._plans.items()):
                    if plan.stripe_price_id == price.stripe_price_id:
                        self._plans[pid] = plan.model_copy(
                            update={
                                "price_amount": price.price_amount,
                                "price_currency": price.price_currency,
                            }
                        )
                result = StripeApplied("applied")
            if link is not None:
                result = self._stripe_link(link)
            if subscription is not None:
                result = self._stripe_subscription(subscription)
            if event_id is not None:
                self._stripe_events[event_id] = result
            return result

    def _stripe_link(self, link: StripeLink) -> StripeApplied:
        user_id = link.user_id
        if user_id is None:
            wanted = (link.email or "").lower()
            matches = [
                p.id
                for p in self._profiles.values()
                if wanted and (p.email or "").lower() == wanted
            ]
            if len(matches) != 1:
                return StripeApplied("ignored")
            user_id = matches[0]
        known = self._stripe_customers.get(link.customer_id)
        if known is not None and known[1] >= link.order_key:
            return StripeApplied("stale", user_id)
        self._stripe_customers[link.customer_id] = (user_id, link.order_key)
        profile = self._profiles.get(user_id) or Profile(id=user_id)
        if profile.email is None and link.email:
            profile = profile.model_copy(update={"email": link.email})
        self._profiles[user_id] = profile
        self._stripe_refresh(user_id)
        return StripeApplied("applied", user_id)

    def _stripe_subscription(self, sub: StripeSubscription) -> StripeApplied:
        old = self._stripe_subs.get(sub.subscription_id)
        old_end, new_end = (old.current_period_end if old else None), sub.current_period_end
        if old is not None and (
            old.order_key >= sub.order_key
            or (sub.period_guard and old_end is not None and (new_end is None or old_end > new_end))
        ):
            if old.started is None and sub.started is not None:
                self._stripe_subs[sub.subscription_id] = replace(old, started=sub.started)
            return StripeApplied("stale", self._stripe_user(sub.customer_id))
        if old is not None and sub.started is None:
            sub = replace(sub, started=old.started)
        self._stripe_subs[sub.subscription_id] = sub
        user_id = self._stripe_user(sub.customer_id)
        if user_id is None:
            user_id = min(
                (p.id for p in self._profiles.values() if p.stripe_customer_id == sub.customer_id),
                default=None,
            )
            if user_id is not None:
                self._stripe_customers[sub.customer_id] = (user_id, "")
        if user_id is None:
            return StripeApplied("pending")
        self._stripe_refresh(user_id)
        return StripeApplied("applied", user_id)

    def _stripe_user(self, customer_id: str) -> str | None:
        known = self._stripe_customers.get(customer_id)
        return known[0] if known else None

    def _stripe_refresh(self, user_id: str) -> None:
        customers = {c: key for c, (u, key) in self._stripe_customers.items() if u == user_id}
        subs = [s for s in self._stripe_subs.values() if s.customer_id in customers]
        profile = self._profiles.get(user_id) or Profile(id=user_id)
        if subs:
            best = min(
                subs,
                key=lambda s: (
                    s.ended,
                    s.started is None,
                    -s.started.timestamp() if s.started else 0,
                    _desc(s.subscription_id),
                ),
            )
            fields: dict[str, Any] = {
                "stripe_customer_id": best.customer_id,
                "plan": best.plan,
                "subscription_status": best.status,
                "current_period_start": best.current_period_start,
                "current_period_end": best.current_period_end,
            }
        else:
            latest = max(customers, key=lambda c: (customers[c], c))
            fields = {"stripe_customer_id": latest}
        self._profiles[user_id] = profile.model_copy(update=fields)

    def pending_stripe_subscriptions(self, *, limit: int) -> list[StripeSubscription]:
        with self._lock:
            pending = [
                replace(s, period_guard=False)
                for s in self._stripe_subs.values()
                if s.customer_id not in self._stripe_customers
            ]
        pending.sort(key=lambda s: s.subscription_id)
        pending.sort(key=lambda s: (s.started is None, -s.started.timestamp() if s.started else 0))
        return pending[:limit]

    def stripe_export_batch(
        self, *, meter: str, feature_name: str | None, limit: int
    ) -> tuple[int, list[tuple[UsageEvent, str | None]]]:
        with self._lock:
            cursor = self._stripe_cursors.get(meter, 0)
            rows: list[tuple[UsageEvent, str | None]] = []
            start = bisect.bisect_right([e.id for e in self._events], cursor)
            for event in self._events[start:]:
                if feature_name is not None and event.feature_name != feature_name:
                    continue
                profile = self._profiles.get(event.user_id)
                rows.append((event, profile.stripe_customer_id if profile else None))
                if len(rows) >= limit:
                    break
            return cursor, rows

    def advance_stripe_cursor(self, *, meter: str, event_id: int) -> int:
        with self._lock:
            cursor = max(self._stripe_cursors.get(meter, 0), event_id)
            self._stripe_cursors[meter] = cursor
            return cursor


def _desc(text: str) -> tuple[int, ...]:
    """A key that sorts strings in descending order."""
    return (*(-ord(ch) for ch in text), 1)
