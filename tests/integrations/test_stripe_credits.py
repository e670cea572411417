"""Credit packs bought through Stripe Payment Links: signed webhooks grant them once per
Checkout Session, whatever the order or the number of deliveries; a refund takes back what is
left (every store, sync and async API)."""

from __future__ import annotations

import itertools
import logging
from datetime import timedelta
from typing import Any

import pytest

from tests.support.stripe_events import DAY, MONTH, SECRET, T0, Events, deliver
from usageflow.stores.base import Store

from .test_stripe_webhooks import at


@pytest.fixture
def shop(make_flow: Any, store: Store) -> Any:
    """A pay-as-you-go AI product: a free plan without tokens, a plan with some, and packs."""
    flow = make_flow(stripe_webhook_secret=SECRET)
    flow.create_plan("Free", is_free=True, limits={"exports": 3})
    flow.create_plan(
        "Basic",
        stripe_price_id="price_basic",
        payment_link_url="https://buy.stripe.com/test_basic",
        limits={"exports": 100, "tokens": 1000},
    )
    flow.create_credit_pack(
        "10,000 tokens",
        credits={"tokens": 10_000},
        stripe_price_id="price_tokens",
        stripe_payment_link_id="plink_pack",
        payment_link_url="https://buy.stripe.com/test_tokens",
        expires_in_days=365,
    )
    flow.create_credit_pack(
        "50 exports",
        credits={"exports": 50},
        stripe_price_id="price_exports",
        stripe_payment_link_id="plink_exports",
        payment_link_url="https://buy.stripe.com/test_exports",
    )
    return flow


def test_a_paid_pack_grants_its_credits_once_per_session(shop: Any) -> None:
    ev = Events()
    completed = ev.pack_checkout("a", T0 + 5, client_reference_id="u1", payment_intent="pi_a")
    result = deliver(shop, completed)
    assert (result.action, result.user_id) == ("applied", "u1")
    [grant] = result.grants
    assert (grant.feature_name, grant.credits, grant.remaining) == ("tokens", 10_000, 10_000)
    assert (grant.source, grant.reason, grant.payment_ref) == ("stripe", "10,000 tokens", "pi_a")
    assert grant.expires_at == at(T0 + 5) + timedelta(days=365)
    assert shop.get_credit_balance("u1", "tokens") == 10_000

    assert deliver(shop, completed).action == "duplicate"  # the same event again
    # Another event about the same session (Stripe sends both for a paid session).
    paid = ev.pack_checkout(
        "a",
        T0 + 6,
        type="checkout.session.async_payment_succeeded",
        client_reference_id="u1",
        payment_intent="pi_a",
    )
    again = deliver(shop, paid)
    assert (again.action, again.reason) == ("ignored", "already_granted")
    assert [g.id for g in again.grants] == [grant.id]
    assert shop.get_credit_balance("u1", "tokens") == 10_000
    assert len(shop.list_grants("u1")) == 1


def test_an_unpaid_session_grants_when_its_payment_succeeds(shop: Any) -> None:
    ev = Events()
    pending = ev.pack_checkout("b", T0 + 5, client_reference_id="u1", payment_status="unpaid")
    assert deliver(shop, pending).grants == []
    assert shop.get_credit_balance("u1", "tokens") == 0
    succeeded = ev.pack_checkout(
        "b", T0 + DAY, type="checkout.session.async_payment_succeeded", client_reference_id="u1"
    )
    assert deliver(shop, succeeded).action == "applied"
    assert shop.get_credit_balance("u1", "tokens") == 10_000
    failed = ev.pack_checkout(
        "b",
        T0 + DAY,
        type="checkout.session.async_payment_failed",
        client_reference_id="u1",
        payment_status="unpaid",
    )
    assert deliver(shop, failed).action == "ignored"
    assert shop.get_credit_balance("u1", "tokens") == 10_000


