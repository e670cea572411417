"""``memory://``: the SQLite store on a private in-memory database (stores.md, "memory://")."""

from __future__ import annotations

import asyncio
import threading

import pytest

from usageflow import AsyncUsageFlow, ErrorCodes, UsageFlow, UsageFlowError, ops
from usageflow.stores.sqlite import SCHEMA_VERSION, SQLiteStore


def test_memory_runs_the_sqlite_store_on_a_database_of_its_own() -> None:
    first, second = UsageFlow("memory://"), UsageFlow("memory://")
    assert isinstance(first.store, SQLiteStore) and first.store.blocking is False
    first.create_plan("Free", is_free=True, limits={"x": 2})
    assert first.consume("u", "x").allowed
    assert second.store.call(ops.load_catalog()) == [] and second.get_total_usage("u", "x") == 0
    assert first.store.migrate() == SCHEMA_VERSION  # migrated when opened; again is a no-op
    assert first.store.connection_check() is True
    with first.store._tx("test", "", write=False) as conn:  # the check wrote nothing
        assert conn.execute("PRAGMA user_version").fetchone() == (0,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("memory",)
    assert first.get_total_usage("u", "x") == 1
    assert repr(first.store) == "<MemoryStore open>"


def test_threads_and_an_event_loop_share_one_memory_store() -> None:
    """Sync calls from threads and async calls made inline on a loop take turns on the one
    connection: every charge lands once, and the limit holds."""
    flow = UsageFlow("memory://")
    # 200 attempts (160 from threads, 40 on the loop) against 180: the limit binds, and the
    # loop's share is at least the 20 the threads cannot take, whatever the interleaving.
    flow.create_plan("Free", is_free=True, limits={"x": 180})
    aflow = AsyncUsageFlow(flow.store)
    assert aflow.astore.can_suspend is False  # called inline: nothing to shield

    def spend() -> None:
        for _ in range(40):
            flow.consume("u", "x")

    async def spend_async() -> int:
        return sum([(await aflow.consume("u", "x")).allowed for _ in range(40)])

    threads = [threading.Thread(target=spend) for _ in range(4)]
    for thread in threads:
        thread.start()
    allowed_async = asyncio.run(spend_async())
    for thread in threads:
        thread.join()
    assert 20 <= allowed_async <= 40
    assert flow.get_total_usage("u", "x") == 180
    assert flow.store.call(ops.ledger_check(user_id="u", feature_name="x")) == (180, 180)


def test_a_closed_memory_store_refuses_calls_its_data_gone() -> None:
    flow = UsageFlow("memory://")
    flow.create_plan("Free", is_free=True, limits={"x": 5})
    flow.consume("u", "x")
    flow.close()
    flow.close()  # closing twice is harmless
    for call in (
        lambda: flow.consume("u", "x"),
        lambda: flow.get_total_usage("u", "x"),
        flow.store.connection_check,
        flow.store.migrate,
    ):
        with pytest.raises(UsageFlowError) as err:
            call()
        assert err.value.code is ErrorCodes.USAGE_CONFIG_ERROR
        assert "closed" in err.value.message
    assert repr(flow.store) == "<MemoryStore closed>"
