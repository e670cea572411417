"""Fixtures shared by every test: stores from the conformance table, both APIs, a fake clock."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.support.stores import STORES, store_params
from usageflow import AsyncReservation, AsyncUsageFlow, UsageFlow
from usageflow.stores.base import Store
from usageflow.testing import FakeClock

START = datetime(2024, 1, 15, 12, 0, tzinfo=timezone.utc)


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI (``USAGEFLOW_REQUIRE_POSTGRES=1``) a missing PostgreSQL is an error, not a skip."""
    if os.environ.get("USAGEFLOW_REQUIRE_POSTGRES") == "1" and not os.environ.get(
        "USAGEFLOW_TEST_POSTGRES_URL"
    ):
        pytest.exit("USAGEFLOW_REQUIRE_POSTGRES=1 but USAGEFLOW_TEST_POSTGRES_URL is unset", 3)


class SyncFacade:
    """Drives an :class:`AsyncUsageFlow` from synchronous test code, one loop per test, so that
    the conformance suite is written once for both APIs. (Test code only: the library itself
    never runs an event loop inside a sync call.)"""

    def __init__(self, flow: AsyncUsageFlow) -> None:
        self._flow = flow
        self._loop = asyncio.new_event_loop()

    @property
    def store(self) -> Store:
        return self._flow.store

    @property
    def cache(self) -> Any:
        return self._flow.cache

    def _wrap(self, value: Any) -> Any:
        if isinstance(value, AsyncReservation):
            return _SyncReservation(value, self._loop)
        return value

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._flow, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._wrap(self._loop.run_until_complete(attr(*args, **kwargs)))

        return call

    def close(self) -> None:
        self._loop.run_until_complete(self._flow.aclose())
        self._loop.close()


class _SyncReservation:
    def __init__(self, reservation: AsyncReservation, loop: asyncio.AbstractEventLoop) -> None:
        self._r = reservation
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._r, name)

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        return self._loop.run_until_complete(self._r.commit(*args, **kwargs))

    def release(self) -> None:
        self._loop.run_until_complete(self._r.release())

    def __enter__(self) -> _SyncReservation:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._loop.run_until_complete(self._r.__aexit__(exc_type, exc, tb))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture(params=store_params())
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    factory, _reason = STORES[request.param]
    with factory(tmp_path) as built:  # type: ignore[operator]
        yield built


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_flow(store: Store, clock: FakeClock, api: str) -> Iterator[Any]:
    """Build a flow (sync, or async behind :class:`SyncFacade`) over the test's store."""
    made: list[Any] = []

    def make(**options: Any) -> Any:
        options.setdefault("clock", clock)
        if api == "sync":
            flow: Any = UsageFlow(store, **options)
        else:
            flow = SyncFacade(AsyncUsageFlow(store, **options))
        made.append(flow)
        return flow

    yield make
    for flow in made:
        if isinstance(flow, SyncFacade):
            flow._loop.run_until_complete(flow._flow.aclose())
            flow._loop.run_until_complete(flow._loop.shutdown_default_executor())
            flow._loop.close()


@pytest.fixture
def flow(make_flow: Any) -> Any:
    return make_flow()
