"""``UsageFlowMiddleware``: plan quotas for Starlette and FastAPI, as a pure ASGI middleware.

::

    app.add_middleware(
        UsageFlowMiddleware,
        flow=flow,                                   # AsyncUsageFlow or UsageFlow
        routes={
            "POST /v1/exports": "design-export",
            "/v1/chat/{chat_id}": {"feature": "ai_chat_limit", "credits": 2},
        },
        user_id=lambda request: request.headers.get("x-user-id"),
    )

For a metered request the middleware reserves the credits before the app runs (refusing with
``402``, ``401``, ``400`` or ``503``), lets the app run, and once the response has been sent
completely commits the credits if the status is charged (``< 400`` by default) or releases
them otherwise; a request whose handler raises, or whose stream is cut, costs nothing.
Every metered response carries ``RateLimit-Policy`` / ``RateLimit`` headers. Lifespan,
websocket and unmatched requests pass straight through. It also binds the flow for
:func:`usageflow.metered` handlers and the FastAPI dependency of the app, and answers their
refusals.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from usageflow.context import current_user_id
from usageflow.errors import UsageFlowError, config_error
from usageflow.integrations._http import (
    AnyFlow,
    AnyReservation,
    AsyncGate,
    Binding,
    ChargeIf,
    Meter,
    MeteringError,
    MeterStats,
    Problem,
    RouteTable,
    ServedResponse,
    active_features,
    count_problem,
    credits_function_failed,
    current_binding,
    default_charge_if,
    headers_of,
    normalize_user_id,
    problem_for,
    quota_header_bytes,
    route_path,
    settle_credits,
    unauthenticated,
)

__all__ = [
    "Meter",
    "MeterStats",
    "MeteringError",
    "ServedResponse",
    "UsageFlowMiddleware",
    "metering_error_handler",
]

logger = logging.getLogger("usageflow.integrations")

UserIdFunc = Callable[[Request], Any]


def _default_user_id(request: Request) -> str | None:
    """The identity of Starlette's ``AuthenticationMiddleware`` user, when authenticated."""
    user = request.scope.get("user")
    if user is not None and getattr(user, "is_authenticated", False):
        identity = getattr(user, "identity", None)
        return None if identity is None else str(identity)
    return None


def _encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


async def _send_problem(send: Send, problem: Problem) -> None:
    content = problem.content()
    await send(
        {
            "type": "http.response.start",
            "status": problem.status,
            "headers": _encode(problem.all_headers(content)),
        }
    )
    await send({"type": "http.response.body", "body": content})


def _http_problem(exc: HTTPException, feature: str) -> Problem:
    """An ``HTTPException`` raised by the ``user_id`` function, as a problem response."""
    return Problem(
        exc.status_code,
        {
            "type": "about:blank",
            "title": str(exc.detail),
            "status": exc.status_code,
            "detail": str(exc.detail),
            "feature": feature,
        },
        list((exc.headers or {}).items()),
    )


def metering_error_handler(request: Request, exc: Exception) -> Response:
    """A Starlette / FastAPI exception handler answering :class:`MeteringError` refusals.

    Needed only for apps that use ``@metered`` or the FastAPI dependency without
    ``UsageFlowMiddleware`` (which answers them itself)::

        app.add_exception_handler(MeteringError, metering_error_handler)
    """
    if not isinstance(exc, MeteringError):
        raise exc
    problem = exc.problem
    content = problem.content()
    return Response(
        content,
        status_code=problem.status,
        headers=dict(problem.headers),
        media_type="application/problem+json",
    )


