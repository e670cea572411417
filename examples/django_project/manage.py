#!/usr/bin/env python
"""A Django project metered by UsageFlow: 3 free design exports a month, then 402.

    python examples/django_project/manage.py --demo      # drive it with Django's test client
    python examples/django_project/manage.py runserver   # serve on http://127.0.0.1:8000 (WSGI)
    cd examples/django_project && uvicorn exampleproject.asgi:application   # or ASGI

    curl -X POST -H 'X-User-Id: ada' http://127.0.0.1:8000/v1/exports

Usage is kept in the embedded SQLite file ``usageflow-example.db`` (or ``$USAGEFLOW_STORE``);
the demo uses a fresh SQLite file in a temporary directory. The user is the ``X-User-Id``
header (``exampleproject.views.user_id``): a stand-in for Django's authentication, which the
middleware uses by default (``str(request.user.pk)``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exampleproject.settings")
    if sys.argv[1:] == ["--demo"]:
        from exampleproject.demo import demo

        demo()
        return
    import django
    from django.core.management import execute_from_command_line
    from exampleproject.plans import setup_plans

    django.setup()
    setup_plans()
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
