"""A cancelled task must not lose the usage it was committing (a client that disconnects while
its request settles is still charged for what it received)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from usageflow import AsyncUsageFlow


def test_cancelled_commit_still_records(tmp_path: Path) -> None:
    async def main() -> int:
        flow = AsyncUsageFlow(f"sqlite:///{tmp_path / 'c.db'}")
        await flow.create_plan("Free", is_free=True, limits={"f": 10})
        reservation = await flow.reserve("u", "f", 3)
        task = asyncio.create_task(reservation.commit(2))
        await asyncio.sleep(0)  # the commit is under way in a worker thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(500):  # wait for the shielded commit to land
            usage = await flow.fetch_usage("u", "f")
            if usage.current == 2:
                break
            await asyncio.sleep(0.01)
        total = await flow.get_total_usage("u", "f")
        await flow.aclose()
        return total

    assert asyncio.run(main()) == 2
