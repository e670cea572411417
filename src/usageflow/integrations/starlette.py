"""``UsageFlowMiddleware``: plan quotas for Starlette and FastAPI, as a pure ASGI middleware.

::

    app.add_middleware(
        UsageFlowMiddleware,
        flow=flow,                                   # AsyncUsageFlow or UsageFlow
        routes={
            "POST /v1/exports": "design-export",
            "/v1/chat/{chat_id}": {"feature": "ai_chat_limit", "credits": 2},
            "WS /v1/live/{room}": "live-sessions",
        },
        user_id=lambda request: request.headers.get("x-user-id"),
    )

A key is a route template of the app (its full path, ``Mount`` and router prefixes
included, in Starlette's syntax); a key that matches no route of the app is a
``USAGE_CONFIG_ERROR`` when the app starts (or at its first request, without lifespan).

For a metered request with a fixed number of credits the middleware checks and charges them
in one store call before the app runs (refusing with ``402``, ``401``, ``400`` or ``503``);
a response that is not charged (a status of 400 or more by default, a handler that raised, a
stream cut short) gets its credits back. Credits computed from the response are reserved
before and committed once the response has been sent. Every metered response carries
``RateLimit-Policy`` / ``RateLimit`` headers. A ``WS`` route is charged once per connection,
when the app accepts it. Lifespan and unmatched requests pass straight through. The
middleware also binds the flow for :func:`usageflow.metered` handlers and the FastAPI
dependency of the app, and answers their refusals.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from usageflow.integrations import requires

with requires("starlette"):
    import anyio
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import Headers
    from starlette.exceptions import HTTPException
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import Response
    from starlette.routing import Route
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

from usageflow.context import current_user_id
from usageflow.errors import config_error
from usageflow.integrations import _pages
from usageflow.integrations._asgi_routes import check_route_keys
from usageflow.integrations._http import (
    AnyFlow,
    ChargeIf,
    Meter,
    MeteringError,
    Problem,
    RouteTable,
    ServedResponse,
    check_flow,
    default_charge_if,
    headers_of,
    normalize_user_id,
    quota_header_bytes,
    route_path,
)
from usageflow.integrations._lifecycle import (
    PASS,
    Binding,
    Metering,
    MeterStats,
    Policy,
    Refusal,
    Ticket,
    active_features,
    check_reservation_ttl,
    current_binding,
    drive_async,
    run_inline,
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
ExemptFunc = Callable[[HTTPConnection], Any]


def _default_user_id(request: HTTPConnection) -> str | None:
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
    :param routes: ``{"METHOD /path/{param}": feature}``, each key a route template of the app
        (``WS /path`` for a websocket route); a value is a feature name, a :class:`Meter` or a
        dict of its fields (``feature``, ``credits``: an int or ``fn(request, response) ->
        int``, ``reserve``, ``fail_open``, ``charge_if``, ``settle``).
    :param user_id: ``fn(request) -> str | None``, sync or async; by default the identity of
        Starlette's authenticated ``request.user``. ``None`` or ``""`` answers ``401``.
    :param exempt: ``fn(request) -> bool``, sync or async, asked once per request: a true
        answer lets the request through unmetered (its route and any ``@metered`` handler),
        before its user is resolved (health checks, admins, internal calls); counted as
        ``exempt``.
    :param fail_open: on a store failure let requests through unmetered (default: ``503``);
        a route's own ``fail_open`` wins. Every such pass is logged and counted.
    :param charge_if: ``fn(status) -> bool``, which responses are charged (default ``< 400``).
    :param headers: add the ``RateLimit`` quota headers to metered responses.
    :param reservation_ttl: seconds a hold lives if the process dies mid-request
        (``settle="hold"`` routes).
    :param stats: a :class:`MeterStats` to count decisions in (one is made otherwise).
    """

    def __init__(
        self,
        app: ASGIApp,
        flow: AnyFlow,
        routes: Mapping[str, object] | None = None,
        user_id: UserIdFunc | None = None,
        *,
        exempt: ExemptFunc | None = None,
        fail_open: bool = False,
        charge_if: ChargeIf = default_charge_if,
        headers: bool = True,
        reservation_ttl: float | None = None,
        stats: MeterStats | None = None,
    ) -> None:
        self.app = app
        self.flow = check_flow(flow)
        self.routes = RouteTable(routes)
        self._keys = list(routes or ())
        self._checked = not self._keys
        if user_id is not None and not callable(user_id):
            raise config_error("user_id must be a function of the request")
        self.user_id: Callable[[Any], Any] = user_id or _default_user_id
        self._warned_no_user = user_id is not None
        if exempt is not None and not callable(exempt):
            raise config_error("exempt must be a function of the request returning a bool")
        self.exempt = exempt
        if not isinstance(fail_open, bool):
            raise config_error("fail_open must be a bool")
        if not callable(charge_if):
            raise config_error("charge_if must be a function of the status code")
        if not isinstance(headers, bool):
            raise config_error("headers must be a bool")
        if stats is not None and not isinstance(stats, MeterStats):
            raise config_error("stats must be a MeterStats")
        self.headers = headers
        self.stats = stats or MeterStats()
        self.policy = Policy(
            fail_open, charge_if, check_reservation_ttl(reservation_ttl), self.stats
        )
        self._meterings: dict[int, Metering] = {}

    # -- start-up: the route table is checked against the app's own routes --------------------
    def _check_routes(self, scope: Scope) -> None:
        if not self._checked:
            check_route_keys(self._keys, scope.get("app") or self.app)
            self._checked = True

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def checked_send(message: Message) -> None:
            # Raised inside the app's lifespan, so that the server sees a failed start-up
            # (``lifespan.startup.failed``) and refuses to serve.
            if message["type"] == "lifespan.startup.complete":
                self._check_routes(scope)
            await send(message)

        await self.app(scope, receive, checked_send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan" and not self._checked:
            await self._lifespan(scope, receive, send)
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not self._checked:  # served without lifespan: checked at the first request
            self._check_routes(scope)
        binding = Binding(self.flow, lambda: self.user_id(_connection(scope)), self.policy)
        token = current_binding.set(binding)
        try:
            if self.exempt is not None and await self._is_exempt(scope):
                # Nothing in an exempt request is metered: its routes nor its @metered handlers.
                self.stats.add("exempt")
                binding.enabled = False
                await self._bound(scope, receive, send, binding)
                return
            method = scope["method"] if kind == "http" else "WS"
            meter = self.routes.match(method, route_path(scope)) if self.routes else None
            if meter is None:
                await self._bound(scope, receive, send, binding)
            else:
                await self._metered(scope, receive, send, self._metering(meter), binding)
        finally:
            current_binding.reset(token)

    def _metering(self, meter: Meter) -> Metering:
        metering = self._meterings.get(id(meter))  # the table's own Meter: found by identity
        if metering is None:
            metering = self._meterings[id(meter)] = Metering(meter, self.policy)
        return metering

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
                        *_encode(headers_of(binding.decisions, self.flow.core.clock())),
                    ]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except MeteringError as exc:
            if started or scope["type"] != "http":
                raise
            await _send_problem(send, exc.problem)

    async def _is_exempt(self, scope: Scope) -> bool:
        assert self.exempt is not None
        answer = self.exempt(_connection(scope))
        if inspect.isawaitable(answer):
            answer = await answer
        return bool(answer)

    def _user_of(self, scope: Scope) -> Any:
        if not self._warned_no_user and "user" not in scope:
            self._warned_no_user = True
            logger.warning(
                "usageflow: UsageFlowMiddleware has no user_id= and no authentication "
                "middleware sets request.user: every metered request is answered 401. Pass "
                "user_id=fn(request) -> str, or install Starlette's AuthenticationMiddleware "
                "inside it"
            )
        return self.user_id(_connection(scope))

    async def _metered(
        self, scope: Scope, receive: Receive, send: Send, metering: Metering, binding: Binding
    ) -> None:
        feature = metering.meter.feature
        try:
            admission = await drive_async(
                self.flow, metering.admit(self.flow.core, self._user_of(scope))
            )
        except HTTPException as exc:  # the app's authentication refused the request
            await self._answer(scope, send, _http_problem(exc, feature))
            return
        if admission is PASS:
            await self._bound(scope, receive, send, binding)
        elif isinstance(admission, Refusal):
            await self._answer(scope, send, admission.problem)
        elif scope["type"] == "websocket":
            assert isinstance(admission, Ticket)
            await self._serve_websocket(scope, receive, send, metering, admission)
        else:
            assert isinstance(admission, Ticket)
            await self._serve(scope, receive, send, metering, binding, admission)

    async def _answer(self, scope: Scope, send: Send, problem: Problem) -> None:
        if scope["type"] == "http":
            await _send_problem(send, problem)
        elif "websocket.http.response" in scope.get("extensions", {}):
            # The denial response extension: the client sees the 402 and its body.
            content = problem.content()
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": problem.status,
                    "headers": _encode(problem.all_headers(content)),
                }
            )
            await send({"type": "websocket.http.response.body", "body": content})
        else:  # 1008: policy violation, the closest a plain websocket close can say
            reason = str(problem.body.get("title", ""))[:120]
            await send({"type": "websocket.close", "code": 1008, "reason": reason})

    async def _finish(
        self,
        metering: Metering,
        ticket: Ticket,
        status: int | None,
        credits: Callable[[], object] | None = None,
    ) -> None:
        steps = metering.finish(self.flow.core, ticket, status, credits)
        if metering.stands(ticket, status):
            run_inline(steps)
            return
        # Served (or given back) is settled even when the client goes away meanwhile.
        with anyio.CancelScope(shield=True):
            await drive_async(self.flow, steps, shielded=True)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        metering: Metering,
        binding: Binding,
        ticket: Ticket,
    ) -> None:
        meter = metering.meter
        status = 0
        size = 0
        started = False
        raw_headers: list[tuple[bytes, bytes]] = []

        def credits() -> object:
            assert callable(meter.credits)
            served = ServedResponse(status, Headers(raw=raw_headers), size)
            return meter.credits(Request(scope), served)

        async def send_wrapper(message: Message) -> None:
            nonlocal status, size, started, raw_headers
            kind = message["type"]
            if kind == "http.response.start":
                status = int(message["status"])
                started = True
                raw_headers = message.get("headers") or []
                if self.headers:
                    now = self.flow.core.clock()
                    refund = 0 if ticket.charges(status) else ticket.credits
                    extra = quota_header_bytes(ticket.decision, now, refund=refund)
                    if binding.decisions:
                        extra += _encode(headers_of(binding.decisions, now))
                    message["headers"] = [*raw_headers, *extra]
            elif kind == "http.response.body":
                size += len(message.get("body", b""))
                if not message.get("more_body", False) and ticket.charges(status):
                    # Settled before the last bytes leave: a client that received the whole
                    # response has been charged for it.
                    await self._finish(
                        metering,
                        ticket,
                        status,
                        None if isinstance(meter.credits, int) else credits,
                    )
            await send(message)

        user_token = current_user_id.set(ticket.user)
        features_token = active_features.set(metering.entered())
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
            if not ticket.settled:  # failed, cut short, or a status that is not charged
                # A charged status reaches here only when its body never completed.
                uncharged = started and failed is None and not ticket.charges(status)
                await self._finish(metering, ticket, status if uncharged else None)
        if failed is not None:
            raise failed

    async def _serve_websocket(
        self, scope: Scope, receive: Receive, send: Send, metering: Metering, ticket: Ticket
    ) -> None:
        """A metered websocket connection: charged once, when the app accepts it; given back
        when the app closes or fails without accepting."""

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "websocket.accept" and not ticket.settled:
                await self._finish(metering, ticket, 101)
            await send(message)

        user_token = current_user_id.set(ticket.user)
        features_token = active_features.set(metering.entered())
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            active_features.reset(features_token)
            current_user_id.reset(user_token)
            if not ticket.settled:
                await self._finish(metering, ticket, None)


