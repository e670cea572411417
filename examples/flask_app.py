"""A Flask app metered by UsageFlowFlask and ``@metered`` (sync and async views).

    python examples/flask_app.py --demo   # drive the app with Flask's test client, print the 402
    python examples/flask_app.py          # serve on http://127.0.0.1:5000 (Flask's dev server)

    curl -X POST -H 'X-User-Id: ada' http://127.0.0.1:5000/v1/exports

Served, usage is kept in the embedded SQLite file ``usageflow-example.db`` (or
``$USAGEFLOW_STORE``, read by the extension as ``USAGEFLOW_STORE``); the demo uses
``memory://``. The user is the ``X-User-Id`` header, put in ``flask.g`` by a
``before_request`` hook: a stand-in for your real authentication.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

from flask import Flask, g, request

from usageflow import UsageFlow, metered
from usageflow.integrations.flask import UsageFlowFlask

PRO_PAYMENT_LINK = "https://buy.stripe.com/test_pro_plan"

usage = UsageFlowFlask()  # user id: flask.g.user_id (the default)


def create_app(store: str) -> Flask:
    app = Flask(__name__)
    app.config["USAGEFLOW_STORE"] = store
    usage.init_app(app)
    flow: UsageFlow = app.extensions["usageflow"].flow
    flow.create_plan("Free", is_free=True, limits={"design-export": 3, "summaries": 100})
    flow.create_plan(
        "Pro",
        stripe_price_id="price_pro_monthly",
        price_amount=29,
        payment_link_url=PRO_PAYMENT_LINK,
        limits={"design-export": 1000, "summaries": 10_000},
    )

    @app.before_request
    def authenticate() -> None:
        g.user_id = request.headers.get("x-user-id")

    @app.post("/v1/exports")
    @metered("design-export")
    def export() -> dict[str, str]:
        return {"export": "ready"}

    @app.post("/v1/summaries")
    @metered("summaries", credits=lambda result: result["pages"], reserve=10)
    async def summarize() -> dict[str, Any]:
        await asyncio.sleep(0)  # an async view: awaits a model, a queue...
        pages = int(request.args.get("pages", "1"))
        return {"summary": "...", "pages": pages}

    return app


def demo() -> None:
    client = create_app("memory://").test_client()
    headers = {"x-user-id": "ada"}
    for attempt in range(1, 5):
        r = client.post("/v1/exports", headers=headers)
        print(f"POST /v1/exports #{attempt}: {r.status_code}  RateLimit: {r.headers['RateLimit']}")
    print(f"\nHTTP/1.1 {r.status}")
    for name in ("Content-Type", "RateLimit-Policy", "RateLimit", "Retry-After"):
        print(f"{name}: {r.headers[name]}")
    print()
    print(json.dumps(r.get_json(force=True), indent=2))
    r = client.post("/v1/summaries?pages=30", headers=headers)
    print(f"\nPOST /v1/summaries?pages=30: {r.status_code}  RateLimit: {r.headers['RateLimit']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", action="store_true", help="drive the app and print the 402")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    if args.demo:
        demo()
        return
    store = os.environ.get("USAGEFLOW_STORE", "sqlite:///usageflow-example.db")
    create_app(store).run(host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
