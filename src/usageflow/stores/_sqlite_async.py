"""The asyncio face of the SQLite store: its calls scheduled around an event loop.

The store offers the hooks of :class:`Scheduled`; this face decides when to use them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from usageflow.ops import StoreCall
from usageflow.stores.base import AsyncStore

logger = logging.getLogger("usageflow")

T = TypeVar("T")
_Pending = tuple[str, dict[str, Any], "asyncio.Future[Any]"]


class WouldBlock(Exception):
    """Raised by :meth:`Scheduled.call_nowait` and :meth:`Scheduled.run_batch` when the call
    would have to wait (a lock is taken): nothing was written, and the caller runs the call in
    a worker thread instead."""


class Scheduled(Protocol):
    """What the SQLite store offers its event-loop face."""

    @property
    def blocking(self) -> bool:
        """False for ``memory://``: no call waits on I/O, so every call runs inline."""

    def call(self, op: StoreCall[T]) -> T: ...

    def close(self) -> None: ...

    def nowait_methods(self) -> frozenset[str]:
        """The operations :meth:`call_nowait` may run on an event loop."""

    def call_nowait(self, method: str, kwargs: dict[str, Any]) -> Any:
        """Run ``method`` at once if it need not wait for a lock or the disk, else raise
        :class:`WouldBlock` having written nothing."""

    def batch_methods(self) -> frozenset[str]:
        """The writes :meth:`run_batch` may group into one transaction."""

    def run_batch(
        self, calls: Sequence[tuple[str, dict[str, Any]]], *, nowait: bool = False
    ) -> list[tuple[bool, Any]]:
        """Run ``calls`` one after the other in **one** transaction (group commit): each sees
        the ones before it, and a call that fails leaves no trace and does not affect the
        others. Returns ``(True, result)`` or ``(False, exception)`` per call, once the whole
        transaction is committed; if the commit fails, raises and nothing is written. With
        ``nowait``, raises :class:`WouldBlock` (nothing written) instead of waiting for a
        lock."""

    def upkeep(self) -> Callable[[], None] | None:
        """Work owed by :meth:`call_nowait` calls (such as a WAL checkpoint), to be run in a
        worker thread; ``None`` when nothing is due. Each piece is handed out once."""


class SQLiteAsyncStore(AsyncStore):
    """Runs the store's calls in the default executor when they block, inline when they don't.

    * ``memory://`` (not ``blocking``) is called inline: it holds only a short in-process lock.
    * The decisions (:meth:`~Scheduled.batch_methods`) are **grouped**: the decisions asked
      for during one turn of the event loop run one after the other in one transaction
      (:meth:`~Scheduled.run_batch`), so that concurrent requests share a commit (an fsync,
      with ``synchronous=full``). Each still sees the ones before it, so limits stay exact,
      and each caller gets its answer once the transaction is committed.
    * :meth:`~Scheduled.nowait_methods` are first tried inline with
      :meth:`~Scheduled.call_nowait` (``synchronous=normal``: a decision is a few index seeks
      and a commit with no fsync, cheaper than the two thread switches it would take); the
      same goes for the batches. When that would wait for a lock, the work goes to a worker
      thread; while a batch waits there, the decisions that come meanwhile queue for the next
      batch rather than follow it into threads.
    """

    def __init__(self, store: Scheduled) -> None:
        self.store = store
        self.can_suspend = store.blocking
        self._nowait = store.nowait_methods() if store.blocking else frozenset()
        self._batched = store.batch_methods() if store.blocking else frozenset()
        self._upkeep: set[asyncio.Future[None]] = set()
        self._queue: list[_Pending] | None = None
        self._queue_loop: asyncio.AbstractEventLoop | None = None
        self._batch_in_thread = False

    async def call(self, op: StoreCall[T]) -> T:
        store = self.store
        if not store.blocking:  # the memory store: inline, one coroutine frame
            return store.call(op)
        result: T = await self._blocking_call(op, False)
        return result

    async def call_shielded(self, op: StoreCall[T]) -> T:
        """Shielded without a task of its own: what a call waits for is a future (a batch
        slot, a worker thread), and only that wait is shielded; an inline call cannot be
        cancelled midway."""
        if not self.store.blocking:
            return self.store.call(op)
        result: T = await self._blocking_call(op, True)
        return result

    async def _blocking_call(self, op: StoreCall[Any], shield: bool) -> Any:
        store = self.store
        method, kwargs = op.method, op.kwargs
        loop = asyncio.get_running_loop()
        if method in self._batched and self._queue_loop in (None, loop):
            return await self._wait(self._grouped(loop, method, kwargs), shield)
        if method in self._nowait:
            try:
                result = store.call_nowait(method, kwargs)
            except WouldBlock:
                pass  # a lock is taken: wait for it in a worker thread
            else:
                self._start_upkeep(loop)
                return result
        work = loop.run_in_executor(None, store.call, op)
        return await self._wait(work, shield)

    @staticmethod
    def _wait(future: asyncio.Future[Any], shield: bool) -> asyncio.Future[Any]:
        # Cancelling a shielded wait leaves the future itself to run: a batch slot whose
        # future is not cancelled is still written, a worker thread runs on.
        return asyncio.shield(future) if shield else future

    # -- group commit -------------------------------------------------------------------------
    def _grouped(
        self, loop: asyncio.AbstractEventLoop, method: str, kwargs: Any
    ) -> asyncio.Future[Any]:
        """A slot in the next batch: the future of its outcome."""
        future: asyncio.Future[Any] = loop.create_future()
        if self._queue is None:
            self._queue, self._queue_loop = [], loop
            if not self._batch_in_thread:
                loop.call_soon(self._flush, loop)
        self._queue.append((method, kwargs, future))
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        queue, self._queue, self._queue_loop = self._queue or [], None, None
        # A call whose caller was cancelled before its turn is not run at all.
        pending = [item for item in queue if not item[2].cancelled()]
        if not pending:
            return
        calls = [(method, kwargs) for method, kwargs, _ in pending]
        if self._nowait:
            try:
                results = self.store.run_batch(calls, nowait=True)
            except WouldBlock:
                pass  # a lock is taken: the batch waits for it in a worker thread
            except BaseException as exc:  # the transaction failed: nothing was written
                _fail(pending, exc)
                return
            else:
                _deliver(pending, results)
                self._start_upkeep(loop)
                return
        self._batch_in_thread = True
        self._queue_loop = loop  # calls arriving meanwhile queue for the next batch
        running = loop.run_in_executor(None, functools.partial(self.store.run_batch, calls))
        running.add_done_callback(functools.partial(self._thread_batch_done, loop, pending))

    def _thread_batch_done(
        self, loop: asyncio.AbstractEventLoop, pending: list[_Pending], done: asyncio.Future[Any]
    ) -> None:
        self._batch_in_thread = False
        if done.cancelled():
            _fail(pending, asyncio.CancelledError())
        elif done.exception() is not None:
            _fail(pending, done.exception())  # type: ignore[arg-type]
        else:
            _deliver(pending, done.result())
        if self._queue:
            loop.call_soon(self._flush, loop)
        else:
            self._queue_loop = None

    # -- upkeep -------------------------------------------------------------------------------
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


def _deliver(pending: list[_Pending], results: list[tuple[bool, Any]]) -> None:
    for (_method, _kwargs, future), (ok, value) in zip(pending, results, strict=True):
        if future.cancelled():
            continue  # the caller went away; what it asked for was done all the same
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _fail(pending: list[_Pending], exc: BaseException) -> None:
    for _method, _kwargs, future in pending:
        if not future.done():
            future.set_exception(exc)
