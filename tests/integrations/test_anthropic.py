"""``wrap_anthropic`` against the real ``anthropic`` client talking to a local Messages API server.

The server (:mod:`tests.support.llm_server`) answers in Anthropic's wire format; nothing of
usageflow or of the client is replaced. What the ledger records is compared with what the server
reported, cache tokens included.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
import pytest_asyncio
from anthropic.lib.streaming import MessageStream, MessageStreamManager
from anthropic.types import MessageParam, TextBlockParam

from tests.support.llm_server import (
    CACHE_CREATION_TOKENS,
    CACHE_READ_TOKENS,
    REPLY,
    LLMServer,
    prompt_tokens,
)
from usageflow import AsyncUsageFlow, ErrorCodes, UsageEvent, UsageFlow, UsageFlowError, ops
from usageflow.integrations._llm import estimate_prompt_tokens
from usageflow.integrations.anthropic import wrap_anthropic

#: What a stream cut by the server raises: the transport's error, wrapped by anthropic 2.17+.
STREAM_CUT = (httpx2.RemoteProtocolError, anthropic.APIConnectionError)

FEATURE = "claude-tokens"
USER = "user-1"
LIMIT = 100_000
MODEL = "claude-test"
MESSAGES: list[MessageParam] = [{"role": "user", "content": "Say something about foxes."}]
CACHED_SYSTEM: list[TextBlockParam] = [
    {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}
]
USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with LLMServer() as running:
        yield running


@pytest.fixture
def flow() -> Iterator[UsageFlow]:
    with UsageFlow("memory://") as built:
        built.create_plan("Free", is_free=True, limits={FEATURE: LIMIT})
        yield built


def _client(server: LLMServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=server.anthropic_base_url, api_key="test-key", max_retries=0
    )


def _aclient(server: LLMServer) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=server.anthropic_base_url, api_key="test-key", max_retries=0
    )


@pytest.fixture
def client(server: LLMServer, flow: UsageFlow) -> Iterator[anthropic.Anthropic]:
    with wrap_anthropic(_client(server), flow, FEATURE, user_id=USER) as wrapped:
        yield wrapped


def _only_event(flow: UsageFlow) -> UsageEvent:
    events = flow.list_events(USER, FEATURE)
    assert len(events) == 1, events
    return events[0]


def _assert_reported(event: UsageEvent, usage: dict[str, int]) -> None:
    assert event.credits_used == sum(usage[name] for name in USAGE_FIELDS)
    assert event.metadata is not None
    assert event.metadata["usage_source"] == "reported"
    for name in USAGE_FIELDS:
        assert event.metadata[name] == usage[name]
    assert event.metadata["total_tokens"] == event.credits_used


# -- messages.create ------------------------------------------------------------------------------
def test_create_commits_input_output_and_cache_tokens(
    client: anthropic.Anthropic, flow: UsageFlow, server: LLMServer
) -> None:
    message = client.messages.create(
        model=MODEL, max_tokens=100, system=CACHED_SYSTEM, messages=MESSAGES
    )

    usage = server.requests[0].usage
    assert usage["cache_creation_input_tokens"] == CACHE_CREATION_TOKENS
    assert usage["cache_read_input_tokens"] == CACHE_READ_TOKENS
    assert message.usage.input_tokens == usage["input_tokens"]
    event = _only_event(flow)
    _assert_reported(event, usage)
    assert event.metadata is not None
    assert event.metadata["model"] == MODEL
    assert event.metadata["api"] == "anthropic.messages"
    assert event.metadata["request_id"] == "req_1"
    assert event.metadata["response_id"] == message.id
    expected = estimate_prompt_tokens({"system": CACHED_SYSTEM, "messages": MESSAGES}) + 100
    assert event.metadata["estimated_tokens"] == expected


def test_create_stream_commits_the_message_delta_usage(
    client: anthropic.Anthropic, flow: UsageFlow, server: LLMServer
) -> None:
    stream = client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES, stream=True)
    assert isinstance(stream, anthropic.Stream)
    with stream:
        kinds = [event.type for event in stream]

    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    event = _only_event(flow)
    _assert_reported(event, server.requests[0].usage)
    assert event.metadata is not None
    assert event.metadata["stream"] is True
    assert event.metadata["stream_completed"] is True


def test_the_stream_helper_is_metered(
    client: anthropic.Anthropic, flow: UsageFlow, server: LLMServer
) -> None:
    manager = client.messages.stream(
        model=MODEL, max_tokens=100, system=CACHED_SYSTEM, messages=MESSAGES
    )
    assert isinstance(manager, MessageStreamManager)
    assert server.requests == []  # like the client's own, the request is made on enter
    with manager as stream:
        assert isinstance(stream, MessageStream)
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text.split() == REPLY
    assert final.usage.cache_read_input_tokens == CACHE_READ_TOKENS
    _assert_reported(_only_event(flow), server.requests[0].usage)


def test_a_stream_helper_left_early_settles_on_what_arrived(
    client: anthropic.Anthropic, flow: UsageFlow, server: LLMServer
) -> None:
    with client.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream:
        for event in stream:
            if event.type == "content_block_delta":
                break

    event = _only_event(flow)
    assert event.metadata is not None
    assert event.metadata["usage_source"] == "estimated"
    assert event.metadata["stream_completed"] is False
    # the input was reported by message_start; the output is counted from what arrived
    assert event.metadata["input_tokens"] == prompt_tokens(server.requests[0].body)
    assert event.metadata["output_tokens"] == 1
    assert event.credits_used == event.metadata["total_tokens"]


# -- refusal, errors, truncation ------------------------------------------------------------------
def test_a_refused_call_makes_no_request(server: LLMServer) -> None:
    with UsageFlow("memory://") as flow:
        flow.create_plan("Free", is_free=True, limits={FEATURE: 500})
        with wrap_anthropic(_client(server), flow, FEATURE, user_id=USER) as client:
            with pytest.raises(UsageFlowError) as refused:
                client.messages.create(model=MODEL, max_tokens=1000, messages=MESSAGES)
            with (
                pytest.raises(UsageFlowError),
                client.messages.stream(model=MODEL, max_tokens=1000, messages=MESSAGES),
            ):
                pass  # pragma: no cover - refused on enter

        assert refused.value.code is ErrorCodes.USAGE_LIMIT_ERROR
        assert server.requests == []
        assert flow.list_events(USER, FEATURE) == []
        assert flow.fetch_usage(USER, FEATURE).current == 0


@pytest.mark.parametrize(
    ("model", "error"),
    [
        ("claude-error-400", anthropic.BadRequestError),
        ("claude-error-500", anthropic.InternalServerError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_an_api_error_costs_nothing(
    client: anthropic.Anthropic,
    flow: UsageFlow,
    server: LLMServer,
    model: str,
    error: type[Exception],
    stream: bool,
) -> None:
    with pytest.raises(error):
        client.messages.create(model=model, max_tokens=100, messages=MESSAGES, stream=stream)

    assert len(server.requests) == 1
    assert flow.list_events(USER, FEATURE) == []
    assert flow.fetch_usage(USER, FEATURE).current == 0


def test_a_truncated_stream_settles_on_the_tokens_received(
    client: anthropic.Anthropic, flow: UsageFlow, server: LLMServer
) -> None:
    texts: list[str] = []
    with pytest.raises(STREAM_CUT):  # noqa: PT012
        for event in client.messages.create(
            model="claude-truncate", max_tokens=100, messages=MESSAGES, stream=True
        ):
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                texts.append(event.delta.text)

    assert len(texts) == len(REPLY) // 2
    event = _only_event(flow)
    assert event.metadata is not None
    assert event.metadata["usage_source"] == "estimated"
    assert event.metadata["stream_completed"] is False
    assert event.metadata["input_tokens"] == prompt_tokens(server.requests[0].body)
    assert event.metadata["output_tokens"] == max(len(texts), -(-len("".join(texts)) // 4))
    assert event.credits_used == event.metadata["input_tokens"] + event.metadata["output_tokens"]


# -- configuration --------------------------------------------------------------------------------
def test_weights_turn_tokens_into_credits(server: LLMServer, flow: UsageFlow) -> None:
    weights = {"claude-test": 3000, "claude": 1000}
    with wrap_anthropic(_client(server), flow, FEATURE, user_id=USER, weights=weights) as client:
        client.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)

    usage = server.requests[0].usage
    event = _only_event(flow)
    assert event.credits_used == 3 * sum(usage[name] for name in USAGE_FIELDS)
    assert event.metadata is not None
    assert event.metadata["total_tokens"] == sum(usage[name] for name in USAGE_FIELDS)


def test_copies_made_with_options_are_metered(client: anthropic.Anthropic, flow: UsageFlow) -> None:
    client.with_options(timeout=5.0).messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    assert len(flow.list_events(USER, FEATURE)) == 1


def test_setup_mistakes_fail_loudly(server: LLMServer, flow: UsageFlow) -> None:
    with pytest.raises(UsageFlowError, match="AsyncUsageFlow"):
        wrap_anthropic(_aclient(server), flow, FEATURE)  # type: ignore[call-overload]
    with _client(server) as plain:
        wrap_anthropic(plain, flow, FEATURE, user_id=USER)
        with pytest.raises(UsageFlowError, match="already metered"):
            wrap_anthropic(plain, flow, FEATURE)


def test_a_missing_anthropic_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "anthropic", None)
    monkeypatch.delitem(sys.modules, "usageflow.integrations.anthropic")
    with pytest.raises(UsageFlowError, match=r"pip install 'usageflow\[anthropic\]'"):
        importlib.import_module("usageflow.integrations.anthropic")


# -- concurrency ----------------------------------------------------------------------------------
CONCURRENT_CALLS = 50
FITTING_CALLS = 20


def _exact_estimate(request: Any) -> int:
    """The input tokens the server will report, so that an estimate equals the actual cost."""
    return prompt_tokens(dict(request))


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'llm.db'}"


def test_concurrent_messages_never_commit_more_than_the_budget(store_url: str) -> None:
    budget = FITTING_CALLS * (prompt_tokens({"messages": MESSAGES}) + len(REPLY))
    with LLMServer(delay=0.05) as server, UsageFlow(store_url) as flow:
        flow.create_plan("Free", is_free=True, limits={FEATURE: budget})
        client = wrap_anthropic(
            _client(server), flow, FEATURE, user_id=USER, estimate=_exact_estimate
        )

        def one(index: int) -> str:
            try:
                if index % 2:
                    with client.messages.stream(
                        model=MODEL, max_tokens=len(REPLY), messages=MESSAGES
                    ) as stream:
                        stream.until_done()
                else:
                    client.messages.create(model=MODEL, max_tokens=len(REPLY), messages=MESSAGES)
            except UsageFlowError as refused:
                assert refused.code is ErrorCodes.USAGE_LIMIT_ERROR
                return "refused"
            return "done"

        with client, ThreadPoolExecutor(max_workers=CONCURRENT_CALLS) as pool:
            outcomes = list(pool.map(one, range(CONCURRENT_CALLS)))

        assert outcomes.count("done") == FITTING_CALLS
        assert len(server.requests) == FITTING_CALLS
        events = flow.list_events(USER, FEATURE, limit=CONCURRENT_CALLS)
        assert sum(e.credits_used or 0 for e in events) == budget
        assert flow.store.call(ops.ledger_check(user_id=USER, feature_name=FEATURE)) == (
            budget,
            budget,
        )


# -- asyncio --------------------------------------------------------------------------------------
@pytest_asyncio.fixture
async def aflow() -> AsyncIterator[AsyncUsageFlow]:
    async with AsyncUsageFlow("memory://") as built:
        await built.create_plan("Free", is_free=True, limits={FEATURE: LIMIT})
        yield built


@pytest_asyncio.fixture
async def aclient(
    server: LLMServer, aflow: AsyncUsageFlow
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with wrap_anthropic(_aclient(server), aflow, FEATURE, user_id=USER) as wrapped:
        yield wrapped


@pytest.mark.asyncio
async def test_async_create_stream_and_helper_commit_the_reported_tokens(
    aclient: anthropic.AsyncAnthropic, aflow: AsyncUsageFlow, server: LLMServer
) -> None:
    await aclient.messages.create(model=MODEL, max_tokens=50, messages=MESSAGES)
    stream = await aclient.messages.create(
        model=MODEL, max_tokens=50, messages=MESSAGES, stream=True
    )
    assert isinstance(stream, anthropic.AsyncStream)
    async with stream:
        kinds = [event.type async for event in stream]
    assert kinds[-1] == "message_stop"
    async with aclient.messages.stream(
        model=MODEL, max_tokens=50, system=CACHED_SYSTEM, messages=MESSAGES
    ) as helper:
        final = await helper.get_final_message()
    assert final.usage.cache_creation_input_tokens == CACHE_CREATION_TOKENS

    events = list(reversed(await aflow.list_events(USER, FEATURE)))
    assert len(events) == 3
    for event, request in zip(events, server.requests, strict=True):
        _assert_reported(event, request.usage)


@pytest.mark.asyncio
async def test_async_raw_responses_commit_the_reported_tokens(
    aclient: anthropic.AsyncAnthropic, aflow: AsyncUsageFlow, server: LLMServer
) -> None:
    raw = await aclient.messages.with_raw_response.create(
        model=MODEL, max_tokens=20, messages=MESSAGES
    )
    message = await raw.parse()
    async with aclient.messages.with_streaming_response.create(
        model=MODEL, max_tokens=20, messages=MESSAGES
    ) as streamed:
        streamed_message = await streamed.parse()

    assert streamed_message.id != message.id
    events = list(reversed(await aflow.list_events(USER, FEATURE)))
    for event, request in zip(events, server.requests, strict=True):
        _assert_reported(event, request.usage)


@pytest.mark.asyncio
async def test_async_truncation_and_errors(
    aclient: anthropic.AsyncAnthropic, aflow: AsyncUsageFlow, server: LLMServer
) -> None:
    with pytest.raises(anthropic.InternalServerError):
        await aclient.messages.create(model="claude-error-500", max_tokens=50, messages=MESSAGES)
    assert await aflow.list_events(USER, FEATURE) == []

    received = 0
    with pytest.raises(STREAM_CUT):  # noqa: PT012
        async with aclient.messages.stream(
            model="claude-truncate", max_tokens=50, messages=MESSAGES
        ) as stream:
            async for _text in stream.text_stream:
                received += 1
    assert received == len(REPLY) // 2

    (event,) = await aflow.list_events(USER, FEATURE)
    assert event.metadata is not None
    assert event.metadata["usage_source"] == "estimated"
    assert event.metadata["stream_completed"] is False
    assert event.metadata["input_tokens"] == prompt_tokens(server.requests[1].body)
    assert (await aflow.fetch_usage(USER, FEATURE)).current == event.credits_used


@pytest.mark.asyncio
async def test_async_concurrent_messages_never_commit_more_than_the_budget(
    store_url: str,
) -> None:
    budget = FITTING_CALLS * (prompt_tokens({"messages": MESSAGES}) + len(REPLY))
    with LLMServer(delay=0.05) as server:
        async with AsyncUsageFlow(store_url) as flow:
            await flow.create_plan("Free", is_free=True, limits={FEATURE: budget})
            client = wrap_anthropic(
                _aclient(server), flow, FEATURE, user_id=USER, estimate=_exact_estimate
            )

            async def one() -> str:
                try:
                    await client.messages.create(
                        model=MODEL, max_tokens=len(REPLY), messages=MESSAGES
                    )
                except UsageFlowError as refused:
                    assert refused.code is ErrorCodes.USAGE_LIMIT_ERROR
                    return "refused"
                return "done"

            async with client:
                outcomes = await asyncio.gather(*(one() for _ in range(CONCURRENT_CALLS)))

            assert outcomes.count("done") == FITTING_CALLS
            assert len(server.requests) == FITTING_CALLS
            assert flow.store.call(ops.ledger_check(user_id=USER, feature_name=FEATURE)) == (
                budget,
                budget,
            )
