"""Hostile webhooks: bodies too large to read (413, before they are read whole, with or without
a ``Content-Length``) and signed events whose values do not fit (a payload error, 400, with
nothing written), through ``flow.handle_webhook`` and the ready endpoints."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from starlette.applications import Starlette
from starlette.testclient import TestClient

import tests.integrations.test_django  # noqa: F401  (configures Django once for the suite)
from tests.support.stripe_events import MONTH, SECRET, T0, Events
from usageflow import UsageFlow
from usageflow.errors import ErrorCodes, UsageFlowError
from usageflow.integrations.django import stripe_webhook_view
from usageflow.integrations.stripe import webhook_blueprint, webhook_route
from usageflow.testing import sign_stripe_payload

LIMIT = 1_048_576
URL = "/stripe/webhook"


#: The answer to a webhook that was verified and applied.
APPLIED = {"received": True, "action": "applied", "reason": None, "warning": None}


def js(response: Any) -> Any:
    return response.json() if callable(response.json) else response.json


def signed(event: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body, header = sign_stripe_payload(event, SECRET)
    return body.encode(), {"Stripe-Signature": header, "Content-Type": "application/json"}


def padded(size: int) -> tuple[bytes, dict[str, str]]:
    """A signed checkout for ``u1`` whose body is exactly ``size`` bytes."""
    event = Events().checkout("cus_big", T0, client_reference_id="u1")
    event["pad"] = ""
    base = len(json.dumps(event, separators=(",", ":")))
    event["pad"] = "x" * (size - base)
    body, headers = signed(event)
    assert len(body) == size
    return body, headers


def chunks(body: bytes) -> Iterator[bytes]:
    for i in range(0, len(body), 10_000):
        yield body[i : i + 10_000]


@pytest.fixture
def flow() -> UsageFlow:
    return UsageFlow("memory://", stripe_webhook_secret=SECRET, cache_ttl=0)


# -- 1. bounded bodies ---------------------------------------------------------------------------
def test_starlette_body_limits(flow: UsageFlow) -> None:
    app = Starlette(routes=[webhook_route(flow), webhook_route(flow, "/small", max_body_size=100)])
    with TestClient(app) as client:
        body, headers = padded(LIMIT + 1)
        response = client.post(URL, content=body, headers=headers)
        assert response.status_code == 413
        assert set(js(response)) == {"error"}
        # Without a Content-Length (chunked), the stream is read until it passes the limit.
        response = client.post(URL, content=chunks(body), headers=headers)
        assert response.status_code == 413
        assert flow.get_profile("u1") is None

        small, small_headers = signed(Events().checkout("cus_s", T0, client_reference_id="u2"))
        assert client.post("/small", content=small, headers=small_headers).status_code == 413
        assert flow.get_profile("u2") is None

        body, headers = padded(LIMIT - 1)
        response = client.post(URL, content=chunks(body), headers=headers)
        assert (response.status_code, js(response)) == (200, APPLIED)
        profile = flow.get_profile("u1")
        assert profile is not None and profile.stripe_customer_id == "cus_big"
        response = client.post(URL, content=body, headers=headers)
        assert (response.status_code, js(response)) == (200, {**APPLIED, "action": "duplicate"})


def test_flask_body_limits(flow: UsageFlow) -> None:
    app = Flask(__name__)
    app.register_blueprint(webhook_blueprint(flow))
    app.register_blueprint(webhook_blueprint(flow, "/small", name="small", max_body_size=100))
    client = app.test_client()

    def chunked(url: str, body: bytes, headers: dict[str, str]) -> Any:
        # No CONTENT_LENGTH: a chunked request, as a WSGI server hands it on.
        return client.post(
            url,
            input_stream=io.BytesIO(body),
            headers={**headers, "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )

    body, headers = padded(LIMIT + 1)
    response = client.post(URL, data=body, headers=headers)
    assert (response.status_code, set(js(response))) == (413, {"error"})
    response = chunked(URL, body, headers)
    assert response.status_code == 413
    assert flow.get_profile("u1") is None

    small, small_headers = signed(Events().checkout("cus_s", T0, client_reference_id="u2"))
    assert client.post("/small", data=small, headers=small_headers).status_code == 413
    assert flow.get_profile("u2") is None

    body, headers = padded(LIMIT - 1)
    response = chunked(URL, body, headers)
    assert (response.status_code, js(response)) == (200, APPLIED)
    profile = flow.get_profile("u1")
    assert profile is not None and profile.stripe_customer_id == "cus_big"


urlpatterns: list[Any] = []


def test_django_body_limits(flow: UsageFlow) -> None:
    from django.test import Client, override_settings
    from django.urls import clear_url_caches, path

    urlpatterns[:] = [
        path("stripe/webhook", stripe_webhook_view(flow)),
        path("small", stripe_webhook_view(flow, max_body_size=100)),
    ]
    clear_url_caches()
    with override_settings(ROOT_URLCONF=__name__):
        client = Client()

        def post(url: str, body: bytes, headers: dict[str, str]) -> Any:
            return client.post(
                url,
                data=body,
                content_type="application/json",
                headers={"Stripe-Signature": headers["Stripe-Signature"]},
            )

        body, headers = padded(LIMIT + 1)
        response = post(URL, body, headers)
        assert (response.status_code, set(response.json())) == (413, {"error"})
        assert flow.get_profile("u1") is None

        small, small_headers = signed(Events().checkout("cus_s", T0, client_reference_id="u2"))
        assert post("/small", small, small_headers).status_code == 413
        assert flow.get_profile("u2") is None

        body, headers = padded(LIMIT - 1)
        response = post(URL, body, headers)
        assert (response.status_code, response.json()) == (200, APPLIED)
        profile = flow.get_profile("u1")
        assert profile is not None and profile.stripe_customer_id == "cus_big"
    clear_url_caches()


@pytest.mark.parametrize("size", [0, -1, True, 1.5])
def test_max_body_size_must_be_positive(flow: UsageFlow, size: Any) -> None:
    for make in (webhook_route, webhook_blueprint, stripe_webhook_view):
        with pytest.raises(UsageFlowError) as err:
            make(flow, max_body_size=size)
        assert err.value.code is ErrorCodes.USAGE_CONFIG_ERROR


# -- 2. malformed events with a valid signature ---------------------------------------------------
def _sub(ev: Events) -> dict[str, Any]:
    return ev.subscription(
        "customer.subscription.updated",
        "sub_1",
        "cus_1",
        "price_pro",
        "active",
        (T0, T0 + MONTH),
        T0 + 10,
    )


def _set(*path: Any) -> Callable[[dict[str, Any], Any], None]:
    def setter(event: dict[str, Any], value: Any) -> None:
        obj = event
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value

    return setter


_OBJ = ("data", "object")
_ITEM = (*_OBJ, "items", "data", 0)
_LINE = (*_OBJ, "lines", "data", 0)
CASES: dict[str, tuple[str, tuple[Any, ...], Any]] = {
    "items.data=5": ("sub", (*_OBJ, "items", "data"), 5),
    "created=1e12": ("sub", ("created",), 10**12),
    "created=1e18": ("sub", ("created",), 10**18),
    "created<0": ("sub", ("created",), -1),
    "subscription created=1e18": ("sub", (*_OBJ, "created"), 10**18),
    "current_period_end=1e13": ("sub", (*_ITEM, "current_period_end"), 10**13),
    "status NUL": ("sub", (*_OBJ, "status"), "act\x00ive"),
    "customer NUL": ("sub", (*_OBJ, "customer"), "cus\x00_1"),
    "lines.data=5": ("invoice", (*_OBJ, "lines", "data"), 5),
    "line period end=1e13": ("invoice", (*_LINE, "period", "end"), 10**13),
    "checkout created=1e18": ("checkout", ("created",), 10**18),
    "unit_amount_decimal=1e999999": ("price", (*_OBJ, "unit_amount_decimal"), "1e999999"),
    "negative price": ("price", (*_OBJ, "unit_amount_decimal"), "-100"),
    "price past the column": ("price", (*_OBJ, "unit_amount_decimal"), "10000000000"),
    "price NaN": ("price", (*_OBJ, "unit_amount_decimal"), "NaN"),
    "price a list": ("price", (*_OBJ, "unit_amount_decimal"), [1]),
    "currency NUL": ("price", (*_OBJ, "currency"), "us\x00d"),
    "currency not text": ("price", (*_OBJ, "currency"), 5),
    "price id NUL": ("price", (*_OBJ, "id"), "price_pro\x00"),
    "event id NUL": ("sub", ("id",), "evt\x00_1"),
}


def _good(kind: str) -> dict[str, Any]:
    ev = Events()
    if kind == "sub":
        return _sub(ev)
    if kind == "invoice":
        return ev.invoice_paid("sub_1", "cus_1", "price_pro", (T0, T0 + MONTH), T0 + 10)
    if kind == "checkout":
        return ev.checkout("cus_2", T0 + 10, client_reference_id="u2")
    return ev.price("price.updated", "price_pro", 3000, T0 + 10)


def _hostile(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    kind, path, value = CASES[name]
    good = _good(kind)
    bad = copy.deepcopy(good)
    _set(*path)(bad, value)
    return good, bad


@pytest.fixture(params=["memory", "sqlite"])
def wflow(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UsageFlow]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'hostile.db'}"
    made = UsageFlow(url, stripe_webhook_secret=SECRET, cache_ttl=0)
    made.migrate()
    made.create_plan("Pro", stripe_price_id="price_pro", price_amount=20)
    body, header = sign_stripe_payload(Events("_l").checkout("cus_1", T0, "u1"), SECRET)
    assert made.handle_webhook(body, header).action == "applied"
    yield made
    made.close()


def snapshot(flow: UsageFlow) -> Any:
    return flow.get_profile("u1"), flow.get_profile("u2"), flow.get_plans()


def still_unprocessed(flow: UsageFlow, good: dict[str, Any]) -> None:
    """The same event, delivered sound, is applied: the refused one left no processed row."""
    body, header = sign_stripe_payload(good, SECRET)
    assert flow.handle_webhook(body, header).action == "applied"


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_event_is_a_payload_error(wflow: UsageFlow, name: str) -> None:
    good, bad = _hostile(name)
    before = snapshot(wflow)
    body, header = sign_stripe_payload(bad, SECRET)
    with pytest.raises(UsageFlowError) as err:
        wflow.handle_webhook(body, header)
    assert err.value.code is ErrorCodes.USAGE_WEBHOOK_PAYLOAD_ERROR, err.value
    assert snapshot(wflow) == before
    still_unprocessed(wflow, good)


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_event_answers_400(wflow: UsageFlow, name: str) -> None:
    good, bad = _hostile(name)
    before = snapshot(wflow)
    body, headers = signed(bad)
    with TestClient(Starlette(routes=[webhook_route(wflow)])) as client:
        response = client.post(URL, content=body, headers=headers)
    assert response.status_code == 400
    assert set(js(response)) == {"error"}
    assert snapshot(wflow) == before
    still_unprocessed(wflow, good)
