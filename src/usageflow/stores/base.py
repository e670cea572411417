"""The store interface: the small set of operations UsageFlow asks of a database.

A store owns persistence and atomicity; it makes no policy. Every quota decision that needs
atomicity (check-and-charge, reserve, settle) is one store call, so that a networked store can
make it one round trip; everything else (plans, periods, adjustments, arithmetic on results)
is decided by the core (:mod:`usageflow._core`), once, for every store. What each operation
promises is written in :mod:`usageflow.ops`.

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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar, NamedTuple, TypeVar

from usageflow.errors import config_error, invalid
from usageflow.models import INT64_MAX
from usageflow.ops import StoreCall

T = TypeVar("T")

__all__ = [
    "HOLD_GRACE",
    "INT64_MAX",
    "AsyncStore",
    "Store",
    "Tables",
    "fits",
    "grant_share",
    "plan_free",
    "team_split",
    "window_used",
]

#: How long a settled or expired hold is kept past its expiry (see the module docstring).
HOLD_GRACE = timedelta(days=1)
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
            self.alerts,
            self.alert_rules,
            self.grants,
            self.credit_packs,
            self.members,
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
    def alerts(self) -> str:
        """Usage alerts: thresholds crossed, recorded with the charge, then delivered."""
        return f"{self.usage_events}_alerts"

    @property
    def alert_rules(self) -> str:
        """Alert thresholds per feature (and plan)."""
        return f"{self.usage_events}_alert_rules"

    @property
    def grants(self) -> str:
        """Credit grants: balances of a feature that do not reset with the plan's period."""
        return f"{self.usage_events}_grants"

    @property
    def members(self) -> str:
        """Team accounts: members, their account and their caps."""
        return f"{self.usage_events}_members"

    @property
    def credit_packs(self) -> str:
        """Credit packs sold through Stripe Payment Links."""
        return f"{self.usage_events}_packs"

    @property
    def stripe_exports(self) -> str:
        """Per Stripe meter: the last usage event id exported to it."""
        return f"{self.usage_events}_stripe_export"


def fits(used: int, held: int, credits: int, limit: int | None) -> bool:
    """The quota rule: ``credits`` more fit when usage plus holds plus them stays within limit."""
    return limit is None or max(used, 0) + held + credits <= limit


def plan_free(limit: int, used: int, granted: int) -> int:
    """The plan's allowance left in a window: usage grants paid for does not count."""
    return max(limit - max(used - granted, 0), 0)


class TeamSplit(NamedTuple):
    """How a team member's charge is paid: ``own`` by the member's own grants, ``pool`` by
    the account's pool, of which ``pool_granted`` by the account's grants (all negative for a
    refund: what is given back)."""

    own: int
    pool: int
    pool_granted: int


_NO_BOUND = 2**65  # above every room: an unlimited pool, or no cap


def team_split(
    credits: int,
    limit: int | None,
    cap: int | None,
    pool: tuple[int, int, int, int],
    member: tuple[int, int, int, int],
    force: bool,
) -> TeamSplit | str:
    """Split a team member's charge (see :func:`usageflow.ops.charge`); ``pool`` and
    ``member`` are ``(used, held, granted, balance)``. Answers the scope that refuses
    (``"account"`` or ``"member"``) when it does not fit."""
    pool_used, pool_held, pool_granted, pool_balance = pool
    used, held, granted, balance = member
    if credits < 0:
        own = -min(-credits, max(granted, 0))
        rest = credits - own
        return TeamSplit(own, rest, -min(-rest, max(pool_granted, 0)))
    pool_room = _NO_BOUND
    if limit is not None:
        pool_room = plan_free(limit, pool_used, pool_granted) + pool_balance
        pool_room -= 0 if force else pool_held
    cap_room = _NO_BOUND
    if cap is not None:
        cap_room = cap - max(used - granted, 0) - (0 if force else held)
    room = max(min(pool_room, cap_room), 0)
    if force:
        own = min(balance, max(credits - room, 0))
    elif credits > room + balance:
        return "member" if cap_room < pool_room else "account"
    else:
        own = max(credits - room, 0)
    from_pool = credits - own
    shared = 0
    if limit is not None and from_pool > 0:
        shared = min(pool_balance, max(from_pool - plan_free(limit, pool_used, pool_granted), 0))
    return TeamSplit(own, from_pool, shared)


