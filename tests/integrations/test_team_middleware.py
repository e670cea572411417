"""Through the middleware: two members of one team account; once the pool is spent the second
is refused with a 402 that says the account's pool is spent and offers the account's upgrade."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from usageflow import AsyncUsageFlow, UsageFlow
from usageflow.integrations.starlette import UsageFlowMiddleware
from usageflow.stores.base import Store
from usageflow.testing import FakeClock


async def export(request: Request) -> Response:
    return PlainTextResponse("exported")


def test_the_pool_spent_by_one_member_refuses_the_other(
    plan_store: Store, clock: FakeClock, flow_api: str
) -> None:
    setup = UsageFlow(plan_store, clock=clock)
    setup.create_plan(
        "Team",
        stripe_price_id="price_team",
        payment_link_url="https://buy.stripe.com/test_team",
        limits={"exports": 5},
    )
    setup.assign_plan("acme", "price_team")
    setup.add_member("acme", "ann", limits={"exports": 4})
    setup.add_member("acme", "ben")
    flow: Any = (AsyncUsageFlow if flow_api == "async" else UsageFlow)(plan_store, clock=clock)
    app = Starlette(routes=[Route("/v1/exports", export, methods=["POST"])])
    app.add_middleware(
        UsageFlowMiddleware,
        flow=flow,
        routes={"POST /v1/exports": "exports"},
        user_id=lambda request: request.headers.get("x-user"),
    )
    with TestClient(app) as client:
        statuses = [client.post("/v1/exports", headers={"x-user": "ann"}).status_code]
        statuses += [client.post("/v1/exports", headers={"x-user": "ann"}).status_code]
        statuses += [client.post("/v1/exports", headers={"x-user": "ann"}).status_code]
        assert statuses == [200, 200, 200]
        assert client.post("/v1/exports", headers={"x-user": "ben"}).status_code == 200
        last = client.post("/v1/exports", headers={"x-user": "ben"})
        assert last.status_code == 200 and ";r=0;" in last.headers["ratelimit"]
        refused = client.post("/v1/exports", headers={"x-user": "ben"})
        capped = client.post("/v1/exports", headers={"x-user": "ann"})
    assert refused.status_code == 402
    body = refused.json()
    assert body["scope"] == "account" and (body["limit"], body["current"]) == (5, 5)
    assert "team's shared quota" in body["detail"]
    # The account buys the upgrade (the fixture's Pro plan: 1,000 exports).
    assert body["upgrade_url"] == "https://buy.stripe.com/test_pro?client_reference_id=acme"
    assert capped.status_code == 402 and capped.json()["scope"] == "account"
    assert setup.get_total_usage("acme", "exports") == 5
    assert setup.get_total_usage("ann", "exports") == 3
    assert setup.get_total_usage("ben", "exports") == 2
