"""Racing processes for the concurrency tests."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any


def race_processes(
    target: Callable[..., None], args: Sequence[tuple[Any, ...]], timeout: float = 120
) -> list[Any]:
    """Start one spawned process per ``args`` (``target(*args, queue)``, which puts one
    result on the queue), wait for every result, and check that each process exited
    cleanly. Results come in the order they arrive."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=target, args=(*a, queue)) for a in args]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=timeout) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    return results
