"""``consume`` on PostgreSQL (and Supabase) against the same SQL function driven by a raw psycopg
loop, in one run.

    USAGEFLOW_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1/test \\
        python benchmarks/postgres_consume.py [--seconds 5] [--threads 8] [--events 1000000]

Prints, in a fresh schema of that database (dropped afterwards):

1. throughput of ``UsageFlow.consume`` (8 threads sharing the store's pool) and of the same
   ``SELECT usage_events_charge(...)`` called by 8 threads on 8 raw psycopg connections, and
   their ratio (target: library / raw >= 0.7);
2. the latency of ``consume`` for a user with 1,000 and with 1,000,000 past events (target:
   flat), the events spanning the window start so that the prefix seek is exercised;
3. the Supabase path through the real ``supabase`` client and the PostgREST stand-in of the
   tests: HTTP requests per decision (target: 1), and its throughput (indicative only: the
   stand-in is not PostgREST).

Run by hand; it is not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.postgres import fresh_schema, store_url
from tests.support.postgrest import PostgrestStandIn

from usageflow import UsageFlow
from usageflow.stores.postgres import PostgresStore
from usageflow.stores.supabase import SupabaseStore

LIMIT = 10**12


def run_threads(threads: int, seconds: float, work: Callable[[int], Callable[[], None]]) -> float:
    """Operations per second of ``threads`` threads each calling its own ``work(i)`` loop."""
    counts = [0] * threads
    stop = threading.Event()
    barrier = threading.Barrier(threads + 1)

    def run(i: int) -> None:
        step = work(i)
        step()  # warm up (connection, prepared statement)
        barrier.wait()
        n = 0
        while not stop.is_set():
            step()
            n += 1
        counts[i] = n

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def library(url: str, threads: int, seconds: float) -> float:
    store = PostgresStore(url)
    flow = UsageFlow(store)
    try:
        return run_threads(
            threads, seconds, lambda i: lambda: _check(flow.consume(f"lib{i}", "api").allowed)
        )
    finally:
        store.close()


def raw(url: str, threads: int, seconds: float) -> float:
    """The same function call, arguments built by hand, one connection per thread."""
    conninfo = PostgresStore(url).settings

    def work(i: int) -> Callable[[], None]:
        conn = psycopg.connect(conninfo.conninfo, **conninfo.connect_kwargs())
        query = (
            'SELECT "usage_events_charge"(%s::text, %s::text, %s::bigint, %s::text, '
            "%s::bigint, %s::timestamptz, %s::timestamptz, %s::jsonb, %s::text)"
        )

        def step() -> None:
            now = datetime.now(timezone.utc)
            row = conn.execute(
                query,
                (f"raw{i}", "api", 1, "usage", LIMIT, month_start(now), now, None, None),
            ).fetchone()
            assert row is not None
            assert row[0]["allowed"]

        return step

    return run_threads(threads, seconds, work)


def _check(ok: bool) -> None:
    assert ok


def seed_history(db_url: str, schema: str, user: str, events: int) -> None:
    """``events`` past events for ``user``, one a second up to now (so the current month's
    start falls inside them), and its counters row."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute(
            "INSERT INTO usage_events (user_id, feature_name, credits_used, event_type, "
            "\"timestamp\", running_total) SELECT %s, 'api', 1, 'usage', "
            "now() - (%s - i) * interval '1 second', i FROM generate_series(1, %s) AS i",
            (user, events, events),
        )
        conn.execute(
            "INSERT INTO usage_events_counters (user_id, feature_name, total, last_ts) "
            "VALUES (%s, 'api', %s, now())",
            (user, events),
        )
        conn.execute("ANALYZE usage_events")


def latency(flow: UsageFlow, user: str, n: int = 400) -> tuple[float, float]:
    """(median, p99) of ``consume`` in milliseconds."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        flow.consume(user, "api")
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def supabase_path(db_url: str, schema: str, threads: int, seconds: float) -> None:
    server = PostgrestStandIn(db_url)
    try:
        server.migrate(schema)
        store = SupabaseStore(server.url, server.service_key, schema=schema)
        flow = UsageFlow(store)
        flow.consume("sb", "api")  # warm caches
        before = server.calls
        decisions = 200
        for _ in range(decisions):
            flow.consume("sb", "api")
        per = (server.calls - before) / decisions
        print(f"supabase: {per:.2f} HTTP request(s) per consume (target 1)")
        rate = run_threads(
            threads, seconds, lambda i: lambda: _check(flow.consume(f"sb{i}", "api").allowed)
        )
        print(f"supabase: {rate:,.0f} consume/s through the stand-in (indicative)")
        store.close()
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    db_url = os.environ.get("USAGEFLOW_TEST_POSTGRES_URL")
    if not db_url:
        sys.exit("set USAGEFLOW_TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1/test)")

    with fresh_schema(db_url) as schema:
        url = store_url(db_url, schema, pool_size=args.threads)
        setup = PostgresStore(url)
        setup.migrate()
        UsageFlow(setup).create_plan("Free", is_free=True, limits={"api": LIMIT})
        setup.close()

        lib_rates, raw_rates = [], []
        for _ in range(args.rounds):  # interleaved, so that drift hits both alike
            raw_rates.append(raw(url, args.threads, args.seconds))
            lib_rates.append(library(url, args.threads, args.seconds))
        lib, rw = max(lib_rates), max(raw_rates)
        print(f"threads={args.threads} seconds={args.seconds} rounds={args.rounds}")
        print(f"library consume : {lib:10,.0f} /s")
        print(f"raw psycopg loop: {rw:10,.0f} /s")
        print(f"ratio library/raw: {lib / rw:.2f} (target >= 0.70)")

        seed_history(db_url, schema, "small", 1_000)
        seed_history(db_url, schema, "big", args.events)
        store = PostgresStore(url)
        flow = UsageFlow(store)
        flow.consume("small", "api")
        flow.consume("big", "api")
        s_med, s_p99 = latency(flow, "small")
        b_med, b_p99 = latency(flow, "big")
        print(f"latency, 1,000 past events     : median {s_med:.3f} ms, p99 {s_p99:.3f} ms")
        print(f"latency, {args.events:,} past events: median {b_med:.3f} ms, p99 {b_p99:.3f} ms")
        print(f"ratio big/small (median): {b_med / s_med:.2f} (target: flat, ~1)")
        store.close()

        supabase_path(db_url, schema, args.threads, args.seconds)


if __name__ == "__main__":
    main()
