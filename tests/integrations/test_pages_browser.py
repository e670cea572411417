"""The pages in a real headless Chromium (Debian's ``chromium``, driven by Playwright's Python
API) on a real uvicorn server: the numbers after metered requests, one user's page closed to
another, the admin page refused without ``authorize``, and an adjustment made on the admin
page changing what the next metered request gets. Screenshots (light and dark) go to
``docs/img/`` for docs/pages.md; they are checked by facts, not pixels."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integrations.test_pages import _flow, starlette_app
from tests.support.servers import uvicorn_server
from usageflow import UsageFlow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="pip install playwright (never `playwright install`)"
)
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="needs Debian's chromium: apt-get update && apt-get install -y chromium",
)
IMAGES = Path(__file__).parents[2] / "docs" / "img"


def _no_axe_violations(page: object) -> None:
    """axe-core (bundled by axe-playwright-python) finds no accessibility violation."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    violations = results.response["violations"]
    assert violations == [], [(v["id"], v["help"]) for v in violations]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, UsageFlow]]:
    flow = _flow(tmp_path)
    try:
        with uvicorn_server(starlette_app(flow)) as base:
            yield base, flow
    finally:
        flow.close()


def test_the_pages_in_a_real_browser(served: tuple[str, UsageFlow]) -> None:
    base, flow = served
    with httpx.Client(base_url=base) as http:
        for _ in range(6):
            assert http.post("/export", headers={"x-user": "alice"}).status_code == 200
        assert http.post("/export", headers={"x-user": "bob"}).status_code == 200
        IMAGES.mkdir(parents=True, exist_ok=True)
        with playwright_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                _check_usage_pages(browser, base)
                for _ in range(4):
                    http.post("/export", headers={"x-user": "alice"})
                assert http.post("/export", headers={"x-user": "alice"}).status_code == 402
                _adjust_on_the_admin_page(browser, base)
                # The adjustment took: alice's next metered request is served.
                assert http.post("/export", headers={"x-user": "alice"}).status_code == 200
            finally:
                browser.close()
    assert flow.fetch_usage("alice", "exports").limit == 15


def _check_usage_pages(browser: object, base: str) -> None:
    alice = browser.new_context(  # type: ignore[attr-defined]
        extra_http_headers={"x-user": "alice"},
        color_scheme="light",
        viewport={"width": 800, "height": 700},
    )
    page = alice.new_page()
    blocked: list[str] = []  # what the page's Content-Security-Policy refused, if anything
    page.on("console", lambda message: blocked.append(message.text))
    page.goto(f"{base}/usage/")
    assert page.get_by_role("heading", level=1).inner_text() == "Usage"
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background not in ("", "rgba(0, 0, 0, 0)")  # the stylesheet applied (by its hash)
    assert page.get_by_text("6 used, 0 held, 4 left of 10").is_visible()
    track = page.locator(".bar").first.bounding_box()
    used = page.locator(".bar .used").first.bounding_box()
    assert track is not None and used is not None
    assert abs(used["width"] / track["width"] - 0.6) < 0.02  # the bar in proportion
    assert (
        page.get_by_role("link", name="Upgrade your plan")
        .get_attribute("href")
        .startswith("https://buy.stripe.com/test_pro?")
    )
    assert not [m for m in blocked if "Content Security Policy" in m], blocked
    _no_axe_violations(page)
    page.screenshot(path=str(IMAGES / "usage-light.png"), full_page=True)
    alice.close()

    dark = browser.new_context(  # type: ignore[attr-defined]
        extra_http_headers={"x-user": "alice"},
        color_scheme="dark",
        viewport={"width": 800, "height": 700},
    )
    page = dark.new_page()
    page.goto(f"{base}/usage/")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(13, 17, 23)"
    _no_axe_violations(page)
    page.screenshot(path=str(IMAGES / "usage-dark.png"), full_page=True)
    dark.close()

    bob = browser.new_context(extra_http_headers={"x-user": "bob"})  # type: ignore[attr-defined]
    page = bob.new_page()
    page.goto(f"{base}/usage/")
    assert page.get_by_text("1 used, 0 held, 9 left of 10").is_visible()
    page.goto(f"{base}/usage/usage.json?user_id=alice")
    assert '"user_id": "bob"' in page.content() and "alice" not in page.inner_text("body")
    refused = page.goto(f"{base}/admin/")
    assert refused is not None and refused.status == 403
    bob.close()

    nobody = browser.new_context()  # type: ignore[attr-defined]
    answer = nobody.new_page().goto(f"{base}/usage/")
    assert answer is not None and answer.status == 401
    nobody.close()


def _adjust_on_the_admin_page(browser: object, base: str) -> None:
    admin = browser.new_context(  # type: ignore[attr-defined]
        extra_http_headers={"x-admin": "yes", "x-user": "root"},
        viewport={"width": 900, "height": 900},
    )
    page = admin.new_page()
    page.goto(f"{base}/admin/")
    _no_axe_violations(page)
    page.get_by_label("User id").fill("alice")
    page.get_by_role("button", name="Open").click()
    assert page.get_by_role("heading", name="User alice").is_visible()
    form = page.locator("form.action").first
    form.get_by_label("Feature").select_option("exports")
    form.get_by_label("Credits").fill("5")
    form.get_by_label("For days").fill("3")
    form.get_by_label("Reason").fill("goodwill")
    form.get_by_label("I confirm").check()
    form.get_by_role("button", name="Add to the limit").click()
    page.wait_for_url("**/admin/user?id=alice*")
    assert page.get_by_role("status").inner_text() == "exports limit raised by 5"
    assert page.get_by_text("+5 (one_time)").is_visible()
    _no_axe_violations(page)
    page.screenshot(path=str(IMAGES / "admin-light.png"), full_page=True)
    admin.close()
    dark = browser.new_context(  # type: ignore[attr-defined]
        extra_http_headers={"x-admin": "yes", "x-user": "root"},
        color_scheme="dark",
        viewport={"width": 900, "height": 900},
    )
    page = dark.new_page()
    page.goto(f"{base}/admin/user?id=alice")
    _no_axe_violations(page)
    page.screenshot(path=str(IMAGES / "admin-dark.png"), full_page=True)
    dark.close()
