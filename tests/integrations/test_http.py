"""The framework-free translation: route patterns, quota headers, problems, and @metered on
plain functions (no framework)."""

from __future__ import annotations

import asyncio
import inspect
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.integrations.conftest import setup_plans
from usageflow import AsyncUsageFlow, Decision, UsageFlow, UsageFlowError, metered, ops
from usageflow.context import current_user_id
from usageflow.integrations._http import Meter, RouteTable, quota_headers, route_path
from usageflow.integrations.metered import MeteringError
from usageflow.integrations.starlette import UsageFlowMiddleware
from usageflow.stores import open_store
from usageflow.testing import FakeClock

NOW = datetime(2024, 1, 15, 12, 0, tzinfo=timezone.utc)


def test_route_table_matches_in_declaration_order() -> None:
    table = RouteTable(
        {
            "POST /v1/exports": "export-post",
            "/v1/exports": "export-any",
            "/v1/chat/{chat_id}": "chat",
            "GET /files/{file_id:int}": "file",
            "/files/{path:path}": "files",
            "/f/{n:float}/{u:uuid}": "odd",
        }
    )
    assert table.match("POST", "/v1/exports").feature == "export-post"  # type: ignore[union-attr]
    assert table.match("GET", "/v1/exports").feature == "export-any"  # type: ignore[union-attr]
    assert table.match("POST", "/v1/chat/abc").feature == "chat"  # type: ignore[union-attr]
    assert table.match("POST", "/v1/chat/abc/more") is None
    assert table.match("GET", "/files/12").feature == "file"  # type: ignore[union-attr]
    assert table.match("POST", "/files/12").feature == "files"  # type: ignore[union-attr]
    assert table.match("GET", "/files/a/b.txt").feature == "files"  # type: ignore[union-attr]
    uuid = "12345678-1234-1234-1234-123456789abc"
    assert table.match("GET", f"/f/1.5/{uuid}").feature == "odd"  # type: ignore[union-attr]
    assert table.match("GET", "/f/x/y") is None
    assert table.match("GET", "/elsewhere") is None


def test_a_parameterized_route_declared_first_shadows_a_static_one() -> None:
    table = RouteTable({"/items/{name}": "by-name", "/items/special": "special"})
    assert table.match("GET", "/items/special").feature == "by-name"  # type: ignore[union-attr]
    table = RouteTable({"/items/special": "special", "/items/{name}": "by-name"})
    assert table.match("GET", "/items/special").feature == "special"  # type: ignore[union-attr]


def test_route_path_strips_the_mount_point() -> None:
    assert route_path({"path": "/api/v1/x", "root_path": "/api"}) == "/v1/x"
    assert route_path({"path": "/apix", "root_path": "/api"}) == "/apix"
    assert route_path({"path": "/v1/x", "root_path": ""}) == "/v1/x"


def decision(**fields: Any) -> Decision:
    base: dict[str, Any] = {
        "allowed": True,
        "feature_name": "exports",
        "credits": 1,
        "current": 40,
        "limit": 100,
        "remaining": 60,
        "is_unlimited": False,
        "resets_at": NOW + timedelta(seconds=90.2),
    }
    return Decision(**{**base, **fields})


def test_quota_headers_are_ietf_structured_fields() -> None:
    assert quota_headers(decision(), NOW) == [
        ("ratelimit-policy", '"exports";q=100'),
        ("ratelimit", '"exports";r=60;t=91'),
    ]
    assert quota_headers(decision(remaining=0), NOW, refused=True)[-1] == ("retry-after", "91")
    assert quota_headers(decision(), NOW, refund=5)[1] == ("ratelimit", '"exports";r=65;t=91')
    # A rolling or lifetime window has no reset time: no t, no Retry-After.
    assert quota_headers(decision(resets_at=None), NOW, refused=True) == [
        ("ratelimit-policy", '"exports";q=100'),
        ("ratelimit", '"exports";r=60'),
    ]
    unlimited = decision(limit=None, remaining=None, is_unlimited=True)
    assert quota_headers(unlimited, NOW) == []


