"""The Django middleware, ``@metered`` Django views and the Stripe webhook view, through
Django's test ``Client`` / ``AsyncClient``, and over uvicorn serving Django's ASGI app.

Django is configured once for this module (``settings.configure``); the module itself is the
URLconf. Each test sets ``settings.USAGEFLOW`` with ``override_settings`` and builds its own
client, so each gets a middleware built from that setting.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import shutil
import tempfile
import threading
import time
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import django
import httpx
import pytest
from django.conf import settings

_DB_DIR = tempfile.mkdtemp(prefix="usageflow-django-tests-")
atexit.register(shutil.rmtree, _DB_DIR, ignore_errors=True)

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "usageflow.integrations.django.UsageFlowMiddleware",
]

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="usageflow-django-tests",
        ALLOWED_HOSTS=["testserver", "127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
        ],
        MIDDLEWARE=MIDDLEWARE,
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(Path(_DB_DIR) / "django.sqlite3"),
            }
        },
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        USE_TZ=True,
        LOGGING_CONFIG=None,  # leave the logging of the other tests alone
        USAGEFLOW={"store": "memory://"},
    )
    django.setup()

from asgiref.sync import sync_to_async  # noqa: E402
from django.http import (  # noqa: E402
    Http404,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.test import AsyncClient, Client, override_settings  # noqa: E402
from django.urls import include, path  # noqa: E402
from django.utils.decorators import method_decorator  # noqa: E402
from django.views import View  # noqa: E402

from tests.integrations.conftest import (  # noqa: E402
    FREE_LIMITS,
    PAYMENT_LINK,
    RESET_SECONDS,
    DeadSQLite,
    setup_plans,
)
from tests.support.servers import uvicorn_server  # noqa: E402
from tests.support.stripe_events import SECRET, T0, Events  # noqa: E402
from usageflow import AsyncUsageFlow, UsageFlow, UsageFlowError, metered, ops  # noqa: E402
from usageflow.context import current_user_id  # noqa: E402
from usageflow.integrations import django as uf_django  # noqa: E402
from usageflow.integrations.django import (  # noqa: E402
    Meter,
    UsageFlowMiddleware,
    get_flow,
    get_stats,
    stripe_webhook_view,
)
from usageflow.stores.base import Store  # noqa: E402
from usageflow.testing import FakeClock, sign_stripe_payload  # noqa: E402

U1 = {"x-user": "u1"}


# -- the project's views and URLconf ----------------------------------------------------------
def export(request: HttpRequest, **kwargs: Any) -> JsonResponse:
    return JsonResponse({"ok": True, "user": current_user_id.get()})


def chat(request: HttpRequest, chat_id: int) -> JsonResponse:
    return JsonResponse({"chat_id": chat_id})


def with_status(request: HttpRequest, code: int) -> HttpResponse:
    if code == 599:
        raise RuntimeError("view failed")
    if code == 404:
        raise Http404("no such thing")
    return HttpResponse(status=code)


def tokens(request: HttpRequest) -> JsonResponse:
    n = int(request.GET.get("n", "10"))
    response = JsonResponse({"tokens": n})
    response["x-tokens"] = str(n)
    return response


def stream(request: HttpRequest) -> StreamingHttpResponse:
    def chunks() -> Iterator[bytes]:
        for _ in range(3):
            yield b"chunk;"

    return StreamingHttpResponse(chunks(), content_type="text/plain")


async def astream(request: HttpRequest) -> StreamingHttpResponse:
    fail = request.GET.get("fail") == "1"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"chunk;"
            await asyncio.sleep(0)
            if fail:
                raise RuntimeError("the stream failed")

    return StreamingHttpResponse(chunks(), content_type="text/plain")


async def slow_stream(request: HttpRequest) -> StreamingHttpResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"0123456789"
            await asyncio.sleep(0.02)

    return StreamingHttpResponse(chunks(), content_type="text/plain")


@metered("exports")
def decorated_stream(request: HttpRequest) -> StreamingHttpResponse:
    def chunks() -> Iterator[bytes]:
        for _ in range(3):
            yield b"row;"

    return StreamingHttpResponse(chunks(), content_type="text/plain")


def open_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("open")


@metered("exports")
def fbv(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"fbv": "sync", "user": current_user_id.get()})


@metered("chat", credits=2)
async def afbv(request: HttpRequest) -> JsonResponse:
    await asyncio.sleep(0)
    return JsonResponse({"fbv": "async", "user": current_user_id.get()})


@metered("tiny")
def tiny(request: HttpRequest) -> HttpResponse:
    return HttpResponse("tiny")


@metered("exports")
def fbv_fails(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("decorated view failed")


@method_decorator(metered("exports"), name="dispatch")
class ExportView(View):
    def post(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse({"cbv": "sync", "user": current_user_id.get()})


class ChatView(View):
    @method_decorator(metered("chat"))
    async def post(self, request: HttpRequest) -> JsonResponse:
        await asyncio.sleep(0)
        return JsonResponse({"cbv": "async", "user": current_user_id.get()})


api_patterns = [
    path("exports/<int:n>", export, name="exports"),
    path("chat/<int:chat_id>", chat, name="chat"),
]

urlpatterns = [
    path("v1/exports", export, name="exports"),
    path("v1/chat/<int:chat_id>", chat, name="chat"),
    path("api/", include((api_patterns, "api"), namespace="api")),
    path("v1/status/<int:code>", with_status, name="status"),
    path("v1/tokens", tokens, name="tokens"),
    path("v1/stream", stream, name="stream"),
    path("v1/astream", astream, name="astream"),
    path("v1/slow", slow_stream, name="slow"),
    path("v1/decorated-stream", decorated_stream, name="decorated-stream"),
    path("v1/burst", export, name="burst"),
    path("open", open_view, name="open"),
    path("health", open_view, name="health"),
    path("fbv", fbv, name="fbv"),
    path("afbv", afbv, name="afbv"),
    path("tiny", tiny, name="tiny"),
    path("fbv-fails", fbv_fails, name="fbv-fails"),
    path("cbv", ExportView.as_view(), name="cbv"),
    path("acbv", ChatView.as_view(), name="acbv"),
    path("stripe/webhook", stripe_webhook_view(), name="stripe-webhook"),
]


def user_header(request: HttpRequest) -> str | None:
    return request.headers.get("x-user")


ROUTES: dict[str, Any] = {
    "exports": "exports",  # by name: POST /v1/exports
    "GET /v1/chat/<int:chat_id>": {"feature": "chat", "credits": 2},  # by path
    "api:exports": "exports",  # a namespaced name
    "POST /api/chat/<int:chat_id>": "chat",  # a path under include()
    "status": "exports",
    "/v1/stream": "exports",
    "/v1/astream": "exports",
    "slow": "tokens",
    "POST /v1/tokens": Meter(
        "tokens", credits=lambda request, response: int(response["x-tokens"]), reserve=10
    ),
}


def usageflow(flow: UsageFlow, **options: Any) -> Any:
    """``override_settings`` of ``USAGEFLOW``: the flow, the header user, the routes."""
    options.setdefault("routes", ROUTES)
    options.setdefault("user_id", user_header)
    return override_settings(USAGEFLOW={"flow": flow, **options})


def used(reader: UsageFlow, user: str, feature: str) -> int:
    total, ledger = reader.store.call(ops.ledger_check(user_id=user, feature_name=feature))
    assert total == ledger
    assert reader.get_total_usage(user, feature) == total
    return total


@pytest.fixture
def flow(plan_store: Store, clock: FakeClock) -> UsageFlow:
    """A flow over every store (charging tests)."""
    return UsageFlow(plan_store, clock=clock)


@pytest.fixture
def mem_flow(quick_store: Store, clock: FakeClock) -> UsageFlow:
    """A flow over the memory store (the adapter's own logic)."""
    return UsageFlow(quick_store, clock=clock)


# -- routes -----------------------------------------------------------------------------------
def test_route_by_name_charged_then_402(flow: UsageFlow, reader: UsageFlow) -> None:
    with usageflow(flow):
        client = Client()
        for remaining in (2, 1, 0):
            r = client.post("/v1/exports", headers=U1)
            assert r.status_code == 200
            assert r.json() == {"ok": True, "user": "u1"}
            assert r["RateLimit-Policy"] == '"exports";q=3'
            assert r["RateLimit"] == f'"exports";r={remaining};t={RESET_SECONDS}'
        r = client.post("/v1/exports", headers=U1)
    assert r.status_code == 402
    assert r["Content-Type"] == "application/problem+json"
    assert r["RateLimit"] == f'"exports";r=0;t={RESET_SECONDS}'
    assert r["Retry-After"] == str(RESET_SECONDS)
    body = r.json()
    assert body["type"] == "urn:usageflow:problem:quota-exhausted"
    assert (body["feature"], body["limit"], body["current"], body["remaining"]) == (
        "exports",
        3,
        3,
        0,
    )
    assert body["resets_at"] == "2024-02-01T00:00:00Z"
    assert body["upgrade_url"] == f"{PAYMENT_LINK}?client_reference_id=u1"
    assert used(reader, "u1", "exports") == 3
    assert reader.fetch_usage("u1", "exports").current == 3


def test_routes_by_path_include_and_method(mem_flow: UsageFlow, quick_reader: UsageFlow) -> None:
    with usageflow(mem_flow):
        client = Client()
        r = client.get("/v1/chat/7", headers=U1)  # "GET /v1/chat/<int:chat_id>": 2 credits
        assert (r.status_code, r.json()) == (200, {"chat_id": 7})
        assert r["RateLimit"] == f'"chat";r=3;t={RESET_SECONDS}'
        assert client.head("/v1/chat/7", headers=U1).status_code == 200  # HEAD as GET
        r = client.post("/v1/chat/7", headers=U1)  # another method: not metered
        assert r.status_code == 200
        assert "RateLimit" not in r
        assert client.post("/api/chat/1", headers=U1).status_code == 200  # under include()
        assert client.get("/api/chat/1", headers=U1).status_code == 200  # POST only
        assert client.post("/api/exports/5", headers=U1).status_code == 200  # "api:exports"
        assert client.get("/open", headers=U1).status_code == 200
    assert used(quick_reader, "u1", "chat") == 5
    assert used(quick_reader, "u1", "exports") == 1


@pytest.mark.asyncio
async def test_async_client_charged_then_402(flow: UsageFlow, reader: UsageFlow) -> None:
    with usageflow(flow):
        client = AsyncClient()
        statuses = [(await client.post("/v1/exports", headers=U1)).status_code for _ in range(4)]
        r = await client.post("/v1/exports", headers=U1)
    assert statuses == [200, 200, 200, 402]
    assert r.status_code == 402
    assert r.json()["upgrade_url"] == f"{PAYMENT_LINK}?client_reference_id=u1"
    assert r["Retry-After"] == str(RESET_SECONDS)
    assert await sync_to_async(used)(reader, "u1", "exports") == 3


def test_401_400_and_unmetered(mem_flow: UsageFlow) -> None:
    with usageflow(mem_flow):
        client = Client()
        r = client.post("/v1/exports")
        assert r.status_code == 401
        assert r["Content-Type"] == "application/problem+json"
        assert r.json()["title"] == "Authentication required"
        assert client.post("/v1/exports", headers={"x-user": "x" * 300}).status_code == 400
        r = client.get("/open")
        assert (r.status_code, r.content) == (200, b"open")
        assert "RateLimit" not in r
        stats = get_stats().snapshot()
    assert (stats["unauthenticated"], stats["invalid"]) == (1, 1)


def test_failed_views_cost_nothing(flow: UsageFlow, reader: UsageFlow) -> None:
    with usageflow(flow):
        client = Client(raise_request_exception=False)
        r = client.get("/v1/status/599", headers=U1)  # the view raised
        assert r.status_code == 500
        assert r["RateLimit"] == f'"exports";r=3;t={RESET_SECONDS}'  # given back
        assert client.get("/v1/status/404", headers=U1).status_code == 404  # Http404
        assert client.get("/v1/status/500", headers=U1).status_code == 500
        assert client.get("/v1/status/409", headers=U1).status_code == 409
        assert client.get("/v1/status/201", headers=U1).status_code == 201  # charged
        with pytest.raises(RuntimeError, match="view failed"):
            Client().get("/v1/status/599", headers=U1)
        assert get_stats().released == 5
    assert used(reader, "u1", "exports") == 1


def test_credits_from_the_response(mem_flow: UsageFlow, quick_reader: UsageFlow) -> None:
    with usageflow(mem_flow):
        client = Client()
        r = client.post("/v1/tokens?n=60", headers=U1)
        assert r.status_code == 200
        assert r["RateLimit"] == f'"tokens";r=40;t={RESET_SECONDS}'
        assert client.post("/v1/tokens?n=35", headers=U1).status_code == 200
        assert client.post("/v1/tokens?n=1", headers=U1).status_code == 402  # 5 < reserve 10
    assert used(quick_reader, "u1", "tokens") == 95


def test_one_store_call_for_a_fixed_credit_route(clock: FakeClock) -> None:
    """Counted where the store meets the network (PostgreSQL round trips through the wire
    proxy of tests/postgres/_proxy.py): a served request of a fixed-credit route costs one
    store call; a request that is not charged costs one more, which gives the credit back."""
    from tests.integrations.test_store_calls import FEATURE, _postgres_through_proxy

    with _postgres_through_proxy() as counted:
        flow = UsageFlow(counted.store, clock=clock)
        flow.create_plan("Free", is_free=True, limits={FEATURE: 10_000})
        with usageflow(flow, routes={"exports": FEATURE, "status": FEATURE}):
            client = Client()
            for _ in range(10):  # warm the plan cache and the prepared statements
                assert client.post("/v1/exports", headers=U1).status_code == 200
                assert client.get("/v1/status/409", headers=U1).status_code == 409
            before = counted.calls()
            for _ in range(20):
                assert client.post("/v1/exports", headers=U1).status_code == 200
            assert counted.calls() - before == 20
            before = counted.calls()
            for _ in range(10):
                assert client.get("/v1/status/409", headers=U1).status_code == 409
            assert counted.calls() - before == 20
        assert flow.fetch_usage("u1", FEATURE).current == 30  # the 409s cost nothing


# -- the default user: django.contrib.auth ----------------------------------------------------
@pytest.fixture(scope="module")
def auth_user() -> Any:
    from django.contrib.auth.models import User
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    user, _ = User.objects.get_or_create(username="ada")
    return user


def test_default_user_is_the_authenticated_django_user(
    mem_flow: UsageFlow, quick_reader: UsageFlow, auth_user: Any
) -> None:
    with override_settings(USAGEFLOW={"flow": mem_flow, "routes": {"exports": "exports"}}):
        client = Client()
        r = client.post("/v1/exports")
        assert r.status_code == 401  # anonymous
        assert r.json()["type"] == "urn:usageflow:problem:unauthenticated"
        client.force_login(auth_user)
        r = client.post("/v1/exports")
        assert (r.status_code, r.json()["user"]) == (200, str(auth_user.pk))
        assert client.post("/fbv").json() == {"fbv": "sync", "user": str(auth_user.pk)}
    assert used(quick_reader, str(auth_user.pk), "exports") == 2


@pytest.mark.asyncio
async def test_default_user_under_async_client(
    mem_flow: UsageFlow, quick_reader: UsageFlow, auth_user: Any
) -> None:
    with override_settings(USAGEFLOW={"flow": mem_flow, "routes": {"exports": "exports"}}):
        client = AsyncClient()
        assert (await client.post("/v1/exports")).status_code == 401
        await sync_to_async(client.force_login)(auth_user)
        r = await client.post("/v1/exports")
        assert (r.status_code, r.json()["user"]) == (200, str(auth_user.pk))
        r = await client.post("/afbv")
        assert r.json() == {"fbv": "async", "user": str(auth_user.pk)}
    assert used(quick_reader, str(auth_user.pk), "exports") == 1
    assert used(quick_reader, str(auth_user.pk), "chat") == 2


def test_no_auth_middleware_warns_once(
    mem_flow: UsageFlow, caplog: pytest.LogCaptureFixture
) -> None:
    uf_django._warned_no_user.clear()
    with (
        override_settings(
            MIDDLEWARE=MIDDLEWARE[2:],
            USAGEFLOW={"flow": mem_flow, "routes": {"exports": "exports"}},
        ),
        caplog.at_level(logging.WARNING, logger="usageflow.integrations"),
    ):
        client = Client()
        assert client.post("/v1/exports").status_code == 401
        assert client.post("/v1/exports").status_code == 401
    assert caplog.text.count("nothing sets request.user") == 1


# -- @metered views ---------------------------------------------------------------------------
def test_metered_function_views(mem_flow: UsageFlow, quick_reader: UsageFlow) -> None:
    with usageflow(mem_flow, routes={}):
        client = Client()
        r = client.post("/fbv", headers=U1)
        assert r.json() == {"fbv": "sync", "user": "u1"}
        assert r["RateLimit"] == f'"exports";r=2;t={RESET_SECONDS}'
        r = client.post("/afbv", headers=U1)  # an async view under WSGI
        assert r.json() == {"fbv": "async", "user": "u1"}
        assert r["RateLimit"] == f'"chat";r=3;t={RESET_SECONDS}'
        assert client.post("/tiny", headers=U1).status_code == 200
        r = client.post("/tiny", headers=U1)  # @metered refused: its MeteringError answered
        assert r.status_code == 402
        assert r["Content-Type"] == "application/problem+json"
        assert r.json()["feature"] == "tiny"
        assert r["RateLimit-Policy"] == '"tiny";q=1'
        assert client.post("/fbv", headers=None).status_code == 401
        r = Client(raise_request_exception=False).post("/fbv-fails", headers=U1)
        assert r.status_code == 500
    assert used(quick_reader, "u1", "exports") == 1
    assert used(quick_reader, "u1", "chat") == 2
    assert used(quick_reader, "u1", "tiny") == 1


@pytest.mark.asyncio
async def test_metered_views_under_async_client(
    mem_flow: UsageFlow, quick_reader: UsageFlow
) -> None:
    with usageflow(mem_flow, routes={}):
        client = AsyncClient()
        r = await client.post("/afbv", headers=U1)
        assert r.json() == {"fbv": "async", "user": "u1"}
        r = await client.post("/fbv", headers=U1)  # a sync view in Django's thread
        assert r.json() == {"fbv": "sync", "user": "u1"}
        assert r["RateLimit"] == f'"exports";r=2;t={RESET_SECONDS}'
        r = await client.post("/acbv", headers=U1)
        assert r.json() == {"cbv": "async", "user": "u1"}
        assert (await client.post("/tiny", headers=U1)).status_code == 200
        assert (await client.post("/tiny", headers=U1)).status_code == 402
    assert used(quick_reader, "u1", "chat") == 3
    assert used(quick_reader, "u1", "exports") == 1


def test_metered_class_based_views(mem_flow: UsageFlow, quick_reader: UsageFlow) -> None:
    with usageflow(mem_flow, routes={}):
        client = Client()
        r = client.post("/cbv", headers=U1)  # method_decorator(..., name="dispatch")
        assert r.json() == {"cbv": "sync", "user": "u1"}
        assert r["RateLimit"] == f'"exports";r=2;t={RESET_SECONDS}'
        r = client.post("/acbv", headers=U1)  # on an async handler method
        assert r.json() == {"cbv": "async", "user": "u1"}
        assert client.get("/cbv", headers=U1).status_code == 405  # not charged
    assert used(quick_reader, "u1", "exports") == 1
    assert used(quick_reader, "u1", "chat") == 1


def test_a_view_both_routed_and_decorated_is_metered_once(
    mem_flow: UsageFlow, quick_reader: UsageFlow
) -> None:
    with usageflow(mem_flow, routes={"fbv": "exports", "cbv": "chat"}):
        client = Client()
        assert client.post("/fbv", headers=U1).status_code == 200
        r = client.post("/cbv", headers=U1)  # the route's chat and the view's exports
        assert r["RateLimit-Policy"] == '"chat";q=5, "exports";q=3'
    assert used(quick_reader, "u1", "exports") == 2
    assert used(quick_reader, "u1", "chat") == 1


# -- streams ----------------------------------------------------------------------------------
def test_stream_charged_at_its_end_and_given_back_when_closed(
    flow: UsageFlow, reader: UsageFlow
) -> None:
    with usageflow(flow):
        client = Client()
        r = client.get("/v1/stream", headers=U1)
        assert r["RateLimit"] == f'"exports";r=2;t={RESET_SECONDS}'
        assert b"".join(r.streaming_content) == b"chunk;" * 3
        assert used(reader, "u1", "exports") == 1
        r = client.get("/v1/stream", headers=U1)
        assert next(iter(r.streaming_content)) == b"chunk;"
        r.close()  # the client went away: given back
        assert used(reader, "u1", "exports") == 1
        r = client.get("/v1/stream", headers=U1)
        r.close()  # never read
        assert get_stats().snapshot()["released"] == 2
    assert used(reader, "u1", "exports") == 1


def test_a_metered_view_that_streams_is_settled_at_the_end_of_its_stream(
    flow: UsageFlow, reader: UsageFlow
) -> None:
    """``@metered`` on a view returning a ``StreamingHttpResponse``: read to its end, the
    charge stands; closed before, it is given back."""
    with usageflow(flow):
        client = Client()
        r = client.get("/v1/decorated-stream", headers=U1)
        assert b"".join(r.streaming_content) == b"row;" * 3
        r.close()
        assert used(reader, "u1", "exports") == 1
        r = client.get("/v1/decorated-stream", headers=U1)
        assert next(iter(r.streaming_content)) == b"row;"
        r.close()  # the client went away
    assert used(reader, "u1", "exports") == 1
    assert sorted(e.event_type for e in reader.list_events("u1", "exports")) == [
        "credit",
        "usage",
        "usage",
    ]


@pytest.mark.asyncio
async def test_async_stream_under_async_client(flow: UsageFlow, reader: UsageFlow) -> None:
    with usageflow(flow):
        client = AsyncClient()
        r = await client.get("/v1/astream", headers=U1)
        assert b"".join([part async for part in r.streaming_content]) == b"chunk;" * 3
        assert await sync_to_async(used)(reader, "u1", "exports") == 1
        r = await client.get("/v1/astream", headers=U1)
        assert await r.streaming_content.__anext__() == b"chunk;"
        await sync_to_async(r.close)()  # closed before its end: given back
        r = await client.get("/v1/astream?fail=1", headers=U1)
        with pytest.raises(RuntimeError, match="the stream failed"):
            [part async for part in r.streaming_content]  # failed midway: given back
        assert get_stats().snapshot()["released"] == 2
    assert await sync_to_async(used)(reader, "u1", "exports") == 1


# -- exempt, disabled, headers, store failures ------------------------------------------------
def test_exempt_requests_are_unmetered(mem_flow: UsageFlow, quick_reader: UsageFlow) -> None:
    seen: list[str] = []

    def exempt(request: HttpRequest) -> bool:
        seen.append(request.path)
        return request.headers.get("x-internal") == "1"

    with usageflow(mem_flow, exempt=exempt):
        client = Client()
        internal = {**U1, "x-internal": "1"}
        for _ in range(5):
            r = client.post("/v1/exports", headers=internal)
            assert r.status_code == 200
            assert "RateLimit" not in r
        assert client.post("/fbv", headers=internal).status_code == 200  # decorated too
        assert client.post("/v1/exports", headers=U1).status_code == 200
        assert get_stats().exempt == 6
    assert used(quick_reader, "u1", "exports") == 1
    assert len(seen) == 7


def test_exempt_as_a_dotted_path_and_async(mem_flow: UsageFlow) -> None:
    with usageflow(mem_flow, exempt=f"{__name__}.async_exempt"):
        r = Client().post("/v1/exports")  # no user, but exempt: served
        assert r.status_code == 200


async def async_exempt(request: HttpRequest) -> bool:
    await asyncio.sleep(0)
    return True


def test_disabled_and_no_headers(mem_flow: UsageFlow, quick_reader: UsageFlow) -> None:
    with usageflow(mem_flow, enabled=False):
        client = Client()
        for _ in range(5):
            assert client.post("/v1/exports").status_code == 200
            assert client.post("/fbv").status_code == 200
    with usageflow(mem_flow, headers=False):
        r = Client().post("/v1/exports", headers=U1)
        assert r.status_code == 200
        assert "RateLimit" not in r
    assert used(quick_reader, "u1", "exports") == 1


def test_store_failure_503_and_fail_open(
    dead_sqlite: DeadSQLite, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    flow = UsageFlow(dead_sqlite.store, clock=clock)
    with usageflow(flow):
        closed = Client()
        assert closed.post("/v1/exports", headers=U1).status_code == 200
        dead_sqlite.kill()
        r = closed.post("/v1/exports", headers=U1)
        assert r.status_code == 503
        assert r["Retry-After"] == "5"
        assert r.json()["title"] == "Usage metering unavailable"
        assert get_stats().failed_closed == 1
    with (
        usageflow(flow, fail_open=True),
        caplog.at_level(logging.WARNING, logger="usageflow.integrations"),
    ):
        r = Client().post("/v1/exports", headers=U1)
        assert r.status_code == 200
        assert "RateLimit" not in r
        assert get_stats().failed_open == 1
    assert "fail_open" in caplog.text


# -- configuration ----------------------------------------------------------------------------
def test_a_route_key_matching_no_pattern_is_refused(mem_flow: UsageFlow) -> None:
    cases = {
        "export": "'exports'",
        "api:export": "'api:exports'",
        "POST /v1/chats/<int:chat_id>": "'/v1/chat/<int:chat_id>'",
        "/api/exports/<n>": "'/api/exports/<int:n>'",
    }
    for key, closest in cases.items():
        with (
            usageflow(mem_flow, routes={key: "exports"}),
            pytest.raises(UsageFlowError, match="matches no") as caught,
        ):
            Client().get("/open")
        assert caught.value.code.value == "USAGE_CONFIG_ERROR"
        assert f"closest: {closest}" in caught.value.message
        assert key in caught.value.message


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"rutes": {}}, "did you mean 'routes'"),
        ({"fail_open": "yes"}, "fail_open'] must be True or False"),
        ({"headers": 1}, "headers'] must be True or False"),
        ({"enabled": None}, "enabled'] must be True or False"),
        ({"user_id": 42}, "user_id'] must be a function"),
        ({"user_id": "no.such.module.fn"}, "cannot import 'no.such.module.fn'"),
        ({"exempt": "nope"}, "cannot import 'nope'"),
        ({"reservation_ttl": -1}, "reservation_ttl']: reservation_ttl must be"),
        ({"routes": ["exports"]}, "routes'] must be a dict"),
        ({"routes": {"exports": 3}}, "a route value must be a feature name"),
        ({"routes": {"exports": {"feature": "x", "credit": 2}}}, "unknown route option"),
        ({"routes": {"PSOT /v1/exports": "x"}}, "'PSOT' is not an HTTP method"),
        ({"routes": {"WS /v1/exports": "x"}}, "no websocket routes"),
        ({"routes": {"v1/exports/": "x"}}, "not a URL pattern name nor a path"),
        ({"store": 5}, "must be a store URL"),
        ({"store": "memory://", "flow": None, "stripe_webhook_secret": ""}, "non-empty"),
    ],
)
def test_bad_settings_are_config_errors(setting: dict[str, Any], message: str) -> None:
    with override_settings(USAGEFLOW=setting), pytest.raises(UsageFlowError) as caught:
        Client().get("/open")
    assert caught.value.code.value == "USAGE_CONFIG_ERROR"
    assert message in caught.value.message


