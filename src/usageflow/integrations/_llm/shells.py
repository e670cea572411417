"""The I/O shells of LLM metering: hold a call's estimate, call the client, settle what it
reported; streams settled when they end, break or are closed. Threads and asyncio, each a thin
driver of the shared lifecycle (:mod:`usageflow.integrations._lifecycle`); every decision is
in :mod:`usageflow.integrations._llm.decisions`."""

from __future__ import annotations

import inspect
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Mapping,
)
from types import TracebackType
from typing import Any, Generic, TypeVar

from usageflow.integrations._lifecycle import Refusal, Ticket, drive_async, drive_sync
from usageflow.integrations._llm.decisions import Api, LLMCall, StreamTally, TokenMeter

__all__ = [
    "AsyncMeteredStream",
    "AsyncSettler",
    "SyncMeteredStream",
    "SyncSettler",
    "reserve_async",
    "reserve_sync",
    "run_async",
    "run_sync",
    "settle_async",
    "settle_sync",
]

logger = logging.getLogger("usageflow")
T = TypeVar("T")


class _Settler:
    """What a streamed call's settler keeps: its ticket and the tally of what was received.
    The subclasses settle it exactly once, in threads or on an event loop."""

    def __init__(
        self, meter: TokenMeter, api: Api, call: LLMCall, ticket: Ticket, request_id: str | None
    ) -> None:
        self.meter = meter
        self.api = api
        self.call = call
        self.ticket = ticket
        self.request_id = request_id
        self.tally = StreamTally(hide_usage=call.hide_usage)
        self.done = False

    def observe(self, item: Any) -> bool:
        self.tally.items += 1
        return self.api.observe(self.tally, item)


class SyncSettler(_Settler):
    """Settles one streamed call's reservation exactly once (threads)."""

    def finish(self, completed: bool) -> None:
        if self.done:
            return
        self.done = True
        outcome = self.meter.stream_settlement(
            self.api, self.call, self.tally, completed, self.request_id
        )
        settle_sync(self.meter, self.ticket, outcome)

    def finish_quietly(self) -> None:
        """Settle from a finalizer: errors are logged, never raised."""
        try:
            self.finish(completed=False)
        except Exception:
            logger.exception("usageflow: could not settle an abandoned %s stream", self.call.api)


class AsyncSettler(_Settler):
    """The asyncio twin of :class:`SyncSettler`."""

    async def finish(self, completed: bool) -> None:
        if self.done:
            return
        self.done = True
        outcome = self.meter.stream_settlement(
            self.api, self.call, self.tally, completed, self.request_id
        )
        await settle_async(self.meter, self.ticket, outcome)

    async def finish_quietly(self) -> None:
        try:
            await self.finish(completed=False)
        except Exception:
            logger.exception("usageflow: could not settle an abandoned %s stream", self.call.api)


def _finish(
    meter: TokenMeter, ticket: Ticket, outcome: tuple[int, dict[str, Any]] | None
) -> Generator[Any, Any, int]:
    """The lifecycle's settlement of a call: commit ``outcome`` (credits, metadata) or release
    (None). The call has happened by now, so a store failure is logged, not raised: the
    caller keeps the answer it paid for, and the hold expires by itself after its ttl."""
    metering = meter.metering(ticket.meter.feature)
    if outcome is None:
        return (yield from metering.finish(meter.flow.core, ticket, None))
    credits, metadata = outcome
    return (yield from metering.finish(meter.flow.core, ticket, 200, lambda: credits, metadata))


def settle_sync(
    meter: TokenMeter, ticket: Ticket, outcome: tuple[int, dict[str, Any]] | None
) -> None:
    """Settle a call's ticket from sync code (see :func:`_finish`)."""
    drive_sync(meter.flow, _finish(meter, ticket, outcome))


async def settle_async(
    meter: TokenMeter, ticket: Ticket, outcome: tuple[int, dict[str, Any]] | None
) -> None:
    """The asyncio twin of :func:`settle_sync`, shielded from the caller's cancellation (a
    client that disconnects from a streaming endpoint still gets its ``CancelledError``;
    the ledger still gets the settlement)."""
    await drive_async(meter.flow, _finish(meter, ticket, outcome), shielded=True)


def _admitted(admission: object) -> Ticket:
    if isinstance(admission, Refusal):
        raise admission.error
    assert isinstance(admission, Ticket)  # no fail_open here: a store failure refuses
    return admission


def reserve_sync(meter: TokenMeter, call: LLMCall) -> Ticket:
    """Hold the call's estimate through the lifecycle, or raise its refusal (no request)."""
    metering = meter.metering(call.feature_name)
    steps = metering.admit(meter.flow.core, call.user_id, call.credits)
    return _admitted(drive_sync(meter.flow, steps))


async def reserve_async(meter: TokenMeter, call: LLMCall) -> Ticket:
    """The asyncio twin of :func:`reserve_sync`."""
    metering = meter.metering(call.feature_name)
    steps = metering.admit(meter.flow.core, call.user_id, call.credits)
    return _admitted(await drive_async(meter.flow, steps))


