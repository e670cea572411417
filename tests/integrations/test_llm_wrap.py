"""``wrap_openai`` and ``wrap_anthropic`` share one body (``wrap_client``): the same checks,
the same errors, the same copies, for sync and async clients of both libraries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest

from usageflow import AsyncUsageFlow, ErrorCodes, UsageFlow, UsageFlowError
from usageflow.integrations.anthropic import wrap_anthropic
from usageflow.integrations.openai import wrap_openai

PROVIDERS: dict[str, tuple[Callable[..., Any], Any, Any, str]] = {
    "openai": (
        wrap_openai,
        openai.OpenAI,
        openai.AsyncOpenAI,
        "openai.OpenAI or openai.AsyncOpenAI",
    ),
    "anthropic": (
        wrap_anthropic,
        anthropic.Anthropic,
        anthropic.AsyncAnthropic,
        "anthropic.Anthropic or anthropic.AsyncAnthropic",
    ),
}


def _config_error(run: Callable[[], object]) -> str:
    with pytest.raises(UsageFlowError) as err:
        run()
    assert err.value.code is ErrorCodes.USAGE_CONFIG_ERROR
    return err.value.message


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_client_of_another_kind_is_refused_by_name(provider: str) -> None:
    wrap, _sync, _async, classes = PROVIDERS[provider]
    flow = UsageFlow("memory://")
    message = _config_error(lambda: wrap(object(), flow, "tokens"))
    assert message == f"{wrap.__name__} needs an {classes}, not object"


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_the_flow_must_match_the_client(provider: str, is_async: bool) -> None:
    wrap, sync_client, async_client, _ = PROVIDERS[provider]
    client = (async_client if is_async else sync_client)(api_key="k", base_url="http://127.0.0.1:9")
    wrong = UsageFlow("memory://") if is_async else AsyncUsageFlow("memory://")
    message = _config_error(lambda: wrap(client, wrong, "tokens"))
    expected = "an AsyncUsageFlow" if is_async else "a UsageFlow"
    assert f"client needs {expected}, not {type(wrong).__name__}" in message


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_wrapped_clients_and_their_copies_are_not_wrapped_twice(
    provider: str, is_async: bool
) -> None:
    wrap, sync_client, async_client, _ = PROVIDERS[provider]
    flow = AsyncUsageFlow("memory://") if is_async else UsageFlow("memory://")
    client = (async_client if is_async else sync_client)(api_key="k", base_url="http://127.0.0.1:9")
    assert wrap(client, flow, "tokens") is client
    copy = client.with_options(timeout=5.0)
    assert isinstance(copy, async_client if is_async else sync_client)
    for metered in (client, copy, copy.with_options(max_retries=0)):
        message = _config_error(lambda metered=metered: wrap(metered, flow, "tokens"))
        assert message == "this client is already metered; wrap a fresh client"
