"""One round trip per decision: a warm-cache ``consume`` is one statement (PostgreSQL) or one
HTTP request (Supabase), and the cost does not depend on the store's history."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

from tests.postgres._proxy import PgProxy
from tests.postgres.conftest import via_proxy
from tests.support.postgres import store_url
from tests.support.postgrest import PostgrestStandIn
from usageflow import AsyncUsageFlow, UsageFlow, ops
from usageflow.stores.postgres import PostgresStore
from usageflow.stores.supabase import SupabaseStore


def _plans(flow: UsageFlow) -> None:
    flow.create_plan("Free", is_free=True, limits={"api": 1000})


def test_warm_consume_is_one_round_trip(pg_url: str, schema: str, proxy: PgProxy) -> None:
    store = PostgresStore(via_proxy(pg_url, proxy, schema, pool_size=1))
    store.migrate()
    flow = UsageFlow(store)
    _plans(flow)
    assert flow.consume("u1", "api").allowed  # warms the plan and profile caches
    for op in (
        lambda: flow.consume("u1", "api"),
        lambda: flow.consume("u1", "api", credits=5, idempotency_key="k1"),
        lambda: flow.consume("u1", "api", credits=5, idempotency_key="k1"),  # replay
        lambda: flow.increment_usage("u1", "api"),
        lambda: flow.fetch_usage("u1", "api"),
    ):
        proxy.reset_count()
        op()
        assert proxy.round_trips == 1
    proxy.reset_count()
    with flow.reserve("u1", "api", 3) as reservation:
        assert proxy.round_trips == 1
        proxy.reset_count()
    assert reservation.settled and proxy.round_trips == 1
    store.close()


def test_warm_async_consume_is_one_round_trip(pg_url: str, schema: str, proxy: PgProxy) -> None:
    store = PostgresStore(via_proxy(pg_url, proxy, schema))
    store.migrate()
    _plans(UsageFlow(store))

    async def main() -> list[int]:
        counts = []
        async with AsyncUsageFlow(store) as flow:
            await flow.consume("u1", "api")
            for _ in range(3):
                proxy.reset_count()
                assert (await flow.consume("u1", "api")).allowed
                counts.append(proxy.round_trips)
        return counts

    assert asyncio.run(main()) == [1, 1, 1]
    store.close()


def test_warm_supabase_consume_is_one_http_request(
    postgrest: PostgrestStandIn, schema: str
) -> None:
    postgrest.migrate(schema)
    store = SupabaseStore(postgrest.url, postgrest.service_key, schema=schema)
    flow = UsageFlow(store)
    _plans(flow)
    flow.consume("u1", "api")
    for _ in range(3):
        before = postgrest.calls
        assert flow.consume("u1", "api").allowed
        assert postgrest.calls - before == 1

    async def main() -> int:
        async with AsyncUsageFlow(store) as aflow:
            await aflow.consume("u1", "api")
            before = postgrest.calls
            await aflow.consume("u1", "api")
            return postgrest.calls - before

    assert asyncio.run(main()) == 1
    store.close()


def test_supabase_store_reuses_its_connection(pg_url: str, schema: str) -> None:
    """One HTTP request per decision, all on one kept-alive connection (no TCP or TLS set-up
    per decision), counted by the PostgREST stand-in."""
    server = PostgrestStandIn(pg_url, keep_alive=True)
    try:
        server.migrate(schema)
        store = SupabaseStore(server.url, server.service_key, schema=schema)
        flow = UsageFlow(store)
        _plans(flow)
        assert flow.consume("u1", "api").allowed  # warms the caches
        calls, connections = server.calls, server.connections
        for _ in range(20):
            assert flow.consume("u1", "api").allowed
        assert server.calls - calls == 20
        assert server.connections == connections == 1
        store.close()
    finally:
        server.close()


def test_cost_does_not_grow_with_history(pg_store: PostgresStore, pg_url: str) -> None:
    """With 50,000 past events spanning the window start, the charge still reads one counter
    row and seeks one index entry (checked on the plan), and is no slower than with 10."""
    import time

    import psycopg

    flow = UsageFlow(pg_store)
    flow.create_plan("Free", is_free=True, limits={"api": 10**9})
    flow.consume("u1", "api")
    schema = pg_store.settings.schema
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute(
            "INSERT INTO usage_events (user_id, feature_name, credits_used, event_type, "
            "timestamp, running_total) SELECT 'u2', 'api', 1, 'usage', "
            "now() - (50000 - i) * interval '1 minute', i FROM generate_series(1, 50000) i"
        )
        conn.execute(
            "INSERT INTO usage_events_counters (user_id, feature_name, total, last_ts) "
            "VALUES ('u2', 'api', 50000, now())"
        )
        conn.execute("ANALYZE usage_events")
        plan: list[Any] = conn.execute(
            "EXPLAIN SELECT running_total FROM usage_events WHERE user_id = 'u2' "
            "AND feature_name = 'api' AND timestamp < date_trunc('month', now()) "
            "ORDER BY timestamp DESC, id DESC LIMIT 1"
        ).fetchall()
    text = "\n".join(r[0] for r in plan)
    assert "Index" in text and "Sort" not in text, text

    def timed(user: str) -> float:
        best = float("inf")
        for _ in range(30):
            t0 = time.perf_counter()
            flow.consume(user, "api")
            best = min(best, time.perf_counter() - t0)
        return best

    small, large = timed("u1"), timed("u2")
    assert large < small * 3 + 0.002, (small, large)
    assert pg_store.call(ops.ledger_check(user_id="u2", feature_name="api")) == (50030, 50030)


def test_sequential_calls_reuse_the_most_recently_used_connection(pg_url: str, schema: str) -> None:
    """With several idle connections, one caller's decisions keep to one of them (last in,
    first out) instead of rotating through all, each then cold; counted by the server."""
    name = f"uf-lifo-{schema}"
    store = PostgresStore(store_url(pg_url, schema, pool_min=3, pool_size=3, application_name=name))
    store.migrate()
    flow = UsageFlow(store)
    _plans(flow)
    with psycopg.connect(pg_url, autocommit=True) as admin:

        def backends(since: Any = None) -> int:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                "AND (%s::timestamptz IS NULL OR state_change > %s::timestamptz)",
                (name, since, since),
            ).fetchone()
            assert row is not None
            return int(row[0])

        deadline = time.monotonic() + 10
        while backends() < 3:  # pool_min: the pool opens them in the background
            assert time.monotonic() < deadline, "the pool did not open its 3 connections"
            time.sleep(0.05)
        start = admin.execute("SELECT clock_timestamp()").fetchone()
        assert start is not None
        for _ in range(30):
            assert flow.consume("u1", "api").allowed
        assert backends(start[0]) == 1
    store.close()
