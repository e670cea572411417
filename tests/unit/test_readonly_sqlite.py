"""``connection_check()`` on a SQLite file that cannot be written answers False.

A read-only file is made the honest way for the user running the tests: ``chmod 0o444`` for a
normal user; for root (who ignores permission bits) the file is made immutable with
``chattr +i``, which the kernel enforces for root too. Where neither works (root on a file
system without immutable files, or without ``CAP_LINUX_IMMUTABLE``) the test is skipped.
The directory stays writable, so SQLite can still create its ``-wal``/``-shm`` files: that is
the case where the old read-only check answered True while every write failed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from usageflow import UsageFlow
from usageflow.errors import UsageFlowError


def _make_db(path: Path) -> None:
    flow = UsageFlow(f"sqlite:///{path}")
    flow.create_plan("Free", is_free=True, limits={"api": 5})
    flow.consume("u1", "api")
    flow.close()  # the last connection checkpoints and removes the -wal/-shm files


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def _read_only(path: Path) -> Iterator[None]:
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)
        return
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("running as root without chattr: no way to make a file read-only for root")
    made = subprocess.run([chattr, "+i", str(path)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"running as root and chattr +i failed: {made.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], capture_output=True, check=True)


def test_a_writable_file_answers_true_and_the_check_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "usageflow.db"
    _make_db(path)
    before = _digest(path)
    flow = UsageFlow(f"sqlite:///{path}")
    assert flow.connection_check() is True
    assert flow.connection_check() is True
    assert flow.get_total_usage("u1", "api") == 1
    flow.close()
    assert _digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["usageflow.db"]


def test_a_read_only_file_answers_false(tmp_path: Path) -> None:
    path = tmp_path / "usageflow.db"
    _make_db(path)
    before = _digest(path)
    with _read_only(path):
        flow = UsageFlow(f"sqlite:///{path}")
        try:
            with pytest.raises(UsageFlowError) as caught:  # writes fail, as they should...
                flow.consume("u1", "api")
            assert caught.value.is_store_failure
            assert flow.connection_check() is False  # ...and the check says so
            assert flow.get_total_usage("u1", "api") == 1  # reading still works
        finally:
            flow.close()
    assert _digest(path) == before
