"""One Stripe API request, as the Stripe operations yield it (:mod:`usageflow.stripe.api`,
and the webhook's read of a session's line items): run by the sync flow with the ``stripe``
library's sync client and by the async flow with its ``*_async`` methods."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from usageflow import _log
from usageflow._core import Op
from usageflow.errors import UsageFlowError, config_error

__all__ = ["StripeRequest"]

_SECRET_TOKEN = re.compile(r"\b(sk|rk|whsec)_[A-Za-z0-9_*]+")


@dataclass(frozen=True)
class StripeRequest:
    """One Stripe API request: ``client.<path>.<method>(*args, params=..., options=...)`` (or
    its ``_async`` twin), answered as plain dicts. A failure is sent back as a
    :class:`UsageFlowError` (``USAGE_CONFIG_ERROR``) instead of a result, so that the operation
    can record what it finished before it re-raises."""

    client: Any
    path: tuple[str, ...]
    method: str
    args: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] | None = None

    def _target(self, suffix: str) -> Any:
        obj = self.client
        for part in self.path:
            # stripe < 13 had the v1 services on the client itself.
            obj = getattr(obj, part, obj) if part == "v1" else getattr(obj, part)
        return getattr(obj, self.method + suffix)

    def _log(self, flow: Any) -> None:
        if getattr(getattr(flow, "options", None), "debug", False):
            _log.debug("usageflow stripe %s.%s %s", ".".join(self.path), self.method, self.args)

    def run(self, flow: Any) -> Any:
        import stripe

        self._log(flow)
        try:
            method = self._target("")
            return _plain(method(*self.args, params=self.params, options=self.options))
        except stripe.StripeError as exc:
            return _api_error(self, exc)

    async def arun(self, flow: Any) -> Any:
        import stripe

        self._log(flow)
        try:
            method = self._target("_async")
            result = await method(*self.args, params=self.params, options=self.options)
            return _plain(result)
        except stripe.StripeError as exc:
            return _api_error(self, exc)


def _plain(value: Any) -> Any:
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else value


def _api_error(step: StripeRequest, exc: Exception) -> UsageFlowError:
    message = _SECRET_TOKEN.sub(lambda m: f"{m.group(1)}_***", str(exc) or type(exc).__name__)
    return config_error(
        f"Stripe API {'.'.join(step.path)}.{step.method} failed: {message}",
        operation=f"stripe.{'.'.join(step.path)}.{step.method}",
        http_status=getattr(exc, "http_status", None),
        original_error=type(exc).__name__,
    )


def _request(step: StripeRequest) -> Op[Any]:
    result = yield step
    if isinstance(result, UsageFlowError):
        raise result
    return result
