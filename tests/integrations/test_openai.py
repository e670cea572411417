"""``wrap_openai`` against the real ``openai`` client talking to a local OpenAI-compatible server.

The server (:mod:`tests.support.llm_server`) answers in OpenAI's wire formats; nothing of
usageflow or of the client is replaced. What the ledger records is compared with what the server
reported.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import importlib.util
import logging
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import openai
import pytest
import pytest_asyncio
from openai.types.chat import ChatCompletionMessageParam

from tests.support.llm_server import REPLY, LLMServer, prompt_tokens
from usageflow import AsyncUsageFlow, ErrorCodes, UsageEvent, UsageFlow, UsageFlowError, ops
from usageflow.context import current_user_id
from usageflow.integrations._llm import estimate_prompt_tokens
from usageflow.integrations.openai import wrap_openai

FEATURE = "gpt-tokens"
USER = "user-1"
LIMIT = 100_000
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Say something about foxes."}
]


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with LLMServer() as running:
        yield running


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'llm.db'}"


def _plan(flow: UsageFlow, limit: int = LIMIT) -> None:
    flow.create_plan("Free", is_free=True, limits={FEATURE: limit})


@pytest.fixture
def flow() -> Iterator[UsageFlow]:
    with UsageFlow("memory://") as built:
        _plan(built)
        yield built


def _client(server: LLMServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base_url, api_key="test-key", max_retries=0)


def _aclient(server: LLMServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="test-key", max_retries=0)


@pytest.fixture
def client(server: LLMServer, flow: UsageFlow) -> Iterator[openai.OpenAI]:
    with wrap_openai(_client(server), flow, FEATURE, user_id=USER) as wrapped:
        yield wrapped


def _only_event(flow: UsageFlow, user: str = USER, feature: str = FEATURE) -> UsageEvent:
    events = flow.list_events(user, feature)
    assert len(events) == 1, events
    return events[0]


def _assert_nothing_charged(flow: UsageFlow, feature: str = FEATURE) -> None:
    assert flow.list_events(USER, feature) == []
    assert flow.fetch_usage(USER, feature).current == 0  # no hold left behind


# -- chat completions -----------------------------------------------------------------------------
def test_chat_completion_commits_the_reported_tokens(
    client: openai.OpenAI, flow: UsageFlow, server: LLMServer
) -> None:
    completion = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=50)

    assert completion.usage is not None
    event = _only_event(flow)
    assert event.credits_used == completion.usage.total_tokens
    assert server.requests[0].usage["total_tokens"] == completion.usage.total_tokens
    assert event.metadata is not None
    assert event.metadata == {
        "model": "gpt-4o",
        "api": "openai.chat.completions",
        "prompt_tokens": completion.usage.prompt_tokens,
        "completion_tokens": completion.usage.completion_tokens,
        "total_tokens": completion.usage.total_tokens,
        "usage_source": "reported",
        "estimated_tokens": estimate_prompt_tokens({"messages": MESSAGES}) + 50,
        "request_id": "req_1",
        "response_id": "chatcmpl-1",
    }
    assert flow.fetch_usage(USER, FEATURE).current == completion.usage.total_tokens


def test_chat_stream_commits_the_usage_chunk_and_hides_it(
    client: openai.OpenAI, flow: UsageFlow, server: LLMServer
) -> None:
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    assert isinstance(stream, openai.Stream)
    with stream:
        chunks = list(stream)

    # the caller did not ask for the usage chunk, so they do not see it
    assert all(chunk.choices for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).split() == REPLY
    assert server.requests[0].body["stream_options"] == {"include_usage": True}
    event = _only_event(flow)
    assert event.credits_used == server.requests[0].usage["total_tokens"]
    assert event.metadata is not None
    assert event.metadata["usage_source"] == "reported"
    assert event.metadata["stream"] is True
    assert event.metadata["stream_completed"] is True
    assert event.metadata["completion_tokens"] == len(REPLY)


def test_chat_stream_shows_the_usage_chunk_when_asked_for(
    client: openai.OpenAI, flow: UsageFlow, server: LLMServer
) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert _only_event(flow).credits_used == chunks[-1].usage.total_tokens


def test_the_stream_helper_is_metered(
    client: openai.OpenAI, flow: UsageFlow, server: LLMServer
) -> None:
    with client.chat.completions.stream(model="gpt-4o", messages=MESSAGES) as stream:
        final = stream.get_final_completion()

    assert final.usage is None  # as without the wrapper: the caller did not ask for it
    assert _only_event(flow).credits_used == server.requests[0].usage["total_tokens"]


# -- responses ------------------------------------------------------------------------------------
def test_responses_create_commits_the_reported_tokens(
    client: openai.OpenAI, flow: UsageFlow
) -> None:
    response = client.responses.create(model="gpt-4o", input="Hello", max_output_tokens=40)

    assert response.usage is not None
    event = _only_event(flow)
    assert event.credits_used == response.usage.total_tokens
    assert event.metadata is not None
    assert event.metadata["input_tokens"] == response.usage.input_tokens
    assert event.metadata["output_tokens"] == response.usage.output_tokens
    assert event.metadata["response_id"] == response.id
    assert event.metadata["api"] == "openai.responses"


def test_responses_stream_commits_the_completed_event(
    client: openai.OpenAI, flow: UsageFlow, server: LLMServer
) -> None:
    with client.responses.create(model="gpt-4o", input="Hello", stream=True) as stream:
        kinds = [event.type for event in stream]

    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    event = _only_event(flow)
    assert event.credits_used == server.requests[0].usage["total_tokens"]
    assert event.metadata is not None
    assert event.metadata["usage_source"] == "reported"


def test_truncated_responses_stream_settles_on_what_arrived(
    client: openai.OpenAI, flow: UsageFlow
) -> None:
    received = []
    with pytest.raises(openai.APIConnectionError):  # noqa: PT012
        for event in client.responses.create(model="gpt-4o-truncate", input="Hi", stream=True):
            received.append(event)

    deltas = [e for e in received if e.type == "response.output_text.delta"]
    assert len(deltas) == len(REPLY) // 2
    event = _only_event(flow)
    assert event.metadata is not None
    assert event.metadata["usage_source"] == "estimated"
    assert event.metadata["stream_completed"] is False
    assert event.metadata["output_tokens"] >= len(deltas)
    assert event.credits_used == event.metadata["total_tokens"]


def test_the_responses_stream_helper_and_parse_are_metered(
    client: openai.OpenAI, flow: UsageFlow, server: LLMServer
) -> None:
    with client.responses.stream(model="gpt-4o", input="Hello") as stream:
        final = stream.get_final_response()
    parsed = client.chat.completions.parse(model="gpt-4o", messages=MESSAGES, max_tokens=5)

    assert final.usage is not None and parsed.usage is not None
    events = list(reversed(flow.list_events(USER, FEATURE)))
    assert [e.credits_used for e in events] == [
        final.usage.total_tokens,
        parsed.usage.total_tokens,
    ]
    assert [r.usage["total_tokens"] for r in server.requests] == [e.credits_used for e in events]


def test_leaving_a_stream_helper_early_settles_at_once(
    client: openai.OpenAI, flow: UsageFlow
) -> None:
    with client.chat.completions.stream(model="gpt-4o", messages=MESSAGES) as stream:
        for event in stream:
            if event.type == "content.delta":
                break
        assert flow.list_events(USER, FEATURE) == []

    event = _only_event(flow)  # on leaving the block, while `stream` is still referenced
    assert event.metadata is not None
    assert event.metadata["usage_source"] == "estimated"
    assert event.metadata["stream_completed"] is False


def test_raw_responses_commit_the_reported_tokens(
    client: openai.OpenAI, flow: UsageFlow, server: LLMServer
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=5
    )
    assert raw.headers["x-request-id"] == "req_1"
    completion = raw.parse()

    assert completion.usage is not None
    event = _only_event(flow)
    assert event.credits_used == completion.usage.total_tokens
    assert event.metadata is not None
    assert event.metadata["request_id"] == "req_1"
    assert event.metadata["usage_source"] == "reported"


def test_an_abandoned_stream_is_settled_when_collected(
    client: openai.OpenAI, flow: UsageFlow
) -> None:
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    next(stream)
    del stream
    gc.collect()

    event = _only_event(flow)
    assert event.metadata is not None
    assert event.metadata["usage_source"] == "estimated"
    assert event.metadata["stream_completed"] is False


def test_the_prompt_estimate_counts_text_and_skips_binary_payloads() -> None:
    text = "x" * 40
    image = "data:image/png;base64," + "A" * 4000
    content = [
        {"type": "text", "text": text},
        {"type": "image_url", "image_url": {"url": image}},
        {"type": "input_audio", "input_audio": {"data": "B" * 4000, "format": "wav"}},
    ]
    # 40 + len("text") + len("image_url") + len("input_audio") + len("wav") + len("user")
    chars = 40 + 4 + 9 + 11 + 3 + 4
    assert estimate_prompt_tokens({"messages": [{"role": "user", "content": content}]}) == (
        -(-chars // 4) + 4 + 3
    )
    assert estimate_prompt_tokens({"input": "abcd", "instructions": "efgh"}) == 2 + 8 + 3


def test_messages_given_as_a_generator_are_estimated_and_sent_whole(
    client: openai.OpenAI, flow: UsageFlow, server: LLMServer
) -> None:
    client.chat.completions.create(model="m", messages=(m for m in MESSAGES), max_tokens=5)

    assert server.requests[0].body["messages"] == MESSAGES
    event = _only_event(flow)
    assert event.metadata is not None
    assert event.metadata["estimated_tokens"] == estimate_prompt_tokens({"messages": MESSAGES}) + 5


# -- refusal, errors, truncation ------------------------------------------------------------------
def test_a_refused_call_makes_no_request(server: LLMServer) -> None:
    with UsageFlow("memory://") as flow:
        _plan(flow, limit=100)
        with wrap_openai(_client(server), flow, FEATURE, user_id=USER) as client:
            with pytest.raises(UsageFlowError) as refused:
                client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=500)
            with pytest.raises(UsageFlowError):
                client.responses.create(model="gpt-4o", input="Hi", stream=True)

        assert refused.value.code is ErrorCodes.USAGE_LIMIT_ERROR
        assert refused.value.details["limit"] == 100
        assert server.requests == []
        _assert_nothing_charged(flow)


@pytest.mark.parametrize(
    ("model", "error"),
    [
        ("gpt-4o-error-400", openai.BadRequestError),
        ("gpt-4o-error-500", openai.InternalServerError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_an_api_error_costs_nothing(
    client: openai.OpenAI,
    flow: UsageFlow,
    server: LLMServer,
    model: str,
    error: type[Exception],
    stream: bool,
) -> None:
    with pytest.raises(error):
        client.chat.completions.create(model=model, messages=MESSAGES, stream=stream)

    assert len(server.requests) == 1
    _assert_nothing_charged(flow)


def test_a_truncated_stream_settles_on_the_tokens_received(
    client: openai.OpenAI, flow: UsageFlow
) -> None:
    received = []
    with pytest.raises(openai.APIConnectionError):  # noqa: PT012
        for chunk in client.chat.completions.create(
            model="gpt-4o-truncate", messages=MESSAGES, stream=True
        ):
            received.append(chunk)

    assert len(received) == len(REPLY) // 2
    chars = sum(len(c.choices[0].delta.content or "") for c in received)
    event = _only_event(flow)
    assert event.metadata is not None
    assert event.metadata["usage_source"] == "estimated"
    assert event.metadata["stream_completed"] is False
    assert event.metadata["prompt_tokens"] == estimate_prompt_tokens({"messages": MESSAGES})
    assert event.metadata["completion_tokens"] == max(len(received), -(-chars // 4))
    assert (
        event.credits_used == event.metadata["prompt_tokens"] + event.metadata["completion_tokens"]
    )
    assert flow.fetch_usage(USER, FEATURE).current == event.credits_used


def test_a_stream_closed_early_settles_on_the_tokens_received(
    client: openai.OpenAI, flow: UsageFlow
) -> None:
    with client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True) as stream:
        first, second = next(stream), next(stream)

    chars = sum(len(chunk.choices[0].delta.content or "") for chunk in (first, second))
    event = _only_event(flow)
    assert event.metadata is not None
    assert event.metadata["usage_source"] == "estimated"
    assert event.metadata["stream_completed"] is False
    assert event.metadata["completion_tokens"] == max(2, -(-chars // 4))
    stream.close()  # closing again settles nothing more
    assert len(flow.list_events(USER, FEATURE)) == 1


def test_a_store_failure_while_settling_is_logged_not_raised(
    server: LLMServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer has been paid for by then: the caller keeps it, the hold expires by itself."""
    path = tmp_path / "locked.db"
    with UsageFlow(f"sqlite:///{path}?timeout=0.1") as flow:
        _plan(flow)
        with wrap_openai(_client(server), flow, FEATURE, user_id=USER) as client:
            stream = client.chat.completions.create(
                model="m", messages=MESSAGES, max_tokens=20, stream=True
            )
            blocker = sqlite3.connect(path, isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database
            try:
                with caplog.at_level(logging.ERROR, logger="usageflow"):
                    chunks = list(stream)
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()

        assert "".join(c.choices[0].delta.content or "" for c in chunks).split() == REPLY
        assert "could not commit" in caplog.text
        assert flow.list_events(USER, FEATURE) == []
        held = estimate_prompt_tokens({"messages": MESSAGES}) + 20
        assert flow.fetch_usage(USER, FEATURE).current == held  # until the hold expires


# -- configuration --------------------------------------------------------------------------------
def test_weights_and_features_per_model(server: LLMServer) -> None:
    def feature(model: str) -> str:
        return "mini-tokens" if "mini" in model else "big-tokens"

    with UsageFlow("memory://") as flow:
        flow.create_plan("Free", is_free=True, limits={"mini-tokens": LIMIT, "big-tokens": LIMIT})
        weights = {"gpt-4o": 2000, "gpt-4o-mini": 0.5, "*": 1000}
        with wrap_openai(_client(server), flow, feature, user_id=USER, weights=weights) as client:
            mini = client.chat.completions.create(
                model="gpt-4o-mini-2024-07-18", messages=MESSAGES, max_tokens=10
            )
            big = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=10)
            other = client.responses.create(model="o3", input="Hi", max_output_tokens=10)

        assert mini.usage is not None and big.usage is not None and other.usage is not None
        mini_event = _only_event(flow, feature="mini-tokens")
        assert mini_event.credits_used == -(-mini.usage.total_tokens // 2000)  # 0.5 per 1k
        assert mini_event.metadata is not None
        assert mini_event.metadata["total_tokens"] == mini.usage.total_tokens
        big_events = flow.list_events(USER, "big-tokens")
        assert [e.credits_used for e in big_events] == [
            other.usage.total_tokens,
            2 * big.usage.total_tokens,
        ]


def test_the_estimate_and_output_cap_size_the_reservation(server: LLMServer) -> None:
    with UsageFlow("memory://") as flow:
        _plan(flow, limit=100)
        wrapped = wrap_openai(
            _client(server),
            flow,
            FEATURE,
            user_id=USER,
            estimate=lambda request: 90,
            default_max_tokens=20,
        )
        with wrapped as client:
            for cap in ({"max_tokens": 11}, {"max_completion_tokens": 11}, {}):
                with pytest.raises(UsageFlowError) as refused:
                    client.chat.completions.create(model="m", messages=MESSAGES, **cap)
                assert refused.value.code is ErrorCodes.USAGE_LIMIT_ERROR
            with pytest.raises(UsageFlowError):  # n choices reserve n outputs
                client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=6, n=2)
            assert server.requests == []
            client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=10)
        assert len(server.requests) == 1


