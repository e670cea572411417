"""Conformance: team accounts. Members share their account's plan and pooled usage within their
own caps, decided in one atomic step (every store, sync and async API)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.support.stripe_events import SECRET, T0, Events, deliver
from usageflow import ErrorCodes, Membership, UsageFlowError, ops


def _team(flow: Any, caps: dict[str, int] | None = None) -> None:
    """Free: 2 exports. Team (price_team): 10 exports a month for the account, 5 AI credits
    per seat. acme is on Team; alice (with ``caps``) and bob are its members."""
    flow.create_plan("Free", is_free=True, limits={"exports": 2})
    flow.create_plan(
        "Team",
        stripe_price_id="price_team",
        payment_link_url="https://buy.stripe.com/test_team",
        limits={"exports": 10, "ai": 5},
        per_seat=["ai"],
    )
    flow.assign_plan("acme", "price_team")
    flow.add_member("acme", "alice", limits=caps)
    flow.add_member("acme", "bob")


def _ledger_agrees(flow: Any, *users: str, feature: str = "exports") -> None:
    for user in users:
        total, ledger = flow.store.call(ops.ledger_check(user_id=user, feature_name=feature))
        assert total == ledger, user


def test_members_draw_on_the_pool_until_it_is_spent(flow: Any) -> None:
    _team(flow)
    assert flow.get_account("alice") == "acme" and flow.get_account("acme") is None
    for _ in range(6):
        assert flow.consume("alice", "exports").allowed
    for _ in range(4):
        decision = flow.consume("bob", "exports")
        assert decision.allowed and decision.scope == "account"
    assert decision.remaining == 0 and (decision.current, decision.limit) == (10, 10)
    refused = flow.consume("bob", "exports")
    assert not refused.allowed and refused.scope == "account"
    assert not flow.consume("acme", "exports").allowed  # the account's own calls share it
    assert flow.get_total_usage("alice", "exports") == 6
    assert flow.get_total_usage("bob", "exports") == 4
    assert flow.get_total_usage("acme", "exports") == 10
    usage = flow.fetch_usage("alice", "exports")
    assert (usage.scope, usage.current, usage.limit, usage.remaining) == ("account", 10, 10, 0)
    _ledger_agrees(flow, "alice", "bob", "acme")


def test_the_cap_and_the_pool_bind_in_turn(flow: Any) -> None:
    _team(flow, caps={"exports": 3})
    usage = flow.fetch_usage("alice", "exports")
    assert (usage.scope, usage.limit, usage.remaining) == ("member", 3, 3)
    for _ in range(3):
        assert flow.consume("alice", "exports").allowed
    capped = flow.consume("alice", "exports")
    assert not capped.allowed and capped.scope == "member"
    assert (capped.current, capped.limit, capped.remaining) == (3, 3, 0)
    for _ in range(7):
        assert flow.consume("bob", "exports").allowed
    assert not flow.consume("bob", "exports").allowed
    flow.add_member("acme", "alice", limits={"exports": 8})  # a bigger cap: the pool binds
    refused = flow.consume("alice", "exports")
    assert not refused.allowed and refused.scope == "account"
    assert flow.list_members("acme")[0].limits == {"exports": 8}


def test_a_reservation_counts_against_the_cap_and_the_pool(flow: Any) -> None:
    _team(flow, caps={"exports": 5})
    held = flow.reserve("alice", "exports", 4)
    assert flow.fetch_usage("alice", "exports").remaining == 1  # the cap: 5 - 4 held
    assert flow.fetch_usage("bob", "exports").remaining == 6  # the pool: 10 - 4 held
    with pytest.raises(UsageFlowError) as refused:
        flow.reserve("alice", "exports", 2)
    assert refused.value.code is ErrorCodes.USAGE_LIMIT_ERROR
    assert refused.value.details["decision"].scope == "member"
    held.commit(3)
    assert flow.get_total_usage("alice", "exports") == 3
    assert flow.get_total_usage("acme", "exports") == 3
    _ledger_agrees(flow, "alice", "acme")


def test_refunds_and_grants_of_members_and_of_the_account(flow: Any) -> None:
    _team(flow, caps={"exports": 4})
    flow.grant_credits("acme", "exports", 3)  # the pool's credits
    flow.grant_credits("alice", "exports", 2)  # alice's own, beyond the pool and her cap
    for _ in range(4):
        flow.consume("alice", "exports")
    own = flow.consume("alice", "exports", 2)  # her cap is reached: her own credits pay
    assert own.allowed and flow.get_credit_balance("alice", "exports") == 0
    assert flow.get_total_usage("alice", "exports") == 6
    assert flow.get_total_usage("acme", "exports") == 4  # her own credits are not the pool's
    for _ in range(6):
        assert flow.consume("bob", "exports").allowed
    assert flow.consume("bob", "exports").allowed  # the account's credits: 11th of the pool
    assert flow.get_credit_balance("acme", "exports") == 2
    flow.adjust_usage("alice", "exports", -3, metadata={"reason": "failed"})
    assert flow.get_credit_balance("alice", "exports") == 2  # her own credits back first
    assert flow.get_credit_balance("acme", "exports") == 3  # then the pool's (newest first)
    assert flow.get_total_usage("acme", "exports") == 10
    _ledger_agrees(flow, "alice", "bob", "acme")


def test_a_removed_member_keeps_their_history_and_stops_drawing(flow: Any) -> None:
    _team(flow)
    for _ in range(5):
        flow.consume("alice", "exports")
    assert flow.remove_member("acme", "alice") is True
    assert flow.remove_member("acme", "alice") is False
    assert flow.get_account("alice") is None
    assert flow.get_total_usage("alice", "exports") == 5  # hers still
    assert not flow.consume("alice", "exports").allowed  # her own Free plan: 2, spent
    assert flow.fetch_usage("bob", "exports").remaining == 5  # the pool keeps her usage
    members = flow.list_members("acme", include_removed=True)
    assert [(m.user_id, m.removed_at is not None) for m in members] == [
        ("alice", True),
        ("bob", False),
    ]
    assert [m.user_id for m in flow.list_members("acme")] == ["bob"]
    assert isinstance(members[0], Membership)
    flow.add_member("beta", "alice")  # free to join another account now
    assert flow.get_account("alice") == "beta"


def test_stats_by_member_add_up_to_the_accounts_total(flow: Any) -> None:
    _team(flow)
    for user, n in (("alice", 3), ("bob", 4), ("acme", 2)):
        for _ in range(n):
            assert flow.consume(user, "exports").allowed
    flow.increment_usage("bob", "exports", 1)
    by_member = flow.get_usage_stats("acme", "exports", by_member=True)
    assert {user: stats.total for user, stats in by_member.items()} == {
        "acme": 2,
        "alice": 3,
        "bob": 5,
    }
    total = flow.get_usage_stats("acme", "exports")
    assert sum(s.total for s in by_member.values()) == total.total == 10
    for day in range(len(total.by_period)):
        assert sum(s.by_period[day].total for s in by_member.values()) == (
            total.by_period[day].total
        )


def test_a_per_seat_limit_follows_the_subscriptions_quantity(make_flow: Any) -> None:
    flow = make_flow(stripe_webhook_secret=SECRET)
    _team(flow)
    ev = Events()
    deliver(flow, ev.checkout("cus_acme", T0 + 1, client_reference_id="acme"))
    sub = ev.subscription(
        "customer.subscription.created",
        "sub_acme",
        "cus_acme",
        "price_team",
        "active",
        (T0, T0 + 31 * 86_400),
        T0 + 2,
    )
    sub["data"]["object"]["items"]["data"][0]["quantity"] = 3
    deliver(flow, sub)
    assert flow.get_profile("acme").seats == 3
    assert flow.fetch_usage("alice", "ai").limit == 15
    for _ in range(15):
        assert flow.consume("bob", "ai").allowed
    assert not flow.consume("alice", "ai").allowed
    more = ev.subscription(
        "customer.subscription.updated",
        "sub_acme",
        "cus_acme",
        "price_team",
        "active",
        (T0, T0 + 31 * 86_400),
        T0 + 3,
    )
    more["data"]["object"]["items"]["data"][0]["quantity"] = 4
    deliver(flow, more)
    usage = flow.fetch_usage("alice", "ai")
    assert (usage.limit, usage.remaining) == (20, 5)  # at once
    assert flow.consume("alice", "ai").allowed
    assert flow.fetch_usage("acme", "exports").limit == 10  # not per seat


def test_members_are_checked(flow: Any) -> None:
    _team(flow)
    cases: list[tuple[tuple[Any, ...], dict[str, Any], str]] = [
        (("beta", "alice"), {}, "user_id"),  # a member of acme already
        (("acme", "acme"), {}, "user_id"),  # its own member
        (("alice", "carol"), {}, "account_id"),  # alice is a member: no nesting
        (("beta", "acme"), {}, "user_id"),  # acme has members
        (("acme", "carol"), {"limits": {"exports": -1}}, "limits['exports']"),
        (("acme", "carol"), {"limits": ["exports"]}, "limits"),
        (("", "carol"), {}, "account_id"),
    ]
    for args, kwargs, field in cases:
        with pytest.raises(UsageFlowError) as err:
            flow.add_member(*args, **kwargs)
        assert err.value.code is ErrorCodes.USAGE_INVALID_PARAMS, args
        assert err.value.details["field"] == field, args
    assert [m.user_id for m in flow.list_members("acme")] == ["alice", "bob"]
    assert flow.list_members("beta") == []


def test_a_members_upgrade_and_top_up_links_name_the_account(flow: Any) -> None:
    _team(flow)
    flow.create_plan(
        "Bigger",
        stripe_price_id="price_bigger",
        payment_link_url="https://buy.stripe.com/test_bigger",
        limits={"exports": 100},
    )
    url = flow.upgrade_url("alice", feature_name="exports")
    assert url is not None and "client_reference_id=acme" in url
    flow.create_credit_pack(
        "Exports", credits={"exports": 50}, payment_link_url="https://buy.stripe.com/test_pack"
    )
    top_up = flow.top_up_url("bob", "exports")
    assert top_up is not None and "client_reference_id=acme" in top_up


def test_a_member_in_a_rolling_window_and_the_next_month(flow: Any, clock: Any) -> None:
    _team(flow, caps={"exports": 6})
    for _ in range(6):
        flow.consume("alice", "exports")
    clock.set(clock() + timedelta(days=31))  # a new month renews the pool and the cap
    usage = flow.fetch_usage("alice", "exports")
    assert (usage.scope, usage.current, usage.remaining) == ("member", 0, 6)
