"""Conformance: plans, limits and enforcement, over every store and both APIs."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from usageflow import ErrorCodes, UsageFlowError, ops


def setup_plans(flow: Any) -> None:
    flow.create_plan("Free", is_free=True, limits={"exports": 3, "api": 10})
    flow.create_plan(
        "Pro",
        stripe_price_id="price_pro",
        price_amount="19.00",
        price_currency="usd",
        payment_link_url="https://buy.stripe.com/test_pro",
        limits={"exports": 100, "api": 1000},
    )
    flow.create_plan(
        "Enterprise",
        stripe_price_id="price_ent",
        price_amount=199,
        payment_link_url="https://buy.stripe.com/test_ent",
        limits={"exports": -1, "api": None},
    )


def test_consume_allows_exactly_the_limit(flow: Any) -> None:
    setup_plans(flow)
    decisions = [flow.consume("u1", "exports") for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    last = decisions[2]
    assert (last.current, last.limit, last.remaining, last.is_unlimited) == (3, 3, 0, False)
    assert last.resets_at == datetime(2024, 2, 1, tzinfo=timezone.utc)
    assert last.event_id is not None
    denied = decisions[3]
    assert denied.event_id is None and denied.current == 3 and denied.remaining == 0
    assert flow.store.call(ops.ledger_check(user_id="u1", feature_name="exports")) == (3, 3)
    assert flow.get_total_usage("u1", "exports") == 3


def test_consume_with_several_credits_does_not_overshoot(flow: Any) -> None:
    setup_plans(flow)
    assert flow.consume("u1", "api", credits=7).allowed
    refused = flow.consume("u1", "api", credits=4)
    assert not refused.allowed and refused.current == 7 and refused.remaining == 3
    assert flow.consume("u1", "api", credits=3).allowed
    assert flow.fetch_usage("u1", "api").model_dump() == {
        "current": 10,
        "limit": 10,
        "remaining": 0,
        "is_unlimited": False,
        "credit_balance": 0,
    }


def test_authorize_checks_without_recording(flow: Any) -> None:
    setup_plans(flow)
    assert flow.authorize("u1", "exports")
    assert flow.authorize("u1", "exports", credits=3)
    assert not flow.authorize("u1", "exports", credits=4)
    flow.increment_usage("u1", "exports", credits_used=3)
    assert not flow.authorize("u1", "exports")
    assert flow.get_total_usage("u1", "exports") == 3


def test_unlimited_feature(flow: Any) -> None:
    setup_plans(flow)
    flow.assign_plan("u1", "price_ent")
    usage = flow.fetch_usage("u1", "exports")
    assert usage.is_unlimited and usage.limit is None and usage.remaining is None
    decision = flow.consume("u1", "exports", credits=10**12)
    assert decision.allowed and decision.is_unlimited and decision.current == 10**12
    plans = {p.name: p for p in flow.get_plans()}
    assert flow.fetch_feature_limit(plans["Enterprise"].id, "exports") is None
    assert flow.fetch_feature_limit(plans["Enterprise"].id, "api") is None
    assert flow.fetch_feature_limit_for_user("u1", "exports") is None


def test_feature_missing_from_plan_is_denied(flow: Any) -> None:
    setup_plans(flow)
    decision = flow.consume("u1", "video-render")
    assert not decision.allowed and decision.limit == 0
    assert not flow.authorize("u1", "video-render")
    plans = {p.name: p for p in flow.get_plans()}
    assert flow.fetch_feature_limit(plans["Free"].id, "video-render") == 0
    assert flow.fetch_feature_limit(plans["Free"].id, "exports") == 3


def test_unknown_plan_id_is_invalid(flow: Any) -> None:
    setup_plans(flow)
    with pytest.raises(UsageFlowError) as err:
        flow.fetch_feature_limit(999, "exports")
    assert err.value.code is ErrorCodes.USAGE_INVALID_PARAMS


def test_no_free_plan_means_limit_error(flow: Any) -> None:
    flow.create_plan("Pro", stripe_price_id="price_pro", limits={"exports": 5})
    for call in (
        lambda: flow.authorize("nobody", "exports"),
        lambda: flow.consume("nobody", "exports"),
        lambda: flow.fetch_usage("nobody", "exports"),
        lambda: flow.fetch_feature_limit_for_user("nobody", "exports"),
    ):
        with pytest.raises(UsageFlowError) as err:
            call()
        assert err.value.code is ErrorCodes.USAGE_LIMIT_ERROR
    assert flow.list_events("nobody") == []
    flow.assign_plan("paid", "price_pro")
    assert flow.consume("paid", "exports").allowed


def test_plan_follows_the_subscription_status(flow: Any) -> None:
    setup_plans(flow)
    flow.assign_plan("u1", "price_pro")
    assert flow.fetch_feature_limit_for_user("u1", "exports") == 100
    for status in ("canceled", "unpaid", "incomplete_expired", "paused"):
        flow.update_profile("u1", subscription_status=status)
        assert flow.fetch_feature_limit_for_user("u1", "exports") == 3, status
    for status in ("active", "trialing", "past_due"):
        flow.update_profile("u1", subscription_status=status)
        assert flow.fetch_feature_limit_for_user("u1", "exports") == 100, status
    flow.assign_plan("u1", None)
    assert flow.fetch_feature_limit_for_user("u1", "exports") == 3


def test_upgrade_changes_the_limit_at_once(flow: Any) -> None:
    setup_plans(flow)
    for _ in range(3):
        assert flow.consume("u1", "exports").allowed
    assert not flow.consume("u1", "exports").allowed
    flow.assign_plan("u1", "price_pro", email="u1@example.com")
    decision = flow.consume("u1", "exports")
    assert decision.allowed and decision.current == 4 and decision.limit == 100


def test_assign_plan_by_id_price_or_object(flow: Any) -> None:
    setup_plans(flow)
    plans = {p.name: p for p in flow.get_plans()}
    assert flow.assign_plan("a", plans["Pro"].id).plan == "price_pro"
    assert flow.assign_plan("b", plans["Enterprise"]).plan == "price_ent"
    assert flow.assign_plan("c", "price_pro").subscription_status == "active"
    assert flow.assign_plan("d", plans["Free"]).plan is None
    for bad in ("price_nope", 999, 3.5):
        with pytest.raises(UsageFlowError) as err:
            flow.assign_plan("e", bad)
        assert err.value.code is ErrorCodes.USAGE_INVALID_PARAMS
    assert flow.get_profile("e") is None


def test_plan_without_price_cannot_be_assigned(flow: Any) -> None:
    plan = flow.create_plan("Custom", limits={"exports": 5})
    with pytest.raises(UsageFlowError) as err:
        flow.assign_plan("u1", plan.id)
    assert err.value.code is ErrorCodes.USAGE_INVALID_PARAMS


def test_create_plan_is_idempotent_and_set_feature_limit_upserts(flow: Any) -> None:
    setup_plans(flow)
    again = flow.create_plan("Pro (2024)", stripe_price_id="price_pro", limits={"exports": 200})
    plans = flow.get_plans()
    assert len(plans) == 3
    assert again.name == "Pro (2024)" and again.limits["exports"].limit_value == 200
    assert again.limits["api"].limit_value == 1000
    row = flow.set_feature_limit(again.id, "exports", 250, period="day")
    assert (row.limit_value, row.period) == (250, "day")
    flow.assign_plan("u1", "price_pro")
    assert flow.fetch_feature_limit_for_user("u1", "exports") == 250
    assert flow.consume("u1", "exports").resets_at == datetime(2024, 1, 16, tzinfo=timezone.utc)
    free_again = flow.create_plan("Free", is_free=True, limits={"exports": 4})
    assert len(flow.get_plans()) == 3 and free_again.limits["exports"].limit_value == 4


def test_set_feature_limit_rejects_unknown_plan_and_bad_values(flow: Any) -> None:
    setup_plans(flow)
    for args in ((999, "x", 1), (1, "x", -2), (1, "x", 1.5), (1, "", 1)):
        with pytest.raises(UsageFlowError) as err:
            flow.set_feature_limit(*args)
        assert err.value.code is ErrorCodes.USAGE_INVALID_PARAMS
    with pytest.raises(UsageFlowError) as err:
        flow.set_feature_limit(1, "x", 1, period="fortnight")
    assert err.value.code is ErrorCodes.USAGE_INVALID_PARAMS


def test_sync_price_updates_amount_in_major_units(flow: Any) -> None:
    stripe = pytest.importorskip("stripe")
    setup_plans(flow)
    assert flow.sync_price({"id": "price_pro", "unit_amount": 2999, "currency": "usd"}) == 1
    price = stripe.Price.construct_from(
        {"id": "price_ent", "object": "price", "unit_amount": 50000, "currency": "JPY"}, "sk_x"
    )
    assert flow.sync_price(price) == 1
    assert flow.sync_price({"id": "price_unknown", "unit_amount": 1, "currency": "usd"}) == 0
    plans = {p.name: p for p in flow.get_plans()}
    assert str(plans["Pro"].price_amount) == "29.99" and plans["Pro"].price_currency == "usd"
    assert str(plans["Enterprise"].price_amount) == "50000.00"
    assert plans["Enterprise"].price_currency == "jpy"
    with pytest.raises(UsageFlowError) as err:
        flow.sync_price({"unit_amount": 1})
    assert err.value.code is ErrorCodes.USAGE_INVALID_PARAMS


def test_upgrade_url_points_to_the_next_plan(flow: Any) -> None:
    setup_plans(flow)
    flow.update_profile("u1", email="ada@example.com")
    url = flow.upgrade_url("u1", feature_name="exports")
    assert url == (
        "https://buy.stripe.com/test_pro?client_reference_id=u1&prefilled_email=ada%40example.com"
    )
    flow.assign_plan("u1", "price_pro")
    assert flow.upgrade_url("u1", feature_name="exports").startswith(
        "https://buy.stripe.com/test_ent?"
    )
    flow.assign_plan("u1", "price_ent")
    assert flow.upgrade_url("u1", feature_name="exports") is None
    assert flow.upgrade_url("u1", plan="price_pro").startswith("https://buy.stripe.com/test_pro")


def test_connection_check(flow: Any) -> None:
    assert flow.connection_check() is True


def test_plan_cache_is_invalidated_by_writes_through_the_flow(flow: Any) -> None:
    setup_plans(flow)
    assert flow.fetch_feature_limit_for_user("u1", "exports") == 3
    free = next(p for p in flow.get_plans() if p.is_free)
    flow.set_feature_limit(free.id, "exports", 7)
    assert flow.fetch_feature_limit_for_user("u1", "exports") == 7