def test_the_user_comes_from_the_metered_request(server: LLMServer, flow: UsageFlow) -> None:
    with wrap_openai(_client(server), flow, FEATURE) as client:
        with pytest.raises(UsageFlowError) as no_user:
            client.chat.completions.create(model="m", messages=MESSAGES)
        assert no_user.value.code is ErrorCodes.USAGE_INVALID_PARAMS
        assert server.requests == []

        token = current_user_id.set("user-from-request")
        try:
            client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=5)
        finally:
            current_user_id.reset(token)

    assert len(flow.list_events("user-from-request", FEATURE)) == 1


def test_user_id_may_be_a_function(server: LLMServer, flow: UsageFlow) -> None:
    with wrap_openai(_client(server), flow, FEATURE, user_id=lambda: "user-9") as client:
        client.responses.create(model="m", input="Hi", max_output_tokens=5)
    assert len(flow.list_events("user-9", FEATURE)) == 1


def test_copies_made_with_options_are_metered(client: openai.OpenAI, flow: UsageFlow) -> None:
    copy = client.with_options(timeout=5.0)
    copy.chat.completions.create(model="m", messages=MESSAGES, max_tokens=5)
    assert len(flow.list_events(USER, FEATURE)) == 1


def test_setup_mistakes_fail_loudly(server: LLMServer, flow: UsageFlow) -> None:
    with _client(server) as plain:
        with pytest.raises(UsageFlowError, match="AsyncUsageFlow"):
            wrap_openai(_aclient(server), flow, FEATURE)  # type: ignore[call-overload]
        wrap_openai(plain, flow, FEATURE)
        with pytest.raises(UsageFlowError, match="already metered"):
            wrap_openai(plain, flow, FEATURE)
        for bad in ({"weights": {"gpt-4o": 0}}, {"default_max_tokens": -1}, {"ttl": 0}):
            with pytest.raises(UsageFlowError) as raised:
                wrap_openai(_client(server), flow, FEATURE, **bad)
            assert raised.value.code is ErrorCodes.USAGE_CONFIG_ERROR
        with pytest.raises(UsageFlowError):
            wrap_openai(object(), flow, FEATURE)  # type: ignore[call-overload]


