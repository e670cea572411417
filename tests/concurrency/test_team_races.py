"""Concurrency: members of one team account racing on its pool and their caps. No burst of
members overshoots the pool or a cap, and every key's counter agrees with its ledger."""

from __future__ import annotations

from typing import Any

from tests.concurrency.test_races import _hammer
from usageflow import UsageFlow, UsageFlowError, ops
from usageflow.stores.base import Store

MEMBERS = ["m0", "m1", "m2", "m3"]


def _ledger(store: Store, user: str) -> int:
    total, ledger = store.call(ops.ledger_check(user_id=user, feature_name="race"))
    assert total == ledger, user
    return int(total)


def test_4_members_by_8_threads_spend_exactly_the_pool_within_their_caps(store: Store) -> None:
    flow = UsageFlow(store)
    flow.create_plan("Free", is_free=True, limits={"race": 1})
    flow.create_plan("Team", stripe_price_id="price_team", limits={"race": 100})
    flow.assign_plan("acct", "price_team")
    for member in MEMBERS:
        flow.add_member("acct", member, limits={"race": 30})
    counts: dict[str, int] = {}

    def work_of(member: str) -> Any:
        return lambda: flow.consume(member, "race").allowed

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        results = dict(
            zip(MEMBERS, pool.map(lambda m: _hammer(8, 6, work_of(m)), MEMBERS), strict=True)
        )
    counts.update(results)
    assert sum(counts.values()) == 100
    assert all(n <= 30 for n in counts.values()), counts
    assert _ledger(store, "acct") == 100
    for member in MEMBERS:
        assert _ledger(store, member) == counts[member]
        assert flow.get_total_usage(member, "race") == counts[member]
    assert flow.get_total_usage("acct", "race") == 100
    by_member = flow.get_usage_stats("acct", "race", by_member=True)
    assert {m: s.total for m, s in by_member.items() if s.total} == {
        m: n for m, n in counts.items() if n
    }


def test_members_reserving_and_charging_never_overshoot_a_cap(store: Store) -> None:
    flow = UsageFlow(store)
    flow.create_plan("Free", is_free=True, limits={"race": 1})
    flow.create_plan("Team", stripe_price_id="price_team", limits={"race": 1000})
    flow.assign_plan("acct", "price_team")
    flow.add_member("acct", "m0", limits={"race": 20})

    def work() -> bool:
        try:
            reservation = flow.reserve("m0", "race", 3)
        except UsageFlowError:  # fewer than 3 left under the cap: take one
            return flow.consume("m0", "race").allowed
        reservation.commit(3)
        return True

    _hammer(16, 6, work)
    assert _ledger(store, "m0") == 20  # filled to the cap exactly, never past it
    assert _ledger(store, "acct") == 20
