"""The store interface: the small set of operations UsageFlow asks of a database.

A store owns persistence and atomicity; it makes no policy. Every quota decision that needs
atomicity (check-and-charge, reserve, settle) is one store call, so that a networked store can
make it one round trip; everything else (plans, periods, adjustments, arithmetic on results)
is decided by :mod:`usageflow.engine`, once, for every store.

The ledger model shared by every store:

* ``usage_events`` is the append-only ledger. Each event carries ``running_total``: the sum of
  ``credits_used`` of every event of that (user, feature) up to and including it.
* a counters row per (user, feature) holds ``total`` (the latest running total), ``last_ts``
  (event timestamps never go backwards within a key, so running totals are prefix sums in
  time order), and the last reset (``last_reset_at``, ``reset_base``: the total at the reset).
* usage in a window starting at ``s`` is ``total - base`` where ``base`` is ``reset_base`` when
  the last reset is at or after ``s``, else the running total of the last event before ``s``
  (one index seek). Its cost does not grow with the number of past events.
* holds are live reservations; they count as used until committed, released or expired.
  A committed hold is deleted (its event, keyed ``reservation:<id>``, answers a repeated
  commit), unless it carries an idempotency key, which replays the reservation. Released,
  expired and keyed holds are kept for :data:`HOLD_GRACE` past their expiry (a late commit
  still records, a commit after a release is still refused), then deleted the next time a
  settle or a sweep touches their (user, feature). The holds table stays as small as the
  work in flight.
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar, NamedTuple

from usageflow.errors import config_error, invalid
from usageflow.models import (
    INT64_MAX,
    FeatureLimit,
    LimitAdjustment,
    Plan,
    Profile,
    UsageEvent,
)

__all__ = [
    "HOLD_GRACE",
    "INT64_MAX",
    "PROFILE_FIELDS",
    "AsyncStore",
    "Charge",
    "HourlyTotal",
    "ResetInfo",
    "Store",
    "StripeApplied",
    "StripeLink",
    "StripePrice",
    "StripeSubscription",
    "Tables",
    "fits",
    "window_used",
]

#: How long a settled or expired hold is kept past its expiry (see the module docstring).
HOLD_GRACE = timedelta(days=1)
PROFILE_FIELDS = (
    "email",
    "plan",
    "subscription_status",
    "stripe_customer_id",
    "current_period_start",
    "current_period_end",
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")


@dataclass(frozen=True)
class Tables:
    """The table names a store uses. The first five are configurable; the rest derive from
    ``usage_events`` so that two UsageFlow setups can share one database."""

    user_plans: str = "user_plans"
    usage_events: str = "usage_events"
    usage_feature_limits: str = "usage_feature_limits"
    user_limit_adjustments: str = "user_limit_adjustments"
    profiles: str = "profiles"

    def __post_init__(self) -> None:
        for field, value in self.__dict__.items():
            if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
                raise config_error(
                    f"table name for {field} must be a plain SQL identifier "
                    "(letters, digits and underscores, at most 48 characters, "
                    "not starting with a digit)",
                    table=field,
                )
        if len(set(self.__dict__.values())) != len(self.__dict__):
            raise config_error("table names must be distinct")
        derived = {
            self.counters,
            self.holds,
            self.schema,
            self.stripe_events,
            self.stripe_subscriptions,
            self.stripe_customers,
            self.stripe_exports,
        }
        for field, value in self.__dict__.items():
            if value in derived:
                raise config_error(
                    f"table name {value!r} for {field} is the name of a table UsageFlow derives "
                    f"from usage_events ({self.usage_events!r}); choose another",
                    table=field,
                )

    @property
    def counters(self) -> str:
        return f"{self.usage_events}_counters"

    @property
    def holds(self) -> str:
        return f"{self.usage_events}_holds"

    @property
    def schema(self) -> str:
        return "usageflow_schema"

    @property
    def stripe_events(self) -> str:
        """Stripe webhook events already processed (one row per event id)."""
        return f"{self.usage_events}_stripe_events"

    @property
    def stripe_subscriptions(self) -> str:
        """The latest known state of every Stripe subscription, with its ordering key."""
        return f"{self.usage_events}_stripe_subs"

    @property
    def stripe_customers(self) -> str:
        """Which user each Stripe customer belongs to."""
        return f"{self.usage_events}_stripe_cust"

    @property
    def stripe_exports(self) -> str:
        """Per Stripe meter: the last usage event id exported to it."""
        return f"{self.usage_events}_stripe_export"


class Charge(NamedTuple):
    """What a store did for a charge or a reservation (a named tuple: one is built per
    decision, and a tuple is built in a third of a frozen dataclass's time).

    ``used`` is the recorded usage in the window after the operation, ``held`` the credits held
    by live reservations (this one included when it was granted). ``event`` is the ledger row
    written (or, when ``replayed``, the one an idempotency key matched). ``reservation_id`` is
    set for reservations; ``first_credits``, for a replayed one, is what its first request
    held (so that a replay with other credits is refused).
    """

    allowed: bool
    used: int
    held: int
    event: UsageEvent | None = None
    replayed: bool = False
    reservation_id: str | None = None
    first_credits: int | None = None


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
    """A price change from a ``price.*`` event: what :meth:`Store.update_price` writes."""

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


@dataclass(frozen=True)
class StripeApplied:
    """What :meth:`Store.apply_stripe_event` did: ``action`` is ``applied``, ``duplicate``
    (the event id was processed before: nothing written), ``stale`` (an older state than the
    stored one: only the event id recorded), ``pending`` (a subscription whose customer is
    linked to no user yet: stored, applied when the customer is linked) or ``ignored``.
    ``user_id`` is the user whose profile the event concerns, when known."""

    action: str
    user_id: str | None = None


def fits(used: int, held: int, credits: int, limit: int | None) -> bool:
    """The quota rule: ``credits`` more fit when usage plus holds plus them stays within limit."""
    return limit is None or max(used, 0) + held + credits <= limit


def window_used(
    total: int,
    window_start: datetime | None,
    last_reset_at: datetime | None,
    reset_base: int,
    prefix_before_start: int,
) -> int:
    """Recorded usage in a window, from the counters row and the prefix before the window."""
    if last_reset_at is not None and (window_start is None or last_reset_at >= window_start):
        return total - reset_base
    return total - prefix_before_start


def check_total(total: int, credits: int) -> None:
    if total + credits > INT64_MAX or total + credits < -INT64_MAX:
        raise invalid("this charge would overflow the usage counter (64-bit)", credits=credits)


class WouldBlock(Exception):
    """Raised by :meth:`Store.call_nowait` when the call would have to wait (a lock is taken):
    nothing was written, and the caller runs the call in a worker thread instead."""


class Store(ABC):
    """A synchronous store. Implementations must be safe to call from many threads at once.

    Errors from the driver are raised as ``UsageFlowError(USAGE_CONFIG_ERROR)`` with
    ``details['original_error']``, ``details['table']`` and ``details['operation']``.
    """

    schemes: ClassVar[tuple[str, ...]] = ()
    #: True when calls do blocking I/O: the async API then runs them in a worker thread.
    blocking: ClassVar[bool] = True

    def __init__(self, tables: Tables | None = None) -> None:
        self.tables = tables or Tables()

    # -- lifecycle --------------------------------------------------------------------------
    @abstractmethod
    def migrate(self) -> int:
        """Create or upgrade the schema, idempotently; return the schema version."""

    @abstractmethod
    def connection_check(self) -> bool:
        """True when the store answers a trivial query."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def nowait_methods(self) -> frozenset[str]:
        """The operations :meth:`call_nowait` may run on an event loop (none by default)."""
        return frozenset()

    def call_nowait(self, method: str, kwargs: dict[str, Any]) -> Any:
        """Run ``method`` at once if it need not wait for a lock or the disk, else raise
        :class:`WouldBlock` having written nothing. Only for :meth:`nowait_methods`."""
        raise WouldBlock(method)

    def batch_methods(self) -> frozenset[str]:
        """The writes :meth:`run_batch` may group into one transaction (none by default)."""
        return frozenset()

    def run_batch(
        self, calls: Sequence[tuple[str, dict[str, Any]]], *, nowait: bool = False
    ) -> list[tuple[bool, Any]]:
        """Run ``calls`` one after the other in **one** transaction (group commit): each sees
        the ones before it, and a call that fails leaves no trace and does not affect the
        others. Returns ``(True, result)`` or ``(False, exception)`` per call, once the whole
        transaction is committed; if the commit fails, raises and nothing is written. With
        ``nowait``, raises :class:`WouldBlock` (nothing written) instead of waiting for a lock.
        Only for :meth:`batch_methods`."""
        raise WouldBlock("run_batch")

    def upkeep(self) -> Callable[[], None] | None:
        """Work owed by :meth:`call_nowait` calls (such as a WAL checkpoint), to be run in a
        worker thread; ``None`` when nothing is due. Each piece is handed out once."""
        return None

    def to_async(self) -> AsyncStore:
        """The asynchronous face of this store (by default: this store run in threads)."""
        from usageflow.stores._threaded import ThreadedAsyncStore

        return ThreadedAsyncStore(self)

    # -- plans, limits, profiles, adjustments -----------------------------------------------
    @abstractmethod
    def load_catalog(self) -> list[Plan]:
        """Every plan, with its feature limits."""

    @abstractmethod
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
        """Create a plan, or update the one with this ``stripe_price_id`` (or, when that is
        ``None``, the price-less plan with this ``name``)."""

    @abstractmethod
    def set_feature_limit(
        self, *, plan_id: int, feature_name: str, limit_value: int, period: str
    ) -> FeatureLimit:
        """Create or replace the limit of ``feature_name`` in a plan (unknown plan: error)."""

    @abstractmethod
    def update_price(
        self, *, stripe_price_id: str, price_amount: Decimal | None, price_currency: str | None
    ) -> int:
        """Set the price of the plan sold at ``stripe_price_id``; return rows changed."""

    @abstractmethod
    def get_profile(self, *, user_id: str) -> Profile | None: ...

    @abstractmethod
    def upsert_profile(self, *, user_id: str, fields: dict[str, Any]) -> Profile:
        """Create the profile or set the given columns (a subset of :data:`PROFILE_FIELDS`)."""

    @abstractmethod
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
    ) -> LimitAdjustment: ...

    @abstractmethod
    def get_limit_adjustments(
        self, *, user_id: str, feature_name: str, ending_after: datetime
    ) -> list[LimitAdjustment]:
        """The user's adjustments of a feature that end after ``ending_after``."""

    # -- the ledger ---------------------------------------------------------------------------
    @abstractmethod
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
        """Atomically: if ``fits(used, held, credits, limit)``, append an event and bump the
        counter. ``limit=None`` always records (tracking, refunds). A known idempotency key
        records nothing and returns the earlier event with ``replayed=True``."""

    @abstractmethod
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
        """Atomically: if the credits fit, hold them until ``expires_at``."""

    @abstractmethod
    def settle(
        self,
        *,
        reservation_id: str,
        credits: int | None,
        now: datetime,
        metadata: dict[str, Any] | None,
    ) -> UsageEvent | None:
        """Commit (``credits`` given: record them, free the hold) or release (``None``) a
        reservation. Committing twice returns the first event; an expired hold still commits;
        committing a released one, or an unknown id, is a ``USAGE_RESERVATION_ERROR``."""

    @abstractmethod
    def usage(
        self, *, user_id: str, feature_name: str, window_start: datetime | None, now: datetime
    ) -> tuple[int, int]:
        """``(recorded usage in the window, credits held now)``, read consistently."""

    @abstractmethod
    def reset(
        self,
        *,
        user_id: str,
        feature_name: str,
        window_start: datetime | None,
        now: datetime,
        metadata: dict[str, Any] | None,
    ) -> UsageEvent:
        """Record a reset event: usage in windows containing ``now`` restarts from zero. The
        usage it zeroed is stored as ``metadata['pre_reset_total']``."""

    @abstractmethod
    def usage_since_reset(self, *, user_id: str, feature_name: str) -> ResetInfo: ...

    @abstractmethod
    def hourly_totals(
        self,
        *,
        user_ids: Sequence[str],
        feature_names: Sequence[str],
        start: datetime | None,
        end: datetime,
    ) -> list[HourlyTotal]:
        """Net credits per (user, feature, UTC hour) in ``[start, end)``, resets excluded,
        in one query."""

    @abstractmethod
    def list_events(
        self, *, user_id: str, feature_name: str | None = None, limit: int = 100
    ) -> list[UsageEvent]:
        """The user's most recent events, newest first."""

    @abstractmethod
    def ledger_check(self, *, user_id: str, feature_name: str) -> tuple[int, int]:
        """``(counter total, SUM of the ledger)`` of a key: equal in a healthy store."""

    @abstractmethod
    def top_usage(
        self, *, feature_name: str, window_start: datetime | None, limit: int
    ) -> list[tuple[str, int]]:
        """``(user_id, used)`` of the users with the most recorded usage of ``feature_name``
        in the window starting at ``window_start`` (``None``: lifetime), measured as
        :meth:`usage` measures it (holds left out), most first, ties by user id (bytewise);
        users whose usage is zero or less are left out; at most ``limit`` rows. Read from
        the feature's counters rows (one prefix seek each): the cost grows with the number
        of users of the feature, not with the ledger."""

    @abstractmethod
    def list_recent_events(self, *, feature_name: str | None, limit: int) -> list[UsageEvent]:
        """The most recent ledger events of every user (of ``feature_name`` when given),
        newest (greatest id) first, at most ``limit``."""

    # -- Stripe (webhooks, reconcile, metered billing export) -----------------------------------
    # Not abstract: a store without them keeps working for everything else.
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
        """Apply what one Stripe event decided, atomically (all of it or nothing), once.

        In one transaction:

        1. ``event_id`` already in ``stripe_events``: return ``duplicate`` with the user id
           recorded then; write nothing. (``event_id=None``, used by reconcile, is never
           recorded and never a duplicate.)
        2. ``price``: as :meth:`update_price` (plans keep their row when a price is deleted).
        3. ``link``: the user is ``link.user_id`` (its profile created when missing) or the
           single profile with ``lower(email) = lower(link.email)``; none or several: ``ignored``.
           If ``stripe_customers`` holds the customer with an ``order_key`` >= the link's:
           ``stale``. Else upsert ``(customer_id, user_id, order_key)``, set the profile's
           ``email`` when it is NULL, and refresh the user's profile (below).
        4. ``subscription``: if ``stripe_subscriptions`` holds it with ``order_key`` >= the
           new one (or, with ``period_guard``, with a later ``current_period_end``): ``stale``
           (but a stored ``started`` that is NULL is still set from a non-NULL one). Else
           upsert the row, keeping the stored ``started`` when the new one is NULL. The user
           is the customer's row in ``stripe_customers``, else the profile whose
           ``stripe_customer_id`` is the customer (then a customer row with ``order_key = ''``
           is written); neither: ``pending``. Else refresh the profile.
        5. Record ``(event_id, event_type, created, action, user_id, now)`` in
           ``stripe_events``.

        *Refresh the profile of user U* (the row is created when missing): among the
        subscriptions of every customer linked to U, take the first by ``ended`` (false
        first), ``started`` descending (NULL last), ``subscription_id`` descending, and set the
        profile's ``stripe_customer_id``, ``plan``, ``subscription_status``,
        ``current_period_start`` and ``current_period_end`` from it; with no subscription, set
        only ``stripe_customer_id`` to U's customer with the greatest ``order_key``. The action
        is ``applied`` unless a step above said otherwise.

        Order keys and ids compare bytewise (in PostgreSQL: ``COLLATE "C"``). When several
        profiles have the customer as ``stripe_customer_id``, the one with the lowest id wins.
        """
        raise config_error("this store does not support Stripe webhooks yet")

    def stripe_export_batch(
        self, *, meter: str, feature_name: str | None, limit: int
    ) -> tuple[int, list[tuple[UsageEvent, str | None]]]:
        """``(cursor, rows)``: the meter's cursor in ``stripe_exports`` (0 when none) and up to
        ``limit`` ledger events with ``id > cursor`` (of ``feature_name`` when given), by id
        ascending, each with its user's ``profiles.stripe_customer_id`` (``None`` without)."""
        raise config_error("this store does not support Stripe meter export yet")

    def advance_stripe_cursor(self, *, meter: str, event_id: int) -> int:
        """Set the meter's cursor to ``max(cursor, event_id)``; return the new cursor."""
        raise config_error("this store does not support Stripe meter export yet")

    def pending_stripe_subscriptions(self, *, limit: int) -> list[StripeSubscription]:
        """The subscriptions kept ``pending`` (see :meth:`apply_stripe_event`): rows of
        ``stripe_subscriptions`` whose customer has no row in ``stripe_customers``, ordered
        by ``started`` descending (NULL last), then ``subscription_id`` (bytewise), at most
        ``limit``. ``period_guard`` is always false."""
        raise config_error("this store does not support Stripe webhooks yet")


class AsyncStore(ABC):
    """The asynchronous face of a store: the same operations as :class:`Store`, awaitable.

    It is duck-typed against :class:`Store`'s method names; see that class for each promise.
    """

    #: False when no call ever suspends (the memory store run inline): callers then need no
    #: protection against cancellation in the middle of a call.
    can_suspend: bool = True

    @abstractmethod
    async def call(self, method: str, kwargs: dict[str, Any]) -> Any:
        """Run the operation ``method`` with ``kwargs``."""

    async def call_shielded(self, method: str, kwargs: dict[str, Any]) -> Any:
        """:meth:`call`, completed even when the awaiting task is cancelled (the caller then
        gets ``CancelledError`` at once, and the operation still lands). Used for commits and
        releases: a client that disconnects must not lose usage. This default runs the call
        in a task of its own, unless no call of the store ever suspends; a store that can
        shield more cheaply overrides it."""
        if not self.can_suspend:
            return await self.call(method, kwargs)
        return await asyncio.shield(self.call(method, kwargs))

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
