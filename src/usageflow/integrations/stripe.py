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
``flow.handle_webhook`` and answers like the spec's handler, with what was done:
``200 {"received": true, "action": ..., "reason": ..., "warning": ...}`` (the
:class:`WebhookResult`'s fields; a ``warning``, such as a price no plan sells, is logged too),
or ``400 {"error": "..."}`` for a webhook that does not verify or is not a Stripe event (the
answer shows in the Stripe dashboard's delivery log). A body over ``max_body_size`` bytes
(default 1 MiB; Stripe's events are a few kilobytes) answers ``413 {"error": "..."}`` before
it is read whole: a ``Content-Length`` over the limit is refused at once, and a body without
one is read in chunks only until it passes the limit. A store failure answers
``500 {"error": "..."}``; Stripe delivers the event again later, and the processed-events
record makes the redelivery safe. The flow may be a :class:`~usageflow.UsageFlow` (run in a
worker thread under Starlette) or an :class:`~usageflow.AsyncUsageFlow` (awaited; under Flask
it needs ``flask[async]``).

The result models of the Stripe operations are re-exported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from usageflow.errors import ErrorCodes, UsageFlowError, config_error
from usageflow.stripe.events import DEFAULT_TOLERANCE
from usageflow.stripe.results import (
    ExportResult,
    PlanSyncResult,
    ReconcileResult,
    WebhookAction,
    WebhookReason,
    WebhookResult,
)

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
    "WebhookReason",
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


#: The largest webhook body the endpoints read, in bytes, unless told otherwise.
DEFAULT_MAX_BODY_SIZE = 1_048_576
_CHUNK = 65_536


def answer(outcome: WebhookResult | UsageFlowError) -> tuple[dict[str, Any], int]:
    """The JSON body and status of a webhook answer: ``200 {"received": true, "action": ...,
    "reason": ..., "warning": ...}`` (the :class:`WebhookResult`'s fields, ``null`` when
    unset), else ``{"error": ...}`` with 400 (the event is refused) or 500 (the store failed)."""
    if isinstance(outcome, WebhookResult):
        return {
            "received": True,
            "action": outcome.action,
            "reason": outcome.reason,
            "warning": outcome.warning,
        }, 200
    return {"error": outcome.message}, 400 if outcome.code in _CLIENT_ERRORS else 500


def too_large(max_body_size: int) -> tuple[dict[str, Any], int]:
    """The JSON body and status (413) of the answer to a body over ``max_body_size``."""
    return {"error": f"the webhook body is larger than {max_body_size} bytes"}, 413


def over_limit(content_length: object, max_body_size: int) -> bool:
    """Whether a ``Content-Length`` value already says the body is too large."""
    try:
        return int(str(content_length)) > max_body_size
    except ValueError:
        return False


def read_limited(read: Any, max_body_size: int) -> bytes | None:
    """The body read with ``read(n)`` in chunks, or ``None`` once it passes the limit."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = read(min(_CHUNK, max_body_size + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_body_size:
            return None
        chunks.append(chunk)


def _check_size(max_body_size: int) -> None:
    if isinstance(max_body_size, bool) or not isinstance(max_body_size, int) or max_body_size <= 0:
        raise config_error("max_body_size must be a positive number of bytes")


def _check(flow: Any, tolerance: int, max_body_size: int = DEFAULT_MAX_BODY_SIZE) -> bool:
    from usageflow.flow import AsyncUsageFlow, UsageFlow

    if not isinstance(flow, (UsageFlow, AsyncUsageFlow)):
        raise config_error("flow must be a UsageFlow or an AsyncUsageFlow")
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance <= 0:
        raise config_error("tolerance must be a positive number of seconds")
    _check_size(max_body_size)
    return isinstance(flow, AsyncUsageFlow)


def webhook_endpoint(
    flow: Any,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
) -> Any:
    """A Starlette endpoint (``async def endpoint(request) -> Response``) for Stripe
    webhooks."""
    import anyio.to_thread
    from starlette.responses import JSONResponse

    is_async = _check(flow, tolerance, max_body_size)

    async def read_body(request: Request) -> bytes | None:
        if over_limit(request.headers.get("content-length"), max_body_size):
            return None
        chunks: list[bytes] = []
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_body_size:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def stripe_webhook(request: Request) -> Response:
        body = await read_body(request)
        if body is None:
            content, status = too_large(max_body_size)
            return JSONResponse(content, status_code=status)
        signature = request.headers.get("stripe-signature")
        outcome: WebhookResult | UsageFlowError
        try:
            if is_async:
                outcome = await flow.handle_webhook(body, signature, tolerance=tolerance)
            else:
                outcome = await anyio.to_thread.run_sync(
                    lambda: flow.handle_webhook(body, signature, tolerance=tolerance)
                )
        except UsageFlowError as exc:
            outcome = exc
        content, status = answer(outcome)
        return JSONResponse(content, status_code=status)

    return stripe_webhook


def webhook_route(
    flow: Any,
    path: str = "/stripe/webhook",
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
) -> Route:
    """A Starlette ``Route`` answering ``POST path`` with :func:`webhook_endpoint`."""
    from starlette.routing import Route

    endpoint = webhook_endpoint(flow, tolerance=tolerance, max_body_size=max_body_size)
    return Route(path, endpoint, methods=["POST"])


def webhook_blueprint(
    flow: Any,
    path: str = "/stripe/webhook",
    *,
    name: str = "usageflow_stripe",
    tolerance: int = DEFAULT_TOLERANCE,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
) -> Blueprint:
    """A Flask blueprint with one view, ``POST path``, for Stripe webhooks."""
    from flask import Blueprint, jsonify, request

    is_async = _check(flow, tolerance, max_body_size)
    blueprint = Blueprint(name, __name__)

    def read_body() -> bytes | None:
        if over_limit(request.content_length, max_body_size):
            return None
        # Werkzeug's stream ends at Content-Length, or at the end of a chunked body.
        return read_limited(request.stream.read, max_body_size)

    def refused() -> Any:
        content, status = too_large(max_body_size)
        return jsonify(content), status

    if is_async:

        async def stripe_webhook() -> Any:
            body = read_body()
            if body is None:
                return refused()
            outcome: WebhookResult | UsageFlowError
            try:
                outcome = await flow.handle_webhook(
                    body,
                    request.headers.get("Stripe-Signature"),
                    tolerance=tolerance,
                )
            except UsageFlowError as exc:
                outcome = exc
            content, status = answer(outcome)
            return jsonify(content), status

    else:

        def stripe_webhook() -> Any:  # type: ignore[misc]
            body = read_body()
            if body is None:
                return refused()
            outcome: WebhookResult | UsageFlowError
            try:
                outcome = flow.handle_webhook(
                    body,
                    request.headers.get("Stripe-Signature"),
                    tolerance=tolerance,
                )
            except UsageFlowError as exc:
                outcome = exc
            content, status = answer(outcome)
            return jsonify(content), status

    blueprint.add_url_rule(path, "stripe_webhook", stripe_webhook, methods=["POST"])
    return blueprint
