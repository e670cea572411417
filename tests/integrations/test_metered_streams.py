"""``@metered`` handlers that stream: charged when the stream has been produced to its end,
not when the handler returns; a stream that fails or is cut costs nothing.

FastAPI endpoints (async and sync) returning a ``StreamingResponse``, through Starlette's
``TestClient``; Flask views returning a generator or a streamed ``Response``, through Flask's
test client. Every store, both flow APIs where the framework takes them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from flask import Flask, Response, request

from usageflow import UsageFlow, metered, ops
from usageflow.integrations.flask import UsageFlowFlask
from usageflow.integrations.starlette import UsageFlowMiddleware
from usageflow.testing import FakeClock

U1 = {"x-user": "u1"}


def used(reader: UsageFlow, user: str, feature: str) -> int:
    total, ledger = reader.store.call(ops.ledger_check(user_id=user, feature_name=feature))
    assert total == ledger
    return total


def held(reader: UsageFlow, user: str, feature: str) -> int:
    return reader.fetch_usage(user, feature).current - used(reader, user, feature)


# -- FastAPI -------------------------------------------------------------------------------------
def fastapi_app(flow: Any) -> FastAPI:
    app = FastAPI()
    sent: list[int] = []

    def chunks_sent(_response: Any) -> int:
        return sum(sent)

    @app.get("/tokens")
    @metered("tokens", credits=chunks_sent, reserve=10)
    async def tokens(request: Request) -> StreamingResponse:
        sent.clear()
        cut = request.query_params.get("cut")

        async def produce() -> AsyncIterator[bytes]:
            for i in range(4):
                if cut and i == 2:
                    raise RuntimeError("the model stopped answering")
                sent.append(10)
                yield b"0123456789"

        return StreamingResponse(produce(), media_type="text/plain")

    @app.get("/exports")
    @metered("exports")
    def exports() -> StreamingResponse:  # a sync endpoint: FastAPI runs it in a thread
        return StreamingResponse(iter([b"a,b\n", b"1,2\n"]), media_type="text/csv")

    app.add_middleware(UsageFlowMiddleware, flow=flow, user_id=lambda r: r.headers.get("x-user"))
    return app


def test_async_endpoint_stream_is_charged_what_it_sent_at_its_end(
    any_flow: Any, reader: UsageFlow
) -> None:
    with TestClient(fastapi_app(any_flow)) as client:
        r = client.get("/tokens", headers=U1)
        assert r.status_code == 200 and r.text == "0123456789" * 4
        # The credits function ran once the stream was done: 40 bytes, not 0 at return.
        assert used(reader, "u1", "tokens") == 40
        assert held(reader, "u1", "tokens") == 0
        assert r.headers["ratelimit-policy"] == '"tokens";q=100'


def test_a_stream_that_fails_midway_costs_nothing(any_flow: Any, reader: UsageFlow) -> None:
    with TestClient(fastapi_app(any_flow), raise_server_exceptions=False) as client:
        client.get("/tokens?cut=1", headers=U1)  # the stream breaks after two chunks
    assert used(reader, "u1", "tokens") == 0
    assert held(reader, "u1", "tokens") == 0  # released, not left to expire


def test_sync_endpoint_stream_is_charged_at_its_end(any_flow: Any, reader: UsageFlow) -> None:
    with TestClient(fastapi_app(any_flow)) as client:
        assert client.get("/exports", headers=U1).text == "a,b\n1,2\n"
        assert used(reader, "u1", "exports") == 1
        assert held(reader, "u1", "exports") == 0


# -- Flask ---------------------------------------------------------------------------------------
def flask_app(flow: UsageFlow) -> Flask:
    app = Flask(__name__)
    UsageFlowFlask(app, flow=flow, user_id=lambda: request.headers.get("x-user"))
    rows: list[int] = []

    @app.get("/report")
    @metered("tokens", credits=lambda _result: len(rows), reserve=5)
    def report() -> Any:
        rows.clear()
        cut = request.args.get("cut")

        def produce() -> Iterator[str]:
            for i in range(6):
                if cut and i == 3:
                    raise RuntimeError("the database went away")
                rows.append(i)
                yield f"row {i}\n"

        return produce()

    @app.get("/export")
    @metered("exports")
    def export() -> Response:
        return Response(iter(["a,b\n", "1,2\n"]), mimetype="text/csv")

    @app.get("/export-held")
    @metered("exports", settle="hold")
    def export_held() -> Response:
        return Response(iter(["a,b\n", "1,2\n"]), mimetype="text/csv")

    return app


@pytest.fixture
def flask_flow(plan_store: Any, clock: FakeClock) -> UsageFlow:
    return UsageFlow(plan_store, clock=clock)


def test_flask_generator_is_charged_what_it_produced_at_its_end(
    flask_flow: UsageFlow, reader: UsageFlow
) -> None:
    client = flask_app(flask_flow).test_client()
    r = client.get("/report", headers=U1)
    assert r.text == "".join(f"row {i}\n" for i in range(6))
    assert used(reader, "u1", "tokens") == 6
    assert held(reader, "u1", "tokens") == 0
    assert r.headers["ratelimit-policy"] == '"tokens";q=100'


def test_flask_streamed_response_is_charged_at_its_end(
    flask_flow: UsageFlow, reader: UsageFlow
) -> None:
    client = flask_app(flask_flow).test_client()
    # settle="hold": only held while the body is produced, recorded at its end.
    r = client.get("/export-held", headers=U1, buffered=False)
    assert used(reader, "u1", "exports") == 0
    assert held(reader, "u1", "exports") == 1
    assert b"".join(r.response) == b"a,b\n1,2\n"
    r.close()
    assert used(reader, "u1", "exports") == 1
    assert held(reader, "u1", "exports") == 0
    # The default (settle="charge"): charged up front, and the charge stands at the end.
    r = client.get("/export", headers=U1, buffered=False)
    assert used(reader, "u1", "exports") == 2
    assert held(reader, "u1", "exports") == 0
    assert b"".join(r.response) == b"a,b\n1,2\n"
    r.close()
    assert used(reader, "u1", "exports") == 2


def test_flask_stream_cut_short_gives_a_fixed_charge_back(
    flask_flow: UsageFlow, reader: UsageFlow
) -> None:
    client = flask_app(flask_flow).test_client()
    for path in ("/export", "/export-held"):
        r = client.get(path, headers=U1, buffered=False)
        assert next(iter(r.response)) == b"a,b\n"
        r.close()  # the client went away before the end
    assert used(reader, "u1", "exports") == 0
    assert held(reader, "u1", "exports") == 0
    events = reader.list_events("u1", "exports")
    assert sorted(e.event_type for e in events) == ["credit", "usage"]


def test_flask_stream_closed_early_or_failing_costs_nothing(
    flask_flow: UsageFlow, reader: UsageFlow
) -> None:
    client = flask_app(flask_flow).test_client()
    r = client.get("/report", headers=U1, buffered=False)
    assert next(iter(r.response)) == b"row 0\n"
    r.close()  # the client went away after one row
    assert used(reader, "u1", "tokens") == 0
    assert held(reader, "u1", "tokens") == 0
    r = client.get("/report?cut=1", headers=U1, buffered=False)
    with pytest.raises(RuntimeError, match="database went away"):
        b"".join(r.response)
    r.close()
    assert used(reader, "u1", "tokens") == 0
    assert held(reader, "u1", "tokens") == 0
