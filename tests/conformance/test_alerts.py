"""Conformance: usage alerts, recorded once per crossing in the charge's own atomic step, and
delivered at least once (every store, sync and async API)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from usageflow import Alert, ErrorCodes, UsageFlowError
from usageflow.testing import FakeClock

UTC = timezone.utc
JAN = datetime(2024, 1, 1, tzinfo=UTC)
FEB = datetime(2024, 2, 1, tzinfo=UTC)


def _plans(flow: Any) -> tuple[int, int]:
    free = flow.create_plan("Free", is_free=True, limits={"exports": 10, "api": -1})
    pro = flow.create_plan("Pro", stripe_price_id="price_pro", limits={"exports": 100})
    return free.id, pro.id


def _thresholds(flow: Any) -> list[int]:
    return [a.threshold for a in reversed(flow.list_alerts())]


def test_charges_of_8_then_2_record_80_then_100_exactly_once(flow: Any, clock: FakeClock) -> None:
    _plans(flow)
    assert flow.set_alert_thresholds("exports", [100, 80]) == [80, 100]
    assert flow.consume("u1", "exports", 8).alerts == (80,)
    assert flow.consume("u1", "exports", 2).alerts == (100,)
    refused = flow.consume("u1", "exports", 1)
    assert not refused.allowed and refused.alerts == ()
    assert _thresholds(flow) == [80, 100]

    first, second = reversed(flow.list_alerts())
    assert isinstance(first, Alert)
    assert (first.user_id, first.feature_name, first.usage, first.limit) == ("u1", "exports", 8, 10)
    assert (second.usage, second.limit) == (10, 10)
    assert (first.window_start, first.resets_at) == (JAN, FEB)
    assert first.created_at == clock() and first.delivered_at is None and first.attempts == 0

    clock.set(FEB + timedelta(days=2))  # the next month re-arms every threshold
    assert flow.consume("u1", "exports", 9).alerts == (80,)
    assert _thresholds(flow) == [80, 100, 80]
    assert flow.list_alerts()[0].window_start == FEB


def test_one_charge_crossing_several_thresholds_records_each(flow: Any) -> None:
    _plans(flow)
    flow.set_alert_thresholds("exports", [50, 80, 100])
    assert flow.consume("u1", "exports", 4).alerts == ()
    assert flow.consume("u1", "exports", 5).alerts == (50, 80)  # 40% -> 90%
    assert _thresholds(flow) == [50, 80]


def test_a_limit_that_grows_or_a_refund_does_not_re_fire(make_flow: Any, clock: FakeClock) -> None:
    flow = make_flow(enable_user_adjustments=True)
    _plans(flow)
    flow.set_alert_thresholds("exports", [80, 100])
    flow.consume("u1", "exports", 10)
    assert _thresholds(flow) == [80, 100]
    # An upgrade of the window's limit (an adjustment of +10): usage is now 50%.
    flow.add_limit_adjustment("u1", "exports", 10, "one_time", clock(), clock() + timedelta(days=3))
    assert flow.consume("u1", "exports", 7).alerts == ()  # 85%: 80 was crossed already
    # A refund takes usage back below 80%; crossing it again in the window records nothing.
    flow.adjust_usage("u1", "exports", -6, metadata={"reason": "refund"})
    assert flow.consume("u1", "exports", 6).alerts == ()
    assert flow.consume("u1", "exports", 3).alerts == ()  # 100% of 20, crossed before
    assert _thresholds(flow) == [80, 100]


def test_a_reset_re_arms_the_thresholds(flow: Any, clock: FakeClock) -> None:
    _plans(flow)
    flow.set_alert_thresholds("exports", [80])
    assert flow.consume("u1", "exports", 9).alerts == (80,)
    clock.advance(seconds=60)
    flow.reset_feature_usage("u1", "exports")
    clock.advance(seconds=60)
    assert flow.consume("u1", "exports", 8).alerts == (80,)
    latest = flow.list_alerts()[0]
    assert latest.usage == 8 and latest.window_start is not None and latest.window_start > JAN


def test_unlimited_features_and_other_users_and_features(flow: Any) -> None:
    _plans(flow)
    flow.set_alert_thresholds("exports", [50])
    flow.set_alert_thresholds("api", [50])
    assert flow.consume("u1", "api", 1000).alerts == ()  # unlimited: never
    assert flow.consume("u1", "exports", 5).alerts == (50,)
    assert flow.consume("u2", "exports", 5).alerts == (50,)  # per user
    assert [a.user_id for a in flow.list_alerts("u2")] == ["u2"]


def test_plan_thresholds_replace_every_plans_and_can_be_cleared(flow: Any) -> None:
    free, pro = _plans(flow)
    flow.set_alert_thresholds("exports", [50])
    assert flow.set_alert_thresholds("exports", [90, 75, 75], plan_id=pro) == [75, 90]
    assert flow.get_alert_thresholds("exports") == [50]
    assert flow.get_alert_thresholds("exports", plan_id=pro) == [75, 90]
    assert flow.get_alert_thresholds("exports", plan_id=free) == [50]
    flow.assign_plan("u-pro", "price_pro")
    assert flow.consume("u-pro", "exports", 60).alerts == ()  # 50 is not Pro's
    assert flow.consume("u-pro", "exports", 20).alerts == (75,)
    assert flow.consume("u1", "exports", 5).alerts == (50,)
    assert flow.set_alert_thresholds("exports", [], plan_id=pro) == []
    assert flow.get_alert_thresholds("exports", plan_id=pro) == [50]
    flow.set_alert_thresholds("exports", [])
    assert flow.get_alert_thresholds("exports") == []
    assert flow.consume("u2", "exports", 9).alerts == ()


@pytest.mark.parametrize(
    "thresholds", [[0], [1001], ["80"], [80.0], [True], "80", 80, None, [[80]]]
)
def test_invalid_thresholds_are_refused(flow: Any, thresholds: Any) -> None:
    _plans(flow)
    with pytest.raises(UsageFlowError) as caught:
        flow.set_alert_thresholds("exports", thresholds)
    assert caught.value.code is ErrorCodes.USAGE_INVALID_PARAMS
    assert flow.get_alert_thresholds("exports") == []


def test_thresholds_of_an_unknown_plan_are_refused(flow: Any) -> None:
    _plans(flow)
    with pytest.raises(UsageFlowError) as caught:
        flow.set_alert_thresholds("exports", [80], plan_id=999)
    assert caught.value.code is ErrorCodes.USAGE_INVALID_PARAMS


def test_delivery_marks_delivered_and_retries_what_failed_after_the_others(
    flow: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _plans(flow)
    flow.set_alert_thresholds("exports", [50, 100])
    for user in ("u1", "u2", "u3"):
        flow.consume(user, "exports", 5)
    seen: list[str] = []

    def handler(alert: Alert) -> None:
        seen.append(alert.user_id)
        if alert.user_id == "u2":
            raise RuntimeError("mail server down")

    assert flow.deliver_alerts(handler) == 2
    assert seen == ["u1", "u2", "u3"]
    assert "mail server down" in caplog.text and "RuntimeError" in caplog.text
    assert [a.user_id for a in flow.list_alerts(undelivered=True)] == ["u2"]
    assert flow.list_alerts(undelivered=True)[0].attempts == 1

    flow.consume("u4", "exports", 5)  # a new alert comes before the one that failed
    seen.clear()
    assert flow.deliver_alerts(handler) == 1
    assert seen == ["u4", "u2"]
    seen.clear()
    assert flow.deliver_alerts(handler, limit=1) == 0 and seen == ["u2"]

    assert flow.deliver_alerts(lambda alert: None) == 1
    assert flow.list_alerts(undelivered=True) == []
    assert all(a.delivered_at is not None for a in flow.list_alerts())
    assert flow.deliver_alerts(handler) == 0


def test_delivery_and_listing_check_their_arguments(flow: Any) -> None:
    for call in (
        lambda: flow.deliver_alerts("not a function"),
        lambda: flow.deliver_alerts(print, limit=0),
        lambda: flow.deliver_alerts(print, lease=-1),
        lambda: flow.list_alerts(undelivered="yes"),
        lambda: flow.list_alerts("", limit=5),
    ):
        with pytest.raises(UsageFlowError) as caught:
            call()
        assert caught.value.code is ErrorCodes.USAGE_INVALID_PARAMS


def test_a_committed_reservation_records_the_alerts_its_credits_cross(flow: Any) -> None:
    _plans(flow)
    flow.set_alert_thresholds("exports", [50, 80, 100])
    held = flow.reserve("u1", "exports", 9)
    assert _thresholds(flow) == []  # held credits are not usage
    flow.reserve("u1", "exports", 1).release()
    assert _thresholds(flow) == []
    held.commit(7)  # 0% -> 70%
    assert _thresholds(flow) == [50]
    assert flow.list_alerts()[0].usage == 7
    with flow.reserve("u1", "exports", 3) as more:
        more.commit(3)  # 70% -> 100%
    assert _thresholds(flow) == [50, 80, 100]
    assert [(a.usage, a.limit) for a in flow.list_alerts()][:2] == [(10, 10), (10, 10)]


def test_an_async_handler_runs_on_the_async_flow_and_is_refused_by_the_sync_one(
    flow: Any, api: str
) -> None:
    _plans(flow)
    flow.set_alert_thresholds("exports", [50])
    flow.consume("u1", "exports", 5)
    got: list[int] = []

    async def handler(alert: Alert) -> None:
        got.append(alert.threshold)

    if api == "async":
        assert flow.deliver_alerts(handler) == 1 and got == [50]
        return
    with pytest.raises(UsageFlowError) as caught:
        flow.deliver_alerts(handler)
    assert caught.value.code is ErrorCodes.USAGE_CONFIG_ERROR
    assert "AsyncUsageFlow" in caught.value.message
    assert len(flow.list_alerts(undelivered=True)) == 1 and got == []


def test_an_upgrade_within_the_window_does_not_re_fire(flow: Any) -> None:
    _plans(flow)
    flow.set_alert_thresholds("exports", [80, 100])
    assert flow.consume("u1", "exports", 10).alerts == (80, 100)
    flow.assign_plan("u1", "price_pro")  # 10 of 100 now
    assert flow.consume("u1", "exports", 80).alerts == ()  # 90%: crossed in this window
    assert flow.fetch_usage("u1", "exports").limit == 100
    assert _thresholds(flow) == [80, 100]
