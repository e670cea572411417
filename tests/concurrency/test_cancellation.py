"""A cancelled task must not lose the usage it was committing (a client that disconnects while
its request settles is still charged for what it received). Over every store: on PostgreSQL
and Supabase the commit is a network call that a cancellation would otherwise abandon."""

from __future__ import annotations

import asyncio
import contextlib

from usageflow import AsyncUsageFlow
from usageflow.stores.base import Store


def test_cancelled_commit_still_records(store: Store) -> None:
    async def main() -> int:
        flow = AsyncUsageFlow(store)
        await flow.create_plan("Free", is_free=True, limits={"f": 10})
        reservation = await flow.reserve("u", "f", 3)
        task = asyncio.create_task(reservation.commit(2))
        await asyncio.sleep(0)  # the commit is under way
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for _ in range(500):  # wait for the shielded commit to land
            if await flow.get_total_usage("u", "f") == 2:
                break
            await asyncio.sleep(0.01)
        total = await flow.get_total_usage("u", "f")
        usage = await flow.fetch_usage("u", "f")
        await flow.aclose()
        assert usage.current == 2  # the hold is gone too
        return total

    assert asyncio.run(main()) == 2
