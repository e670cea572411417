"""The plan-limit cache: plans and limits, profiles and adjustments, each with a TTL.

Plans change rarely and are loaded whole; a user's profile and adjustments are cached per user.
With warm entries a quota decision needs no read before its one atomic store call. Writes made
through this UsageFlow instance invalidate at once; writes made elsewhere (another server, SQL)
are seen within ``ttl`` seconds. ``ttl=0`` turns caching off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from usageflow.models import LimitAdjustment, Plan, Profile

__all__ = ["MISSING", "Catalog", "PlanCache"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _TTLMap(Generic[K, V]):
    """A dict whose entries expire ``ttl`` seconds after they were put, at most ``maxsize``
    of them. Reads take no lock (one dict lookup, one clock read: this is on every decision);
    writes happen under the owner's lock. The TTL is the same for every entry, so insertion
    order is expiry order and eviction pops from the front."""

    __slots__ = ("_data", "_timer", "maxsize", "ttl")

    def __init__(self, ttl: float, maxsize: int, timer: Callable[[], float]) -> None:
        self.ttl = ttl
        self.maxsize = maxsize
        self._timer = timer
        self._data: dict[K, tuple[float, V]] = {}

    def get(self, key: K, default: Any = None) -> Any:
        entry = self._data.get(key)
        if entry is None or entry[0] <= self._timer():
            return default
        return entry[1]

    def put(self, key: K, value: V) -> None:
        data = self._data
        now = self._timer()
        data.pop(key, None)  # re-inserted at the end, where the newest expiry belongs
        data[key] = (now + self.ttl, value)
        while data:
            first = next(iter(data))
            if len(data) <= self.maxsize and data[first][0] > now:
                break
            del data[first]

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._data))  # a copy: callers pop while they iterate

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True)
class Catalog:
    """Every plan, indexed for the hot path."""

    plans: dict[int, Plan] = field(default_factory=dict)
    by_price: dict[str, Plan] = field(default_factory=dict)
    free_plan: Plan | None = None

    @classmethod
    def build(cls, plans: Iterable[Plan]) -> Catalog:
        by_id = {p.id: p for p in plans}
        free = [p for p in by_id.values() if p.is_free]
        return cls(
            plans=by_id,
            by_price={p.stripe_price_id: p for p in by_id.values() if p.stripe_price_id},
            free_plan=min(free, key=lambda p: p.id) if free else None,
        )


class PlanCache:
    """Thread-safe TTL cache; safe to share between threads and the event loop."""

    def __init__(
        self, ttl: float, maxsize: int = 100_000, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._timer = timer
        self._catalog: tuple[float, Catalog] | None = None  # (expires at, catalog)
        self._profiles: _TTLMap[str, Profile | None] = _TTLMap(ttl, maxsize, timer)
        self._adjustments: _TTLMap[tuple[str, str], tuple[LimitAdjustment, ...]] = _TTLMap(
            ttl, maxsize, timer
        )

    def catalog(self) -> Catalog | None:
        entry = self._catalog  # one atomic read: no lock needed
        if entry is None or entry[0] <= self._timer():
            return None
        return entry[1]

    def put_catalog(self, plans: Iterable[Plan]) -> Catalog:
        catalog = Catalog.build(plans)
        if self.ttl:
            self._catalog = (self._timer() + self.ttl, catalog)
        return catalog

    def profile(self, user_id: str) -> Profile | _Missing | None:
        if not self.ttl:
            return MISSING
        return self._profiles.get(user_id, MISSING)  # type: ignore[no-any-return]

    def put_profile(self, user_id: str, profile: Profile | None) -> None:
        if self.ttl:
            with self._lock:
                self._profiles.put(user_id, profile)

    def adjustments(self, user_id: str, feature_name: str) -> tuple[LimitAdjustment, ...] | None:
        if not self.ttl:
            return None
        return self._adjustments.get((user_id, feature_name))  # type: ignore[no-any-return]

    def put_adjustments(
        self, user_id: str, feature_name: str, rows: Iterable[LimitAdjustment]
    ) -> tuple[LimitAdjustment, ...]:
        value = tuple(rows)
        if self.ttl:
            with self._lock:
                self._adjustments.put((user_id, feature_name), value)
        return value

    def invalidate_plans(self) -> None:
        self._catalog = None

    def invalidate_user(self, user_id: str) -> None:
        with self._lock:
            self._profiles.pop(user_id)
            for key in [k for k in self._adjustments if k[0] == user_id]:
                self._adjustments.pop(key)

    def clear(self) -> None:
        self._catalog = None
        with self._lock:
            self._profiles.clear()
            self._adjustments.clear()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"profiles": len(self._profiles), "adjustments": len(self._adjustments)}
