"""The framework examples run and show the 402 (``python examples/<app>.py --demo``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    "name", ["fastapi_app.py", "starlette_app.py", "flask_app.py", "django_project/manage.py"]
)
def test_example_demo_shows_the_402(name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name), "--demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "402" in done.stdout
    assert '"upgrade_url": "https://buy.stripe.com/test_pro_plan?client_reference_id=ada"' in (
        done.stdout
    )
    assert "retry-after" in done.stdout.lower()