def grant_share(
    credits: int, limit: int | None, used: int, held: int, granted: int, balance: int, force: bool
) -> int | None:
    """How much of a charge of ``credits`` grants pay for (negative: a refund gives back to
    them), or ``None`` when it does not fit (see :func:`usageflow.ops.charge`)."""
    if credits < 0:
        return -min(-credits, max(granted, 0))
    if limit is None:
        return 0
    free = plan_free(limit, used, granted)
    if force:
        return min(balance, max(credits - free, 0))
    if credits + held > free + balance:
        return None
    return max(credits - free, 0)


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


def alert_window(window_start: datetime | None, last_reset_at: datetime | None) -> datetime | None:
    """The start of the window a threshold is crossed once in: the key's last reset when it
    falls in the limit's window, else the window's start (``None``: ever)."""
    if last_reset_at is not None and (window_start is None or last_reset_at >= window_start):
        return last_reset_at
    return window_start


def crossed(thresholds: Sequence[int], before: int, after: int, limit: int) -> list[int]:
    """The thresholds (percents of ``limit``) that usage going from ``before`` to ``after``
    reached: below before, at or above after."""
    return [t for t in thresholds if before * 100 < t * limit <= after * 100]


def check_total(total: int, credits: int) -> None:
    if total + credits > INT64_MAX or total + credits < -INT64_MAX:
        raise invalid("this charge would overflow the usage counter (64-bit)", credits=credits)


class Store(ABC):
    """A synchronous store: the operations of :mod:`usageflow.ops`, run by :meth:`call`.
    Implementations must be safe to call from many threads at once.

    Errors from the driver are raised once, as ``UsageFlowError(USAGE_CONFIG_ERROR)`` with
    ``details['original_error']``, ``details['table']`` and ``details['operation']``; a
    refusal by rule is the ``UsageFlowError`` the operation's docstring names.
    """

    #: The URL schemes :func:`usageflow.stores.open_store` builds this store for.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: True when calls do blocking I/O: the async API then runs them in a worker thread.
    blocking: ClassVar[bool] = True
    #: True when the store keeps Stripe's state: it runs every operation of
    #: :data:`usageflow.ops.STRIPE_OPERATIONS` (webhooks, reconcile, meter export).
    stripe: ClassVar[bool] = False

    def __init__(self, tables: Tables | None = None) -> None:
        self.tables = tables or Tables()

    @classmethod
    def from_url(cls, url: str, tables: Tables | None = None) -> Store:
        """The store a URL of one of :attr:`schemes` names."""
        raise config_error(f"{cls.__name__} is not opened from a URL")

    @abstractmethod
    def call(self, op: StoreCall[T]) -> T:
        """Run one operation of :mod:`usageflow.ops` and answer what it promises."""

    @abstractmethod
    def migrate(self) -> int:
        """Create or upgrade the schema, idempotently; return the schema version."""

    @abstractmethod
    def connection_check(self) -> bool:
        """True when the store answers a trivial query."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def to_async(self) -> AsyncStore:
        """The asynchronous face of this store (by default: its calls in worker threads)."""
        return _InThreads(self)


class AsyncStore(ABC):
    """The asynchronous face of a store: the operations of :mod:`usageflow.ops`, awaitable."""

    #: False when no call ever suspends (the memory store run inline): callers then need no
    #: protection against cancellation in the middle of a call.
    can_suspend: bool = True

    @abstractmethod
    async def call(self, op: StoreCall[T]) -> T:
        """Run one operation of :mod:`usageflow.ops` and answer what it promises."""

    async def call_shielded(self, op: StoreCall[T]) -> T:
        """:meth:`call`, completed even when the awaiting task is cancelled (the caller then
        gets ``CancelledError`` at once, and the operation still lands). Used for commits and
        releases: a client that disconnects must not lose usage. This default runs the call
        in a task of its own, unless no call of the store ever suspends; a store that can
        shield more cheaply overrides it."""
        if not self.can_suspend:
            return await self.call(op)
        return await asyncio.shield(self.call(op))

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class _InThreads(AsyncStore):
    """A synchronous store's calls, each in a worker thread of the running loop."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def call(self, op: StoreCall[T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, self.store.call, op)

    async def aclose(self) -> None:
        self.store.close()