def _connection(scope: Scope) -> HTTPConnection:
    """The request (HTTP) or connection (websocket) a user function is given."""
    return Request(scope) if scope["type"] == "http" else HTTPConnection(scope)


# -- pages ----------------------------------------------------------------------------------------
async def _page_request(request: Request) -> _pages.PageRequest:
    form: dict[str, str] = {}
    if request.method == "POST":
        # The admin forms are url-encoded (no file): read with the standard library rather
        # than Starlette's form parser, which needs python-multipart installed.
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
    base = request.scope.get("root_path", "")
    path = request.scope["path"][len(base) :] or "/"
    return _pages.PageRequest(
        request.method, path, dict(request.query_params), form, dict(request.cookies), base
    )


def _page_response(page: _pages.PageResponse) -> Response:
    response = Response(page.body, page.status, media_type=page.content_type.split(";")[0])
    for name, value in page.all_headers():
        response.headers.append(name, value)
    return response


def usage_app(flow: AnyFlow, *, user_id: Callable[[Request], object]) -> Starlette:
    """The signed-in user's usage page, to mount: ``app.mount("/usage", usage_app(flow,
    user_id=...))``. ``GET /`` is an HTML page, ``GET /usage.json`` the same data as JSON
    (docs/pages.md); ``user_id`` (sync or async, like the middleware's) names the user of a
    request, and a request with none is answered 401."""
    check_flow(flow)
    if not callable(user_id):
        raise config_error("usage_app needs user_id=fn(request) naming the signed-in user")

    async def page(request: Request) -> Response:
        raw = user_id(request)
        if inspect.isawaitable(raw):
            raw = await raw
        user = normalize_user_id(raw)
        built = _pages.usage_page(await _page_request(request), user)
        return _page_response(await _pages.drive_async(flow, built, run_in_threadpool))

    return Starlette(routes=[Route("/", page), Route("/usage.json", page)])