def test_events_in_any_order_grant_once(shop: Any) -> None:
    """The completed session, its payment, a subscription of the same customer and redeliveries,
    delivered in every order: one grant, the same balance."""
    for n, order in enumerate(itertools.permutations(range(3))):
        ev = Events(suffix=f"-{n}")
        user, customer = f"user{n}", f"cus_{n}"
        events = [
            ev.pack_checkout(
                "c", T0 + 5, client_reference_id=user, customer=customer, payment_intent=f"pi_{n}"
            ),
            ev.pack_checkout(
                "c",
                T0 + 7,
                type="checkout.session.async_payment_succeeded",
                client_reference_id=user,
                customer=customer,
                payment_intent=f"pi_{n}",
            ),
            ev.subscription(
                "customer.subscription.created",
                f"sub_{n}",
                customer,
                "price_basic",
                "active",
                (T0, T0 + MONTH),
                T0 + 6,
            ),
        ]
        for i in [*order, *order]:
            deliver(shop, events[i])
        assert shop.get_credit_balance(user, "tokens") == 10_000
        assert len(shop.list_grants(user)) == 1
        assert shop.get_user_plan(user).name == "Basic"  # the subscription links as usual
        usage = shop.fetch_usage(user, "tokens")  # the plan's 1000, then the pack's
        assert (usage.limit, usage.remaining, usage.credit_balance) == (1000, 11_000, 10_000)


def test_the_buyer_is_the_customer_linked_before_or_the_email(shop: Any) -> None:
    ev = Events()
    deliver(shop, ev.checkout("cus_9", T0 + 1, client_reference_id="u9"))  # subscribed before
    result = deliver(shop, ev.pack_checkout("d", T0 + 5, customer="cus_9"))
    assert (result.action, result.user_id) == ("applied", "u9")
    shop.update_profile("u8", email="eight@example.com")
    by_email = deliver(shop, ev.pack_checkout("e", T0 + 6, email="Eight@example.com"))
    assert by_email.user_id == "u8"
    nobody = deliver(shop, ev.pack_checkout("f", T0 + 7, email="who@example.com"))
    assert (nobody.action, nobody.reason, nobody.grants) == ("ignored", "no_user", [])


def test_line_items_map_prices_times_quantity_to_packs(shop: Any) -> None:
    ev = Events()
    event = ev.pack_checkout(
        "g",
        T0 + 5,
        payment_link=None,
        client_reference_id="u1",
        line_items=[("price_exports", 3), ("price_tokens", 1), ("price_unknown", 2)],
    )
    result = deliver(shop, event)
    assert {g.feature_name: g.credits for g in result.grants} == {"exports": 150, "tokens": 10_000}
    assert result.grants[0].reason == "50 exports, 10,000 tokens"


def test_a_refund_takes_back_what_is_left_and_says_what_it_could_not(
    shop: Any, caplog: pytest.LogCaptureFixture
) -> None:
    ev = Events()
    deliver(shop, ev.pack_checkout("h", T0 + 5, client_reference_id="u1", payment_intent="pi_h"))
    assert shop.consume("u1", "tokens", 4_000).allowed  # 0 from Free's plan: the pack pays
    half = deliver(shop, ev.charge_refunded("pi_h", 250, T0 + DAY))  # half: 5,000 back
    assert (half.action, half.user_id, half.unrecovered) == ("applied", "u1", {})
    assert shop.get_credit_balance("u1", "tokens") == 1_000
    [grant] = shop.list_grants("u1")
    assert (grant.remaining, grant.revoked) == (1_000, 5_000)

    deliver(shop, ev.pack_checkout("i", T0 + 6, client_reference_id="u1", payment_intent="pi_i"))
    shop.consume("u1", "tokens", 4_000)  # 1,000 from the first pack, 3,000 from this one
    with caplog.at_level(logging.WARNING, logger="usageflow"):
        full = deliver(shop, ev.charge_refunded("pi_i", 500, T0 + DAY))
    assert full.unrecovered == {"tokens": 3_000}
    assert full.warning is not None and "3000 tokens" in full.warning
    assert "already spent" in caplog.text
    assert shop.get_credit_balance("u1", "tokens") == 0
    again = deliver(shop, ev.charge_refunded("pi_i", 500, T0 + DAY + 1))  # nothing more
    assert (again.action, again.unrecovered) == ("ignored", {})
    other = deliver(shop, ev.charge_refunded("pi_subscription", 500, T0 + DAY))
    assert (other.action, other.reason) == ("ignored", "not_used")
