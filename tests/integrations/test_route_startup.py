"""``UsageFlowMiddleware`` and ``UsageFlowFlask`` at start-up and at the edges of metering.

A route table whose key names no route of the app would meter nothing: it is refused when the
app starts (or, served without lifespan, at the first request), naming the key and the
closest route. Right keys under ``Mount`` and FastAPI router prefixes are metered. ``exempt``
lets requests through unmetered; a forgotten ``user_id=`` is warned about once; a websocket
route is charged once per accepted connection.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from flask import Flask
from flask import request as flask_request
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect

from usageflow import ErrorCodes, UsageFlow, UsageFlowError, metered, ops
from usageflow.integrations.flask import UsageFlowFlask
from usageflow.integrations.starlette import MeterStats, UsageFlowMiddleware

U1 = {"x-user": "u1"}


def user_header(connection: HTTPConnection) -> str | None:
    return connection.headers.get("x-user")


def usage(reader: UsageFlow, feature: str, user: str = "u1") -> int:
    """The user's usage through the public API; the counters agree with the ledger."""
    current = reader.fetch_usage(user, feature).current
    assert reader.store.call(ops.ledger_check(user_id=user, feature_name=feature)) == (
        current,
        current,
    )
    return current


class App:
    """A Starlette app with the routes the keys are checked against; counts handler calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def ok(self, request: Request) -> Response:
        self.calls.append(request.url.path)
        return PlainTextResponse("ok")

    def build(self, flow: Any, routes: dict[str, Any], **options: Any) -> Starlette:
        app = Starlette(
            routes=[
                Route("/exports", self.ok, methods=["POST"]),
                Route("/exports/{id:int}", self.ok),
                Route("/v1/chat/{chat_id}", self.ok, methods=["POST"]),
                Route("/health", self.ok),
            ]
        )
        options.setdefault("user_id", user_header)
        app.add_middleware(UsageFlowMiddleware, flow=flow, routes=routes, **options)
        return app


#: (typo key, the route the error names as closest).
TYPOS = [
    ("POST /export", "POST /exports"),
    ("POST /exports/", "POST /exports"),
    ("/exports/<int:id>", "/exports/{id:int}"),
    ("/v1/chat/{chat_id:int}", "/v1/chat/{chat_id}"),
]


def _table(typo: str) -> dict[str, str]:
    """A right key for ``POST /exports`` beside the typo: if the check were skipped, requests
    to ``/exports`` would be charged."""
    return {"POST /exports": "exports", typo: "chat"}


def _refused(error: UsageFlowError, key: str, closest: str) -> None:
    assert error.code is ErrorCodes.USAGE_CONFIG_ERROR
    assert repr(key) in error.message
    assert repr(closest) in error.message
    assert error.details["key"] == key
    assert error.details["closest"][0] == closest


# -- typo keys --------------------------------------------------------------------------------
@pytest.mark.parametrize(("typo", "closest"), TYPOS)
def test_a_typo_key_is_refused_when_the_app_starts(
    quick_flow: Any, quick_reader: UsageFlow, typo: str, closest: str
) -> None:
    """With lifespan, the app does not start: entering the ``TestClient`` raises a
    ``USAGE_CONFIG_ERROR`` naming the key and the closest route, and nothing is served."""
    app = App()
    with pytest.raises(UsageFlowError) as info, TestClient(app.build(quick_flow, _table(typo))):
        pass
    _refused(info.value, typo, closest)
    assert app.calls == []
    assert usage(quick_reader, "exports") == 0


@pytest.mark.parametrize(("typo", "closest"), TYPOS)
def test_a_typo_key_is_refused_at_the_first_request_without_lifespan(
    quick_flow: Any, quick_reader: UsageFlow, typo: str, closest: str
) -> None:
    """Served without lifespan (a ``TestClient`` not entered), the first request raises the
    error, and so does every later one: no request is answered 2xx, none reaches the handler,
    nothing is charged."""
    app = App()
    client = TestClient(app.build(quick_flow, _table(typo)))
    for _ in range(2):
        with pytest.raises(UsageFlowError) as info:
            client.post("/exports", headers=U1)
        _refused(info.value, typo, closest)
    quiet = TestClient(app.build(quick_flow, _table(typo)), raise_server_exceptions=False)
    assert quiet.post("/exports", headers=U1).status_code == 500
    assert app.calls == []
    assert usage(quick_reader, "exports") == 0


@pytest.mark.asyncio
@pytest.mark.parametrize(("typo", "closest"), TYPOS)
async def test_a_typo_key_is_refused_when_the_asgi_app_is_called_directly(
    quick_flow: Any, quick_reader: UsageFlow, typo: str, closest: str
) -> None:
    """An ASGI server without lifespan calls the app with an http scope: the call raises the
    error and no 2xx response is started."""
    app = App()
    asgi = app.build(quick_flow, _table(typo))
    sent: list[Message] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/exports",
        "raw_path": b"/exports",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), (b"x-user", b"u1")],
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    with pytest.raises(UsageFlowError) as info:
        await asgi(scope, receive, send)
    _refused(info.value, typo, closest)
    starts = [m["status"] for m in sent if m["type"] == "http.response.start"]
    assert not any(200 <= status < 300 for status in starts)
    assert app.calls == []
    assert usage(quick_reader, "exports") == 0


def test_a_method_typo_is_refused_when_the_middleware_is_built(quick_flow: Any) -> None:
    """``"PSOT /exports"`` is not an HTTP method: refused by the constructor itself, before any
    app starts."""
    with pytest.raises(UsageFlowError) as info:
        UsageFlowMiddleware(
            App().build(quick_flow, {}), flow=quick_flow, routes={"PSOT /exports": "x"}
        )
    assert info.value.code is ErrorCodes.USAGE_CONFIG_ERROR
    assert "PSOT" in info.value.message


# -- right keys under prefixes ----------------------------------------------------------------
def test_full_path_keys_under_a_mount_start_and_are_metered(
    quick_flow: Any, quick_reader: UsageFlow
) -> None:
    """A key with the ``Mount`` prefix (``POST /api/exports``) passes the start-up check and
    meters the mounted route."""

    async def export(request: Request) -> Response:
        return PlainTextResponse("exported")

    app = Starlette(routes=[Mount("/api", routes=[Route("/exports", export, methods=["POST"])])])
    app.add_middleware(
        UsageFlowMiddleware,
        flow=quick_flow,
        routes={"POST /api/exports": "exports"},
        user_id=user_header,
    )
    with TestClient(app) as client:
        for _ in range(2):
            assert client.post("/api/exports", headers=U1).status_code == 200
    assert usage(quick_reader, "exports") == 2


def test_full_path_keys_under_fastapi_router_prefixes_start_and_are_metered(
    quick_flow: Any, quick_reader: UsageFlow
) -> None:
    """An ``APIRouter(prefix="/v1")`` included with ``prefix="/api"``: the key
    ``POST /api/v1/items`` passes the check and meters the route."""
    router = APIRouter(prefix="/v1")

    @router.post("/items")
    async def create_item() -> dict[str, bool]:
        return {"ok": True}

    app = FastAPI()
    app.include_router(router, prefix="/api")
    app.add_middleware(
        UsageFlowMiddleware,
        flow=quick_flow,
        routes={"POST /api/v1/items": "exports"},
        user_id=user_header,
    )
    with TestClient(app) as client:
        for _ in range(3):
            assert client.post("/api/v1/items", headers=U1).status_code == 200
        assert client.post("/api/v1/items", headers=U1).status_code == 402  # quota of 3
    assert usage(quick_reader, "exports") == 3


# -- exempt -----------------------------------------------------------------------------------
def test_exempt_requests_pass_without_a_user_and_are_not_charged(
    quick_flow: Any, quick_reader: UsageFlow
) -> None:
    """``exempt=lambda request: request.url.path == "/health"``: the metered health route is
    served without a user, charges nothing and is counted in ``stats.exempt``; the other
    metered routes still need a user."""
    app = App()
    stats = MeterStats()
    asgi = app.build(
        quick_flow,
        {"GET /health": "exports", "POST /exports": "exports"},
        exempt=lambda request: request.url.path == "/health",
        stats=stats,
    )
    with TestClient(asgi) as client:
        for _ in range(5):
            response = client.get("/health")
            assert response.status_code == 200
            assert "ratelimit" not in response.headers
        assert client.post("/exports").status_code == 401
        assert client.post("/exports", headers=U1).status_code == 200
    assert stats.exempt == 5
    assert (stats.allowed, stats.unauthenticated) == (1, 1)
    assert app.calls == ["/health"] * 5 + ["/exports"]
    assert usage(quick_reader, "exports") == 1


def test_an_async_exempt_function_may_let_admins_through(
    quick_flow: Any, quick_reader: UsageFlow
) -> None:
    """An (async) exempt function answering True for an admin header: the admin's requests
    are served unmetered, without a user, and counted as exempt; found on the middleware
    instance of the built stack."""

    async def is_admin(connection: HTTPConnection) -> bool:
        return connection.headers.get("x-admin") == "yes"

    app = App()
    asgi = app.build(quick_flow, {"POST /exports": "exports"}, exempt=is_admin)
    with TestClient(asgi) as client:
        for _ in range(4):  # more than the quota of 3
            assert client.post("/exports", headers={"x-admin": "yes"}).status_code == 200
        assert client.post("/exports", headers={"x-admin": "no"}).status_code == 401
    middleware = asgi.middleware_stack
    while not isinstance(middleware, UsageFlowMiddleware):
        middleware = middleware.app  # type: ignore[union-attr]
    assert middleware.stats.exempt == 4
    assert middleware.stats.unauthenticated == 1
    assert usage(quick_reader, "exports") == 0


def test_an_exempt_request_meters_nothing_inside_it(
    quick_flow: Any, quick_reader: UsageFlow
) -> None:
    """Exempt is asked once per request, routed or not, and switches off the ``@metered``
    handlers inside it too: an internal call to a decorated endpoint charges nothing."""

    @metered("exports")
    async def decorated(request: Request) -> Response:
        return PlainTextResponse("ok")

    asgi = Starlette(routes=[Route("/internal/exports", decorated, methods=["POST"])])
    stats = MeterStats()
    asgi.add_middleware(
        UsageFlowMiddleware,
        flow=quick_flow,
        user_id=user_header,
        exempt=lambda request: request.headers.get("x-internal") == "yes",
        stats=stats,
    )
    with TestClient(asgi) as client:
        for _ in range(4):  # more than the quota of 3, and no user
            response = client.post("/internal/exports", headers={"x-internal": "yes"})
            assert response.status_code == 200
        assert client.post("/internal/exports", headers=U1).status_code == 200
    assert stats.exempt == 4
    assert usage(quick_reader, "exports") == 1


def test_flask_exempt_when_lets_requests_through_uncharged(
    quick_store: Any, quick_reader: UsageFlow, clock: Any
) -> None:
    """``UsageFlowFlask(exempt_when=...)``: a health check, or any request with the admin
    header, reaches its ``@metered`` view without a user, is not charged, and is counted in
    ``stats.exempt``."""
    app = Flask(__name__)
    stats = MeterStats()
    UsageFlowFlask(
        app,
        flow=UsageFlow(quick_store, clock=clock),
        user_id=lambda: flask_request.headers.get("x-user"),
        exempt_when=lambda: (
            flask_request.path == "/health" or flask_request.headers.get("x-admin") == "yes"
        ),
        stats=stats,
    )

    @app.get("/health")
    @metered("exports")
    def health() -> str:
        return "ok"

    @app.post("/exports")
    @metered("exports")
    def export() -> str:
        return "exported"

    client = app.test_client()
    for _ in range(3):
        assert client.get("/health").status_code == 200
    for _ in range(4):
        assert client.post("/exports", headers={"x-admin": "yes"}).status_code == 200
    assert client.post("/exports").status_code == 401
    assert client.post("/exports", headers=U1).status_code == 200
    assert stats.exempt == 7
    assert (stats.allowed, stats.unauthenticated) == (1, 1)
    assert usage(quick_reader, "exports") == 1


# -- a forgotten user_id ----------------------------------------------------------------------
def test_a_middleware_without_user_id_warns_once_and_answers_401(
    quick_flow: Any, quick_reader: UsageFlow, caplog: pytest.LogCaptureFixture
) -> None:
    """No ``user_id=`` and no authentication middleware: every metered request is answered
    401, and ONE warning naming ``user_id=`` is logged, however many requests come."""
    app = Starlette(routes=[Route("/exports", App().ok, methods=["POST"])])
    app.add_middleware(UsageFlowMiddleware, flow=quick_flow, routes={"POST /exports": "exports"})
    with caplog.at_level(logging.WARNING, logger="usageflow"), TestClient(app) as client:
        for _ in range(5):
            assert client.post("/exports", headers=U1).status_code == 401
    warnings = [r for r in caplog.records if "user_id=" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert usage(quick_reader, "exports") == 0


# -- websockets -------------------------------------------------------------------------------
async def room(websocket: WebSocket) -> None:
    """Echoes three messages; the room ``closed`` is closed without being accepted."""
    if websocket.path_params["room"] == "closed":
        await websocket.close()
        return
    await websocket.accept()
    for _ in range(3):
        await websocket.send_text(await websocket.receive_text())
    await websocket.close()


def test_a_websocket_route_is_charged_once_at_accept(
    quick_flow: Any, quick_reader: UsageFlow
) -> None:
    """``"WS /ws/{room}"``: an accepted connection costs one credit however many messages it
    carries; a connection the app closes without accepting costs nothing; once the quota is
    spent (3) a connection is denied with 402; without a user, 401."""
    app = Starlette(routes=[WebSocketRoute("/ws/{room}", room)])
    app.add_middleware(
        UsageFlowMiddleware,
        flow=quick_flow,
        routes={"WS /ws/{room}": "exports"},
        user_id=user_header,
    )

    def chat(client: TestClient, name: str) -> None:
        with client.websocket_connect(f"/ws/{name}", headers=U1) as ws:
            for text in ("a", "b", "c"):
                ws.send_text(text)
                assert ws.receive_text() == text

    with TestClient(app) as client:
        chat(client, "one")
        assert usage(quick_reader, "exports") == 1
        for _ in range(2):
            with (
                pytest.raises(WebSocketDisconnect) as closed,
                client.websocket_connect("/ws/closed", headers=U1),
            ):
                pass
            assert not isinstance(closed.value, WebSocketDenialResponse)
        assert usage(quick_reader, "exports") == 1
        chat(client, "two")
        chat(client, "three")
        assert usage(quick_reader, "exports") == 3
        with (
            pytest.raises(WebSocketDenialResponse) as denied,
            client.websocket_connect("/ws/four", headers=U1),
        ):
            pass
        assert denied.value.status_code == 402
        with (
            pytest.raises(WebSocketDenialResponse) as anonymous,
            client.websocket_connect("/ws/five"),
        ):
            pass
        assert anonymous.value.status_code == 401
    assert usage(quick_reader, "exports") == 3