def test_a_missing_openai_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)
    monkeypatch.delitem(sys.modules, "usageflow.integrations.openai")
    with pytest.raises(UsageFlowError, match=r"pip install 'usageflow\[openai\]'") as raised:
        importlib.import_module("usageflow.integrations.openai")
    assert raised.value.code is ErrorCodes.USAGE_CONFIG_ERROR


# -- concurrency ----------------------------------------------------------------------------------
def _exact_estimate(request: Any) -> int:
    """The prompt tokens the server will report, so that an estimate equals the actual cost."""
    return prompt_tokens(dict(request))


CONCURRENT_CALLS = 50
FITTING_CALLS = 20


def test_concurrent_completions_never_commit_more_than_the_budget(store_url: str) -> None:
    per_call = prompt_tokens({"messages": MESSAGES}) + len(REPLY)
    budget = FITTING_CALLS * per_call
    with LLMServer(delay=0.05) as server, UsageFlow(store_url) as flow:
        _plan(flow, limit=budget)
        client = wrap_openai(_client(server), flow, FEATURE, user_id=USER, estimate=_exact_estimate)

        def one(_: int) -> str:
            try:
                client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=len(REPLY))
            except UsageFlowError as refused:
                assert refused.code is ErrorCodes.USAGE_LIMIT_ERROR
                return "refused"
            return "done"

        with client, ThreadPoolExecutor(max_workers=CONCURRENT_CALLS) as pool:
            outcomes = list(pool.map(one, range(CONCURRENT_CALLS)))

        assert outcomes.count("done") == FITTING_CALLS
        assert outcomes.count("refused") == CONCURRENT_CALLS - FITTING_CALLS
        assert len(server.requests) == FITTING_CALLS
        events = flow.list_events(USER, FEATURE, limit=CONCURRENT_CALLS)
        committed = sum(e.credits_used or 0 for e in events)
        assert committed == sum(r.usage["total_tokens"] for r in server.requests) == budget
        assert flow.store.call(ops.ledger_check(user_id=USER, feature_name=FEATURE)) == (
            budget,
            budget,
        )
        assert flow.fetch_usage(USER, FEATURE).current == budget


