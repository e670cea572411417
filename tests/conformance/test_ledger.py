"""Conformance: recording, idempotency, refunds, resets, periods and stats."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from tests.conformance.test_enforcement import setup_plans
from usageflow import ErrorCodes, UsageFlowError, ops
from usageflow.testing import FakeClock

UTC = timezone.utc


def test_increment_usage_records_without_enforcing(flow: Any) -> None:
    setup_plans(flow)
    event = flow.increment_usage(
        "u1", "exports", credits_used=5, metadata={"model": "gpt-4o-mini", "n": [1, 2]}
    )
    assert event.credits_used == 5 and event.event_type == "usage"
    assert event.metadata == {"model": "gpt-4o-mini", "n": [1, 2]}
    assert event.timestamp == datetime(2024, 1, 15, 12, tzinfo=UTC)
    usage = flow.fetch_usage("u1", "exports")
    assert (usage.current, usage.remaining) == (5, 0)
    [listed] = flow.list_events("u1")
    assert listed.id == event.id and listed.metadata == event.metadata


def test_increment_usage_needs_no_plan(flow: Any) -> None:
    flow.increment_usage("u1", "api")
    assert flow.get_total_usage("u1", "api") == 1


def test_idempotency_key_records_once_and_returns_the_first(flow: Any) -> None:
    setup_plans(flow)
    first = flow.increment_usage("u1", "api", credits_used=4, idempotency_key="req-1")
    again = flow.increment_usage("u1", "api", credits_used=4, idempotency_key="req-1")
    assert again.id == first.id and again.replayed and not first.replayed
    assert flow.get_total_usage("u1", "api") == 4
    decision = flow.consume("u1", "api", credits=2, idempotency_key="req-2")
    replay = flow.consume("u1", "api", credits=2, idempotency_key="req-2")
    assert decision.allowed and replay.allowed and replay.replayed
    assert replay.event_id == decision.event_id
    assert flow.get_total_usage("u1", "api") == 6
    assert flow.store.call(ops.ledger_check(user_id="u1", feature_name="api")) == (6, 6)


def test_idempotency_keys_are_scoped_to_the_user_and_feature(flow: Any) -> None:
    """One user's key never replays another's request (nor another feature's)."""
    setup_plans(flow)
    alice = flow.consume("alice", "api", credits=5, idempotency_key="req-1")
    mallory = flow.consume("mallory", "api", credits=5, idempotency_key="req-1")
    other_feature = flow.consume("alice", "exports", credits=1, idempotency_key="req-1")
    assert alice.allowed and mallory.allowed and other_feature.allowed
    assert not mallory.replayed and not other_feature.replayed
    assert len({alice.event_id, mallory.event_id, other_feature.event_id}) == 3
    assert flow.get_total_usage("mallory", "api") == 5
    assert flow.get_total_usage("alice", "exports") == 1
    recorded = flow.increment_usage("mallory", "api", credits_used=5, idempotency_key="req-1")
    assert recorded.replayed and recorded.id == mallory.event_id
    assert flow.store.call(ops.ledger_check(user_id="mallory", feature_name="api")) == (5, 5)


def test_reusing_a_key_with_other_arguments_is_an_idempotency_error(flow: Any) -> None:
    """Stripe's rule: a key names one request; metadata aside, a retry repeats it exactly."""
    setup_plans(flow)
    flow.consume("u1", "api", credits=2, metadata={"try": 1}, idempotency_key="req-1")
    replay = flow.consume("u1", "api", credits=2, metadata={"try": 2}, idempotency_key="req-1")
    assert replay.replayed
    calls = [
        lambda: flow.consume("u1", "api", credits=3, idempotency_key="req-1"),
        lambda: flow.increment_usage("u1", "api", credits_used=1, idempotency_key="req-1"),
        lambda: flow.adjust_usage(
            "u1", "api", 2, metadata={"reason": "bonus"}, idempotency_key="req-1"
        ),
        lambda: flow.adjust_usage(
            "u1", "api", -2, metadata={"reason": "refund"}, idempotency_key="req-1"
        ),
    ]
    for attempt in calls:
        with pytest.raises(UsageFlowError) as info:
            attempt()
        assert info.value.code is ErrorCodes.USAGE_IDEMPOTENCY_ERROR
        assert info.value.details["idempotency_key"] == "req-1"
        assert info.value.details["first"] == {"kind": "usage", "credits": 2}
    assert flow.get_total_usage("u1", "api") == 2
    assert flow.store.call(ops.ledger_check(user_id="u1", feature_name="api")) == (2, 2)
    flow.reserve("u1", "api", 4, idempotency_key="job-1")
    assert flow.reserve("u1", "api", 4, idempotency_key="job-1").decision.replayed
    with pytest.raises(UsageFlowError) as info:
        flow.reserve("u1", "api", 5, idempotency_key="job-1")
    assert info.value.code is ErrorCodes.USAGE_IDEMPOTENCY_ERROR
    assert info.value.details["first"] == {"kind": "reservation", "credits": 4}
    assert flow.fetch_usage("u1", "api").current == 2 + 4  # held credits count as used


def test_reservation_keys_are_reserved_for_commits(flow: Any) -> None:
    """A caller's key of the form ``reservation:<id>`` could pass for a commit: refused."""
    setup_plans(flow)
    held = flow.reserve("u1", "api", 3)
    with pytest.raises(UsageFlowError) as info:
        flow.consume("u1", "api", 3, idempotency_key=f"reservation:{held.id}")
    assert info.value.code is ErrorCodes.USAGE_INVALID_PARAMS
    assert held.commit().credits_used == 3
    assert flow.get_total_usage("u1", "api") == 3


def test_denied_consume_with_key_can_be_retried_after_upgrade(flow: Any) -> None:
    setup_plans(flow)
    flow.increment_usage("u1", "exports", credits_used=3)
    assert not flow.consume("u1", "exports", idempotency_key="k").allowed
    flow.assign_plan("u1", "price_pro")
    assert flow.consume("u1", "exports", idempotency_key="k").allowed
    assert flow.consume("u1", "exports", idempotency_key="k").replayed
    assert flow.get_total_usage("u1", "exports") == 4


def test_adjust_usage_sign_rule(flow: Any) -> None:
    setup_plans(flow)
    flow.increment_usage("u1", "api", credits_used=8)
    refund = flow.adjust_usage("u1", "api", amount=-5, metadata={"reason": "service_error"})
    assert refund.event_type == "credit" and refund.credits_used == -5
    assert flow.fetch_usage("u1", "api").current == 3
    deduct = flow.adjust_usage("u1", "api", amount=2, metadata={"reason": "manual"})
    assert deduct.event_type == "adjustment"
    assert flow.fetch_usage("u1", "api").current == 5
    flow.adjust_usage("u1", "api", amount=-50, metadata={"reason": "goodwill"})
    usage = flow.fetch_usage("u1", "api")
    assert usage.current == 0 and usage.remaining == 10
    assert flow.store.call(ops.ledger_check(user_id="u1", feature_name="api")) == (-45, -45)


def test_adjust_usage_requires_a_reason_and_a_nonzero_int(flow: Any) -> None:
    for amount, metadata in (
        (5, None),
        (5, {}),
        (5, {"reason": "  "}),
        (0, {"reason": "x"}),
        (1.5, {"reason": "x"}),
        ("3", {"reason": "x"}),
    ):
        with pytest.raises(UsageFlowError) as err:
            flow.adjust_usage("u1", "api", amount=amount, metadata=metadata)
        assert err.value.code is ErrorCodes.USAGE_INVALID_PARAMS
    assert flow.list_events("u1") == []


def test_month_boundaries_and_clamped_month_ends(flow: Any, clock: FakeClock) -> None:
    setup_plans(flow)
    clock.set(datetime(2024, 1, 31, 23, 59, 59, 999999, tzinfo=UTC))
    assert flow.consume("u1", "exports", credits=3).allowed
    assert not flow.consume("u1", "exports").allowed
    clock.set(datetime(2024, 2, 1, tzinfo=UTC))
    decision = flow.consume("u1", "exports")
    assert decision.allowed and decision.current == 1
    assert decision.resets_at == datetime(2024, 3, 1, tzinfo=UTC)
    clock.set(datetime(2024, 12, 31, 10, tzinfo=UTC))
    assert flow.consume("u1", "exports").resets_at == datetime(2025, 1, 1, tzinfo=UTC)


def test_week_day_and_rolling_windows(flow: Any, clock: FakeClock) -> None:
    flow.create_plan(
        "Free",
        is_free=True,
        limits={
            "wk": (5, "current_week"),
            "dy": (5, "day"),
            "r30": (5, "last_30_days"),
            "r28": (5, "last_28_days"),
            "life": (5, "lifetime"),
        },
    )
    clock.set(datetime(2024, 1, 14, 23, tzinfo=UTC))  # a Sunday
    for feature in ("wk", "dy", "r30", "r28", "life"):
        flow.increment_usage("u1", feature, credits_used=2)
    clock.set(datetime(2024, 1, 15, 1, tzinfo=UTC))  # Monday
    assert flow.fetch_usage("u1", "wk").current == 0
    assert flow.consume("u1", "wk").resets_at == datetime(2024, 1, 22, tzinfo=UTC)
    assert flow.fetch_usage("u1", "dy").current == 0
    clock.set(datetime(2024, 2, 11, 22, tzinfo=UTC))  # 27 days 23 h later
    assert flow.fetch_usage("u1", "r28").current == 2
    assert flow.fetch_usage("u1", "r30").current == 2
    clock.set(datetime(2024, 2, 11, 23, 0, 1, tzinfo=UTC))
    assert flow.fetch_usage("u1", "r28").current == 0
    assert flow.fetch_usage("u1", "r30").current == 2
    assert flow.consume("u1", "r30").resets_at is None
    clock.set(datetime(2024, 2, 13, 23, 0, 1, tzinfo=UTC))
    assert flow.fetch_usage("u1", "r30").current == 1
    clock.set(datetime(2030, 1, 1, tzinfo=UTC))
    assert flow.fetch_usage("u1", "life").current == 2
    assert flow.consume("u1", "life").resets_at is None


def test_fetch_usage_with_an_explicit_period(flow: Any, clock: FakeClock) -> None:
    setup_plans(flow)
    clock.set(datetime(2024, 1, 27, tzinfo=UTC))  # a Saturday
    flow.increment_usage("u1", "api", credits_used=4)
    clock.set(datetime(2024, 2, 2, tzinfo=UTC))
    flow.increment_usage("u1", "api", credits_used=1)
    assert flow.fetch_usage("u1", "api").current == 1
    assert flow.fetch_usage("u1", "api", period="last_30_days").current == 5
    assert flow.get_total_usage("u1", "api", period="lifetime") == 5
    assert flow.get_total_usage("u1", "api", period="current_week") == 1
    with pytest.raises(UsageFlowError) as err:
        flow.fetch_usage("u1", "api", period="fortnight")
    assert err.value.code is ErrorCodes.USAGE_INVALID_PARAMS


def test_billing_cycle_follows_the_subscription(flow: Any, clock: FakeClock) -> None:
    flow.create_plan("Free", is_free=True, limits={"x": (1, "billing_cycle")})
    flow.create_plan("Pro", stripe_price_id="price_pro", limits={"x": (10, "billing_cycle")})
    # No subscription: the calendar month.
    assert flow.consume("free", "x").resets_at == datetime(2024, 2, 1, tzinfo=UTC)
    # Anchored on the 31st: Feb 29 (leap year), then Mar 31.
    flow.assign_plan(
        "u1",
        "price_pro",
        current_period_start=datetime(2024, 1, 31, 9, tzinfo=UTC),
        current_period_end=datetime(2024, 2, 29, 9, tzinfo=UTC),
    )
    clock.set(datetime(2024, 2, 1, tzinfo=UTC))
    for _ in range(10):
        assert flow.consume("u1", "x").allowed
    decision = flow.consume("u1", "x")
    assert not decision.allowed
    assert decision.resets_at == datetime(2024, 2, 29, 9, tzinfo=UTC)
    # The renewal webhook is late: the cycle rolls forward from the anchor by itself.
    clock.set(datetime(2024, 2, 29, 9, 0, 1, tzinfo=UTC))
    decision = flow.consume("u1", "x")
    assert decision.allowed and decision.current == 1
    assert decision.resets_at == datetime(2024, 3, 31, 9, tzinfo=UTC)
    clock.set(datetime(2025, 2, 28, 10, tzinfo=UTC))  # not a leap year
    assert flow.consume("u1", "x").resets_at == datetime(2025, 3, 31, 9, tzinfo=UTC)


def test_reset_zeroes_the_window_and_keeps_the_events(flow: Any, clock: FakeClock) -> None:
    setup_plans(flow)
    flow.increment_usage("u1", "exports", credits_used=3)
    assert flow.get_usage_since_reset("u1", "exports").model_dump() == {
        "total": 3,
        "last_reset_date": None,
        "pre_reset_total": 0,
    }
    clock.advance(hours=1)
    reset = flow.reset_feature_usage("u1", "exports", metadata={"reason": "support"})
    assert reset.event_type == "reset" and reset.credits_used is None
    assert reset.metadata == {"reason": "support", "pre_reset_total": 3}
    assert flow.fetch_usage("u1", "exports").current == 0
    clock.advance(minutes=5)
    assert flow.consume("u1", "exports", credits=2).allowed
    since = flow.get_usage_since_reset("u1", "exports")
    assert since.total == 2 and since.pre_reset_total == 3
    assert since.last_reset_date == datetime(2024, 1, 15, 13, tzinfo=UTC)
    assert len(flow.list_events("u1", "exports")) == 3
    assert flow.get_total_usage("u1", "exports", period="lifetime") == 2
    # Stats show the ledger: usage before the reset is still history.
    assert flow.get_usage_stats("u1", "exports").total == 5
    clock.set(datetime(2024, 2, 10, tzinfo=UTC))
    assert flow.fetch_usage("u1", "exports").current == 0
    assert flow.store.call(ops.ledger_check(user_id="u1", feature_name="exports")) == (5, 5)


def test_usage_stats_by_day_hour_week_month(flow: Any, clock: FakeClock) -> None:
    setup_plans(flow)
    clock.set(datetime(2024, 1, 1, 8, tzinfo=UTC))
    flow.increment_usage("u1", "api", credits_used=25)
    clock.set(datetime(2024, 1, 2, 9, 30, tzinfo=UTC))
    flow.increment_usage("u1", "api", credits_used=10)
    clock.set(datetime(2024, 1, 2, 10, 15, tzinfo=UTC))
    flow.increment_usage("u1", "api", credits_used=5)
    flow.increment_usage("u1", "exports", credits_used=1)
    clock.set(datetime(2024, 1, 4, 12, tzinfo=UTC))
    stats = flow.get_usage_stats("u1", "api", period="current_month", group_by="day")
    assert [(p.date, p.total) for p in stats.by_period] == [
        ("2024-01-01", 25),
        ("2024-01-02", 15),
        ("2024-01-03", 0),
        ("2024-01-04", 0),
    ]
    assert (stats.total, stats.max, stats.min, stats.average) == (40, 25, 0, 10.0)
    hourly = flow.get_usage_stats("u1", "api", group_by="hour")
    assert hourly.by_period[0].date == "2024-01-01T00:00:00Z"
    assert {p.date: p.total for p in hourly.by_period if p.total} == {
        "2024-01-01T08:00:00Z": 25,
        "2024-01-02T09:00:00Z": 10,
        "2024-01-02T10:00:00Z": 5,
    }
    assert len(hourly.by_period) == 24 * 3 + 13
    weekly = flow.get_usage_stats("u1", "api", group_by="week")
    assert [(p.date, p.total) for p in weekly.by_period] == [("2024-01-01", 40)]
    monthly = flow.get_usage_stats("u1", "api", period="lifetime", group_by="month")
    assert [(p.date, p.total) for p in monthly.by_period] == [("2024-01-01", 40)]
    for bad in ({"group_by": "year"}, {"period": "decade"}):
        with pytest.raises(UsageFlowError) as err:
            flow.get_usage_stats("u1", "api", **bad)
        assert err.value.code is ErrorCodes.USAGE_INVALID_PARAMS


def test_batch_usage_stats(flow: Any, clock: FakeClock) -> None:
    setup_plans(flow)
    flow.increment_usage("a", "api", credits_used=3)
    flow.increment_usage("b", "api", credits_used=4)
    flow.increment_usage("b", "exports", credits_used=1)
    flow.increment_usage("c", "api", credits_used=100)
    result = flow.get_batch_usage_stats(["a", "b", "nobody"], ["api", "exports"])
    assert set(result) == {"a", "b", "nobody"}
    assert {u: {f: s.total for f, s in fs.items()} for u, fs in result.items()} == {
        "a": {"api": 3, "exports": 0},
        "b": {"api": 4, "exports": 1},
        "nobody": {"api": 0, "exports": 0},
    }
    assert result["b"]["api"].by_period[-1].date == "2024-01-15"
    for bad in (([], ["api"]), ("a", ["api"]), (["a"], [""])):
        with pytest.raises(UsageFlowError) as err:
            flow.get_batch_usage_stats(*bad)
        assert err.value.code is ErrorCodes.USAGE_INVALID_PARAMS
