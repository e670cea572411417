"""``consume`` on SQLite against a plain ``sqlite3`` loop doing the same work, in one run.

    python benchmarks/sqlite_consume.py [--n 3000] [--synchronous normal|full]

Prints operations per second for both and their ratio (target: library / raw >= 0.5), then the
latency of ``consume`` for a user with 1,000 and with 1,000,000 past events (target: flat).
Run by hand; it is not a test.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from usageflow import UsageFlow


def raw_loop(path: Path, n: int, synchronous: str) -> float:
    """The same decision without the library, on the same schema: lock, read the counter, the
    window prefix and open holds, compare, append the event, bump the counter, commit."""
    UsageFlow(f"sqlite:///{path}").migrate()  # identical tables and indexes
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    start = time.perf_counter()
    for _ in range(n):
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        now_s = now.isoformat(" ", "microseconds")
        month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(
            "SELECT total, open_holds FROM usage_events_counters "
            "WHERE user_id = ? AND feature_name = ?",
            ("u", "f"),
        ).fetchone()
        total = row[0] if row else 0
        prefix = conn.execute(
            "SELECT running_total FROM usage_events WHERE user_id = ? AND feature_name = ? "
            "AND timestamp < ? ORDER BY timestamp DESC, id DESC LIMIT 1",
            ("u", "f", month.isoformat(" ", "microseconds")),
        ).fetchone()
        if total - (prefix[0] if prefix else 0) + 1 <= 10**9:
            conn.execute(
                "INSERT INTO usage_events (user_id, feature_name, credits_used, event_type, "
                "metadata, timestamp, idempotency_key, running_total) "
                "VALUES (?, ?, 1, 'usage', NULL, ?, NULL, ?)",
                ("u", "f", now_s, total + 1),
            )
            conn.execute(
                "INSERT INTO usage_events_counters (user_id, feature_name, total, last_ts) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (user_id, feature_name) DO UPDATE SET "
                "total = excluded.total, last_ts = excluded.last_ts",
                ("u", "f", total + 1, now_s),
            )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def library_loop(path: Path, n: int, synchronous: str) -> float:
    flow = UsageFlow(f"sqlite:///{path}?synchronous={synchronous}")
    flow.create_plan("Free", is_free=True, limits={"f": 10**9})
    flow.consume("u", "f")  # warm the plan cache
    start = time.perf_counter()
    for _ in range(n):
        flow.consume("u", "f")
    elapsed = time.perf_counter() - start
    flow.close()
    return n / elapsed


def latency_with_history(path: Path, history: int, synchronous: str, samples: int = 500) -> float:
    """Median ``consume`` latency (µs) for a user with ``history`` past events."""
    flow = UsageFlow(f"sqlite:///{path}?synchronous={synchronous}")
    flow.create_plan("Free", is_free=True, limits={"f": 10**12})
    flow.consume("u", "f")
    # Bulk-load the past through the same tables (one transaction): events spread over a year.
    conn = sqlite3.connect(path, isolation_level=None)
    base = datetime.now(timezone.utc) - timedelta(days=365)
    step = timedelta(days=364) / history
    rows = (
        ("u", "f", 1, "usage", (base + step * i).strftime("%Y-%m-%d %H:%M:%S.%f"), i + 1)
        for i in range(history)
    )
    conn.execute("BEGIN")
    conn.execute("DELETE FROM usage_events")
    conn.executemany(
        "INSERT INTO usage_events (user_id, feature_name, credits_used, event_type, timestamp,"
        " running_total) VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.execute(
        "UPDATE usage_events_counters SET total = ?, last_ts = NULL WHERE user_id = 'u'",
        (history,),
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    timings = []
    for _ in range(samples):
        t0 = time.perf_counter()
        flow.consume("u", "f")
        timings.append(time.perf_counter() - t0)
    flow.close()
    return statistics.median(timings) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--synchronous", default="normal", choices=["normal", "full"])
    parser.add_argument("--history", type=int, nargs="*", default=[1_000, 1_000_000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw = raw_loop(Path(tmp) / "raw.db", args.n, args.synchronous)
        lib = library_loop(Path(tmp) / "lib.db", args.n, args.synchronous)
        print(f"synchronous={args.synchronous}, {args.n} decisions, one thread")
        print(f"  raw sqlite3 loop : {raw:9.0f} decisions/s")
        print(f"  UsageFlow.consume: {lib:9.0f} decisions/s")
        print(f"  ratio library/raw: {lib / raw:.2f}  (target >= 0.5)")
        results = {}
        for history in args.history:
            results[history] = latency_with_history(
                Path(tmp) / f"h{history}.db", history, args.synchronous
            )
            print(f"  consume latency with {history:>9,} past events: {results[history]:7.1f} µs")
        if len(results) >= 2:
            low, high = results[min(results)], results[max(results)]
            print(
                f"  latency ratio {max(results):,} / {min(results):,} events: {high / low:.2f}"
                "  (target: flat, ~1)"
            )


if __name__ == "__main__":
    main()
