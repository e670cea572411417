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
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from usageflow.errors import config_error, invalid
from usageflow.models import FeatureLimit, LimitAdjustment, Plan, Profile, UsageEvent

__all__ = [
    "INT64_MAX",
    "PROFILE_FIELDS",
    "AsyncStore",
    "Charge",
    "HourlyTotal",
    "ResetInfo",
    "Store",
    "Tables",
    "fits",
    "window_used",
]

INT64_MAX = 2**63 - 1
PROFILE_FIELDS = (
    "email",
    "plan",
    "subscription_status",
    "stripe_customer_id",
    "current_period_start",
    "current_period_end",
)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")


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
            if not isinstance(value, str) or not _IDENTIFIER.match(value):
                raise config_error(
                    f"table name for {field} must be a plain SQL identifier "
                    "(letters, digits and underscores, at most 48 characters, "
                    "not starting with a digit)",
                    table=field,
                )
        if len(set(self.__dict__.values())) != len(self.__dict__):
            raise config_error("table names must be distinct")

    @property
    def counters(self) -> str:
        return f"{self.usage_events}_counters"

    @property
    def holds(self) -> str:
        return f"{self.usage_events}_holds"

    @property
    def schema(self) -> str:
        return "usageflow_schema"


@dataclass(frozen=True)
class Charge:
    """What a store did for a charge or a reservation.

    ``used`` is the recorded usage in the window after the operation, ``held`` the credits held
    by live reservations (this one included when it was granted). ``event`` is the ledger row
    written (or, when ``replayed``, the one an idempotency key matched). ``reservation_id`` is
    set for reservations.
    """

    allowed: bool
    used: int
    held: int
    event: UsageEvent | None = None
    replayed: bool = False
    reservation_id: str | None = None


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


class AsyncStore(ABC):
    """The asynchronous face of a store: the same operations as :class:`Store`, awaitable.

    It is duck-typed against :class:`Store`'s method names; see that class for each promise.
    """

    @abstractmethod
    async def call(self, method: str, kwargs: dict[str, Any]) -> Any:
        """Run the operation ``method`` with ``kwargs``."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
