"""UsageFlowFlask and ``@metered`` Flask views (sync and async) through Flask's test client."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest
from flask import Flask, abort, g, request

from tests.integrations.conftest import PAYMENT_LINK, RESET_SECONDS, DeadSQLite
from usageflow import AsyncUsageFlow, UsageFlow, UsageFlowError, metered, ops
from usageflow.context import current_user_id
from usageflow.integrations.flask import UsageFlowFlask
from usageflow.testing import FakeClock

U1 = {"x-user": "u1"}


def create_app(flow: UsageFlow | None, **config: Any) -> Flask:
    """An app factory in Flask's style: the extension is created first, bound in init_app."""
    app = Flask(__name__)
    app.config.update(config)
    usage = UsageFlowFlask(flow=flow, user_id=lambda: request.headers.get("x-user"))
    usage.init_app(app)

    @app.post("/v1/exports")
    @metered("exports")
    def export() -> dict[str, Any]:
        return {"ok": True, "user": current_user_id.get()}

    @app.post("/v1/chat")
    @metered("chat", credits=2)
    async def chat() -> dict[str, str]:
        await asyncio.sleep(0)
        return {"reply": "hi", "user": current_user_id.get() or ""}

    @app.post("/v1/summaries")
    @metered("tokens", credits=lambda result: result[0]["tokens"])
    def summarize() -> tuple[dict[str, int], int]:
        return {"tokens": int(request.args.get("n", "10"))}, 201

    @app.get("/fails/<how>")
    @metered("exports")
    def fails(how: str) -> Any:
        if how == "raise":
            raise RuntimeError("view failed")
        if how == "abort":
            abort(409)
        return "broken", 500

    @app.get("/open")
    def unmetered() -> str:
        return "open"

    return app


def used(reader: UsageFlow, user: str, feature: str) -> int:
    total, ledger = reader.store.call(ops.ledger_check(user_id=user, feature_name=feature))
    assert total == ledger
    return total


@pytest.fixture
def flow(plan_store: Any, clock: FakeClock) -> UsageFlow:
    """A flow over every store (charging tests)."""
    return UsageFlow(plan_store, clock=clock)


@pytest.fixture
def mem_flow(quick_store: Any, clock: FakeClock) -> UsageFlow:
    """A flow over the memory store (the adapter's own logic)."""
    return UsageFlow(quick_store, clock=clock)


def test_sync_view_charged_then_402(flow: UsageFlow, reader: UsageFlow) -> None:
    app = create_app(flow)
    assert isinstance(app.extensions["usageflow"].flow, UsageFlow)
    client = app.test_client()
    for remaining in (2, 1, 0):
        r = client.post("/v1/exports", headers=U1)
        assert r.status_code == 200
        assert r.json == {"ok": True, "user": "u1"}
        assert r.headers["RateLimit-Policy"] == '"exports";q=3'
        assert r.headers["RateLimit"] == f'"exports";r={remaining};t={RESET_SECONDS}'
    r = client.post("/v1/exports", headers=U1)
    assert r.status_code == 402
    assert r.mimetype == "application/problem+json"
    assert r.headers["Retry-After"] == str(RESET_SECONDS)
    body = r.get_json(force=True)
    assert body["feature"] == "exports"
    assert (body["limit"], body["current"], body["remaining"]) == (3, 3, 0)
    assert body["resets_at"] == "2024-02-01T00:00:00Z"
    assert body["upgrade_url"] == f"{PAYMENT_LINK}?client_reference_id=u1"
    assert used(reader, "u1", "exports") == 3


def test_async_view(flow: UsageFlow, reader: UsageFlow) -> None:
    client = create_app(flow).test_client()
    r = client.post("/v1/chat", headers=U1)
    assert r.status_code == 200
    assert r.json == {"reply": "hi", "user": "u1"}
    assert r.headers["RateLimit"] == f'"chat";r=3;t={RESET_SECONDS}'
    client.post("/v1/chat", headers=U1)
    assert client.post("/v1/chat", headers=U1).status_code == 402  # 4 used, 2 more > 5
    assert used(reader, "u1", "chat") == 4


def test_credits_from_the_views_result(mem_flow: UsageFlow, quick_reader: UsageFlow) -> None:
    client = create_app(mem_flow).test_client()
    assert client.post("/v1/summaries?n=60", headers=U1).status_code == 201
    assert client.post("/v1/summaries?n=0", headers=U1).status_code == 201
    assert client.post("/v1/summaries?n=45", headers=U1).status_code == 201
    assert client.post("/v1/summaries?n=1", headers=U1).status_code == 402
    assert used(quick_reader, "u1", "tokens") == 105


