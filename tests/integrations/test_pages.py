"""The usage page and the admin page through Starlette's TestClient and Flask's test client:
what they show, who may see it, the admin's actions, valid HTML and a readable palette."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from usageflow import ErrorCodes, UsageFlow, UsageFlowError
from usageflow.integrations._pages import CSRF_COOKIE, PALETTE
from usageflow.integrations.flask import admin_blueprint, usage_blueprint
from usageflow.integrations.starlette import UsageFlowMiddleware, admin_app, usage_app

ALICE = {"x-user": "alice"}
BOB = {"x-user": "bob"}
ADMIN = {"x-admin": "yes", "x-user": "root"}


def _flow(tmp_path: Path) -> UsageFlow:
    flow = UsageFlow(f"sqlite:///{tmp_path / 'pages.db'}", enable_user_adjustments=True)
    flow.create_plan("Free", is_free=True, limits={"exports": 10, "search": -1})
    flow.create_plan(
        "Pro",
        stripe_price_id="price_pro",
        price_amount="19.00",
        price_currency="usd",
        payment_link_url="https://buy.stripe.com/test_pro",
        limits={"exports": 1000},
    )
    return flow


async def export(request: Request) -> Response:
    return JSONResponse({"ok": True})


def starlette_app(flow: UsageFlow) -> Starlette:
    def user(request: Request) -> str | None:
        return request.headers.get("x-user")

    app = Starlette(
        routes=[
            Route("/export", export, methods=["POST"]),
            Mount("/usage", usage_app(flow, user_id=user)),
            Mount(
                "/admin",
                admin_app(
                    flow,
                    authorize=lambda r: r.headers.get("x-admin") == "yes",
                    admin_id=lambda r: r.headers.get("x-user"),
                ),
            ),
        ]
    )
    app.add_middleware(
        UsageFlowMiddleware, flow=flow, routes={"POST /export": "exports"}, user_id=user
    )
    return app


class _Checker(HTMLParser):
    """Every element that is not void is closed, in order; headings do not skip a level."""

    VOID = frozenset({"meta", "input", "br", "img", "link", "hr", "col", "source", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.levels: list[int] = []
        self.labels: set[str] = set()
        self.controls: list[tuple[str, str | None]] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag in ("input", "select") and found.get("type") not in ("hidden", "checkbox"):
            self.controls.append((tag, found.get("id")))
        if tag == "label" and found.get("for"):
            self.labels.add(str(found["for"]))
        if re.fullmatch(r"h[1-6]", tag):
            level = int(tag[1])
            if self.levels and level > self.levels[-1] + 1:
                self.problems.append(f"h{level} after h{self.levels[-1]}")
            self.levels.append(level)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def check_html(page: str) -> None:
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.problems == [] and checker.stack == [], (checker.problems, checker.stack)
    assert checker.levels and checker.levels[0] == 1  # one h1 first
    unlabelled = [c for c in checker.controls if c[1] not in checker.labels]
    assert unlabelled == []
    assert page.startswith("<!doctype html><html lang=en>")


def _luminance(color: str) -> float:
    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_palette_reads_at_aa_contrast(scheme: str) -> None:
    colors = PALETTE[scheme]
    for text in ("fg", "muted", "accent"):
        assert contrast(colors[text], colors["bg"]) >= 4.5, text
    for bar in ("used", "held"):  # a graphic against its track and the page: 3:1
        assert contrast(colors[bar], colors["bg"]) >= 3, bar


def test_the_usage_page_shows_the_users_own_numbers(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    with TestClient(starlette_app(flow)) as client:
        for _ in range(3):
            assert client.post("/export", headers=ALICE).status_code == 200
        client.post("/export", headers=BOB)
        flow.reserve("alice", "exports", 2)
        data = client.get("/usage/usage.json", headers=ALICE).json()
        page = client.get("/usage/", headers=ALICE)
        bob = client.get("/usage/usage.json", headers=BOB).json()
        nobody = client.get("/usage/usage.json")
        nobody_html = client.get("/usage/", follow_redirects=False)
        spoof = client.get("/usage/usage.json?user_id=alice", headers=BOB).json()
    assert data["user_id"] == "alice" and data["plan"]["name"] == "Free"
    exports = next(f for f in data["features"] if f["feature"] == "exports")
    assert exports == {
        "feature": "exports",
        "used": 3,
        "held": 2,
        "limit": 10,
        "remaining": 5,
        "credit_balance": 0,
        "period": "current_month",
        "resets_at": exports["resets_at"],
        "top_up_url": None,
    }
    assert exports["resets_at"].endswith("Z")
    search = next(f for f in data["features"] if f["feature"] == "search")
    assert search["limit"] is None
    assert data["upgrade_url"].startswith("https://buy.stripe.com/test_pro?")
    assert "client_reference_id=alice" in data["upgrade_url"]
    assert page.status_code == 200 and "3 used, 2 held, 5 left of 10" in page.text
    check_html(page.text)
    assert next(f for f in bob["features"] if f["feature"] == "exports")["used"] == 1
    assert spoof == bob  # a query cannot name another user
    assert nobody.status_code == 401 and nobody_html.status_code == 401
    assert "alice" not in nobody_html.text
    flow.close()


def test_the_admin_page_refuses_without_authorize(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    with pytest.raises(UsageFlowError) as caught:
        admin_app(flow)
    assert caught.value.code is ErrorCodes.USAGE_CONFIG_ERROR
    assert "authorize" in caught.value.message
    with pytest.raises(UsageFlowError):
        admin_blueprint(flow)
    with TestClient(starlette_app(flow)) as client:
        for path in ("/admin/", "/admin/user?id=alice"):
            refused = client.get(path, headers=ALICE)
            assert refused.status_code == 403 and "alice" not in refused.text
        assert client.post("/admin/user/reset", headers=ALICE).status_code == 403
    flow.close()


def test_an_admin_adjustment_changes_the_next_metered_request(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    with TestClient(starlette_app(flow)) as client:
        for _ in range(10):
            client.post("/export", headers=ALICE)
        assert client.post("/export", headers=ALICE).status_code == 402
        home = client.get("/admin/", headers=ADMIN)
        assert home.status_code == 200 and "Free" in home.text and "Pro" in home.text
        assert ">alice</a>: 10" in home.text  # closest to their limits
        check_html(home.text)
        page = client.get("/admin/user?id=alice", headers=ADMIN)
        check_html(page.text)
        token = client.cookies[CSRF_COOKIE]
        form = {"id": "alice", "feature": "exports", "amount": "5", "days": "3"}
        form |= {"reason": "goodwill", "csrf": token}
        unconfirmed = client.post("/admin/user/adjust", data=form, headers=ADMIN)
        assert unconfirmed.status_code == 400
        forged = client.post(
            "/admin/user/adjust", data={**form, "confirm": "yes", "csrf": "x"}, headers=ADMIN
        )
        assert forged.status_code == 403
        done = client.post(
            "/admin/user/adjust",
            data={**form, "confirm": "yes"},
            headers=ADMIN,
            follow_redirects=False,
        )
        assert done.status_code == 303 and "/admin/user?id=alice" in done.headers["location"]
        assert client.post("/export", headers=ALICE).status_code == 200  # 11 of 15
        refund = {**form, "amount": "4", "confirm": "yes", "reason": "bad export"}
        client.post("/admin/user/refund", data=refund, headers=ADMIN)
        after = client.get("/admin/user?id=alice", headers=ADMIN)
    assert "+5 (one_time)" in after.text
    credit = flow.list_events("alice", "exports", 1)[0]
    assert credit.credits_used == -4
    assert credit.metadata == {"reason": "bad export", "admin": "root"}
    assert flow.get_total_usage("alice", "exports") == 7
    flow.close()


def test_credits_granted_on_the_admin_page_serve_the_next_request(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    flow.create_credit_pack(
        "25 exports",
        credits={"exports": 25},
        stripe_payment_link_id="plink_exports",
        payment_link_url="https://buy.stripe.com/test_exports",
    )
    with TestClient(starlette_app(flow)) as client:
        for _ in range(10):
            client.post("/export", headers=ALICE)
        refused = client.post("/export", headers=ALICE)
        assert refused.status_code == 402
        assert refused.json()["top_up_url"].startswith("https://buy.stripe.com/test_exports?")
        page = client.get("/admin/user?id=alice", headers=ADMIN)
        check_html(page.text)
        assert "Grant credits" in page.text
        form = {"id": "alice", "feature": "exports", "amount": "3", "days": "30"}
        form |= {"reason": "outage", "csrf": client.cookies[CSRF_COOKIE], "confirm": "yes"}
        done = client.post("/admin/user/grant", data=form, headers=ADMIN, follow_redirects=False)
        assert done.status_code == 303
        assert client.post("/export", headers=ALICE).status_code == 200  # paid by the grant
        after = client.get("/admin/user?id=alice", headers=ADMIN)
        assert "outage" in after.text and "admin" in after.text
        usage = client.get("/usage/", headers=ALICE)
        data = client.get("/usage/usage.json", headers=ALICE).json()
    [grant] = flow.list_grants("alice")
    assert (grant.credits, grant.remaining, grant.source) == (3, 2, "admin")
    assert grant.metadata == {"reason": "outage", "admin": "root"}
    assert "plus 2 bought credits" in usage.text and "Buy more exports" in usage.text
    check_html(usage.text)
    exports = next(f for f in data["features"] if f["feature"] == "exports")
    assert (exports["used"], exports["remaining"], exports["credit_balance"]) == (11, 2, 2)
    assert exports["top_up_url"].startswith("https://buy.stripe.com/test_exports?")
    flow.close()


def test_flask_blueprints(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    app = Flask(__name__)
    app.register_blueprint(
        usage_blueprint(flow, user_id=lambda: request.headers.get("x-user")), url_prefix="/usage"
    )
    app.register_blueprint(
        admin_blueprint(flow, authorize=lambda: request.headers.get("x-admin") == "yes"),
        url_prefix="/admin",
    )
    flow.consume("alice", "exports", 4)
    client = app.test_client()
    data: Any = client.get("/usage/usage.json", headers=ALICE).get_json()
    assert next(f for f in data["features"] if f["feature"] == "exports")["used"] == 4
    page = client.get("/usage/", headers=ALICE)
    assert "4 used, 0 held, 6 left of 10" in page.get_data(as_text=True)
    check_html(page.get_data(as_text=True))
    assert client.get("/usage/usage.json").status_code == 401
    assert client.get("/admin/", headers=ALICE).status_code == 403
    assert client.get("/admin/user?id=alice", headers=ADMIN).status_code == 200
    token = client.get_cookie(CSRF_COOKIE, path="/admin")
    assert token is not None
    form = {"id": "alice", "feature": "exports", "reason": "new month", "confirm": "yes"}
    done = client.post("/admin/user/reset", data={**form, "csrf": token.value}, headers=ADMIN)
    assert done.status_code == 303
    assert flow.get_total_usage("alice", "exports") == 0
    flow.close()


def test_pages_carry_a_strict_policy_and_escape_hostile_input(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    hostile = '"><script>alert(1)</script>'
    flow.consume(hostile, "exports")
    flow.grant_credits(hostile, "exports", 2, reason="<img src=x onerror=alert(1)>")
    with TestClient(starlette_app(flow)) as client:
        page = client.get("/admin/user", params={"id": hostile}, headers=ADMIN)
        usage = client.get("/usage/", headers={"x-user": "alice"})
    for response in (page, usage):
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "style-src 'sha256-" in policy
        assert "script-src" not in policy  # no script may run at all
        assert response.headers["x-content-type-options"] == "nosniff"
        check_html(response.text)
        assert 'style="' not in response.text  # the policy allows no inline style
    assert "<script>" not in page.text and "<img" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
    flow.close()
