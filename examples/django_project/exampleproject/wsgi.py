"""WSGI entry point: ``gunicorn exampleproject.wsgi``."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exampleproject.settings")
application = get_wsgi_application()

from exampleproject.plans import setup_plans  # noqa: E402

setup_plans()
