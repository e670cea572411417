"""``@metered``: meter a handler (async or sync) against a UsageFlow quota.

::

    @app.post("/v1/exports")
    @metered("design-export")
    async def export(...): ...

    @app.route("/v1/summaries", methods=["POST"])        # Flask, with UsageFlowFlask(app, ...)
    @metered("summaries", credits=lambda result: result["pages"])
    def summarize(): ...

With a fixed number of credits, they are checked and charged in one store call before the
handler runs, and given back when the response is not charged (a status of 400 or more by
default, read from the returned response or ``(body, status)`` tuple) or the handler raises.
``credits`` may instead be a function of the handler's return value, so a handler can charge
what it actually used; ``reserve`` credits (default 1) are then held up front and the
computed amount committed after. A handler that streams (a Starlette ``StreamingResponse``;
in Flask a generator or a streamed ``Response``) is settled when its body has been produced
to the end; a stream that fails or is cut costs nothing.

The flow and the request's user come from the framework adapter serving the request
(``UsageFlowMiddleware`` for Starlette and FastAPI, ``UsageFlowFlask`` for Flask, the Django
middleware) or are given explicitly (``flow=``, ``user_id=`` a function called with the
handler's arguments); outside a request the user is :data:`usageflow.context.current_user_id`.
A refusal raises :class:`MeteringError` (a :class:`usageflow.UsageFlowError` with the core's
code: a spent quota is ``USAGE_LIMIT_ERROR``), which the adapters answer with ``402``, ``401``,
``400`` or ``503``. The same feature is metered once per request however many decorators (or
a middleware route) cover it. The lifecycle itself is
:mod:`usageflow.integrations._lifecycle`; this module only translates handlers to it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, Literal, ParamSpec, TypeVar, cast

from usageflow.context import current_user_id
from usageflow.errors import config_error
from usageflow.integrations._http import AnyFlow, ChargeIf, Meter, MeteringError, check_flow
from usageflow.integrations._lifecycle import (
    DEFAULT_POLICY,
    PASS,
    Binding,
    Metering,
    Refusal,
    Ticket,
    active_features,
    check_reservation_ttl,
    drive_async,
    drive_sync,
    find_binding,
    meterings,
    run_inline,
)

__all__ = ["MeteringError", "metered"]

P = ParamSpec("P")
R = TypeVar("R")


def _status_of(result: object) -> int:
    """The HTTP status of a handler's return value: a response's ``status_code``, a Flask
    ``(body, status[, headers])`` tuple, else 200."""
    if type(result) is dict:
        return 200
    code = getattr(result, "status_code", None)
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    if isinstance(result, tuple) and len(result) >= 2:
        status = result[1]
        if isinstance(status, int) and not isinstance(status, bool):
            return status
        if isinstance(status, str) and status[:3].isdigit():
            return int(status[:3])
    return 200


class _SettledBody:
    """A streamed WSGI body (Flask) that settles its reservation once: committed when it has
    been read to the end, released when it is closed before (the client went away), fails,
    or is closed without ever being read."""

    def __init__(self, body: Iterable[Any], finish: Callable[[bool], None]) -> None:
        self._body = body
        self._it: Iterator[Any] = iter(body)
        self._finish = finish
        self._settled = False

    def __iter__(self) -> _SettledBody:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._it)
        except StopIteration:
            self._settle(True)
            raise
        except BaseException:
            self._settle(False)
            raise

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._settle(False)

    def _settle(self, completed: bool) -> None:
        if not self._settled:
            self._settled = True
            self._finish(completed)


class _SettledAsyncBody:
    """An async body (a Starlette ``StreamingResponse``'s ``body_iterator``, a Django
    ``StreamingHttpResponse``'s content) settling its reservation once: committed when it has
    been produced to its end, released when it fails, is cancelled or is closed before
    (``aclose``; or ``close``, which Django's ``response.close()`` calls, when a sync
    ``finish_sync`` is given)."""

    def __init__(
        self,
        body: AsyncIterable[Any],
        finish: Callable[[bool], Awaitable[None]],
        finish_sync: Callable[[bool], None] | None = None,
    ) -> None:
        self._it: AsyncIterator[Any] = body.__aiter__()
        self._finish = finish
        self._finish_sync = finish_sync
        self._settled = False

    def __aiter__(self) -> _SettledAsyncBody:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._it.__anext__()
        except StopAsyncIteration:
            await self._settle(True)
            raise
        except BaseException:
            await self._settle(False)
            raise

    async def aclose(self) -> None:
        try:
            close = getattr(self._it, "aclose", None)
            if close is not None:
                await close()
        finally:
            await self._settle(False)

    def close(self) -> None:
        if not self._settled and self._finish_sync is not None:
            self._settled = True
            self._finish_sync(False)

    async def _settle(self, completed: bool) -> None:
        if not self._settled:
            self._settled = True
            await self._finish(completed)


def _stream_of(result: object) -> tuple[str, Any] | None:
    """Whether the handler's result is a body produced after it returns, and which kind:
    ``("async", response)`` for a Starlette ``StreamingResponse``, ``("sync", ...)`` for a
    streamed Werkzeug response, a Django ``StreamingHttpResponse`` over a sync iterator, a
    generator, or a Flask tuple starting with one of them."""
    if type(result) is dict:  # the common answer of a JSON view: nothing to look at
        return None
    body = getattr(result, "body_iterator", None)
    if body is not None and hasattr(body, "__aiter__"):
        return "async", result
    if getattr(result, "streaming", False) is True and not getattr(result, "is_async", False):
        return "sync", result
    if getattr(result, "is_streamed", False) and getattr(result, "response", None) is not None:
        return "sync", result
    if inspect.isgenerator(result):
        return "sync", result
    if isinstance(result, tuple) and result and _stream_of(result[0]) is not None:
        return "sync", result
    return None


def _wrap_sync_stream(result: Any, finish: Callable[[bool], None]) -> Any:
    if isinstance(result, tuple):
        return (_wrap_sync_stream(result[0], finish), *result[1:])
    if inspect.isgenerator(result):
        return _SettledBody(result, finish)
    if getattr(result, "streaming", False) is True:  # Django: it closes what it is given
        result.streaming_content = _SettledBody(result.streaming_content, finish)
        return result
    result.response = _SettledBody(result.response, finish)
    return result


class _Decoration:
    """What the sync and async wrappers of one decorated handler share: its meter, and how to
    find the flow, the policy and the user of the call being served."""

    __slots__ = ("feature", "flow", "meter", "meterings", "reservation_ttl", "user_id")

    def __init__(
        self,
        meter: Meter,
        flow: AnyFlow | None,
        user_id: Callable[..., Any] | None,
        reservation_ttl: float | None,
    ) -> None:
        self.meter = meter
        self.feature = meter.feature
        self.flow = flow
        self.user_id = user_id
        self.reservation_ttl = reservation_ttl
        self.meterings = meterings(meter)

    def bind(self) -> tuple[AnyFlow, Binding | None, Metering] | None:
        """The flow, binding and lifecycle of this call; ``None`` when the adapter serving it
        has metering switched off."""
        binding = find_binding()
        if binding is not None and not binding.enabled:
            return None
        flow = self.flow or (binding.flow if binding is not None else None)
        if flow is None:
            raise config_error(
                f"@metered({self.feature!r}) found no flow: install UsageFlowMiddleware "
                "(Starlette, FastAPI), UsageFlowFlask (Flask) or the Django middleware, or "
                "pass flow="
            )
        policy = binding.policy if binding is not None else DEFAULT_POLICY
        if self.reservation_ttl is not None:
            policy = policy._replace(reservation_ttl=self.reservation_ttl)
        return flow, binding, self.meterings(policy)

    def raw_user(self, binding: Binding | None, args: Any, kwargs: Any) -> Any:
        """The user id before it is checked (maybe an awaitable): the handler's own ``user_id``
        function, else the adapter's, else the current request user."""
        if self.user_id is not None:
            return self.user_id(*args, **kwargs)
        if binding is not None and binding.user_id is not None:
            return binding.user_id()
        return current_user_id.get()

    def credits_of(self, result: object) -> Callable[[], object] | None:
        credits = self.meter.credits
        if isinstance(credits, int):
            return None
        return lambda: credits(result)

    @staticmethod
    def record(
        binding: Binding | None, ticket: Ticket, charged: int, replace: bool = False
    ) -> None:
        """Keep the decision for the adapter's quota headers, ``remaining`` corrected by what
        was actually charged. ``replace`` corrects an earlier record of the same ticket."""
        if binding is None:
            return
        entry = (ticket.decision, ticket.credits - charged)
        decisions = binding.decisions
        if replace:
            for i, (decision, _refund) in enumerate(decisions):
                if decision is ticket.decision:
                    decisions[i] = entry
                    return
        decisions.append(entry)


def metered(
    feature_name: str,
    credits: int | Callable[[Any], Any] = 1,
    *,
    reserve: int | None = None,
    flow: AnyFlow | None = None,
    user_id: Callable[..., Any] | None = None,
    fail_open: bool | None = None,
    charge_if: ChargeIf | None = None,
    settle: Literal["charge", "hold"] | None = None,
    reservation_ttl: float | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Meter the decorated handler (``async def`` or ``def``) under ``feature_name``.

    :param credits: an int, or ``fn(result) -> int`` computed from the handler's return value
        (sync or async); ``0`` charges nothing.
    :param reserve: credits held before the handler runs when ``credits`` is a function.
    :param flow: a ``UsageFlow`` / ``AsyncUsageFlow``; default: the adapter's.
    :param user_id: ``fn(*args, **kwargs) -> str | None`` called with the handler's arguments;
        default: the adapter's user, else :data:`usageflow.context.current_user_id`.
    :param fail_open: on a store failure run the handler unmetered instead of refusing.
    :param charge_if: ``fn(status) -> bool``; default: the adapter's (status < 400).
    :param settle: ``"charge"`` (one store call; the default for an int) or ``"hold"``
        (reserve, then commit or release; always for a credits function).
    :param reservation_ttl: seconds a hold lives if the process dies mid-call.
    """
    meter = Meter(feature_name, credits, reserve, fail_open, charge_if, settle)
    if flow is not None:
        check_flow(flow)
    if user_id is not None and not callable(user_id):
        raise config_error("user_id must be a function of the handler's arguments")
    handler = _Decoration(meter, flow, user_id, check_reservation_ttl(reservation_ttl))

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if not callable(fn):
            raise config_error("@metered decorates a function")
        if inspect.iscoroutinefunction(fn):
            wrapper = cast(Callable[P, R], _async_wrapper(fn, handler))
        else:
            wrapper = _sync_wrapper(fn, handler)
        wrapper.__usageflow_meter__ = meter  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _async_wrapper(fn: Callable[..., Any], handler: _Decoration) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if handler.feature in active_features.get():
            return await fn(*args, **kwargs)
        bound = handler.bind()
        if bound is None:
            return await fn(*args, **kwargs)
        flow, binding, metering = bound
        core = flow.core
        features_token = active_features.set(metering.entered())
        try:
            admission = await drive_async(
                flow, metering.admit(core, handler.raw_user(binding, args, kwargs))
            )
            if admission is PASS:
                return await fn(*args, **kwargs)
            if isinstance(admission, Refusal):
                raise admission.error
            assert isinstance(admission, Ticket)
            ticket = admission
            user_token = current_user_id.set(ticket.user)
            try:
                result = await fn(*args, **kwargs)
            except BaseException:
                await drive_async(flow, metering.finish(core, ticket, None), shielded=True)
                raise
            finally:
                current_user_id.reset(user_token)
            status = _status_of(result)
            stream = _stream_of(result) if ticket.charges(status) else None
            if stream is not None:  # produced after we return: settled when it ends
                handler.record(binding, ticket, ticket.credits)
                return _defer_to_stream(stream, result, flow, handler, metering, ticket, status)
            credits = handler.credits_of(result)
            steps = metering.finish(core, ticket, status, credits)
            if metering.stands(ticket, status):
                charged = run_inline(steps)
            else:
                charged = await drive_async(flow, steps, shielded=True)
            handler.record(binding, ticket, charged)
            return result
        finally:
            active_features.reset(features_token)

    return wrapper


def _sync_wrapper(fn: Callable[P, R], handler: _Decoration) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if handler.feature in active_features.get():
            return fn(*args, **kwargs)
        bound = handler.bind()
        if bound is None:
            return fn(*args, **kwargs)
        flow, binding, metering = bound
        core = flow.core
        features_token = active_features.set(metering.entered())
        try:
            admission = drive_sync(
                flow, metering.admit(core, handler.raw_user(binding, args, kwargs))
            )
            if admission is PASS:
                return fn(*args, **kwargs)
            if isinstance(admission, Refusal):
                raise admission.error
            assert isinstance(admission, Ticket)
            ticket = admission
            user_token = current_user_id.set(ticket.user)
            try:
                result = fn(*args, **kwargs)
            except BaseException:
                drive_sync(flow, metering.finish(core, ticket, None))
                raise
            finally:
                current_user_id.reset(user_token)
            status = _status_of(result)
            stream = _stream_of(result) if ticket.charges(status) else None
            if stream is not None:  # produced after we return: settled when it ends
                handler.record(binding, ticket, ticket.credits)
                return cast(
                    R, _defer_to_stream(stream, result, flow, handler, metering, ticket, status)
                )
            credits = handler.credits_of(result)
            steps = metering.finish(core, ticket, status, credits)
            charged = (
                run_inline(steps) if metering.stands(ticket, status) else drive_sync(flow, steps)
            )
            handler.record(binding, ticket, charged)
            return result
        finally:
            active_features.reset(features_token)

    return wrapper


def _defer_to_stream(
    stream: tuple[str, Any],
    result: Any,
    flow: AnyFlow,
    handler: _Decoration,
    metering: Metering,
    ticket: Ticket,
    status: int,
) -> Any:
    """Hand the settling of ``ticket`` to the streamed body of ``result``: charged when it is
    produced to its end, given back when it fails or is cut."""
    kind, response = stream
    credits = handler.credits_of(result)
    core = flow.core
    if kind == "async":

        async def finish_async(completed: bool) -> None:
            outcome = status if completed else None
            await drive_async(flow, metering.finish(core, ticket, outcome, credits), shielded=True)

        response.body_iterator = _SettledAsyncBody(response.body_iterator, finish_async)
        return result

    def finish(completed: bool) -> None:
        drive_sync(flow, metering.finish(core, ticket, status if completed else None, credits))

    return _wrap_sync_stream(result, finish)
