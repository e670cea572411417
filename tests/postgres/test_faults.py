"""Faults: the database unreachable or restarted mid-run gives ``UsageFlowError`` within the
configured timeouts (never a hang or a crash), writes nothing half-way, and the store recovers
by itself when the database returns. The database is reached through a TCP proxy this test
kills and restarts; nothing global is stopped."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.postgres._proxy import PgProxy
from tests.postgres.conftest import via_proxy
from tests.support.postgrest import PostgrestStandIn
from usageflow import AsyncUsageFlow, ErrorCodes, UsageFlow, UsageFlowError, ops
from usageflow.stores.postgres import PostgresStore
from usageflow.stores.supabase import SupabaseStore

FAST = {"connect_timeout": 1, "timeout": 2, "statement_timeout": 5, "tcp_user_timeout": 2}


def _flow(store: PostgresStore) -> UsageFlow:
    flow = UsageFlow(store)
    flow.create_plan("Free", is_free=True, limits={"api": 10_000})
    return flow


def _fails_fast(call: object, within: float) -> UsageFlowError:
    t0 = time.monotonic()
    with pytest.raises(UsageFlowError) as caught:
        call()  # type: ignore[operator]
    assert time.monotonic() - t0 < within
    error = caught.value
    assert error.code is ErrorCodes.USAGE_CONFIG_ERROR and error.is_store_failure
    assert error.details["operation"] and error.details["table"]
    return error


def test_killed_then_restarted_database(
    pg_url: str, schema: str, proxy: PgProxy, pg_store: PostgresStore
) -> None:
    store = PostgresStore(via_proxy(pg_url, proxy, schema, **FAST))
    flow = _flow(store)
    assert flow.consume("u1", "api").allowed
    proxy.kill()
    # The pooled connection is dead, then no new one can be made: both fail, fast.
    _fails_fast(lambda: flow.consume("u1", "api"), within=4)
    error = _fails_fast(lambda: flow.consume("u1", "api"), within=4)
    assert "password" not in str(error).lower()
    proxy.start()  # same port: the database is back
    deadline = time.monotonic() + 10
    while True:
        try:
            assert flow.consume("u1", "api").allowed
            break
        except UsageFlowError:
            assert time.monotonic() < deadline, "the store did not recover"
            time.sleep(0.2)
    assert pg_store.call(ops.ledger_check(user_id="u1", feature_name="api")) == (2, 2)
    store.close()


def test_unreachable_and_silent_servers_time_out(pg_url: str, schema: str) -> None:
    dead = PgProxy(("127.0.0.1", 9))  # forwards nowhere useful; killed at once
    port = dead.port
    dead.kill()
    store = PostgresStore(via_proxy(pg_url, dead, schema, **FAST))
    _fails_fast(lambda: store.call(ops.load_catalog()), within=4)
    store.close()
    assert port

    silent = PgProxy(("127.0.0.1", 9))
    silent.mode = "silent"  # accepts, never answers: only the timeouts end the wait
    store = PostgresStore(via_proxy(pg_url, silent, schema, **FAST))
    _fails_fast(lambda: store.call(ops.load_catalog()), within=5)
    store.close()
    silent.kill()


def test_stalled_connection_is_cut_at_the_query_timeout(
    pg_url: str, schema: str, proxy: PgProxy, pg_store: PostgresStore
) -> None:
    """A server (or pooler) that keeps the connection but never answers: the client-side
    deadline drops the connection; nothing waits past ``query_timeout``."""
    store = PostgresStore(via_proxy(pg_url, proxy, schema, query_timeout=1, **FAST))
    flow = _flow(store)
    assert flow.consume("u1", "api").allowed
    proxy.mode = "stall"
    _fails_fast(lambda: flow.consume("u1", "api"), within=3)
    proxy.mode = "forward"
    assert flow.consume("u1", "api").allowed
    total, ledger = pg_store.call(ops.ledger_check(user_id="u1", feature_name="api"))
    assert total == ledger and total in (2, 3)  # the cut call may have committed
    store.close()


def test_restart_mid_run_leaves_nothing_half_written(
    pg_url: str, schema: str, proxy: PgProxy, pg_store: PostgresStore
) -> None:
    store = PostgresStore(via_proxy(pg_url, proxy, schema, pool_size=8, **FAST))
    flow = _flow(store)
    ok, failed = [0], [0]
    lock = threading.Lock()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                allowed = flow.consume("u1", "api").allowed
                with lock:
                    ok[0] += allowed
            except UsageFlowError:
                with lock:
                    failed[0] += 1
                time.sleep(0.01)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(work) for _ in range(8)]
        time.sleep(0.5)
        proxy.kill()
        time.sleep(1.0)
        proxy.start()
        time.sleep(1.5)
        stop.set()
        for f in futures:
            f.result(timeout=30)
    assert failed[0] > 0 and ok[0] > 0
    total, ledger = pg_store.call(ops.ledger_check(user_id="u1", feature_name="api"))
    assert total == ledger  # the counter always agrees with the ledger
    # Every acknowledged charge is recorded; a call cut mid-flight may or may not be.
    assert ok[0] <= total <= ok[0] + failed[0]
    events = pg_store.call(ops.list_events(user_id="u1", feature_name="api", limit=10_000))
    assert len(events) == total
    store.close()


def test_async_face_fails_fast_and_recovers(
    pg_url: str, schema: str, proxy: PgProxy, pg_store: PostgresStore
) -> None:
    store = PostgresStore(via_proxy(pg_url, proxy, schema, **FAST))
    _flow(store)

    async def main() -> None:
        async with AsyncUsageFlow(store) as flow:
            assert (await flow.consume("u1", "api")).allowed
            proxy.kill()
            for _ in range(2):
                t0 = time.monotonic()
                with pytest.raises(UsageFlowError) as caught:
                    await flow.consume("u1", "api")
                assert caught.value.is_store_failure
                assert time.monotonic() - t0 < 4
            proxy.start()
            assert (await flow.consume("u1", "api")).allowed

    asyncio.run(main())
    assert pg_store.call(ops.ledger_check(user_id="u1", feature_name="api")) == (2, 2)
    store.close()


def test_supabase_unreachable_fails_fast_without_the_key(
    postgrest: PostgrestStandIn, schema: str
) -> None:
    postgrest.migrate(schema)
    store = SupabaseStore("http://127.0.0.1:9", postgrest.service_key, schema=schema, timeout=2)
    error = _fails_fast(lambda: UsageFlow(store).consume("u1", "api"), within=4)
    assert postgrest.service_key not in str(error) + repr(error.details)
    store.close()
