"""A Starlette app metered by UsageFlowMiddleware, with a streamed AI answer charged per token.

    python examples/starlette_app.py --demo   # drive the app with httpx, print the 402
    python examples/starlette_app.py          # serve on http://127.0.0.1:8000 (uvicorn)

    curl -N -H 'X-User-Id: ada' 'http://127.0.0.1:8000/v1/chat/1?q=hello+there'

Served, usage is kept in the embedded SQLite file ``usageflow-example.db`` (or
``$USAGEFLOW_STORE``); the demo uses ``memory://``. The user is the ``X-User-Id`` header: a
stand-in for your real authentication.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from usageflow import AsyncUsageFlow, UsageFlow
from usageflow.integrations.starlette import Meter, ServedResponse, UsageFlowMiddleware

PRO_PAYMENT_LINK = "https://buy.stripe.com/test_pro_plan"


def setup_plans(flow: UsageFlow) -> None:
    """Free: 3 exports and 40 streamed tokens a month; Pro through a Payment Link."""
    flow.create_plan("Free", is_free=True, limits={"design-export": 3, "ai_tokens": 40})
    flow.create_plan(
        "Pro",
        stripe_price_id="price_pro_monthly",
        price_amount=29,
        payment_link_url=PRO_PAYMENT_LINK,
        limits={"design-export": 1000, "ai_tokens": 100_000},
    )


async def export(request: Request) -> Response:
    return JSONResponse({"export": "ready"})


async def chat(request: Request) -> Response:
    """Streams one word per token; the middleware charges the tokens when the stream ends."""
    words = (request.query_params.get("q") or "hello").split()

    async def tokens() -> AsyncIterator[str]:
        for word in words * 4:
            yield word + " "
            await asyncio.sleep(0)

    return StreamingResponse(tokens(), media_type="text/plain")


def streamed_tokens(request: Request, response: ServedResponse) -> int:
    """The credits of a chat answer: one per streamed word (here: bytes / 6, at least 1)."""
    return max(1, response.body_size // 6)


def user_id(request: Request) -> str | None:
    return request.headers.get("x-user-id")


def create_app(store: str) -> Starlette:
    flow = AsyncUsageFlow(store)
    setup_plans(UsageFlow(flow.store))
    app = Starlette(
        routes=[
            Route("/v1/exports", export, methods=["POST"]),
            Route("/v1/chat/{chat_id:int}", chat),
        ]
    )
    app.add_middleware(
        UsageFlowMiddleware,
        flow=flow,
        routes={
            "POST /v1/exports": "design-export",
            "/v1/chat/{chat_id:int}": Meter("ai_tokens", credits=streamed_tokens, reserve=5),
        },
        user_id=user_id,
    )
    return app


async def demo() -> None:
    import httpx

    transport = httpx.ASGITransport(app=create_app("memory://"))
    headers = {"x-user-id": "ada"}
    async with httpx.AsyncClient(transport=transport, base_url="http://example") as client:
        for attempt in range(1, 10):
            r = await client.get("/v1/chat/1?q=tell+me+a+story", headers=headers)
            print(
                f"GET /v1/chat/1 #{attempt}: {r.status_code}  RateLimit: {r.headers['ratelimit']}"
            )
            if r.status_code == 402:
                break
        print(f"\nHTTP/1.1 {r.status_code} Payment Required")
        for name in ("content-type", "ratelimit-policy", "ratelimit", "retry-after"):
            print(f"{name}: {r.headers[name]}")
        print()
        print(json.dumps(r.json(), indent=2))


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
