"""Concurrency across processes: 4 processes x 16 threads, each process with its own store
(pool of 8 connections), racing one user and feature of one PostgreSQL. Counts are exact."""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest

from tests.support.postgres import store_url
from usageflow import UsageFlow, UsageFlowError, ops
from usageflow.stores.postgres import PostgresStore

LIMIT = 500
PROCESSES = 4
THREADS = 16
KEYS = 20


def _worker(url: str, mode: str, seed: int, barrier: object) -> tuple[int, int]:
    """Runs in a child process: returns (allowed decisions, credits committed)."""
    store = PostgresStore(url)
    flow = UsageFlow(store)
    allowed = [0]
    committed = [0]
    lock = threading.Lock()
    barrier.wait()  # type: ignore[attr-defined]

    def consume(i: int) -> None:
        for _ in range(10):
            if flow.consume("u1", "race").allowed:
                with lock:
                    allowed[0] += 1

    def mixed(i: int) -> None:
        for j in range(8):
            if j % 2 == 0:
                if flow.consume("u1", "race").allowed:
                    with lock:
                        allowed[0] += 1
                continue
            try:
                reservation = flow.reserve("u1", "race", 3)
            except UsageFlowError:
                continue
            if (i + j + seed) % 3 == 0:
                reservation.release()
            else:
                reservation.commit(2)
                with lock:
                    committed[0] += 2

    def retries(i: int) -> None:
        for k in range(KEYS):
            event = flow.increment_usage("u1", "keyed", credits_used=1, idempotency_key=f"k{k}")
            assert event.idempotency_key == f"k{k}"

    work = {"consume": consume, "mixed": mixed, "retries": retries}[mode]
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(work, range(THREADS)))
    store.close()
    return allowed[0], committed[0]


def _race(pg_url: str, schema: str, mode: str) -> list[tuple[int, int]]:
    setup = PostgresStore(store_url(pg_url, schema))
    setup.migrate()
    UsageFlow(setup).create_plan("Free", is_free=True, limits={"race": LIMIT})
    setup.close()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Manager().Barrier(PROCESSES)
    url = store_url(pg_url, schema, pool_size=8)
    with ctx.Pool(PROCESSES) as pool:
        return pool.starmap(_worker, [(url, mode, n, barrier) for n in range(PROCESSES)])


@pytest.mark.slow
def test_processes_consume_exactly_the_limit(
    pg_url: str, schema: str, pg_store: PostgresStore
) -> None:
    results = _race(pg_url, schema, "consume")
    assert sum(a for a, _ in results) == LIMIT  # 640 attempts, exactly 500 allowed
    assert pg_store.call(ops.ledger_check(user_id="u1", feature_name="race")) == (LIMIT, LIMIT)
    assert (
        len(pg_store.call(ops.list_events(user_id="u1", feature_name="race", limit=1000))) == LIMIT
    )


@pytest.mark.slow
def test_processes_mixing_reserve_commit_release(
    pg_url: str, schema: str, pg_store: PostgresStore
) -> None:
    results = _race(pg_url, schema, "mixed")
    recorded = sum(a + c for a, c in results)
    assert 0 < recorded <= LIMIT
    assert pg_store.call(ops.ledger_check(user_id="u1", feature_name="race")) == (
        recorded,
        recorded,
    )
    used, held, _granted, _balance = pg_store.call(
        ops.usage(user_id="u1", feature_name="race", window_start=None, now=_now())
    )
    assert (used, held) == (recorded, 0)  # every hold was committed or released


@pytest.mark.slow
def test_duplicate_idempotency_keys_from_processes_record_once(
    pg_url: str, schema: str, pg_store: PostgresStore
) -> None:
    _race(pg_url, schema, "retries")  # 4 x 16 x 20 calls, 20 distinct keys
    assert pg_store.call(ops.ledger_check(user_id="u1", feature_name="keyed")) == (KEYS, KEYS)
    events = pg_store.call(ops.list_events(user_id="u1", feature_name="keyed", limit=1000))
    assert sorted(e.idempotency_key or "" for e in events) == sorted(f"k{k}" for k in range(KEYS))


def _now() -> datetime:
    return datetime.now(timezone.utc)
