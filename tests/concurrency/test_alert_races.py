"""Concurrency: alerts are recorded exactly once per crossing however many threads or
processes charge at once, and concurrent deliverers hand each alert out exactly once."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.postgres import fresh_schema, store_url
from tests.support.processes import race_processes
from tests.support.stores import postgres_url
from usageflow import Alert, UsageFlow, ops
from usageflow.stores.base import Store

LIMIT = 10
THRESHOLDS = [50, 80, 100]


def _setup(flow: UsageFlow) -> None:
    flow.create_plan("Free", is_free=True, limits={"race": LIMIT})
    flow.set_alert_thresholds("race", THRESHOLDS)


def _charge_all(flow: UsageFlow, threads: int, attempts: int) -> int:
    barrier = threading.Barrier(threads)

    def run(_: int) -> int:
        barrier.wait()
        return sum(flow.consume("u1", "race").allowed for _ in range(attempts))

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(run, range(threads)))


def _check(flow: UsageFlow, allowed: int) -> None:
    assert allowed == LIMIT
    alerts = flow.list_alerts("u1")
    assert sorted(a.threshold for a in alerts) == THRESHOLDS
    assert {a.threshold: a.usage for a in alerts} == {50: 5, 80: 8, 100: 10}
    assert flow.store.call(ops.ledger_check(user_id="u1", feature_name="race")) == (LIMIT, LIMIT)


def test_32_threads_record_each_crossing_once(store: Store) -> None:
    flow = UsageFlow(store)
    _setup(flow)
    _check(flow, _charge_all(flow, 32, 2))


def _process_worker(url: str, threads: int, attempts: int, queue: Any) -> None:
    flow = UsageFlow(url)
    allowed = _charge_all(flow, threads, attempts)
    flow.close()
    queue.put(allowed)


def _race_processes(url: str) -> None:
    flow = UsageFlow(url)
    flow.migrate()
    _setup(flow)
    results = race_processes(_process_worker, [(url, 8, 2)] * 4)
    _check(flow, sum(results))
    flow.close()


def test_4_processes_on_one_sqlite_file_record_each_crossing_once(tmp_path: Path) -> None:
    _race_processes(f"sqlite:///{tmp_path / 'alerts.db'}")


def test_4_processes_on_postgresql_record_each_crossing_once() -> None:
    url = postgres_url()
    if url is None:
        pytest.skip("PostgreSQL tests need USAGEFLOW_TEST_POSTGRES_URL")
    with fresh_schema(url) as schema:
        _race_processes(store_url(url, schema))


def test_concurrent_deliverers_hand_each_alert_out_once(store: Store) -> None:
    flow = UsageFlow(store)
    _setup(flow)
    users = [f"u{i}" for i in range(40)]
    for user in users:
        flow.consume(user, "race", 5)  # 50%: one alert each
    delivered: Counter[int] = Counter()
    lock = threading.Lock()

    def handler(alert: Alert) -> None:
        with lock:
            delivered[alert.id] += 1

    def deliverer(_: int) -> int:
        total = 0
        while True:
            done = flow.deliver_alerts(handler, limit=3)
            if done == 0:
                return total
            total += done

    with ThreadPoolExecutor(8) as pool:
        counted = sum(pool.map(deliverer, range(8)))
    assert counted == len(users) == len(delivered)
    assert set(delivered.values()) == {1}
    assert flow.list_alerts(undelivered=True) == []
