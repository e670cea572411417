"""A pay-as-you-go AI product on UsageFlow: tokens are bought in packs through a Stripe
Payment Link; the Pro plan includes 50,000 tokens a month and users top up beyond them.

    python examples/credits_app.py --demo   # drive the app with httpx: 402, a pack bought, served
    python examples/credits_app.py          # serve on http://127.0.0.1:8000 (uvicorn)

    curl -X POST -H 'Authorization: Bearer ada' 'http://127.0.0.1:8000/v1/summarize?words=40'

Served, it keeps usage in the embedded SQLite file ``usageflow-credits.db`` (or
``$USAGEFLOW_STORE``) and reads the webhook secret from ``STRIPE_WEBHOOK_SECRET``: point a
Stripe webhook (``checkout.session.completed``, ``checkout.session.async_payment_succeeded``,
``charge.refunded`` and the subscription events) at ``/stripe/webhook``. The demo uses
``memory://`` and signs the purchase webhook itself, as Stripe would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

from fastapi import FastAPI, Request

from usageflow import AsyncUsageFlow, UsageFlow, metered
from usageflow.integrations.fastapi import MeteringError, metering_error_handler
from usageflow.integrations.stripe import webhook_route
from usageflow.testing import sign_stripe_payload

#: Test-mode placeholders: put your own Payment Links and their ids here.
PACK_PAYMENT_LINK = "https://buy.stripe.com/test_tokens_10k"
PACK_PAYMENT_LINK_ID = "plink_tokens_10k"
PRO_PAYMENT_LINK = "https://buy.stripe.com/test_pro_plan"
DEMO_SECRET = "whsec_demo_only"


def setup_catalog(flow: UsageFlow) -> None:
    """Free: no tokens (pure pay-as-you-go). Pro: 50,000 tokens a month. A pack: 10,000
    tokens for $5, valid a year. Idempotent (matched by name, price and Payment Link)."""
    flow.create_plan("Free", is_free=True, limits={"exports": 3})
    flow.create_plan(
        "Pro",
        stripe_price_id="price_pro_monthly",
        price_amount=29,
        price_currency="usd",
        payment_link_url=PRO_PAYMENT_LINK,
        limits={"exports": 1000, "tokens": 50_000},
    )
    flow.create_credit_pack(
        "10,000 tokens",
        credits={"tokens": 10_000},
        stripe_payment_link_id=PACK_PAYMENT_LINK_ID,
        payment_link_url=PACK_PAYMENT_LINK,
        expires_in_days=365,
    )


def get_user_id(request: Request) -> str | None:
    """The user of a request; here the bearer token itself (replace with your auth)."""
    auth = request.headers.get("authorization", "")
    return auth.removeprefix("Bearer ").strip() or None


def create_app(store: str, webhook_secret: str | None) -> FastAPI:
    flow = AsyncUsageFlow(store, stripe_webhook_secret=webhook_secret)
    setup_catalog(UsageFlow(flow.store))
    app = FastAPI(title="UsageFlow credits example")
    app.router.routes.append(webhook_route(flow))

    app.add_exception_handler(MeteringError, metering_error_handler)

    @app.post("/v1/summarize")
    @metered(
        "tokens",
        credits=lambda result: result["tokens_used"],
        reserve=500,
        flow=flow,
        user_id=lambda request, words=100: get_user_id(request),
    )
    async def summarize(request: Request, words: int = 100) -> dict[str, Any]:
        """Holds 500 tokens while it runs, then charges what it used (10 per word)."""
        return {"summary": "...", "tokens_used": 10 * words}

    @app.get("/v1/balance")
    async def balance(request: Request) -> dict[str, Any]:
        user = get_user_id(request) or "anonymous"
        usage = await flow.fetch_usage(user, "tokens")
        return {
            "plan_tokens": usage.limit,
            "credit_balance": usage.credit_balance,
            "remaining": usage.remaining,
            "top_up_url": await flow.top_up_url(user, "tokens"),
        }

    return app


def _purchase(user: str) -> dict[str, Any]:
    """The ``checkout.session.completed`` Stripe sends when ``user`` pays the pack's link."""
    now = int(time.time())
    return {
        "id": f"evt_demo_{now}",
        "object": "event",
        "type": "checkout.session.completed",
        "created": now,
        "data": {
            "object": {
                "id": f"cs_demo_{now}",
                "object": "checkout.session",
                "mode": "payment",
                "payment_status": "paid",
                "payment_link": PACK_PAYMENT_LINK_ID,
                "payment_intent": f"pi_demo_{now}",
                "client_reference_id": user,
                "customer": None,
                "customer_details": {"email": f"{user}@example.com"},
                "created": now,
            }
        },
    }


async def demo() -> None:
    import httpx

    app = create_app("memory://", DEMO_SECRET)
    transport = httpx.ASGITransport(app=app)
    headers = {"authorization": "Bearer ada"}
    async with httpx.AsyncClient(transport=transport, base_url="http://example") as client:
        r = await client.post("/v1/summarize", params={"words": 40}, headers=headers)
        print(f"POST /v1/summarize on the Free plan: {r.status_code}\n")
        print(json.dumps(r.json(), indent=2))

        body, signature = sign_stripe_payload(_purchase("ada"), DEMO_SECRET)
        r = await client.post(
            "/stripe/webhook",
            content=body,
            headers={"stripe-signature": signature, "content-type": "application/json"},
        )
        print(f"\nAda buys the pack; Stripe's webhook: {r.status_code} {r.json()['action']}")

        r = await client.post("/v1/summarize", params={"words": 40}, headers=headers)
        print(f"POST /v1/summarize again: {r.status_code} {json.dumps(r.json())}")
        r = await client.get("/v1/balance", headers=headers)
        print(f"GET /v1/balance: {json.dumps(r.json())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", action="store_true", help="drive the app and print the answers")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if args.demo:
        asyncio.run(demo())
        return
    import uvicorn

    store = os.environ.get("USAGEFLOW_STORE", "sqlite:///usageflow-credits.db")
    secret = os.environ.get("STRIPE_WEBHOOK_SECRET")
    uvicorn.run(create_app(store, secret), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
