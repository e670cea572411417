"""Settings of the example project: no database, UsageFlow's middleware and routes."""

from __future__ import annotations

import os

SECRET_KEY = "usageflow-example-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "exampleproject.urls"
WSGI_APPLICATION = "exampleproject.wsgi.application"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "usageflow.integrations.django.UsageFlowMiddleware",
]

USAGEFLOW = {
    # A store URL (SQLite, PostgreSQL); leave it out for $USAGEFLOW_STORE, else the embedded
    # SQLite file usageflow.db.
    "store": os.environ.get("USAGEFLOW_STORE", "sqlite:///usageflow-example.db"),
    "routes": {
        "exports": "design-export",  # the URL pattern named "exports": 1 credit
        "POST /v1/chat/<int:chat_id>": {"feature": "ai_chat_limit", "credits": 2},
    },
    "user_id": "exampleproject.views.user_id",  # default: str(request.user.pk)
    "exempt": "exampleproject.views.is_health_check",
}
