"""Token metering for LLM clients, shared by :mod:`usageflow.integrations.openai` and
:mod:`usageflow.integrations.anthropic`, which only know where a client keeps its methods and
how its objects spell usage. It imports no client library.

* :mod:`~usageflow.integrations._llm.decisions`: pure: the estimate, the credits, the
  :class:`TokenMeter` (a wrapped client's configuration and every decision), what to settle;
* :mod:`~usageflow.integrations._llm.shells`: the I/O: reserve, call, settle (threads and
  asyncio), and the metered streams;
* :mod:`~usageflow.integrations._llm.patching`: a client's methods replaced by their metered
  twins, and :func:`wrap_client`, the one body of ``wrap_openai`` and ``wrap_anthropic``.
"""

from usageflow.integrations._llm.decisions import (
    CHARS_PER_TOKEN,
    DEFAULT_MAX_OUTPUT_TOKENS,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_REPLY,
    Api,
    Estimate,
    FeatureName,
    LLMCall,
    StreamTally,
    TokenMeter,
    Tokens,
    UserId,
    Weights,
    estimate_prompt_tokens,
    estimate_text_tokens,
)
from usageflow.integrations._llm.patching import (
    AsyncClosingManager,
    ClientKind,
    ClosingManager,
    patch_helper,
    patch_method,
    wrap_client,
)
from usageflow.integrations._llm.shells import (
    AsyncMeteredStream,
    AsyncSettler,
    SyncMeteredStream,
    SyncSettler,
    run_async,
    run_sync,
)

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_REPLY",
    "Api",
    "AsyncClosingManager",
    "AsyncMeteredStream",
    "AsyncSettler",
    "ClientKind",
    "ClosingManager",
    "Estimate",
    "FeatureName",
    "LLMCall",
    "StreamTally",
    "SyncMeteredStream",
    "SyncSettler",
    "TokenMeter",
    "Tokens",
    "UserId",
    "Weights",
    "estimate_prompt_tokens",
    "estimate_text_tokens",
    "patch_helper",
    "patch_method",
    "run_async",
    "run_sync",
    "wrap_client",
]
