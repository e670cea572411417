"""Through the middleware: a user whose plan allowance is spent gets a 402 that offers a credit
pack (``top_up_url``), buys it (a signed Stripe webhook to the app's endpoint) and is served
again; the RateLimit header counts the credits."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.support.stripe_events import SECRET, T0, Events
from usageflow import AsyncUsageFlow, UsageFlow
from usageflow.integrations.starlette import UsageFlowMiddleware
from usageflow.integrations.stripe import webhook_route
from usageflow.stores.base import Store
from usageflow.testing import FakeClock, sign_stripe_payload

PACK_LINK = "https://buy.stripe.com/test_exports_pack"


async def export(request: Request) -> Response:
    return PlainTextResponse("exported")


def test_a_spent_user_tops_up_through_stripe_and_is_served(
    plan_store: Store, clock: FakeClock, flow_api: str
) -> None:
    flow_type = AsyncUsageFlow if flow_api == "async" else UsageFlow
    flow: Any = flow_type(plan_store, clock=clock, stripe_webhook_secret=SECRET)
    setup = UsageFlow(plan_store, clock=clock)
    setup.create_credit_pack(
        "20 exports",
        credits={"exports": 20},
        stripe_payment_link_id="plink_exports",
        payment_link_url=PACK_LINK,
    )
    app = Starlette(
        routes=[Route("/v1/exports", export, methods=["POST"]), webhook_route(flow)],
    )
    app.add_middleware(
        UsageFlowMiddleware,
        flow=flow,
        routes={"POST /v1/exports": "exports"},
        user_id=lambda request: request.headers.get("x-user"),
    )
    with TestClient(app) as client:
        for _ in range(3):  # the Free plan's 3 exports
            assert client.post("/v1/exports", headers={"x-user": "u1"}).status_code == 200
        refused = client.post("/v1/exports", headers={"x-user": "u1"})
        assert refused.status_code == 402
        body = refused.json()
        assert body["top_up_url"].startswith(PACK_LINK + "?")
        assert "client_reference_id=u1" in body["top_up_url"]
        assert body["upgrade_url"].startswith("https://buy.stripe.com/test_pro")
        assert (body["remaining"], body["credit_balance"]) == (0, 0)
        assert "buy credits" in body["detail"]

        event = Events().pack_checkout(
            "u1pack", T0, payment_link="plink_exports", client_reference_id="u1"
        )
        payload, signature = sign_stripe_payload(event, SECRET)
        bought = client.post(
            "/stripe/webhook",
            content=payload,
            headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
        )
        assert bought.status_code == 200 and bought.json()["action"] == "applied"

        served = client.post("/v1/exports", headers={"x-user": "u1"})
        assert served.status_code == 200
        assert ";r=19;" in served.headers["ratelimit"]  # the pack's 20, less this request
    assert setup.get_credit_balance("u1", "exports") == 19
    assert setup.get_total_usage("u1", "exports") == 4
