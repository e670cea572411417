"""The plan-limit cache: plans and limits, profiles and adjustments, each with a TTL.

Plans change rarely and are loaded whole; a user's profile and adjustments are cached per user.
With warm entries a quota decision needs no read before its one atomic store call. Writes made
through this UsageFlow instance invalidate at once; writes made elsewhere (another server, SQL)
are seen within ``ttl`` seconds. ``ttl=0`` turns caching off.

Profiles and adjustments are ``cachetools.TTLCache`` maps (least recently used dropped first
beyond ``maxsize``). A ``TTLCache`` is not thread-safe, reads included (a read moves the entry
in the LRU order and may expire it), so every access holds the cache's lock. The catalog is
one value, kept as an ``(expires at, catalog)`` pair that is read and replaced atomically.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cachetools import TTLCache

from usageflow import _observe
from usageflow.models import CreditPack, LimitAdjustment, Membership, Plan, Profile

__all__ = ["MISSING", "Catalog", "PlanCache"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


#: A set of alert thresholds: ``(feature_name, plan_id or None for every plan, thresholds)``.
ThresholdRow = tuple[str, "int | None", "Sequence[int]"]


@dataclass(frozen=True)
class Catalog:
    """Every plan, indexed for the hot path, the alert thresholds set on them, and the credit
    packs on sale."""

    plans: dict[int, Plan] = field(default_factory=dict)
    by_price: dict[str, Plan] = field(default_factory=dict)
    free_plan: Plan | None = None
    thresholds: dict[tuple[str, int | None], tuple[int, ...]] = field(default_factory=dict)
    packs: tuple[CreditPack, ...] = ()
    #: Whether any team account has members (if not, no decision looks for an account).
    teams: bool = True

    @classmethod
    def build(
        cls,
        plans: Iterable[Plan],
        thresholds: Iterable[ThresholdRow] = (),
        packs: Iterable[CreditPack] = (),
        teams: bool = True,
    ) -> Catalog:
        by_id = {p.id: p for p in plans}
        free = [p for p in by_id.values() if p.is_free]
        return cls(
            plans=by_id,
            by_price={p.stripe_price_id: p for p in by_id.values() if p.stripe_price_id},
            free_plan=min(free, key=lambda p: p.id) if free else None,
            thresholds={(f, plan): tuple(ts) for f, plan, ts in thresholds if ts},
            packs=tuple(packs),
            teams=teams,
        )

    def pack_of_link(self, payment_link_id: str) -> CreditPack | None:
        """The pack sold by a Stripe Payment Link."""
        return next((p for p in self.packs if p.stripe_payment_link_id == payment_link_id), None)

    def pack_of_price(self, price_id: str) -> CreditPack | None:
        """The pack sold at a Stripe price."""
        return next((p for p in self.packs if p.stripe_price_id == price_id), None)

    def top_up_pack(self, feature_name: str) -> CreditPack | None:
        """The pack a user out of ``feature_name`` is offered: among those with a Payment Link
        that grant the feature, the one granting the fewest credits of it (the cheapest way
        back), then the oldest."""
        offered = [
            p for p in self.packs if p.payment_link_url and p.credits.get(feature_name, 0) > 0
        ]
        return min(offered, key=lambda p: (p.credits[feature_name], p.id), default=None)

    def alert_thresholds(self, feature_name: str, plan_id: int) -> tuple[int, ...]:
        """The thresholds of a feature on a plan: the plan's own, else those set for every
        plan (empty: no alerts)."""
        found = self.thresholds.get((feature_name, plan_id))
        if found is None:
            found = self.thresholds.get((feature_name, None), ())
        return found


class PlanCache:
    """Thread-safe TTL cache; safe to share between threads and the event loop.

    ``timer`` is the clock the TTLs are measured on (``time.monotonic``; tests pass their own).
    """

    def __init__(
        self, ttl: float, maxsize: int = 100_000, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._timer = timer
        self._catalog: tuple[float, Catalog] | None = None  # (expires at, catalog)
        # With ttl=0 nothing is stored; a TTLCache still needs a positive ttl to be built.
        self._profiles: TTLCache[str, Profile | None] = TTLCache(maxsize, ttl or 1, timer)
        self._adjustments: TTLCache[tuple[str, str], tuple[LimitAdjustment, ...]] = TTLCache(
            maxsize, ttl or 1, timer
        )
        self._members: TTLCache[str, Membership | None] = TTLCache(maxsize, ttl or 1, timer)

    def catalog(self) -> Catalog | None:
        """Every plan, or ``None`` when not cached (or expired)."""
        entry = self._catalog  # one atomic read: no lock needed
        if entry is None or entry[0] <= self._timer():
            if _observe.observers:
                _observe.cache_read(False)
            return None
        if _observe.observers:
            _observe.cache_read(True)
        return entry[1]

    def put_catalog(
        self,
        plans: Iterable[Plan],
        thresholds: Iterable[ThresholdRow] = (),
        packs: Iterable[CreditPack] = (),
        teams: bool = True,
    ) -> Catalog:
        catalog = Catalog.build(plans, thresholds, packs, teams)
        if self.ttl:
            self._catalog = (self._timer() + self.ttl, catalog)
        return catalog

    def profile(self, user_id: str) -> Profile | _Missing | None:
        """The cached profile (``None``: the user has none), or ``MISSING`` when not cached."""
        if not self.ttl:
            return MISSING
        # One lookup that raises on a miss: ``get`` would read the clock twice.
        profile: Profile | _Missing | None
        with self._lock:
            try:
                profile = self._profiles[user_id]
            except KeyError:
                profile = MISSING
        if _observe.observers:
            _observe.cache_read(profile is not MISSING)
        return profile

    def put_profile(self, user_id: str, profile: Profile | None) -> None:
        if self.ttl:
            with self._lock:
                self._profiles[user_id] = profile

    def membership(self, user_id: str) -> Membership | _Missing | None:
        """The user's cached team membership (``None``: in no account), or ``MISSING``."""
        if not self.ttl:
            return MISSING
        found: Membership | _Missing | None
        with self._lock:
            try:
                found = self._members[user_id]
            except KeyError:
                found = MISSING
        if _observe.observers:
            _observe.cache_read(found is not MISSING)
        return found

    def put_membership(self, user_id: str, membership: Membership | None) -> None:
        if self.ttl:
            with self._lock:
                self._members[user_id] = membership

    def adjustments(self, user_id: str, feature_name: str) -> tuple[LimitAdjustment, ...] | None:
        """The cached adjustments of a user's feature, or ``None`` when not cached."""
        if not self.ttl:
            return None
        with self._lock:
            found = self._adjustments.get((user_id, feature_name))
        if _observe.observers:
            _observe.cache_read(found is not None)
        return found

    def put_adjustments(
        self, user_id: str, feature_name: str, rows: Iterable[LimitAdjustment]
    ) -> tuple[LimitAdjustment, ...]:
        value = tuple(rows)
        if self.ttl:
            with self._lock:
                self._adjustments[(user_id, feature_name)] = value
        return value

    def invalidate_plans(self) -> None:
        self._catalog = None

    def invalidate_user(self, user_id: str) -> None:
        with self._lock:
            self._profiles.pop(user_id, None)
            self._members.pop(user_id, None)
            adjustments = self._adjustments
            for key in [k for k in adjustments if k[0] == user_id]:
                adjustments.pop(key, None)

    def clear(self) -> None:
        self._catalog = None
        with self._lock:
            self._profiles.clear()
            self._adjustments.clear()
            self._members.clear()

    def stats(self) -> dict[str, Any]:
        """How many profiles and adjustment lists are cached (expired entries not counted)."""
        with self._lock:
            return {"profiles": len(self._profiles), "adjustments": len(self._adjustments)}
