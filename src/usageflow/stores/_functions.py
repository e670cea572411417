"""The operations of the stores whose logic lives in SQL functions (PostgreSQL, Supabase).

Each operation is one call of one function installed by the migration: the store subclasses
differ only in how they make that call (:meth:`FunctionStore._invoke`: a ``SELECT fn(...)``
over psycopg, or a PostgREST ``rpc()``), so the operations are written here once.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from usageflow.models import FeatureLimit, LimitAdjustment, Plan, Profile, UsageEvent
from usageflow.stores.base import (
    Charge,
    HourlyTotal,
    ResetInfo,
    Store,
    StripeApplied,
    StripeLink,
    StripePrice,
    StripeSubscription,
)

__all__ = ["TABLE_OF", "FunctionStore"]

#: The table each operation mostly concerns (for error details); ledger operations are not
#: listed and report the events table.
TABLE_OF: dict[str, str] = {
    "load_catalog": "user_plans",
    "upsert_plan": "user_plans",
    "update_price": "user_plans",
    "set_feature_limit": "usage_feature_limits",
    "get_profile": "profiles",
    "upsert_profile": "profiles",
    "add_limit_adjustment": "user_limit_adjustments",
    "get_limit_adjustments": "user_limit_adjustments",
    "top_usage": "counters",
    "apply_stripe_event": "stripe_events",
    "pending_stripe_subscriptions": "stripe_subscriptions",
    "stripe_export_batch": "stripe_exports",
    "advance_stripe_cursor": "stripe_exports",
}


class FunctionStore(Store):
    """A :class:`Store` whose every operation is one database function call."""

    @abstractmethod
    def _invoke(self, operation: str, kwargs: Mapping[str, Any]) -> Any:
        """Call the function of ``operation`` with ``kwargs``; return the decoded result."""

    def load_catalog(self) -> list[Plan]:
        result: list[Plan] = self._invoke("load_catalog", {})
        return result

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
        result: Plan = self._invoke(
            "upsert_plan",
            {
                "name": name,
                "stripe_price_id": stripe_price_id,
                "price_amount": price_amount,
                "price_currency": price_currency,
                "is_free": is_free,
                "payment_link_url": payment_link_url,
            },
        )
        return result

    def set_feature_limit(
        self, *, plan_id: int, feature_name: str, limit_value: int, period: str
    ) -> FeatureLimit:
        result: FeatureLimit = self._invoke(
            "set_feature_limit",
            {
                "plan_id": plan_id,
                "feature_name": feature_name,
                "limit_value": limit_value,
                "period": period,
            },
        )
        return result

    def update_price(
        self, *, stripe_price_id: str, price_amount: Decimal | None, price_currency: str | None
    ) -> int:
        result: int = self._invoke(
            "update_price",
            {
                "stripe_price_id": stripe_price_id,
                "price_amount": price_amount,
                "price_currency": price_currency,
            },
        )
        return result

    def get_profile(self, *, user_id: str) -> Profile | None:
        result: Profile | None = self._invoke("get_profile", {"user_id": user_id})
        return result

    def upsert_profile(self, *, user_id: str, fields: dict[str, Any]) -> Profile:
        result: Profile = self._invoke("upsert_profile", {"user_id": user_id, "fields": fields})
        return result

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
        result: LimitAdjustment = self._invoke(
            "add_limit_adjustment",
            {
                "user_id": user_id,
                "feature_name": feature_name,
                "amount": amount,
                "type": type,
                "start_date": start_date,
                "end_date": end_date,
                "metadata": metadata,
            },
        )
        return result

    def get_limit_adjustments(
        self, *, user_id: str, feature_name: str, ending_after: datetime
    ) -> list[LimitAdjustment]:
        result: list[LimitAdjustment] = self._invoke(
            "get_limit_adjustments",
            {"user_id": user_id, "feature_name": feature_name, "ending_after": ending_after},
        )
        return result

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
        result: Charge = self._invoke(
            "charge",
            {
                "user_id": user_id,
                "feature_name": feature_name,
                "credits": credits,
                "event_type": event_type,
                "limit": limit,
                "window_start": window_start,
                "now": now,
                "metadata": metadata,
                "idempotency_key": idempotency_key,
            },
        )
        return result

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
        result: Charge = self._invoke(
            "reserve",
            {
                "reservation_id": reservation_id,
                "user_id": user_id,
                "feature_name": feature_name,
                "credits": credits,
                "limit": limit,
                "window_start": window_start,
                "now": now,
                "expires_at": expires_at,
                "idempotency_key": idempotency_key,
            },
        )
        return result

    def settle(
        self,
        *,
        reservation_id: str,
        credits: int | None,
        now: datetime,
        metadata: dict[str, Any] | None,
    ) -> UsageEvent | None:
        result: UsageEvent | None = self._invoke(
            "settle",
            {
                "reservation_id": reservation_id,
                "credits": credits,
                "now": now,
                "metadata": metadata,
            },
        )
        return result

    def usage(
        self, *, user_id: str, feature_name: str, window_start: datetime | None, now: datetime
    ) -> tuple[int, int]:
        result: tuple[int, int] = self._invoke(
            "usage",
            {
                "user_id": user_id,
                "feature_name": feature_name,
                "window_start": window_start,
                "now": now,
            },
        )
        return result

    def reset(
        self,
        *,
        user_id: str,
        feature_name: str,
        window_start: datetime | None,
        now: datetime,
        metadata: dict[str, Any] | None,
    ) -> UsageEvent:
        result: UsageEvent = self._invoke(
            "reset",
            {
                "user_id": user_id,
                "feature_name": feature_name,
                "window_start": window_start,
                "now": now,
                "metadata": metadata,
            },
        )
        return result

    def usage_since_reset(self, *, user_id: str, feature_name: str) -> ResetInfo:
        result: ResetInfo = self._invoke(
            "usage_since_reset", {"user_id": user_id, "feature_name": feature_name}
        )
        return result

    def hourly_totals(
        self,
        *,
        user_ids: Sequence[str],
        feature_names: Sequence[str],
        start: datetime | None,
        end: datetime,
    ) -> list[HourlyTotal]:
        result: list[HourlyTotal] = self._invoke(
            "hourly_totals",
            {"user_ids": user_ids, "feature_names": feature_names, "start": start, "end": end},
        )
        return result

    def list_events(
        self, *, user_id: str, feature_name: str | None = None, limit: int = 100
    ) -> list[UsageEvent]:
        result: list[UsageEvent] = self._invoke(
            "list_events", {"user_id": user_id, "feature_name": feature_name, "limit": limit}
        )
        return result

    def ledger_check(self, *, user_id: str, feature_name: str) -> tuple[int, int]:
        result: tuple[int, int] = self._invoke(
            "ledger_check", {"user_id": user_id, "feature_name": feature_name}
        )
        return result

    def top_usage(
        self, *, feature_name: str, window_start: datetime | None, limit: int
    ) -> list[tuple[str, int]]:
        result: list[tuple[str, int]] = self._invoke(
            "top_usage",
            {"feature_name": feature_name, "window_start": window_start, "limit": limit},
        )
        return result

    def list_recent_events(self, *, feature_name: str | None, limit: int) -> list[UsageEvent]:
        result: list[UsageEvent] = self._invoke(
            "list_recent_events", {"feature_name": feature_name, "limit": limit}
        )
        return result

    # -- Stripe webhook state and meter export (each one function call) -----------------------
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
        result: StripeApplied = self._invoke(
            "apply_stripe_event",
            {
                "event_id": event_id,
                "event_type": event_type,
                "created": created,
                "now": now,
                "price": price,
                "link": link,
                "subscription": subscription,
            },
        )
        return result

    def stripe_export_batch(
        self, *, meter: str, feature_name: str | None, limit: int
    ) -> tuple[int, list[tuple[UsageEvent, str | None]]]:
        result: tuple[int, list[tuple[UsageEvent, str | None]]] = self._invoke(
            "stripe_export_batch", {"meter": meter, "feature_name": feature_name, "limit": limit}
        )
        return result

    def advance_stripe_cursor(self, *, meter: str, event_id: int) -> int:
        result: int = self._invoke("advance_stripe_cursor", {"meter": meter, "event_id": event_id})
        return result

    def pending_stripe_subscriptions(self, *, limit: int) -> list[StripeSubscription]:
        result: list[StripeSubscription] = self._invoke(
            "pending_stripe_subscriptions", {"limit": limit}
        )
        return result
