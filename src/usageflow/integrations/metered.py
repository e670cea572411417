"""``@metered``: meter a handler (async or sync) against a UsageFlow quota.

::

    @app.post("/v1/exports")
    @metered("design-export")
    async def export(...): ...

    @app.route("/v1/summaries", methods=["POST"])        # Flask, with UsageFlowFlask(app, ...)
    @metered("summaries", credits=lambda result: result["pages"])
    def summarize(): ...

Before the handler runs, the credits are reserved (atomically checked and held); after it
returns they are committed if the response is charged (a status below 400 by default, read
from the returned response or ``(body, status)`` tuple), and released when it is not or when
the handler raises. ``credits`` may be a function of the handler's return value, so a handler
can charge what it actually used; ``reserve`` credits (default 1) are then held up front. A
handler that streams (a Starlette ``StreamingResponse``; in Flask a generator or a streamed
``Response``) is charged when its body has been produced to the end, ``credits`` computed
then; a stream that fails or is cut costs nothing.

The flow and the request's user come from the framework integration serving the request
(``UsageFlowMiddleware`` for Starlette and FastAPI, ``UsageFlowFlask`` for Flask) or are given
explicitly (``flow=``, ``user_id=`` a function called with the handler's arguments); outside
a request the user is :data:`usageflow.context.current_user_id`. A refusal raises
:class:`MeteringError` (a :class:`usageflow.UsageFlowError` with the core's code: a spent
quota is ``USAGE_LIMIT_ERROR``), which the integrations answer with ``402``, ``401``, ``400``
or ``503``. The same feature is metered once per request however many decorators (or a
middleware route) cover it.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, ParamSpec, TypeVar, cast

from usageflow.context import current_user_id
from usageflow.errors import ErrorCodes, UsageFlowError, config_error
from usageflow.integrations._http import (
    AnyFlow,
    AnyReservation,
    AsyncGate,
    Binding,
    ChargeIf,
    Meter,
    MeteringError,
    SyncGate,
    active_features,
    check_flow,
    count_problem,
    credits_function_failed,
    default_charge_if,
    find_binding,
    normalize_user_id,
    problem_for,
    settle_credits,
    unauthenticated,
)

__all__ = ["MeteringError", "metered"]

logger = logging.getLogger("usageflow.integrations")

P = ParamSpec("P")
R = TypeVar("R")


def _status_of(result: object) -> int:
    """The HTTP status of a handler's return value: a response's ``status_code``, a Flask
    ``(body, status[, headers])`` tuple, else 200."""
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
    """The ``body_iterator`` of a Starlette ``StreamingResponse``, settling its reservation
    once: committed when the stream has been produced to its end, released when it fails,
    is cancelled or is closed before."""

    def __init__(self, body: AsyncIterable[Any], finish: Callable[[bool], Awaitable[None]]) -> None:
        self._it: AsyncIterator[Any] = body.__aiter__()
        self._finish = finish
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

    async def _settle(self, completed: bool) -> None:
        if not self._settled:
            self._settled = True
            await self._finish(completed)


def _stream_of(result: object) -> tuple[str, Any] | None:
    """Whether the handler's result is a body produced after it returns, and which kind:
    ``("async", response)`` for a Starlette ``StreamingResponse``, ``("sync", ...)`` for a
    streamed Werkzeug response, a generator, or a Flask tuple starting with one of them."""
    body = getattr(result, "body_iterator", None)
    if body is not None and hasattr(body, "__aiter__"):
        return "async", result
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
    result.response = _SettledBody(result.response, finish)
    return result


class _Plan:
    """What one call of a metered handler resolved: flow, policy and user resolution."""

    __slots__ = ("binding", "charge_if", "enabled", "fail_open", "flow")

    def __init__(self, meter: Meter, flow: AnyFlow | None) -> None:
        binding = find_binding()
        chosen = flow or (binding.flow if binding is not None else None)
        if chosen is None:
            raise config_error(
                f"@metered({meter.feature!r}) found no flow: install UsageFlowMiddleware "
                "(Starlette, FastAPI) or UsageFlowFlask (Flask), or pass flow="
            )
        self.flow: AnyFlow = chosen
        self.binding: Binding | None = binding
        self.enabled = binding.enabled if binding is not None else True
        if meter.fail_open is not None:
            self.fail_open = meter.fail_open
        else:
            self.fail_open = binding.fail_open if binding is not None else False
        self.charge_if: ChargeIf = meter.charge_if or (
            binding.charge_if if binding is not None else default_charge_if
        )

    def refuse(self, exc: UsageFlowError, meter: Meter, url: str | None, now: Any) -> MeteringError:
        problem = problem_for(exc, meter.feature, now, url)
        if self.binding is not None and self.binding.stats is not None:
            count_problem(self.binding.stats, problem)
        details = {**exc.details, "upgrade_url": url} if url else exc.details
        return MeteringError(exc.code, exc.message, details, problem)

    def no_user(self, meter: Meter) -> MeteringError:
        problem = unauthenticated(meter.feature)
        if self.binding is not None and self.binding.stats is not None:
            count_problem(self.binding.stats, problem)
        return MeteringError(
            ErrorCodes.USAGE_INVALID_PARAMS,
            f"{meter.feature!r} is metered per user and there is no current user",
            {"field": "user_id", "feature_name": meter.feature},
            problem,
        )

    def raw_user(self, explicit: Callable[[], Any] | None) -> Any:
        """The user id before normalization (maybe an awaitable): the handler's own
        ``user_id`` function, else the integration's, else the current request user."""
        if explicit is not None:
            return explicit()
        if self.binding is not None and self.binding.user_id is not None:
            return self.binding.user_id()
        return current_user_id.get()

    def count(self, name: str) -> None:
        if self.binding is not None and self.binding.stats is not None:
            self.binding.stats.add(name)

    def record(self, held: AnyReservation, charged: int | None, replace: bool = False) -> None:
        """Keep the decision for the integration's quota headers, ``remaining`` corrected by
        what was actually charged (``None``: nothing). ``replace`` corrects an earlier record
        of the same reservation."""
        if self.binding is None:
            return
        entry = (held.decision, held.credits - (charged or 0))
        decisions = self.binding.decisions
        if replace:
            for i, (decision, _refund) in enumerate(decisions):
                if decision is held.decision:
                    decisions[i] = entry
                    return
        decisions.append(entry)


