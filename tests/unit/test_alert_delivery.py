"""The alert handlers of ``usageflow.alerts`` against a real local HTTP server that checks
each signature with :func:`verify_signature`, and the ``usageflow alerts`` commands."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from usageflow import Alert, AsyncUsageFlow, ErrorCodes, UsageFlow, UsageFlowError
from usageflow.alerts import (
    SIGNATURE_HEADER,
    AlertDeliveryFailed,
    async_webhook_sender,
    log_handler,
    payload,
    sign,
    verify_signature,
    webhook_sender,
)
from usageflow.cli import main

SECRET = "whsec_alerts_test_secret"
T0 = datetime(2024, 1, 15, 12, tzinfo=timezone.utc)


def _alert(alert_id: int = 1, user: str = "u1") -> Alert:
    return Alert(
        id=alert_id,
        user_id=user,
        feature_name="exports",
        threshold=80,
        usage=8,
        limit=10,
        window_start=datetime(2024, 1, 1, tzinfo=timezone.utc),
        resets_at=datetime(2024, 2, 1, tzinfo=timezone.utc),
        created_at=T0,
    )


class Receiver:
    """A webhook receiver: verifies each request, records what it accepted."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.accepted: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.refused: list[str] = []


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            try:
                alert = verify_signature(body, self.headers.get(SIGNATURE_HEADER), SECRET)
            except UsageFlowError as exc:
                state.refused.append(exc.message)
                self.send_response(400)
            else:
                state.accepted.append(alert)
                state.ids.append(self.headers["UsageFlow-Alert-Id"])
                self.send_response(state.status)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/hooks/usage?token=t0k3n"
    finally:
        server.shutdown()
        server.server_close()


def test_the_sender_posts_signed_json_the_receiver_verifies(
    receiver: tuple[Receiver, str],
) -> None:
    state, url = receiver
    webhook_sender(url, SECRET)(_alert())
    assert state.refused == [] and state.ids == ["1"]
    (body,) = state.accepted
    assert body["type"] == "usage.alert"
    assert (body["user_id"], body["threshold"], body["usage"], body["limit"]) == ("u1", 80, 8, 10)
    assert body["resets_at"] == "2024-02-01T00:00:00Z"


def test_the_async_sender_does_the_same(receiver: tuple[Receiver, str]) -> None:
    state, url = receiver
    asyncio.run(async_webhook_sender(url, SECRET)(_alert(7)))
    assert state.ids == ["7"] and state.accepted[0]["id"] == 7


def test_an_answer_other_than_2xx_raises_without_the_query(
    receiver: tuple[Receiver, str],
) -> None:
    state, url = receiver
    state.status = 503
    with pytest.raises(AlertDeliveryFailed) as caught:
        webhook_sender(url, SECRET)(_alert())
    assert caught.value.status == 503 and "t0k3n" not in str(caught.value)


def test_a_wrong_secret_is_refused_by_the_receiver(receiver: tuple[Receiver, str]) -> None:
    state, url = receiver
    with pytest.raises(AlertDeliveryFailed):
        webhook_sender(url, "another secret")(_alert())
    assert state.refused == ["the signature does not match the body"]