class UsageFlowMiddleware:
    """Meter the routes of an ASGI app against UsageFlow quotas.

    :param flow: an ``AsyncUsageFlow``, or a ``UsageFlow`` (its blocking calls then run in a
        worker thread).
    :param routes: ``{"METHOD /path/{param}": feature}``; a value is a feature name, a
        :class:`Meter` or a dict of its fields (``feature``, ``credits``: an int or
        ``fn(request, response) -> int``, ``reserve``, ``fail_open``, ``charge_if``).
    :param user_id: ``fn(request) -> str | None``, sync or async; by default the identity of
        Starlette's authenticated ``request.user``. ``None`` or ``""`` answers ``401``.
    :param fail_open: on a store failure let requests through unmetered (default: ``503``);
        a route's own ``fail_open`` wins. Every such pass is logged and counted.
    :param charge_if: ``fn(status) -> bool``, which responses are charged (default ``< 400``).
    :param headers: add the ``RateLimit`` quota headers to metered responses.
    :param reservation_ttl: seconds a reservation lives if the process dies mid-request.
    :param stats: a :class:`MeterStats` to count decisions in (one is made otherwise).
    """

    def __init__(
        self,
        app: ASGIApp,
        flow: AnyFlow,
        routes: Mapping[str, object] | None = None,
        user_id: UserIdFunc | None = None,
        *,
        fail_open: bool = False,
        charge_if: ChargeIf = default_charge_if,
        headers: bool = True,
        reservation_ttl: float | None = None,
        stats: MeterStats | None = None,
    ) -> None:
        self.app = app
        self.gate = AsyncGate(flow)
        self.routes = RouteTable(routes)
        if user_id is not None and not callable(user_id):
            raise config_error("user_id must be a function of the request")
        self.user_id: UserIdFunc = user_id or _default_user_id
        if not isinstance(fail_open, bool):
            raise config_error("fail_open must be a bool")
        if not callable(charge_if):
            raise config_error("charge_if must be a function of the status code")
        if not isinstance(headers, bool):
            raise config_error("headers must be a bool")
        if reservation_ttl is not None and (
            isinstance(reservation_ttl, bool)
            or not isinstance(reservation_ttl, (int, float))
            or not 0 < reservation_ttl <= 366 * 86400
        ):
            raise config_error("reservation_ttl must be a number of seconds up to one year")
        if stats is not None and not isinstance(stats, MeterStats):
            raise config_error("stats must be a MeterStats")
        self.fail_open = fail_open
        self.charge_if = charge_if
        self.headers = headers
        self.reservation_ttl = reservation_ttl
        self.stats = stats or MeterStats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        binding = Binding(
            self.gate.flow,
            self._user_resolver(scope),
            self.fail_open,
            self.charge_if,
            self.stats,
        )
        token = current_binding.set(binding)
        try:
            meter = self.routes.match(scope["method"], route_path(scope)) if self.routes else None
            if meter is None:
                await self._bound(scope, receive, send, binding)
            else:
                await self._metered(scope, receive, send, meter, binding)
        finally:
            current_binding.reset(token)

    def _user_resolver(self, scope: Scope) -> Callable[[], Any]:
        return lambda: self.user_id(Request(scope))

    async def _resolve_user(self, scope: Scope) -> str | None:
        value = self.user_id(Request(scope))
        if type(value) is str and value.strip():  # the common answer, checked first
            return value
        if inspect.isawaitable(value):
            value = await value
        return normalize_user_id(value)

    async def _bound(self, scope: Scope, receive: Receive, send: Send, binding: Binding) -> None:
        """An unmetered request: only decorated handlers inside may meter."""
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if binding.decisions and self.headers:
                    message["headers"] = [
                        *message.get("headers", ()),
                        *_encode(headers_of(binding.decisions, self.gate.now())),
                    ]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except MeteringError as exc:
            if started:
                raise
            await _send_problem(send, exc.problem)

    async def _metered(
        self, scope: Scope, receive: Receive, send: Send, meter: Meter, binding: Binding
    ) -> None:
        feature = meter.feature
        fail_open = self.fail_open if meter.fail_open is None else meter.fail_open
        charge_if = meter.charge_if or self.charge_if
        gate = self.gate
        try:
            user = await self._resolve_user(scope)
        except UsageFlowError as exc:
            await self._refuse(send, problem_for(exc, feature, gate.now()))
            return
        except HTTPException as exc:  # the app's authentication refused the request
            await _send_problem(send, _http_problem(exc, feature))
            return
        if user is None:
            await self._refuse(send, unauthenticated(feature))
            return
        try:
            held = await gate.reserve(user, feature, meter.held, self.reservation_ttl)
        except UsageFlowError as exc:
            if exc.is_store_failure and fail_open:
                self.stats.add("failed_open")
                logger.warning(
                    "usageflow: store failed, %r let through unmetered (fail_open): %s",
                    feature,
                    exc.message,
                )
                await self._bound(scope, receive, send, binding)
                return
            if exc.is_store_failure:
                logger.error("usageflow: store failed, %r refused with 503: %s", feature, exc)
            url = await gate.upgrade_url(user, feature) if exc.code == "USAGE_LIMIT_ERROR" else None
            await self._refuse(send, problem_for(exc, feature, gate.now(), url))
            return
        self.stats.add("allowed")
        await self._serve(scope, receive, send, meter, binding, user, held, charge_if)

    async def _refuse(self, send: Send, problem: Problem) -> None:
        count_problem(self.stats, problem)
        await _send_problem(send, problem)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        meter: Meter,
        binding: Binding,
        user: str,
        held: AnyReservation,
        charge_if: ChargeIf,
    ) -> None:
        status = 0
        size = 0
        started = settled = False
        raw_headers: list[tuple[bytes, bytes]] = []
        decision = held.decision

        async def settle(credits: int | None) -> None:
            nonlocal settled
            settled = True
            if self.gate.suspends:
                with anyio.CancelScope(shield=True):
                    await self._settle(held, credits, meter.feature)
            else:
                await self._settle(held, credits, meter.feature)

        async def send_wrapper(message: Message) -> None:
            nonlocal status, size, started, raw_headers
            kind = message["type"]
            if kind == "http.response.start":
                status = int(message["status"])
                started = True
                raw_headers = message.get("headers") or []
                if self.headers:
                    now = self.gate.now()
                    refund = 0 if charge_if(status) else held.credits
                    extra = quota_header_bytes(decision, now, refund=refund)
                    if binding.decisions:
                        extra += _encode(headers_of(binding.decisions, now))
                    message["headers"] = [*raw_headers, *extra]
            elif kind == "http.response.body":
                size += len(message.get("body", b""))
                if not message.get("more_body", False) and not settled and charge_if(status):
                    # Committed before the last bytes leave: a client that received the whole
                    # response has been charged for it.
                    await settle(
                        meter.credits
                        if isinstance(meter.credits, int)
                        else await self._credits(meter, scope, status, raw_headers, size, held)
                    )
            await send(message)

        user_token = current_user_id.set(user)
        features_token = active_features.set(active_features.get() | {meter.feature})
        failed: BaseException | None = None
        try:
            await self.app(scope, receive, send_wrapper)
        except MeteringError as exc:
            failed = exc
            if not started:
                await _send_problem(send, exc.problem)
                failed = None
        except BaseException as exc:
            failed = exc
        finally:
            active_features.reset(features_token)
            current_user_id.reset(user_token)
            if not settled:  # failed, cut short, or a status that is not charged
                await settle(None)
        if failed is not None:
            raise failed

    async def _credits(
        self,
        meter: Meter,
        scope: Scope,
        status: int,
        raw_headers: list[tuple[bytes, bytes]],
        size: int,
        held: AnyReservation,
    ) -> int:
        assert not isinstance(meter.credits, int)
        served = ServedResponse(status, Headers(raw=raw_headers), size)
        try:
            value = meter.credits(Request(scope), served)
            if inspect.isawaitable(value):
                value = await value
        except Exception:
            credits_function_failed(meter.feature)
            return held.credits
        return settle_credits(value, meter.feature, held.credits)

    async def _settle(self, held: AnyReservation, credits: int | None, feature: str) -> None:
        try:
            await self.gate.settle(held, credits)
        except UsageFlowError as exc:
            self.stats.add("settle_errors")
            logger.error(
                "usageflow: could not %s %s credits of %r (the hold expires by itself): %s",
                "commit" if credits else "release",
                credits if credits else held.credits,
                feature,
                exc,
            )
            return
        self.stats.add("charged" if credits else "released")