# -- asyncio --------------------------------------------------------------------------------------
@pytest_asyncio.fixture
async def aflow() -> AsyncIterator[AsyncUsageFlow]:
    async with AsyncUsageFlow("memory://") as built:
        await built.create_plan("Free", is_free=True, limits={FEATURE: LIMIT})
        yield built


@pytest_asyncio.fixture
async def aclient(server: LLMServer, aflow: AsyncUsageFlow) -> AsyncIterator[openai.AsyncOpenAI]:
    async with wrap_openai(_aclient(server), aflow, FEATURE, user_id=USER) as wrapped:
        yield wrapped


async def _aonly_event(flow: AsyncUsageFlow) -> UsageEvent:
    events = await flow.list_events(USER, FEATURE)
    assert len(events) == 1, events
    return events[0]


@pytest.mark.asyncio
async def test_async_chat_completion_commits_the_reported_tokens(
    aclient: openai.AsyncOpenAI, aflow: AsyncUsageFlow
) -> None:
    completion = await aclient.chat.completions.create(model="m", messages=MESSAGES)
    assert completion.usage is not None
    assert (await _aonly_event(aflow)).credits_used == completion.usage.total_tokens


@pytest.mark.asyncio
async def test_async_streams_commit_the_reported_tokens(
    aclient: openai.AsyncOpenAI, aflow: AsyncUsageFlow, server: LLMServer
) -> None:
    stream = await aclient.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    assert isinstance(stream, openai.AsyncStream)
    async with stream:
        chunks = [chunk async for chunk in stream]
    assert all(chunk.choices for chunk in chunks)

    async with await aclient.responses.create(model="m", input="Hi", stream=True) as events:
        kinds = [event.type async for event in events]
    assert kinds[-1] == "response.completed"

    recorded = await aflow.list_events(USER, FEATURE)
    assert [e.credits_used for e in reversed(recorded)] == [
        r.usage["total_tokens"] for r in server.requests
    ]
    assert all(e.metadata and e.metadata["usage_source"] == "reported" for e in recorded)


