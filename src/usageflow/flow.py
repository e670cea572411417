"""``UsageFlow`` (threads) and ``AsyncUsageFlow`` (asyncio): thin drivers over one core.

Both expose the same methods with the same arguments and results. Each method validates and
decides in :class:`usageflow._core.Core`; the driver only performs the store calls the core
asks for: directly (``UsageFlow``) or awaited (``AsyncUsageFlow``, where a blocking store
such as SQLite runs in a worker thread, or inline when it cannot wait, so that the event loop
never waits on I/O; see docs/stores.md).
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Annotated, Any, Literal, NoReturn, TypeVar, overload

from pydantic import BaseModel, ConfigDict, PlainValidator

from usageflow import _log, _observe
from usageflow._config import validate
from usageflow._core import Core, Op, Options, PlanResolver, redact
from usageflow.cache import PlanCache
from usageflow.errors import UsageFlowError, config_error, reservation_error
from usageflow.models import (
    Alert,
    CreditPack,
    Decision,
    FeatureLimit,
    Grant,
    LimitAdjustment,
    Membership,
    PendingSubscription,
    Plan,
    Profile,
    StripeEventRecord,
    TopUsers,
    Usage,
    UsageEvent,
    UsageSinceReset,
    UsageStats,
    UserOverview,
)
from usageflow.ops import StoreCall
from usageflow.periods import Clock
from usageflow.stores import open_store, redact_url
from usageflow.stores.base import AsyncStore, Store, Tables
from usageflow.stripe import api as stripe_api
from usageflow.stripe import webhooks as stripe_webhooks
from usageflow.stripe.results import ExportResult, PlanSyncResult, ReconcileResult, WebhookResult

__all__ = ["AsyncReservation", "AsyncUsageFlow", "Reservation", "UsageFlow"]

T = TypeVar("T")
DEFAULT_STORE = "sqlite:///usageflow.db"


def _stripe_key(flow: Any) -> bool:
    """Whether a Stripe API key is configured for ``flow`` (its own, or ``$STRIPE_API_KEY``)."""
    return bool(getattr(flow, "stripe_api_key", None) or os.environ.get("STRIPE_API_KEY"))


def _build_store(
    store: str | Store | None,
    supabase_url: str | None,
    supabase_key: str | None,
    tables: Tables,
    custom_tables: bool,
) -> Store:
    if store is not None and (supabase_url or supabase_key):
        raise config_error("give either store= or supabase_url/supabase_key, not both")
    if isinstance(store, Store):
        if custom_tables:
            raise config_error(
                "table names are set on the store object when one is passed; "
                "pass tables=Tables(...) to its constructor"
            )
        return store
    if supabase_url or supabase_key:
        if not (supabase_url and supabase_key):
            raise config_error("supabase_url and supabase_key are both required")
        from usageflow.stores.supabase import SupabaseStore  # type: ignore[import-not-found,unused-ignore]

        supabase_store: Store = SupabaseStore(supabase_url, supabase_key, tables)
        return supabase_store
    if store is None:
        store = os.environ.get("USAGEFLOW_STORE") or DEFAULT_STORE
    if not isinstance(store, str):
        raise config_error("store must be a URL string or a Store object")
    return open_store(store, tables)


def _seconds(*, positive: bool) -> PlainValidator:
    """A number of seconds (``int`` or ``float``, not ``bool``), finite, positive or not
    negative."""
    wanted = "a positive" if positive else "a non-negative"

    def check(value: object) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
            or (positive and value == 0)
        ):
            raise ValueError(f"must be {wanted} number of seconds")
        return float(value)

    return PlainValidator(check)


class _FlowOptions(BaseModel):
    """The keyword options of :class:`UsageFlow` and :class:`AsyncUsageFlow` (``store`` aside:
    a URL or a store object, checked when the store is opened)."""

    model_config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)

    supabase_url: str | None = None
    supabase_key: str | None = None
    manual_stripe_integration: bool = False
    enable_user_adjustments: bool = False
    debug: bool = False
    user_plans_table: str = "user_plans"
    usage_events_table: str = "usage_events"
    usage_feature_limits_table: str = "usage_feature_limits"
    user_limit_adjustments_table: str = "user_limit_adjustments"
    profiles_table: str = "profiles"
    cache_ttl: Annotated[float, _seconds(positive=False)] = 30.0
    reservation_ttl: Annotated[float, _seconds(positive=True)] = 300.0
    clock: Callable[[], datetime] | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_key: str | None = None
    plan_resolver: Callable[[str], Any] | None = None


_OPTION_NAMES = frozenset(_FlowOptions.model_fields)


class _Base:
    """Configuration shared by both flows."""

    store: Store
    core: Core

    def __init__(
        self,
        store: str | Store | None = None,
        *,
        supabase_url: str | None = None,
        supabase_key: str | None = None,
        manual_stripe_integration: bool = False,
        enable_user_adjustments: bool = False,
        debug: bool = False,
        user_plans_table: str = "user_plans",
        usage_events_table: str = "usage_events",
        usage_feature_limits_table: str = "usage_feature_limits",
        user_limit_adjustments_table: str = "user_limit_adjustments",
        profiles_table: str = "profiles",
        cache_ttl: float = 30.0,
        reservation_ttl: float = 300.0,
        clock: Clock | None = None,
        stripe_webhook_secret: str | None = None,
        stripe_api_key: str | None = None,
        plan_resolver: PlanResolver | None = None,
        **unknown: NoReturn,
    ) -> None:
        # Every option is checked before anything is opened; an unknown one (a typo) is a
        # USAGE_CONFIG_ERROR naming the closest option, not a TypeError.
        given = {name: value for name, value in locals().items() if name in _OPTION_NAMES}
        opts = validate(_FlowOptions, {**given, **unknown}, config_error, unknown="unknown option")
        tables = Tables(
            user_plans=opts.user_plans_table,
            usage_events=opts.usage_events_table,
            usage_feature_limits=opts.usage_feature_limits_table,
            user_limit_adjustments=opts.user_limit_adjustments_table,
            profiles=opts.profiles_table,
        )
        self.tables = tables
        self.store = _build_store(
            store, opts.supabase_url, opts.supabase_key, tables, custom_tables=tables != Tables()
        )
        self.options = Options(
            manual_stripe_integration=opts.manual_stripe_integration,
            enable_user_adjustments=opts.enable_user_adjustments,
            debug=opts.debug,
            reservation_ttl=opts.reservation_ttl,
            plan_resolver=opts.plan_resolver,
        )
        self.stripe_webhook_secret = opts.stripe_webhook_secret or os.environ.get(
            "STRIPE_WEBHOOK_SECRET"
        )
        self.stripe_api_key = opts.stripe_api_key
        if (opts.stripe_webhook_secret or opts.stripe_api_key) and not self.store.stripe:
            raise config_error(
                f"{type(self.store).__name__} does not keep Stripe's state (its `stripe` is "
                "false), so Stripe webhooks and API calls could not be applied: use a store "
                "that does (SQLite, PostgreSQL, Supabase) or leave the Stripe options out"
            )
        self.cache = PlanCache(opts.cache_ttl)
        self.core = Core(self.options, self.cache, opts.clock)
        if opts.debug:
            _log.debug(
                "usageflow: store=%s tables=%s",
                redact_url(getattr(self.store, "url", type(self.store).__name__)),
                tables,
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} store={type(self.store).__name__}>"

    def _log(self, call: StoreCall[Any]) -> None:
        if self.options.debug:
            _log.debug("usageflow store.%s %s", call.method, redact(call.kwargs))


class UsageFlow(_Base):
    """Usage tracking and quota enforcement, for threads (Flask, scripts, workers).

    With no ``store`` and no Supabase settings the store is ``$USAGEFLOW_STORE`` or the
    embedded SQLite file ``./usageflow.db``. See the docs for every option.
    """

    def _run(self, op: Op[T]) -> T:
        """Drive ``op``; a step that fails is thrown into it (it may handle the error)."""
        store = self.store
        try:
            step = next(op)
            while True:
                try:
                    if isinstance(step, StoreCall):
                        self._log(step)
                        if _observe.observers:
                            result = _observe.timed(store.call, step)
                        else:
                            result = store.call(step)
                    else:
                        result = step.run(self)
                except BaseException as exc:
                    step = op.throw(exc)
                else:
                    step = op.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def __enter__(self) -> UsageFlow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    # -- enforcement ----------------------------------------------------------------------------
    def consume(
        self,
        user_id: str,
        feature_name: str,
        credits: int = 1,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Decision:
        """Check and charge in one atomic step: ``credits`` are recorded only if they fit."""
        return self._run(
            self.core.consume(user_id, feature_name, credits, metadata, idempotency_key)
        )

    def authorize(self, user_id: str, feature_name: str, credits: int = 1) -> bool:
        """True when ``credits`` more fit in the user's quota now (nothing is recorded)."""
        return self._run(self.core.authorize(user_id, feature_name, credits))

    def reserve(
        self,
        user_id: str,
        feature_name: str,
        credits: int,
        ttl: float | None = None,
        idempotency_key: str | None = None,
    ) -> Reservation:
        """Hold ``credits`` until :meth:`Reservation.commit`, :meth:`Reservation.release` or
        ``ttl`` seconds pass; raises ``USAGE_LIMIT_ERROR`` when they do not fit."""
        rid, expires_at, decision = self._run(
            self.core.reserve(user_id, feature_name, credits, ttl, idempotency_key)
        )
        return Reservation(self, rid, user_id, feature_name, credits, expires_at, decision)

    # -- recording ------------------------------------------------------------------------------
    def increment_usage(
        self,
        user_id: str,
        feature_name: str,
        credits_used: int = 1,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> UsageEvent:
        """Record usage without checking the limit (tracking)."""
        return self._run(
            self.core.increment_usage(
                user_id, feature_name, credits_used, metadata, idempotency_key
            )
        )

    def adjust_usage(
        self,
        user_id: str,
        feature_name: str,
        amount: int,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> UsageEvent:
        """Add ``amount`` to recorded usage: negative refunds credits, positive deducts them.
        ``metadata['reason']`` is required."""
        return self._run(
            self.core.adjust_usage(user_id, feature_name, amount, metadata, idempotency_key)
        )

    def reset_feature_usage(
        self, user_id: str, feature_name: str, metadata: Mapping[str, Any] | None = None
    ) -> UsageEvent:
        """Zero the usage of the feature's current window (the ledger keeps every event)."""
        return self._run(self.core.reset_feature_usage(user_id, feature_name, metadata))

    # -- reading --------------------------------------------------------------------------------
    def fetch_usage(self, user_id: str, feature_name: str, period: str | None = None) -> Usage:
        """Current usage (held credits included), limit and remaining credits."""
        return self._run(self.core.fetch_usage(user_id, feature_name, period))

    def get_total_usage(self, user_id: str, feature_name: str, period: str | None = None) -> int:
        """Recorded usage in the period (default: the feature's limit period)."""
        return self._run(self.core.get_total_usage(user_id, feature_name, period))

    @overload
    def get_usage_stats(
        self,
        user_id: str,
        feature_name: str,
        period: str = ...,
        group_by: str = ...,
        *,
        by_member: Literal[False] = False,
    ) -> UsageStats: ...

    @overload
    def get_usage_stats(
        self,
        user_id: str,
        feature_name: str,
        period: str = ...,
        group_by: str = ...,
        *,
        by_member: Literal[True],
    ) -> dict[str, UsageStats]: ...

    def get_usage_stats(
        self,
        user_id: str,
        feature_name: str,
        period: str = "current_month",
        group_by: str = "day",
        *,
        by_member: bool = False,
    ) -> UsageStats | dict[str, UsageStats]:
        """Usage in the period bucketed by hour, day, week or month. ``by_member`` (for a team
        account): the account's pool broken down by member (and the account's own calls,
        under its id), adding up to the account's total."""
        if by_member:
            return self._run(self.core.get_member_stats(user_id, feature_name, period, group_by))
        return self._run(self.core.get_usage_stats(user_id, feature_name, period, group_by))

    def get_batch_usage_stats(
        self,
        user_ids: list[str],
        feature_names: list[str],
        period: str = "current_month",
        group_by: str = "day",
    ) -> dict[str, dict[str, UsageStats]]:
        """``result[user_id][feature_name]`` for every pair, read in one query."""
        return self._run(self.core.get_batch_usage_stats(user_ids, feature_names, period, group_by))

    def get_usage_since_reset(self, user_id: str, feature_name: str) -> UsageSinceReset:
        return self._run(self.core.get_usage_since_reset(user_id, feature_name))

    def list_events(
        self, user_id: str, feature_name: str | None = None, limit: int = 100
    ) -> list[UsageEvent]:
        """The user's most recent ledger events, newest first."""
        return self._run(self.core.list_events(user_id, feature_name, limit))

    def list_recent_events(
        self, feature_name: str | None = None, limit: int = 100
    ) -> list[UsageEvent]:
        """The most recent ledger events of every user (of ``feature_name`` when given),
        newest first; ``limit`` is 1 to 10,000."""
        return self._run(self.core.list_recent_events(feature_name, limit))

    def recent_stripe_events(self, limit: int = 50) -> list[StripeEventRecord]:
        """The Stripe webhook events processed most recently, with what was done with each."""
        return self._run(self.core.recent_stripe_events(limit))

    def list_limit_adjustments(self, user_id: str, feature_name: str) -> list[LimitAdjustment]:
        """A user's limit adjustments of a feature that have not ended yet."""
        return self._run(self.core.list_limit_adjustments(user_id, feature_name))

    # -- team accounts ----------------------------------------------------------------------------
    def add_member(
        self, account_id: str, user_id: str, *, limits: Mapping[str, int] | None = None
    ) -> Membership:
        """Make ``user_id`` a member of the team account ``account_id``: their decisions draw
        on the account's plan and pooled usage, within their own caps (``limits``: feature ->
        credits per window). Again for a member: the caps are replaced. A member of another
        account is refused (``USAGE_INVALID_PARAMS``) until removed from it."""
        return self._run(self.core.add_member(account_id, user_id, limits))

    def remove_member(self, account_id: str, user_id: str) -> bool:
        """Remove a member: their history stays theirs, they stop drawing on the pool.
        Answers whether they were a member."""
        return self._run(self.core.remove_member(account_id, user_id))

    def list_members(self, account_id: str, *, include_removed: bool = False) -> list[Membership]:
        """The account's members, by user id (``include_removed``: past members too)."""
        return self._run(self.core.list_members(account_id, include_removed))

    def get_account(self, user_id: str) -> str | None:
        """The team account the user is a member of, ``None`` when none."""
        return self._run(self.core.get_account(user_id))

    # -- credits --------------------------------------------------------------------------------
    def grant_credits(
        self,
        user_id: str,
        feature_name: str,
        credits: int,
        *,
        expires_at: datetime | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        source: str = "manual",
    ) -> Grant:
        """Give a user ``credits`` of a feature that do not reset with the plan's period,
        usable while the clock is before ``expires_at`` (``None``: never expire). Decisions
        spend the plan's allowance first, then grants, the one expiring first first. The same
        ``idempotency_key`` again answers the first grant (``replayed=True``). ``source``
        says where the grant came from (``stripe`` is used for packs bought)."""
        return self._run(
            self.core.grant_credits(
                user_id,
                feature_name,
                credits,
                expires_at,
                reason,
                idempotency_key,
                metadata,
                source,
            )
        )

    def get_credit_balance(self, user_id: str, feature_name: str) -> int:
        """The credits left on the user's live grants of a feature."""
        return self._run(self.core.get_credit_balance(user_id, feature_name))

    def list_grants(self, user_id: str, feature_name: str | None = None) -> list[Grant]:
        """The user's grants (of ``feature_name`` when given), spent and expired ones
        included, newest first."""
        return self._run(self.core.list_grants(user_id, feature_name))

    def create_credit_pack(
        self,
        name: str,
        *,
        credits: Mapping[str, int],
        stripe_price_id: str | None = None,
        stripe_payment_link_id: str | None = None,
        payment_link_url: str | None = None,
        expires_in_days: int | None = None,
    ) -> CreditPack:
        """Create or update (matched by ``stripe_price_id``, else ``stripe_payment_link_id``,
        else by name) a credit pack: ``credits`` maps features to the credits one purchase
        grants. A paid checkout of its Payment Link grants them to the buyer."""
        return self._run(
            self.core.create_credit_pack(
                name,
                credits,
                stripe_price_id,
                stripe_payment_link_id,
                payment_link_url,
                expires_in_days,
            )
        )

    def list_credit_packs(self) -> list[CreditPack]:
        """Every credit pack, by id."""
        return self._run(self.core.list_credit_packs())

    def top_up_url(self, user_id: str, feature_name: str) -> str | None:
        """The Payment Link of the pack offered to a user out of ``feature_name`` (the one
        granting the fewest credits of it), with ``client_reference_id``; ``None`` when no
        pack with a link grants the feature."""
        return self._run(self.core.top_up_url(user_id, feature_name))

    # -- alerts ---------------------------------------------------------------------------------
    def set_alert_thresholds(
        self, feature_name: str, thresholds: Sequence[int], plan_id: int | None = None
    ) -> list[int]:
        """Set the alert thresholds of a feature (percents of its limit, whole numbers from 1
        to 1000) for every plan, or for one plan (its own thresholds then replace those of
        every plan); ``[]`` clears them. Answers the thresholds stored, sorted."""
        return self._run(self.core.set_alert_thresholds(feature_name, thresholds, plan_id))

    def get_alert_thresholds(self, feature_name: str, plan_id: int | None = None) -> list[int]:
        """The thresholds set for every plan (``plan_id=None``), or those that apply on one
        plan (its own, else those of every plan)."""
        return self._run(self.core.get_alert_thresholds(feature_name, plan_id))

    def deliver_alerts(
        self, handler: Callable[[Alert], object], *, limit: int = 100, lease: float = 300.0
    ) -> int:
        """Call ``handler(alert)`` for up to ``limit`` undelivered alerts, oldest first (those
        whose handler failed before come after the others), marking each delivered when the
        handler returns; answers how many were delivered. A handler that raises is logged and
        its alert is offered again at the next call. Each alert is leased for ``lease``
        seconds while its handler runs, so concurrent callers never hand one alert out twice
        at once (a caller that dies leaves it to be offered again when the lease ends)."""
        if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - an object with an async __call__
        ):
            raise config_error("an async alert handler needs AsyncUsageFlow")
        return self._run(self.core.deliver_alerts(handler, limit, lease))

    def list_alerts(
        self, user_id: str | None = None, *, undelivered: bool = False, limit: int = 100
    ) -> list[Alert]:
        """The alerts recorded (of one user; only undelivered ones), newest first."""
        return self._run(self.core.list_alerts(user_id, undelivered, limit))

    def top_users(
        self,
        feature_name: str,
        limit: int = 10,
        *,
        period: str | None = None,
        since: datetime | None = None,
    ) -> TopUsers:
        """The users with the most recorded usage of ``feature_name`` (holds not included),
        most first, at most ``limit`` (1 to 1,000); users with none are left out.

        The window is the one of ``period`` that contains now, or the one starting at
        ``since``; by default the feature's period in the plans (``USAGE_INVALID_PARAMS``
        when plans disagree, or when it is ``billing_cycle``, which differs per user). Its
        cost grows with the number of users of the feature, not with the ledger."""
        return self._run(self.core.top_users(feature_name, limit, period, since))

    def get_user_overview(self, user_id: str) -> UserOverview:
        """The user's profile, the plan that applies now, and for every feature of that plan
        its usage (held credits included), limit, remaining credits, period and reset time."""
        return self._run(self.core.get_user_overview(user_id))

    # -- plans, limits, profiles ----------------------------------------------------------------
    def fetch_feature_limit(self, plan_id: int, feature_name: str) -> int | None:
        """A plan's limit; ``None`` when unlimited, 0 when the plan lacks the feature."""
        return self._run(self.core.fetch_feature_limit(plan_id, feature_name))

    def fetch_feature_limit_for_user(self, user_id: str, feature_name: str) -> int | None:
        """The user's limit now (adjustments included); ``None`` when unlimited."""
        return self._run(self.core.fetch_feature_limit_for_user(user_id, feature_name))

    def add_limit_adjustment(
        self,
        user_id: str,
        feature_name: str,
        amount: int,
        type: str,
        start_date: datetime,
        end_date: datetime,
        metadata: Mapping[str, Any] | None = None,
    ) -> LimitAdjustment:
        """Raise (or lower) a user's limit between two dates; needs enable_user_adjustments."""
        return self._run(
            self.core.add_limit_adjustment(
                user_id, feature_name, amount, type, start_date, end_date, metadata
            )
        )

    def create_plan(
        self,
        name: str,
        *,
        stripe_price_id: str | None = None,
        price_amount: Decimal | float | int | str | None = None,
        price_currency: str | None = None,
        is_free: bool = False,
        payment_link_url: str | None = None,
        limits: Mapping[str, object] | None = None,
        per_seat: Sequence[str] = (),
    ) -> Plan:
        """Create or update a plan (matched by stripe_price_id, else by name) and its limits;
        ``per_seat`` names the limits given per seat (times the subscription's quantity)."""
        return self._run(
            self.core.create_plan(
                name,
                stripe_price_id,
                price_amount,
                price_currency,
                is_free,
                payment_link_url,
                limits,
                per_seat,
            )
        )

    def set_feature_limit(
        self, plan_id: int, feature_name: str, limit_value: int, period: str = "current_month"
    ) -> FeatureLimit:
        """Create or replace a plan's limit for a feature (-1 = unlimited)."""
        return self._run(self.core.set_feature_limit(plan_id, feature_name, limit_value, period))

    def get_plans(self) -> list[Plan]:
        """Every plan with its limits (from the plan cache)."""
        return self._run(self.core.get_plans())

    def get_user_plan(self, user_id: str) -> Plan | None:
        """The plan that applies to the user now (``None``: no plan and no free plan)."""
        return self._run(self.core.get_user_plan(user_id))

    def upgrade_url(
        self,
        user_id: str,
        plan: Plan | int | str | None = None,
        feature_name: str | None = None,
    ) -> str | None:
        """The Payment Link of ``plan`` (default: the cheapest plan with a link that gives more
        of ``feature_name``) carrying ``client_reference_id`` and ``prefilled_email``."""
        return self._run(self.core.upgrade_url(user_id, plan, feature_name))

    def assign_plan(
        self,
        user_id: str,
        plan: Plan | int | str | None,
        *,
        email: str | None = None,
        subscription_status: str | None = None,
        current_period_start: datetime | None = None,
        current_period_end: datetime | None = None,
    ) -> Profile:
        """Put a user on a plan (``None``: the free plan) by writing their profile."""
        return self._run(
            self.core.assign_plan(
                user_id,
                plan,
                email,
                subscription_status,
                current_period_start,
                current_period_end,
            )
        )

    def get_profile(self, user_id: str) -> Profile | None:
        return self._run(self.core.get_profile(user_id))

    def update_profile(self, user_id: str, **fields: Any) -> Profile:
        """Set profile columns directly (email, plan, subscription_status, ...)."""
        return self._run(self.core.update_profile(user_id, fields))

    def sync_price(self, price: Any) -> int:
        """Update the plan sold at a Stripe price (a ``stripe.Price`` or dict); returns the
        number of plans changed."""
        return self._run(self.core.sync_price(price))

    def list_pending_stripe_subscriptions(self, limit: int = 100) -> list[PendingSubscription]:
        """Stripe subscriptions kept ``pending`` because their customer is linked to no user
        yet (most recently started first, at most ``limit``, 1 to 1,000); each is applied
        when its customer is linked."""
        return self._run(self.core.list_pending_stripe_subscriptions(limit))

    # -- Stripe (see docs/stripe.md) --------------------------------------------------------------
    def handle_webhook(
        self,
        raw_body: bytes | str,
        signature: str | None,
        *,
        tolerance: int = 300,
        client: Any = None,
    ) -> WebhookResult:
        """Verify a Stripe webhook (the raw body and the ``Stripe-Signature`` header) and apply
        its event once and in order; a bad signature or body raises and writes nothing. With
        a Stripe API key (``stripe_api_key``, ``$STRIPE_API_KEY``) or a ``client``, a credit
        pack bought in a Checkout Session without a Payment Link is read from its line
        items."""

        def op(stripe_client: Any) -> Op[WebhookResult]:
            return stripe_webhooks.handle_webhook(
                self.core, raw_body, signature, self.stripe_webhook_secret, tolerance, stripe_client
            )

        if client is None and not _stripe_key(self):
            return self._run(op(None))
        return stripe_api.run_with_client(self, op, client)

    def sync_plans_from_stripe(self, *, client: Any = None) -> PlanSyncResult:
        """Create or update plans from the active recurring prices in Stripe, their Payment
        Links and ``usageflow:<feature>`` product metadata."""
        return stripe_api.run_with_client(
            self, lambda c: stripe_api.sync_plans(self.core, c), client
        )

    def reconcile(self, *, client: Any = None) -> ReconcileResult:
        """Re-read subscriptions (and completed checkouts) from Stripe and repair what lost
        webhooks missed; never overwrites a newer state."""
        return stripe_api.run_with_client(
            self, lambda c: stripe_api.reconcile(self.core, c), client
        )

    def export_usage_to_stripe(
        self,
        event_name: str,
        *,
        feature_name: str | None = None,
        batch_size: int = 100,
        customer_key: str = "stripe_customer_id",
        value_key: str = "value",
        identifier_prefix: str = "usageflow-",
        client: Any = None,
    ) -> ExportResult:
        """Send usage recorded since the last export to a Stripe Billing Meter (one meter
        event per ledger event, its id as Stripe's ``identifier``)."""
        return stripe_api.run_with_client(
            self,
            lambda c: stripe_api.export_usage(
                self.core,
                event_name,
                feature_name,
                batch_size,
                customer_key,
                value_key,
                identifier_prefix,
                c,
            ),
            client,
        )

    def migrate(self) -> int:
        """Create or upgrade the schema; returns its version."""
        return self._run(self.core.migrate())

    def connection_check(self) -> bool:
        """True when the store answers; False (never an exception) when it does not."""
        try:
            return self._run(self.core.connection_check())
        except UsageFlowError:
            return False


class AsyncUsageFlow(_Base):
    """The asyncio twin of :class:`UsageFlow`: same methods, awaited."""

    def __init__(self, store: str | Store | None = None, **options: Any) -> None:
        super().__init__(store, **options)
        self.astore: AsyncStore = self.store.to_async()

    async def _run(self, op: Op[T], *, shielded: bool = False) -> T:
        """Drive ``op``; a step that fails is thrown into it (it may handle the error).
        ``shielded``: each store call completes even if this task is cancelled meanwhile
        (commits and releases)."""
        astore = self.astore
        call = astore.call_shielded if shielded else astore.call
        try:
            step = next(op)
            while True:
                try:
                    if isinstance(step, StoreCall):
                        self._log(step)
                        if _observe.observers:
                            result = await _observe.timed_async(call(step), step.method)
                        else:
                            result = await call(step)
                    else:
                        result = await step.arun(self)
                except BaseException as exc:
                    step = op.throw(exc)
                else:
                    step = op.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def __aenter__(self) -> AsyncUsageFlow:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.astore.aclose()

    async def consume(
        self,
        user_id: str,
        feature_name: str,
        credits: int = 1,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Decision:
        return await self._run(
            self.core.consume(user_id, feature_name, credits, metadata, idempotency_key)
        )

    async def authorize(self, user_id: str, feature_name: str, credits: int = 1) -> bool:
        return await self._run(self.core.authorize(user_id, feature_name, credits))

    async def reserve(
        self,
        user_id: str,
        feature_name: str,
        credits: int,
        ttl: float | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncReservation:
        rid, expires_at, decision = await self._run(
            self.core.reserve(user_id, feature_name, credits, ttl, idempotency_key)
        )
        return AsyncReservation(self, rid, user_id, feature_name, credits, expires_at, decision)

    async def increment_usage(
        self,
        user_id: str,
        feature_name: str,
        credits_used: int = 1,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> UsageEvent:
        return await self._run(
            self.core.increment_usage(
                user_id, feature_name, credits_used, metadata, idempotency_key
            )
        )

    async def adjust_usage(
        self,
        user_id: str,
        feature_name: str,
        amount: int,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> UsageEvent:
        return await self._run(
            self.core.adjust_usage(user_id, feature_name, amount, metadata, idempotency_key)
        )

    async def reset_feature_usage(
        self, user_id: str, feature_name: str, metadata: Mapping[str, Any] | None = None
    ) -> UsageEvent:
        return await self._run(self.core.reset_feature_usage(user_id, feature_name, metadata))

    async def fetch_usage(
        self, user_id: str, feature_name: str, period: str | None = None
    ) -> Usage:
        return await self._run(self.core.fetch_usage(user_id, feature_name, period))

    async def get_total_usage(
        self, user_id: str, feature_name: str, period: str | None = None
    ) -> int:
        return await self._run(self.core.get_total_usage(user_id, feature_name, period))

    @overload
    async def get_usage_stats(
        self,
        user_id: str,
        feature_name: str,
        period: str = ...,
        group_by: str = ...,
        *,
        by_member: Literal[False] = False,
    ) -> UsageStats: ...

    @overload
    async def get_usage_stats(
        self,
        user_id: str,
        feature_name: str,
        period: str = ...,
        group_by: str = ...,
        *,
        by_member: Literal[True],
    ) -> dict[str, UsageStats]: ...

    async def get_usage_stats(
        self,
        user_id: str,
        feature_name: str,
        period: str = "current_month",
        group_by: str = "day",
        *,
        by_member: bool = False,
    ) -> UsageStats | dict[str, UsageStats]:
        if by_member:
            return await self._run(
                self.core.get_member_stats(user_id, feature_name, period, group_by)
            )
        return await self._run(self.core.get_usage_stats(user_id, feature_name, period, group_by))

    async def get_batch_usage_stats(
        self,
        user_ids: list[str],
        feature_names: list[str],
        period: str = "current_month",
        group_by: str = "day",
    ) -> dict[str, dict[str, UsageStats]]:
        return await self._run(
            self.core.get_batch_usage_stats(user_ids, feature_names, period, group_by)
        )

    async def get_usage_since_reset(self, user_id: str, feature_name: str) -> UsageSinceReset:
        return await self._run(self.core.get_usage_since_reset(user_id, feature_name))

    async def list_events(
        self, user_id: str, feature_name: str | None = None, limit: int = 100
    ) -> list[UsageEvent]:
        return await self._run(self.core.list_events(user_id, feature_name, limit))

    async def list_recent_events(
        self, feature_name: str | None = None, limit: int = 100
    ) -> list[UsageEvent]:
        return await self._run(self.core.list_recent_events(feature_name, limit))

    async def recent_stripe_events(self, limit: int = 50) -> list[StripeEventRecord]:
        return await self._run(self.core.recent_stripe_events(limit))

    async def list_limit_adjustments(
        self, user_id: str, feature_name: str
    ) -> list[LimitAdjustment]:
        return await self._run(self.core.list_limit_adjustments(user_id, feature_name))

    async def add_member(
        self, account_id: str, user_id: str, *, limits: Mapping[str, int] | None = None
    ) -> Membership:
        return await self._run(self.core.add_member(account_id, user_id, limits))

    async def remove_member(self, account_id: str, user_id: str) -> bool:
        return await self._run(self.core.remove_member(account_id, user_id))

    async def list_members(
        self, account_id: str, *, include_removed: bool = False
    ) -> list[Membership]:
        return await self._run(self.core.list_members(account_id, include_removed))

    async def get_account(self, user_id: str) -> str | None:
        return await self._run(self.core.get_account(user_id))

    async def grant_credits(
        self,
        user_id: str,
        feature_name: str,
        credits: int,
        *,
        expires_at: datetime | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        source: str = "manual",
    ) -> Grant:
        return await self._run(
            self.core.grant_credits(
                user_id,
                feature_name,
                credits,
                expires_at,
                reason,
                idempotency_key,
                metadata,
                source,
            )
        )

    async def get_credit_balance(self, user_id: str, feature_name: str) -> int:
        return await self._run(self.core.get_credit_balance(user_id, feature_name))

    async def list_grants(self, user_id: str, feature_name: str | None = None) -> list[Grant]:
        return await self._run(self.core.list_grants(user_id, feature_name))

    async def create_credit_pack(
        self,
        name: str,
        *,
        credits: Mapping[str, int],
        stripe_price_id: str | None = None,
        stripe_payment_link_id: str | None = None,
        payment_link_url: str | None = None,
        expires_in_days: int | None = None,
    ) -> CreditPack:
        return await self._run(
            self.core.create_credit_pack(
                name,
                credits,
                stripe_price_id,
                stripe_payment_link_id,
                payment_link_url,
                expires_in_days,
            )
        )

    async def list_credit_packs(self) -> list[CreditPack]:
        return await self._run(self.core.list_credit_packs())

    async def top_up_url(self, user_id: str, feature_name: str) -> str | None:
        return await self._run(self.core.top_up_url(user_id, feature_name))

    async def set_alert_thresholds(
        self, feature_name: str, thresholds: Sequence[int], plan_id: int | None = None
    ) -> list[int]:
        return await self._run(self.core.set_alert_thresholds(feature_name, thresholds, plan_id))

    async def get_alert_thresholds(
        self, feature_name: str, plan_id: int | None = None
    ) -> list[int]:
        return await self._run(self.core.get_alert_thresholds(feature_name, plan_id))

    async def deliver_alerts(
        self, handler: Callable[[Alert], object], *, limit: int = 100, lease: float = 300.0
    ) -> int:
        """As :meth:`UsageFlow.deliver_alerts`; ``handler`` may be ``async``."""
        return await self._run(self.core.deliver_alerts(handler, limit, lease))

    async def list_alerts(
        self, user_id: str | None = None, *, undelivered: bool = False, limit: int = 100
    ) -> list[Alert]:
        return await self._run(self.core.list_alerts(user_id, undelivered, limit))

    async def top_users(
        self,
        feature_name: str,
        limit: int = 10,
        *,
        period: str | None = None,
        since: datetime | None = None,
    ) -> TopUsers:
        return await self._run(self.core.top_users(feature_name, limit, period, since))

    async def get_user_overview(self, user_id: str) -> UserOverview:
        return await self._run(self.core.get_user_overview(user_id))

    async def fetch_feature_limit(self, plan_id: int, feature_name: str) -> int | None:
        return await self._run(self.core.fetch_feature_limit(plan_id, feature_name))

    async def fetch_feature_limit_for_user(self, user_id: str, feature_name: str) -> int | None:
        return await self._run(self.core.fetch_feature_limit_for_user(user_id, feature_name))

    async def add_limit_adjustment(
        self,
        user_id: str,
        feature_name: str,
        amount: int,
        type: str,
        start_date: datetime,
        end_date: datetime,
        metadata: Mapping[str, Any] | None = None,
    ) -> LimitAdjustment:
        return await self._run(
            self.core.add_limit_adjustment(
                user_id, feature_name, amount, type, start_date, end_date, metadata
            )
        )

    async def create_plan(
        self,
        name: str,
        *,
        stripe_price_id: str | None = None,
        price_amount: Decimal | float | int | str | None = None,
        price_currency: str | None = None,
        is_free: bool = False,
        payment_link_url: str | None = None,
        limits: Mapping[str, object] | None = None,
        per_seat: Sequence[str] = (),
    ) -> Plan:
        return await self._run(
            self.core.create_plan(
                name,
                stripe_price_id,
                price_amount,
                price_currency,
                is_free,
                payment_link_url,
                limits,
                per_seat,
            )
        )

    async def set_feature_limit(
        self, plan_id: int, feature_name: str, limit_value: int, period: str = "current_month"
    ) -> FeatureLimit:
        return await self._run(
            self.core.set_feature_limit(plan_id, feature_name, limit_value, period)
        )

    async def get_plans(self) -> list[Plan]:
        return await self._run(self.core.get_plans())

    async def get_user_plan(self, user_id: str) -> Plan | None:
        return await self._run(self.core.get_user_plan(user_id))

    async def upgrade_url(
        self,
        user_id: str,
        plan: Plan | int | str | None = None,
        feature_name: str | None = None,
    ) -> str | None:
        return await self._run(self.core.upgrade_url(user_id, plan, feature_name))

    async def assign_plan(
        self,
        user_id: str,
        plan: Plan | int | str | None,
        *,
        email: str | None = None,
        subscription_status: str | None = None,
        current_period_start: datetime | None = None,
        current_period_end: datetime | None = None,
    ) -> Profile:
        return await self._run(
            self.core.assign_plan(
                user_id,
                plan,
                email,
                subscription_status,
                current_period_start,
                current_period_end,
            )
        )

    async def get_profile(self, user_id: str) -> Profile | None:
        return await self._run(self.core.get_profile(user_id))

    async def update_profile(self, user_id: str, **fields: Any) -> Profile:
        return await self._run(self.core.update_profile(user_id, fields))

    async def sync_price(self, price: Any) -> int:
        return await self._run(self.core.sync_price(price))

    async def list_pending_stripe_subscriptions(
        self, limit: int = 100
    ) -> list[PendingSubscription]:
        return await self._run(self.core.list_pending_stripe_subscriptions(limit))

    async def handle_webhook(
        self,
        raw_body: bytes | str,
        signature: str | None,
        *,
        tolerance: int = 300,
        client: Any = None,
    ) -> WebhookResult:
        def op(stripe_client: Any) -> Op[WebhookResult]:
            return stripe_webhooks.handle_webhook(
                self.core, raw_body, signature, self.stripe_webhook_secret, tolerance, stripe_client
            )

        if client is None and not _stripe_key(self):
            return await self._run(op(None))
        return await stripe_api.arun_with_client(self, op, client)

    async def sync_plans_from_stripe(self, *, client: Any = None) -> PlanSyncResult:
        return await stripe_api.arun_with_client(
            self, lambda c: stripe_api.sync_plans(self.core, c), client
        )

    async def reconcile(self, *, client: Any = None) -> ReconcileResult:
        return await stripe_api.arun_with_client(
            self, lambda c: stripe_api.reconcile(self.core, c), client
        )

    async def export_usage_to_stripe(
        self,
        event_name: str,
        *,
        feature_name: str | None = None,
        batch_size: int = 100,
        customer_key: str = "stripe_customer_id",
        value_key: str = "value",
        identifier_prefix: str = "usageflow-",
        client: Any = None,
    ) -> ExportResult:
        return await stripe_api.arun_with_client(
            self,
            lambda c: stripe_api.export_usage(
                self.core,
                event_name,
                feature_name,
                batch_size,
                customer_key,
                value_key,
                identifier_prefix,
                c,
            ),
            client,
        )

    async def migrate(self) -> int:
        return await self._run(self.core.migrate())

    async def connection_check(self) -> bool:
        try:
            return await self._run(self.core.connection_check())
        except UsageFlowError:
            return False


def _committed(reservation_id: str, event: object) -> UsageEvent:
    if not isinstance(event, UsageEvent):
        raise reservation_error("the store returned no event for this commit", id=reservation_id)
    return event


class _ReservationBase:
    """Credits held for work whose cost is known afterwards."""

    def __init__(
        self,
        flow: Any,
        id: str,
        user_id: str,
        feature_name: str,
        credits: int,
        expires_at: datetime,
        decision: Decision,
    ) -> None:
        self._flow = flow
        self.id = id
        self.user_id = user_id
        self.feature_name = feature_name
        self.credits = credits
        self.expires_at = expires_at
        self.decision = decision
        self.settled = False

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.id} {self.feature_name!r} credits={self.credits} "
            f"settled={self.settled}>"
        )


class Reservation(_ReservationBase):
    """A sync reservation. As a context manager it commits the reserved credits on a clean
    exit (unless already settled) and releases them when the block raises."""

    def commit(
        self, actual_credits: int | None = None, metadata: Mapping[str, Any] | None = None
    ) -> UsageEvent:
        """Record ``actual_credits`` (default: the reserved amount) and free the hold; return
        the ledger event (the first one again when already committed)."""
        credits = self.credits if actual_credits is None else actual_credits
        event = self._flow._run(self._flow.core.settle(self.id, credits, metadata))
        self.settled = True
        return _committed(self.id, event)

    def release(self) -> None:
        """Give the held credits back without recording usage."""
        self._flow._run(self._flow.core.settle(self.id, None, None))
        self.settled = True

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.settled:
            return
        if exc_type is None:
            self.commit()
        else:
            self.release()


class AsyncReservation(_ReservationBase):
    """The asyncio twin of :class:`Reservation`."""

    async def commit(
        self, actual_credits: int | None = None, metadata: Mapping[str, Any] | None = None
    ) -> UsageEvent:
        """Shielded from cancellation: once started, the commit completes even when the
        awaiting task is cancelled (a client disconnecting must not lose usage)."""
        credits = self.credits if actual_credits is None else actual_credits
        event = await self._flow._run(
            self._flow.core.settle(self.id, credits, metadata), shielded=True
        )
        self.settled = True
        return _committed(self.id, event)

    async def release(self) -> None:
        """Shielded from cancellation, like :meth:`commit`."""
        await self._flow._run(self._flow.core.settle(self.id, None, None), shielded=True)
        self.settled = True

    async def __aenter__(self) -> AsyncReservation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.settled:
            return
        if exc_type is None:
            await self.commit()
        else:
            await self.release()
