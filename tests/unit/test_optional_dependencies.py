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