def test_failed_views_are_not_charged(flow: UsageFlow, reader: UsageFlow) -> None:
    app = create_app(flow)
    client = app.test_client()
    assert client.get("/fails/abort", headers=U1).status_code == 409
    assert client.get("/fails/status", headers=U1).status_code == 500
    assert client.get("/fails/raise", headers=U1).status_code == 500
    app.testing = True  # now the view's exception reaches the caller
    with pytest.raises(RuntimeError, match="view failed"):
        client.get("/fails/raise", headers=U1)
    assert used(reader, "u1", "exports") == 0
    assert reader.fetch_usage("u1", "exports").current == 0


def test_401_400_and_unmetered(mem_flow: UsageFlow) -> None:
    client = create_app(mem_flow).test_client()
    r = client.post("/v1/exports")
    assert r.status_code == 401
    assert r.get_json(force=True)["title"] == "Authentication required"
    assert client.post("/v1/exports", headers={"x-user": "x" * 300}).status_code == 400
    r = client.get("/open", headers=U1)
    assert r.status_code == 200
    assert "RateLimit" not in r.headers


def test_user_from_flask_g_by_default_and_async_user_function(
    mem_flow: UsageFlow, quick_reader: UsageFlow
) -> None:
    app = Flask(__name__)
    UsageFlowFlask(app, flow=mem_flow)

    @app.before_request
    def login() -> None:
        g.user_id = request.headers.get("x-user")

    @app.get("/x")
    @metered("exports")
    def x() -> str:
        return "x"

    assert app.test_client().get("/x", headers={"x-user": "g-user"}).status_code == 200

    async def async_user() -> str:
        return "async-user"

    app2 = Flask(__name__)
    UsageFlowFlask(app2, flow=mem_flow, user_id=async_user)
    app2.add_url_rule("/x", view_func=x)
    app2.add_url_rule("/chat", view_func=metered("chat")(_async_view))
    assert app2.test_client().get("/x").status_code == 200
    assert app2.test_client().get("/chat").status_code == 200
    assert used(quick_reader, "g-user", "exports") == 1
    assert used(quick_reader, "async-user", "exports") == 1
    assert used(quick_reader, "async-user", "chat") == 1


async def _async_view() -> str:
    return "chat"


def test_config_keys(mem_flow: UsageFlow, quick_reader: UsageFlow, tmp_path: Any) -> None:
    client = create_app(mem_flow, USAGEFLOW_ENABLED=False).test_client()
    for _ in range(5):
        assert client.post("/v1/exports", headers=U1).status_code == 200
    assert used(quick_reader, "u1", "exports") == 0

    client = create_app(mem_flow, USAGEFLOW_HEADERS_ENABLED=False).test_client()
    assert "RateLimit" not in client.post("/v1/exports", headers=U1).headers

    app = create_app(None, USAGEFLOW_STORE=f"sqlite:///{tmp_path / 'from-config.db'}")
    built = app.extensions["usageflow"].flow
    assert isinstance(built, UsageFlow)
    assert built.store.url.endswith("from-config.db")  # type: ignore[attr-defined]
    with pytest.raises(UsageFlowError, match="USAGEFLOW_FAIL_OPEN must be True or False"):
        create_app(mem_flow, USAGEFLOW_FAIL_OPEN="yes")


def test_async_flow_is_refused(plan_store: Any) -> None:
    with pytest.raises(UsageFlowError, match=r"needs a usageflow\.UsageFlow"):
        UsageFlowFlask(Flask(__name__), flow=AsyncUsageFlow(plan_store))  # type: ignore[arg-type]


def test_store_failure_503_and_fail_open(
    dead_sqlite: DeadSQLite, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    flow = UsageFlow(dead_sqlite.store, clock=clock)
    closed = create_app(flow).test_client()
    opened_app = create_app(flow, USAGEFLOW_FAIL_OPEN=True)
    opened = opened_app.test_client()
    assert closed.post("/v1/exports", headers=U1).status_code == 200
    dead_sqlite.kill()
    r = closed.post("/v1/exports", headers=U1)
    assert r.status_code == 503
    assert r.get_json(force=True)["title"] == "Usage metering unavailable"
    with caplog.at_level(logging.WARNING, logger="usageflow.integrations"):
        assert opened.post("/v1/exports", headers=U1).status_code == 200
    assert "fail_open" in caplog.text
    assert opened_app.extensions["usageflow"].stats.failed_open == 1


def test_threads_racing_a_flask_view(flow: UsageFlow, reader: UsageFlow) -> None:
    """40 threads against a quota of 3 through the extension: exactly 3 succeed."""
    app = create_app(flow)
    statuses: list[int] = []
    lock = threading.Lock()

    def hit() -> None:
        status = app.test_client().post("/v1/exports", headers=U1).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=hit) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * 3 + [402] * 37
    assert used(reader, "u1", "exports") == 3


