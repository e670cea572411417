"""The async face of a synchronous store."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from usageflow.stores.base import AsyncStore, Store


class ThreadedAsyncStore(AsyncStore):
    """Runs a store's calls in the default executor when they block, inline when they don't.

    Inline calls on a non-blocking store (memory) hold only a short in-process lock.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.can_suspend = store.blocking

    async def call(self, method: str, kwargs: dict[str, Any]) -> Any:
        fn = getattr(self.store, method)
        if not self.store.blocking:
            return fn(**kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, **kwargs))

    async def aclose(self) -> None:
        self.store.close()
