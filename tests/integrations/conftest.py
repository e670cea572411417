"""Fixtures for the framework adapter tests: a store with plans, flows over it, a dead store.

Every flow here runs over a real store (memory or SQLite, from the conformance table) with a
fake clock fixed at 2024-01-15 12:00 UTC, so the monthly window resets at 2024-02-01 00:00 UTC,
1,425,600 seconds later.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.stores import STORES, store_params
from usageflow import AsyncUsageFlow, UsageFlow
from usageflow.stores import open_store
from usageflow.stores.base import Store
from usageflow.testing import FakeClock

#: Seconds from the fake clock's start to the end of its month.
RESET_SECONDS = 1_425_600
PAYMENT_LINK = "https://buy.stripe.com/test_pro"

#: The Free plan every test user is on, and the Pro plan sold through a Payment Link.
FREE_LIMITS = {"exports": 3, "chat": 5, "tokens": 100, "unlimited": None, "tiny": 1}
PRO_LIMITS = {"exports": 1000, "chat": 1000, "tokens": 100_000, "unlimited": None, "tiny": 10}


def setup_plans(store: Store, clock: FakeClock) -> None:
    """Create the Free and Pro plans in ``store``."""
    flow = UsageFlow(store, clock=clock)
    flow.create_plan("Free", is_free=True, limits=FREE_LIMITS)
    flow.create_plan(
        "Pro",
        stripe_price_id="price_pro",
        price_amount=20,
        payment_link_url=PAYMENT_LINK,
        limits=PRO_LIMITS,
    )


@pytest.fixture(params=store_params())
def plan_store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    """A store (memory, SQLite) with the Free and Pro plans."""
    factory: Any = STORES[request.param][0]
    with factory(tmp_path) as built:
        setup_plans(built, clock)
        yield built


@pytest.fixture(params=["async", "sync"])
def flow_api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def any_flow(plan_store: Store, clock: FakeClock, flow_api: str) -> Any:
    """An ``AsyncUsageFlow`` or a ``UsageFlow`` over the plan store (the middleware takes
    both)."""
    if flow_api == "async":
        return AsyncUsageFlow(plan_store, clock=clock)
    return UsageFlow(plan_store, clock=clock)


@pytest.fixture
def reader(plan_store: Store, clock: FakeClock) -> UsageFlow:
    """A sync flow over the same store, to read what was charged."""
    return UsageFlow(plan_store, clock=clock, cache_ttl=0)


# Tests about the adapters' own logic (validation, routes, answers) run on ``memory://`` only;
# those about charging run on every store (``plan_store``), to keep the suite quick when
# PostgreSQL is configured.
@pytest.fixture
def quick_store(clock: FakeClock) -> Store:
    """A memory store with the Free and Pro plans."""
    store = open_store("memory://")
    setup_plans(store, clock)
    return store


@pytest.fixture
def quick_flow(quick_store: Store, clock: FakeClock, flow_api: str) -> Any:
    """An ``AsyncUsageFlow`` or a ``UsageFlow`` over the memory store."""
    if flow_api == "async":
        return AsyncUsageFlow(quick_store, clock=clock)
    return UsageFlow(quick_store, clock=clock)


@pytest.fixture
def quick_reader(quick_store: Store, clock: FakeClock) -> UsageFlow:
    return UsageFlow(quick_store, clock=clock, cache_ttl=0)


class DeadSQLite:
    """A real SQLite store that can be made unreachable: :meth:`kill` closes its connections
    and puts a directory where the database file was, so every later connection fails inside
    the driver (``unable to open database file``) exactly as a lost database does."""

    def __init__(self, path: Path, clock: FakeClock) -> None:
        self.path = path
        self.store = open_store(f"sqlite:///{path}")
        self.store.migrate()
        setup_plans(self.store, clock)

    def kill(self) -> None:
        self.store.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self.path.mkdir()

    def revive(self) -> None:
        shutil.rmtree(self.path)


@pytest.fixture
def dead_sqlite(tmp_path: Path, clock: FakeClock) -> Iterator[DeadSQLite]:
    db = DeadSQLite(tmp_path / "dead.db", clock)
    yield db
    db.store.close()