def test_deliver_alerts_through_the_sender_on_both_flows(
    receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    state, url = receiver
    with UsageFlow(f"sqlite:///{tmp_path / 'a.db'}") as flow:
        flow.create_plan("Free", is_free=True, limits={"exports": 10})
        flow.set_alert_thresholds("exports", [50, 100])
        flow.consume("u1", "exports", 10)
        assert flow.deliver_alerts(webhook_sender(url, SECRET)) == 2
    assert [a["threshold"] for a in state.accepted] == [50, 100]

    async def run() -> int:
        async with AsyncUsageFlow(f"sqlite:///{tmp_path / 'a.db'}") as aflow:
            await aflow.consume("u2", "exports", 5)
            return await aflow.deliver_alerts(async_webhook_sender(url, SECRET))

    assert asyncio.run(run()) == 1
    assert state.accepted[-1]["user_id"] == "u2"


def _signature_error(body: bytes, header: str | None, **kwargs: Any) -> str:
    with pytest.raises(UsageFlowError) as caught:
        verify_signature(body, header, kwargs.pop("secret", SECRET), **kwargs)
    assert caught.value.code is ErrorCodes.USAGE_WEBHOOK_SIGNATURE_ERROR
    return caught.value.message


def test_verify_signature_refuses_what_it_cannot_trust() -> None:
    body = payload(_alert())
    now = 1_700_000_000
    good = sign(body, SECRET, now)
    assert verify_signature(body, good, SECRET, now=now)["id"] == 1
    assert "no UsageFlow-Signature" in _signature_error(body, None, now=now)
    assert "malformed" in _signature_error(body, "v1=abc", now=now)
    assert "malformed" in _signature_error(body, "t=soon,v1=abc", now=now)
    assert "tolerance" in _signature_error(body, good, now=now + 301)
    assert "tolerance" in _signature_error(body, good, now=now - 301)
    assert "does not match" in _signature_error(body + b" ", good, now=now)
    assert "does not match" in _signature_error(body, good, now=now, secret="other")
    # Secret rotation: the old and the new secret are both tried; two v1 values are accepted.
    assert verify_signature(body, good, ["new secret", SECRET], now=now)["id"] == 1
    both = good + "," + sign(body, "new secret", now).split(",")[1]
    assert verify_signature(body, both, "new secret", now=now)["id"] == 1


def test_verify_signature_refuses_a_body_that_is_not_an_object() -> None:
    body = b"[1, 2]"
    with pytest.raises(UsageFlowError) as caught:
        verify_signature(body, sign(body, SECRET), SECRET)
    assert caught.value.code is ErrorCodes.USAGE_WEBHOOK_PAYLOAD_ERROR


@pytest.mark.parametrize(
    ("url", "secret"),
    [("ftp://example.com/x", SECRET), ("https:///no-host", SECRET), ("https://x.io", "")],
)
def test_a_sender_is_checked_when_made(url: str, secret: str) -> None:
    with pytest.raises(UsageFlowError) as caught:
        webhook_sender(url, secret)
    assert caught.value.code is ErrorCodes.USAGE_CONFIG_ERROR
    assert SECRET not in str(caught.value)


def test_the_log_handler_writes_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="usageflow"):
        log_handler(_alert())
    assert caplog.messages == ["usageflow alert: user 'u1' reached 80% of exports (8 of 10)"]


def test_the_alerts_commands_list_and_deliver(
    receiver: tuple[Receiver, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state, url = receiver
    store = f"sqlite:///{tmp_path / 'cli.db'}"
    with UsageFlow(store) as flow:
        flow.create_plan("Free", is_free=True, limits={"exports": 10})
        flow.set_alert_thresholds("exports", [80])
        flow.consume("u1", "exports", 9)
    capsys.readouterr()
    assert main(["alerts", "list", "--undelivered", "--store", store, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["alerts"]
    assert [(a["user_id"], a["threshold"], a["delivered_at"]) for a in listed] == [("u1", 80, None)]

    monkeypatch.delenv("USAGEFLOW_ALERT_SECRET", raising=False)
    assert main(["alerts", "deliver", "--webhook", url, "--store", store]) == 1
    assert "USAGEFLOW_ALERT_SECRET" in capsys.readouterr().err
    monkeypatch.setenv("USAGEFLOW_ALERT_SECRET", SECRET)
    assert main(["alerts", "deliver", "--webhook", url, "--store", store, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"delivered": 1, "undelivered": 0}
    assert [a["user_id"] for a in state.accepted] == ["u1"]
    assert main(["alerts", "list", "--undelivered", "--store", store, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"alerts": []}


def test_the_lifespan_example_delivers_in_the_background(
    receiver: tuple[Receiver, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/alerts_lifespan.py: the app's background task posts the alert its eighth
    request crossed, signed, while the app serves."""
    import importlib.util
    import time

    from starlette.testclient import TestClient

    state, url = receiver
    monkeypatch.setenv("USAGEFLOW_STORE", f"sqlite:///{tmp_path / 'example.db'}")
    monkeypatch.setenv("USAGEFLOW_ALERT_URL", url)
    monkeypatch.setenv("USAGEFLOW_ALERT_SECRET", SECRET)
    path = Path(__file__).parents[2] / "examples" / "alerts_lifespan.py"
    spec = importlib.util.spec_from_file_location("alerts_lifespan_example", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.INTERVAL = 0.05
    with TestClient(example.app) as client:
        answers = [client.post("/export", headers={"x-user": "alice"}) for _ in range(8)]
        assert answers[-1].headers["usageflow-alert"] == '"exports";threshold=80'
        assert all("usageflow-alert" not in a.headers for a in answers[:-1])
        deadline = time.monotonic() + 10
        while not state.accepted and time.monotonic() < deadline:
            time.sleep(0.02)
    assert [(a["user_id"], a["threshold"]) for a in state.accepted] == [("alice", 80)]
