"""End to end: a FastAPI app behind UsageFlowMiddleware, served by uvicorn on 127.0.0.1 over a
free port, driven by httpx over real HTTP, on an SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from tests.integrations.conftest import PAYMENT_LINK, setup_plans
from tests.support.servers import uvicorn_server
from usageflow import AsyncUsageFlow, UsageFlow, ops
from usageflow.integrations.starlette import Meter, UsageFlowMiddleware
from usageflow.testing import FakeClock


def build_app(flow: AsyncUsageFlow) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/exports")
    async def export() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/v1/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield b"0123456789"
                await asyncio.sleep(0.001)

        return StreamingResponse(chunks(), media_type="text/plain")

    def user_id(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        return auth.removeprefix("Bearer ") or None

    app.add_middleware(
        UsageFlowMiddleware,
        flow=flow,
        routes={
            "POST /v1/exports": "exports",
            "GET /v1/stream": Meter("tokens", credits=lambda req, resp: resp.body_size),
        },
        user_id=user_id,
    )
    return app


@pytest.fixture
def server(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[str, UsageFlow]]:
    url = f"sqlite:///{tmp_path / 'e2e.db'}"
    reader = UsageFlow(url, clock=clock, cache_ttl=0)
    setup_plans(reader.store, clock)
    flow = AsyncUsageFlow(url, clock=clock)
    try:
        with uvicorn_server(build_app(flow)) as base:
            yield base, reader
    finally:
        reader.close()
        flow.store.close()


def test_quota_over_real_http(server: tuple[str, UsageFlow]) -> None:
    base, reader = server
    auth = {"authorization": "Bearer u1"}
    with httpx.Client(base_url=base) as client:
        statuses = [client.post("/v1/exports", headers=auth).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 402]
        r = client.post("/v1/exports", headers=auth)
        assert r.status_code == 402
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["ratelimit"] == '"exports";r=0;t=1425600'
        assert r.headers["retry-after"] == "1425600"
        assert r.json()["upgrade_url"] == f"{PAYMENT_LINK}?client_reference_id=u1"
        assert client.post("/v1/exports").status_code == 401
        r = client.get("/v1/stream", headers=auth)
        assert r.text == "0123456789" * 5
        assert client.get("/docs").status_code == 200  # unmetered
    assert reader.store.call(ops.ledger_check(user_id="u1", feature_name="exports")) == (3, 3)
    assert reader.store.call(ops.ledger_check(user_id="u1", feature_name="tokens")) == (50, 50)


@pytest.mark.asyncio
async def test_concurrent_clients_over_real_http(server: tuple[str, UsageFlow]) -> None:
    base, reader = server
    auth = {"authorization": "Bearer racer"}
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=base, limits=limits) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/exports", headers=auth) for _ in range(40))
        )
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 3
    assert statuses.count(402) == 37
    assert reader.store.call(ops.ledger_check(user_id="racer", feature_name="exports")) == (3, 3)
