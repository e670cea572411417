"""Concurrency: threads, tasks and processes racing one limit. Counts must be exact."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.support.processes import race_processes
from usageflow import AsyncUsageFlow, ErrorCodes, UsageFlow, UsageFlowError, ops
from usageflow.stores.base import Store

LIMIT = 100


def _setup(flow: UsageFlow) -> None:
    flow.create_plan("Free", is_free=True, limits={"race": LIMIT})


def _hammer(threads: int, attempts: int, work: Callable[[], bool]) -> int:
    barrier = threading.Barrier(threads)

    def run() -> int:
        barrier.wait()
        return sum(work() for _ in range(attempts))

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(lambda _: run(), range(threads)))


def test_32_threads_consume_exactly_the_limit(store: Store) -> None:
    flow = UsageFlow(store)
    _setup(flow)
    allowed = _hammer(32, 8, lambda: flow.consume("u1", "race").allowed)
    assert allowed == LIMIT
    assert flow.get_total_usage("u1", "race") == LIMIT
    assert store.call(ops.ledger_check(user_id="u1", feature_name="race")) == (LIMIT, LIMIT)
    assert len(flow.list_events("u1", "race", limit=1000)) == LIMIT


def test_threads_mixing_reserve_commit_release(store: Store) -> None:
    flow = UsageFlow(store)
    _setup(flow)
    committed = threading.Lock()
    total = [0]

    def work() -> bool:
        try:
            reservation = flow.reserve("u1", "race", 3)
        except UsageFlowError:
            return False
        if int(reservation.id, 16) % 3 == 0:
            reservation.release()
            return False
        reservation.commit(2)
        with committed:
            total[0] += 2
        return True

    _hammer(16, 12, work)
    usage = flow.fetch_usage("u1", "race")
    assert usage.current == total[0] <= LIMIT
    assert store.call(ops.ledger_check(user_id="u1", feature_name="race")) == (total[0], total[0])


def test_threads_committing_one_reservation_record_it_once(store: Store) -> None:
    """A commit deletes its hold; the commits racing it find its event instead. Seven threads
    commit one reservation while an eighth releases it: either the commits win (one event,
    which all seven get; the release changes nothing) or the release does (every commit is
    refused). Never two events, never a commit after a release."""
    flow = UsageFlow(store)
    _setup(flow)
    expected = 0
    for _ in range(6):
        reservation = flow.reserve("u1", "race", 2)
        barrier = threading.Barrier(8)

        def settle(i: int, reservation: Any = reservation, barrier: Any = barrier) -> Any:
            barrier.wait()
            try:
                return reservation.commit() if i < 7 else reservation.release()
            except UsageFlowError as exc:
                return exc.code

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(settle, range(8)))
        commits = outcomes[:7]
        if all(isinstance(c, ErrorCodes) for c in commits):
            assert set(commits) == {ErrorCodes.USAGE_RESERVATION_ERROR}  # released first
        else:
            assert len({c.id for c in commits}) == 1  # one event, given to every commit
            assert sum(not c.replayed for c in commits) == 1
            expected += 2
        assert flow.get_total_usage("u1", "race") == expected
        assert store.call(ops.ledger_check(user_id="u1", feature_name="race")) == (
            expected,
            expected,
        )


def test_async_tasks_consume_exactly_the_limit(store: Store) -> None:
    async def main() -> list[bool]:
        flow = AsyncUsageFlow(store)
        await flow.create_plan("Free", is_free=True, limits={"race": LIMIT})
        decisions = await asyncio.gather(*(flow.consume("u1", "race") for _ in range(250)))
        return [d.allowed for d in decisions]

    assert sum(asyncio.run(main())) == LIMIT
    assert store.call(ops.ledger_check(user_id="u1", feature_name="race")) == (LIMIT, LIMIT)


def test_idempotent_retries_from_threads_record_once(store: Store) -> None:
    flow = UsageFlow(store)
    _setup(flow)
    keys = [f"req-{i % 20}" for i in range(200)]
    results = list(
        ThreadPoolExecutor(16).map(
            lambda key: flow.increment_usage("u1", "race", 2, idempotency_key=key), keys
        )
    )
    assert len({e.id for e in results}) == 20
    assert flow.get_total_usage("u1", "race") == 40


def _process_worker(url: str, attempts: int, threads: int, queue: Any) -> None:
    flow = UsageFlow(url)
    allowed = _hammer(threads, attempts, lambda: flow.consume("u1", "race").allowed)
    keyed = sum(
        not flow.increment_usage("u1", "keys", 1, idempotency_key=f"k{i}").replayed
        for i in range(25)
    )
    flow.close()
    queue.put((allowed, keyed))


def test_processes_on_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    flow = UsageFlow(url)
    _setup(flow)
    results = race_processes(_process_worker, [(url, 10, 8)] * 4)
    assert sum(r[0] for r in results) == LIMIT
    assert sum(r[1] for r in results) == 25
    assert flow.get_total_usage("u1", "race") == LIMIT
    assert flow.get_total_usage("u1", "keys") == 25
    assert flow.store.call(ops.ledger_check(user_id="u1", feature_name="race")) == (LIMIT, LIMIT)
    flow.close()


def _open_files(path: Path) -> int:
    """File descriptors of this process open on ``path`` (Linux: /proc/self/fd)."""
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += fd.readlink() == path
        except OSError:
            continue
    return count


def test_a_thread_per_request_reuses_connections(tmp_path: Path) -> None:
    """Servers such as Werkzeug's start a thread per request: the SQLite store must not open
    (and keep) a connection for each of them."""
    if not Path("/proc/self/fd").is_dir():
        import pytest

        pytest.skip("counting open files needs /proc (Linux)")
    db = tmp_path / "threads.db"
    flow = UsageFlow(f"sqlite:///{db}")
    _setup(flow)
    for _ in range(60):
        worker = threading.Thread(target=lambda: flow.consume("u1", "race"))
        worker.start()
        worker.join()
    assert flow.get_total_usage("u1", "race") == 60
    assert _open_files(db) <= 2
    flow.close()
    assert _open_files(db) == 0


def test_threads_waiting_for_the_lock_are_written_in_one_transaction(tmp_path: Path) -> None:
    """Group commit for threads: decisions that queue up while the write lock is taken go
    together into the next transaction (measured in WAL frames), and stay exact."""
    import sqlite3
    import time

    db = tmp_path / "group.db"
    flow = UsageFlow(f"sqlite:///{db}")
    flow.create_plan("Free", is_free=True, limits={"race": 10})
    flow.consume("u1", "race")  # connections, caches and the counters row exist
    wal = db.with_name("group.db-wal")
    blocker = sqlite3.connect(str(db), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(flow.consume, "u1", "race") for _ in range(16)]
        time.sleep(0.5)  # every thread is waiting: one for SQLite's lock, the rest behind it
        before = wal.stat().st_size
        blocker.execute("COMMIT")
        allowed = sum(f.result(timeout=60).allowed for f in futures)
    blocker.close()
    frames = (wal.stat().st_size - before) / (4096 + 24)
    assert allowed == 9
    assert flow.store.call(ops.ledger_check(user_id="u1", feature_name="race")) == (10, 10)
    # 16 transactions of their own wrote 63 frames; the two shared ones write about 15.
    assert frames < 30, frames
    flow.close()
