"""Plan sync, reconcile and meter export against a local Stripe API (tests/support/
stripe_server.py), with the real ``stripe`` library pointed at it through ``stripe.api_base``.

Every test runs on each store and with the sync and the async API (the async flow uses the
library's ``*_async`` methods over httpx).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import stripe

from tests.support.stripe_events import DAY, MONTH, SECRET, T0, Events, deliver
from tests.support.stripe_server import API_KEY, StripeData, StripeServer, stripe_server
from usageflow.cli import main
from usageflow.errors import ErrorCodes, UsageFlowError
from usageflow.stores.base import Store
from usageflow.testing import FakeClock


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[StripeServer]:
    with stripe_server() as srv:
        monkeypatch.setattr(stripe, "api_base", srv.url)
        yield srv


@pytest.fixture
def api_flow(make_flow: Any, store: Store, server: StripeServer) -> Any:
    return make_flow(stripe_api_key=API_KEY, stripe_webhook_secret=SECRET)


def product(pid: str, name: str, metadata: dict[str, str], active: bool = True) -> dict[str, Any]:
    return {
        "id": pid,
        "object": "product",
        "active": active,
        "name": name,
        "metadata": metadata,
    }


def price(
    pid: str, product_id: str, amount: int, *, recurring: bool = True, nickname: str | None = None
) -> dict[str, Any]:
    return {
        "id": pid,
        "object": "price",
        "active": True,
        "currency": "usd",
        "nickname": nickname,
        "product": product_id,
        "recurring": {"interval": "month"} if recurring else None,
        "type": "recurring" if recurring else "one_time",
        "unit_amount": amount,
        "unit_amount_decimal": str(amount),
        "metadata": {},
    }


def catalog(data: StripeData) -> None:
    data.products = {
        "prod_free": product("prod_free", "Starter", {"usageflow:exports": "10"}),
        "prod_basic": product(
            "prod_basic",
            "Basic",
            {
                "usageflow:exports": "100",
                "usageflow:reports": "5",
                "usageflow:reports:period": "day",
                "usageflow:bad": "lots",
                "other_app:key": "x",
            },
        ),
        "prod_pro": product("prod_pro", "Pro", {"usageflow:exports": "unlimited"}),
        "prod_old": product("prod_old", "Legacy", {"usageflow:exports": "1"}, active=False),
        "prod_pack": product("prod_pack", "Credit pack", {}),
    }
    data.prices = [
        price("price_free", "prod_free", 0),
        price("price_basic", "prod_basic", 1000),
        price("price_pro", "prod_pro", 3000),
        price("price_pro_year", "prod_pro", 30000, nickname="yearly"),
        price("price_old", "prod_old", 500),
        price("price_pack", "prod_pack", 900, recurring=False),
    ]
    data.payment_links = [
        {"id": "plink_basic", "object": "payment_link", "active": True,
         "url": "https://buy.stripe.com/test_basic"},
        {"id": "plink_pro", "object": "payment_link", "active": True,
         "url": "https://buy.stripe.com/test_pro"},
        {"id": "plink_off", "object": "payment_link", "active": False,
         "url": "https://buy.stripe.com/test_off"},
    ]  # fmt: skip
    data.line_items = {
        "plink_basic": [{"id": "li_1", "object": "item", "price": price("price_basic", "x", 1)}],
        "plink_pro": [{"id": "li_2", "object": "item", "price": price("price_pro", "x", 1)}],
        "plink_off": [{"id": "li_3", "object": "item", "price": price("price_pro_year", "x", 1)}],
    }


# -- plans ---------------------------------------------------------------------------------------
def test_sync_plans_from_stripe(api_flow: Any, server: StripeServer) -> None:
    catalog(server.data)
    result = api_flow.sync_plans_from_stripe()
    plans = {p.stripe_price_id: p for p in api_flow.get_plans()}
    assert set(plans) == {"price_free", "price_basic", "price_pro", "price_pro_year"}
    assert len(result.plans) == 4

    free, basic, pro = plans["price_free"], plans["price_basic"], plans["price_pro"]
    assert (free.name, free.is_free, free.price_amount) == ("Starter", True, Decimal("0.00"))
    assert (basic.name, basic.price_amount, basic.price_currency) == (
        "Basic",
        Decimal("10.00"),
        "usd",
    )
    assert basic.payment_link_url == "https://buy.stripe.com/test_basic"
    assert {f: (lim.limit_value, lim.period) for f, lim in basic.limits.items()} == {
        "exports": (100, "current_month"),
        "reports": (5, "day"),
    }
    assert pro.limits["exports"].is_unlimited
    assert pro.payment_link_url == "https://buy.stripe.com/test_pro"
    assert plans["price_pro_year"].name == "Pro (yearly)"
    assert plans["price_pro_year"].payment_link_url is None  # its only link is inactive
    assert any("usageflow:bad" in w for w in result.warnings)
    assert any("price_pack" in w and "recurring" in w for w in result.warnings)
    assert any("price_old" in w and "archived" in w for w in result.warnings)
    assert ("GET", "/v1/payment_links/plink_basic/line_items") in server.data.requests

    # Idempotent: the same plans, updated in place.
    server.data.products["prod_basic"]["metadata"]["usageflow:exports"] = "150"
    api_flow.sync_plans_from_stripe()
    again = {p.stripe_price_id: p for p in api_flow.get_plans()}
    assert {p.id for p in again.values()} == {p.id for p in plans.values()}
    assert again["price_basic"].limits["exports"].limit_value == 150

    # The upgrade link a 402 answer carries: the plan's Payment Link, mapped back to the user.
    api_flow.update_profile("u1", email="ada@example.com")
    url = api_flow.upgrade_url("u1", feature_name="exports")
    assert url is not None and url.startswith("https://buy.stripe.com/test_basic?")
    query = parse_qs(urlsplit(url).query)
    assert query == {"client_reference_id": ["u1"], "prefilled_email": ["ada@example.com"]}


def test_sync_plans_paginates(api_flow: Any, server: StripeServer) -> None:
    data = server.data
    data.products = {"prod_a": product("prod_a", "A", {})}
    data.prices = [price(f"price_{n:03d}", "prod_a", 100 + n) for n in range(130)]
    result = api_flow.sync_plans_from_stripe()
    assert len(result.plans) == 130
    assert [r for r in data.requests if r[1] == "/v1/prices"] == [("GET", "/v1/prices")] * 2


def test_bad_api_key_is_an_error_without_the_key(
    make_flow: Any, store: Store, server: StripeServer
) -> None:
    flow = make_flow(stripe_api_key="sk_test_wrong_key_123456")
    with pytest.raises(UsageFlowError) as err:
        flow.sync_plans_from_stripe()
    assert err.value.code is ErrorCodes.USAGE_CONFIG_ERROR
    assert err.value.details["http_status"] == 401
    assert "sk_test_wrong_key_123456" not in str(err.value)


def test_reconcile_is_not_for_manual_integrations(
    make_flow: Any, store: Store, server: StripeServer
) -> None:
    flow = make_flow(stripe_api_key=API_KEY, manual_stripe_integration=True)
    with pytest.raises(UsageFlowError) as err:
        flow.reconcile()
    assert err.value.code is ErrorCodes.USAGE_CONFIG_ERROR
    assert server.data.requests == []


def test_no_api_key(make_flow: Any, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    monkeypatch.setattr(stripe, "api_key", None)
    with pytest.raises(UsageFlowError) as err:
        make_flow().reconcile()
    assert err.value.code is ErrorCodes.USAGE_CONFIG_ERROR


def test_cli_sync_stripe(
    tmp_path: Any,
    server: StripeServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    catalog(server.data)
    monkeypatch.setenv("STRIPE_API_KEY", API_KEY)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["plans", "sync-stripe", "--store", url]) == 0
    out = capsys.readouterr()
    assert "price_basic" in out.out and "Basic" in out.out
    assert "usageflow:bad" in out.err
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_nope")
    assert main(["plans", "sync-stripe", "--store", url]) == 1
    assert "sk_test_nope" not in capsys.readouterr().err


# -- reconcile --------------------------------------------------------------------------------
def sub_object(
    n: int, price_id: str, status: str, period: tuple[int, int], customer: str | None = None
) -> dict[str, Any]:
    event = Events().subscription(
        "customer.subscription.updated",
        f"sub_{n}",
        customer or f"cus_{n}",
        price_id,
        status,
        period,
        0,
    )
    obj: dict[str, Any] = event["data"]["object"]
    return obj


@pytest.fixture
def plans(api_flow: Any) -> Any:
    api_flow.create_plan("Free", is_free=True, limits={"exports": 3})
    api_flow.create_plan("Basic", stripe_price_id="price_basic", limits={"exports": 100})
    api_flow.create_plan("Pro", stripe_price_id="price_pro", limits={"exports": 1000})
    return api_flow


def test_reconcile_repairs_what_lost_webhooks_missed(
    plans: Any, server: StripeServer, clock: FakeClock
) -> None:
    flow = plans
    clock.set(clock() + timedelta(days=2))
    period = (T0, T0 + MONTH)
    data = server.data
    data.subscriptions = [
        sub_object(n, "price_pro" if n % 2 else "price_basic", "active", period) for n in range(150)
    ]
    data.subscriptions[3]["status"] = "canceled"
    for n in (3, *range(0, 150, 10)):
        flow.update_profile(f"user{n}", stripe_customer_id=f"cus_{n}")  # linked elsewhere
    # A checkout whose webhook was lost: reconcile links it from the session.
    data.checkout_sessions = [
        {"id": "cs_7", "object": "checkout.session", "status": "complete", "created": T0,
         "customer": "cus_7", "client_reference_id": "user7",
         "customer_details": {"email": "u7@example.com"}},
    ]  # fmt: skip
    # An older webhook applied a state that Stripe has since changed (basic -> pro).
    ev = Events("_webhook")
    deliver(flow, ev.checkout("cus_1", T0, client_reference_id="user1"))
    deliver(
        flow,
        ev.subscription(
            "customer.subscription.created", "sub_1", "cus_1", "price_basic", "active", period, T0
        ),
    )
    assert flow.get_user_plan("user1").name == "Basic"

    result = flow.reconcile()
    assert result.subscriptions == 150
    assert result.links == 1
    linked = {0, 1, 3, 7, *range(0, 150, 10)}
    assert result.applied == len(linked)
    assert result.pending == 150 - len(linked)
    assert flow.get_user_plan("user1").name == "Pro"
    assert flow.get_user_plan("user7").name == "Pro"
    assert flow.get_user_plan("user20").name == "Basic"
    assert flow.get_profile("user3").subscription_status == "canceled"
    assert flow.get_user_plan("user3").name == "Free"
    assert flow.authorize("user30", "exports", 50)
    assert flow.get_profile("user40").current_period_end.timestamp() == T0 + MONTH

    # Read again in the same second: nothing is newer. A later read rewrites the linked ones.
    again = flow.reconcile()
    assert (again.applied, again.stale, again.pending) == (0, 150, 0)
    clock.set(clock() + timedelta(hours=1))
    again = flow.reconcile()
    assert (again.applied, again.stale, again.pending) == (len(linked), 0, 150 - len(linked))
    assert flow.get_user_plan("user1").name == "Pro"


def test_reconcile_never_overwrites_a_newer_webhook(
    plans: Any, server: StripeServer, clock: FakeClock
) -> None:
    flow = plans
    period = (T0, T0 + MONTH)
    ev = Events()
    deliver(flow, ev.checkout("cus_5", T0, client_reference_id="user5"))
    newer = ev.subscription(
        "customer.subscription.updated", "sub_5", "cus_5", "price_pro", "active", period, T0 + DAY
    )
    deliver(flow, newer)
    # The list was read before that change reached Stripe's list (clock before the event).
    server.data.subscriptions = [sub_object(5, "price_basic", "active", period)]
    result = flow.reconcile()
    assert (result.applied, result.stale) == (0, 1)
    assert flow.get_user_plan("user5").name == "Pro"


# -- metered billing export -----------------------------------------------------------------
#: stripe-python's async client (``HTTPXClient``) posts the form body as ``data=<str>``, which
#: httpx deprecates; the library's issue, seen only with the async API.
httpx_form_body = pytest.mark.filterwarnings(
    "ignore:Use 'content=<...>' to upload raw bytes/text content.:DeprecationWarning"
)


@httpx_form_body
def test_export_usage_to_stripe(plans: Any, server: StripeServer, clock: FakeClock) -> None:
    flow = plans
    sent = server.data.meter_events
    flow.update_profile("alice", stripe_customer_id="cus_alice")
    flow.update_profile("bob", stripe_customer_id="cus_bob")
    old = flow.increment_usage("alice", "tokens", 7)  # 40 days before the export: too old
    clock.set(clock() + timedelta(days=40))
    a1 = flow.increment_usage("alice", "tokens", 120)
    b1 = flow.increment_usage("bob", "tokens", 5)
    flow.increment_usage("carol", "tokens", 9)  # no Stripe customer
    flow.adjust_usage("alice", "tokens", -20, {"reason": "refund"})  # refunds are not sent
    flow.reset_feature_usage("bob", "tokens")
    flow.increment_usage("alice", "exports", 1)

    result = flow.export_usage_to_stripe("llm_tokens", feature_name="tokens", batch_size=2)
    assert (result.sent, result.skipped_no_customer, result.skipped) == (2, 1, 3)
    assert [(e["identifier"], e["payload"]) for e in sent] == [
        (f"usageflow-{a1.id}", {"stripe_customer_id": "cus_alice", "value": "120"}),
        (f"usageflow-{b1.id}", {"stripe_customer_id": "cus_bob", "value": "5"}),
    ]
    assert sent[0]["timestamp"] == int(a1.timestamp.timestamp())
    assert set(server.data.idempotent) == {e["identifier"] for e in sent}  # Idempotency-Key
    assert sent[0]["event_name"] == "llm_tokens"
    assert all(e["identifier"] != f"usageflow-{old.id}" for e in sent)

    # A rerun sends nothing; new usage only is sent next time.
    assert flow.export_usage_to_stripe("llm_tokens", feature_name="tokens").sent == 0
    b2 = flow.increment_usage("bob", "tokens", 11)
    result = flow.export_usage_to_stripe("llm_tokens", feature_name="tokens")
    assert result.sent == 1 and sent[-1]["identifier"] == f"usageflow-{b2.id}"
    assert result.cursor == b2.id

    # Another meter has its own cursor, and its own payload keys.
    result = flow.export_usage_to_stripe(
        "all_usage", customer_key="customer", value_key="amount", identifier_prefix="app1-"
    )
    assert result.sent == 4  # a1, b1, b2 and alice's export
    assert sent[-1]["payload"] == {"customer": "cus_alice", "value": "1"} or sent[-1][
        "payload"
    ] == {"customer": "cus_bob", "amount": "11"}
    assert {e["identifier"] for e in sent[-4:]} >= {f"app1-{a1.id}", f"app1-{b2.id}"}


@httpx_form_body
def test_export_failure_keeps_what_was_sent_and_never_double_bills(
    plans: Any, server: StripeServer
) -> None:
    flow = plans
    flow.update_profile("alice", stripe_customer_id="cus_alice")
    events = [flow.increment_usage("alice", "tokens", n + 1) for n in range(25)]
    server.data.meter_events_limit = 12
    with pytest.raises(UsageFlowError) as err:
        flow.export_usage_to_stripe("llm_tokens", batch_size=10)
    assert err.value.code is ErrorCodes.USAGE_CONFIG_ERROR
    assert err.value.details["http_status"] == 400
    assert len(server.data.meter_events) == 12

    server.data.meter_events_limit = None
    result = flow.export_usage_to_stripe("llm_tokens", batch_size=10)
    assert result.sent == 13
    identifiers = [e["identifier"] for e in server.data.meter_events]
    assert identifiers == [f"usageflow-{e.id}" for e in events]  # each exactly once, in order


def test_export_rejects_bad_arguments(plans: Any) -> None:
    for kwargs in ({"batch_size": 0}, {"batch_size": 5000}, {"value_key": ""}):
        with pytest.raises(UsageFlowError) as err:
            plans.export_usage_to_stripe("m", **kwargs)
        assert err.value.code is ErrorCodes.USAGE_INVALID_PARAMS


def test_debug_logs_never_show_secrets(
    make_flow: Any, store: Store, server: StripeServer, caplog: pytest.LogCaptureFixture
) -> None:
    catalog(server.data)
    with caplog.at_level("DEBUG", logger="usageflow"):
        flow = make_flow(stripe_api_key=API_KEY, stripe_webhook_secret=SECRET, debug=True)
        flow.sync_plans_from_stripe()
        deliver(flow, Events().checkout("cus_1", T0, client_reference_id="u1"))
    assert "usageflow stripe v1.prices.list" in caplog.text
    assert "apply_stripe_event" in caplog.text
    assert API_KEY not in caplog.text and SECRET not in caplog.text
    assert API_KEY not in repr(flow) and SECRET not in repr(flow)


def test_a_checkout_without_a_payment_link_grants_the_packs_of_its_line_items(
    api_flow: Any, server: StripeServer
) -> None:
    """A Checkout Session the app made itself (no Payment Link): the webhook payload does not
    carry its line items, so UsageFlow reads them from the API (one request), prices x
    quantity mapped to packs."""
    from tests.support.stripe_events import T0, Events, deliver

    api_flow.create_credit_pack("50 exports", credits={"exports": 50}, stripe_price_id="price_x")
    event = Events().pack_checkout("own", T0, payment_link=None, client_reference_id="u1")
    session = event["data"]["object"]["id"]
    server.data.line_items[session] = [
        {"id": "li_1", "object": "item", "price": {"id": "price_x"}, "quantity": 2},
        {"id": "li_2", "object": "item", "price": {"id": "price_other"}, "quantity": 1},
    ]
    result = deliver(api_flow, event)
    assert result.action == "applied"
    assert [(g.feature_name, g.credits) for g in result.grants] == [("exports", 100)]
    assert ("GET", f"/v1/checkout/sessions/{session}/line_items") in server.data.requests
    assert api_flow.get_credit_balance("u1", "exports") == 100
    # A session the API does not know: the webhook fails (Stripe delivers it again later),
    # nothing is written.
    missing = Events("-2").pack_checkout("gone", T0, payment_link=None, client_reference_id="u2")
    with pytest.raises(UsageFlowError):
        deliver(api_flow, missing)
    assert api_flow.get_credit_balance("u2", "exports") == 0
