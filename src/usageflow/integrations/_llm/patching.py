"""Client patching for LLM metering: one client's methods replaced, on that instance only, by
their metered twins, and :func:`wrap_client`, the one body of ``wrap_openai`` and
``wrap_anthropic``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from usageflow.errors import config_error
from usageflow.flow import AsyncUsageFlow, UsageFlow
from usageflow.integrations._llm.decisions import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    Api,
    Estimate,
    FeatureName,
    TokenMeter,
    UserId,
    Weights,
)
from usageflow.integrations._llm.shells import (
    AsyncMeteredStream,
    SyncMeteredStream,
    run_async,
    run_sync,
)

__all__ = [
    "METER_ATTRIBUTE",
    "AsyncClosingManager",
    "ClientKind",
    "ClosingManager",
    "patch_helper",
    "patch_method",
    "wrap_client",
]

ClientT = TypeVar("ClientT")
#: The attribute a metered client carries its meter in (a second wrap is refused).
METER_ATTRIBUTE = "_usageflow_meter"


def patch_method(
    resource: object,
    name: str,
    meter: TokenMeter,
    api: Api,
    stream_type: type,
    metered: Callable[[Any, Any], Any],
    is_async: bool,
) -> None:
    """Replace ``resource.<name>`` (a keyword-only client method) on this instance by its
    metered twin; the client's class is untouched."""
    original = getattr(resource, name)
    if is_async:

        @functools.wraps(original)
        async def ametered(**kwargs: Any) -> Any:
            return await run_async(meter, api, original, kwargs, stream_type, metered)

        setattr(resource, name, ametered)
    else:

        @functools.wraps(original)
        def smetered(**kwargs: Any) -> Any:
            return run_sync(meter, api, original, kwargs, stream_type, metered)

        setattr(resource, name, smetered)


def patch_copy(client: Any, install: Callable[[Any], None]) -> None:
    """Make ``client.copy()`` / ``client.with_options()`` return clients metered the same way."""
    original = client.copy

    @functools.wraps(original)
    def copy(*args: Any, **kwargs: Any) -> Any:
        copied = original(*args, **kwargs)
        install(copied)
        return copied

    for attribute in ("copy", "with_options"):
        setattr(client, attribute, copy)


class ClosingManager:
    """Mixed into a client's stream-helper manager (``with client.x.stream(...) as s``), whose
    own exit closes only the HTTP response: this exit also closes the metered stream the helper
    reads (its ``_raw_stream``), so that leaving the block early settles at once."""

    def __init__(self, inner: Any) -> None:
        self._usageflow_inner = inner
        self._usageflow_stream: Any = None

    def __enter__(self) -> Any:
        self._usageflow_stream = self._usageflow_inner.__enter__()
        return self._usageflow_stream

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        try:
            self._usageflow_inner.__exit__(exc_type, exc, exc_tb)
        finally:
            raw = getattr(self._usageflow_stream, "_raw_stream", None)
            if isinstance(raw, SyncMeteredStream):
                raw.close()


class AsyncClosingManager:
    """The asyncio twin of :class:`ClosingManager`."""

    def __init__(self, inner: Any) -> None:
        self._usageflow_inner = inner
        self._usageflow_stream: Any = None

    async def __aenter__(self) -> Any:
        self._usageflow_stream = await self._usageflow_inner.__aenter__()
        return self._usageflow_stream

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        try:
            await self._usageflow_inner.__aexit__(exc_type, exc, exc_tb)
        finally:
            raw = getattr(self._usageflow_stream, "_raw_stream", None)
            if isinstance(raw, AsyncMeteredStream):
                await raw.close()


def patch_helper(resource: object, name: str, manager: Callable[[Any], Any]) -> None:
    """Wrap the manager ``resource.<name>(...)`` returns (a stream helper) in ``manager``."""
    original = getattr(resource, name)

    @functools.wraps(original)
    def helper(*args: Any, **kwargs: Any) -> Any:
        return manager(original(*args, **kwargs))

    setattr(resource, name, helper)


@dataclass(frozen=True)
class ClientKind:
    """What :func:`wrap_client` knows of one client library: the public wrapper's name (for
    its errors), the sync and async client classes, and ``install(client, meter, is_async)``,
    which patches one client's methods."""

    wrapper: str
    sync_client: type
    async_client: type
    install: Callable[[Any, TokenMeter, bool], None]

    def describe(self, client_class: type) -> str:
        """``openai.OpenAI``: the class under its package's name, as users import it."""
        return f"{client_class.__module__.partition('.')[0]}.{client_class.__name__}"


def wrap_client(
    client: ClientT,
    flow: UsageFlow | AsyncUsageFlow,
    feature_name: FeatureName,
    kind: ClientKind,
    *,
    user_id: UserId = None,
    weights: Weights | None = None,
    default_max_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
    estimate: Estimate | None = None,
    ttl: float | None = None,
) -> ClientT:
    """Meter ``client``'s tokens in ``flow`` and return it, metered in place (its type is
    unchanged); copies made with ``copy()`` / ``with_options()`` are metered the same way.

    Refuses (``USAGE_CONFIG_ERROR``) a client that is not one of ``kind``'s, a client already
    metered, and a flow of the wrong kind (an ``AsyncUsageFlow`` for an async client, a
    ``UsageFlow`` for a sync one) or option (checked by :class:`TokenMeter`)."""
    if isinstance(client, kind.async_client):
        is_async = True
    elif isinstance(client, kind.sync_client):
        is_async = False
    else:
        raise config_error(
            f"{kind.wrapper} needs an {kind.describe(kind.sync_client)} or "
            f"{kind.describe(kind.async_client)}, not {type(client).__name__}"
        )
    if getattr(client, METER_ATTRIBUTE, None) is not None:
        raise config_error("this client is already metered; wrap a fresh client")
    meter = TokenMeter(
        flow,
        feature_name,
        user_id=user_id,
        weights=weights,
        default_max_tokens=default_max_tokens,
        estimate=estimate,
        ttl=ttl,
        is_async=is_async,
    )
    _install(client, meter, kind, is_async)
    return client


def _install(client: Any, meter: TokenMeter, kind: ClientKind, is_async: bool) -> None:
    setattr(client, METER_ATTRIBUTE, meter)
    kind.install(client, meter, is_async)
    patch_copy(client, lambda copied: _install(copied, meter, kind, is_async))
