"""The route table's keys checked against the routes of real Starlette and FastAPI apps."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, WebSocket
from starlette.applications import Starlette
from starlette.datastructures import URLPath
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import (
    BaseRoute,
    Host,
    Match,
    Mount,
    NoMatchFound,
    Route,
    Router,
    WebSocketRoute,
)
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from usageflow import ErrorCodes, UsageFlowError
from usageflow.integrations._asgi_routes import DeclaredRoute, check_route_keys, declared_routes


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


async def ws(websocket: Any) -> None:
    await websocket.accept()
    await websocket.close()


def starlette_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/exports", ok, methods=["POST"]),
            Route("/exports/{id:int}", ok),
            Route("/v1/chat/{chat_id}", ok, methods=["GET", "POST"]),
            Route("/health", ok),
            WebSocketRoute("/ws/{room}", ws),
        ]
    )


def fastapi_app() -> FastAPI:
    router = APIRouter(prefix="/v1")

    @router.post("/exports")
    def export() -> dict[str, bool]:
        return {"ok": True}

    @router.get("/files/{file_id:int}")
    def file(file_id: int) -> dict[str, int]:
        return {"id": file_id}

    @router.websocket("/ws/{room}")
    async def socket(websocket: WebSocket, room: str) -> None:
        await websocket.close()

    inner = APIRouter()

    @inner.delete("/jobs/{job_id}")
    def cancel(job_id: str) -> dict[str, str]:
        return {"id": job_id}

    router.include_router(inner, prefix="/admin")
    app = FastAPI()
    app.include_router(router, prefix="/api")
    return app


def refused(keys: Iterable[str], app: object) -> UsageFlowError:
    with pytest.raises(UsageFlowError) as caught:
        check_route_keys(keys, app)
    assert caught.value.code is ErrorCodes.USAGE_CONFIG_ERROR
    return caught.value


# -- typos are refused, the closest route named ---------------------------------------------
@pytest.mark.parametrize(
    ("key", "closest"),
    [
        ("POST /export", "POST /exports"),
        ("POST /exports/", "POST /exports"),
        ("/exports/<int:id>", "/exports/{id:int}"),
        ("/exports/{id}", "/exports/{id:int}"),
        ("/v1/chat/{chat_id:int}", "/v1/chat/{chat_id}"),
        ("/v1/chat/{id}", "/v1/chat/{chat_id}"),
        ("DELETE /v1/chat/{chat_id}", "GET /v1/chat/{chat_id}"),
        ("GET /exports", "POST /exports"),
        ("/ws/{room}", "WS /ws/{room}"),
        ("GET /ws/{room}", "WS /ws/{room}"),
        ("WS /health", "GET /health"),
    ],
)
def test_a_typo_is_refused_naming_the_closest_route(key: str, closest: str) -> None:
    exc = refused([key], starlette_app())
    assert exc.details["key"] == key
    assert closest in exc.details["closest"]
    assert exc.details["keys"] == [key]
    assert f"route key {key!r} matches no route of this app; closest: " in exc.message
    assert repr(closest) in exc.message
    assert "Mount and router prefixes included" in exc.message


def test_the_error_of_the_issue() -> None:
    exc = refused(["POST /export"], starlette_app())
    assert exc.details["closest"] == ["POST /exports"]
    assert exc.message.startswith(
        "route key 'POST /export' matches no route of this app; closest: 'POST /exports'. "
        "Keys are route templates with the full path"
    )


def test_every_bad_key_is_reported_in_one_error() -> None:
    keys = ["POST /exports", "POST /export", "/helth", "/v1/chat/{chat_id}"]
    exc = refused(keys, starlette_app())
    assert exc.details["keys"] == ["POST /export", "/helth"]
    assert exc.details["key"] == "POST /export"
    assert "1 more bad key(s): '/helth'" in exc.message


def test_with_nothing_close_the_first_declared_routes_are_listed() -> None:
    exc = refused(["/zzzzzzzzzzzzzzzzzzzzzzzzzz"], starlette_app())
    assert exc.details["closest"] == [
        "/exports",
        "/exports/{id:int}",
        "/v1/chat/{chat_id}",
        "/health",
        "WS /ws/{room}",
    ]
    assert "declared routes include: '/exports'" in exc.message


def test_an_app_without_routes_refuses_every_key() -> None:
    exc = refused(["/x"], Starlette())
    assert "this app declares no routes" in exc.message
    assert exc.details["closest"] == []


def test_a_typo_under_an_included_router_is_refused() -> None:
    exc = refused(["POST /v1/exports"], fastapi_app())
    assert exc.details["closest"][0] == "POST /api/v1/exports"


def test_a_malformed_key_is_a_config_error() -> None:
    exc = refused(["exports"], starlette_app())
    assert "must start with '/'" in exc.message
    assert refused(["WS ws/{room}"], starlette_app()).code is ErrorCodes.USAGE_CONFIG_ERROR


# -- right keys pass ---------------------------------------------------------------------------
def test_right_keys_pass_on_a_starlette_app() -> None:
    check_route_keys(
        [
            "POST /exports",
            "post /exports",
            "/exports",
            "GET /exports/{id:int}",
            "HEAD /exports/{id:int}",
            "/v1/chat/{chat_id}",
            "/v1/chat/{chat_id:str}",
            "POST /v1/chat/{chat_id:str}",
            "HEAD /v1/chat/{chat_id}",
            "WS /ws/{room}",
            "ws /ws/{room:str}",
        ],
        starlette_app(),
    )


def test_no_keys_check_nothing() -> None:
    check_route_keys([], starlette_app())
    check_route_keys([], PlainASGI())


def test_full_paths_under_mounts_and_hosts() -> None:
    app = Starlette(
        routes=[
            Mount("/api", routes=[Route("/exports", ok, methods=["POST"])]),
            Mount("/sub", app=Starlette(routes=[Mount("/v2", routes=[Route("/x/{n:int}", ok)])])),
            Mount("/users/{user_id}", routes=[WebSocketRoute("/live", ws)]),
            Host("api.example.com", app=Router(routes=[Route("/hosted", ok, methods=["PUT"])])),
            Mount("/wrapped", app=GZipMiddleware(Starlette(routes=[Route("/z", ok)]))),
            Mount("/mw", routes=[Route("/y", ok)], middleware=[Middleware(GZipMiddleware)]),
        ]
    )
    check_route_keys(
        [
            "POST /api/exports",
            "GET /sub/v2/x/{n:int}",
            "WS /users/{user_id:str}/live",
            "PUT /hosted",
            "/wrapped/z",
            "HEAD /mw/y",
        ],
        app,
    )
    assert refused(["POST /exports"], app).details["closest"][0] == "POST /api/exports"
    assert refused(["/sub/x/{n:int}"], app).details["closest"][0] == "/sub/v2/x/{n:int}"


def test_fastapi_included_routers_carry_their_prefixes() -> None:
    app = fastapi_app()
    check_route_keys(
        [
            "POST /api/v1/exports",
            "GET /api/v1/files/{file_id:int}",
            "WS /api/v1/ws/{room}",
            "DELETE /api/v1/admin/jobs/{job_id}",
            "/api/v1/admin/jobs/{job_id:str}",
            "GET /docs",
        ],
        app,
    )
    api = {(r.methods, r.template) for r in declared_routes(app)}
    assert (frozenset({"POST"}), "/api/v1/exports") in api
    assert (frozenset({"WS"}), "/api/v1/ws/{room}") in api
    assert (frozenset({"DELETE"}), "/api/v1/admin/jobs/{job_id}") in api


def test_head_counts_where_get_is_served() -> None:
    app = FastAPI()

    @app.get("/report")
    def report() -> dict[str, bool]:
        return {"ok": True}

    check_route_keys(["HEAD /report", "GET /report"], app)
    refused(["POST /report"], app)


def test_a_route_over_an_asgi_endpoint_serves_any_method() -> None:
    app = Starlette(routes=[Route("/raw", PlainASGI())])
    assert declared_routes(app) == [DeclaredRoute(None, "/raw")]
    check_route_keys(["PATCH /raw", "/raw"], app)
    refused(["WS /raw"], app)


def test_a_route_with_an_empty_method_list_serves_any_method() -> None:
    app = Starlette(routes=[Route("/any", ok, methods=[])])
    check_route_keys(["DELETE /any"], app)


# -- opaque mounts -----------------------------------------------------------------------------
def test_keys_under_an_opaque_mount_pass_on_the_prefix(tmp_path: Path) -> None:
    app = Starlette(
        routes=[
            Route("/exports", ok, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=tmp_path)),
            Mount("/legacy", app=PlainASGI()),
        ]
    )
    assert declared_routes(app)[1:] == [
        DeclaredRoute(None, "/static/{path:path}", opaque=True),
        DeclaredRoute(None, "/legacy/{path:path}", opaque=True),
    ]
    check_route_keys(["/static/report.pdf", "POST /legacy/v1/{anything}", "WS /legacy/ws"], app)
    refused(["/static"], app)
    refused(["/staticfiles/x"], app)


class CustomRoute(BaseRoute):
    """A route kind the check does not know."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await PlainASGI()(scope, receive, send)


