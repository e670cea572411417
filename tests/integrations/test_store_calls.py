"""Store calls per metered request, counted where the store meets the network (never timed).

The promise: for a route or decorated handler with a fixed number of credits, a served request
costs exactly ONE store call (an atomic ``consume`` before the handler, nothing after); a
request that is not charged (here: answered 500) costs one more call that gives the credits
back, so that it costs the user nothing; ``settle="hold"`` keeps reserve -> commit (two calls).

How the calls are counted, on each store:

* **Supabase**: the store talks HTTP to the PostgREST stand-in of ``tests/support/postgrest.py``
  (real PostgreSQL behind it). Every HTTP request the stand-in's server parses is counted (its
  request handler class is subclassed for this test's private server; nothing of ours is
  mocked), and checked against the stand-in's own count of the RPCs it ran, so an HTTP request
  that is not an RPC would show up as a difference.
* **PostgreSQL**: the store connects through the TCP proxy of ``tests/postgres/_proxy.py``,
  which parses the client's bytes as PostgreSQL protocol messages and counts every simple
  ``Query`` and every ``Sync`` (the end of one extended-protocol exchange): the round trips
  the client waits on. This counts what crossed the wire, whatever the driver or pool did,
  which neither a hook into our code nor ``pg_stat_statements`` (server-wide, not loaded by
  default) would. The pool has one connection, so that psycopg's one-off preparation of a
  statement (one extra round trip the fifth time a statement runs on a connection) happens
  during the warm-up, as does the loading of the plan cache.

Each test warms up with ``WARM_UP`` requests of the route under test, then counts ``N``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask import request as flask_request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.postgres._proxy import PgProxy
from tests.support.postgres import fresh_schema, store_url
from tests.support.postgrest import PostgrestStandIn, running
from tests.support.stores import hold_rows, postgres_url
from usageflow import AsyncUsageFlow, UsageFlow, metered, ops
from usageflow.integrations.flask import UsageFlowFlask
from usageflow.integrations.starlette import UsageFlowMiddleware
from usageflow.stores.base import Store
from usageflow.stores.postgres import PostgresStore
from usageflow.stores.supabase import SupabaseStore
from usageflow.testing import FakeClock

WARM_UP = 10
N = 100
USER = "u1"
FEATURE = "api"

Post = Callable[[str], int]


# -- the stores, each with its counter ----------------------------------------------------------
@dataclass
class Counted:
    """A migrated store with a Free plan, and the number of store calls that reached it."""

    store: Store
    calls: Callable[[], int]


def _required_url() -> str:
    url = postgres_url()
    if url is None:
        pytest.skip("needs USAGEFLOW_TEST_POSTGRES_URL")
    return url


@contextlib.contextmanager
def _postgres_through_proxy() -> Iterator[Counted]:
    url = _required_url()
    parts = urlsplit(url)
    proxy = PgProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    try:
        with fresh_schema(url) as schema:
            user, _, _host = parts.netloc.rpartition("@")
            netloc = f"{user}@127.0.0.1:{proxy.port}" if user else f"127.0.0.1:{proxy.port}"
            base = parts._replace(netloc=netloc).geturl()
            # No SSL through the proxy, so that its messages can be read.
            options = {"sslmode": "disable", "gssencmode": "disable", "pool_size": 1}
            store = PostgresStore(store_url(base, schema, **options))
            store.migrate()
            try:
                yield Counted(store, lambda: proxy.round_trips)
            finally:
                store.close()
    finally:
        proxy.kill()


def _count_http_requests(server: PostgrestStandIn) -> Callable[[], int]:
    """Count every HTTP request ``server`` parses (any method, any path)."""
    handler: Any = server.server.RequestHandlerClass
    lock = threading.Lock()
    count = [0]

    class Counting(handler):  # type: ignore[misc]
        def parse_request(self) -> bool:
            parsed: bool = BaseHTTPRequestHandler.parse_request(self)
            if parsed:
                with lock:
                    count[0] += 1
            return parsed

    server.server.RequestHandlerClass = Counting

    def served() -> int:
        with lock:
            return count[0]

    return served


@contextlib.contextmanager
def _supabase_through_stand_in() -> Iterator[Counted]:
    url = _required_url()
    with running(url) as server, fresh_schema(url) as schema:
        server.migrate(schema)
        http_requests = _count_http_requests(server)
        store = SupabaseStore(server.url, server.service_key, schema=schema)
        rpcs_before = server.calls
        requests_before = http_requests()

        def calls() -> int:
            requests = http_requests() - requests_before
            # Every HTTP request the store made was an RPC the stand-in ran.
            assert server.calls - rpcs_before == requests
            return requests

        try:
            yield Counted(store, calls)
        finally:
            store.close()


@pytest.fixture(params=["postgres", "supabase"])
def counted(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[Counted]:
    make = _postgres_through_proxy if request.param == "postgres" else _supabase_through_stand_in
    with make() as built:
        UsageFlow(built.store, clock=clock).create_plan(
            "Free", is_free=True, limits={FEATURE: 10_000}
        )
        yield built


# -- the adapters: each serves POST /served (200), /fails (500), /held (200, settle="hold") ----
def _user_header(request: Request) -> str | None:
    return request.headers.get("x-user")


async def _served(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def _fails(request: Request) -> Response:
    return PlainTextResponse("broken", status_code=500)


def _closing(flow: Any) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """A lifespan closing an ``AsyncUsageFlow`` in the loop that used it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if isinstance(flow, AsyncUsageFlow):
            await flow.aclose()

    return lifespan