@pytest.mark.asyncio
async def test_async_truncated_and_closed_streams_settle_on_what_arrived(
    aclient: openai.AsyncOpenAI, aflow: AsyncUsageFlow
) -> None:
    received = 0
    with pytest.raises(openai.APIConnectionError):  # noqa: PT012
        async for _chunk in await aclient.chat.completions.create(
            model="m-truncate", messages=MESSAGES, stream=True
        ):
            received += 1
    assert received == len(REPLY) // 2

    stream = await aclient.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    await stream.__anext__()
    await stream.aclose()

    truncated, closed = reversed(await aflow.list_events(USER, FEATURE))
    for event in (truncated, closed):
        assert event.metadata is not None
        assert event.metadata["usage_source"] == "estimated"
        assert event.metadata["stream_completed"] is False
    assert closed.metadata is not None and closed.metadata["completion_tokens"] == 1


@pytest.mark.asyncio
async def test_async_abandoned_stream_is_settled_when_collected(
    aclient: openai.AsyncOpenAI, aflow: AsyncUsageFlow
) -> None:
    stream = await aclient.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    await stream.__anext__()
    del stream
    gc.collect()  # the event loop then closes the async generator, which settles
    for _ in range(100):
        if events := await aflow.list_events(USER, FEATURE):
            break
        await asyncio.sleep(0.01)

    (event,) = events
    assert event.metadata is not None
    assert event.metadata["stream_completed"] is False


