"""FastAPI: the dependency form of :func:`usageflow.metered`.

::

    from fastapi import Depends, FastAPI
    from usageflow.integrations.fastapi import meter
    from usageflow.integrations.starlette import UsageFlowMiddleware

    app = FastAPI()
    app.add_middleware(UsageFlowMiddleware, flow=flow, user_id=get_user_id)

    @app.post("/v1/exports", dependencies=[Depends(meter("design-export"))])
    async def export(): ...

    @app.post("/v1/chat")
    async def chat(decision: Decision = Depends(meter("ai_chat_limit", credits=2))): ...

The dependency reserves the credits before the endpoint runs and commits them when the
endpoint returns (releases them when it raises). It yields the :class:`usageflow.Decision`
(``None`` when metering was skipped). Its refusals are :class:`MeteringError`, answered by
``UsageFlowMiddleware`` or, without the middleware, by
``app.add_exception_handler(MeteringError, metering_error_handler)``.

For charging by the final status code (a handler that *returns* a 500), streaming responses
charged when the stream ends, and quota headers on every response, meter the route in
``UsageFlowMiddleware(routes=...)`` instead: a dependency cannot see the response.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request

from usageflow.decorators import _Plan, _settle_async
from usageflow.errors import ErrorCodes, UsageFlowError, config_error
from usageflow.integrations._http import (
    AnyFlow,
    AsyncGate,
    Meter,
    MeteringError,
    active_features,
    check_flow,
    normalize_user_id,
)
from usageflow.integrations.starlette import metering_error_handler
from usageflow.models import Decision

__all__ = ["MeteringError", "meter", "metering_error_handler"]

logger = logging.getLogger("usageflow.integrations")


def meter(
    feature_name: str,
    credits: int = 1,
    *,
    flow: AnyFlow | None = None,
    user_id: Callable[[Request], Any] | None = None,
    fail_open: bool | None = None,
) -> Callable[[Request], AsyncIterator[Decision | None]]:
    """A FastAPI dependency metering ``credits`` of ``feature_name`` per request.

    :param flow: default: the flow of the app's ``UsageFlowMiddleware``.
    :param user_id: ``fn(request) -> str | None`` (sync or async); default: the middleware's.
    :param fail_open: on a store failure run the endpoint unmetered (yields ``None``).
    """
    spec = Meter(feature_name, credits, None, fail_open, None)
    if flow is not None:
        check_flow(flow)
    if user_id is not None and not callable(user_id):
        raise config_error("user_id must be a function of the request")

    async def dependency(request: Request) -> AsyncIterator[Decision | None]:
        if spec.feature in active_features.get():
            yield None
            return
        plan = _Plan(spec, flow)
        if not plan.enabled:
            yield None
            return
        gate = AsyncGate(plan.flow)
        raw = plan.raw_user(None if user_id is None else lambda: user_id(request))
        if inspect.isawaitable(raw):
            raw = await raw
        try:
            user = normalize_user_id(raw)
        except UsageFlowError as exc:
            raise plan.refuse(exc, spec, None, gate.now()) from None
        if user is None:
            raise plan.no_user(spec)
        try:
            held = await gate.reserve(user, spec.feature, spec.held)
        except UsageFlowError as exc:
            if exc.is_store_failure and plan.fail_open:
                plan.count("failed_open")
                logger.warning(
                    "usageflow: store failed, %r let through unmetered (fail_open): %s",
                    spec.feature,
                    exc.message,
                )
                yield None
                return
            url = None
            if exc.code is ErrorCodes.USAGE_LIMIT_ERROR:
                url = await gate.upgrade_url(user, spec.feature)
            raise plan.refuse(exc, spec, url, gate.now()) from exc
        plan.count("allowed")
        # Recorded before the endpoint runs: the middleware adds the quota headers when the
        # response starts, which may be before this dependency exits.
        plan.record(held, held.credits)
        try:
            yield held.decision
        except BaseException:
            plan.record(held, None, replace=True)
            await _settle_async(gate, plan, held, None, spec)
            raise
        await _settle_async(gate, plan, held, held.credits, spec)

    dependency.__name__ = f"meter_{feature_name}".replace("-", "_")
    return dependency