def test_flow_settings(plan_store: Store, mem_flow: UsageFlow) -> None:
    with (
        override_settings(USAGEFLOW={"flow": AsyncUsageFlow(plan_store)}),
        pytest.raises(UsageFlowError, match="not an AsyncUsageFlow"),
    ):
        Client().get("/open")
    with (
        override_settings(USAGEFLOW={"flow": mem_flow, "store": "memory://"}),
        pytest.raises(UsageFlowError, match="both 'flow' and 'store'"),
    ):
        Client().get("/open")
    with override_settings(USAGEFLOW={"store": "memory://", "stripe_webhook_secret": "whsec"}):
        Client().get("/open")
        flow = get_flow()
        assert flow.stripe_webhook_secret == "whsec"
    with override_settings(USAGEFLOW={"store": "memory://", "stripe_webhook_secret": "whsec"}):
        assert get_flow() is flow  # one flow per store URL in the process
    with override_settings(USAGEFLOW={"flow": mem_flow}):
        middleware = UsageFlowMiddleware(lambda request: HttpResponse())
        assert middleware.flow is mem_flow
        assert middleware.stats is get_stats()


# -- the Stripe webhook view ------------------------------------------------------------------
def signed(body_of: str = "cus_e") -> tuple[str, dict[str, str]]:
    event = Events().checkout(body_of, T0, client_reference_id="u1")
    body, header = sign_stripe_payload(event, SECRET)
    return body, {"Stripe-Signature": header}