@pytest.mark.asyncio
async def test_async_stream_helpers_are_metered(
    aclient: openai.AsyncOpenAI, aflow: AsyncUsageFlow, server: LLMServer
) -> None:
    async with aclient.chat.completions.stream(model="m", messages=MESSAGES) as chat:
        await chat.until_done()
    async with aclient.responses.stream(model="m", input="Hi") as response:
        async for event in response:
            if event.type == "response.output_text.delta":
                break

    completed, left = reversed(await aflow.list_events(USER, FEATURE))
    assert completed.credits_used == server.requests[0].usage["total_tokens"]
    assert left.metadata is not None
    assert left.metadata["usage_source"] == "estimated"
    assert left.metadata["stream_completed"] is False


@pytest.mark.asyncio
async def test_async_refusal_and_errors_cost_nothing(
    aclient: openai.AsyncOpenAI, aflow: AsyncUsageFlow, server: LLMServer
) -> None:
    with pytest.raises(openai.InternalServerError):
        await aclient.chat.completions.create(model="m-error-500", messages=MESSAGES)
    with pytest.raises(UsageFlowError) as refused:
        await aclient.chat.completions.create(model="m", messages=MESSAGES, max_tokens=LIMIT)
    assert refused.value.code is ErrorCodes.USAGE_LIMIT_ERROR
    assert len(server.requests) == 1
    assert await aflow.list_events(USER, FEATURE) == []
    assert (await aflow.fetch_usage(USER, FEATURE)).current == 0