def _fail_open_log(meter: Meter, exc: UsageFlowError) -> None:
    logger.warning(
        "usageflow: store failed, %r let through unmetered (fail_open): %s",
        meter.feature,
        exc.message,
    )


def metered(
    feature_name: str,
    credits: int | Callable[[Any], Any] = 1,
    *,
    reserve: int | None = None,
    flow: AnyFlow | None = None,
    user_id: Callable[..., Any] | None = None,
    fail_open: bool | None = None,
    charge_if: ChargeIf | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Meter the decorated handler (``async def`` or ``def``) under ``feature_name``.

    :param credits: an int, or ``fn(result) -> int`` computed from the handler's return value
        (sync or async); ``0`` charges nothing.
    :param reserve: credits held before the handler runs when ``credits`` is a function.
    :param flow: a ``UsageFlow`` / ``AsyncUsageFlow``; default: the integration's.
    :param user_id: ``fn(*args, **kwargs) -> str | None`` called with the handler's arguments;
        default: the integration's user, else :data:`usageflow.context.current_user_id`.
    :param fail_open: on a store failure run the handler unmetered instead of refusing.
    :param charge_if: ``fn(status) -> bool``; default: the integration's (status < 400).
    """
    meter = Meter(feature_name, credits, reserve, fail_open, charge_if)
    if flow is not None:
        check_flow(flow)
    if user_id is not None and not callable(user_id):
        raise config_error("user_id must be a function of the handler's arguments")

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if not callable(fn):
            raise config_error("@metered decorates a function")
        if inspect.iscoroutinefunction(fn):
            return cast(Callable[P, R], _async_wrapper(fn, meter, flow, user_id))
        return _sync_wrapper(fn, meter, flow, user_id)

    return decorate


def _async_wrapper(
    fn: Callable[..., Any],
    meter: Meter,
    flow: AnyFlow | None,
    user_id: Callable[..., Any] | None,
) -> Callable[..., Any]:
    gates: dict[int, AsyncGate] = {}

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if meter.feature in active_features.get():
            return await fn(*args, **kwargs)
        plan = _Plan(meter, flow)
        if not plan.enabled:
            return await fn(*args, **kwargs)
        gate = gates.get(id(plan.flow))
        if gate is None or gate.flow is not plan.flow:
            gate = gates[id(plan.flow)] = AsyncGate(plan.flow)
        raw = plan.raw_user(None if user_id is None else lambda: user_id(*args, **kwargs))
        if inspect.isawaitable(raw):
            raw = await raw
        try:
            user = normalize_user_id(raw)
        except UsageFlowError as exc:
            raise plan.refuse(exc, meter, None, gate.now()) from None
        if user is None:
            raise plan.no_user(meter)
        features_token = active_features.set(active_features.get() | {meter.feature})
        try:
            try:
                held = await gate.reserve(user, meter.feature, meter.held)
            except UsageFlowError as exc:
                if exc.is_store_failure and plan.fail_open:
                    plan.count("failed_open")
                    _fail_open_log(meter, exc)
                    return await fn(*args, **kwargs)
                url = None
                if exc.code is ErrorCodes.USAGE_LIMIT_ERROR:
                    url = await gate.upgrade_url(user, meter.feature)
                raise plan.refuse(exc, meter, url, gate.now()) from exc
            plan.count("allowed")
            user_token = current_user_id.set(user)
            try:
                result = await fn(*args, **kwargs)
            except BaseException:
                await _settle_async(gate, plan, held, None, meter)
                raise
            finally:
                current_user_id.reset(user_token)
            charged = plan.charge_if(_status_of(result))
            stream = _stream_of(result) if charged else None
            if stream is not None:  # produced after we return: settled when it ends
                plan.record(held, held.credits)
                return _defer_to_stream(stream, result, gate.flow, plan, held, meter)
            amount = await _amount_async(meter, held, result) if charged else None
            await _settle_async(gate, plan, held, amount, meter)
            plan.record(held, amount)
            return result
        finally:
            active_features.reset(features_token)

    wrapper.__usageflow_meter__ = meter  # type: ignore[attr-defined]
    return wrapper


async def _amount_async(meter: Meter, held: AnyReservation, result: object) -> int:
    """The credits to commit: the meter's int, or its function of the result (the reserved
    amount when that function fails or returns something unusable)."""
    if isinstance(meter.credits, int):
        return held.credits
    value = meter.credits(result)
    if inspect.isawaitable(value):
        value = await value
    return settle_credits(value, meter.feature, held.credits)


def _amount_sync(gate: SyncGate, meter: Meter, held: AnyReservation, result: object) -> int:
    if isinstance(meter.credits, int):
        return held.credits
    value = meter.credits(result)
    if inspect.isawaitable(value):
        value = gate.resolve(value)
    return settle_credits(value, meter.feature, held.credits)


def _defer_to_stream(
    stream: tuple[str, Any],
    result: Any,
    flow: AnyFlow,
    plan: _Plan,
    held: AnyReservation,
    meter: Meter,
) -> Any:
    """Hand the settling of ``held`` to the streamed body of ``result``."""
    kind, response = stream
    if kind == "async":
        gate = AsyncGate(flow)

        async def finish_async(completed: bool) -> None:
            amount: int | None = None
            if completed:
                try:
                    amount = await _amount_async(meter, held, result)
                except Exception:
                    credits_function_failed(meter.feature)
                    amount = held.credits
            await _settle_async(gate, plan, held, amount, meter)

        response.body_iterator = _SettledAsyncBody(response.body_iterator, finish_async)
        return result
    sync_gate = SyncGate(flow)

    def finish(completed: bool) -> None:
        amount: int | None = None
        if completed:
            try:
                amount = _amount_sync(sync_gate, meter, held, result)
            except Exception:
                credits_function_failed(meter.feature)
                amount = held.credits
        _settle_sync(sync_gate, plan, held, amount, meter)

    return _wrap_sync_stream(result, finish)


async def _settle_async(
    gate: AsyncGate, plan: _Plan, held: AnyReservation, credits: int | None, meter: Meter
) -> None:
    try:
        await gate.settle(held, credits)
    except UsageFlowError as exc:
        plan.count("settle_errors")
        logger.error("usageflow: could not settle %r (the hold expires): %s", meter.feature, exc)
        return
    plan.count("charged" if credits else "released")


def _sync_wrapper(
    fn: Callable[P, R],
    meter: Meter,
    flow: AnyFlow | None,
    user_id: Callable[..., Any] | None,
) -> Callable[P, R]:
    gates: dict[int, SyncGate] = {}

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if meter.feature in active_features.get():
            return fn(*args, **kwargs)
        plan = _Plan(meter, flow)
        if not plan.enabled:
            return fn(*args, **kwargs)
        gate = gates.get(id(plan.flow))
        if gate is None or gate.flow is not plan.flow:
            gate = gates[id(plan.flow)] = SyncGate(plan.flow)
        raw = plan.raw_user(None if user_id is None else lambda: user_id(*args, **kwargs))
        if inspect.isawaitable(raw):
            raw = gate.resolve(raw)
        try:
            user = normalize_user_id(raw)
        except UsageFlowError as exc:
            raise plan.refuse(exc, meter, None, gate.now()) from None
        if user is None:
            raise plan.no_user(meter)
        features_token = active_features.set(active_features.get() | {meter.feature})
        try:
            try:
                held = gate.reserve(user, meter.feature, meter.held)
            except UsageFlowError as exc:
                if exc.is_store_failure and plan.fail_open:
                    plan.count("failed_open")
                    _fail_open_log(meter, exc)
                    return fn(*args, **kwargs)
                url = None
                if exc.code is ErrorCodes.USAGE_LIMIT_ERROR:
                    url = gate.upgrade_url(user, meter.feature)
                raise plan.refuse(exc, meter, url, gate.now()) from exc
            plan.count("allowed")
            user_token = current_user_id.set(user)
            try:
                result = fn(*args, **kwargs)
            except BaseException:
                _settle_sync(gate, plan, held, None, meter)
                raise
            finally:
                current_user_id.reset(user_token)
            charged = plan.charge_if(_status_of(result))
            stream = _stream_of(result) if charged else None
            if stream is not None:  # produced after we return: settled when it ends
                plan.record(held, held.credits)
                return cast(R, _defer_to_stream(stream, result, gate.flow, plan, held, meter))
            amount = _amount_sync(gate, meter, held, result) if charged else None
            _settle_sync(gate, plan, held, amount, meter)
            plan.record(held, amount)
            return result
        finally:
            active_features.reset(features_token)

    wrapper.__usageflow_meter__ = meter  # type: ignore[attr-defined]
    return wrapper


def _settle_sync(
    gate: SyncGate, plan: _Plan, held: AnyReservation, credits: int | None, meter: Meter
) -> None:
    try:
        gate.settle(held, credits)
    except UsageFlowError as exc:
        plan.count("settle_errors")
        logger.error("usageflow: could not settle %r (the hold expires): %s", meter.feature, exc)
        return
    plan.count("charged" if credits else "released")
