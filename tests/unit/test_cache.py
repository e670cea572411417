"""The plan-limit cache (``usageflow.cache.PlanCache``) over ``cachetools.TTLCache``."""

from __future__ import annotations

import itertools
import sys
import threading
from datetime import datetime, timezone

from usageflow.cache import MISSING, PlanCache
from usageflow.models import LimitAdjustment, Profile


def test_a_read_keeps_an_entry_when_the_cache_is_full() -> None:
    """Beyond ``maxsize`` the least recently used entry goes, reads counting as use."""
    now = [0.0]
    cache = PlanCache(30, maxsize=2, timer=lambda: now[0])
    cache.put_profile("a", Profile(id="a"))
    cache.put_profile("b", Profile(id="b"))
    assert cache.profile("a") != MISSING  # "a" is now the most recently used
    cache.put_profile("c", Profile(id="c"))
    assert cache.profile("b") is MISSING
    assert cache.profile("a") != MISSING and cache.profile("c") != MISSING


def test_adjustments_expire_and_are_invalidated_with_their_user() -> None:
    now = [0.0]
    cache = PlanCache(10, timer=lambda: now[0])
    moment = datetime(2026, 1, 1, tzinfo=timezone.utc)
    row = LimitAdjustment(
        id=1,
        user_id="u",
        feature_name="x",
        amount=5,
        type="one_time",
        start_date=moment,
        end_date=moment,
    )
    assert cache.put_adjustments("u", "x", [row]) == (row,)
    cache.put_adjustments("u", "y", [])
    cache.put_adjustments("v", "x", [])
    assert cache.adjustments("u", "x") == (row,)
    cache.invalidate_user("u")
    assert cache.adjustments("u", "x") is None and cache.adjustments("u", "y") is None
    assert cache.adjustments("v", "x") == ()
    now[0] = 10.0
    assert cache.adjustments("v", "x") is None
    assert cache.stats() == {"profiles": 0, "adjustments": 0}
    off = PlanCache(0)
    off.put_adjustments("u", "x", [row])
    off.put_profile("u", None)
    assert off.adjustments("u", "x") is None and off.profile("u") is MISSING


def test_threads_sharing_a_small_cache_never_see_it_torn() -> None:
    """Reads reorder and expire ``TTLCache`` entries: unlocked, threads racing on a full cache
    whose clock moves raise ``KeyError`` from inside cachetools or lose its size bound."""
    ticks = itertools.count()
    cache = PlanCache(5, maxsize=8, timer=lambda: next(ticks) / 100)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(n: int) -> None:
        start.wait()
        try:
            for i in range(6_000):
                user = f"u{(i * 7 + n) % 24}"
                if i % 3 == 0:
                    cache.put_profile(user, Profile(id=user))
                elif i % 97 == 0:
                    cache.invalidate_user(user)
                else:
                    found = cache.profile(user)
                    assert found is MISSING or (isinstance(found, Profile) and found.id == user)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    try:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    assert cache.stats()["profiles"] <= 8