def test_a_route_of_an_unknown_kind_is_opaque_at_its_prefix() -> None:
    app = Starlette(routes=[Route("/exports", ok), Mount("/custom", routes=[CustomRoute()])])
    assert declared_routes(app)[1] == DeclaredRoute(None, "/custom/{path:path}", opaque=True)
    check_route_keys(["POST /custom/anything"], app)
    refused(["POST /export"], app)


# -- wrapped apps and plain ASGI apps ----------------------------------------------------------
class Passthrough:
    """A pure ASGI middleware keeping the next app in ``.app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class PlainASGI:
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("plain")(scope, receive, send)


def test_an_app_wrapped_by_middleware_is_walked() -> None:
    wrapped = Passthrough(GZipMiddleware(starlette_app()))
    check_route_keys(["POST /exports"], wrapped)
    assert refused(["POST /export"], wrapped).details["closest"] == ["POST /exports"]


def test_the_middleware_stack_a_starlette_app_builds_is_walked() -> None:
    app = starlette_app()
    app.add_middleware(Passthrough)
    stack = app.build_middleware_stack()
    check_route_keys(["POST /exports", "WS /ws/{room}"], stack)
    refused(["POST /export"], stack)


@pytest.mark.parametrize("app", [PlainASGI(), Passthrough(PlainASGI())])
def test_a_plain_asgi_app_cannot_be_checked(app: object) -> None:
    exc = refused(["POST /exports"], app)
    assert "needs a Starlette or FastAPI app whose routes it can check" in exc.message
    assert "@metered" in exc.message
    with pytest.raises(UsageFlowError):
        declared_routes(app)
