"""Stripe webhooks through ``flow.handle_webhook``: a Payment Link customer's lifecycle, order
and duplicate safety, price sync, manual integration and ``plan_resolver``.

Every test runs on each store of the conformance table, with the sync and the async API.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import stripe
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.stripe_events import DAY, MONTH, SECRET, T0, Events, deliver
from tests.support.stripe_server import API_KEY, stripe_server
from usageflow import AsyncUsageFlow, UsageFlow
from usageflow.errors import ErrorCodes, UsageFlowError
from usageflow.integrations.stripe import WebhookResult
from usageflow.plans_file import load_plans
from usageflow.stores.base import Store
from usageflow.testing import FakeClock

P1 = (T0, T0 + MONTH)
P2 = (T0 + MONTH, T0 + 2 * MONTH)


def at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def reason_of(result: WebhookResult) -> tuple[str, str | None]:
    return result.action, result.reason


@pytest.fixture
def stripe_flow(make_flow: Any, store: Store) -> Any:
    flow = make_flow(stripe_webhook_secret=SECRET)
    flow.create_plan("Free", is_free=True, limits={"exports": 3, "reports": (1, "billing_cycle")})
    flow.create_plan(
        "Basic",
        stripe_price_id="price_basic",
        price_amount=10,
        payment_link_url="https://buy.stripe.com/test_basic",
        limits={"exports": 100, "reports": (1, "billing_cycle")},
    )
    flow.create_plan(
        "Pro",
        stripe_price_id="price_pro",
        price_amount=30,
        payment_link_url="https://buy.stripe.com/test_pro",
        limits={"exports": 1000, "reports": (2, "billing_cycle")},
    )
    return flow


def lifecycle(ev: Events, user: str, customer: str, sub: str) -> list[dict[str, Any]]:
    """Payment Link purchase -> subscription created -> upgrade -> renewal -> cancellation."""
    return [
        ev.checkout(customer, T0 + 5, client_reference_id=user, email=f"{user}@example.com"),
        ev.subscription(
            "customer.subscription.created", sub, customer, "price_basic", "active", P1, T0 + 5
        ),
        ev.invoice_paid(sub, customer, "price_basic", P1, T0 + 6),
        ev.subscription(
            "customer.subscription.updated", sub, customer, "price_pro", "active", P1, T0 + DAY
        ),
        ev.subscription(
            "customer.subscription.updated", sub, customer, "price_pro", "active", P2, P2[0]
        ),
        ev.invoice_paid(sub, customer, "price_pro", P2, P2[0] + 1),
        ev.subscription(
            "customer.subscription.deleted", sub, customer, "price_pro", "canceled", P2, P2[0] + DAY
        ),
    ]


def test_payment_link_lifecycle_changes_what_authorize_answers(
    stripe_flow: Any, clock: FakeClock
) -> None:
    flow = stripe_flow
    checkout, created, paid, upgrade, renewal, renewal_paid, deleted = lifecycle(
        Events(), "u1", "cus_1", "sub_1"
    )
    assert not flow.authorize("u1", "exports", 50)

    result = deliver(flow, checkout)
    assert (result.action, result.user_id, result.type) == (
        "applied",
        "u1",
        "checkout.session.completed",
    )
    profile = flow.get_profile("u1")
    assert profile.stripe_customer_id == "cus_1"
    assert profile.email == "u1@example.com"
    assert not flow.authorize("u1", "exports", 50)  # paid, but no subscription event yet

    assert deliver(flow, created).action == "applied"
    assert deliver(flow, paid).action == "applied"
    assert flow.authorize("u1", "exports", 50)
    assert not flow.authorize("u1", "exports", 500)
    assert flow.get_user_plan("u1").name == "Basic"

    assert deliver(flow, upgrade).action == "applied"
    assert flow.authorize("u1", "exports", 500)
    profile = flow.get_profile("u1")
    assert (profile.plan, profile.subscription_status) == ("price_pro", "active")
    assert (profile.current_period_start, profile.current_period_end) == (at(P1[0]), at(P1[1]))

    # billing_cycle quotas follow the customer's own period: used up, then renewed.
    assert flow.consume("u1", "reports", 2).allowed
    assert not flow.authorize("u1", "reports")
    clock.set(at(P2[0] + 60))
    assert deliver(flow, renewal).action == "applied"
    assert deliver(flow, renewal_paid).action == "applied"
    assert flow.get_profile("u1").current_period_end == at(P2[1])
    assert flow.authorize("u1", "reports", 2)

    assert deliver(flow, deleted).action == "applied"
    assert flow.get_profile("u1").subscription_status == "canceled"
    assert flow.get_user_plan("u1").name == "Free"
    assert not flow.authorize("u1", "exports", 50)
    assert flow.authorize("u1", "exports", 3)


def _state(flow: Any, user: str) -> tuple[Any, ...]:
    p = flow.get_profile(user)
    return (
        p.plan,
        p.subscription_status,
        p.current_period_start,
        p.current_period_end,
        p.email == f"{user}@example.com",
        flow.get_user_plan(user).name,
    )


def test_duplicates_and_any_order_end_in_the_same_state(stripe_flow: Any) -> None:
    flow = stripe_flow
    for event in lifecycle(Events("_ref"), "ref", "cus_ref", "sub_ref"):
        deliver(flow, event)
    expected = _state(flow, "ref")
    assert expected[:2] == ("price_pro", "canceled")

    for seed in range(6):
        ev = Events(f"_s{seed}")
        user, customer, sub = f"user{seed}", f"cus_{seed}", f"sub_{seed}"
        events = lifecycle(ev, user, customer, sub)
        rng = random.Random(seed)
        shuffled = events + rng.sample(events, 3)  # three delivered twice
        rng.shuffle(shuffled)
        seen: set[str] = set()
        for event in shuffled:
            result = deliver(flow, event)
            assert (result.action == "duplicate") == (event["id"] in seen)
            seen.add(event["id"])
        assert _state(flow, user) == expected, f"seed {seed}"
        assert flow.get_profile(user).stripe_customer_id == customer


def test_subscription_before_checkout_is_kept_then_applied(stripe_flow: Any) -> None:
    flow = stripe_flow
    ev = Events()
    created = ev.subscription(
        "customer.subscription.created", "sub_9", "cus_9", "price_pro", "active", P1, T0 + 5
    )
    result = deliver(flow, created)
    assert (result.action, result.user_id) == ("pending", None)
    assert flow.get_profile("u9") is None

    result = deliver(flow, ev.checkout("cus_9", T0 + 6, client_reference_id="u9"))
    assert (result.action, result.user_id) == ("applied", "u9")
    assert flow.get_profile("u9").plan == "price_pro"
    assert flow.authorize("u9", "exports", 500)


def test_checkout_without_client_reference_id_matches_the_email(stripe_flow: Any) -> None:
    flow = stripe_flow
    flow.update_profile("u2", email="Grace@Example.com")
    flow.update_profile("u3", email="twin@example.com")
    flow.update_profile("u4", email="twin@example.com")
    ev = Events()
    result = deliver(flow, ev.checkout("cus_2", T0, email="grace@example.com"))
    assert (result.action, result.user_id) == ("applied", "u2")
    assert flow.get_profile("u2").stripe_customer_id == "cus_2"

    # Two profiles with the email, or none: nobody is guessed.
    twin = deliver(flow, ev.checkout("cus_3", T0, email="twin@example.com"))
    assert reason_of(twin) == ("ignored", "no_user")
    nobody = deliver(flow, ev.checkout("cus_4", T0, email="nobody@example.com"))
    assert reason_of(nobody) == ("ignored", "no_user")
    assert flow.get_profile("u3").stripe_customer_id is None


def test_profile_linked_elsewhere_by_customer_id(stripe_flow: Any) -> None:
    """A profile whose stripe_customer_id another app (saas-subscription-helper) wrote."""
    flow = stripe_flow
    flow.update_profile("u5", stripe_customer_id="cus_5")
    event = Events().subscription(
        "customer.subscription.created", "sub_5", "cus_5", "price_basic", "active", P1, T0
    )
    assert deliver(flow, event).user_id == "u5"
    assert flow.get_user_plan("u5").name == "Basic"


def test_older_events_never_overwrite_newer_ones(stripe_flow: Any) -> None:
    flow = stripe_flow
    ev = Events()
    deliver(flow, ev.checkout("cus_6", T0, client_reference_id="u6"))
    upgrade = ev.subscription(
        "customer.subscription.updated", "sub_6", "cus_6", "price_pro", "active", P1, T0 + 100
    )
    older = ev.subscription(
        "customer.subscription.updated", "sub_6", "cus_6", "price_basic", "active", P1, T0 + 50
    )
    assert deliver(flow, upgrade).action == "applied"
    assert reason_of(deliver(flow, older)) == ("ignored", "stale")
    assert flow.get_profile("u6").plan == "price_pro"

    # Same second: subscription.created is older than any other event of the subscription.
    same_second = ev.subscription(
        "customer.subscription.created", "sub_6", "cus_6", "price_basic", "incomplete", P1, T0 + 100
    )
    assert reason_of(deliver(flow, same_second)) == ("ignored", "stale")

    # An invoice paid late for an earlier period does not move the period back.
    renewal = ev.subscription(
        "customer.subscription.updated", "sub_6", "cus_6", "price_pro", "past_due", P2, T0 + 200
    )
    deliver(flow, renewal)
    late = ev.invoice_paid("sub_6", "cus_6", "price_pro", P1, T0 + 300, legacy=True)
    assert reason_of(deliver(flow, late)) == ("ignored", "stale")
    assert flow.get_profile("u6").current_period_end == at(P2[1])

    # A canceled subscription never comes back, whatever arrives later.
    gone = ev.subscription(
        "customer.subscription.deleted", "sub_6", "cus_6", "price_pro", "canceled", P2, T0 + 400
    )
    assert deliver(flow, gone).action == "applied"
    ghost = ev.subscription(
        "customer.subscription.updated", "sub_6", "cus_6", "price_pro", "active", P2, T0 + 500
    )
    assert reason_of(deliver(flow, ghost)) == ("ignored", "stale")
    assert flow.get_profile("u6").subscription_status == "canceled"


def test_unpaid_falls_back_to_free_and_recovers(stripe_flow: Any) -> None:
    flow = stripe_flow
    ev = Events()
    deliver(flow, ev.checkout("cus_7", T0, client_reference_id="u7"))
    for created, status in ((T0 + 1, "active"), (T0 + 2, "unpaid")):
        deliver(
            flow,
            ev.subscription(
                "customer.subscription.updated", "sub_7", "cus_7", "price_pro", status, P1, created
            ),
        )
    assert flow.get_user_plan("u7").name == "Free"
    deliver(flow, ev.invoice_paid("sub_7", "cus_7", "price_pro", P1, T0 + 3))
    assert flow.get_user_plan("u7").name == "Pro"


def test_a_second_subscription_is_the_one_shown(stripe_flow: Any) -> None:
    """Buying another Payment Link makes a second subscription; canceling the first later must
    not drop the user to the free plan."""
    flow = stripe_flow
    ev = Events()
    deliver(flow, ev.checkout("cus_8", T0, client_reference_id="u8"))
    basic = ev.subscription(
        "customer.subscription.created", "sub_8a", "cus_8", "price_basic", "active", P1, T0
    )
    pro = ev.subscription(
        "customer.subscription.created",
        "sub_8b",
        "cus_8",
        "price_pro",
        "active",
        P1,
        T0 + DAY,
        started=T0 + DAY,
    )
    cancel_basic = ev.subscription(
        "customer.subscription.deleted",
        "sub_8a",
        "cus_8",
        "price_basic",
        "canceled",
        P1,
        T0 + DAY + 5,
    )
    for event in (basic, pro, cancel_basic):
        deliver(flow, event)
    assert flow.get_user_plan("u8").name == "Pro"


def test_legacy_api_version_payloads(stripe_flow: Any) -> None:
    flow = stripe_flow
    ev = Events()
    deliver(flow, ev.checkout("cus_l", T0, client_reference_id="ul"))
    deliver(
        flow,
        ev.subscription(
            "customer.subscription.created",
            "sub_l",
            "cus_l",
            "price_basic",
            "active",
            P1,
            T0,
            legacy=True,
        ),
    )
    assert flow.get_profile("ul").current_period_end == at(P1[1])
    deliver(flow, ev.invoice_paid("sub_l", "cus_l", "price_pro", P2, T0 + MONTH, legacy=True))
    profile = flow.get_profile("ul")
    assert (profile.plan, profile.current_period_start) == ("price_pro", at(P2[0]))


def test_price_events_sync_prices_and_deleted_prices_stay_readable(stripe_flow: Any) -> None:
    flow = stripe_flow
    ev = Events()
    result = deliver(flow, ev.price("price.updated", "price_pro", 4200, T0))
    assert result.action == "applied"
    assert str(flow.get_user_plan("nobody").name) == "Free"
    pro = next(p for p in flow.get_plans() if p.stripe_price_id == "price_pro")
    assert (str(pro.price_amount), pro.price_currency) == ("42.00", "usd")

    deliver(flow, ev.price("price.updated", "price_basic", 1500, T0, currency="jpy"))
    basic = next(p for p in flow.get_plans() if p.stripe_price_id == "price_basic")
    assert (str(basic.price_amount), basic.price_currency) == ("1500.00", "jpy")

    assert deliver(flow, ev.price("price.deleted", "price_pro", 4200, T0 + 1)).action == "applied"
    assert any(p.stripe_price_id == "price_pro" for p in flow.get_plans())
    flow.assign_plan("u10", "price_pro")
    assert flow.get_user_plan("u10").name == "Pro"


def test_unknown_event_types_are_acknowledged(stripe_flow: Any) -> None:
    flow = stripe_flow
    event = Events().event("customer.created", {"id": "cus_x", "object": "customer"}, T0)
    assert reason_of(deliver(flow, event)) == ("ignored", "not_used")
    assert reason_of(deliver(flow, event)) == ("duplicate", None)


def test_manual_integration_handles_only_prices(make_flow: Any, store: Store) -> None:
    flow = make_flow(stripe_webhook_secret=SECRET, manual_stripe_integration=True)
    flow.create_plan("Free", is_free=True, limits={"exports": 3})
    flow.create_plan("Pro", stripe_price_id="price_pro", price_amount=30, limits={"exports": 1000})
    ev = Events()
    checkout = deliver(flow, ev.checkout("cus_m", T0, client_reference_id="um"))
    assert reason_of(checkout) == ("ignored", "not_used")
    sub = ev.subscription(
        "customer.subscription.created", "sub_m", "cus_m", "price_pro", "active", P1, T0
    )
    assert deliver(flow, sub).action == "ignored"
    assert flow.get_profile("um") is None
    assert deliver(flow, ev.price("price.updated", "price_pro", 3500, T0)).action == "applied"
    assert str(flow.get_plans()[1].price_amount) == "35.00"
    flow.update_profile("um", plan="price_pro", subscription_status="active")
    assert flow.authorize("um", "exports", 500)


def test_replay_of_1000_events_processes_each_once(stripe_flow: Any) -> None:
    flow = stripe_flow
    ev = Events()
    events: list[dict[str, Any]] = []
    for n in range(125):  # 125 customers x 8 events
        user, customer, sub = f"r{n}", f"cus_r{n}", f"sub_r{n}"
        events += lifecycle(ev, user, customer, sub)
        events.append(ev.price("price.updated", "price_pro", 3000 + n, T0 + n))
    assert len(events) == 1000
    first = [deliver(flow, e).action for e in events]
    assert "duplicate" not in first
    again = [deliver(flow, e).action for e in random.Random(1).sample(events, len(events))]
    assert again == ["duplicate"] * 1000
    assert _state(flow, "r7")[:2] == ("price_pro", "canceled")


def test_plan_resolver_decides_the_plan(make_flow: Any, store: Store) -> None:
    plans = {"alice": "price_pro", "bob": None}
    flow = make_flow(plan_resolver=plans.get)
    flow.create_plan("Free", is_free=True, limits={"exports": 3})
    pro = flow.create_plan("Pro", stripe_price_id="price_pro", limits={"exports": 1000})
    assert flow.authorize("alice", "exports", 500)
    assert not flow.authorize("bob", "exports", 5)
    plans["bob"] = pro.id  # a plan id works too
    assert flow.get_user_plan("bob").name == "Pro"
    plans["bob"] = "price_gone"
    with pytest.raises(UsageFlowError) as err:
        flow.authorize("bob", "exports")
    assert err.value.code is ErrorCodes.USAGE_LIMIT_ERROR


@pytest.mark.asyncio
async def test_async_plan_resolver() -> None:
    async def resolve(user_id: str) -> str | None:
        return "price_pro" if user_id == "alice" else None

    flow = AsyncUsageFlow("memory://", plan_resolver=resolve)
    await flow.create_plan("Free", is_free=True, limits={"exports": 3})
    await flow.create_plan("Pro", stripe_price_id="price_pro", limits={"exports": 1000})
    assert await flow.authorize("alice", "exports", 500)
    assert not await flow.authorize("bob", "exports", 5)

    sync_flow = UsageFlow(flow.store, plan_resolver=resolve)
    with pytest.raises(UsageFlowError) as err:
        sync_flow.authorize("alice", "exports")
    assert err.value.code is ErrorCodes.USAGE_CONFIG_ERROR


def test_a_newer_checkout_moves_the_customer_and_an_older_one_does_not(stripe_flow: Any) -> None:
    flow = stripe_flow
    ev = Events()
    older = ev.checkout("cus_c", T0, client_reference_id="first")
    newer = ev.checkout("cus_c", T0 + 10, client_reference_id="second")
    assert deliver(flow, newer).action == "applied"
    assert reason_of(deliver(flow, older)) == ("ignored", "stale")
    assert flow.get_profile("second").stripe_customer_id == "cus_c"
    assert flow.get_profile("first") is None


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_delivery_order_gives_one_state(data: st.DataObject) -> None:
    """Hypothesis: a lifecycle plus a second subscription and price changes, delivered in any
    order with any duplicates, always ends in the state of the in-order delivery."""
    ev = Events()
    events = lifecycle(ev, "h", "cus_h", "sub_h")
    events.append(
        ev.subscription(
            "customer.subscription.created",
            "sub_h2",
            "cus_h",
            "price_basic",
            "active",
            P2,
            P2[0] + 2 * DAY,
            started=P2[0] + 2 * DAY,
        )
    )
    # Stripe never changes a price's amount (it makes a new price), so price events agree.
    events += [ev.price("price.updated", "price_pro", 3100, T0 + n) for n in range(2)]

    def final(order: list[dict[str, Any]]) -> tuple[Any, ...]:
        flow = UsageFlow("memory://", stripe_webhook_secret=SECRET)
        flow.create_plan("Free", is_free=True)
        flow.create_plan("Basic", stripe_price_id="price_basic")
        flow.create_plan("Pro", stripe_price_id="price_pro")
        for event in order:
            deliver(flow, event)
        return (*_state(flow, "h"), flow.get_profile("h").stripe_customer_id)

    expected = final(events)
    assert expected[0] == "price_basic" and expected[1] == "active"
    order = data.draw(st.permutations(events))
    extra = data.draw(st.lists(st.sampled_from(events), max_size=4))
    positions = [data.draw(st.integers(0, len(order))) for _ in extra]
    for event, at_index in zip(extra, positions, strict=True):
        order.insert(at_index, event)
    assert final(order) == expected


@pytest.mark.parametrize("invoice_first", [True, False])
def test_a_trial_stays_trialing_when_its_zero_invoice_is_paid(
    stripe_flow: Any, invoice_first: bool
) -> None:
    flow = stripe_flow
    ev = Events()
    deliver(flow, ev.checkout("cus_t", T0, client_reference_id="ut"))
    created = ev.subscription(
        "customer.subscription.created", "sub_t", "cus_t", "price_pro", "trialing", P1, T0 + 1
    )
    paid = ev.invoice_paid("sub_t", "cus_t", "price_pro", P1, T0 + 1)
    for event in (paid, created) if invoice_first else (created, paid):
        deliver(flow, event)
    assert flow.get_profile("ut").subscription_status == "trialing"
    assert flow.get_user_plan("ut").name == "Pro"


# -- prices no plan sells ----------------------------------------------------------------------
def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "usageflow" and r.levelno == logging.WARNING]


def test_a_price_event_for_a_price_no_plan_sells_is_ignored_and_logged(
    stripe_flow: Any, caplog: pytest.LogCaptureFixture
) -> None:
    flow = stripe_flow
    plans = flow.get_plans()
    event = Events().price("price.updated", "price_unsold", 4200, T0)
    with caplog.at_level(logging.WARNING, logger="usageflow"):
        result = deliver(flow, event)
        again = deliver(flow, event)
    assert reason_of(result) == ("ignored", "unknown_price")
    assert result.warning is not None
    assert "stripe_price_id='price_unsold'" in result.warning
    logged = warnings_logged(caplog)
    assert [r.getMessage() for r in logged] == [result.warning]  # once: not for the redelivery
    assert logged[0].stripe_price_id == "price_unsold"
    assert (again.action, again.warning) == ("duplicate", None)
    assert flow.get_plans() == plans


PLANS_TOML = """
[[plans]]
name = "Team"
stripe_price_id = "price_team"
limits = { exports = 5000 }
"""


@pytest.mark.parametrize("create", ["create_plan", "plans load", "sync_plans_from_stripe"])
def test_a_subscription_to_a_price_no_plan_sells_warns_and_follows_the_plan_created_later(
    stripe_flow: Any,
    make_flow: Any,
    store: Store,
    create: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    flow = stripe_flow
    ev = Events()
    deliver(flow, ev.checkout("cus_n", T0, client_reference_id="un"))
    created = ev.subscription(
        "customer.subscription.created", "sub_n", "cus_n", "price_team", "active", P1, T0 + 1
    )
    with caplog.at_level(logging.WARNING, logger="usageflow"):
        result = deliver(flow, created)
    assert (result.action, result.user_id, result.reason) == ("applied", "un", None)
    assert result.warning is not None
    assert "'price_team'" in result.warning and "stripe_price_id='price_team'" in result.warning
    logged = warnings_logged(caplog)
    assert [r.getMessage() for r in logged] == [result.warning]
    assert logged[0].stripe_price_id == "price_team"
    # Recorded on the profile, but no plan sells it yet: the free plan applies.
    profile = flow.get_profile("un")
    assert (profile.plan, profile.subscription_status) == ("price_team", "active")
    assert flow.get_user_plan("un").name == "Free"
    assert not flow.authorize("un", "exports", 4000)

    reader = flow
    if create == "create_plan":
        flow.create_plan("Team", stripe_price_id="price_team", limits={"exports": 5000})
    elif create == "plans load":
        # What `usageflow plans load` runs, from another flow (another process): the app's
        # flows see it once their cache expires, as a new flow does at once.
        load_plans(UsageFlow(store), PLANS_TOML)
        reader = make_flow()
    else:
        monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
        with stripe_server() as server:
            monkeypatch.setattr(stripe, "api_base", server.url)
            server.data.products = {
                "prod_team": {
                    "id": "prod_team",
                    "object": "product",
                    "active": True,
                    "name": "Team",
                    "metadata": {"usageflow:exports": "5000"},
                }
            }
            server.data.prices = [
                {
                    "id": "price_team",
                    "object": "price",
                    "active": True,
                    "currency": "usd",
                    "product": "prod_team",
                    "recurring": {"interval": "month"},
                    "type": "recurring",
                    "unit_amount": 9900,
                    "metadata": {},
                }
            ]
            flow.sync_plans_from_stripe()
    # No further webhook: the profile's price now names a plan.
    assert reader.get_user_plan("un").name == "Team"
    assert reader.authorize("un", "exports", 5000)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="usageflow"):
        renewal = ev.subscription(
            "customer.subscription.updated", "sub_n", "cus_n", "price_team", "active", P2, P2[0]
        )
        assert (deliver(flow, renewal).warning, warnings_logged(caplog)) == (None, [])


def test_a_pending_subscription_to_an_unsold_price_warns_an_older_or_ended_one_does_not(
    stripe_flow: Any, caplog: pytest.LogCaptureFixture
) -> None:
    flow = stripe_flow
    ev = Events()
    with caplog.at_level(logging.WARNING, logger="usageflow"):
        pending = deliver(
            flow,
            ev.subscription(
                "customer.subscription.created", "sub_p", "cus_p", "price_x", "active", P1, T0 + 5
            ),
        )
        older = deliver(
            flow,
            ev.subscription(
                "customer.subscription.created", "sub_p", "cus_p", "price_y", "active", P1, T0
            ),
        )
        ended = deliver(
            flow,
            ev.subscription(
                "customer.subscription.deleted", "sub_q", "cus_p", "price_z", "canceled", P1, T0
            ),
        )
    assert (pending.action, pending.user_id) == ("pending", None)
    assert pending.warning is not None and "stripe_price_id='price_x'" in pending.warning
    assert (reason_of(older), older.warning) == (("ignored", "stale"), None)
    assert (ended.action, ended.warning) == ("pending", None)
    assert [r.getMessage() for r in warnings_logged(caplog)] == [pending.warning]
