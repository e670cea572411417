"""Token metering for LLM clients: the decisions, written once for sync and async.

The provider modules (:mod:`usageflow.integrations.openai`, :mod:`usageflow.integrations.anthropic`)
only know where a client keeps its methods and how its objects spell usage; this module decides
what to reserve, what to commit and what to write in the ledger. It imports no client library.

The model, for one call::

    estimate   prompt tokens (heuristic or ``estimate=``) + the output cap of the request
    reserve    weight(model) x estimate credits, or refuse with USAGE_LIMIT_ERROR (no request)
    call       the client's own method, unchanged
    commit     the tokens the API reported (``usage_source: "reported"``)
    release    when the call raised before anything came back (an error costs nothing)
    streams    commit when the stream ends or is closed; a stream cut short is settled on what
               was received, counted from the chunks (``usage_source: "estimated"``)

The prompt heuristic is deliberately cheap and errs high: ``ceil(characters / 4)`` over the text
of the prompt (messages, input, instructions, system; tool definitions as JSON; base64 payloads
skipped) plus 4 tokens per message and 3 for the reply. It only sizes the reservation; the ledger
records what the API reports.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Protocol

from usageflow.context import current_user_id
from usageflow.errors import config_error, invalid
from usageflow.flow import AsyncUsageFlow, UsageFlow
from usageflow.integrations._http import Meter
from usageflow.integrations._lifecycle import Metering, Policy

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_REPLY",
    "Api",
    "Estimate",
    "FeatureName",
    "LLMCall",
    "StreamTally",
    "TokenMeter",
    "Tokens",
    "UserId",
    "Weights",
    "estimate_prompt_tokens",
    "estimate_text_tokens",
]

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3
#: Output tokens reserved when a request sets no output cap (the commit corrects it).
DEFAULT_MAX_OUTPUT_TOKENS = 1024

UsageSource = Literal["reported", "estimated"]
FeatureName = str | Callable[[str], str]
UserId = str | Callable[[], str] | None
Weights = Mapping[str, float | int | Decimal | str]
Estimate = Callable[[Mapping[str, Any]], int]

_PROMPT_KEYS = ("messages", "input", "instructions", "system", "prompt")
_TOOL_KEYS = ("tools", "functions")
_OUTPUT_CAP_KEYS = ("max_completion_tokens", "max_output_tokens", "max_tokens")
_MATERIALIZE = ("messages", "input", "tools", "functions", "system")


# -- estimation -----------------------------------------------------------------------------------
def estimate_text_tokens(text: str | int) -> int:
    """Tokens in ``text`` (or in that many characters) by the ``ceil(chars / 4)`` rule."""
    chars = text if isinstance(text, int) else len(text)
    return -(-chars // CHARS_PER_TOKEN)


def _chars(value: object) -> int:
    """Characters of prompt text in ``value``: strings in nested dicts and lists, skipping
    base64 payloads (``data`` fields and ``data:`` URLs)."""
    if isinstance(value, str):
        return 0 if value.startswith("data:") else len(value)
    if isinstance(value, Mapping):
        return sum(_chars(item) for key, item in value.items() if key != "data")
    if isinstance(value, (list, tuple)):
        return sum(_chars(item) for item in value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return _chars(dump())
    return 0


def estimate_prompt_tokens(request: Mapping[str, Any]) -> int:
    """A cheap upper-leaning estimate of the prompt tokens of a create() call's arguments:
    ``ceil(chars / 4)`` of the prompt text, plus ``TOKENS_PER_MESSAGE`` per message (a string
    ``input``/``system``/``instructions`` counts as one) and ``TOKENS_PER_REPLY``."""
    chars = 0
    messages = 0
    for key in _PROMPT_KEYS:
        value = request.get(key)
        if isinstance(value, str):
            chars += len(value)
            messages += 1
        elif isinstance(value, (list, tuple)):
            chars += _chars(value)
            messages += len(value)
    for key in _TOOL_KEYS:
        value = request.get(key)
        if isinstance(value, (list, tuple)) and value:
            chars += len(json.dumps(value, default=str))
    return estimate_text_tokens(chars) + TOKENS_PER_MESSAGE * messages + TOKENS_PER_REPLY


def _given_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# -- token counts ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tokens:
    """The token counts of one call, under the provider's own field names."""

    counts: dict[str, int]
    total: int
    source: UsageSource


class Api(Protocol):
    """What the shared logic needs to know about one API method (chat completions, responses,
    Anthropic messages). Implementations are pure: they read objects, they do no I/O."""

    name: str
    request_id_header: str
    prompt_field: str
    completion_field: str
    #: Fields whose sum is the total when the API reports no total.
    summed_fields: tuple[str, ...]

    def prepare(self, request: dict[str, Any], stream: bool) -> bool:
        """Adjust the request (e.g. ask for a usage chunk); True when the caller did not ask for
        what was added and it must be hidden from them."""

    def reported(self, result: Any) -> Tokens | None:
        """The usage a complete (non-streamed) result reports, or None."""

    def describe(self, result: Any) -> tuple[str | None, str | None, str | None]:
        """``(model, response_id, request_id)`` of a complete result."""

    def observe(self, tally: StreamTally, item: Any) -> bool:
        """Account for one streamed item; False when the item must be hidden from the caller."""


