"""The metering of one request or call, written once, framework-free and store-free.

Every adapter (the ASGI middleware, ``@metered`` on sync and async handlers, the FastAPI
dependency, the Flask extension, the Django middleware) meters through the two phases below
and only translates between its framework and them:

``admit``
    resolve the user, decide (one atomic store call), and answer with an :class:`Admission`:
    a :class:`Ticket` (serve the request), :data:`PASS` (serve it unmetered: exempt, metering
    disabled, or the store failed on a ``fail_open`` feature) or a :class:`Refusal` (a
    :class:`~usageflow.integrations._http.Problem` to answer and the
    :class:`~usageflow.integrations._http.MeteringError` to raise).
``finish``
    settle the ticket once the outcome is known (the status, or ``None`` when the handler
    raised or the stream was cut).

Both are core operations (:data:`usageflow._core.Op`): sans-I/O generators that delegate
to the core's own operations (``yield from core.consume(...)``) and yield, besides the core's
store calls, :class:`Resolve` (an awaitable the app handed over: an async ``user_id`` or
credits function). :func:`drive_sync` / :func:`drive_async` run them on a ``UsageFlow`` or an
``AsyncUsageFlow`` with the flow's own driver, so a metered request costs one driver loop,
and the sync and async adapters cannot decide differently.

Two ways to settle (``Meter.settle``):

``"charge"`` (the default for a fixed number of credits)
    ``consume`` before the handler: the check and the charge are one atomic store call, and
    a served request costs nothing more. A request that is not charged (a status
    ``charge_if`` refuses, a handler that raised, a stream cut short) costs one more call that
    gives the credits back (a ``credit`` event keyed ``refund:<event id>``).
``"hold"`` (always for credits computed from the response)
    ``reserve`` before, ``commit`` the actual credits or ``release`` after: two calls.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextvars import ContextVar
from typing import Any, Final, Literal, NamedTuple, TypeVar

from usageflow import _observe
from usageflow._core import Core, Op, quota_exhausted
from usageflow.errors import ErrorCodes, UsageFlowError, config_error
from usageflow.flow import AsyncUsageFlow, UsageFlow
from usageflow.integrations._http import (
    ChargeIf,
    Meter,
    MeteringError,
    Problem,
    default_charge_if,
    normalize_user_id,
    problem_for,
    unauthenticated,
)
from usageflow.models import INT64_MAX, Decision
from usageflow.ops import StoreCall

__all__ = [
    "PASS",
    "Admission",
    "Binding",
    "MeterStats",
    "Metering",
    "Policy",
    "Refusal",
    "Resolve",
    "Ticket",
    "active_features",
    "current_binding",
    "drive_async",
    "drive_sync",
    "find_binding",
    "run_inline",
]

logger = logging.getLogger("usageflow.integrations")

T = TypeVar("T")
AnyFlow = UsageFlow | AsyncUsageFlow


# -- the steps --------------------------------------------------------------------------------
class Resolve:
    """Await a value the app handed over (an async ``user_id`` or credits function): an
    :class:`~usageflow._core.Effect`, so that a lifecycle is a core operation like any other
    and the flow's own driver runs it."""

    __slots__ = ("value",)

    def __init__(self, value: Awaitable[Any]) -> None:
        self.value = value

    def run(self, flow: Any) -> Any:
        return _from_thread(functools.partial(_awaited, self.value))

    async def arun(self, flow: Any) -> Any:
        return await self.value


def drive_sync(flow: AnyFlow, steps: Op[T]) -> T:
    """Run ``steps`` from sync code. With an ``AsyncUsageFlow`` (a sync handler served by
    Starlette or FastAPI) they run on the flow's event loop through ``anyio.from_thread``,
    which works from the worker threads those frameworks use."""
    if isinstance(flow, UsageFlow):
        return flow._run(steps)
    return _from_thread(functools.partial(flow._run, steps, shielded=True))


def run_inline(steps: Op[T]) -> T:
    """Run ``steps`` that take no step (a charge that stands): no driver, no coroutine."""
    try:
        step = next(steps)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    steps.close()
    raise AssertionError(f"run_inline was given steps that take a step: {step!r}")


async def _awaited(value: Awaitable[T]) -> T:
    return await value


