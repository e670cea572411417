"""A FastAPI chat endpoint metered by tokens: ``402`` once the month's token budget is spent.

Each user (``X-User-Id`` header) has a monthly budget of tokens (feature ``chat-tokens``) and of
messages (feature ``chat-messages``). ``UsageFlowMiddleware`` meters the messages and tells the
wrapped OpenAI client whose request it serves; the client reserves each completion's estimate
before calling the model, refuses it when it does not fit (no model call is made) and commits
the tokens the model reports. A refusal becomes a ``402`` JSON answer.

Against OpenAI (or any compatible server, with ``OPENAI_BASE_URL``)::

    OPENAI_API_KEY=sk-... uvicorn examples.fastapi_chat:app_from_env --factory
    curl -s localhost:8000/chat -H 'x-user-id: alice' -H 'content-type: application/json' \\
         -d '{"message": "Tell me about foxes"}'
    curl -s localhost:8000/usage -H 'x-user-id: alice'

Without a key, against the local fake OpenAI server of the test suite::

    python examples/fastapi_chat.py --demo
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel

from usageflow import AsyncUsageFlow, Decision, ErrorCodes, UsageFlowError
from usageflow.integrations.openai import wrap_openai
from usageflow.integrations.starlette import UsageFlowMiddleware

TOKENS = "chat-tokens"
MESSAGES = "chat-messages"
MODEL = os.environ.get("CHAT_MODEL", "gpt-4o-mini")
MAX_REPLY_TOKENS = 300
ROOT = Path(__file__).resolve().parents[1]


class ChatRequest(BaseModel):
    message: str
    stream: bool = False


async def setup_plans(flow: AsyncUsageFlow, monthly_tokens: int = 20_000) -> None:
    """The free plan every user is on (created or updated by name)."""
    await flow.create_plan("Free", is_free=True, limits={TOKENS: monthly_tokens, MESSAGES: 1_000})


def _user(request: Request) -> str | None:
    return request.headers.get("x-user-id")


def create_app(
    flow: AsyncUsageFlow, client: openai.AsyncOpenAI, monthly_tokens: int = 20_000
) -> FastAPI:
    # No user_id: the wrapper meters the user of the request UsageFlowMiddleware is serving.
    llm = wrap_openai(client, flow, TOKENS)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await setup_plans(flow, monthly_tokens)
        yield
        await client.close()

    app = FastAPI(title="Metered chat", lifespan=lifespan)
    app.add_middleware(
        UsageFlowMiddleware, flow=flow, routes={"POST /chat": MESSAGES}, user_id=_user
    )

    @app.exception_handler(UsageFlowError)
    async def usage_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, UsageFlowError)
        if exc.code is not ErrorCodes.USAGE_LIMIT_ERROR:
            return JSONResponse({"error": "usage metering unavailable"}, status_code=503)
        decision = exc.details.get("decision")
        resets_at = exc.details.get("resets_at")
        return JSONResponse(
            {
                "error": "not enough of this month's token budget is left for this request",
                "feature": exc.details.get("feature_name", TOKENS),
                "requested": decision.credits if isinstance(decision, Decision) else None,
                "limit": exc.details.get("limit"),
                "used": exc.details.get("current"),
                "remaining": exc.details.get("remaining"),
                "resets_at": resets_at.isoformat() if resets_at else None,
            },
            status_code=402,
        )

    @app.post("/chat", response_model=None)
    async def chat(body: ChatRequest) -> dict[str, Any] | StreamingResponse:
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": body.message}]
        if body.stream:
            # Refused here (before the response starts) when the estimate does not fit.
            stream = await llm.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=MAX_REPLY_TOKENS, stream=True
            )

            async def text() -> AsyncIterator[str]:
                async with stream:  # a client that disconnects pays for what it received
                    async for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content:
                            yield chunk.choices[0].delta.content

            return StreamingResponse(text(), media_type="text/plain")
        completion = await llm.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=MAX_REPLY_TOKENS
        )
        usage = completion.usage
        return {
            "reply": completion.choices[0].message.content,
            "tokens": usage.total_tokens if usage else None,
        }

    @app.get("/usage")
    async def usage(request: Request) -> dict[str, Any]:
        user = _user(request)
        if not user:
            return {"error": "send an X-User-Id header"}
        found = await flow.fetch_usage(user, TOKENS)
        return {"used": found.current, "limit": found.limit, "remaining": found.remaining}

    return app


def app_from_env() -> FastAPI:
    """The app for ``uvicorn --factory``: the store from ``USAGEFLOW_STORE`` (default
    ``sqlite:///usageflow.db``), the OpenAI client from ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``."""
    return create_app(AsyncUsageFlow(), openai.AsyncOpenAI())


async def demo(monthly_tokens: int = 500) -> list[int]:
    """Chat as one user against the fake server until the budget is spent; the statuses."""
    import httpx

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.support.llm_server import LLMServer

    statuses: list[int] = []
    with LLMServer() as server:
        async with AsyncUsageFlow("memory://") as flow:
            client = openai.AsyncOpenAI(
                base_url=server.openai_base_url, api_key="demo", max_retries=0
            )
            app = create_app(flow, client, monthly_tokens)
            await setup_plans(flow, monthly_tokens)  # httpx's ASGI transport runs no lifespan
            transport = httpx.ASGITransport(app=app)
            async with (
                client,
                httpx.AsyncClient(transport=transport, base_url="http://demo") as http,
            ):
                for turn in range(1, 50):
                    answer = await http.post(
                        "/chat",
                        json={"message": "Tell me about foxes", "stream": turn % 2 == 0},
                        headers={"x-user-id": "alice"},
                    )
                    statuses.append(answer.status_code)
                    used = (await http.get("/usage", headers={"x-user-id": "alice"})).json()
                    print(f"turn {turn:2}: {answer.status_code} {answer.text[:70]!r} -> {used}")
                    if answer.status_code == 402:
                        break
            print(f"model calls made: {len(server.requests)} (a refused turn makes none)")
    return statuses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo", action="store_true", help="run against the local fake server")
    if parser.parse_args().demo:
        asyncio.run(demo())
    else:
        parser.print_help()
