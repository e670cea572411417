"""ASGI entry point: ``uvicorn exampleproject.asgi:application``."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exampleproject.settings")
application = get_asgi_application()

from exampleproject.plans import setup_plans  # noqa: E402

setup_plans()