def routed_app(flow: UsageFlow, routes: Any) -> Flask:
    """Views named by the ``routes`` table, none of them decorated."""
    app = Flask(__name__)
    UsageFlowFlask(app, flow=flow, user_id=lambda: request.headers.get("x-user"), routes=routes)

    @app.route("/v1/exports", methods=["GET", "POST"])
    def export() -> dict[str, Any]:
        return {"ok": True, "user": current_user_id.get()}

    @app.post("/v1/chat/<int:chat_id>")
    async def chat(chat_id: int) -> dict[str, int]:
        await asyncio.sleep(0)
        return {"chat": chat_id, "tokens": int(request.args.get("n", "1"))}

    @app.post("/v1/both")
    @metered("exports")  # named by the table too: metered once
    def both() -> str:
        return "both"

    @app.get("/v1/report")
    @app.get("/v1/report/free")  # the same view under a rule the table does not name
    def report() -> str:
        return "report"

    return app


def test_routes_table_meters_views_by_their_rule(flow: UsageFlow, reader: UsageFlow) -> None:
    app = routed_app(
        flow,
        {
            "POST /v1/exports": "exports",
            "/v1/chat/<int:chat_id>": {"feature": "tokens", "credits": lambda r: r["tokens"]},
            "/v1/both": "exports",
            "/v1/report": "tiny",
        },
    )
    client = app.test_client()
    assert client.get("/v1/exports", headers=U1).status_code == 200  # GET is not named
    assert "RateLimit" not in client.get("/v1/exports", headers=U1).headers
    first = client.post("/v1/exports", headers=U1)
    assert first.status_code == 200 and first.json == {"ok": True, "user": "u1"}
    assert first.headers["RateLimit"] == f'"exports";r=2;t={RESET_SECONDS}'
    assert client.post("/v1/both", headers=U1).status_code == 200
    assert used(reader, "u1", "exports") == 2  # the decorated view in the table: once
    assert client.post("/v1/exports", headers=U1).status_code == 200
    refused = client.post("/v1/exports", headers=U1)
    assert refused.status_code == 402 and refused.json["feature"] == "exports"
    assert client.post("/v1/exports").status_code == 401
    chat = client.post("/v1/chat/7?n=40", headers=U1)
    assert chat.status_code == 200 and chat.json == {"chat": 7, "tokens": 40}
    assert client.post("/v1/chat/nope", headers=U1).status_code == 404  # not the rule
    assert used(reader, "u1", "exports") == 3
    assert used(reader, "u1", "tokens") == 40
    assert client.head("/v1/report", headers=U1).status_code == 200  # HEAD as GET: charged
    assert client.get("/v1/report", headers=U1).status_code == 402  # tiny: a quota of 1
    assert client.get("/v1/report/free", headers=U1).status_code == 200  # not named
    assert used(reader, "u1", "tiny") == 1


def test_routes_table_passes_settle_to_the_view(flow: UsageFlow, reader: UsageFlow) -> None:
    """``{"settle": "hold"}`` in the routes table reserves then commits (the view's 500 is
    then released: no event at all), where the default charges then gives back."""
    app = Flask(__name__)
    UsageFlowFlask(
        app,
        flow=flow,
        user_id=lambda: request.headers.get("x-user"),
        routes={
            "POST /held": {"feature": "exports", "settle": "hold"},
            "POST /charged": "exports",
        },
    )

    @app.post("/held")
    def held_view() -> tuple[str, int]:
        return "broken", 500

    @app.post("/charged")
    def charged_view() -> tuple[str, int]:
        return "broken", 500

    client = app.test_client()
    assert client.post("/held", headers=U1).status_code == 500
    assert reader.list_events("u1", "exports") == []
    assert client.post("/charged", headers=U1).status_code == 500
    assert sorted(e.event_type for e in reader.list_events("u1", "exports")) == [
        "credit",
        "usage",
    ]
    assert used(reader, "u1", "exports") == 0


def test_routes_table_errors(mem_flow: UsageFlow) -> None:
    for bad, message in [
        ("POST /v1/exports", "dict"),
        ({"FETCH! /x": "exports"}, "HTTP method"),
        ({"v1/exports": "exports"}, "start with '/'"),
        ({"/v1/exports": 3}, "feature name"),
    ]:
        with pytest.raises(UsageFlowError) as err:
            UsageFlowFlask(flow=mem_flow, routes=bad)  # type: ignore[arg-type]
        assert message in err.value.message
    app = routed_app(mem_flow, {"POST /v1/export": "exports"})  # a typo: no such rule
    app.testing = True
    with pytest.raises(UsageFlowError) as err:
        app.test_client().post("/v1/export", headers=U1)
    assert "'POST /v1/export' matches no rule" in err.value.message
    app = routed_app(mem_flow, {"DELETE /v1/exports": "exports"})  # a method it lacks
    app.testing = True
    with pytest.raises(UsageFlowError):
        app.test_client().post("/v1/exports", headers=U1)
