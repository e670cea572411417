"""Ready Stripe webhook endpoints for Starlette/FastAPI and Flask.

::

    # Starlette / FastAPI
    from usageflow.integrations.stripe import webhook_route
    app = Starlette(routes=[webhook_route(flow)])            # POST /stripe/webhook
    app.router.routes.append(webhook_route(flow))             # on an existing FastAPI app

    # Flask
    from usageflow.integrations.stripe import webhook_blueprint
    app.register_blueprint(webhook_blueprint(flow))           # POST /stripe/webhook

Each endpoint passes the raw request body and the ``Stripe-Signature`` header to
``flow.handle_webhook`` and answers like the spec's handler: ``200 {"received": true}``, or
``400 {"error": "..."}`` for a webhook that does not verify or is not a Stripe event (the
message shows in the Stripe dashboard's delivery log). A store failure answers
``500 {"error": "..."}``; Stripe delivers the event again later, and the processed-events
record makes the redelivery safe. The flow may be a :class:`~usageflow.UsageFlow` (run in a
worker thread under Starlette) or an :class:`~usageflow.AsyncUsageFlow` (awaited; under Flask
it needs ``flask[async]``).

The result models of the Stripe operations are re-exported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from usageflow._stripe import (
    DEFAULT_TOLERANCE,
    ExportResult,
    PlanSyncResult,
    ReconcileResult,
    WebhookAction,
    WebhookResult,
)
from usageflow.errors import ErrorCodes, UsageFlowError, config_error

if TYPE_CHECKING:
    from flask import Blueprint
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

__all__ = [
    "ExportResult",
    "PlanSyncResult",
    "ReconcileResult",
    "WebhookAction",
    "WebhookResult",
    "webhook_blueprint",
    "webhook_endpoint",
    "webhook_route",
]

_CLIENT_ERRORS = frozenset(
    {
        ErrorCodes.USAGE_WEBHOOK_SIGNATURE_ERROR,
        ErrorCodes.USAGE_WEBHOOK_PAYLOAD_ERROR,
        ErrorCodes.USAGE_INVALID_PARAMS,
    }
)


def answer(err: UsageFlowError | None) -> tuple[dict[str, Any], int]:
    """The JSON body and status of a webhook answer."""
    if err is None:
        return {"received": True}, 200
    return {"error": err.message}, 400 if err.code in _CLIENT_ERRORS else 500


def _check(flow: Any, tolerance: int) -> bool:
    from usageflow.flow import AsyncUsageFlow, UsageFlow

    if not isinstance(flow, (UsageFlow, AsyncUsageFlow)):
        raise config_error("flow must be a UsageFlow or an AsyncUsageFlow")
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance <= 0:
        raise config_error("tolerance must be a positive number of seconds")
    return isinstance(flow, AsyncUsageFlow)


def webhook_endpoint(flow: Any, *, tolerance: int = DEFAULT_TOLERANCE) -> Any:
    """A Starlette endpoint (``async def endpoint(request) -> Response``) for Stripe
    webhooks."""
    import anyio.to_thread
    from starlette.responses import JSONResponse

    is_async = _check(flow, tolerance)

    async def stripe_webhook(request: Request) -> Response:
        body = await request.body()
        signature = request.headers.get("stripe-signature")
        err: UsageFlowError | None = None
        try:
            if is_async:
                await flow.handle_webhook(body, signature, tolerance=tolerance)
            else:
                await anyio.to_thread.run_sync(
                    lambda: flow.handle_webhook(body, signature, tolerance=tolerance)
                )
        except UsageFlowError as exc:
            err = exc
        content, status = answer(err)
        return JSONResponse(content, status_code=status)

    return stripe_webhook


def webhook_route(
    flow: Any, path: str = "/stripe/webhook", *, tolerance: int = DEFAULT_TOLERANCE
) -> Route:
    """A Starlette ``Route`` answering ``POST path`` with :func:`webhook_endpoint`."""
    from starlette.routing import Route

    return Route(path, webhook_endpoint(flow, tolerance=tolerance), methods=["POST"])


def webhook_blueprint(
    flow: Any,
    path: str = "/stripe/webhook",
    *,
    name: str = "usageflow_stripe",
    tolerance: int = DEFAULT_TOLERANCE,
) -> Blueprint:
    """A Flask blueprint with one view, ``POST path``, for Stripe webhooks."""
    from flask import Blueprint, jsonify, request

    is_async = _check(flow, tolerance)
    blueprint = Blueprint(name, __name__)

    if is_async:

        async def stripe_webhook() -> Any:
            err: UsageFlowError | None = None
            try:
                await flow.handle_webhook(
                    request.get_data(),
                    request.headers.get("Stripe-Signature"),
                    tolerance=tolerance,
                )
            except UsageFlowError as exc:
                err = exc
            content, status = answer(err)
            return jsonify(content), status

    else:

        def stripe_webhook() -> Any:  # type: ignore[misc]
            err: UsageFlowError | None = None
            try:
                flow.handle_webhook(
                    request.get_data(),
                    request.headers.get("Stripe-Signature"),
                    tolerance=tolerance,
                )
            except UsageFlowError as exc:
                err = exc
            content, status = answer(err)
            return jsonify(content), status

    blueprint.add_url_rule(path, "stripe_webhook", stripe_webhook, methods=["POST"])
    return blueprint
