"""FastAPI: the middleware, ``@metered`` endpoints and the ``Depends(meter(...))`` form."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from tests.integrations.conftest import RESET_SECONDS, DeadSQLite
from usageflow import AsyncUsageFlow, Decision, UsageFlow, UsageFlowError, metered, ops
from usageflow.context import current_user_id
from usageflow.integrations.fastapi import MeteringError, meter, metering_error_handler
from usageflow.integrations.starlette import UsageFlowMiddleware
from usageflow.testing import FakeClock

U1 = {"x-user": "u1"}


def user_header(request: Request) -> str | None:
    return request.headers.get("x-user")


class Export(BaseModel):
    pages: int


def build(flow: Any, *, middleware: bool = True) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/exports/{doc_id}")
    @metered("exports")
    async def export(doc_id: int, body: Export) -> dict[str, Any]:
        # The decorator keeps FastAPI's view of the signature: path and body still parse.
        return {"doc_id": doc_id, "pages": body.pages, "user": current_user_id.get()}

    @app.post("/v1/summaries")
    @metered("tokens", credits=lambda result: result["tokens"], reserve=5)
    def summarize(body: Export) -> dict[str, Any]:
        return {"tokens": body.pages * 10}

    @app.post("/v1/chat", dependencies=[Depends(meter("chat", credits=2))])
    async def chat() -> dict[str, str]:
        return {"reply": "hi"}

    @app.post("/v1/chat/decision")
    async def chat_decision(
        decision: Annotated[Decision | None, Depends(meter("chat"))],
    ) -> dict[str, Any]:
        assert decision is not None
        return {"remaining": decision.remaining}

    @app.post("/v1/chat/fail")
    async def chat_fail(_: Annotated[Any, Depends(meter("chat"))]) -> dict[str, str]:
        raise HTTPException(status_code=422, detail="bad prompt")

    @app.get("/v1/routed")
    async def routed() -> dict[str, str]:
        return {"ok": "yes"}

    if middleware:
        app.add_middleware(
            UsageFlowMiddleware,
            flow=flow,
            routes={"GET /v1/routed": "exports"},
            user_id=user_header,
        )
    return app


def used(reader: UsageFlow, user: str, feature: str) -> int:
    total, ledger = reader.store.call(ops.ledger_check(user_id=user, feature_name=feature))
    assert total == ledger
    return total


def test_metered_fastapi_endpoint(any_flow: Any, reader: UsageFlow) -> None:
    with TestClient(build(any_flow)) as client:
        for _ in range(3):
            r = client.post("/v1/exports/12", json={"pages": 4}, headers=U1)
            assert r.status_code == 200
            assert r.json() == {"doc_id": 12, "pages": 4, "user": "u1"}
        assert r.headers["ratelimit"] == f'"exports";r=0;t={RESET_SECONDS}'
        r = client.post("/v1/exports/12", json={"pages": 4}, headers=U1)
        assert r.status_code == 402
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["upgrade_url"].endswith("client_reference_id=u1")
        # Validation errors (FastAPI's own 422) come before metering and cost nothing.
        assert client.post("/v1/exports/x", json={}, headers=U1).status_code == 422
    assert used(reader, "u1", "exports") == 3


def test_sync_endpoint_charges_from_its_result(any_flow: Any, reader: UsageFlow) -> None:
    with TestClient(build(any_flow)) as client:
        r = client.post("/v1/summaries", json={"pages": 3}, headers=U1)
        assert r.status_code == 200
        r = client.post("/v1/summaries", json={"pages": 9}, headers=U1)
        assert r.status_code == 200
        # 30 + 90 > 100, but the check holds the 5 reserved: the 120 is recorded as used.
        r = client.post("/v1/summaries", json={"pages": 1}, headers=U1)
        assert r.status_code == 402
    assert used(reader, "u1", "tokens") == 120


def test_dependency_form(any_flow: Any, reader: UsageFlow) -> None:
    with TestClient(build(any_flow)) as client:
        r = client.post("/v1/chat", headers=U1)
        assert r.status_code == 200
        assert r.headers["ratelimit"] == f'"chat";r=3;t={RESET_SECONDS}'
        r = client.post("/v1/chat/decision", headers=U1)
        assert r.json() == {"remaining": 2}
        r = client.post("/v1/chat/fail", headers=U1)
        assert r.status_code == 422  # released, and the headers say so
        assert r.headers["ratelimit"] == f'"chat";r=2;t={RESET_SECONDS}'
        assert client.post("/v1/chat", headers=U1).status_code == 200
        r = client.post("/v1/chat", headers=U1)
        assert r.status_code == 402
        assert r.json()["feature"] == "chat"
        assert client.post("/v1/chat").status_code == 401
    assert used(reader, "u1", "chat") == 5


def test_middleware_route_on_fastapi(quick_flow: Any, quick_reader: UsageFlow) -> None:
    with TestClient(build(quick_flow)) as client:
        statuses = [client.get("/v1/routed", headers=U1).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 402]
    assert used(quick_reader, "u1", "exports") == 3


def test_without_middleware_explicit_flow_and_handler(plan_store: Any, clock: FakeClock) -> None:
    flow = AsyncUsageFlow(plan_store, clock=clock)
    app = FastAPI()
    app.add_exception_handler(MeteringError, metering_error_handler)

    def user_from_request(request: Request) -> str | None:
        return request.headers.get("x-user")

    @app.post("/once", dependencies=[Depends(meter("tiny", flow=flow, user_id=user_from_request))])
    async def once() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/deco/{user}")
    @metered("tiny", flow=flow, user_id=lambda user: user)
    async def deco(user: str) -> dict[str, bool]:
        return {"ok": True}

    with TestClient(app) as client:
        assert client.post("/once", headers=U1).status_code == 200
        r = client.post("/once", headers=U1)
        assert r.status_code == 402
        assert r.headers["retry-after"] == str(RESET_SECONDS)
        assert client.post("/deco/u2").status_code == 200
        assert client.post("/deco/u2").status_code == 402


def test_metered_without_any_flow_is_a_clear_error() -> None:
    app = FastAPI()

    @app.get("/x")
    @metered("exports")
    async def x() -> dict[str, bool]:
        return {"ok": True}

    with (
        TestClient(app) as client,
        pytest.raises(UsageFlowError, match="found no flow: install UsageFlowMiddleware"),
    ):
        client.get("/x")


def test_dependency_fail_open_and_closed(dead_sqlite: DeadSQLite, clock: FakeClock) -> None:
    flow = UsageFlow(dead_sqlite.store, clock=clock)
    app = FastAPI()

    @app.post("/open")
    async def open_(d: Annotated[Any, Depends(meter("chat", fail_open=True))]) -> dict[str, Any]:
        return {"decision": d}

    @app.post("/closed", dependencies=[Depends(meter("chat"))])
    async def closed() -> dict[str, bool]:
        return {"ok": True}

    app.add_middleware(UsageFlowMiddleware, flow=flow, user_id=user_header)
    with TestClient(app) as client:
        assert client.post("/closed", headers=U1).status_code == 200
        dead_sqlite.kill()
        assert client.post("/open", headers=U1).json() == {"decision": None}
        assert client.post("/closed", headers=U1).status_code == 503
