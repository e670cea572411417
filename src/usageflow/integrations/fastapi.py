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

from collections.abc import AsyncIterator, Callable
from typing import Any

from usageflow.integrations import requires

with requires("fastapi"):
    from starlette.requests import Request

from usageflow.context import current_user_id
from usageflow.errors import config_error
from usageflow.integrations._http import AnyFlow, Meter, MeteringError, check_flow
from usageflow.integrations._lifecycle import (
    DEFAULT_POLICY,
    PASS,
    Refusal,
    Ticket,
    active_features,
    drive_async,
    find_binding,
    meterings,
)
from usageflow.integrations.starlette import metering_error_handler
from usageflow.models import Decision

__all__ = ["MeteringError", "meter", "metering_error_handler"]


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
    metering_of = meterings(spec)

    async def dependency(request: Request) -> AsyncIterator[Decision | None]:
        binding = find_binding()
        if spec.feature in active_features.get() or (binding is not None and not binding.enabled):
            yield None
            return
        chosen = flow or (binding.flow if binding is not None else None)
        if chosen is None:
            raise config_error(
                f"meter({spec.feature!r}) found no flow: install UsageFlowMiddleware or pass flow="
            )
        metering = metering_of(binding.policy if binding is not None else DEFAULT_POLICY)
        if user_id is not None:
            raw = user_id(request)
        elif binding is not None and binding.user_id is not None:
            raw = binding.user_id()
        else:
            raw = current_user_id.get()
        admission = await drive_async(chosen, metering.admit(chosen.core, raw))
        if admission is PASS:
            yield None
            return
        if isinstance(admission, Refusal):
            raise admission.error
        assert isinstance(admission, Ticket)
        ticket = admission
        # Recorded before the endpoint runs: the middleware adds the quota headers when the
        # response starts, which may be before this dependency exits.
        entry = (ticket.decision, 0)
        if binding is not None:
            binding.decisions.append(entry)
        try:
            yield ticket.decision
        except BaseException:
            if binding is not None:
                binding.decisions[binding.decisions.index(entry)] = (
                    ticket.decision,
                    ticket.credits,
                )
            await drive_async(chosen, metering.finish(chosen.core, ticket, None), shielded=True)
            raise
        # A dependency cannot see the response: a returning endpoint is charged.
        await drive_async(chosen, metering.finish(chosen.core, ticket, 200), shielded=True)

    dependency.__name__ = f"meter_{feature_name}".replace("-", "_")
    return dependency