def _request_id(api: Api, result: Any) -> str | None:
    response = getattr(result, "response", None) or getattr(result, "http_response", None)
    headers = getattr(response, "headers", None)
    value = headers.get(api.request_id_header) if headers is not None else None
    return value if isinstance(value, str) else None


def _is_raw(result: Any) -> bool:
    """A raw response (``with_raw_response`` / ``with_streaming_response`` reached through the
    metered method): its ``parse()`` gives the result and caches it for the caller. A raw
    *stream* is settled on the estimate, its events being read by the caller alone."""
    return callable(getattr(result, "parse", None)) and hasattr(result, "http_response")


def run_sync(
    meter: TokenMeter,
    api: Api,
    method: Callable[..., Any],
    kwargs: Mapping[str, Any],
    stream_type: type,
    metered: Callable[[Any, SyncSettler], Any],
) -> Any:
    """Reserve, call ``method``, then commit (or hand the stream to ``metered``); release when
    the call raises."""
    call = meter.plan(api, kwargs)
    ticket = reserve_sync(meter, call)
    try:
        result = method(**call.request)
    except BaseException:
        settle_sync(meter, ticket, None)
        raise
    if call.stream and isinstance(result, stream_type):
        return metered(result, SyncSettler(meter, api, call, ticket, _request_id(api, result)))
    complete = result
    if _is_raw(result):
        try:
            complete = None if call.stream else result.parse()
        except Exception:
            complete = None
    settle_sync(
        meter, ticket, meter.result_settlement(api, call, complete, _request_id(api, result))
    )
    return result


async def run_async(
    meter: TokenMeter,
    api: Api,
    method: Callable[..., Awaitable[Any]],
    kwargs: Mapping[str, Any],
    stream_type: type,
    metered: Callable[[Any, AsyncSettler], Any],
) -> Any:
    """The asyncio twin of :func:`run_sync`."""
    call = meter.plan(api, kwargs)
    ticket = await reserve_async(meter, call)
    try:
        result = await method(**call.request)
    except BaseException:
        await settle_async(meter, ticket, None)
        raise
    if call.stream and isinstance(result, stream_type):
        settler = AsyncSettler(meter, api, call, ticket, _request_id(api, result))
        return metered(result, settler)
    complete = result
    if _is_raw(result):
        try:
            complete = None if call.stream else result.parse()
            if inspect.isawaitable(complete):
                complete = await complete
        except Exception:
            complete = None
    settlement = meter.result_settlement(api, call, complete, _request_id(api, result))
    await settle_async(meter, ticket, settlement)
    return result


class SyncMeteredStream(Generic[T]):
    """A client stream that settles its reservation when it ends, breaks or is closed.

    Mixed into a subclass of the client's own ``Stream`` so that ``isinstance`` checks, iteration
    and ``with`` behave as before; every public method is defined here, so nothing depends on the
    client's private attributes.
    """

    response: Any

    def _meter_stream(self, inner: Any, settler: SyncSettler) -> None:
        self.response = inner.response
        self._usageflow_inner = inner
        self._usageflow_settler = settler
        self._usageflow_items = self._usageflow_run()

    def _usageflow_run(self) -> Generator[T, None, None]:
        settler = self._usageflow_settler
        try:
            for item in self._usageflow_inner:
                if settler.observe(item):
                    yield item
        except GeneratorExit:  # dropped unfinished: garbage collection or close()
            settler.finish_quietly()
            raise
        except BaseException:  # the connection broke or the API sent an error mid-stream
            settler.finish(completed=False)
            raise
        settler.finish(completed=True)

    def __next__(self) -> T:
        return next(self._usageflow_items)

    def __iter__(self) -> Iterator[T]:
        return self

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the response; a stream closed before its end is settled on what arrived."""
        try:
            self._usageflow_inner.close()
        finally:
            self._usageflow_settler.finish(completed=False)
            self._usageflow_items.close()


class AsyncMeteredStream(Generic[T]):
    """The asyncio twin of :class:`SyncMeteredStream`."""

    response: Any

    def _meter_stream(self, inner: Any, settler: AsyncSettler) -> None:
        self.response = inner.response
        self._usageflow_inner = inner
        self._usageflow_settler = settler
        self._usageflow_items = self._usageflow_run()

    async def _usageflow_run(self) -> AsyncGenerator[T, None]:
        settler = self._usageflow_settler
        try:
            async for item in self._usageflow_inner:
                if settler.observe(item):
                    yield item
        except GeneratorExit:
            await settler.finish_quietly()
            raise
        except BaseException:
            await settler.finish(completed=False)
            raise
        await settler.finish(completed=True)

    async def __anext__(self) -> T:
        return await self._usageflow_items.__anext__()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the response; a stream closed before its end is settled on what arrived."""
        try:
            await self._usageflow_inner.close()
        finally:
            await self._usageflow_settler.finish(completed=False)
            await self._usageflow_items.aclose()

    async def aclose(self) -> None:
        await self.close()
