"""The async face of a synchronous store."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from usageflow.stores.base import AsyncStore, Store, WouldBlock

logger = logging.getLogger("usageflow")


class ThreadedAsyncStore(AsyncStore):
    """Runs a store's calls in the default executor when they block, inline when they don't.

    A non-blocking store (memory) is called inline: it holds only a short in-process lock. A
    blocking store's :meth:`~Store.nowait_methods` are first tried inline with
    :meth:`~Store.call_nowait` (SQLite with ``synchronous=normal``: a decision is a few index
    seeks and a commit with no fsync, cheaper than the two thread switches it would take);
    when that would wait for a lock, the call goes to a worker thread like every other one.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.can_suspend = store.blocking
        self._nowait = store.nowait_methods() if store.blocking else frozenset()
        self._upkeep: set[asyncio.Future[None]] = set()
        self._waiting: asyncio.Future[Any] | None = None

    async def call(self, method: str, kwargs: dict[str, Any]) -> Any:
        store = self.store
        fn = getattr(store, method)
        if not store.blocking:
            return fn(**kwargs)
        loop = asyncio.get_running_loop()
        if method not in self._nowait:
            return await loop.run_in_executor(None, functools.partial(fn, **kwargs))
        while True:
            waiting = self._waiting
            if waiting is not None and waiting.get_loop() is loop and not waiting.done():
                # One call of this loop already waits for the lock in a thread: wait for it
                # rather than send more (they would hold the lock in turn and keep every later
                # call off the loop), then try inline again.
                await asyncio.wait([waiting])
                continue
            try:
                result = store.call_nowait(method, kwargs)
            except WouldBlock:
                break  # a lock is taken: wait for it in a worker thread
            self._start_upkeep(loop)
            return result
        future = loop.run_in_executor(None, functools.partial(fn, **kwargs))
        self._waiting = future
        return await future

    def _start_upkeep(self, loop: asyncio.AbstractEventLoop) -> None:
        work = self.store.upkeep()  # the store hands each piece out once
        if work is not None:
            future = loop.run_in_executor(None, work)
            self._upkeep.add(future)
            future.add_done_callback(self._upkeep_done)

    def _upkeep_done(self, future: asyncio.Future[None]) -> None:
        self._upkeep.discard(future)
        if not future.cancelled() and future.exception() is not None:
            logger.warning("usageflow: store upkeep failed: %s", future.exception())

    async def aclose(self) -> None:
        if self._upkeep:
            await asyncio.wait(self._upkeep)
        self.store.close()
