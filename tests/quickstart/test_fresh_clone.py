"""The README's quick start, run as a new user runs it: the repository is cloned (its HEAD:
uncommitted changes are not in a clone, as they are not in a user's) into an empty folder, and
the README's two commands run there with nothing installed: ``make demo`` makes ``.venv`` with
the ``python3`` on PATH, installs the package into it and runs the quick-start example, whose
output is checked line by line.

The second command, ``make test``, is run in a reduced form: ``make install`` (what it
installs) and then pytest on one module (``tests/unit/test_cli.py``), not the whole suite.
The whole suite includes this test, so running it here would recurse, and would run the
suite twice.

Skipped, saying why, where ``git``, ``make`` or a ``python3`` that can make a virtual
environment is missing, or where pip reaches no package index (no network and no local one).
Deselect it with ``-m "not slow"``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

#: What ``examples/quickstart.py`` prints: a new user (its id random) per run; ``days`` and the
#: reset's date depend on today.
EXPECTED = [
    r"exported poster-1\.png \(4 left this month\)",
    r"exported poster-2\.png \(3 left this month\)",
    r"exported poster-3\.png \(2 left this month\)",
    r"exported poster-4\.png \(1 left this month\)",
    r"exported poster-5\.png \(0 left this month\)",
    r"402 quota spent \(5/5\); upgrade: "
    r"https://buy\.stripe\.com/test_pro\?client_reference_id=user-[0-9a-f]{8}",
    r"402 quota spent \(5/5\); upgrade: "
    r"https://buy\.stripe\.com/test_pro\?client_reference_id=user-[0-9a-f]{8}",
    r"refund one failed export:",
    r"  current=4 limit=5 remaining=1 is_unlimited=False credit_balance=0 scope=None",
    r"grant a one-time bonus of 3 exports this month:",
    r"  current=4 limit=8 remaining=4 is_unlimited=False credit_balance=0 scope=None",
    r"  exported poster-8\.png \(3 left this month\)",
    r"upgrade to Pro:",
    r"  exported poster-9\.png \(997 left this month\)",
    r"this month: total=6 max/day=6 days=\d+",
    r"bad input is refused: USAGE_INVALID_PARAMS: credits must be between 1 and "
    r"9223372036854775807",
    r"after a reset: total=0 last_reset_date=datetime\.datetime\(.*tzinfo=datetime\.timezone"
    r"\.utc\) pre_reset_total=6",
]


def _user_env() -> dict[str, str]:
    """This process's environment as a new user's shell would have it: no virtual
    environment, no PYTHONPATH (which points at this checkout's sources), no usageflow or
    pytest settings, no outer make's flags. The pip configuration (how packages are obtained
    on this machine) is kept."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("USAGEFLOW_", "PYTEST_", "PYTHON", "MAKE", "MFLAGS", "VIRTUAL_ENV"))
    }
    venv = os.environ.get("VIRTUAL_ENV")
    venv_bins = {str(Path(sys.prefix) / "bin")} | ({str(Path(venv) / "bin")} if venv else set())
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p not in venv_bins]
    env["PATH"] = os.pathsep.join(path)
    return env


def _run(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _tail(result: subprocess.CompletedProcess[str]) -> str:
    return "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh clone of this repository's HEAD, and the environment to run commands in."""
    env = _user_env()
    for tool in ("git", "make", "python3"):
        if shutil.which(tool, path=env["PATH"]) is None:
            pytest.skip(f"the quick start needs {tool!r} on PATH, and there is none")
    top = _run(["git", "rev-parse", "--show-toplevel"], ROOT, env, 30)
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != ROOT:
        pytest.skip(f"{ROOT} is not a git checkout: there is nothing to clone")
    probe = _run(["python3", "-c", "import ensurepip, venv"], ROOT, env, 30)
    if probe.returncode != 0:
        pytest.skip("the python3 on PATH cannot make a virtual environment (no ensurepip)")
    # Can pip reach an index (PyPI or a local one)? Fetch the build backend, quickly.
    download = tmp_path_factory.mktemp("probe")
    try:
        reach = _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--dest",
                str(download),
                "--timeout",
                "10",
                "--retries",
                "0",
                "--disable-pip-version-check",
                "hatchling",
            ],
            ROOT,
            env,
            60,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("pip reaches no package index (no answer within 60 s): nothing can install")
    if reach.returncode != 0:
        last = (reach.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"pip reaches no package index, so nothing can install: {last}")
    target = tmp_path_factory.mktemp("fresh") / "usageflow"
    cloned = _run(["git", "clone", "--quiet", str(ROOT), str(target)], ROOT, env, 120)
    assert cloned.returncode == 0, _tail(cloned)
    assert not (target / ".venv").exists()
    return target, env


def test_make_demo_in_a_fresh_clone(clone: tuple[Path, dict[str, str]]) -> None:
    repo, env = clone
    result = _run(["make", "demo"], repo, env, 300)
    assert result.returncode == 0, _tail(result)
    lines = result.stdout.splitlines()
    runs = [i for i, line in enumerate(lines) if line.endswith("examples/quickstart.py")]
    assert runs, result.stdout  # make echoes the command, then the example prints
    output = lines[runs[0] + 1 :]
    assert len(output) == len(EXPECTED), "\n".join(output)
    for line, pattern in zip(output, EXPECTED, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
    assert (repo / "usageflow.db").is_file()  # the embedded default store, in the clone
    where = _run(
        [".venv/bin/python", "-c", "import usageflow; print(usageflow.__file__)"], repo, env, 60
    )
    assert Path(where.stdout.strip()).resolve().is_relative_to(repo.resolve())


def test_make_test_reduced_to_one_module_in_a_fresh_clone(
    clone: tuple[Path, dict[str, str]],
) -> None:
    repo, env = clone
    installed = _run(["make", "install"], repo, env, 600)
    assert installed.returncode == 0, _tail(installed)
    tests = _run(
        [
            ".venv/bin/python",
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/unit/test_cli.py",
        ],
        repo,
        env,
        300,
    )
    assert tests.returncode == 0, _tail(tests)
    assert re.search(r"^\d+ passed", tests.stdout, re.MULTILINE), _tail(tests)
    assert "failed" not in tests.stdout.splitlines()[-1]
