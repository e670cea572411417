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


def test_credits_example_sells_a_pack_and_serves_the_buyer() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / "credits_app.py"), "--demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "on the Free plan: 402" in out
    assert '"top_up_url": "https://buy.stripe.com/test_tokens_10k?client_reference_id=ada"' in out
    assert "webhook: 200 applied" in out
    assert "again: 200" in out
    assert '"credit_balance": 9600' in out