def admin_app(
    flow: AnyFlow,
    *,
    authorize: Callable[[Request], object] | None = None,
    admin_id: Callable[[Request], object] | None = None,
) -> Starlette:
    """The founder's admin page, to mount: ``app.mount("/admin", admin_app(flow,
    authorize=...))``. ``authorize(request)`` (sync or async) must say who may see it: a
    request it refuses is answered 403 before anything else is looked at, and leaving it out
    is a ``USAGE_CONFIG_ERROR``. ``admin_id(request)`` names the admin in the metadata of
    what an action records (default ``"admin"``)."""
    check_flow(flow)
    _pages.check_authorize(authorize)
    assert authorize is not None

    async def page(request: Request) -> Response:
        allowed = authorize(request)
        if inspect.isawaitable(allowed):
            allowed = await allowed
        if allowed is not True:
            return _page_response(_pages.forbidden())
        admin = admin_id(request) if admin_id is not None else "admin"
        if inspect.isawaitable(admin):
            admin = await admin
        built = _pages.admin_page(await _page_request(request), str(admin))
        return _page_response(await _pages.drive_async(flow, built, run_in_threadpool))

    return Starlette(
        routes=[
            Route("/", page),
            Route("/user", page),
            Route("/user/{action}", page, methods=["POST"]),
        ]
    )
