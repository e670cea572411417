"""UsageFlowMiddleware through a real Starlette app (TestClient and httpx ASGITransport)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from tests.integrations.conftest import PAYMENT_LINK, RESET_SECONDS, DeadSQLite
from usageflow import AsyncUsageFlow, UsageFlow, UsageFlowError, metered, ops
from usageflow.context import current_user_id
from usageflow.integrations.starlette import Meter, MeterStats, UsageFlowMiddleware
from usageflow.models import INT64_MAX
from usageflow.testing import FakeClock


def user_header(request: Request) -> str | None:
    return request.headers.get("x-user")


async def ok(request: Request) -> Response:
    return JSONResponse({"ok": True, "user": current_user_id.get()})


async def boom(request: Request) -> Response:
    raise RuntimeError("handler failed")


async def http_error(request: Request) -> Response:
    raise HTTPException(status_code=409, detail="conflict")


async def server_error(request: Request) -> Response:
    return PlainTextResponse("broken", status_code=500)


async def stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(4):
            yield b"x" * 10
            await asyncio.sleep(0)
            if i == 2 and request.query_params.get("cut"):
                raise RuntimeError("stream cut")

    return StreamingResponse(chunks(), media_type="text/plain")


async def tokens(request: Request) -> Response:
    return PlainTextResponse("done", headers={"x-tokens": request.query_params.get("n", "7")})


async def echo_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    await websocket.close()


ROUTES = [
    Route("/v1/exports", ok, methods=["GET", "POST"]),
    Route("/v1/chat/{chat_id:int}", ok, methods=["POST"]),
    Route("/boom", boom),
    Route("/conflict", http_error),
    Route("/server-error", server_error),
    Route("/stream", stream),
    Route("/tokens", tokens),
    Route("/unmetered", ok),
    WebSocketRoute("/ws", echo_ws),
]

METERED = {
    "POST /v1/exports": "exports",
    "/v1/chat/{chat_id:int}": {"feature": "chat", "credits": 2},
    "/boom": "exports",
    "/conflict": "exports",
    "/server-error": "exports",
    "/stream": Meter("tokens", credits=lambda req, resp: resp.body_size, reserve=10),
    "/tokens": Meter("tokens", credits=lambda req, resp: int(resp.headers["x-tokens"])),
}


def make_app(flow: Any, routes: dict[str, Any] | None = None, **options: Any) -> Starlette:
    started: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started.append("up")
        yield

    app = Starlette(routes=ROUTES, lifespan=lifespan)
    app.add_middleware(
        UsageFlowMiddleware,
        flow=flow,
        routes=METERED if routes is None else routes,
        user_id=options.pop("user_id", user_header),
        **options,
    )
    app.state.started = started
    return app


def used(reader: UsageFlow, user: str, feature: str) -> int:
    total, ledger = reader.store.call(ops.ledger_check(user_id=user, feature_name=feature))
    assert total == ledger
    return total


U1 = {"x-user": "u1"}


def test_allowed_requests_carry_quota_headers_and_are_charged(
    any_flow: Any, reader: UsageFlow
) -> None:
    with TestClient(make_app(any_flow)) as client:
        for remaining in (2, 1, 0):
            r = client.post("/v1/exports", headers=U1)
            assert r.status_code == 200
            assert r.json() == {"ok": True, "user": "u1"}  # current_user_id is set
            assert r.headers["ratelimit-policy"] == '"exports";q=3'
            assert r.headers["ratelimit"] == f'"exports";r={remaining};t={RESET_SECONDS}'
            assert "retry-after" not in r.headers
    assert used(reader, "u1", "exports") == 3


def test_spent_quota_answers_402_problem_json(any_flow: Any, reader: UsageFlow) -> None:
    with TestClient(make_app(any_flow)) as client:
        for _ in range(3):
            assert client.post("/v1/exports", headers=U1).status_code == 200
        r = client.post("/v1/exports", headers=U1)
    assert r.status_code == 402
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["ratelimit"] == f'"exports";r=0;t={RESET_SECONDS}'
    assert r.headers["retry-after"] == str(RESET_SECONDS)
    body = r.json()
    assert body == {
        "type": "urn:usageflow:problem:quota-exhausted",
        "title": "Quota exhausted",
        "status": 402,
        "detail": body["detail"],
        "feature": "exports",
        "limit": 3,
        "current": 3,
        "remaining": 0,
        "resets_at": "2024-02-01T00:00:00Z",
        "credit_balance": 0,
        "upgrade_url": f"{PAYMENT_LINK}?client_reference_id=u1",
        "top_up_url": None,
    }
    assert "resets at 2024-02-01T00:00:00Z" in body["detail"]
    assert used(reader, "u1", "exports") == 3


def test_upgrade_url_carries_the_known_email(plan_store: Any, clock: FakeClock) -> None:
    flow = UsageFlow(plan_store, clock=clock)
    flow.update_profile("u2", email="ada@example.com")
    with TestClient(make_app(flow)) as client:
        for _ in range(3):
            client.post("/v1/exports", headers={"x-user": "u2"})
        body = client.post("/v1/exports", headers={"x-user": "u2"}).json()
    assert body["upgrade_url"] == (
        f"{PAYMENT_LINK}?client_reference_id=u2&prefilled_email=ada%40example.com"
    )


def test_no_plan_link_gives_null_upgrade_url(quick_flow: Any) -> None:
    with TestClient(make_app(quick_flow, routes={"/unmetered": "no-such-feature"})) as client:
        r = client.get("/unmetered", headers=U1)
    # The Free plan does not list the feature: limit 0, and Pro does not list it either.
    assert r.status_code == 402
    assert r.json()["limit"] == 0
    assert r.json()["upgrade_url"] is None


def test_unmatched_routes_lifespan_and_websockets_pass_through(
    quick_flow: Any, quick_reader: UsageFlow
) -> None:
    app = make_app(quick_flow)
    with TestClient(app) as client:
        assert app.state.started == ["up"]
        r = client.get("/unmetered", headers=U1)
        assert r.status_code == 200
        assert "ratelimit" not in r.headers
        assert r.json()["user"] is None
        assert client.get("/v1/exports", headers=U1).status_code == 200  # GET is not metered
        assert client.get("/no-such-route").status_code == 404
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_text() == "hello"
    assert used(quick_reader, "u1", "exports") == 0


def test_path_parameters_and_convertors(quick_flow: Any, quick_reader: UsageFlow) -> None:
    with TestClient(make_app(quick_flow)) as client:
        r = client.post("/v1/chat/42", headers=U1)
        assert r.status_code == 200
        assert r.headers["ratelimit"].startswith('"chat";r=3;')
        # {chat_id:int} does not match a word: the router answers, unmetered.
        assert client.post("/v1/chat/abc", headers=U1).status_code == 404
    assert used(quick_reader, "u1", "chat") == 2


def test_no_user_is_401(quick_flow: Any) -> None:
    with TestClient(make_app(quick_flow)) as client:
        r = client.post("/v1/exports")
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["title"] == "Authentication required"
        assert client.post("/v1/exports", headers={"x-user": "  "}).status_code == 401


@pytest.mark.parametrize(
    "bad_user",
    ["u" * 256, "tab\tinside", 3.5, {"id": 1}],
    ids=["too-long", "control-char", "float", "dict"],
)
def test_malformed_user_id_is_400(quick_flow: Any, bad_user: object) -> None:
    app = make_app(quick_flow, user_id=lambda request: bad_user)
    with TestClient(app) as client:
        r = client.post("/v1/exports")
    assert r.status_code == 400
    assert r.json()["title"] == "Invalid user id"


def test_int_user_ids_and_async_user_functions(quick_flow: Any, quick_reader: UsageFlow) -> None:
    async def user_id(request: Request) -> int:
        return 7

    with TestClient(make_app(quick_flow, user_id=user_id)) as client:
        assert client.post("/v1/exports").status_code == 200
    assert used(quick_reader, "7", "exports") == 1


def test_default_user_is_starlettes_authenticated_user(
    quick_flow: Any, quick_reader: UsageFlow
) -> None:
    from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
    from starlette.middleware.authentication import AuthenticationMiddleware
    from starlette.requests import HTTPConnection

    class HeaderAuth(AuthenticationBackend):
        async def authenticate(self, conn: HTTPConnection) -> Any:
            name = conn.headers.get("x-user")
            return (AuthCredentials(["user"]), SimpleUser(name)) if name else None

    app = Starlette(routes=ROUTES)
    app.add_middleware(UsageFlowMiddleware, flow=quick_flow, routes={"POST /v1/exports": "exports"})
    app.add_middleware(AuthenticationMiddleware, backend=HeaderAuth())
    with TestClient(app) as client:
        assert client.post("/v1/exports", headers={"x-user": "ada"}).status_code == 200
        assert client.post("/v1/exports").status_code == 401
    assert used(quick_reader, "ada", "exports") == 1


def test_failed_handlers_are_not_charged(any_flow: Any, reader: UsageFlow) -> None:
    with TestClient(make_app(any_flow), raise_server_exceptions=False) as client:
        r = client.get("/boom", headers=U1)
        assert r.status_code == 500
        r = client.get("/conflict", headers=U1)
        assert r.status_code == 409
        # The HTTPException response passes through the middleware: it carries the headers,
        # and reports the quota as it stands (the hold is released).
        assert r.headers["ratelimit"] == f'"exports";r=3;t={RESET_SECONDS}'
        r = client.get("/server-error", headers=U1)
        assert r.status_code == 500
        assert r.headers["ratelimit"] == f'"exports";r=3;t={RESET_SECONDS}'
        assert (
            client.post("/v1/exports", headers=U1).headers["ratelimit"].startswith('"exports";r=2;')
        )
    assert used(reader, "u1", "exports") == 1


def test_raising_handler_propagates_its_exception(quick_flow: Any, quick_reader: UsageFlow) -> None:
    with TestClient(make_app(quick_flow)) as client, pytest.raises(RuntimeError, match="handler"):
        client.get("/boom", headers=U1)
    assert used(quick_reader, "u1", "exports") == 0
    assert quick_reader.fetch_usage("u1", "exports").current == 0  # no hold left behind


def test_charge_if_is_configurable(quick_flow: Any, quick_reader: UsageFlow) -> None:
    app = make_app(quick_flow, charge_if=lambda status: status < 500)
    with TestClient(app) as client:
        assert client.get("/conflict", headers=U1).status_code == 409
        assert client.get("/server-error", headers=U1).status_code == 500
    assert used(quick_reader, "u1", "exports") == 1


def test_streaming_response_is_charged_when_it_ends(any_flow: Any, reader: UsageFlow) -> None:
    with TestClient(make_app(any_flow), raise_server_exceptions=False) as client:
        r = client.get("/stream", headers=U1)
        assert r.status_code == 200
        assert r.text == "x" * 40
        assert r.headers["ratelimit"].startswith('"tokens";r=90;')  # the 10 reserved
        assert used(reader, "u1", "tokens") == 40  # charged what was streamed
        client.get("/stream?cut=1", headers=U1)  # the stream breaks after 30 bytes
    assert used(reader, "u1", "tokens") == 40
    assert reader.fetch_usage("u1", "tokens").current == 40


def test_credits_computed_from_the_response(any_flow: Any, reader: UsageFlow) -> None:
    with TestClient(make_app(any_flow)) as client:
        assert client.get("/tokens?n=25", headers=U1).status_code == 200
        assert client.get("/tokens?n=0", headers=U1).status_code == 200  # 0: nothing charged
        # A credits function returning garbage charges the reserved amount (1), logged.
        assert client.get("/tokens?n=-5", headers=U1).status_code == 200
    assert used(reader, "u1", "tokens") == 26


def test_huge_credit_values_get_clear_answers(
    any_flow: Any, reader: UsageFlow, caplog: pytest.LogCaptureFixture
) -> None:
    routes = {
        "/v1/exports": {"feature": "exports", "credits": INT64_MAX},
        "/tokens": Meter("unlimited", credits=lambda req, resp: int(resp.headers["x-tokens"])),
    }
    with TestClient(make_app(any_flow, routes=routes)) as client:
        r = client.get("/v1/exports", headers=U1)
        assert r.status_code == 402
        assert r.json()["remaining"] == 3
        assert client.get(f"/tokens?n={INT64_MAX}", headers=U1).status_code == 200
        with caplog.at_level(logging.ERROR, logger="usageflow.integrations"):
            r = client.get(f"/tokens?n={INT64_MAX}", headers=U1)
        # The response was served; the charge that would overflow the counter is refused by
        # the core and logged: never a 500.
        assert r.status_code == 200
        assert "could not commit" in caplog.text
    assert used(reader, "u1", "unlimited") == INT64_MAX


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"routes": {"POST": "x"}}, "must start with '/'"),
        ({"routes": {"FETCH! /x": "x"}}, "not an HTTP method"),
        ({"routes": {"/x/{id:hex}": "x"}}, "unknown convertor"),
        ({"routes": {"/x/{id}/{id}": "x"}}, "appears twice"),
        ({"routes": {"/x/{id": "x"}}, "braces"),
        ({"routes": {"/x": ""}}, "non-empty"),
        ({"routes": {"/x": {"feature": "x", "credits": 0}}}, "between 1 and"),
        ({"routes": {"/x": {"feature": "x", "credits": 2**63}}}, "between 1 and"),
        ({"routes": {"/x": {"feature": "x", "credits": "2"}}}, "must be an int"),
        ({"routes": {"/x": {"feature": "x", "cost": 2}}}, "unknown route option"),
        ({"routes": {"/x": 5}}, "route value"),
        ({"routes": ["/x"]}, "dict of route pattern"),
        ({"user_id": "x-user"}, "user_id must be"),
        ({"fail_open": "yes"}, "fail_open must be"),
        ({"reservation_ttl": -1}, "reservation_ttl"),
        ({"flow": object()}, "flow must be"),
    ],
)
def test_options_are_validated_at_construction(
    quick_flow: Any, options: dict[str, Any], message: str
) -> None:
    kwargs: dict[str, Any] = {"flow": quick_flow, "routes": {}, **options}
    with pytest.raises(UsageFlowError, match=message):
        UsageFlowMiddleware(Starlette(), **kwargs)


def test_unreachable_store_fails_closed_with_503(
    dead_sqlite: DeadSQLite, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    flow = AsyncUsageFlow(dead_sqlite.store, clock=clock)
    stats = MeterStats()
    with TestClient(make_app(flow, stats=stats)) as client:
        assert client.post("/v1/exports", headers=U1).status_code == 200
        dead_sqlite.kill()
        with caplog.at_level(logging.ERROR, logger="usageflow.integrations"):
            r = client.post("/v1/exports", headers=U1)
    assert r.status_code == 503
    assert r.json()["title"] == "Usage metering unavailable"
    assert r.headers["retry-after"] == "5"
    assert "refused with 503" in caplog.text
    assert stats.failed_closed == 1
    assert stats.charged == 1


def test_unreachable_store_passes_with_fail_open(
    dead_sqlite: DeadSQLite, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    flow = UsageFlow(dead_sqlite.store, clock=clock)
    stats = MeterStats()
    routes = {"POST /v1/exports": {"feature": "exports", "fail_open": True}, "/conflict": "chat"}
    with TestClient(make_app(flow, routes=routes, stats=stats)) as client:
        dead_sqlite.kill()
        with caplog.at_level(logging.WARNING, logger="usageflow.integrations"):
            r = client.post("/v1/exports", headers=U1)
        assert r.status_code == 200
        assert "ratelimit" not in r.headers
        assert "fail_open" in caplog.text
        assert client.get("/conflict", headers=U1).status_code == 503  # not fail_open
    assert stats.failed_open == 1
    assert stats.failed_closed == 1


def test_middleware_wide_fail_open(dead_sqlite: DeadSQLite, clock: FakeClock) -> None:
    flow = AsyncUsageFlow(dead_sqlite.store, clock=clock)
    with TestClient(make_app(flow, fail_open=True)) as client:
        dead_sqlite.kill()
        assert client.post("/v1/exports", headers=U1).status_code == 200


def test_headers_can_be_turned_off(quick_flow: Any) -> None:
    with TestClient(make_app(quick_flow, headers=False)) as client:
        assert "ratelimit" not in client.post("/v1/exports", headers=U1).headers


@pytest.mark.asyncio
async def test_200_concurrent_requests_against_a_quota_of_50(
    plan_store: Any, clock: FakeClock, flow_api: str, reader: UsageFlow
) -> None:
    flow: Any
    if flow_api == "async":
        flow = AsyncUsageFlow(plan_store, clock=clock)
    else:
        flow = UsageFlow(plan_store, clock=clock)
    flow_reader = UsageFlow(plan_store, clock=clock)
    flow_reader.create_plan("Free", is_free=True, limits={"exports": 50})
    app = make_app(flow)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        responses = await asyncio.gather(
            *(client.post("/v1/exports", headers=U1) for _ in range(200))
        )
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 50
    assert statuses.count(402) == 150
    assert used(reader, "u1", "exports") == 50
    assert reader.fetch_usage("u1", "exports").current == 50
    assert len(reader.list_events("u1", "exports", limit=1000)) == 50
    remaining = sorted(
        int(r.headers["ratelimit"].split(";r=")[1].split(";")[0])
        for r in responses
        if r.status_code == 200
    )
    assert remaining == list(range(50))  # every grant saw its own place in the quota


def test_decorated_endpoint_uses_the_middlewares_flow(any_flow: Any, reader: UsageFlow) -> None:
    @metered("tiny")
    async def once(request: Request) -> Response:
        return PlainTextResponse(current_user_id.get() or "")

    @metered("chat", credits=lambda response: 3)
    def sync_view(request: Request) -> Response:
        return PlainTextResponse("sync")

    app = Starlette(routes=[Route("/once", once), Route("/sync", sync_view)])
    app.add_middleware(UsageFlowMiddleware, flow=any_flow, user_id=user_header)
    with TestClient(app) as client:
        r = client.get("/once", headers=U1)
        assert (r.status_code, r.text) == (200, "u1")
        assert r.headers["ratelimit"] == f'"tiny";r=0;t={RESET_SECONDS}'
        r = client.get("/once", headers=U1)
        assert r.status_code == 402
        assert r.json()["feature"] == "tiny"
        assert client.get("/once").status_code == 401
        r = client.get("/sync", headers=U1)
        assert r.status_code == 200
        assert r.headers["ratelimit"].startswith('"chat";r=2;')  # 3 charged
    assert used(reader, "u1", "tiny") == 1
    assert used(reader, "u1", "chat") == 3


def test_stacked_metering_charges_once(quick_flow: Any, quick_reader: UsageFlow) -> None:
    @metered("exports")
    @metered("exports")
    @metered("chat")
    async def export(request: Request) -> Response:
        return await helper()

    @metered("exports")
    async def helper() -> Response:
        return PlainTextResponse("done")

    app = Starlette(routes=[Route("/export", export), Route("/routed", export)])
    app.add_middleware(
        UsageFlowMiddleware, flow=quick_flow, routes={"/routed": "exports"}, user_id=user_header
    )
    with TestClient(app) as client:
        assert client.get("/export", headers=U1).status_code == 200
        assert client.get("/routed", headers=U1).status_code == 200
    assert used(quick_reader, "u1", "exports") == 2  # once per request, not 3 or 4 times
    assert used(quick_reader, "u1", "chat") == 2


def test_problem_body_is_json_even_for_odd_feature_names(quick_flow: Any) -> None:
    flow = UsageFlow(quick_flow.store, clock=quick_flow.core.clock)
    flow.create_plan("Free", is_free=True, limits={'ünï "quoted"': 0})
    app = make_app(quick_flow, routes={"/unmetered": 'ünï "quoted"'})
    with TestClient(app) as client:
        r = client.get("/unmetered", headers=U1)
    assert r.status_code == 402
    assert json.loads(r.content)["feature"] == 'ünï "quoted"'
    assert r.headers["ratelimit-policy"] == '"%FCn%EF \\"quoted\\"";q=0'


def test_head_is_metered_like_get(quick_flow: Any, quick_reader: UsageFlow) -> None:
    with TestClient(make_app(quick_flow, routes={"GET /unmetered": "exports"})) as client:
        assert client.head("/unmetered", headers=U1).status_code == 200
        assert client.get("/unmetered", headers=U1).status_code == 200
    assert used(quick_reader, "u1", "exports") == 2


def test_user_function_may_refuse_with_http_exception(quick_flow: Any) -> None:
    def strict_user(request: Request) -> str:
        token = request.headers.get("authorization")
        if token != "Bearer good":
            raise HTTPException(403, "bad token", headers={"www-authenticate": "Bearer"})
        return "u1"

    with TestClient(make_app(quick_flow, user_id=strict_user)) as client:
        r = client.post("/v1/exports", headers={"authorization": "Bearer bad"})
        assert r.status_code == 403
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["detail"] == "bad token"
        assert client.post("/v1/exports", headers={"authorization": "Bearer good"}).is_success


@pytest.mark.asyncio
async def test_client_gone_mid_stream_is_not_charged(
    quick_flow: Any, quick_reader: UsageFlow
) -> None:
    """The server's ``send`` fails once the client has gone (as uvicorn's does): the stream did
    not end, so nothing is charged and the hold is released."""
    app = make_app(quick_flow)
    sent: list[dict[str, Any]] = []
    gone = asyncio.Event()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and len(sent) > 1:
            gone.set()
            raise OSError("client disconnected")
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/stream",
        "raw_path": b"/stream",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"x-user", b"u1"), (b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    with pytest.raises(OSError, match="client disconnected"):
        await app(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 200
    assert used(quick_reader, "u1", "tokens") == 0
    assert quick_reader.fetch_usage("u1", "tokens").current == 0