@pytest.mark.asyncio
async def test_async_concurrent_completions_never_commit_more_than_the_budget(
    store_url: str,
) -> None:
    per_call = prompt_tokens({"messages": MESSAGES}) + len(REPLY)
    budget = FITTING_CALLS * per_call
    with LLMServer(delay=0.05) as server:
        async with AsyncUsageFlow(store_url) as flow:
            await flow.create_plan("Free", is_free=True, limits={FEATURE: budget})
            client = wrap_openai(
                _aclient(server), flow, FEATURE, user_id=USER, estimate=_exact_estimate
            )

            async def one() -> str:
                try:
                    await client.chat.completions.create(
                        model="m", messages=MESSAGES, max_tokens=len(REPLY)
                    )
                except UsageFlowError as refused:
                    assert refused.code is ErrorCodes.USAGE_LIMIT_ERROR
                    return "refused"
                return "done"

            async with client:
                outcomes = await asyncio.gather(*(one() for _ in range(CONCURRENT_CALLS)))

            assert outcomes.count("done") == FITTING_CALLS
            assert len(server.requests) == FITTING_CALLS
            events = await flow.list_events(USER, FEATURE, limit=CONCURRENT_CALLS)
            assert sum(e.credits_used or 0 for e in events) == budget
            assert flow.store.call(ops.ledger_check(user_id=USER, feature_name=FEATURE)) == (
                budget,
                budget,
            )


@pytest.mark.asyncio
async def test_a_cancelled_consumer_still_pays_for_what_it_received(
    server: LLMServer, store_url: str
) -> None:
    """A client disconnecting from a streaming endpoint cancels the task reading the stream;
    the settlement must still reach the ledger."""
    async with AsyncUsageFlow(store_url) as flow:
        await flow.create_plan("Free", is_free=True, limits={FEATURE: LIMIT})
        async with wrap_openai(_aclient(server), flow, FEATURE, user_id=USER) as client:
            stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            with anyio.CancelScope() as scope:
                async with stream:
                    await stream.__anext__()
                    scope.cancel()
                    await anyio.sleep(5)  # cancelled here, and at every await after it
            assert scope.cancelled_caught
            for _ in range(200):
                events = await flow.list_events(USER, FEATURE)
                if events:
                    break
                await asyncio.sleep(0.01)

        (event,) = events
        assert event.metadata is not None
        assert event.metadata["usage_source"] == "estimated"
        assert event.metadata["stream_completed"] is False
        assert (await flow.fetch_usage(USER, FEATURE)).current == event.credits_used


def _load_example() -> Any:
    path = Path(__file__).resolve().parents[2] / "examples" / "fastapi_chat.py"
    spec = importlib.util.spec_from_file_location("fastapi_chat_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.asyncio
async def test_the_fastapi_example_answers_402_when_the_token_budget_is_spent() -> None:
    statuses = await _load_example().demo(monthly_tokens=500)

    assert statuses[-1] == 402
    assert set(statuses[:-1]) == {200}
    assert len(statuses) > 2
