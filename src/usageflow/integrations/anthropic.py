"""Meter the tokens of an ``anthropic.Anthropic`` or ``anthropic.AsyncAnthropic`` client.

Usage::

    from anthropic import Anthropic
    from usageflow.integrations.anthropic import wrap_anthropic

    client = wrap_anthropic(Anthropic(), flow, "claude-tokens", user_id="user-1")
    client.messages.create(model="claude-sonnet-4-5", max_tokens=1024, messages=[...])

``wrap_anthropic`` meters the client in place and returns it. Metered: ``messages.create``
(plain and ``stream=True``), ``messages.parse`` and the ``messages.stream(...)`` helper; copies
made with ``client.with_options(...)`` too. The tokens of a call are ``input_tokens +
output_tokens + cache_creation_input_tokens + cache_read_input_tokens`` (each is recorded in
the event's metadata). ``with_raw_response`` / ``with_streaming_response`` first used after
wrapping go through the metered methods (a raw *stream* is settled on its estimate); ``beta`` is
not metered. See ``docs/ai.md``.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, TypeVar, overload

from usageflow.errors import missing_dependency
from usageflow.flow import AsyncUsageFlow, UsageFlow
from usageflow.integrations._llm import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    Api,
    AsyncMeteredStream,
    AsyncSettler,
    ClientKind,
    Estimate,
    FeatureName,
    StreamTally,
    SyncMeteredStream,
    SyncSettler,
    TokenMeter,
    Tokens,
    UserId,
    Weights,
    patch_method,
    run_async,
    run_sync,
    wrap_client,
)

try:
    import anthropic
    from anthropic.lib.streaming import (
        AsyncMessageStream,
        AsyncMessageStreamManager,
        MessageStream,
        MessageStreamManager,
    )
except ImportError as exc:  # pragma: no cover - exercised by the missing-dependency test
    raise missing_dependency("anthropic", "anthropic") from exc

__all__ = ["wrap_anthropic"]

_T = TypeVar("_T")
_SyncClientT = TypeVar("_SyncClientT", bound=anthropic.Anthropic)
_AsyncClientT = TypeVar("_AsyncClientT", bound=anthropic.AsyncAnthropic)
_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


def _counts(usage: object) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in _FIELDS:
        value = getattr(usage, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            counts[name] = value
    return counts


class _Messages:
    """``messages``: usage is input, output and cache tokens; a stream reports the input in
    ``message_start`` and the final output count in ``message_delta``."""

    name = "anthropic.messages"
    request_id_header = "request-id"
    prompt_field = "input_tokens"
    completion_field = "output_tokens"
    summed_fields: tuple[str, ...] = _FIELDS

    def prepare(self, request: dict[str, Any], stream: bool) -> bool:
        return False

    def reported(self, result: Any) -> Tokens | None:
        usage = getattr(result, "usage", None)
        if usage is None:
            return None
        counts = _counts(usage)
        for name in _FIELDS:
            counts.setdefault(name, 0)
        return Tokens(counts, sum(counts.values()), "reported")

    def describe(self, result: Any) -> tuple[str | None, str | None, str | None]:
        return (
            getattr(result, "model", None),
            getattr(result, "id", None),
            getattr(result, "_request_id", None),
        )

    def observe(self, tally: StreamTally, item: Any) -> bool:
        kind = getattr(item, "type", None)
        if kind == "message_start":
            message = getattr(item, "message", None)
            tally.model = getattr(message, "model", None) or tally.model
            tally.response_id = getattr(message, "id", None) or tally.response_id
            tally.report(_counts(getattr(message, "usage", None)), final=False)
        elif kind == "content_block_delta":
            delta = getattr(item, "delta", None)
            for name in ("text", "partial_json", "thinking"):
                tally.text(getattr(delta, name, None))
        elif kind == "message_delta":
            tally.report(_counts(getattr(item, "usage", None)), final=True)
        return True


_MESSAGES: Api = _Messages()


class _MeteredStream(SyncMeteredStream[_T], anthropic.Stream[_T]):
    """An ``anthropic.Stream`` that settles its reservation when it ends or is closed."""

    def __init__(self, inner: anthropic.Stream[_T], settler: SyncSettler) -> None:
        self._meter_stream(inner, settler)


class _AsyncMeteredStream(AsyncMeteredStream[_T], anthropic.AsyncStream[_T]):
    """An ``anthropic.AsyncStream`` that settles its reservation when it ends or is closed."""

    def __init__(self, inner: anthropic.AsyncStream[_T], settler: AsyncSettler) -> None:
        self._meter_stream(inner, settler)


# ``messages.stream()`` builds its request lazily and hands the raw event stream to a
# ``MessageStream``, which reads it through ``_raw_stream`` (iteration, ``close()``, ``response``).
# The metered managers below make the request on enter, exactly as the client's own do, and give
# the ``MessageStream`` a metered raw stream before anything is read from it.
def _meter_message_stream(stream: MessageStream[Any], settler: SyncSettler) -> MessageStream[Any]:
    stream._raw_stream = _MeteredStream(stream._raw_stream, settler)
    return stream


def _ameter_message_stream(
    stream: AsyncMessageStream[Any], settler: AsyncSettler
) -> AsyncMessageStream[Any]:
    stream._raw_stream = _AsyncMeteredStream(stream._raw_stream, settler)
    return stream


class _MeteredMessageStreamManager(MessageStreamManager[Any]):
    def __init__(self, meter: TokenMeter, factory: Any, kwargs: dict[str, Any]) -> None:
        self._usageflow = (meter, factory, kwargs)
        self._usageflow_stream: MessageStream[Any] | None = None

    def __enter__(self) -> MessageStream[Any]:
        meter, factory, kwargs = self._usageflow

        def open_stream(**request: Any) -> MessageStream[Any]:
            request.pop("stream", None)
            opened: MessageStream[Any] = factory(**request).__enter__()
            return opened

        self._usageflow_stream = run_sync(
            meter,
            _MESSAGES,
            open_stream,
            {**kwargs, "stream": True},
            MessageStream,
            _meter_message_stream,
        )
        return self._usageflow_stream

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if self._usageflow_stream is not None:
            self._usageflow_stream.close()


class _AsyncMeteredMessageStreamManager(AsyncMessageStreamManager[Any]):
    def __init__(self, meter: TokenMeter, factory: Any, kwargs: dict[str, Any]) -> None:
        self._usageflow = (meter, factory, kwargs)
        self._usageflow_stream: AsyncMessageStream[Any] | None = None

    async def __aenter__(self) -> AsyncMessageStream[Any]:
        meter, factory, kwargs = self._usageflow

        async def open_stream(**request: Any) -> AsyncMessageStream[Any]:
            request.pop("stream", None)
            opened: AsyncMessageStream[Any] = await factory(**request).__aenter__()
            return opened

        self._usageflow_stream = await run_async(
            meter,
            _MESSAGES,
            open_stream,
            {**kwargs, "stream": True},
            AsyncMessageStream,
            _ameter_message_stream,
        )
        return self._usageflow_stream

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if self._usageflow_stream is not None:
            await self._usageflow_stream.close()


def _patch_stream_helper(messages: Any, meter: TokenMeter, is_async: bool) -> None:
    factory = messages.stream
    manager = _AsyncMeteredMessageStreamManager if is_async else _MeteredMessageStreamManager

    def stream(**kwargs: Any) -> Any:
        return manager(meter, factory, kwargs)

    stream.__doc__ = factory.__doc__
    messages.stream = stream


def _install(
    client: anthropic.Anthropic | anthropic.AsyncAnthropic, meter: TokenMeter, is_async: bool
) -> None:
    messages = client.messages
    stream_type = anthropic.AsyncStream if is_async else anthropic.Stream
    metered = _AsyncMeteredStream if is_async else _MeteredStream
    for name in ("create", "parse"):
        patch_method(messages, name, meter, _MESSAGES, stream_type, metered, is_async)
    _patch_stream_helper(messages, meter, is_async)


_ANTHROPIC = ClientKind("wrap_anthropic", anthropic.Anthropic, anthropic.AsyncAnthropic, _install)


@overload
def wrap_anthropic(
    client: _SyncClientT,
    flow: UsageFlow,
    feature_name: FeatureName,
    *,
    user_id: UserId = None,
    weights: Weights | None = None,
    default_max_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
    estimate: Estimate | None = None,
    ttl: float | None = None,
) -> _SyncClientT: ...


@overload
def wrap_anthropic(
    client: _AsyncClientT,
    flow: AsyncUsageFlow,
    feature_name: FeatureName,
    *,
    user_id: UserId = None,
    weights: Weights | None = None,
    default_max_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
    estimate: Estimate | None = None,
    ttl: float | None = None,
) -> _AsyncClientT: ...


def wrap_anthropic(
    client: anthropic.Anthropic | anthropic.AsyncAnthropic,
    flow: UsageFlow | AsyncUsageFlow,
    feature_name: FeatureName,
    *,
    user_id: UserId = None,
    weights: Weights | None = None,
    default_max_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
    estimate: Estimate | None = None,
    ttl: float | None = None,
) -> anthropic.Anthropic | anthropic.AsyncAnthropic:
    """Meter ``client``'s tokens in ``flow`` and return it (metered in place).

    The arguments are those of :func:`usageflow.integrations.openai.wrap_openai`. Anthropic
    requires ``max_tokens`` on every request, so the reservation is the prompt estimate plus it;
    ``default_max_tokens`` only applies when a request omits it.
    """
    return wrap_client(
        client,
        flow,
        feature_name,
        _ANTHROPIC,
        user_id=user_id,
        weights=weights,
        default_max_tokens=default_max_tokens,
        estimate=estimate,
        ttl=ttl,
    )