def test_meter_validation() -> None:
    assert Meter.of("x").held == 1
    assert Meter("x", credits=lambda r: 1, reserve=7).held == 7
    with pytest.raises(UsageFlowError, match="reserve is only for callable credits"):
        Meter("x", credits=2, reserve=3)
    with pytest.raises(UsageFlowError, match="printable"):
        Meter("bad\nname")
    with pytest.raises(UsageFlowError, match="charge_if"):
        Meter("x", charge_if=400)  # type: ignore[arg-type]
    with pytest.raises(UsageFlowError, match="feature is required"):
        Meter.of({"credits": 2})


@pytest.fixture
def memory_flow(clock: FakeClock) -> UsageFlow:
    store = open_store("memory://")
    setup_plans(store, clock)
    return UsageFlow(store, clock=clock)


def test_metered_plain_sync_function_uses_current_user_id(memory_flow: UsageFlow) -> None:
    @metered("tiny", flow=memory_flow)
    def job() -> str:
        return f"ran for {current_user_id.get()}"

    with pytest.raises(MeteringError) as no_user:
        job()
    assert no_user.value.problem.status == 401
    token = current_user_id.set("worker-user")
    try:
        assert job() == "ran for worker-user"
        with pytest.raises(UsageFlowError) as spent:
            job()
    finally:
        current_user_id.reset(token)
    # A plain caller sees the core's error: USAGE_LIMIT_ERROR with the decision.
    assert spent.value.code == "USAGE_LIMIT_ERROR"
    assert isinstance(spent.value.details["decision"], Decision)
    assert spent.value.details["upgrade_url"].endswith("client_reference_id=worker-user")
    assert isinstance(spent.value, MeteringError)
    assert spent.value.problem.status == 402


def test_metered_plain_async_function_with_explicit_user(clock: FakeClock) -> None:
    store = open_store("memory://")
    setup_plans(store, clock)
    flow = AsyncUsageFlow(store, clock=clock)

    @metered("chat", credits=lambda n: n, flow=flow, user_id=lambda user, n: user)
    async def generate(user: str, n: int) -> int:
        return n

    async def main() -> list[Any]:
        results: list[Any] = []
        for n in (2, 3, 1):
            try:
                results.append(await generate("u9", n))
            except MeteringError as exc:
                results.append(exc.problem.status)
        return results

    assert asyncio.run(main()) == [2, 3, 402]
    assert store.call(ops.ledger_check(user_id="u9", feature_name="chat")) == (5, 5)


def test_sync_function_with_async_flow_outside_a_worker_thread_is_a_clear_error(
    clock: FakeClock,
) -> None:
    store = open_store("memory://")
    setup_plans(store, clock)

    @metered("chat", flow=AsyncUsageFlow(store), user_id=lambda: "u1")
    def job() -> None:
        return None

    with pytest.raises(UsageFlowError, match=r"pass a usageflow\.UsageFlow for plain sync code"):
        job()


def test_metered_validates_its_arguments() -> None:
    with pytest.raises(UsageFlowError, match="non-empty"):
        metered("")
    with pytest.raises(UsageFlowError, match="between 1 and"):
        metered("x", credits=-1)
    with pytest.raises(UsageFlowError, match="flow must be"):
        metered("x", flow="memory://")  # type: ignore[arg-type]


def test_metered_keeps_the_function_identity() -> None:
    async def handler(request: Request) -> Response:
        """Docs."""
        return PlainTextResponse("x")

    wrapped = metered("x")(handler)
    assert wrapped.__name__ == "handler"
    assert wrapped.__doc__ == "Docs."
    assert inspect.iscoroutinefunction(wrapped)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    user=st.one_of(
        st.none(),
        st.text(max_size=300),
        st.integers(),
        st.floats(allow_nan=True),
        st.binary(max_size=10),
    )
)
def test_hostile_user_ids_never_cause_a_500(memory_flow: UsageFlow, user: object) -> None:
    async def ok(request: Request) -> Response:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/x", ok)])
    app.add_middleware(
        UsageFlowMiddleware, flow=memory_flow, routes={"/x": "unlimited"}, user_id=lambda r: user
    )
    with TestClient(app) as client:
        status = client.get("/x").status_code
    assert status in (200, 400, 401)
