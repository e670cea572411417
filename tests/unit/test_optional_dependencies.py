"""A missing optional dependency is a UsageFlowError naming its ``pip install`` line.

Each case runs in a fresh interpreter in which the framework cannot be imported (a ``None``
entry in ``sys.modules`` makes ``import`` raise ``ModuleNotFoundError``, exactly as when the
package is not installed).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None
import usageflow  # the core imports no optional dependency
try:
    import {module}
except usageflow.UsageFlowError as exc:
    print(exc.code.value, "|", exc.message)
else:
    print("imported")
"""


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("usageflow.integrations.starlette", ["anyio", "starlette"], "starlette"),
        ("usageflow.integrations.starlette", ["starlette"], "starlette"),
        ("usageflow.integrations.fastapi", ["starlette", "fastapi"], "fastapi"),
        ("usageflow.integrations.flask", ["flask"], "flask"),
    ],
)
def test_a_missing_web_framework_names_its_install_line(
    module: str, blocked: list[str], extra: str
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(blocked=blocked, module=module)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("USAGE_CONFIG_ERROR |"), out
    assert f"pip install 'usageflow[{extra}]'" in out


def test_the_core_imports_no_web_framework() -> None:
    code = (
        "import sys, usageflow\n"
        "from usageflow import metered\n"
        "print(sorted(m for m in ('starlette', 'fastapi', 'flask', 'werkzeug', 'django', 'anyio')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


STRIPE_PROBE = """
import sys
sys.modules["stripe"] = None
import usageflow
import usageflow.integrations.stripe
import usageflow.stripe.api
import usageflow.stripe.events
import usageflow.stripe.webhooks
from usageflow.testing import sign_stripe_payload
flow = usageflow.UsageFlow("memory://", stripe_webhook_secret="whsec_test")
body, header = sign_stripe_payload({"id": "evt_1"}, "whsec_test")
for name, run in (
    ("handle_webhook", lambda: flow.handle_webhook(body, header)),
    ("sync_plans_from_stripe", lambda: flow.sync_plans_from_stripe()),
):
    try:
        run()
    except usageflow.UsageFlowError as exc:
        print(name, exc.code.value, "|", exc.message)
    else:
        print(name, "ran")
"""


def test_the_stripe_package_imports_without_stripe_and_names_its_install_line() -> None:
    """``usageflow/stripe/`` shares its last name with the library: importing it (and the
    flows) must not need the library, and an operation that does names the pip line."""
    out = subprocess.run(
        [sys.executable, "-c", STRIPE_PROBE], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert len(out) == 2, out
    for line, name in zip(out, ("handle_webhook", "sync_plans_from_stripe"), strict=True):
        assert line.startswith(f"{name} USAGE_CONFIG_ERROR |"), line
        assert "pip install 'usageflow[stripe]'" in line, line


def test_nothing_imports_the_stripe_library_until_an_operation_needs_it() -> None:
    code = (
        "import sys, usageflow, usageflow.integrations.stripe\n"
        "import usageflow.stripe.api, usageflow.stripe.events, usageflow.stripe.webhooks\n"
        "print('stripe' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
