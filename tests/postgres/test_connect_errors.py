"""A PostgreSQL URL that names a role, a database or a port that cannot be used: the sync flow's
error names the driver's cause as the async flow's does (not only the pool's "couldn't get a
connection after 5.00 sec"), ``connection_check()`` answers False within its timeout, and the
pool's per-attempt warnings do not flood the log (one line at most)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from tests.postgres._proxy import PgProxy
from tests.postgres.conftest import via_proxy
from usageflow import AsyncUsageFlow, ErrorCodes, UsageFlow, UsageFlowError

TIMEOUT = 2.0


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _url(
    pg_url: str, *, user: str | None = None, db: str | None = None, port: int | None = None
) -> str:
    parts = urlsplit(pg_url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user or parts.username or 'postgres'}@{host}:{port or parts.port or 5432}"
    path = f"/{db}" if db else parts.path
    return f"postgresql://{netloc}{path}?connect_timeout=2&timeout={TIMEOUT:g}"


def _sync_failure(url: str) -> tuple[UsageFlowError, bool, float]:
    flow = UsageFlow(url)
    try:
        with pytest.raises(UsageFlowError) as caught:
            flow.get_plans()
        t0 = time.monotonic()
        ok = flow.connection_check()
        elapsed = time.monotonic() - t0
    finally:
        flow.close()
    return caught.value, ok, elapsed


async def _async_failure(url: str) -> tuple[UsageFlowError, bool]:
    flow = AsyncUsageFlow(url)
    try:
        with pytest.raises(UsageFlowError) as caught:
            await flow.get_plans()
        ok = await flow.connection_check()
    finally:
        await flow.aclose()
    return caught.value, ok


def _cases(pg_url: str) -> list[tuple[str, str]]:
    return [
        (_url(pg_url, user="uf_no_such_role"), 'role "uf_no_such_role" does not exist'),
        (_url(pg_url, db="uf_no_such_db"), 'database "uf_no_such_db" does not exist'),
        (_url(pg_url, port=_closed_port()), "Connection refused"),
    ]


@pytest.mark.parametrize("case", [0, 1, 2], ids=["role", "database", "port"])
def test_sync_and_async_errors_name_the_cause(
    pg_url: str, case: int, caplog: pytest.LogCaptureFixture
) -> None:
    url, cause = _cases(pg_url)[case]
    with caplog.at_level(logging.WARNING):
        error, ok, elapsed = _sync_failure(url)
    assert error.code is ErrorCodes.USAGE_CONFIG_ERROR and error.is_store_failure
    assert cause in error.message, error.message
    assert cause in error.details["original_error"]
    assert ok is False
    assert elapsed < TIMEOUT + 1.0  # connection_check answers within its timeout
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) <= 1, [r.getMessage() for r in warnings]
    assert all(cause in r.getMessage() for r in warnings)

    aerror, aok = asyncio.run(_async_failure(url))
    assert aerror.code is ErrorCodes.USAGE_CONFIG_ERROR and aerror.is_store_failure
    assert cause in aerror.message
    assert aok is False


def test_the_pool_stays_quiet_while_it_retries(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The pool keeps trying to connect in the background (so that the store recovers by
    itself): those attempts are not logged one by one."""
    url, cause = _cases(pg_url)[0]
    flow = UsageFlow(url)
    with caplog.at_level(logging.INFO):
        try:
            for _ in range(2):
                with pytest.raises(UsageFlowError):
                    flow.get_plans()
            assert flow.connection_check() is False
        finally:
            flow.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert cause in warnings[0] and "postgresql://" in warnings[0]


def test_the_cause_named_is_the_current_one(pg_url: str, schema: str, proxy: PgProxy) -> None:
    """The database goes away: the error names why. It comes back: a later timeout (the only
    connection busy) names no stale failure."""
    url = via_proxy(pg_url, proxy, schema, pool_size=1, connect_timeout=1, timeout=1)
    url += "&query_timeout=3"
    flow = UsageFlow(url)
    try:
        flow.migrate()
        proxy.kill()
        with pytest.raises(UsageFlowError) as caught:
            flow.get_plans()
        assert "Connection refused" in caught.value.message or "closed" in caught.value.message
        proxy.start()
        deadline = time.monotonic() + 10
        while not flow.connection_check():
            assert time.monotonic() < deadline, "the store did not recover"
        proxy.mode = "stall"  # the next call keeps the only connection until query_timeout
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(flow.get_plans)
            time.sleep(0.3)
            with pytest.raises(UsageFlowError) as caught:
                flow.get_plans()
            assert "couldn't get a connection after 1.00 sec" in caught.value.message
            assert "refused" not in caught.value.message
            with pytest.raises(UsageFlowError):
                held.result()
    finally:
        proxy.mode = "forward"
        flow.close()


def test_a_server_that_never_answers_is_named_as_such(pg_url: str, schema: str) -> None:
    """A host that accepts and says nothing (a wrong address behind a firewall looks alike):
    when the pool's attempt is still waiting at the timeout, the error says so."""
    silent = PgProxy(("127.0.0.1", 9))
    silent.mode = "silent"
    flow = UsageFlow(via_proxy(pg_url, silent, schema, connect_timeout=4, timeout=1))
    try:
        t0 = time.monotonic()
        with pytest.raises(UsageFlowError) as caught:
            flow.get_plans()
        assert time.monotonic() - t0 < 2
        assert "has not answered a connection attempt yet (connect_timeout=4)" in (
            caught.value.message
        )
    finally:
        flow.close()
        silent.kill()
