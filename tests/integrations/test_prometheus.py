"""UsageFlow's metrics scraped from a real app's ``/metrics`` after a known sequence of
requests (Starlette and Flask), and OpenTelemetry spans read back from the SDK."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask, request
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from tests.integrations.conftest import DeadSQLite
from usageflow import UsageFlow, UsageFlowError, _observe, metered
from usageflow.alerts import log_handler
from usageflow.integrations.flask import UsageFlowFlask
from usageflow.integrations.opentelemetry import instrument, uninstrument
from usageflow.integrations.prometheus import register, unregister
from usageflow.integrations.starlette import UsageFlowMiddleware
from usageflow.testing import FakeClock

U1 = {"x-user": "u1"}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    yield registry
    for observer in list(_observe.observers):
        if getattr(observer, "registry", None) is registry:
            unregister(observer)  # type: ignore[arg-type]


async def ok(request: Request) -> Response:
    return JSONResponse({"ok": True})


def _app(flow: UsageFlow, registry: CollectorRegistry, routes: dict[str, object]) -> Starlette:
    app = Starlette(
        routes=[
            Route("/export", ok, methods=["POST"]),
            Route("/chat", ok, methods=["POST"]),
            Mount("/metrics", make_asgi_app(registry)),
        ]
    )
    app.add_middleware(
        UsageFlowMiddleware,
        flow=flow,
        routes=routes,
        user_id=lambda request: request.headers.get("x-user"),
    )
    return app


def test_starlette_metrics_after_a_known_sequence(
    tmp_path: Path, registry: CollectorRegistry, dead_sqlite: DeadSQLite, clock: FakeClock
) -> None:
    flow = UsageFlow(f"sqlite:///{tmp_path / 'm.db'}")
    flow.create_plan("Free", is_free=True, limits={"exports": 3})
    flow.set_alert_thresholds("exports", [100])
    register(registry, flow=flow)
    assert register(registry) is register(registry)  # once per registry
    with TestClient(_app(flow, registry, {"POST /export": "exports"})) as client:
        statuses = [client.post("/export", headers=U1).status_code for _ in range(5)]
        scraped = _samples(client.get("/metrics").text)
    assert statuses == [200, 200, 200, 402, 402]
    assert (
        scraped[("usageflow_decisions_total", (("feature", "exports"), ("outcome", "allowed")))]
        == 3
    )
    assert (
        scraped[("usageflow_decisions_total", (("feature", "exports"), ("outcome", "refused")))]
        == 2
    )
    # Five decisions, each one charge: the histogram counts exactly those calls.
    assert scraped[("usageflow_store_call_seconds_count", (("operation", "charge"),))] == 5
    assert scraped[("usageflow_store_call_seconds_count", (("operation", "load_catalog"),))] >= 1
    assert scraped[("usageflow_cache_requests_total", (("result", "hit"),))] >= 4
    assert scraped[("usageflow_cache_requests_total", (("result", "miss"),))] >= 1
    assert scraped[("usageflow_alerts_pending", ())] == 1  # 3 of 3 crossed 100%
    assert ("usageflow_store_call_errors_total", (("operation", "charge"),)) not in scraped

    assert flow.deliver_alerts(log_handler) == 1
    with TestClient(_app(flow, registry, {"POST /export": "exports"})) as client:
        scraped = _samples(client.get("/metrics").text)
    assert scraped[("usageflow_alerts_pending", ())] == 0
    assert scraped[("usageflow_alerts_delivered_total", ())] == 1

    # A store that fails: one route fails open, the other is refused with 503.
    dead = UsageFlow(dead_sqlite.store, clock=clock)
    routes = {"POST /export": {"feature": "exports", "fail_open": True}, "POST /chat": "chat"}
    with TestClient(_app(dead, registry, routes)) as client:
        for path in ("/export", "/chat"):  # the plans and the profile are cached now
            assert client.post(path, headers=U1).status_code == 200
        dead_sqlite.kill()
        assert client.post("/export", headers=U1).status_code == 200
        assert client.post("/chat", headers=U1).status_code == 503
        scraped = _samples(client.get("/metrics").text)
    outcome = "usageflow_decisions_total"
    assert scraped[(outcome, (("feature", "exports"), ("outcome", "failed_open")))] == 1
    assert scraped[(outcome, (("feature", "chat"), ("outcome", "store_error")))] == 1
    assert scraped[("usageflow_store_call_errors_total", (("operation", "charge"),))] == 2
    for (name, labels), _value in scraped.items():
        assert "u1" not in dict(labels).values(), name  # no label carries a user id
    flow.close()


def test_flask_decisions_are_counted(tmp_path: Path, registry: CollectorRegistry) -> None:
    flow = UsageFlow(f"sqlite:///{tmp_path / 'f.db'}")
    flow.create_plan("Free", is_free=True, limits={"exports": 1})
    observer = register(registry)
    app = Flask(__name__)
    UsageFlowFlask(app, flow=flow, user_id=lambda: request.headers.get("x-user"))

    @app.post("/export")
    @metered("exports")
    def export() -> dict[str, bool]:
        return {"ok": True}

    client = app.test_client()
    assert [client.post("/export", headers=U1).status_code for _ in range(2)] == [200, 402]
    sample = registry.get_sample_value
    assert sample("usageflow_decisions_total", {"feature": "exports", "outcome": "allowed"}) == 1
    assert sample("usageflow_decisions_total", {"feature": "exports", "outcome": "refused"}) == 1
    unregister(observer)
    client.post("/export", headers=U1)  # no longer observed: nothing moves, nothing breaks
    assert _observe.observers == () or observer not in _observe.observers
    assert (
        registry.get_sample_value(
            "usageflow_decisions_total", {"feature": "exports", "outcome": "refused"}
        )
        is None
    )
    flow.close()


def test_a_sync_registration_is_refused_an_async_flow(registry: CollectorRegistry) -> None:
    from usageflow import AsyncUsageFlow

    flow = AsyncUsageFlow("memory://")
    with pytest.raises(UsageFlowError) as caught:
        register(registry, flow=flow)
    assert "AsyncUsageFlow" in caught.value.message


def test_store_calls_become_spans(dead_sqlite: DeadSQLite, clock: FakeClock) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    observer = instrument(provider)
    try:
        flow = UsageFlow(dead_sqlite.store, clock=clock)
        flow.consume("u1", "exports")
        dead_sqlite.kill()
        with pytest.raises(UsageFlowError):
            flow.consume("u1", "exports")  # the plans and the profile are cached
    finally:
        uninstrument(observer)
    spans = exporter.get_finished_spans()
    charges = [s for s in spans if s.name == "usageflow.charge"]
    assert [s.status.status_code for s in charges] == [StatusCode.UNSET, StatusCode.ERROR]
    assert all(s.attributes["usageflow.operation"] == "charge" for s in charges)
    assert all(s.end_time >= s.start_time for s in spans)
    assert {"usageflow.load_catalog", "usageflow.get_profile"} <= {s.name for s in spans}


class _Broken(_observe.Observer):
    def __getattribute__(self, name: str) -> object:
        if name in ("decision", "store_call", "cache"):
            raise RuntimeError(f"observer bug in {name}")
        return object.__getattribute__(self, name)


def test_an_observer_that_raises_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flow = UsageFlow(f"sqlite:///{tmp_path / 'b.db'}")
    flow.create_plan("Free", is_free=True, limits={"exports": 1})
    broken = _Broken()
    _observe.add(broken)
    try:
        with TestClient(_app(flow, CollectorRegistry(), {"POST /export": "exports"})) as client:
            assert [client.post("/export", headers=U1).status_code for _ in range(2)] == [200, 402]
        assert flow.get_total_usage("u1", "exports") == 1
    finally:
        _observe.remove(broken)
    assert "observer bug in decision" in caplog.text and "observer bug in store_call" in caplog.text
    flow.close()