def _middleware_app(flow: Any) -> Starlette:
    """Undecorated endpoints, metered by the middleware's route table."""
    app = Starlette(
        routes=[
            Route("/served", _served, methods=["POST"]),
            Route("/fails", _fails, methods=["POST"]),
            Route("/held", _served, methods=["POST"]),
        ],
        lifespan=_closing(flow),
    )
    app.add_middleware(
        UsageFlowMiddleware,
        flow=flow,
        routes={
            "POST /served": FEATURE,
            "POST /fails": FEATURE,
            "POST /held": {"feature": FEATURE, "settle": "hold"},
        },
        user_id=_user_header,
    )
    return app


def _decorated_starlette_app(flow: AsyncUsageFlow) -> Starlette:
    """Async endpoints metered by ``@metered``; the middleware only binds the flow."""

    @metered(FEATURE)
    async def served(request: Request) -> Response:
        return JSONResponse({"ok": True})

    @metered(FEATURE)
    async def fails(request: Request) -> Response:
        return PlainTextResponse("broken", status_code=500)

    @metered(FEATURE, settle="hold")
    async def held(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/served", served, methods=["POST"]),
            Route("/fails", fails, methods=["POST"]),
            Route("/held", held, methods=["POST"]),
        ],
        lifespan=_closing(flow),
    )
    app.add_middleware(UsageFlowMiddleware, flow=flow, user_id=_user_header)
    return app


def _flask_app(flow: UsageFlow) -> Flask:
    """Sync Flask views metered by ``@metered`` under the extension."""
    app = Flask(__name__)
    UsageFlowFlask(app, flow=flow, user_id=lambda: flask_request.headers.get("x-user"))

    @app.post("/served")
    @metered(FEATURE)
    def served() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/fails")
    @metered(FEATURE)
    def fails() -> tuple[str, int]:
        return "broken", 500

    @app.post("/held")
    @metered(FEATURE, settle="hold")
    def held() -> dict[str, bool]:
        return {"ok": True}

    return app


ADAPTERS = ["middleware-async", "middleware-sync", "metered-starlette", "metered-flask"]


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.contextmanager
def serving(adapter: str, store: Store, clock: FakeClock) -> Iterator[Post]:
    """``post(path) -> status`` as user ``u1``, through ``adapter`` over ``store``."""
    headers = {"x-user": USER}
    if adapter == "metered-flask":
        client = _flask_app(UsageFlow(store, clock=clock)).test_client()
        yield lambda path: client.post(path, headers=headers).status_code
        return
    if adapter == "middleware-async":
        app = _middleware_app(AsyncUsageFlow(store, clock=clock))
    elif adapter == "middleware-sync":
        app = _middleware_app(UsageFlow(store, clock=clock))
    else:
        app = _decorated_starlette_app(AsyncUsageFlow(store, clock=clock))
    with TestClient(app) as test_client:
        yield lambda path: test_client.post(path, headers=headers).status_code


def _measure(counted: Counted, adapter: str, clock: FakeClock, path: str) -> tuple[list[int], int]:
    """The statuses of ``WARM_UP + N`` requests to ``path``, and the store calls the last
    ``N`` cost."""
    with serving(adapter, counted.store, clock) as post:
        statuses = [post(path) for _ in range(WARM_UP)]
        before = counted.calls()
        statuses += [post(path) for _ in range(N)]
        spent = counted.calls() - before
    return statuses, spent


def _usage(counted: Counted, clock: FakeClock) -> int:
    """The user's usage, read through the public API, and the counters == ledger check."""
    current = UsageFlow(counted.store, clock=clock, cache_ttl=0).fetch_usage(USER, FEATURE).current
    assert counted.store.call(ops.ledger_check(user_id=USER, feature_name=FEATURE)) == (
        current,
        current,
    )
    return current


# -- the promises -------------------------------------------------------------------------------
def test_a_served_fixed_credit_request_costs_one_store_call(
    counted: Counted, adapter: str, clock: FakeClock
) -> None:
    """100 served requests of a fixed-credit route cost exactly 100 store calls (one atomic
    consume each, nothing after the handler), and every one of them is charged."""
    statuses, spent = _measure(counted, adapter, clock, "/served")
    assert statuses == [200] * (WARM_UP + N)
    assert spent == N
    assert _usage(counted, clock) == WARM_UP + N


def test_a_request_that_is_not_charged_costs_two_calls_and_nothing_to_the_user(
    counted: Counted, adapter: str, clock: FakeClock
) -> None:
    """100 requests answered 500 cost 200 store calls (the consume, then the credit that gives
    it back) and leave the user's usage at 0, the ledger agreeing with the counters."""
    statuses, spent = _measure(counted, adapter, clock, "/fails")
    assert statuses == [500] * (WARM_UP + N)
    assert spent == 2 * N
    assert _usage(counted, clock) == 0


def test_a_hold_route_costs_reserve_and_commit(
    counted: Counted, adapter: str, clock: FakeClock
) -> None:
    """``settle="hold"``: 100 served requests cost 200 store calls (reserve, then commit), are
    all charged, and leave no hold behind."""
    statuses, spent = _measure(counted, adapter, clock, "/held")
    assert statuses == [200] * (WARM_UP + N)
    assert spent == 2 * N
    assert _usage(counted, clock) == WARM_UP + N
    assert hold_rows(counted.store) == {}