def check_webhook(client: Client, store: Store, url: str = "/stripe/webhook") -> None:
    body, headers = signed()
    r = client.post(url, body, content_type="application/json", headers=headers)
    done = {"received": True, "action": "applied", "reason": None, "warning": None}
    assert (r.status_code, r.json()) == (200, done)
    assert UsageFlow(store).get_profile("u1").stripe_customer_id == "cus_e"
    r = client.post(url, body, content_type="application/json", headers=headers)
    assert (r.status_code, r.json()) == (200, {**done, "action": "duplicate"})  # a redelivery
    unsold, header = sign_stripe_payload(
        Events("-unsold").price("price.updated", "price_no", 1, T0), SECRET
    )
    r = client.post(url, unsold, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)
    answer = r.json()
    assert (r.status_code, answer["action"], answer["reason"]) == (200, "ignored", "unknown_price")
    assert "stripe_price_id='price_no'" in answer["warning"]
    r = client.post(
        url, body.replace("cus_e", "cus_x"), content_type="application/json", headers=headers
    )
    assert r.status_code == 400
    assert "does not verify" in r.json()["error"]
    r = client.post(url, body, content_type="application/json")
    assert r.status_code == 400
    assert SECRET not in r.content.decode()
    assert client.get(url).status_code == 405


