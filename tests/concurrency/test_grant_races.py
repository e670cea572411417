"""Concurrency: threads and processes racing on a credit balance. No burst overdraws a grant:
exactly the balance is spent, and the counters agree with the ledger."""

from __future__ import annotations

import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.concurrency.test_races import _hammer
from tests.support.processes import race_processes
from tests.support.stores import POSTGRES_URL_ENV
from usageflow import UsageFlow, UsageFlowError, ops
from usageflow.stores.base import Store

BALANCE = 100


def _setup(flow: UsageFlow, allowance: int = 0) -> None:
    """A free plan with ``allowance`` of "race" (0: not in the plan), and two grants adding up
    to BALANCE, one of which expires."""
    limits = {"race": allowance} if allowance else {"other": 1}
    flow.create_plan("Free", is_free=True, limits=limits)
    flow.grant_credits("u1", "race", 60, reason="pack")
    soon = datetime.now(timezone.utc) + timedelta(days=30)
    flow.grant_credits("u1", "race", 40, expires_at=soon)


def _check(flow: UsageFlow, spent: int) -> None:
    assert flow.get_credit_balance("u1", "race") == 0
    assert all(g.remaining == 0 for g in flow.list_grants("u1", "race"))
    assert flow.get_total_usage("u1", "race") == spent
    total, ledger = flow.store.call(ops.ledger_check(user_id="u1", feature_name="race"))
    assert total == ledger == spent


def test_32_threads_spend_exactly_the_balance(store: Store) -> None:
    flow = UsageFlow(store)
    _setup(flow)
    allowed = _hammer(32, 8, lambda: flow.consume("u1", "race").allowed)
    assert allowed == BALANCE
    _check(flow, BALANCE)


def test_threads_spend_the_allowance_then_exactly_the_balance(store: Store) -> None:
    flow = UsageFlow(store)
    _setup(flow, allowance=20)
    allowed = _hammer(32, 8, lambda: flow.consume("u1", "race", 2).allowed)
    assert allowed * 2 == 20 + BALANCE
    _check(flow, 20 + BALANCE)


def test_threads_mixing_reservations_charges_and_refunds_never_overdraw(store: Store) -> None:
    flow = UsageFlow(store)
    _setup(flow, allowance=10)
    lock = threading.Lock()
    recorded = [0]

    def work() -> bool:
        n = threading.get_ident() % 3
        try:
            if n == 0:
                reservation = flow.reserve("u1", "race", 3)
                reservation.commit(2)
                spent = 2
            else:
                decision = flow.consume("u1", "race", 2)
                if not decision.allowed:
                    return False
                spent = 2
                if n == 1:  # a request that is not charged: its credits are given back
                    flow.adjust_usage("u1", "race", -1, metadata={"reason": "partial"})
                    spent = 1
        except UsageFlowError:
            return False
        with lock:
            recorded[0] += spent
        return True

    _hammer(24, 10, work)
    usage = flow.fetch_usage("u1", "race")
    assert usage.current == recorded[0] <= 10 + BALANCE
    assert flow.get_credit_balance("u1", "race") >= 0
    total, ledger = flow.store.call(ops.ledger_check(user_id="u1", feature_name="race"))
    assert total == ledger == recorded[0]
    left = sum(g.remaining for g in flow.list_grants("u1", "race"))
    assert left == flow.get_credit_balance("u1", "race")
    # What the grants lost is what they paid for: every credit beyond the plan's 10.
    assert BALANCE - left == max(recorded[0] - 10, 0)


def _process_worker(url: str, attempts: int, threads: int, queue: Any) -> None:
    flow = UsageFlow(url)
    allowed = _hammer(threads, attempts, lambda: flow.consume("u1", "race").allowed)
    flow.close()
    queue.put(allowed)


def _race_processes(url: str) -> None:
    flow = UsageFlow(url)
    flow.migrate()
    _setup(flow)
    results = race_processes(_process_worker, [(url, 10, 8)] * 4)
    assert sum(results) == BALANCE
    _check(flow, BALANCE)
    flow.close()


def test_4_processes_on_one_sqlite_file_spend_exactly_the_balance(tmp_path: Path) -> None:
    _race_processes(f"sqlite:///{tmp_path / 'race.db'}")


def test_4_processes_on_postgresql_spend_exactly_the_balance() -> None:
    url = os.environ.get(POSTGRES_URL_ENV)
    if not url:
        pytest.skip(f"PostgreSQL tests need {POSTGRES_URL_ENV}")
    from tests.support.postgres import fresh_schema, store_url

    with fresh_schema(url) as schema:
        _race_processes(store_url(url, schema, pool_size=8))
