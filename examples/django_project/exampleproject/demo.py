"""``manage.py --demo``: drive the project with Django's test client on a fresh SQLite store
and print the 402."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def demo() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["USAGEFLOW_STORE"] = f"sqlite:///{Path(tmp) / 'demo.db'}"
        import django

        django.setup()
        from django.test import Client

        from exampleproject.plans import setup_plans
        from usageflow.integrations.django import get_flow

        setup_plans()
        client = Client()
        headers = {"x-user-id": "ada"}
        for attempt in range(1, 5):
            r = client.post("/v1/exports", headers=headers)
            print(f"POST /v1/exports #{attempt}: {r.status_code}  RateLimit: {r['RateLimit']}")
        print("\nThe fourth export is refused:\n")
        print(f"HTTP/1.1 {r.status_code} {r.reason_phrase}")
        for name in ("Content-Type", "RateLimit-Policy", "RateLimit", "Retry-After"):
            print(f"{name}: {r[name]}")
        print()
        print(json.dumps(r.json(), indent=2))
        r = client.post("/v1/chat/7", headers=headers)
        print(f"\nPOST /v1/chat/7: {r.status_code}  RateLimit: {r['RateLimit']}")
        r = client.post("/v1/summaries?pages=30", headers=headers)
        print(f"POST /v1/summaries?pages=30: {r.status_code}  RateLimit: {r['RateLimit']}")
        r = client.post("/v1/exports")
        print(f"Without a user: {r.status_code} {r.json()['title']}")
        print(f"GET /health (exempt): {client.get('/health').status_code}")
        flow = get_flow()
        print(f"\nada used {flow.get_total_usage('ada', 'design-export')} design exports")
        flow.close()
