"""``UsageFlow-Alert``: a metered response whose charge crossed alert thresholds names them,
through Starlette's middleware and Flask's extension (real apps, their test clients)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask, request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from usageflow import UsageFlow, metered
from usageflow.integrations.flask import UsageFlowFlask
from usageflow.integrations.starlette import UsageFlowMiddleware


def _flow(tmp_path: Path) -> UsageFlow:
    flow = UsageFlow(f"sqlite:///{tmp_path / 'alerts.db'}")
    flow.create_plan("Free", is_free=True, limits={"exports": 10, "search": -1})
    flow.set_alert_thresholds("exports", [50, 80, 100])
    flow.set_alert_thresholds("search", [50])
    return flow


async def ok(request: Request) -> Response:
    return JSONResponse({"ok": True})


def test_starlette_names_the_thresholds_a_request_crossed(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    app = Starlette(routes=[Route("/export", ok, methods=["POST"]), Route("/search", ok)])
    app.add_middleware(
        UsageFlowMiddleware,
        flow=flow,
        routes={
            "POST /export": {"feature": "exports", "credits": 3},
            "GET /search": "search",
        },
        user_id=lambda request: request.headers.get("x-user"),
    )
    seen = []
    with TestClient(app) as client:
        for _ in range(4):
            response = client.post("/export", headers={"x-user": "u1"})
            seen.append(response.headers.get("usageflow-alert"))
        assert (
            client.get("/search", headers={"x-user": "u1"}).headers.get("usageflow-alert") is None
        )
        refused = client.post("/export", headers={"x-user": "u1"})
    # 3 (30%), 6 (60%: 50), 9 (90%: 80), then 10 of 10 is refused at 12: nothing more.
    assert seen == [None, '"exports";threshold=50', '"exports";threshold=80', None]
    assert refused.status_code == 402 and "usageflow-alert" not in refused.headers
    assert [a.threshold for a in flow.list_alerts("u1")] == [80, 50]
    flow.close()


def test_flask_names_every_threshold_one_charge_crossed(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    app = Flask(__name__)
    UsageFlowFlask(app, flow=flow, user_id=lambda: request.headers.get("x-user"))

    @app.post("/export")
    @metered("exports", credits=9)
    def export() -> dict[str, Any]:
        return {"ok": True}

    @app.post("/export-one")
    @metered("exports")
    def export_one() -> dict[str, Any]:
        return {"ok": True}

    client = app.test_client()
    first = client.post("/export", headers={"x-user": "u1"})
    assert first.status_code == 200
    assert first.headers["usageflow-alert"] == '"exports";threshold=50, "exports";threshold=80'
    last = client.post("/export-one", headers={"x-user": "u1"})
    assert last.headers["usageflow-alert"] == '"exports";threshold=100'
    assert "usageflow-alert" not in client.post("/export-one", headers={"x-user": "u2"}).headers
    flow.close()
