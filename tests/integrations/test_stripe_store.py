"""The Stripe store methods, called directly: the contract a store must keep (see
``Store.apply_stripe_event``, ``stripe_export_batch`` and ``advance_stripe_cursor`` in
``usageflow/stores/base.py``), over every store of the conformance table."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from usageflow import ops
from usageflow.ops import StripeLink, StripePrice, StripeSubscription
from usageflow.stores.base import Store

NOW = datetime(2024, 1, 15, 12, tzinfo=timezone.utc)


@pytest.fixture
def s(store: Store) -> Store:
    return store


def sub(
    key: str,
    *,
    sub_id: str = "sub_1",
    customer: str = "cus_1",
    plan: str = "price_a",
    status: str = "active",
    started: datetime | None = NOW,
    ended: bool = False,
    end: datetime | None = NOW + timedelta(days=30),
    guard: bool = False,
) -> StripeSubscription:
    return StripeSubscription(
        subscription_id=sub_id,
        customer_id=customer,
        order_key=key,
        started=started,
        ended=ended,
        plan=plan,
        status=status,
        current_period_start=NOW,
        current_period_end=end,
        period_guard=guard,
    )


def apply(store: Store, event_id: str | None, **changes: object) -> tuple[str, str | None]:
    result = store.call(
        ops.apply_stripe_event(event_id=event_id, event_type="t", created=NOW, now=NOW, **changes)
    )
    return result.action, result.user_id


def link(customer: str, user: str | None, key: str, email: str | None = None) -> StripeLink:
    return StripeLink(customer_id=customer, user_id=user, email=email, order_key=key)


def test_an_event_id_is_processed_once(s: Store) -> None:
    assert apply(s, "evt_1", link=link("cus_1", "u1", "1")) == ("applied", "u1")
    assert apply(s, "evt_1", link=link("cus_2", "u2", "2")) == ("duplicate", "u1")
    assert s.call(ops.get_profile(user_id="u2")) is None
    assert apply(s, "evt_2") == ("ignored", None)
    assert apply(s, "evt_2") == ("duplicate", None)
    # Without an event id nothing is recorded: never a duplicate.
    assert apply(s, None, link=link("cus_3", "u3", "1"))[0] == "applied"
    assert apply(s, None, link=link("cus_3", "u3", "1"))[0] == "stale"


def test_price_changes_update_the_plan(s: Store) -> None:
    s.call(
        ops.upsert_plan(
            name="Pro",
            stripe_price_id="price_a",
            price_amount=Decimal("10.00"),
            price_currency="usd",
            is_free=False,
            payment_link_url=None,
        )
    )
    change = StripePrice("price_a", Decimal("12.50"), "eur")
    assert apply(s, "evt_p", price=change) == ("applied", None)
    plan = next(p for p in s.call(ops.load_catalog()) if p.stripe_price_id == "price_a")
    assert (plan.price_amount, plan.price_currency) == (Decimal("12.50"), "eur")


def test_links_by_id_or_single_email(s: Store) -> None:
    s.call(ops.upsert_profile(user_id="e1", fields={"email": "Ada@Example.com"}))
    s.call(ops.upsert_profile(user_id="e2", fields={"email": "twin@example.com"}))
    s.call(ops.upsert_profile(user_id="e3", fields={"email": "twin@example.com"}))
    assert apply(s, "a", link=link("cus_a", None, "1", "ada@EXAMPLE.com")) == ("applied", "e1")
    assert apply(s, "b", link=link("cus_b", None, "1", "twin@example.com")) == ("ignored", None)
    assert apply(s, "c", link=link("cus_c", None, "1", None)) == ("ignored", None)
    assert apply(s, "d", link=link("cus_d", "new", "1", "new@example.com")) == ("applied", "new")
    profile = s.call(ops.get_profile(user_id="new"))
    assert profile is not None
    assert (profile.email, profile.stripe_customer_id) == ("new@example.com", "cus_d")
    # An email never replaces one the profile has.
    apply(s, "e", link=link("cus_e", "e1", "2", "other@example.com"))
    profile = s.call(ops.get_profile(user_id="e1"))
    assert profile is not None and profile.email == "Ada@Example.com"


def test_subscription_ordering_and_guard(s: Store) -> None:
    apply(s, "l", link=link("cus_1", "u1", "1"))
    assert apply(s, "1", subscription=sub("0|5", plan="price_b")) == ("applied", "u1")
    assert apply(s, "2", subscription=sub("0|4", plan="price_old")) == ("stale", "u1")
    assert apply(s, "3", subscription=sub("0|5", plan="price_same_key")) == ("stale", "u1")
    later_end = NOW + timedelta(days=60)
    assert apply(s, "4", subscription=sub("0|6", plan="price_c", end=later_end))[0] == "applied"
    # period_guard: a newer key with an earlier period end is stale.
    assert apply(s, "5", subscription=sub("0|7", plan="price_d", guard=True))[0] == "stale"
    profile = s.call(ops.get_profile(user_id="u1"))
    assert profile is not None
    assert (profile.plan, profile.current_period_end) == ("price_c", later_end)
    assert profile.stripe_customer_id == "cus_1"


def test_pending_until_linked_then_applied(s: Store) -> None:
    assert apply(s, "1", subscription=sub("0|1", customer="cus_p")) == ("pending", None)
    assert s.call(ops.get_profile(user_id="up")) is None
    assert apply(s, "2", link=link("cus_p", "up", "1")) == ("applied", "up")
    profile = s.call(ops.get_profile(user_id="up"))
    assert profile is not None and (profile.plan, profile.subscription_status) == (
        "price_a",
        "active",
    )


def test_found_through_profiles_stripe_customer_id(s: Store) -> None:
    s.call(ops.upsert_profile(user_id="z2", fields={"stripe_customer_id": "cus_z"}))
    s.call(ops.upsert_profile(user_id="z1", fields={"stripe_customer_id": "cus_z"}))
    assert apply(s, "1", subscription=sub("0|1", customer="cus_z")) == ("applied", "z1")


def test_the_live_subscription_that_started_last_is_shown(s: Store) -> None:
    apply(s, "l", link=link("cus_1", "u1", "1"))
    apply(s, "l2", link=link("cus_2", "u1", "2"))
    later = NOW + timedelta(days=1)
    apply(s, "1", subscription=sub("0|1", sub_id="sub_old", plan="price_old"))
    apply(s, "2", subscription=sub("0|1", sub_id="sub_new", customer="cus_2", started=later))
    apply(s, "3", subscription=sub("1|2", sub_id="sub_old", status="canceled", ended=True))
    profile = s.call(ops.get_profile(user_id="u1"))
    assert profile is not None
    assert (profile.plan, profile.stripe_customer_id) == ("price_a", "cus_2")
    # When every subscription has ended, the one that started last is shown (ended).
    apply(s, "4", subscription=sub("1|3", sub_id="sub_new", customer="cus_2", started=later,
                                   status="canceled", ended=True))  # fmt: skip
    profile = s.call(ops.get_profile(user_id="u1"))
    assert profile is not None
    assert (profile.subscription_status, profile.stripe_customer_id) == ("canceled", "cus_2")


def test_a_missing_start_is_kept_from_a_subscription_event(s: Store) -> None:
    apply(s, "l", link=link("cus_1", "u1", "1"))
    apply(s, "l2", link=link("cus_2", "u1", "2"))
    later = NOW + timedelta(days=1)
    # An invoice-only state (no start) loses to one with a start...
    apply(s, "1", subscription=sub("0|5", sub_id="sub_x", plan="price_x", started=None))
    apply(s, "2", subscription=sub("0|1", sub_id="sub_y", customer="cus_2", plan="price_y"))
    assert s.call(ops.get_profile(user_id="u1")).plan == "price_y"  # type: ignore[union-attr]
    # ...until a stale subscription event of it still fills the start in.
    apply(s, "3", subscription=sub("0|2", sub_id="sub_x", plan="price_x", started=later))
    apply(s, "4", subscription=sub("0|2", sub_id="sub_y", customer="cus_2", plan="price_y"))
    assert s.call(ops.get_profile(user_id="u1")).plan == "price_x"  # type: ignore[union-attr]


def test_links_order_per_customer(s: Store) -> None:
    assert apply(s, "1", link=link("cus_1", "b", "2")) == ("applied", "b")
    assert apply(s, "2", link=link("cus_1", "a", "1")) == ("stale", "a")
    assert s.call(ops.get_profile(user_id="a")) is None


def test_export_batches_and_cursor(s: Store) -> None:
    s.call(ops.upsert_profile(user_id="u1", fields={"stripe_customer_id": "cus_1"}))
    ids = []
    for n in range(5):
        charge = s.call(
            ops.charge(
                user_id="u1" if n % 2 == 0 else "u2",
                feature_name="tokens" if n < 4 else "other",
                credits=n + 1,
                event_type="usage",
                limit=None,
                window_start=None,
                now=NOW + timedelta(seconds=n),
                metadata=None,
                idempotency_key=None,
            )
        )
        assert charge.event is not None
        ids.append(charge.event.id)
    cursor, rows = s.call(ops.stripe_export_batch(meter="m", feature_name="tokens", limit=3))
    assert cursor == 0
    assert [(e.id, c) for e, c in rows] == [(ids[0], "cus_1"), (ids[1], None), (ids[2], "cus_1")]
    assert s.call(ops.advance_stripe_cursor(meter="m", event_id=ids[2])) == ids[2]
    assert (
        s.call(ops.advance_stripe_cursor(meter="m", event_id=ids[0])) == ids[2]
    )  # never backwards
    cursor, rows = s.call(ops.stripe_export_batch(meter="m", feature_name="tokens", limit=3))
    assert (cursor, [e.id for e, _ in rows]) == (ids[2], [ids[3]])
    _, rows = s.call(ops.stripe_export_batch(meter="other", feature_name=None, limit=10))
    assert [e.id for e, _ in rows] == ids
