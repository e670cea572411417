"""Webhook signatures: payloads signed as Stripe signs them, checked by the official library.

A refused webhook raises a ``UsageFlowError`` with its own code and writes nothing: the same
event, delivered properly afterwards, is applied (not a duplicate).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import stripe

from tests.support.stripe_events import SECRET, T0, Events
from usageflow import UsageFlow
from usageflow.errors import ErrorCodes, UsageFlowError
from usageflow.stores.base import Store
from usageflow.testing import sign_stripe_payload

SIGNATURE = ErrorCodes.USAGE_WEBHOOK_SIGNATURE_ERROR
PAYLOAD = ErrorCodes.USAGE_WEBHOOK_PAYLOAD_ERROR


@pytest.fixture
def wflow(make_flow: Any, store: Store) -> Any:
    flow = make_flow(stripe_webhook_secret=SECRET)
    flow.create_plan("Free", is_free=True, limits={"exports": 3})
    return flow


@pytest.fixture
def event() -> dict[str, Any]:
    return Events().checkout("cus_sig", T0, client_reference_id="u_sig", email="s@example.com")


def refused(flow: Any, body: Any, header: Any, code: ErrorCodes) -> UsageFlowError:
    with pytest.raises(UsageFlowError) as err:
        flow.handle_webhook(body, header)
    assert err.value.code is code, err.value
    assert SECRET not in str(err.value) and SECRET not in repr(err.value.details)
    return err.value


def still_unprocessed(flow: Any, event: dict[str, Any]) -> None:
    assert flow.get_profile("u_sig") is None
    body, header = sign_stripe_payload(event, SECRET)
    assert flow.handle_webhook(body, header).action == "applied"


def test_the_signer_matches_the_official_library() -> None:
    body, header = sign_stripe_payload('{"a":1}', SECRET, timestamp=1_700_000_000)
    expected = stripe.WebhookSignature.generate_signature_header(body, SECRET, 1_700_000_000)
    assert header == expected
    assert stripe.WebhookSignature.verify_header(body, header, SECRET, tolerance=None)
    event = {"id": "evt_1", "object": "event", "data": {"object": {}}, "type": "x"}
    body, header = sign_stripe_payload(event, SECRET)
    assert json.loads(body) == event
    assert stripe.Webhook.construct_event(body, header, SECRET).id == "evt_1"


def test_valid_signature_bytes_or_str(wflow: Any, event: dict[str, Any]) -> None:
    body, header = sign_stripe_payload(event, SECRET)
    result = wflow.handle_webhook(body, header)
    assert (result.event_id, result.action) == (event["id"], "applied")
    assert wflow.handle_webhook(body.encode(), header).action == "duplicate"


def test_wrong_secret(wflow: Any, event: dict[str, Any]) -> None:
    body, header = sign_stripe_payload(event, "whsec_someone_else")
    refused(wflow, body, header, SIGNATURE)
    still_unprocessed(wflow, event)


def test_tampered_body(wflow: Any, event: dict[str, Any]) -> None:
    body, header = sign_stripe_payload(event, SECRET)
    refused(wflow, body.replace("u_sig", "u_evil"), header, SIGNATURE)
    assert wflow.get_profile("u_evil") is None
    still_unprocessed(wflow, event)


def test_too_old(wflow: Any, event: dict[str, Any]) -> None:
    body, header = sign_stripe_payload(event, SECRET, timestamp=int(time.time()) - 301)
    refused(wflow, body, header, SIGNATURE)
    # A longer tolerance accepts it.
    assert wflow.handle_webhook(body, header, tolerance=600).action == "applied"


def test_too_far_in_the_future(wflow: Any, event: dict[str, Any]) -> None:
    body, header = sign_stripe_payload(event, SECRET, timestamp=int(time.time()) + 3600)
    err = refused(wflow, body, header, SIGNATURE)
    assert "future" in err.message
    still_unprocessed(wflow, event)


def test_several_v1_signatures(wflow: Any, event: dict[str, Any]) -> None:
    """During a secret roll Stripe signs with both secrets; any matching v1 is accepted."""
    body, good = sign_stripe_payload(event, SECRET)
    _, other = sign_stripe_payload(event, "whsec_old_secret")
    stamp = good.split(",")[0]
    v1_good, v1_other = good.split(",")[1], other.split(",")[1]
    header = f"{stamp},{v1_other},{v1_good},v0=deadbeef"
    assert wflow.handle_webhook(body, header).action == "applied"
    refused(wflow, body, f"{stamp},{v1_other},v0=deadbeef", SIGNATURE)


@pytest.mark.parametrize("header", [None, "", "garbage", "t=abc,v1=00", "v1=00"])
def test_missing_or_unreadable_header(wflow: Any, event: dict[str, Any], header: Any) -> None:
    body, _ = sign_stripe_payload(event, SECRET)
    refused(wflow, body, header, SIGNATURE)
    still_unprocessed(wflow, event)


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        "[]",
        '{"id": "evt_1", "type": "x"}',
        '{"id": "evt_1", "type": "x", "created": 1, "data": {"object": "no"}}',
    ],
)
def test_malformed_payload_signed_correctly(wflow: Any, body: str) -> None:
    body, header = sign_stripe_payload(body, SECRET)
    refused(wflow, body, header, PAYLOAD)


def test_not_utf8(wflow: Any) -> None:
    refused(wflow, b"\xff\xfe", "t=1,v1=00", SIGNATURE)


def test_malformed_subscription_writes_nothing(wflow: Any) -> None:
    event = Events().event(
        "customer.subscription.updated", {"id": "sub_1", "object": "subscription"}, T0
    )
    body, header = sign_stripe_payload(event, SECRET)
    refused(wflow, body, header, PAYLOAD)


def test_no_secret_configured(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET", raising=False)
    flow = UsageFlow(store)
    body, header = sign_stripe_payload({"id": "evt_1"}, SECRET)
    with pytest.raises(UsageFlowError) as err:
        flow.handle_webhook(body, header)
    assert err.value.code is ErrorCodes.USAGE_CONFIG_ERROR


def test_secret_from_the_environment(
    store: Store, monkeypatch: pytest.MonkeyPatch, event: dict[str, Any]
) -> None:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", SECRET)
    flow = UsageFlow(store)
    body, header = sign_stripe_payload(event, SECRET)
    assert flow.handle_webhook(body, header).action == "applied"
    assert SECRET not in repr(flow)