def test_webhook_view_with_the_settings_flow(store: Store) -> None:
    flow = UsageFlow(store, stripe_webhook_secret=SECRET)
    middleware = [*MIDDLEWARE, "django.middleware.csrf.CsrfViewMiddleware"]
    with override_settings(USAGEFLOW={"flow": flow}, MIDDLEWARE=middleware):
        check_webhook(Client(enforce_csrf_checks=True), store)


@pytest.mark.parametrize("api", ["sync", "async"])
def test_webhook_view_with_a_flow(store: Store, api: str) -> None:
    flow: Any = (AsyncUsageFlow if api == "async" else UsageFlow)(
        store, stripe_webhook_secret=SECRET
    )
    urls = types.ModuleType("webhook_urls")
    urls.urlpatterns = [path("hooks/stripe", stripe_webhook_view(flow))]  # type: ignore[attr-defined]
    with override_settings(ROOT_URLCONF=urls, USAGEFLOW={"store": "memory://"}):
        check_webhook(Client(), store, "/hooks/stripe")
    with pytest.raises(UsageFlowError, match="tolerance"):
        stripe_webhook_view(flow, tolerance=0)
    with pytest.raises(UsageFlowError, match="tolerance"):
        stripe_webhook_view(tolerance=-1)


def test_webhook_store_failure_answers_500(tmp_path: Path) -> None:
    store_path = tmp_path / "gone.db"
    flow = UsageFlow(f"sqlite:///{store_path}", stripe_webhook_secret=SECRET)
    flow.migrate()
    flow.close()
    store_path.unlink()
    store_path.mkdir()
    with override_settings(USAGEFLOW={"flow": flow}):
        body, headers = signed()
        r = Client().post("/stripe/webhook", body, content_type="application/json", headers=headers)
    assert r.status_code == 500
    assert "error" in r.json()


