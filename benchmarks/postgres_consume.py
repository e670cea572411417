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
   stand-in is not PostgREST);
4. with ``pgbench`` (it comes with PostgreSQL; skipped where it is not installed): the shipped
   ``usage_events_charge`` against a minimal atomic decision function defined here (a
   limit-guarded counter upsert and a ledger insert, the least a correct decision needs), at 1
   and 8 clients, interleaved (target: shipped / minimal >= 0.8); and 8 clients on one user
   against 8 clients on 8 users (throughput and p99 latency: the cost of a hot user's row lock).

Run by hand; it is not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, MutableMapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.postgres import fresh_schema, store_url
from tests.support.postgrest import PostgrestStandIn

from usageflow import UsageFlow
from usageflow.stores.postgres import PostgresStore
from usageflow.stores.sql import api_functions
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


def library(url: str, threads: int, seconds: float, counted: list[int] | None = None) -> float:
    """Decisions per second; ``counted`` gets how many were made, warm-ups included."""
    store = PostgresStore(url)
    flow = UsageFlow(store)
    made = [0] * threads

    def work(i: int) -> Callable[[], None]:
        def step() -> None:
            _check(flow.consume(f"lib{i % 100}", "api").allowed)
            made[i] += 1

        return step

    try:
        return run_threads(threads, seconds, work)
    finally:
        store.close()
        if counted is not None:
            counted.append(sum(made))


def raw(url: str, threads: int, seconds: float, counted: list[int] | None = None) -> float:
    """The same function call, arguments built by hand, one connection (and cursor) per
    thread: the floor of any client written in Python over psycopg. ``counted`` gets how
    many calls were made, warm-ups included."""
    conninfo = PostgresStore(url).settings
    params = api_functions()["charge"]
    query = 'SELECT "usage_events_charge"({})'.format(
        ", ".join(f"%s::{sql_type}" for _, sql_type in params)
    )

    made = [0] * threads

    def work(i: int) -> Callable[[], None]:
        conn = psycopg.connect(conninfo.conninfo, **conninfo.connect_kwargs())
        cur = conn.cursor()

        def step() -> None:
            now = datetime.now(timezone.utc)
            row = cur.execute(
                query,
                (f"raw{i}", "api", 1, "usage", LIMIT, month_start(now), now)
                + (None,) * (len(params) - 7),
            ).fetchone()
            assert row is not None
            assert row[0]["allowed"]
            made[i] += 1

        return step

    try:
        return run_threads(threads, seconds, work)
    finally:
        if counted is not None:
            counted.append(sum(made))


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


MINIMAL_FUNCTION = """
CREATE TABLE bench_counters (
    user_id TEXT, feature_name TEXT, total BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, feature_name)
);
CREATE TABLE bench_events (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, user_id TEXT NOT NULL,
    feature_name TEXT NOT NULL, credits_used BIGINT, "timestamp" TIMESTAMPTZ NOT NULL
);
CREATE INDEX ON bench_events (user_id, feature_name, "timestamp", id);
CREATE FUNCTION bench_minimal_charge(
    p_user TEXT, p_feature TEXT, p_credits BIGINT, p_limit BIGINT, p_now TIMESTAMPTZ
) RETURNS JSONB LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
    v_total BIGINT;
    v_id BIGINT;
BEGIN
    INSERT INTO bench_counters AS m (user_id, feature_name, total)
    VALUES (p_user, p_feature, p_credits)
    ON CONFLICT (user_id, feature_name) DO UPDATE SET total = m.total + p_credits
        WHERE m.total + p_credits <= p_limit
    RETURNING total INTO v_total;
    IF v_total IS NULL THEN
        RETURN jsonb_build_object('allowed', false);
    END IF;
    INSERT INTO bench_events (user_id, feature_name, credits_used, "timestamp")
    VALUES (p_user, p_feature, p_credits, p_now) RETURNING id INTO v_id;
    RETURN jsonb_build_object('allowed', true, 'used', v_total, 'id', v_id);
END
$fn$;
"""

PGBENCH_SCRIPTS = {
    "shipped": "SELECT {schema}.usage_events_charge('u' || :u, 'api', 1, 'usage', {limit}, "
    "date_trunc('month', now()), now(), NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
    "minimal": "SELECT {schema}.bench_minimal_charge('u' || :u, 'api', 1, {limit}, now());",
}


def pgbench(
    db_url: str, script: str, clients: int, users: int, seconds: float
) -> tuple[float, float, float]:
    """(transactions per second, p50 and p99 latency in ms) of ``script`` run by ``clients``
    connections over ``users`` distinct users, prepared statements."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sql"
        path.write_text(f"\\set u random(1, {users})\n{script}\n")
        out = subprocess.run(
            [
                "pgbench",
                "-n",
                "-M",
                "prepared",
                "-f",
                str(path),
                "-c",
                str(clients),
                "-j",
                str(clients),
                "-T",
                str(int(seconds)),
                "-l",
                "--log-prefix",
                str(Path(tmp) / "log"),
                db_url,
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp,
        ).stdout
        tps = next(float(line.split()[2]) for line in out.splitlines() if line.startswith("tps"))
        latencies = sorted(
            int(line.split()[2])
            for log in Path(tmp).glob("log*")
            for line in log.read_text().splitlines()
        )
    return (
        tps,
        latencies[len(latencies) // 2] / 1000,
        latencies[int(len(latencies) * 0.99) - 1] / 1000,
    )


def pgbench_section(db_url: str, schema: str, seconds: float, rounds: int) -> None:
    if shutil.which("pgbench") is None:
        print("pgbench: not installed, skipped (it comes with PostgreSQL's client tools)")
        return
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute(MINIMAL_FUNCTION)
    scripts = {k: v.format(schema=f'"{schema}"', limit=LIMIT) for k, v in PGBENCH_SCRIPTS.items()}
    for clients in (1, 8):
        best: dict[str, float] = {}
        for _ in range(rounds):  # interleaved, so that drift hits both alike
            for name, script in scripts.items():
                tps, _p50, _p99 = pgbench(db_url, script, clients, clients * 100, seconds)
                best[name] = max(best.get(name, 0.0), tps)
        ratio = best["shipped"] / best["minimal"]
        print(
            f"pgbench, {clients} client(s): shipped {best['shipped']:,.0f}/s, minimal "
            f"{best['minimal']:,.0f}/s, ratio {ratio:.2f} (target >= 0.80)"
        )
    for users in (1, 8):
        tps, _p50, p99 = pgbench(db_url, scripts["shipped"], 8, users, seconds)
        print(f"pgbench, 8 clients on {users} user(s): {tps:,.0f}/s, p99 {p99:.2f} ms")


def client_section(db_url: str, url: str, schema: str, seconds: float, rounds: int) -> None:
    """The library's ``consume`` against ``pgbench`` calling the same function, at 1 and 8
    clients (threads), interleaved; and the library's client CPU per decision (this
    process's CPU time over the decisions it made, PostgreSQL's own work excluded)."""
    if shutil.which("pgbench") is None:
        print("pgbench: not installed, the client comparison skipped")
        return
    script = PGBENCH_SCRIPTS["shipped"].format(schema=f'"{schema}"', limit=LIMIT)
    for clients in (1, 8):
        bench_best = 0.0
        best = {"library": 0.0, "raw": 0.0}
        cpu: dict[str, list[float]] = {"library": [], "raw": []}
        for _ in range(rounds):
            bench_best = max(
                bench_best, pgbench(db_url, script, clients, clients * 100, seconds)[0]
            )
            for name, run in (("library", library), ("raw", raw)):
                before = time.process_time()
                counted: list[int] = []
                rate = run(url, clients, seconds, counted)
                cpu[name].append((time.process_time() - before) / max(sum(counted), 1) * 1e6)
                best[name] = max(best[name], rate)
        print(
            f"{clients} client(s): library consume {best['library']:,.0f}/s, pgbench "
            f"{bench_best:,.0f}/s, ratio {best['library'] / bench_best:.2f} (target >= 0.85); "
            f"client CPU per decision {min(cpu['library']):.0f} us (target <= 100)"
        )
        print(
            f"{clients} client(s): raw psycopg loop {best['raw']:,.0f}/s, ratio to pgbench "
            f"{best['raw'] / bench_best:.2f}, its CPU per call {min(cpu['raw']):.0f} us "
            "(the floor of a Python client)"
        )


def middleware_section(db_url: str, url: str, schema: str, seconds: float, n: int) -> None:
    """What a metered request through ``UsageFlowMiddleware`` (``AsyncUsageFlow`` on
    PostgreSQL) adds to the same request of the bare app, at 1 client, p50 of ``n`` requests
    driven straight through the ASGI callable, against one ``pgbench`` call of the shipped
    function at 1 client (its p50)."""
    if shutil.which("pgbench") is None:
        print("pgbench: not installed, the middleware comparison skipped")
        return
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from usageflow import AsyncUsageFlow
    from usageflow.integrations.starlette import UsageFlowMiddleware

    async def export(request: object) -> JSONResponse:
        return JSONResponse({"ok": True})

    def app(flow: AsyncUsageFlow | None) -> Starlette:
        made = Starlette(routes=[Route("/export", export, methods=["POST"])])
        if flow is not None:
            made.add_middleware(
                UsageFlowMiddleware,
                flow=flow,
                routes={"POST /export": "api"},
                user_id=lambda request: request.headers.get("x-user"),
            )
        return made

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/export",
        "raw_path": b"/export",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench"), (b"x-user", b"mw")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }

    async def p50(served: Starlette) -> float:
        async def receive() -> MutableMapping[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        statuses: list[int] = []

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(int(message["status"]))

        samples = []
        for i in range(n + 50):
            t0 = time.perf_counter()
            await served({**scope, "state": {}}, receive, send)
            if i >= 50:  # the first ones warm caches and connections
                samples.append((time.perf_counter() - t0) * 1000)
        assert set(statuses) == {200}, statuses
        return statistics.median(samples)

    async def run() -> tuple[float, float]:
        flow = AsyncUsageFlow(url)
        try:
            metered = await p50(app(flow))
        finally:
            await flow.aclose()
        return metered, await p50(app(None))

    script = PGBENCH_SCRIPTS["shipped"].format(schema=f'"{schema}"', limit=LIMIT)
    _tps, bench_p50, _p99 = pgbench(db_url, script, 1, 100, seconds)
    loops: list[tuple[str, Callable[[Any], tuple[float, float]]]] = [("asyncio", asyncio.run)]
    try:
        import uvloop  # what uvicorn runs on when it is installed

        loops.append(("uvloop", uvloop.run))
    except ImportError:
        print("middleware: uvloop not installed, measured on asyncio's loop only")
    for loop_name, run_on in loops:
        metered, bare = run_on(run())
        added = metered - bare
        print(
            f"middleware, 1 client, {loop_name}: metered p50 {metered:.3f} ms, bare "
            f"{bare:.3f} ms, adds {added:.3f} ms; pgbench call p50 {bench_p50:.3f} ms; ratio "
            f"{added / bench_p50:.2f} (target <= 1.2)"
        )


def raw_section(url: str, threads: int, seconds: float, rounds: int) -> None:
    lib_rates, raw_rates = [], []
    for _ in range(rounds):  # interleaved, so that drift hits both alike
        raw_rates.append(raw(url, threads, seconds))
        lib_rates.append(library(url, threads, seconds))
    lib, rw = max(lib_rates), max(raw_rates)
    print(f"threads={threads} seconds={seconds} rounds={rounds}")
    print(f"library consume : {lib:10,.0f} /s")
    print(f"raw psycopg loop: {rw:10,.0f} /s")
    print(f"ratio library/raw: {lib / rw:.2f} (target >= 0.70)")


def history_section(db_url: str, url: str, schema: str, events: int) -> None:
    seed_history(db_url, schema, "small", 1_000)
    seed_history(db_url, schema, "big", events)
    store = PostgresStore(url)
    flow = UsageFlow(store)
    flow.consume("small", "api")
    flow.consume("big", "api")
    s_med, s_p99 = latency(flow, "small")
    b_med, b_p99 = latency(flow, "big")
    print(f"latency, 1,000 past events     : median {s_med:.3f} ms, p99 {s_p99:.3f} ms")
    print(f"latency, {events:,} past events: median {b_med:.3f} ms, p99 {b_p99:.3f} ms")
    print(f"ratio big/small (median): {b_med / s_med:.2f} (target: flat, ~1)")
    store.close()


SECTIONS = ("raw", "history", "supabase", "pgbench", "client", "middleware")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, of {', '.join(SECTIONS)} (default: all)",
    )
    args = parser.parse_args()
    sections = set(args.only.split(","))
    if not sections <= set(SECTIONS):
        sys.exit(f"unknown section(s): {', '.join(sorted(sections - set(SECTIONS)))}")
    db_url = os.environ.get("USAGEFLOW_TEST_POSTGRES_URL")
    if not db_url:
        sys.exit("set USAGEFLOW_TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1/test)")

    with fresh_schema(db_url) as schema:
        url = store_url(db_url, schema, pool_size=args.threads)
        setup = PostgresStore(url)
        setup.migrate()
        UsageFlow(setup).create_plan("Free", is_free=True, limits={"api": LIMIT})
        setup.close()

        if "raw" in sections:
            raw_section(url, args.threads, args.seconds, args.rounds)
        if "history" in sections:
            history_section(db_url, url, schema, args.events)
        if "supabase" in sections:
            supabase_path(db_url, schema, args.threads, args.seconds)
        if "pgbench" in sections:
            pgbench_section(db_url, schema, args.seconds, args.rounds)
        if "client" in sections:
            client_section(db_url, url, schema, args.seconds, args.rounds)
        if "middleware" in sections:
            middleware_section(db_url, url, schema, args.seconds, 2000)


if __name__ == "__main__":
    main()
