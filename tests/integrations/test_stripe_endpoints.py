"""The ready webhook endpoints: Starlette/FastAPI route and Flask blueprint, sync and async
flows, over real HTTP requests (the frameworks' test clients) with signed bodies."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from flask import Flask
from starlette.applications import Starlette
from starlette.testclient import TestClient

from tests.support.stripe_events import SECRET, T0, Events
from usageflow import AsyncUsageFlow, UsageFlow
from usageflow.integrations.stripe import webhook_blueprint, webhook_route
from usageflow.stores.base import Store
from usageflow.testing import sign_stripe_payload


@pytest.fixture(params=["sync", "async"])
def any_flow(request: pytest.FixtureRequest, store: Store) -> Iterator[Any]:
    if request.param == "async":
        yield AsyncUsageFlow(store, stripe_webhook_secret=SECRET)
    else:
        yield UsageFlow(store, stripe_webhook_secret=SECRET)


def signed_event(event: dict[str, Any]) -> tuple[str, dict[str, str]]:
    body, header = sign_stripe_payload(event, SECRET)
    return body, {"Stripe-Signature": header, "Content-Type": "application/json"}


def signed(user: str = "u1") -> tuple[str, dict[str, str]]:
    return signed_event(Events().checkout("cus_e", T0, client_reference_id=user))


def js(response: Any) -> Any:
    """The JSON body (a method on httpx responses, a property on Werkzeug's)."""
    return response.json() if callable(response.json) else response.json


def received(action: str, reason: str | None = None, warning: str | None = None) -> Any:
    return {"received": True, "action": action, "reason": reason, "warning": warning}


def check_answers(post: Any, store: Store) -> None:
    body, headers = signed()
    response = post("/stripe/webhook", body, headers)
    assert (response.status_code, js(response)) == (200, received("applied"))
    assert UsageFlow(store).get_profile("u1").stripe_customer_id == "cus_e"
    response = post("/stripe/webhook", body, headers)  # a redelivery
    assert (response.status_code, js(response)) == (200, received("duplicate"))

    # A price no plan sells: acknowledged (Stripe must not retry it), and said so.
    unsold, unsold_headers = signed_event(
        Events("-unsold").price("price.updated", "price_nope", 100, T0)
    )
    response = post("/stripe/webhook", unsold, unsold_headers)
    answer = js(response)
    assert response.status_code == 200
    assert answer == received("ignored", "unknown_price", answer["warning"])
    assert "stripe_price_id='price_nope'" in answer["warning"]

    response = post("/stripe/webhook", body.replace("cus_e", "cus_x"), headers)
    assert response.status_code == 400
    assert "does not verify" in js(response)["error"]
    response = post("/stripe/webhook", body, {"Content-Type": "application/json"})
    assert response.status_code == 400
    assert SECRET not in response.text


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_starlette_and_fastapi_route(any_flow: Any, store: Store, framework: str) -> None:
    if framework == "starlette":
        app: Any = Starlette(routes=[webhook_route(any_flow)])
    else:
        app = FastAPI()
        app.router.routes.append(webhook_route(any_flow))
    with TestClient(app) as client:
        check_answers(
            lambda url, body, headers: client.post(url, content=body, headers=headers), store
        )


def test_flask_blueprint(any_flow: Any, store: Store) -> None:
    app = Flask(__name__)
    app.register_blueprint(webhook_blueprint(any_flow))
    client = app.test_client()
    check_answers(lambda url, body, headers: client.post(url, data=body, headers=headers), store)


def test_store_failure_answers_500(tmp_path: Any) -> None:
    store_path = tmp_path / "gone.db"
    flow = UsageFlow(f"sqlite:///{store_path}", stripe_webhook_secret=SECRET)
    flow.migrate()
    flow.close()
    store_path.unlink()
    store_path.mkdir()  # the database file is now a directory: every query fails
    app = Starlette(routes=[webhook_route(flow)])
    body, headers = signed()
    with TestClient(app) as client:
        response = client.post("/stripe/webhook", content=body, headers=headers)
    assert response.status_code == 500
    assert "error" in js(response)