def _from_thread(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        from anyio import from_thread

        return from_thread.run(fn)
    except (ImportError, RuntimeError) as exc:
        raise config_error(
            "a sync handler metered with an AsyncUsageFlow (or with an async user_id or credits "
            "function) must run in a worker thread of an async framework; pass a "
            "usageflow.UsageFlow for plain sync code (and sync functions)"
        ) from exc


async def drive_async(flow: AnyFlow, steps: Op[T], *, shielded: bool = False) -> T:
    """Run ``steps`` from async code without blocking the event loop: an ``AsyncUsageFlow``
    runs them; with a ``UsageFlow``, a store call that blocks (SQLite, PostgreSQL) goes to a
    worker thread and a non-blocking one (memory) runs inline. ``shielded`` (settling a
    request that was served): each store call completes even if the awaiting task is
    cancelled meanwhile."""
    if isinstance(flow, AsyncUsageFlow):
        return await flow._run(steps, shielded=shielded)
    store = flow.store
    sent: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(sent) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        sent, error = None, None
        try:
            if isinstance(step, StoreCall):
                flow._log(step)
                call = functools.partial(store.call, step)
                if store.blocking:
                    done_later = asyncio.get_running_loop().run_in_executor(None, call)
                    # A queued executor job is dropped when its future is cancelled: shield
                    # the settling of a served request so that it still runs.
                    pending = asyncio.shield(done_later) if shielded else done_later
                    if _observe.observers:
                        sent = await _observe.timed_async(pending, step.method)
                    else:
                        sent = await pending
                elif _observe.observers:
                    sent = _observe.timed(store.call, step)
                else:
                    sent = call()
            else:
                sent = await step.arun(flow)
        except BaseException as exc:
            error = exc


# -- counters ---------------------------------------------------------------------------------
class MeterStats:
    """Counters of every metering decision; thread-safe. Read them, e.g. for metrics.

    ``allowed``: requests let through metered; ``exempt``: requests an ``exempt`` rule let
    through unmetered; ``refused``: 402; ``unauthenticated``: 401; ``invalid``: 400;
    ``failed_closed``: 503 on a store failure; ``failed_open``: requests let through
    unmetered because the store failed and the feature is ``fail_open``; ``charged`` /
    ``released``: requests whose credits were kept / given back; ``settle_errors``: commits,
    releases or refunds that failed after the response (logged).
    """

    FIELDS: Final = (
        "allowed",
        "exempt",
        "refused",
        "unauthenticated",
        "invalid",
        "failed_closed",
        "failed_open",
        "charged",
        "released",
        "settle_errors",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.FIELDS, 0)

    def add(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def __getattr__(self, name: str) -> int:
        counts = self.__dict__.get("_counts")
        if counts is not None and name in counts:
            return int(counts[name])
        raise AttributeError(name)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def __repr__(self) -> str:
        return f"MeterStats({self.snapshot()})"


_PROBLEM_COUNTER: Final = {402: "refused", 401: "unauthenticated", 400: "invalid"}
#: The decision outcome observers are told of a refusal, by its status (401 and 400 decide
#: nothing: there is no user to decide for).
_REFUSAL_OUTCOME: Final = {402: "refused", 503: "store_error"}


def _decided(feature: str, outcome: str) -> None:
    _observe.notify("decision", feature, outcome)


# -- policy, binding --------------------------------------------------------------------------
class Policy(NamedTuple):
    """An adapter's settings, which a :class:`Meter` may override per route."""

    fail_open: bool = False
    charge_if: ChargeIf = default_charge_if
    reservation_ttl: float | None = None
    stats: MeterStats | None = None


DEFAULT_POLICY: Final = Policy()


def check_reservation_ttl(value: object) -> float | None:
    """``reservation_ttl`` as an adapter takes it: ``None`` or seconds up to a year."""
    if value is not None and (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 < value <= 366 * 86400
    ):
        raise config_error("reservation_ttl must be a number of seconds up to one year")
    return value


class Binding:
    """What the adapter serving a request tells the handlers inside it (``@metered``, the
    FastAPI dependency): its flow, how to find the request's user, its policy, and the
    decisions taken, whose quota headers the adapter adds to the response."""

    __slots__ = ("decisions", "enabled", "flow", "policy", "user_id")

    def __init__(
        self,
        flow: AnyFlow,
        user_id: Callable[[], Any] | None,
        policy: Policy = DEFAULT_POLICY,
        enabled: bool = True,
    ) -> None:
        self.flow = flow
        self.user_id = user_id
        self.policy = policy
        self.enabled = enabled
        self.decisions: list[tuple[Decision, int]] = []


#: The binding of the request being served (set by the ASGI and Django middleware).
current_binding: ContextVar[Binding | None] = ContextVar("usageflow_binding", default=None)

#: Functions that find the binding of a framework whose request state is not a ContextVar
#: (the Flask extension registers one); tried in order when ``current_binding`` is unset.
binding_providers: list[Callable[[], Binding | None]] = []


def find_binding() -> Binding | None:
    """The binding of the request being served, if an adapter set one up."""
    binding = current_binding.get()
    if binding is not None:
        return binding
    for provider in binding_providers:
        binding = provider()
        if binding is not None:
            return binding
    return None


#: Features already metered in the current request / call chain: each is metered once.
active_features: ContextVar[frozenset[str]] = ContextVar(
    "usageflow_active_features", default=frozenset()
)


# -- admissions -------------------------------------------------------------------------------
class Ticket:
    """An admitted request: what was charged or held, and how to settle it.

    ``charges(status)`` tells whether a response with ``status`` is charged (the meter's
    ``charge_if``, else the adapter's)."""

    __slots__ = (
        "charges",
        "credits",
        "decision",
        "event_id",
        "meter",
        "reservation_id",
        "settled",
        "user",
    )

    def __init__(
        self,
        meter: Meter,
        charges: ChargeIf,
        user: str,
        decision: Decision,
        credits: int,
        reservation_id: str | None,
    ) -> None:
        self.meter = meter
        self.charges = charges
        self.user = user
        self.decision = decision
        self.credits = credits
        self.reservation_id = reservation_id
        self.event_id = decision.event_id
        self.settled = False


class Refusal(NamedTuple):
    """A request refused before the handler: answer ``problem`` (HTTP) or raise ``error``."""

    problem: Problem
    error: MeteringError


class _Pass:
    """Serve the request unmetered (exempt, disabled, or ``fail_open`` on a store failure)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PASS"


PASS: Final = _Pass()
Admission = Ticket | Refusal | _Pass


class Metering:
    """The lifecycle of one :class:`Meter` under one :class:`Policy`; built once per route or
    decorated handler (or per flow an adapter finds at run time)."""

    __slots__ = ("alone", "charge_if", "fail_open", "meter", "policy", "settle_mode", "stats")

    def __init__(self, meter: Meter, policy: Policy = DEFAULT_POLICY) -> None:
        self.meter = meter
        self.policy = policy
        self.stats = policy.stats
        self.fail_open = policy.fail_open if meter.fail_open is None else meter.fail_open
        self.charge_if = meter.charge_if or policy.charge_if
        self.settle_mode: Literal["charge", "hold"] = meter.settle_mode
        #: What :data:`active_features` holds while this meter's handler runs, on its own.
        self.alone = frozenset((meter.feature,))

    def entered(self) -> frozenset[str]:
        """:data:`active_features` with this meter's feature added (set it while serving)."""
        active = active_features.get()
        return active | self.alone if active else self.alone

    def stands(self, ticket: Ticket, status: int | None) -> bool:
        """Whether :meth:`finish` with ``status`` makes no store call (a charge that stands),
        so that an adapter may run it with :func:`run_inline`, without a driver."""
        return self.settle_mode == "charge" and status is not None and ticket.charges(status)

    def _count(self, name: str) -> None:
        if self.stats is not None:
            self.stats.add(name)

    def refuse(
        self,
        problem: Problem,
        exc: UsageFlowError,
        urls: tuple[str | None, str | None] = (None, None),
    ) -> Refusal:
        """A refusal, counted; ``urls``: the upgrade and top-up links it offers."""
        self._count(_PROBLEM_COUNTER.get(problem.status, "failed_closed"))
        if _observe.observers and problem.status in _REFUSAL_OUTCOME:
            _decided(self.meter.feature, _REFUSAL_OUTCOME[problem.status])
        details = exc.details
        if any(urls):
            details = {**details, "upgrade_url": urls[0], "top_up_url": urls[1]}
        return Refusal(problem, MeteringError(exc.code, exc.message, details, problem))

    def no_user(self) -> Refusal:
        feature = self.meter.feature
        return self.refuse(
            unauthenticated(feature),
            UsageFlowError(
                ErrorCodes.USAGE_INVALID_PARAMS,
                f"{feature!r} is metered per user and there is no current user",
                {"field": "user_id", "feature_name": feature},
            ),
        )

    def admit(self, core: Core, raw_user: object, credits: int | None = None) -> Op[Admission]:
        """Resolve the user (``raw_user`` may be an awaitable) and decide, in one store call:
        ``consume`` (``settle="charge"``) or ``reserve`` (``settle="hold"``) the meter's
        credits, or ``credits`` when the caller sized this request (an LLM call's estimate)."""
        meter = self.meter
        feature = meter.feature
        if type(raw_user) is str and raw_user and not raw_user.isspace():
            user: str | None = raw_user  # the common answer, taken as it is
        else:
            if inspect.isawaitable(raw_user):
                raw_user = yield Resolve(raw_user)
            try:
                user = normalize_user_id(raw_user)
            except UsageFlowError as exc:
                return self.refuse(problem_for(exc, feature, core.now()), exc)
        if user is None:
            return self.no_user()
        held = meter.held if credits is None else credits
        try:
            if self.settle_mode == "charge":
                decision: Decision = yield from core.consume(user, feature, held, None, None)
                reservation_id = None
                if not decision.allowed:
                    raise quota_exhausted(decision, user)
            else:
                ttl = self.policy.reservation_ttl
                reservation_id, _expires, decision = yield from core.reserve(
                    user, feature, held, ttl, None
                )
        except UsageFlowError as exc:
            if exc.is_store_failure:
                if self.fail_open:
                    self._count("failed_open")
                    if _observe.observers:
                        _decided(feature, "failed_open")
                    logger.warning(
                        "usageflow: store failed, %r let through unmetered (fail_open): %s",
                        feature,
                        exc.message,
                    )
                    return PASS
                logger.error("usageflow: store failed, %r refused with 503: %s", feature, exc)
                return self.refuse(problem_for(exc, feature, core.now()), exc)
            urls: tuple[str | None, str | None] = (None, None)
            if exc.code is ErrorCodes.USAGE_LIMIT_ERROR:
                try:
                    urls = yield from core.refill_urls(user, feature)
                except UsageFlowError:
                    logger.warning("usageflow: could not build the upgrade URL for %r", feature)
            return self.refuse(problem_for(exc, feature, core.now(), *urls), exc, urls)
        if self.stats is not None:
            self.stats.add("allowed")
        if _observe.observers:
            _decided(feature, "allowed")
        return Ticket(meter, self.charge_if, user, decision, held, reservation_id)

    def finish(
        self,
        core: Core,
        ticket: Ticket,
        status: int | None,
        credits: Callable[[], object] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Op[int]:
        """Settle ``ticket`` once: ``status`` is the response's (``None``: the handler raised or
        the stream was cut). A charged response keeps the credits (``credits()``, when the
        meter computes them, gives the amount, maybe as an awaitable); any other gives them
        back. A held charge is committed with ``metadata`` (an LLM call's tokens and model)
        when given; a commit of 0 credits with metadata is recorded, for the audit trail.
        Returns the credits charged. A store failure here is logged and counted, never
        raised: the response has been served."""
        if ticket.settled:
            return 0
        ticket.settled = True
        feature = self.meter.feature
        amount = 0
        charged = status is not None and ticket.charges(status)
        if charged:
            amount = ticket.credits
            if credits is not None:
                try:
                    value = credits()
                    if inspect.isawaitable(value):
                        value = yield Resolve(value)
                except Exception:
                    logger.exception(
                        "usageflow: the credits function of %r raised; "
                        "the reserved credits are charged",
                        feature,
                    )
                    value = ticket.credits
                amount = settle_credits(value, feature, ticket.credits)
        try:
            if ticket.reservation_id is not None:
                commit = amount if amount or (charged and metadata is not None) else None
                yield from core.settle(ticket.reservation_id, commit, metadata)
            elif not amount:
                yield from core.adjust_usage(
                    ticket.user,
                    feature,
                    -ticket.credits,
                    {"reason": "request not charged", "status": status},
                    None if ticket.event_id is None else f"refund:{ticket.event_id}",
                )
        except UsageFlowError as exc:
            self._count("settle_errors")
            _observe.notify("settle_error", feature)
            logger.error(
                "usageflow: could not %s %s credits of %r: %s",
                "commit" if amount else "give back",
                amount or ticket.credits,
                feature,
                exc,
            )
            return amount
        if self.stats is not None:
            self.stats.add("charged" if amount else "released")
        return amount


def settle_credits(value: object, feature: str, reserved: int) -> int:
    """The credits to record from what a credits function returned: an int in
    ``[0, 2**63-1]``, else the ``reserved`` amount (logged)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX:
        logger.error(
            "usageflow: the credits function of %r returned %r; "
            "an int between 0 and 2**63-1 is required (the reserved credits are charged)",
            feature,
            value,
        )
        return reserved
    return value


def meterings(meter: Meter) -> Callable[[Policy], Metering]:
    """A cache of the :class:`Metering` of ``meter`` per policy (a decorated handler meets the
    policy of whichever adapter serves it)."""

    @functools.lru_cache(maxsize=16)
    def of(policy: Policy) -> Metering:
        return Metering(meter, policy)

    return of
