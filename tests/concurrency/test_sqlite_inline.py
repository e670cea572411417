"""SQLite decisions on the event loop (``synchronous=normal``): inline when the lock is free,
in a worker thread when it is taken, exact either way, and the loop never waits on the lock.

Everything runs against real SQLite files; the executors below only record what is handed to
worker threads, they run it unchanged.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import race_processes
from usageflow import AsyncUsageFlow, UsageFlow, ops

LIMIT = 100


class RecordingExecutor(ThreadPoolExecutor):
    """A thread pool that counts the calls it was given."""

    def __init__(self) -> None:
        super().__init__(4)
        self.submitted: list[Any] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.submitted.append(getattr(fn, "func", fn))
        return super().submit(fn, *args, **kwargs)


def _names(executor: RecordingExecutor) -> list[str]:
    return [getattr(fn, "__name__", repr(fn)) for fn in executor.submitted]


def _url(tmp_path: Path, synchronous: str) -> str:
    return f"sqlite:///{tmp_path / 'inline.db'}?synchronous={synchronous}"


def _flow_with_plan(url: str) -> UsageFlow:
    setup = UsageFlow(url)
    setup.create_plan("Free", is_free=True, limits={"exports": LIMIT})
    return setup


def test_normal_decides_on_the_loop_without_threads(tmp_path: Path) -> None:
    setup = _flow_with_plan(_url(tmp_path, "normal"))

    async def main() -> list[str]:
        executor = RecordingExecutor()
        asyncio.get_running_loop().set_default_executor(executor)
        flow = AsyncUsageFlow(setup.store)
        assert (await flow.consume("u1", "exports", 3)).allowed
        async with await flow.reserve("u1", "exports", 2) as held:
            assert held.decision.remaining == LIMIT - 5
        usage = await flow.fetch_usage("u1", "exports")
        assert usage.current == 5
        return _names(executor)

    assert asyncio.run(main()) == []
    assert setup.store.call(ops.ledger_check(user_id="u1", feature_name="exports")) == (5, 5)  # type: ignore[attr-defined]
    setup.close()


def test_full_keeps_decisions_in_worker_threads(tmp_path: Path) -> None:
    """With ``synchronous=full`` a commit waits for the disk: never on the loop."""
    setup = _flow_with_plan(_url(tmp_path, "full"))

    async def main() -> list[str]:
        executor = RecordingExecutor()
        asyncio.get_running_loop().set_default_executor(executor)
        flow = AsyncUsageFlow(setup.store)
        assert (await flow.consume("u1", "exports")).allowed
        return _names(executor)

    assert "run_batch" in asyncio.run(main())
    setup.close()


def test_a_taken_lock_sends_one_call_to_a_thread_and_the_loop_keeps_running(
    tmp_path: Path,
) -> None:
    url = _url(tmp_path, "normal")
    setup = _flow_with_plan(url)
    setup.consume("u1", "exports")  # the loop thread's connections exist and are migrated
    locked, release = threading.Event(), threading.Event()

    def hold_the_write_lock() -> None:
        other = sqlite3.connect(str(tmp_path / "inline.db"), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(10)
        other.execute("COMMIT")
        other.close()

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    assert locked.wait(10)

    async def main() -> tuple[bool, int, list[str]]:
        executor = RecordingExecutor()
        loop = asyncio.get_running_loop()
        loop.set_default_executor(executor)
        flow = AsyncUsageFlow(setup.store)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        decisions = [asyncio.create_task(flow.consume("u1", "exports", 2)) for _ in range(10)]
        await asyncio.sleep(0.3)
        assert not any(d.done() for d in decisions)  # waiting for the lock
        release.set()
        allowed = all(d.allowed for d in await asyncio.gather(*decisions))
        ticking.cancel()
        return allowed, ticks, _names(executor)

    allowed, ticks, threaded = asyncio.run(main())
    holder.join()
    assert allowed
    assert ticks >= 10  # the loop ran while the decisions waited
    # One decision waited in a thread; the others waited for it, then ran on the loop.
    assert threaded == ["run_batch"]
    assert setup.get_total_usage("u1", "exports") == 21
    assert setup.store.call(ops.ledger_check(user_id="u1", feature_name="exports")) == (21, 21)  # type: ignore[attr-defined]
    setup.close()


def test_inline_commits_are_checkpointed_in_a_worker_thread(tmp_path: Path) -> None:
    """The loop's connection never checkpoints (that fsyncs); the work is handed to a thread
    often enough that the WAL is rewound and stays small."""
    setup = UsageFlow(_url(tmp_path, "normal"))
    setup.create_plan("Free", is_free=True, limits={"exports": None})
    decisions = 3000

    async def main() -> tuple[list[str], int]:
        executor = RecordingExecutor()
        asyncio.get_running_loop().set_default_executor(executor)
        flow = AsyncUsageFlow(setup.store)
        for _ in range(decisions):
            await flow.consume("u1", "exports")
            await asyncio.sleep(0)  # as a server does between requests
        wal_size = (tmp_path / "inline.db-wal").stat().st_size
        await flow.aclose()
        return _names(executor), wal_size

    threaded, wal_size = asyncio.run(main())
    assert "checkpoint" in threaded
    # A checkpoint holds the write lock while it runs: decisions meanwhile wait in a thread.
    assert set(threaded) <= {"checkpoint", "run_batch"}
    assert threaded.count("run_batch") < decisions // 10
    # Unchecked, 3,000 decisions would leave about 7 pages each, ~80 MB, in the WAL.
    assert wal_size < 24 * 1024 * 1024


def _async_process_worker(url: str, tasks: int, queue: Any) -> None:
    async def main() -> int:
        flow = AsyncUsageFlow(url)
        decisions = await asyncio.gather(*(flow.consume("u1", "exports") for _ in range(tasks)))
        await flow.aclose()
        return sum(d.allowed for d in decisions)

    queue.put(asyncio.run(main()))


@pytest.mark.parametrize("synchronous", ["normal", "full"])
def test_event_loops_in_four_processes_take_exactly_the_limit(
    tmp_path: Path, synchronous: str
) -> None:
    url = _url(tmp_path, synchronous)
    setup = _flow_with_plan(url)
    started = time.monotonic()
    allowed = race_processes(_async_process_worker, [(url, 60)] * 4)
    assert time.monotonic() - started < 120
    assert sum(allowed) == LIMIT
    assert setup.get_total_usage("u1", "exports") == LIMIT
    assert setup.store.call(ops.ledger_check(user_id="u1", feature_name="exports")) == (
        LIMIT,
        LIMIT,
    )  # type: ignore[attr-defined]
    setup.close()


# -- group commit -------------------------------------------------------------------------------
def test_concurrent_decisions_share_transactions(tmp_path: Path) -> None:
    """With ``synchronous=full`` each transaction is an fsync in a worker thread: 40 decisions
    asked for at once are grouped into a few, and the limit is still exact."""
    setup = UsageFlow(_url(tmp_path, "full"))
    setup.create_plan("Free", is_free=True, limits={"exports": 25})

    async def main() -> tuple[int, list[str]]:
        executor = RecordingExecutor()
        asyncio.get_running_loop().set_default_executor(executor)
        flow = AsyncUsageFlow(setup.store)
        await flow.fetch_usage("u1", "exports")  # caches and connections
        executor.submitted.clear()
        decisions = await asyncio.gather(*(flow.consume("u1", "exports") for _ in range(40)))
        return sum(d.allowed for d in decisions), _names(executor)

    allowed, threaded = asyncio.run(main())
    assert allowed == 25
    assert set(threaded) == {"run_batch"}
    assert len(threaded) <= 3  # one per turn of the loop, not one per decision
    assert setup.store.call(ops.ledger_check(user_id="u1", feature_name="exports")) == (25, 25)  # type: ignore[attr-defined]
    setup.close()


@pytest.mark.parametrize("synchronous", ["normal", "full"])
def test_a_failing_call_in_a_batch_leaves_no_trace_and_spares_the_others(
    tmp_path: Path, synchronous: str
) -> None:
    from datetime import datetime, timedelta, timezone

    from usageflow import UsageFlowError

    store = UsageFlow(_url(tmp_path, synchronous)).store
    now = datetime.now(timezone.utc)

    def charge(user: str) -> tuple[str, dict[str, Any]]:
        return "charge", {
            "user_id": user,
            "feature_name": "exports",
            "credits": 2,
            "event_type": "usage",
            "limit": 10,
            "window_start": None,
            "now": now,
            "metadata": None,
            "idempotency_key": None,
        }

    def reserve(reservation_id: str) -> tuple[str, dict[str, Any]]:
        return "reserve", {
            "reservation_id": reservation_id,
            "user_id": "u1",
            "feature_name": "exports",
            "credits": 3,
            "limit": 10,
            "window_start": None,
            "now": now,
            "expires_at": now + timedelta(minutes=5),
            "idempotency_key": None,
        }

    results = store.run_batch(
        [
            charge("u1"),
            reserve("r1"),
            reserve("r1"),  # the same id again: fails at its INSERT, after its reads
            ("settle", {"reservation_id": "nope", "credits": 1, "now": now, "metadata": None}),
            charge("u1"),
        ]
    )
    assert [ok for ok, _ in results] == [True, True, False, False, True]
    assert isinstance(results[2][1], UsageFlowError)
    assert isinstance(results[3][1], UsageFlowError)
    assert results[4][1].used == 4 and results[4][1].held == 3  # saw the calls before it
    read = store.call(ops.usage(user_id="u1", feature_name="exports", window_start=None, now=now))
    assert (read.used, read.held) == (4, 3)
    assert store.call(ops.ledger_check(user_id="u1", feature_name="exports")) == (4, 4)  # type: ignore[attr-defined]
    store.close()