@dataclass
class StreamTally:
    """What a stream delivered so far; filled by :meth:`Api.observe`."""

    hide_usage: bool = False
    items: int = 0
    output_chars: int = 0
    output_chunks: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    usage_final: bool = False
    total: int | None = None
    model: str | None = None
    response_id: str | None = None

    def text(self, text: object) -> None:
        """Count a piece of generated text (content, tool arguments, reasoning)."""
        if isinstance(text, str) and text:
            self.output_chars += len(text)
            self.output_chunks += 1

    def report(self, usage: Mapping[str, object], final: bool, total: object = None) -> None:
        """Merge reported counts (later reports override earlier ones)."""
        for key, value in usage.items():
            count = _given_int(value)
            if count is not None:
                self.usage[key] = count
        self.usage_final = self.usage_final or final
        if final and _given_int(total) is not None:
            self.total = _given_int(total)


# -- the meter ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LLMCall:
    """One metered call, planned before the request is sent."""

    api: str
    user_id: str
    feature_name: str
    model: str
    stream: bool
    prompt_estimate: int
    output_cap: int
    credits: int
    request: dict[str, Any]
    hide_usage: bool

    @property
    def estimated_tokens(self) -> int:
        return self.prompt_estimate + self.output_cap


def _weight(value: object, model: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        raise config_error(f"weights[{model!r}] must be a number of credits per 1,000 tokens")
    try:
        weight = Decimal(str(value))
    except InvalidOperation:
        raise config_error(f"weights[{model!r}] must be a number") from None
    if not weight.is_finite() or weight <= 0:
        raise config_error(f"weights[{model!r}] must be a positive number")
    return weight


class TokenMeter:
    """The configuration of a wrapped client and every metering decision.

    ``feature_name`` is a string or a function of the model name; ``user_id`` a string, a
    function returning one, or None for the user of the metered request being served
    (:data:`usageflow.context.current_user_id`). ``weights`` maps model names (exact, else the
    longest matching prefix, else ``"*"``) to credits per 1,000 tokens; a model without a weight
    costs one credit per token.
    """

    def __init__(
        self,
        flow: UsageFlow | AsyncUsageFlow,
        feature_name: FeatureName,
        *,
        user_id: UserId = None,
        weights: Weights | None = None,
        default_max_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
        estimate: Estimate | None = None,
        ttl: float | None = None,
        is_async: bool,
    ) -> None:
        expected = AsyncUsageFlow if is_async else UsageFlow
        if not isinstance(flow, expected):
            kind = "an async" if is_async else "a sync"
            raise config_error(
                f"{kind} client needs {'an AsyncUsageFlow' if is_async else 'a UsageFlow'}, "
                f"not {type(flow).__name__}"
            )
        if isinstance(feature_name, str):
            if not feature_name.strip():
                raise config_error("feature_name must not be empty")
        elif not callable(feature_name):
            raise config_error("feature_name must be a string or a function of the model name")
        if user_id is not None and not isinstance(user_id, str) and not callable(user_id):
            raise config_error("user_id must be a string, a function returning one, or None")
        if isinstance(user_id, str) and not user_id.strip():
            raise config_error("user_id must not be empty")
        if weights is not None and not isinstance(weights, Mapping):
            raise config_error("weights must map model names to credits per 1,000 tokens")
        if _given_int(default_max_tokens) is None or default_max_tokens < 0:
            raise config_error("default_max_tokens must be a non-negative integer")
        if estimate is not None and not callable(estimate):
            raise config_error("estimate must be a function of the request's arguments")
        if ttl is not None and (
            isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0
        ):
            raise config_error("ttl must be a positive number of seconds")
        self.flow = flow
        self.feature_name = feature_name
        self.user_id = user_id
        self.weights = {str(k): _weight(v, str(k)) for k, v in (weights or {}).items()}
        self.default_max_tokens = default_max_tokens
        self.estimate = estimate
        self.ttl = ttl
        self._meterings: dict[str, Metering] = {}

    def __repr__(self) -> str:
        return f"<TokenMeter feature_name={self.feature_name!r} flow={type(self.flow).__name__}>"

    def metering(self, feature_name: str) -> Metering:
        """The metering lifecycle of one feature (the one the HTTP adapters run): every call
        holds its estimate (``settle="hold"``) and commits what the API reported."""
        found = self._meterings.get(feature_name)
        if found is None:
            found = Metering(Meter(feature_name, settle="hold"), Policy(reservation_ttl=self.ttl))
            self._meterings[feature_name] = found
        return found

    # -- decisions --------------------------------------------------------------------------------
    def user(self) -> str:
        user = self.user_id
        if user is None:
            found = current_user_id.get()
            if found is None:
                raise invalid(
                    "no user to meter: pass user_id= to the wrapper, or call the client inside "
                    "a metered request",
                    field="user_id",
                )
            return found
        if isinstance(user, str):
            return user
        value = user()
        if not isinstance(value, str):
            raise invalid("the user_id function must return a string", field="user_id")
        return value

    def feature_for(self, model: str) -> str:
        name = self.feature_name
        return name if isinstance(name, str) else name(model)

    def weight(self, model: str) -> Decimal | None:
        """Credits per 1,000 tokens for ``model``; None when tokens are credits."""
        if model in self.weights:
            return self.weights[model]
        prefixes = [key for key in self.weights if key != "*" and model.startswith(key)]
        if prefixes:
            return self.weights[max(prefixes, key=len)]
        return self.weights.get("*")

    def credits(self, model: str, tokens: int) -> int:
        """``tokens`` turned into credits by the model's weight, rounded up."""
        weight = self.weight(model)
        if weight is None:
            return tokens
        return math.ceil(weight * tokens / 1000)

    def plan(self, api: Api, kwargs: Mapping[str, Any]) -> LLMCall:
        """Everything decided before the request: who, which feature, how much to hold."""
        request = dict(kwargs)
        for key in _MATERIALIZE:  # a generator of messages must survive being read twice
            value = request.get(key)
            if isinstance(value, Iterator):
                request[key] = list(value)
        stream = request.get("stream") is True
        model = request.get("model")
        model = model if isinstance(model, str) else "unknown"
        user_id = self.user()
        feature = self.feature_for(model)
        if self.estimate is not None:
            prompt = self.estimate(request)
            if _given_int(prompt) is None or prompt < 0:
                raise invalid("estimate= must return a non-negative integer", field="estimate")
        else:
            prompt = estimate_prompt_tokens(request)
        cap = next(
            (_given_int(request.get(k)) for k in _OUTPUT_CAP_KEYS if _given_int(request.get(k))),
            None,
        )
        output = self.default_max_tokens if cap is None else cap
        choices = _given_int(request.get("n"))
        if choices is not None and choices > 1:
            output *= choices
        hide_usage = api.prepare(request, stream)
        credits = max(1, self.credits(model, prompt + output))
        return LLMCall(
            api=api.name,
            user_id=user_id,
            feature_name=feature,
            model=model,
            stream=stream,
            prompt_estimate=prompt,
            output_cap=output,
            credits=credits,
            request=request,
            hide_usage=hide_usage,
        )

    def settlement(
        self,
        call: LLMCall,
        tokens: Tokens,
        *,
        model: str | None,
        response_id: str | None,
        request_id: str | None,
        stream_completed: bool | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """The credits to commit and the ledger metadata for a finished call."""
        metadata: dict[str, Any] = {"model": model or call.model, "api": call.api}
        metadata.update(tokens.counts)
        metadata["total_tokens"] = tokens.total
        metadata["usage_source"] = tokens.source
        metadata["estimated_tokens"] = call.estimated_tokens
        if request_id:
            metadata["request_id"] = request_id
        if response_id:
            metadata["response_id"] = response_id
        if call.stream:
            metadata["stream"] = True
            metadata["stream_completed"] = bool(stream_completed)
        return self.credits(call.model, tokens.total), metadata

    def result_settlement(
        self, api: Api, call: LLMCall, result: Any, request_id: str | None
    ) -> tuple[int, dict[str, Any]]:
        """Settle a complete result; one without usage is charged the whole estimate."""
        tokens = api.reported(result)
        if tokens is None:
            tokens = Tokens(
                {api.prompt_field: call.prompt_estimate, api.completion_field: call.output_cap},
                call.estimated_tokens,
                "estimated",
            )
        model, response_id, found_request_id = api.describe(result)
        return self.settlement(
            call,
            tokens,
            model=model,
            response_id=response_id,
            request_id=found_request_id or request_id,
        )

    def stream_settlement(
        self, api: Api, call: LLMCall, tally: StreamTally, completed: bool, request_id: str | None
    ) -> tuple[int, dict[str, Any]] | None:
        """Settle a stream that ended (``completed``) or stopped: the reported usage when the
        stream carried it, else the prompt (reported or estimated) plus the output received,
        ``max(chunks with text, ceil(chars / 4))``. None (release) when nothing arrived."""
        if tally.usage_final:
            counts = dict(tally.usage)
            total = tally.total
            if total is None:
                total = sum(counts.get(k, 0) for k in api.summed_fields)
            tokens = Tokens(counts, total, "reported")
        elif tally.items == 0 and not completed:
            return None
        else:
            counts = dict(tally.usage)
            counts.setdefault(api.prompt_field, call.prompt_estimate)
            received = max(tally.output_chunks, estimate_text_tokens(tally.output_chars))
            counts[api.completion_field] = max(counts.get(api.completion_field, 0), received)
            total = sum(counts.get(k, 0) for k in api.summed_fields)
            tokens = Tokens(counts, total, "estimated")
        return self.settlement(
            call,
            tokens,
            model=tally.model,
            response_id=tally.response_id,
            request_id=request_id,
            stream_completed=completed or tally.usage_final,
        )