# -- concurrency, and a real ASGI server ------------------------------------------------------
def test_threads_racing_a_quota(plan_store: Store, clock: FakeClock, reader: UsageFlow) -> None:
    """60 concurrent requests from threads against a quota of 20: exactly 20 served."""
    flow = UsageFlow(plan_store, clock=clock)
    flow.create_plan("Free", is_free=True, limits={**FREE_LIMITS, "burst": 20})
    statuses: list[int] = []
    lock = threading.Lock()
    with usageflow(flow, routes={"POST /v1/burst": "burst"}):
        clients = [Client() for _ in range(60)]
        start = threading.Barrier(60)

        def hit(client: Client) -> None:
            start.wait()
            status = client.post("/v1/burst", headers={"x-user": "racer"}).status_code
            with lock:
                statuses.append(status)

        threads = [threading.Thread(target=hit, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(statuses) == [200] * 20 + [402] * 40
    assert used(reader, "racer", "burst") == 20


@pytest.fixture
def asgi_server(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[str, UsageFlow]]:
    """Django's ASGI app (``get_asgi_application``) under uvicorn on 127.0.0.1, metering
    over an SQLite file."""
    from django.core.asgi import get_asgi_application

    url = f"sqlite:///{tmp_path / 'asgi.db'}"
    reader = UsageFlow(url, clock=clock, cache_ttl=0)
    setup_plans(reader.store, clock)
    flow = UsageFlow(url, clock=clock)
    with usageflow(flow):
        try:
            with uvicorn_server(get_asgi_application(), lifespan="off") as base:
                yield base, reader
        finally:
            reader.close()
            flow.close()


def test_over_uvicorn(asgi_server: tuple[str, UsageFlow]) -> None:
    base, reader = asgi_server
    with httpx.Client(base_url=base) as client:
        statuses = [client.post("/v1/exports", headers=U1).status_code for _ in range(2)]
        assert statuses == [200, 200]
        r = client.get("/v1/astream", headers=U1)  # charged once it has been sent
        assert r.text == "chunk;" * 3
        assert r.headers["ratelimit"] == f'"exports";r=0;t={RESET_SECONDS}'
        r = client.post("/v1/exports", headers=U1)
        assert r.status_code == 402
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["retry-after"] == str(RESET_SECONDS)
        assert r.json()["upgrade_url"] == f"{PAYMENT_LINK}?client_reference_id=u1"
        assert client.post("/v1/exports").status_code == 401
        r = client.post("/afbv", headers=U1)  # an async @metered view
        assert r.json() == {"fbv": "async", "user": "u1"}
        assert r.headers["ratelimit"] == f'"chat";r=3;t={RESET_SECONDS}'
        assert client.post("/fbv", headers=U1).status_code == 402  # a sync one, refused
        assert client.get("/open").text == "open"
    assert used(reader, "u1", "exports") == 3
    assert used(reader, "u1", "chat") == 2


class SyncOnlyMiddleware:
    """A middleware that only runs sync: under ASGI, Django adapts the chain around it."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        return self.get_response(request)


@pytest.mark.asyncio
@pytest.mark.parametrize("where", ["inside", "outside"])
async def test_with_a_sync_only_middleware_under_asgi(
    mem_flow: UsageFlow, quick_reader: UsageFlow, where: str
) -> None:
    """Django then runs our middleware sync, or process_view in a thread: the user and the
    features metered still reach the view."""
    sync_only = f"{__name__}.SyncOnlyMiddleware"
    chain = [*MIDDLEWARE, sync_only] if where == "inside" else [sync_only, *MIDDLEWARE]
    with (
        override_settings(MIDDLEWARE=chain),
        usageflow(mem_flow, routes={"afbv": "chat", "fbv": "exports", "astream": "tokens"}),
    ):
        client = AsyncClient()
        r = await client.post("/afbv", headers=U1)  # routed and decorated: metered once
        assert r.json() == {"fbv": "async", "user": "u1"}
        assert r["RateLimit"] == f'"chat";r=4;t={RESET_SECONDS}'
        r = await client.post("/fbv", headers=U1)
        assert r.json() == {"fbv": "sync", "user": "u1"}
        r = await client.get("/v1/astream", headers=U1)
        assert b"".join([part async for part in r.streaming_content]) == b"chunk;" * 3
        assert (await client.post("/v1/exports", headers=U1)).status_code == 200
    assert used(quick_reader, "u1", "chat") == 1
    assert used(quick_reader, "u1", "exports") == 1
    assert used(quick_reader, "u1", "tokens") == 1


def test_stream_cut_by_the_client_over_uvicorn(asgi_server: tuple[str, UsageFlow]) -> None:
    """The client goes away mid-stream: Django cancels the response, the charge is given back."""
    base, reader = asgi_server
    with httpx.Client(base_url=base) as client:
        with client.stream("GET", "/v1/slow", headers=U1) as r:
            assert r.headers["ratelimit"] == f'"tokens";r=99;t={RESET_SECONDS}'
            assert next(r.iter_bytes()).startswith(b"0123456789")
        deadline = time.monotonic() + 10
        while get_stats().released < 1:
            assert time.monotonic() < deadline, "the cut stream was not given back"
            time.sleep(0.02)
        r = client.get("/v1/slow", headers=U1)  # read to its end: charged
        assert len(r.content) == 1000
    assert used(reader, "u1", "tokens") == 1
