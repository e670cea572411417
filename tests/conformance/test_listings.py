"""Conformance: the read-only listings behind the ``usageflow`` command (top users of a
feature, recent events of every user, a user's overview, pending Stripe subscriptions)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tests.conformance.test_enforcement import setup_plans
from tests.support.stripe_events import DAY, MONTH, SECRET, T0, Events, deliver
from usageflow import ErrorCodes, UsageFlowError
from usageflow.testing import FakeClock

UTC = timezone.utc
JAN = datetime(2024, 1, 1, tzinfo=UTC)
FEB = datetime(2024, 2, 1, tzinfo=UTC)


def _ranked(top: Any) -> list[tuple[str, int]]:
    return [(u.user_id, u.used) for u in top.users]


def _invalid(call: Any) -> str:
    with pytest.raises(UsageFlowError) as caught:
        call()
    assert caught.value.code is ErrorCodes.USAGE_INVALID_PARAMS
    return caught.value.message


def test_top_users_ranks_recorded_usage_in_the_feature_window(flow: Any, clock: FakeClock) -> None:
    setup_plans(flow)
    clock.set(datetime(2023, 12, 20, tzinfo=UTC))
    flow.increment_usage("u-old", "exports", credits_used=50)
    flow.increment_usage("u1", "exports", credits_used=7)
    clock.set(datetime(2024, 1, 15, 12, tzinfo=UTC))
    flow.increment_usage("u1", "exports", credits_used=2)
    flow.increment_usage("u3", "exports", credits_used=5)
    flow.increment_usage("u2", "exports", credits_used=5)
    flow.increment_usage("u4", "exports", credits_used=1)
    flow.adjust_usage("u4", "exports", -1, metadata={"reason": "refund"})
    flow.increment_usage("u5", "api", credits_used=9)
    flow.reserve("u6", "exports", 2)  # held credits are not recorded usage

    top = flow.top_users("exports")
    assert (top.feature_name, top.period, top.window_start) == ("exports", "current_month", JAN)
    # Ties by user id; nothing in the window (u-old), or nothing net (u4), is left out.
    assert _ranked(top) == [("u2", 5), ("u3", 5), ("u1", 2)]
    assert _ranked(flow.top_users("exports", limit=2)) == [("u2", 5), ("u3", 5)]

    lifetime = flow.top_users("exports", period="lifetime")
    assert (lifetime.period, lifetime.window_start) == ("lifetime", None)
    assert _ranked(lifetime) == [("u-old", 50), ("u1", 9), ("u2", 5), ("u3", 5)]
    since = flow.top_users("exports", since=datetime(2023, 12, 20))  # naive: UTC
    assert (since.period, since.window_start) == (None, datetime(2023, 12, 20, tzinfo=UTC))
    assert _ranked(since) == _ranked(lifetime)
    assert _ranked(flow.top_users("exports", since=datetime(2023, 12, 21, tzinfo=UTC))) == [
        ("u2", 5),
        ("u3", 5),
        ("u1", 2),
    ]

    # A reset restarts the count, as for fetch_usage.
    clock.advance(hours=1)
    flow.reset_feature_usage("u2", "exports")
    flow.increment_usage("u2", "exports")
    assert _ranked(flow.top_users("exports")) == [("u3", 5), ("u1", 2), ("u2", 1)]
    assert _ranked(flow.top_users("api")) == [("u5", 9)]
    assert flow.top_users("never-used").users == []


def test_top_users_window_choice_and_validation(flow: Any) -> None:
    flow.create_plan(
        "Free", is_free=True, limits={"reports": (1, "day"), "cycles": (1, "billing_cycle")}
    )
    flow.create_plan("Pro", stripe_price_id="price_pro", limits={"reports": 5})
    flow.increment_usage("u1", "reports", credits_used=2)

    message = _invalid(lambda: flow.top_users("reports"))
    assert "current_month, day" in message and "period" in message
    day = flow.top_users("reports", period="day")
    assert day.window_start == datetime(2024, 1, 15, tzinfo=UTC)
    assert _ranked(day) == [("u1", 2)]
    assert "billing_cycle" in _invalid(lambda: flow.top_users("cycles"))
    assert "billing_cycle" in _invalid(lambda: flow.top_users("reports", period="billing_cycle"))
    assert flow.top_users("unplanned").period == "current_month"
    assert "not both" in _invalid(
        lambda: flow.top_users("reports", period="day", since=datetime(2024, 1, 1, tzinfo=UTC))
    )
    for limit in (0, 1001, "3", True):
        _invalid(lambda limit=limit: flow.top_users("reports", limit=limit, period="day"))
    _invalid(lambda: flow.top_users("", period="day"))
    _invalid(lambda: flow.top_users("reports", period="year"))
    _invalid(lambda: flow.top_users("reports", since="2024-01-01"))


def test_list_recent_events_covers_every_user_newest_first(flow: Any, clock: FakeClock) -> None:
    a = flow.increment_usage("u1", "exports")
    clock.advance(minutes=1)
    b = flow.increment_usage("u2", "api", credits_used=3, metadata={"model": "m"})
    c = flow.increment_usage("u1", "api")
    d = flow.increment_usage("u3", "exports", credits_used=2)

    events = flow.list_recent_events()
    assert [e.id for e in events] == [d.id, c.id, b.id, a.id]
    assert events[2] == b
    assert [e.id for e in flow.list_recent_events("exports")] == [d.id, a.id]
    assert [e.id for e in flow.list_recent_events(limit=2)] == [d.id, c.id]
    assert flow.list_recent_events("nothing") == []
    for limit in (0, 10_001, 2.0):
        _invalid(lambda limit=limit: flow.list_recent_events(limit=limit))
    _invalid(lambda: flow.list_recent_events(""))


def test_user_overview(flow: Any) -> None:
    empty = flow.get_user_overview("nobody")
    assert (empty.profile, empty.plan, empty.features) == (None, None, [])

    setup_plans(flow)
    flow.create_plan(
        "Team",
        stripe_price_id="price_team",
        limits={"exports": 5000, "reports": (2, "billing_cycle")},
    )
    flow.assign_plan("u1", "price_pro", email="u1@example.com")
    flow.consume("u1", "exports", credits=3)
    flow.reserve("u1", "api", 4)

    overview = flow.get_user_overview("u1")
    assert overview.user_id == "u1"
    assert overview.profile is not None and overview.profile.email == "u1@example.com"
    assert overview.profile.subscription_status == "active"
    assert overview.plan is not None and overview.plan.name == "Pro"
    assert [f.model_dump() for f in overview.features] == [
        {
            "feature_name": "api",
            "period": "current_month",
            "current": 4,
            "held": 4,
            "limit": 1000,
            "remaining": 996,
            "is_unlimited": False,
            "window_start": JAN,
            "resets_at": FEB,
            "credit_balance": 0,
        },
        {
            "feature_name": "exports",
            "period": "current_month",
            "current": 3,
            "held": 0,
            "limit": 100,
            "remaining": 97,
            "is_unlimited": False,
            "window_start": JAN,
            "resets_at": FEB,
            "credit_balance": 0,
        },
    ]

    free = flow.get_user_overview("u-free")
    assert free.profile is None and free.plan is not None and free.plan.name == "Free"
    assert [(f.feature_name, f.limit) for f in free.features] == [("api", 10), ("exports", 3)]

    flow.assign_plan("u2", "price_ent")
    unlimited = flow.get_user_overview("u2").features
    assert {(f.limit, f.remaining, f.is_unlimited) for f in unlimited} == {(None, None, True)}

    start, end = datetime(2024, 1, 10, 8, tzinfo=UTC), datetime(2024, 2, 10, 8, tzinfo=UTC)
    flow.assign_plan("u3", "price_team", current_period_start=start, current_period_end=end)
    flow.consume("u3", "reports")
    reports = {f.feature_name: f for f in flow.get_user_overview("u3").features}["reports"]
    assert (reports.period, reports.window_start, reports.resets_at) == (
        "billing_cycle",
        start,
        end,
    )
    assert (reports.current, reports.remaining) == (1, 1)
    _invalid(lambda: flow.get_user_overview(""))


def test_user_overview_counts_limit_adjustments(make_flow: Any) -> None:
    flow = make_flow(enable_user_adjustments=True)
    setup_plans(flow)
    flow.add_limit_adjustment(
        "u1",
        "exports",
        7,
        "one_time",
        datetime(2024, 1, 2, tzinfo=UTC),
        datetime(2024, 1, 20, tzinfo=UTC),
    )
    exports = {f.feature_name: f for f in flow.get_user_overview("u1").features}["exports"]
    assert (exports.limit, exports.remaining) == (10, 10)
    assert exports.limit == flow.fetch_usage("u1", "exports").limit


def test_pending_stripe_subscriptions(make_flow: Any) -> None:
    flow = make_flow(stripe_webhook_secret=SECRET)
    flow.create_plan("Pro", stripe_price_id="price_pro", limits={"exports": 1000})
    ev = Events()
    period = (T0, T0 + MONTH)
    first = ev.subscription(
        "customer.subscription.created", "sub_9", "cus_9", "price_pro", "active", period, T0
    )
    later = ev.subscription(
        "customer.subscription.created",
        "sub_8",
        "cus_8",
        "price_pro",
        "trialing",
        period,
        T0 + DAY,
        started=T0 + DAY,
    )
    assert deliver(flow, first).action == "pending"
    assert deliver(flow, later).action == "pending"
    deliver(flow, ev.checkout("cus_7", T0, client_reference_id="u7"))
    linked = ev.subscription(
        "customer.subscription.created", "sub_7", "cus_7", "price_pro", "active", period, T0
    )
    assert deliver(flow, linked).action == "applied"

    pending = flow.list_pending_stripe_subscriptions()
    assert [p.subscription_id for p in pending] == ["sub_8", "sub_9"]
    assert pending[1].model_dump() == {
        "subscription_id": "sub_9",
        "customer_id": "cus_9",
        "plan": "price_pro",
        "status": "active",
        "started": datetime.fromtimestamp(T0, UTC),
        "current_period_start": datetime.fromtimestamp(T0, UTC),
        "current_period_end": datetime.fromtimestamp(T0 + MONTH, UTC),
    }
    assert pending[0].started == datetime.fromtimestamp(T0, UTC) + timedelta(days=1)
    assert [p.subscription_id for p in flow.list_pending_stripe_subscriptions(1)] == ["sub_8"]

    # Linking the customer applies its subscription: it is no longer pending.
    assert deliver(flow, ev.checkout("cus_9", T0 + 5, client_reference_id="u9")).action == (
        "applied"
    )
    assert [p.subscription_id for p in flow.list_pending_stripe_subscriptions()] == ["sub_8"]
    for limit in (0, 1001, None):
        _invalid(lambda limit=limit: flow.list_pending_stripe_subscriptions(limit))


def test_recent_stripe_events_and_a_users_adjustments(make_flow: Any, clock: FakeClock) -> None:
    flow = make_flow(stripe_webhook_secret=SECRET, enable_user_adjustments=True)
    setup_plans(flow)
    assert flow.recent_stripe_events() == []
    events = Events()
    checkout = events.checkout("cus_1", T0, client_reference_id="u1")
    deliver(flow, checkout)
    deliver(flow, checkout)  # the same event again: a duplicate, recorded once
    recorded = flow.recent_stripe_events()
    assert [(e.type, e.action, e.user_id) for e in recorded] == [
        ("checkout.session.completed", "applied", "u1")
    ]
    now = clock()
    flow.add_limit_adjustment("u1", "exports", 5, "one_time", now, now + timedelta(days=2))
    flow.add_limit_adjustment(
        "u1", "exports", 7, "recurring", now - timedelta(days=9), now - timedelta(days=1)
    )
    assert [a.amount for a in flow.list_limit_adjustments("u1", "exports")] == [5]
    assert flow.list_limit_adjustments("u1", "api") == []
    assert "limit" in _invalid(lambda: flow.recent_stripe_events(0))
