"""A SQLite URL whose file cannot be opened: the error names the path SQLite tried (relative
paths resolved against the working directory) and why, and a relative ``sqlite:///tmp/x.db``
that was probably meant as ``/tmp/x.db`` says how to write that."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from usageflow import AsyncUsageFlow, ErrorCodes, UsageFlow, UsageFlowError


def _open_error(url: str) -> UsageFlowError:
    flow = UsageFlow(url)
    try:
        with pytest.raises(UsageFlowError) as caught:
            flow.get_plans()
        assert flow.connection_check() is False
    finally:
        flow.close()
    error = caught.value
    assert error.code is ErrorCodes.USAGE_CONFIG_ERROR and error.is_store_failure
    return error


def test_a_relative_path_meant_as_absolute_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "app"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    absolute = tmp_path / "data" / "x.db"
    absolute.parent.mkdir()  # exists as an absolute path, not under the working directory
    relative = str(absolute).lstrip("/")
    url = f"sqlite:///{relative}"  # three slashes: relative
    error = _open_error(url)
    tried = str(cwd / relative)
    assert tried in error.message
    assert error.details["path"] == tried
    assert f"{url} is the relative path {relative}, in {cwd}" in error.message
    assert f"for {absolute} write sqlite:///{absolute}" in error.message
    assert f"sqlite:////{relative}" in error.message
    assert not absolute.exists()  # nothing was created anywhere

    async def run() -> str:
        flow = AsyncUsageFlow(url)
        try:
            with pytest.raises(UsageFlowError) as caught:
                await flow.get_plans()
            assert await flow.connection_check() is False
        finally:
            await flow.aclose()
        return caught.value.message

    assert f"{url} is the relative path" in asyncio.run(run())


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "x.db"
    error = _open_error(f"sqlite:///{path}")
    assert str(path) in error.message
    assert f"the directory {tmp_path / 'missing'} does not exist" in error.message
    assert "relative path" not in error.message


def test_a_file_where_the_directory_should_be_is_named(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a directory")
    path = tmp_path / "plain" / "x.db"
    error = _open_error(f"sqlite:///{path}")
    assert str(path) in error.message
    assert f"{tmp_path / 'plain'} is not a directory" in error.message


def test_a_plain_relative_name_gets_no_absolute_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sqlite:///nowhere-xyz/x.db`` (no ``/nowhere-xyz`` either): only the resolved path."""
    monkeypatch.chdir(tmp_path)
    error = _open_error("sqlite:///nowhere-xyz/x.db")
    assert str(tmp_path / "nowhere-xyz" / "x.db") in error.message
    assert "sqlite:////" not in error.message
