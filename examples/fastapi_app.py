"""A FastAPI app metered by UsageFlow: 3 free design exports a month, then 402 with an upgrade link.

    python examples/fastapi_app.py --demo   # drive the app with httpx, print the 402
    python examples/fastapi_app.py          # serve on http://127.0.0.1:8000 (uvicorn)

    curl -X POST -H 'Authorization: Bearer ada' http://127.0.0.1:8000/v1/exports

Served, it keeps usage in the embedded SQLite file ``usageflow-example.db`` (or
``$USAGEFLOW_STORE``); the demo uses ``memory://`` so that every run starts fresh. The user is
whoever the bearer token names: a stand-in for your real authentication.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from usageflow import AsyncUsageFlow, Decision, UsageFlow, metered
from usageflow.integrations.fastapi import meter
from usageflow.integrations.starlette import UsageFlowMiddleware

#: A Stripe Payment Link for the Pro plan (a test-mode placeholder: put your own here).
PRO_PAYMENT_LINK = "https://buy.stripe.com/test_pro_plan"


def setup_plans(flow: UsageFlow) -> None:
    """Free: 3 exports, 20 chat credits, 1,000 tokens a month. Pro: 1,000 exports, the rest
    unlimited, sold through a Payment Link. Idempotent (plans are matched by name / price)."""
    flow.create_plan(
        "Free", is_free=True, limits={"design-export": 3, "ai_chat_limit": 20, "tokens": 1000}
    )
    flow.create_plan(
        "Pro",
        stripe_price_id="price_pro_monthly",
        price_amount=29,
        price_currency="usd",
        payment_link_url=PRO_PAYMENT_LINK,
        limits={"design-export": 1000, "ai_chat_limit": None, "tokens": None},
    )


def get_user_id(request: Request) -> str | None:
    """The user of a request; here the bearer token itself (replace with your auth)."""
    auth = request.headers.get("authorization", "")
    return auth.removeprefix("Bearer ").strip() or None


def create_app(store: str) -> FastAPI:
    flow = AsyncUsageFlow(store)
    setup_plans(UsageFlow(flow.store))
    app = FastAPI(title="UsageFlow FastAPI example")

    @app.post("/v1/exports")
    async def export() -> dict[str, str]:
        """Metered by the middleware route below: 1 design-export credit per success."""
        return {"export": "ready"}

    @app.post("/v1/chat/{chat_id}")
    async def chat(chat_id: int) -> dict[str, Any]:
        """Metered by the middleware: 2 credits per message."""
        return {"chat_id": chat_id, "reply": "Hello!"}

    @app.post("/v1/summarize")
    @metered("tokens", credits=lambda result: result["tokens_used"], reserve=50)
    async def summarize(text: str = "lorem ipsum") -> dict[str, Any]:
        """Charges what it used: the tokens of its result (50 are held while it runs)."""
        return {"summary": text[:20], "tokens_used": 10 * len(text.split())}

    @app.get("/v1/quota")
    async def quota(decision: Annotated[Decision | None, Depends(meter("ai_chat_limit"))]) -> Any:
        """The dependency form: 1 chat credit, and the decision is handed to the endpoint."""
        return decision.model_dump(mode="json") if decision else None

    app.add_middleware(
        UsageFlowMiddleware,
        flow=flow,
        routes={
            "POST /v1/exports": "design-export",
            "/v1/chat/{chat_id}": {"feature": "ai_chat_limit", "credits": 2},
        },
        user_id=get_user_id,
    )
    return app


async def demo() -> None:
    import httpx

    app = create_app("memory://")
    transport = httpx.ASGITransport(app=app)
    headers = {"authorization": "Bearer ada"}
    async with httpx.AsyncClient(transport=transport, base_url="http://example") as client:
        for attempt in range(1, 5):
            r = await client.post("/v1/exports", headers=headers)
            print(
                f"POST /v1/exports #{attempt}: {r.status_code}  RateLimit: {r.headers['ratelimit']}"
            )
        print("\nThe fourth export is refused:\n")
        print(f"HTTP/1.1 {r.status_code} Payment Required")
        for name in ("content-type", "ratelimit-policy", "ratelimit", "retry-after"):
            print(f"{name}: {r.headers[name]}")
        print()
        print(json.dumps(r.json(), indent=2))
        r = await client.post("/v1/exports")
        print(f"\nWithout a user: {r.status_code} {r.json()['title']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", action="store_true", help="drive the app and print the 402")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if args.demo:
        asyncio.run(demo())
        return
    import uvicorn

    store = os.environ.get("USAGEFLOW_STORE", "sqlite:///usageflow-example.db")
    uvicorn.run(create_app(store), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
