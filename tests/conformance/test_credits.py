"""Conformance: credit grants, spent after the plan's allowance in expiry order, given back by
refunds, counted as usage (every store, sync and async API)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from usageflow import CreditPack, ErrorCodes, Grant, UsageFlowError, ops
from usageflow.testing import FakeClock

UTC = timezone.utc
FEB = datetime(2024, 2, 1, tzinfo=UTC)


def _plans(flow: Any) -> None:
    flow.create_plan("Free", is_free=True, limits={"exports": 10, "api": -1})


def _remaining(flow: Any, user: str = "u1") -> dict[int, int]:
    return {g.id: g.remaining for g in flow.list_grants(user, "exports")}


def _ledger_agrees(flow: Any, user: str = "u1", feature: str = "exports") -> None:
    total, ledger = flow.store.call(ops.ledger_check(user_id=user, feature_name=feature))
    assert total == ledger


def test_a_charge_spends_the_plan_then_the_grant_expiring_first(
    flow: Any, clock: FakeClock
) -> None:
    _plans(flow)
    forever = flow.grant_credits("u1", "exports", 5, reason="welcome")
    late = flow.grant_credits("u1", "exports", 5, expires_at=clock() + timedelta(days=20))
    soon = flow.grant_credits("u1", "exports", 5, expires_at=clock() + timedelta(days=2))
    assert isinstance(soon, Grant) and soon.remaining == soon.credits == 5
    assert (forever.source, forever.reason, forever.expires_at) == ("manual", "welcome", None)

    assert flow.consume("u1", "exports", 8).credit_balance == 15  # the plan pays
    assert _remaining(flow) == {forever.id: 5, late.id: 5, soon.id: 5}

    split = flow.consume("u1", "exports", 9)  # 2 from the plan, 5 from `soon`, 2 from `late`
    assert split.allowed and split.credit_balance == 8 and split.remaining == 8
    assert split.current == 17 and split.limit == 10
    assert _remaining(flow) == {forever.id: 5, late.id: 3, soon.id: 0}

    assert flow.consume("u1", "exports", 4).credit_balance == 4  # `late` runs out first
    assert _remaining(flow) == {forever.id: 4, late.id: 0, soon.id: 0}

    refused = flow.consume("u1", "exports", 5)  # refused whole: nothing is taken
    assert not refused.allowed and refused.remaining == 4 and refused.credit_balance == 4
    assert _remaining(flow) == {forever.id: 4, late.id: 0, soon.id: 0}
    assert flow.consume("u1", "exports", 4).allowed
    assert flow.get_credit_balance("u1", "exports") == 0
    assert not flow.consume("u1", "exports", 1).allowed
    assert flow.get_total_usage("u1", "exports") == 25  # usage is usage, whatever paid
    _ledger_agrees(flow)


def test_a_grant_is_usable_until_the_instant_it_expires(flow: Any, clock: FakeClock) -> None:
    _plans(flow)
    ends = clock() + timedelta(hours=1)
    flow.grant_credits("u1", "exports", 3, expires_at=ends)
    flow.consume("u1", "exports", 10)
    clock.set(ends - timedelta(microseconds=1))
    assert flow.fetch_usage("u1", "exports").credit_balance == 3
    assert flow.consume("u1", "exports", 1).allowed
    clock.set(ends)
    usage = flow.fetch_usage("u1", "exports")
    assert (usage.credit_balance, usage.remaining) == (0, 0)
    assert not flow.consume("u1", "exports", 1).allowed
    assert flow.get_credit_balance("u1", "exports") == 0
    assert flow.list_grants("u1")[0].remaining == 2  # kept as it was: expired, not spent


def test_a_refund_gives_the_credits_back_where_they_were_taken(flow: Any) -> None:
    _plans(flow)
    first = flow.grant_credits("u1", "exports", 4, expires_at=FEB)
    second = flow.grant_credits("u1", "exports", 4)
    decision = flow.consume("u1", "exports", 16)  # 10 plan, 4 first, 2 second
    assert decision.allowed and _remaining(flow) == {first.id: 0, second.id: 2}

    flow.adjust_usage("u1", "exports", -3, metadata={"reason": "failed export"})
    assert _remaining(flow) == {first.id: 1, second.id: 4}  # reverse order: second, then first
    usage = flow.fetch_usage("u1", "exports")
    assert (usage.current, usage.credit_balance, usage.remaining) == (13, 5, 5)

    flow.adjust_usage("u1", "exports", -8, metadata={"reason": "goodwill"})  # 3 to grants
    assert _remaining(flow) == {first.id: 4, second.id: 4}
    usage = flow.fetch_usage("u1", "exports")  # the other 5 went back to the plan
    assert (usage.current, usage.credit_balance, usage.remaining) == (5, 8, 13)
    _ledger_agrees(flow)


def test_a_feature_outside_the_plan_runs_on_grants_alone(flow: Any) -> None:
    _plans(flow)
    assert not flow.consume("u1", "tokens", 1).allowed
    flow.grant_credits("u1", "tokens", 1000)
    usage = flow.fetch_usage("u1", "tokens")
    assert (usage.limit, usage.remaining, usage.credit_balance) == (0, 1000, 1000)
    assert flow.consume("u1", "tokens", 600).allowed
    assert not flow.consume("u1", "tokens", 401).allowed
    assert flow.consume("u1", "tokens", 400).remaining == 0
    assert flow.get_total_usage("u1", "tokens") == 1000
    _ledger_agrees(flow, feature="tokens")


def test_an_unlimited_feature_never_touches_grants(flow: Any) -> None:
    _plans(flow)
    flow.grant_credits("u1", "api", 5)
    decision = flow.consume("u1", "api", 50)
    assert decision.allowed and decision.is_unlimited and decision.remaining is None
    assert flow.get_credit_balance("u1", "api") == 5


def test_reservations_count_grants_and_their_commit_draws_on_them(flow: Any) -> None:
    _plans(flow)
    flow.consume("u1", "exports", 8)
    with pytest.raises(UsageFlowError) as refused:
        flow.reserve("u1", "exports", 5)
    assert refused.value.code is ErrorCodes.USAGE_LIMIT_ERROR
    grant = flow.grant_credits("u1", "exports", 6)
    reservation = flow.reserve("u1", "exports", 5)
    assert flow.fetch_usage("u1", "exports").remaining == 3  # 2 + 6 - 5 held
    assert _remaining(flow) == {grant.id: 6}  # a hold draws nothing
    reservation.commit(4)
    assert _remaining(flow) == {grant.id: 4}  # 2 from the plan, 2 from the grant
    released = flow.reserve("u1", "exports", 4)
    released.release()
    assert _remaining(flow) == {grant.id: 4}
    _ledger_agrees(flow)


def test_increment_usage_draws_grants_and_never_takes_them_below_zero(flow: Any) -> None:
    _plans(flow)
    grant = flow.grant_credits("u1", "exports", 5)
    flow.increment_usage("u1", "exports", 12)
    assert _remaining(flow) == {grant.id: 3}
    flow.increment_usage("u1", "exports", 20)  # recorded whatever the limit
    assert _remaining(flow) == {grant.id: 0}
    usage = flow.fetch_usage("u1", "exports")
    assert (usage.current, usage.remaining, usage.credit_balance) == (32, 0, 0)
    _ledger_agrees(flow)


def test_a_reset_renews_the_plan_not_the_grants(flow: Any) -> None:
    _plans(flow)
    grant = flow.grant_credits("u1", "exports", 5)
    flow.consume("u1", "exports", 12)
    flow.reset_feature_usage("u1", "exports")
    usage = flow.fetch_usage("u1", "exports")
    assert (usage.current, usage.remaining, usage.credit_balance) == (0, 13, 3)
    assert flow.consume("u1", "exports", 10).credit_balance == 3  # the plan pays again
    assert _remaining(flow) == {grant.id: 3}


def test_the_next_window_renews_the_plan_and_keeps_the_balance(flow: Any, clock: FakeClock) -> None:
    _plans(flow)
    flow.grant_credits("u1", "exports", 5)
    flow.consume("u1", "exports", 13)
    clock.set(FEB + timedelta(days=1))
    usage = flow.fetch_usage("u1", "exports")
    assert (usage.current, usage.remaining, usage.credit_balance) == (0, 12, 2)
    assert flow.consume("u1", "exports", 11).credit_balance == 1


def test_grants_are_idempotent_by_key(flow: Any) -> None:
    _plans(flow)
    first = flow.grant_credits("u1", "exports", 5, idempotency_key="promo-1")
    again = flow.grant_credits("u1", "exports", 5, idempotency_key="promo-1")
    assert again.replayed and again.id == first.id and not first.replayed
    assert flow.get_credit_balance("u1", "exports") == 5
    with pytest.raises(UsageFlowError) as err:
        flow.grant_credits("u1", "exports", 6, idempotency_key="promo-1")
    assert err.value.code is ErrorCodes.USAGE_IDEMPOTENCY_ERROR
    other_user = flow.grant_credits("u2", "exports", 5, idempotency_key="promo-1")
    assert not other_user.replayed  # keys are per user


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"credits": 0}, "credits"),
        ({"credits": -5}, "credits"),
        ({"credits": True}, "credits"),
        ({"credits": 2.5}, "credits"),
        ({"credits": 2**63}, "credits"),
        ({"expires_at": "tomorrow"}, "expires_at"),
        ({"expires_at": datetime(2000, 1, 1, tzinfo=UTC)}, "expires_at"),
        ({"reason": ""}, "reason"),
    ],
)
def test_invalid_grants_are_refused_and_write_nothing(
    flow: Any, kwargs: dict[str, Any], field: str
) -> None:
    args = {"credits": 5, **kwargs}
    with pytest.raises(UsageFlowError) as err:
        flow.grant_credits("u1", "exports", args.pop("credits"), **args)
    assert err.value.code is ErrorCodes.USAGE_INVALID_PARAMS
    assert err.value.details["field"] == field
    assert flow.list_grants("u1") == []


def test_credit_packs_are_upserted_and_offer_a_top_up_link(flow: Any) -> None:
    _plans(flow)
    assert flow.top_up_url("u1", "exports") is None
    small = flow.create_credit_pack(
        "50 exports",
        credits={"exports": 50},
        stripe_payment_link_id="plink_small",
        payment_link_url="https://buy.stripe.com/small",
    )
    big = flow.create_credit_pack(
        "500 exports",
        credits={"exports": 500, "tokens": 10_000},
        stripe_price_id="price_big",
        payment_link_url="https://buy.stripe.com/big",
        expires_in_days=365,
    )
    assert isinstance(small, CreditPack) and small.credits == {"exports": 50}
    renamed = flow.create_credit_pack(
        "Big pack", credits={"exports": 600}, stripe_price_id="price_big"
    )
    assert renamed.id == big.id and renamed.credits == {"exports": 600}
    assert [p.name for p in flow.list_credit_packs()] == ["50 exports", "Big pack"]
    url = flow.top_up_url("u1", "exports")
    assert url is not None and url.startswith("https://buy.stripe.com/small?")
    assert "client_reference_id=u1" in url
    assert flow.top_up_url("u1", "tokens") is None  # the pack with tokens lost its link
    with pytest.raises(UsageFlowError) as err:
        flow.create_credit_pack("Empty", credits={})
    assert err.value.code is ErrorCodes.USAGE_INVALID_PARAMS
    with pytest.raises(UsageFlowError):
        flow.create_credit_pack("Bad", credits={"exports": 0})
