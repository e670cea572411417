"""Concurrent requests racing one quota through the framework adapters: counts must be exact.

Two ways in, each over SQLite (a file) and PostgreSQL:

* ``asgi``: ``UsageFlowMiddleware`` with an ``AsyncUsageFlow``, requests sent at once by
  ``asyncio.gather`` through ``httpx.AsyncClient`` + ``ASGITransport``;
* ``flask``: ``UsageFlowFlask`` with a ``UsageFlow`` and a ``@metered`` view, requests sent by a
  ``ThreadPoolExecutor``, one Flask test client per thread.

The route charges one credit per request before the handler (``settle="charge"``); a request
answered 500 gets its credit back.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask
from flask import request as flask_request
from flask.testing import FlaskClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.support.stores import STORES
from usageflow import AsyncUsageFlow, UsageFlow, metered, ops
from usageflow.integrations.flask import UsageFlowFlask
from usageflow.integrations.starlette import UsageFlowMiddleware
from usageflow.stores.base import Store

FEATURE = "race"
USER = "u1"
THREADS = 32


@pytest.fixture(params=["sqlite", "postgres"])
def race_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated SQLite file or PostgreSQL schema (skipped without the database)."""
    factory, reason = STORES[request.param]
    if reason:
        pytest.skip(reason)
    with factory(tmp_path) as built:  # type: ignore[attr-defined]
        yield built


@pytest.fixture(params=["asgi", "flask"])
def way_in(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _plan(store: Store, limit: int) -> None:
    UsageFlow(store).create_plan("Free", is_free=True, limits={FEATURE: limit})


# -- the apps: POST /work answers 200, or 500 when asked with ?fail=1 --------------------------
async def _work(request: Request) -> Response:
    await asyncio.sleep(0)  # let the other requests interleave
    if request.query_params.get("fail"):
        return PlainTextResponse("broken", status_code=500)
    return JSONResponse({"ok": True})


def _asgi_app(flow: AsyncUsageFlow) -> Starlette:
    app = Starlette(routes=[Route("/work", _work, methods=["POST"])])
    app.add_middleware(
        UsageFlowMiddleware,
        flow=flow,
        routes={"POST /work": FEATURE},
        user_id=lambda request: request.headers.get("x-user"),
    )
    return app


def _flask_app(flow: UsageFlow) -> Flask:
    app = Flask(__name__)
    UsageFlowFlask(app, flow=flow, user_id=lambda: flask_request.headers.get("x-user"))

    @app.post("/work")
    @metered(FEATURE)
    def work() -> Any:
        if flask_request.args.get("fail"):
            return "broken", 500
        return {"ok": True}

    return app


def _race(way_in: str, store: Store, paths: list[str]) -> list[int]:
    """Send one POST per path, all at once, through ``way_in``; the statuses, in order."""
    headers = {"x-user": USER}
    if way_in == "asgi":

        async def main() -> list[int]:
            flow = AsyncUsageFlow(store)
            transport = httpx.ASGITransport(app=_asgi_app(flow))
            try:
                async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                    responses = await asyncio.gather(*(c.post(p, headers=headers) for p in paths))
            finally:
                await flow.aclose()
            return [r.status_code for r in responses]

        return asyncio.run(main())

    app = _flask_app(UsageFlow(store))
    local = threading.local()
    start = threading.Barrier(THREADS, timeout=60)

    def client() -> FlaskClient:
        if not hasattr(local, "client"):
            local.client = app.test_client()
            start.wait()  # every thread has its client before the first request goes out
        return local.client  # type: ignore[no-any-return]

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(lambda p: client().post(p, headers=headers).status_code, paths))


def _usage(store: Store) -> int:
    """The user's usage through the public API; the counters agree with the ledger."""
    current = UsageFlow(store, cache_ttl=0).fetch_usage(USER, FEATURE).current
    assert store.call(ops.ledger_check(user_id=USER, feature_name=FEATURE)) == (current, current)
    return current


def test_300_concurrent_requests_against_a_quota_of_50(race_store: Store, way_in: str) -> None:
    """300 requests at once against a quota of 50: exactly 50 served, 250 answered 402, usage
    50, the counters equal to the ledger."""
    _plan(race_store, 50)
    statuses = _race(way_in, race_store, ["/work"] * 300)
    assert statuses.count(200) == 50
    assert statuses.count(402) == 250
    assert _usage(race_store) == 50


def test_failing_requests_racing_a_quota_never_overcharge(race_store: Store, way_in: str) -> None:
    """100 requests at once, half of them answered 500 by the handler, against a quota of 30:
    a failed request's credit is given back, so the served-and-charged requests never exceed
    30, the usage equals the number of 2xx answers, and the ledger replayed in order never
    went over the quota."""
    _plan(race_store, 30)
    paths = ["/work?fail=1" if i % 2 else "/work" for i in range(100)]
    statuses = _race(way_in, race_store, paths)
    served = sum(200 <= s < 300 for s in statuses)
    assert set(statuses) <= {200, 402, 500}
    assert 0 < served <= 30
    assert statuses.count(500) <= 50
    for path, status in zip(paths, statuses, strict=True):
        assert status in ((402, 500) if "fail" in path else (200, 402))
    assert _usage(race_store) == served
    # Each event is appended while its (user, feature) counter is locked, so the ids give the
    # order the counter moved in: every prefix of the ledger is a value the counter held.
    events = UsageFlow(race_store).list_events(USER, FEATURE, limit=1000)
    running, highest = 0, 0
    for event in sorted(events, key=lambda e: e.id):
        running += event.credits_used or 0
        highest = max(highest, running)
    assert running == served
    assert highest <= 30
