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
can charge what it actually used; ``reserve`` credits (default 1) are then held up front.

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
from collections.abc import Callable
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
            amount: int | None = None
            if charged:
                amount = held.credits
                if not isinstance(meter.credits, int):
                    value = meter.credits(result)
                    if inspect.isawaitable(value):
                        value = await value
                    checked = settle_credits(value, meter.feature)
                    amount = held.credits if checked is None else checked
            await _settle_async(gate, plan, held, amount, meter)
            plan.record(held, amount)
            return result
        finally:
            active_features.reset(features_token)

    wrapper.__usageflow_meter__ = meter  # type: ignore[attr-defined]
    return wrapper


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
            amount: int | None = None
            if charged:
                amount = held.credits
                if not isinstance(meter.credits, int):
                    value = meter.credits(result)
                    if inspect.isawaitable(value):
                        value = gate.resolve(value)
                    checked = settle_credits(value, meter.feature)
                    amount = held.credits if checked is None else checked
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
