"""Meter the tokens of an ``openai.OpenAI`` or ``openai.AsyncOpenAI`` client.

Usage::

    from openai import OpenAI
    from usageflow.integrations.openai import wrap_openai

    client = wrap_openai(OpenAI(), flow, "gpt-tokens", user_id="user-1")
    client.chat.completions.create(model="gpt-4o-mini", messages=[...])

``wrap_openai`` meters the client in place and returns it, so its types are unchanged. Metered:
``chat.completions.create`` and ``.parse``, ``responses.create`` and ``.parse``, plain and
``stream=True``, and the ``.stream(...)`` helpers of both (they call ``create``); copies made
with ``client.with_options(...)`` are metered the same way. Every call reserves its estimate
first and is refused with ``USAGE_LIMIT_ERROR``, without a request, when it does not fit.
``with_raw_response`` / ``with_streaming_response`` first used after wrapping go through the
metered methods (a raw *stream* is settled on its estimate). See ``docs/ai.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, overload

from usageflow.errors import missing_dependency
from usageflow.flow import AsyncUsageFlow, UsageFlow
from usageflow.integrations._llm import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    Api,
    AsyncClosingManager,
    AsyncMeteredStream,
    AsyncSettler,
    ClientKind,
    ClosingManager,
    Estimate,
    FeatureName,
    StreamTally,
    SyncMeteredStream,
    SyncSettler,
    TokenMeter,
    Tokens,
    UserId,
    Weights,
    patch_helper,
    patch_method,
    wrap_client,
)

try:
    import openai
    from openai.lib.streaming.chat import (
        AsyncChatCompletionStreamManager,
        ChatCompletionStreamManager,
    )
    from openai.lib.streaming.responses import (
        AsyncResponseStreamManager,
        ResponseStreamManager,
    )
except ImportError as exc:  # pragma: no cover - exercised by the missing-dependency test
    raise missing_dependency("openai", "openai") from exc

__all__ = ["wrap_openai"]

_T = TypeVar("_T")
_SyncClientT = TypeVar("_SyncClientT", bound=openai.OpenAI)
_AsyncClientT = TypeVar("_AsyncClientT", bound=openai.AsyncOpenAI)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _details(usage: object, name: str, fields: tuple[str, ...]) -> dict[str, int]:
    details = getattr(usage, name, None)
    found = {field: _int(getattr(details, field, None)) for field in fields}
    return {field: value for field, value in found.items() if value}


class _OpenAIApi:
    """What both OpenAI APIs share: usage is ``<prompt_field>``/``<completion_field>`` plus
    ``total_tokens``, with cached and reasoning tokens in their ``*_details``."""

    prompt_field = ""
    completion_field = ""

    def counts(self, usage: object) -> dict[str, int]:
        prompt, completion = self.prompt_field, self.completion_field
        counts = {
            prompt: _int(getattr(usage, prompt, None)) or 0,
            completion: _int(getattr(usage, completion, None)) or 0,
        }
        counts.update(_details(usage, f"{prompt}_details", ("cached_tokens",)))
        counts.update(_details(usage, f"{completion}_details", ("reasoning_tokens",)))
        return counts

    def reported(self, result: Any) -> Tokens | None:
        usage = getattr(result, "usage", None)
        if usage is None:
            return None
        counts = self.counts(usage)
        total = _int(getattr(usage, "total_tokens", None))
        if total is None:
            total = counts[self.prompt_field] + counts[self.completion_field]
        return Tokens(counts, total, "reported")

    def describe(self, result: Any) -> tuple[str | None, str | None, str | None]:
        return (
            getattr(result, "model", None),
            getattr(result, "id", None),
            getattr(result, "_request_id", None),
        )


class _ChatCompletions(_OpenAIApi):
    """``chat.completions``: usage is ``prompt_tokens``/``completion_tokens``/``total_tokens``;
    a stream reports it in a last chunk with no choices when asked with ``include_usage``."""

    name = "openai.chat.completions"
    request_id_header = "x-request-id"
    prompt_field = "prompt_tokens"
    completion_field = "completion_tokens"
    summed_fields: tuple[str, ...] = ("prompt_tokens", "completion_tokens")

    def prepare(self, request: dict[str, Any], stream: bool) -> bool:
        if not stream:
            return False
        options = request.get("stream_options")
        options = dict(options) if isinstance(options, Mapping) else {}
        asked = options.get("include_usage") is True
        options["include_usage"] = True
        request["stream_options"] = options
        return not asked

    def observe(self, tally: StreamTally, item: Any) -> bool:
        tally.model = getattr(item, "model", None) or tally.model
        tally.response_id = getattr(item, "id", None) or tally.response_id
        choices = getattr(item, "choices", None) or []
        for choice in choices:
            delta = getattr(choice, "delta", None)
            tally.text(getattr(delta, "content", None))
            tally.text(getattr(delta, "refusal", None))
            call = getattr(delta, "function_call", None)
            tally.text(getattr(call, "arguments", None))
            for tool_call in getattr(delta, "tool_calls", None) or []:
                tally.text(getattr(getattr(tool_call, "function", None), "arguments", None))
        usage = getattr(item, "usage", None)
        if usage is not None:
            tally.report(self.counts(usage), final=True, total=getattr(usage, "total_tokens", None))
            if tally.hide_usage and not choices:
                return False
        return True


class _Responses(_OpenAIApi):
    """``responses``: usage is ``input_tokens``/``output_tokens``/``total_tokens``; a stream
    reports it on its ``response.completed`` (or ``.incomplete``/``.failed``) event."""

    name = "openai.responses"
    request_id_header = "x-request-id"
    prompt_field = "input_tokens"
    completion_field = "output_tokens"
    summed_fields: tuple[str, ...] = ("input_tokens", "output_tokens")
    _final = frozenset({"response.completed", "response.incomplete", "response.failed"})

    def prepare(self, request: dict[str, Any], stream: bool) -> bool:
        return False

    def observe(self, tally: StreamTally, item: Any) -> bool:
        kind = getattr(item, "type", None)
        response = getattr(item, "response", None)
        if response is not None:
            tally.model = getattr(response, "model", None) or tally.model
            tally.response_id = getattr(response, "id", None) or tally.response_id
            usage = getattr(response, "usage", None)
            if usage is not None and kind in self._final:
                total = getattr(usage, "total_tokens", None)
                tally.report(self.counts(usage), final=True, total=total)
        if isinstance(kind, str) and kind.endswith(".delta"):
            tally.text(getattr(item, "delta", None))
        return True


_CHAT: Api = _ChatCompletions()
_RESPONSES: Api = _Responses()


class _ChatStreamManager(ClosingManager, ChatCompletionStreamManager[Any]):
    pass


class _AsyncChatStreamManager(AsyncClosingManager, AsyncChatCompletionStreamManager[Any]):
    pass


class _ResponseStreamManager(ClosingManager, ResponseStreamManager[Any]):
    pass


class _AsyncResponseStreamManager(AsyncClosingManager, AsyncResponseStreamManager[Any]):
    pass


class _MeteredStream(SyncMeteredStream[_T], openai.Stream[_T]):
    """An ``openai.Stream`` that settles its reservation when it ends or is closed."""

    def __init__(self, inner: openai.Stream[_T], settler: SyncSettler) -> None:
        self._meter_stream(inner, settler)


class _AsyncMeteredStream(AsyncMeteredStream[_T], openai.AsyncStream[_T]):
    """An ``openai.AsyncStream`` that settles its reservation when it ends or is closed."""

    def __init__(self, inner: openai.AsyncStream[_T], settler: AsyncSettler) -> None:
        self._meter_stream(inner, settler)


def _install(client: openai.OpenAI | openai.AsyncOpenAI, meter: TokenMeter, is_async: bool) -> None:
    stream_type = openai.AsyncStream if is_async else openai.Stream
    metered = _AsyncMeteredStream if is_async else _MeteredStream
    for resource, api in ((client.chat.completions, _CHAT), (client.responses, _RESPONSES)):
        for name in ("create", "parse"):
            patch_method(resource, name, meter, api, stream_type, metered, is_async)
    # The .stream() helpers call the metered create(); their managers close the metered stream.
    if is_async:
        patch_helper(client.chat.completions, "stream", _AsyncChatStreamManager)
        patch_helper(client.responses, "stream", _AsyncResponseStreamManager)
    else:
        patch_helper(client.chat.completions, "stream", _ChatStreamManager)
        patch_helper(client.responses, "stream", _ResponseStreamManager)


_OPENAI = ClientKind("wrap_openai", openai.OpenAI, openai.AsyncOpenAI, _install)


@overload
def wrap_openai(
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
def wrap_openai(
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


def wrap_openai(
    client: openai.OpenAI | openai.AsyncOpenAI,
    flow: UsageFlow | AsyncUsageFlow,
    feature_name: FeatureName,
    *,
    user_id: UserId = None,
    weights: Weights | None = None,
    default_max_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
    estimate: Estimate | None = None,
    ttl: float | None = None,
) -> openai.OpenAI | openai.AsyncOpenAI:
    """Meter ``client``'s tokens in ``flow`` and return it (metered in place).

    ``flow`` is a :class:`~usageflow.UsageFlow` for ``OpenAI`` and an
    :class:`~usageflow.AsyncUsageFlow` for ``AsyncOpenAI``. ``feature_name`` is a string or a
    function of the model name; ``user_id`` a string, a function returning one, or omitted for
    the user of the metered request being served. ``weights`` maps models (exact name, else the
    longest prefix, else ``"*"``) to credits per 1,000 tokens; without one a token is a credit.
    ``default_max_tokens`` is the output reserved when a request sets no cap; ``estimate`` a
    function of the request's arguments returning its prompt tokens (default: the heuristic of
    :mod:`usageflow.integrations._llm.decisions`); ``ttl`` how long a hold lives (default: the
    flow's).
    """
    return wrap_client(
        client,
        flow,
        feature_name,
        _OPENAI,
        user_id=user_id,
        weights=weights,
        default_max_tokens=default_max_tokens,
        estimate=estimate,
        ttl=ttl,
    )
