"""``UsageFlowMiddleware``: plan quotas for Django views, configured in ``settings.USAGEFLOW``.

::

    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "usageflow.integrations.django.UsageFlowMiddleware",
    ]
    USAGEFLOW = {
        "store": "sqlite:///usageflow.db",           # default: the embedded default store
        "routes": {
            "exports": "design-export",                # a URL pattern name
            "api:chat": {"feature": "ai_chat", "credits": 2},   # with its namespace
            "POST /v1/summaries/<int:doc_id>": "summaries",     # or a route, as in path()
        },
        # "user_id": "myapp.usage.user_id",          # default: str(request.user.pk)
    }

    @metered("design-export")                        # or decorate views instead
    def export(request): ...

The middleware is sync and async capable (WSGI, ASGI, sync and async views). A route key is
matched against ``request.resolver_match`` once Django has resolved the URL (in
``process_view``); a key that names no URL pattern of the project is a ``USAGE_CONFIG_ERROR``
naming the closest ones. A metered request is admitted before the view runs (``402``, ``401``,
``400`` or ``503`` as ``application/problem+json``), and settled once the response is known:
a fixed-credit route costs one store call, two when the response is not charged. A
``StreamingHttpResponse`` is settled when its content has been consumed to the end. The
middleware also binds the flow and the user for :func:`usageflow.metered` views and answers
their refusals, and adds the ``RateLimit`` quota headers to metered responses.

:func:`stripe_webhook_view` is the Stripe webhook endpoint as a Django view.

The metering itself is :mod:`usageflow.integrations._lifecycle`; this module only translates
between Django and it.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from usageflow.integrations import requires

with requires("django"):
    from asgiref.sync import (
        async_to_sync,
        iscoroutinefunction,
        markcoroutinefunction,
        sync_to_async,
    )
    from django.conf import settings
    from django.http import HttpResponse, JsonResponse
    from django.urls import URLResolver, get_resolver
    from django.utils.module_loading import import_string
    from django.views.decorators.csrf import csrf_exempt
    from django.views.decorators.http import require_POST

from usageflow._core import Op
from usageflow.context import current_user_id
from usageflow.errors import UsageFlowError, config_error
from usageflow.flow import AsyncUsageFlow, UsageFlow
from usageflow.integrations._http import (
    METHODS,
    PROBLEM_CONTENT_TYPE,
    Meter,
    MeteringError,
    Problem,
    default_charge_if,
    headers_of,
    quota_headers,
    split_route_key,
)
from usageflow.integrations._lifecycle import (
    PASS,
    Admission,
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
    drive_sync,
)
from usageflow.integrations.metered import _SettledAsyncBody, _SettledBody
from usageflow.integrations.stripe import (
    DEFAULT_MAX_BODY_SIZE,
    WebhookResult,
    _check,
    _check_size,
    answer,
    over_limit,
    read_limited,
)
from usageflow.integrations.stripe import too_large as too_large_answer
from usageflow.stripe.events import DEFAULT_TOLERANCE

__all__ = [
    "Meter",
    "MeterStats",
    "MeteringError",
    "UsageFlowMiddleware",
    "get_flow",
    "get_stats",
    "problem_response",
    "stripe_webhook_view",
]

logger = logging.getLogger("usageflow.integrations")

#: The keys ``settings.USAGEFLOW`` may hold.
SETTINGS_KEYS: Final = (
    "store",
    "flow",
    "routes",
    "user_id",
    "exempt",
    "fail_open",
    "charge_if",
    "headers",
    "reservation_ttl",
    "enabled",
    "stripe_webhook_secret",
)
#: Quota fields that are lists (RFC 8941): several values are joined into one header.
_LIST_FIELDS: Final = frozenset({"ratelimit", "ratelimit-policy"})
_STATE: Final = "_usageflow"
_SYNTAX: Final = (
    "Keys are URL pattern names (with their namespace: 'api:exports') or paths in Django's "
    "route syntax with a leading '/' and include() prefixes ('POST /v1/chat/<int:chat_id>')"
)


# -- settings ---------------------------------------------------------------------------------
def _setting(name: str) -> str:
    return f"settings.USAGEFLOW[{name!r}]"


def _callable(raw: Mapping[str, Any], name: str, what: str) -> Callable[..., Any] | None:
    """A function setting: a callable or the dotted path of one."""
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportError as exc:
            raise config_error(
                f"{_setting(name)}: cannot import {raw[name]!r} ({exc}); give the dotted path "
                f"of {what}, or the function itself"
            ) from exc
    if not callable(value):
        raise config_error(f"{_setting(name)} must be {what} (or its dotted path)")
    return value  # type: ignore[no-any-return]


def _bool(raw: Mapping[str, Any], name: str, default: bool) -> bool:
    value = raw.get(name, default)
    if not isinstance(value, bool):
        raise config_error(f"{_setting(name)} must be True or False, not {value!r}")
    return value


#: Flows built from a store URL, one per (URL, webhook secret) in the process.
_flows: dict[tuple[str | None, str | None], UsageFlow] = {}


def _flow_of(raw: Mapping[str, Any]) -> UsageFlow:
    flow = raw.get("flow")
    secret = raw.get("stripe_webhook_secret")
    if secret is not None and (not isinstance(secret, str) or not secret):
        raise config_error(f"{_setting('stripe_webhook_secret')} must be a non-empty string")
    if flow is not None:
        if "store" in raw:
            raise config_error(
                "settings.USAGEFLOW has both 'flow' and 'store': give one (a store URL, or "
                "a ready usageflow.UsageFlow)"
            )
        if secret is not None:
            raise config_error(
                "settings.USAGEFLOW has both 'flow' and 'stripe_webhook_secret': give the "
                "secret to the flow, UsageFlow(..., stripe_webhook_secret=...)"
            )
        if isinstance(flow, AsyncUsageFlow):
            raise config_error(
                f"{_setting('flow')} must be a usageflow.UsageFlow, not an AsyncUsageFlow: "
                "Django runs sync views, middleware and response.close() in threads of its "
                "own; under ASGI a blocking store is called in a worker thread"
            )
        if not isinstance(flow, UsageFlow):
            raise config_error(f"{_setting('flow')} must be a usageflow.UsageFlow")
        return flow
    store = raw.get("store")
    if store is not None and not isinstance(store, str):
        raise config_error(
            f"{_setting('store')} must be a store URL such as 'sqlite:///usageflow.db' or "
            "'postgresql://...' (leave it out for the embedded default store)"
        )
    key = (store, secret)
    built = _flows.get(key)
    if built is None:
        built = _flows[key] = UsageFlow(store, stripe_webhook_secret=secret)
    return built


@dataclass(frozen=True)
class _RouteKey:
    index: int
    key: str
    method: str | None
    name: str | None  # a view name ("exports", "api:exports"), or
    route: str | None  # a route as ResolverMatch.route gives it ("v1/chat/<int:chat_id>")
    meter: Meter


def _route_key(index: int, key: object, spec: object) -> _RouteKey:
    if not isinstance(key, str) or not key.strip():
        raise config_error(
            f"route key {key!r} must be a URL pattern name or a path such as 'POST /v1/exports'"
        )
    meter = Meter.of(spec, key)
    text = key.strip()
    parts = text.split(None, 1)
    target = parts[-1]
    if target.startswith("/"):
        method, path = split_route_key(text)
        if method == "WS":
            raise config_error(f"route {key!r}: Django serves no websocket routes")
        return _RouteKey(index, key, method, None, path[1:], meter)
    method = None
    if len(parts) == 2:
        method = parts[0].upper()
        if method not in METHODS or method == "WS":
            raise config_error(f"route {key!r}: {parts[0]!r} is not an HTTP method ({_SYNTAX})")
    if any(c.isspace() or c == "/" for c in target):
        raise config_error(f"route {key!r} is not a URL pattern name nor a path ({_SYNTAX})")
    return _RouteKey(index, key, method, target, None, meter)


class _Config:
    """``settings.USAGEFLOW``, checked: what the middleware and the webhook view use."""

    def __init__(self, raw: object) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise config_error(
                "settings.USAGEFLOW must be a dict such as {'routes': {'exports': 'exports'}}"
            )
        unknown = sorted(str(k) for k in raw if k not in SETTINGS_KEYS)
        if unknown:
            hints = [
                f"{name!r}: did you mean {close[0]!r}?"
                for name in unknown
                if (close := difflib.get_close_matches(name, SETTINGS_KEYS, n=1))
            ]
            raise config_error(
                f"settings.USAGEFLOW has unknown key(s) {', '.join(map(repr, unknown))}"
                + (f" ({'; '.join(hints)})" if hints else "")
                + f"; the keys are {', '.join(SETTINGS_KEYS)}",
                keys=unknown,
            )
        routes = raw.get("routes")
        if routes is None:
            routes = {}
        if not isinstance(routes, Mapping):
            raise config_error(
                f"{_setting('routes')} must be a dict of URL pattern name or path to feature"
            )
        self.routes = [_route_key(i, k, v) for i, (k, v) in enumerate(routes.items())]
        self.user_id = _callable(raw, "user_id", "a function of the request returning a user id")
        self.user_is_async = self.user_id is not None and iscoroutinefunction(self.user_id)
        self.exempt = _callable(raw, "exempt", "a function of the request returning a bool")
        charge_if = _callable(raw, "charge_if", "a function of the status code returning a bool")
        fail_open = _bool(raw, "fail_open", False)
        self.headers = _bool(raw, "headers", True)
        self.enabled = _bool(raw, "enabled", True)
        try:
            ttl = check_reservation_ttl(raw.get("reservation_ttl"))
        except UsageFlowError as exc:
            raise config_error(f"{_setting('reservation_ttl')}: {exc.message}") from exc
        self.stats = MeterStats()
        self.policy = Policy(fail_open, charge_if or default_charge_if, ttl, self.stats)
        self.flow = _flow_of(raw)
        self.by_name: dict[str, list[_RouteKey]] = {}
        self.by_route: dict[str, list[_RouteKey]] = {}
        for key in self.routes:
            if key.name is not None:
                self.by_name.setdefault(key.name, []).append(key)
            else:
                assert key.route is not None
                self.by_route.setdefault(key.route, []).append(key)
        self.meterings = {key.index: Metering(key.meter, self.policy) for key in self.routes}
        self.checked = not self.routes
        self._lock = threading.Lock()

    # -- route keys against the project's URL patterns ----------------------------------------
    def check_routes(self, at_start: bool) -> None:
        """Refuse a key that names no URL pattern of ``ROOT_URLCONF``. At construction an
        URLconf that cannot be loaded yet defers the check to the first request."""
        if self.checked:
            return
        with self._lock:
            if self.checked:
                return
            try:
                patterns = get_resolver().url_patterns
            except Exception:
                if not at_start:
                    raise
                logger.debug("usageflow: URLconf not loadable yet; routes checked later")
                return
            names, routes = _declared(patterns)
            for key in self.routes:
                if key.name is not None:
                    if key.name not in names:
                        _refuse_key(key, key.name, names)
                elif key.route not in routes:
                    _refuse_key(key, "/" + (key.route or ""), {"/" + r for r in routes})
            self.checked = True

    # -- per request ---------------------------------------------------------------------------
    def match(self, request: Any) -> Metering | None:
        """The metering of the first key naming the request's resolved URL pattern."""
        found = request.resolver_match
        if found is None:
            return None
        method = request.method
        accepted = (None, method, "GET" if method == "HEAD" else None)
        best: _RouteKey | None = None
        for key in (*self.by_name.get(found.view_name, ()), *self.by_route.get(found.route, ())):
            if key.method in accepted and (best is None or key.index < best.index):
                best = key
        return None if best is None else self.meterings[best.index]

    def user_of(self, request: Any) -> Any:
        """The request's user id, or an awaitable of it when called on an event loop (an
        async view, async middleware): a sync ``user_id`` then runs in a thread, as Django
        runs sync code from async code."""
        fn = self.user_id
        if fn is None:
            return _default_user_id(request)
        if _on_event_loop():
            if self.user_is_async:
                return fn(request)
            return sync_to_async(fn, thread_sensitive=True)(request)
        return _resolved(fn(request))

    def exempt_of(self, request: Any) -> Any:
        """``exempt(request)``: a bool, or an awaitable of it on an event loop."""
        assert self.exempt is not None
        value = self.exempt(request)
        if inspect.isawaitable(value) and not _on_event_loop():
            return _resolved(value)
        return value


def _declared(patterns: Iterable[Any]) -> tuple[set[str], set[str]]:
    """The view names (namespaces included) and the routes (include() prefixes included, as
    ``ResolverMatch.route`` gives them) of a project's URL patterns."""
    names: set[str] = set()
    routes: set[str] = set()

    def walk(items: Iterable[Any], prefix: str, namespaces: tuple[str, ...]) -> None:
        for item in items:
            own = str(item.pattern)
            route = own if not prefix else prefix + own.removeprefix("^")
            if isinstance(item, URLResolver):
                inner = (*namespaces, item.namespace) if item.namespace else namespaces
                walk(item.url_patterns, route, inner)
            else:
                routes.add(route)
                if getattr(item, "name", None):
                    names.add(":".join((*namespaces, item.name)))

    walk(patterns, "", ())
    return names, routes


def _refuse_key(key: _RouteKey, wanted: str, known: set[str]) -> None:
    close = difflib.get_close_matches(wanted, sorted(known), n=3, cutoff=0.5)
    what = "URL pattern name" if key.name is not None else "route"
    raise config_error(
        f"route key {key.key!r} matches no {what} of this project"
        + (f"; closest: {', '.join(map(repr, close))}" if close else "")
        + f". {_SYNTAX}",
        key=key.key,
        closest=close,
    )


_config_lock = threading.Lock()
#: The last configuration built: (the settings object, a copy of it, the checked config).
_config_cache: list[tuple[object, dict[str, Any], _Config]] = []


def _config() -> _Config:
    """The checked ``settings.USAGEFLOW`` (built again when the setting changes)."""
    raw = getattr(settings, "USAGEFLOW", None)
    with _config_lock:
        if _config_cache:
            seen, copy, config = _config_cache[0]
            if seen is raw and copy == _snapshot(raw):
                return config
        config = _Config(raw)
        _config_cache[:] = [(raw, _snapshot(raw), config)]
        return config


def _snapshot(raw: object) -> dict[str, Any]:
    return dict(raw) if isinstance(raw, Mapping) else {"": raw}


def get_flow() -> UsageFlow:
    """The flow ``settings.USAGEFLOW`` configures (the middleware's), e.g. to read usage in a
    view: ``get_flow().fetch_usage(user_id, "exports")``."""
    return _config().flow


def get_stats() -> MeterStats:
    """The :class:`MeterStats` of the middleware configured by ``settings.USAGEFLOW``."""
    return _config().stats


# -- translation helpers ----------------------------------------------------------------------
def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _awaited(value: Awaitable[Any]) -> Any:
    return await value


def _resolved(value: Any) -> Any:
    """``value`` from sync code: an awaitable (an async user function) is run to its end."""
    if inspect.isawaitable(value):
        return async_to_sync(_awaited)(value)
    return value


#: Set once a missing ``request.user`` has been logged (a mistake is reported once).
_warned_no_user = threading.Event()


def _user_pk(user: Any) -> str | None:
    if user is not None and user.is_authenticated:
        return str(user.pk)
    return None


async def _auser_pk(auser: Callable[[], Awaitable[Any]]) -> str | None:
    return _user_pk(await auser())


def _default_user_id(request: Any) -> Any:
    """``str(request.user.pk)`` for an authenticated user of ``django.contrib.auth``, else
    ``None``; on an event loop, ``request.auser()`` (Django 5) or a thread reads it."""
    if not hasattr(request, "user"):
        if not _warned_no_user.is_set():
            _warned_no_user.set()
            logger.warning(
                "usageflow: UsageFlowMiddleware has no 'user_id' setting and nothing sets "
                "request.user: every metered request is answered 401. Add Django's "
                "AuthenticationMiddleware, or set USAGEFLOW['user_id'] to a function of the "
                "request"
            )
        return None
    if _on_event_loop():
        auser = getattr(request, "auser", None)
        if auser is not None:
            return _auser_pk(auser)
        return sync_to_async(_user_pk, thread_sensitive=True)(request.user)
    return _user_pk(request.user)


def problem_response(problem: Problem) -> HttpResponse:
    """A refusal as a Django response: its status, ``application/problem+json`` body and
    headers (e.g. to answer a :class:`MeteringError` caught in your own code)."""
    response = HttpResponse(
        problem.content(), status=problem.status, content_type=PROBLEM_CONTENT_TYPE
    )
    for name, value in problem.headers:
        response.headers[name] = value
    return response


def _add_headers(response: Any, headers: Iterable[tuple[str, str]]) -> None:
    """Add quota headers; list fields already present get the new value appended."""
    out = response.headers
    for name, value in headers:
        if name not in out:
            out[name] = value
        elif name.lower() in _LIST_FIELDS:
            out[name] = f"{out[name]}, {value}"


class _Served:
    """What the middleware keeps about one request (on the request object, which reaches
    ``process_view`` and ``process_exception`` in whatever thread Django runs them)."""

    __slots__ = ("binding", "metering", "raised", "ticket")

    def __init__(self, binding: Binding) -> None:
        self.binding = binding
        self.metering: Metering | None = None
        self.ticket: Ticket | None = None
        self.raised = False


# -- the middleware ---------------------------------------------------------------------------
class UsageFlowMiddleware:
    """Meter Django views against UsageFlow quotas; configured by ``settings.USAGEFLOW``
    (checked here, when Django builds its middleware chain).

    ``stats`` counts every metering decision (:class:`MeterStats`); ``flow`` is the
    ``UsageFlow`` in use.
    """

    sync_capable = True
    async_capable = True

    process_view: Callable[..., Any]

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.config = config = _config()
        self.flow = config.flow
        self.stats = config.stats
        config.check_routes(at_start=True)
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)
            self.process_view = self._process_view_async
        else:
            self.process_view = self._process_view_sync

    def __repr__(self) -> str:
        return f"<UsageFlowMiddleware routes={len(self.config.routes)} flow={self.flow!r}>"

    # -- request --------------------------------------------------------------------------------
    def _start(self, request: Any) -> _Served:
        config = self.config
        binding = Binding(self.flow, lambda: config.user_of(request), config.policy, config.enabled)
        served = _Served(binding)
        setattr(request, _STATE, served)
        return served

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self.__acall__(request)
        served = self._start(request)
        token = current_binding.set(served.binding)
        saved = active_features.get(), current_user_id.get()
        try:
            response = self.get_response(request)
        except BaseException:
            if served.ticket is not None and served.metering is not None:
                drive_sync(self.flow, served.metering.finish(self.flow.core, served.ticket, None))
            raise
        finally:
            current_binding.reset(token)
            _restore(saved)
        return self._respond_sync(request, response, served)

    async def __acall__(self, request: Any) -> Any:
        served = self._start(request)
        token = current_binding.set(served.binding)
        saved = active_features.get(), current_user_id.get()
        try:
            response = await self.get_response(request)
        except BaseException:
            if served.ticket is not None and served.metering is not None:
                steps = served.metering.finish(self.flow.core, served.ticket, None)
                await drive_async(self.flow, steps, shielded=True)
            raise
        finally:
            current_binding.reset(token)
            _restore(saved)
        return await self._respond_async(request, response, served)

    # -- after URL resolution: admit ------------------------------------------------------------
    def _routed(self, request: Any) -> tuple[_Served, Metering | None, Any] | None:
        """The request's state, its metering, and ``exempt``'s answer (maybe an awaitable);
        ``None`` when there is nothing to do."""
        served: _Served | None = getattr(request, _STATE, None)
        config = self.config
        if served is None or not config.enabled:
            return None
        if not config.checked:
            config.check_routes(at_start=False)
        exempt = config.exempt_of(request) if config.exempt is not None else False
        return served, config.match(request), exempt

    def _exempted(self, served: _Served) -> None:
        served.binding.enabled = False
        self.stats.add("exempt")

    def _process_view_sync(
        self, request: Any, view: Any, args: Any, kwargs: Any
    ) -> HttpResponse | None:
        routed = self._routed(request)
        if routed is None:
            return None
        served, metering, exempt = routed
        if exempt:
            self._exempted(served)
            return None
        if metering is None:
            return None
        user = self.config.user_of(request)
        return self._admitted(
            served, metering, drive_sync(self.flow, metering.admit(self.flow.core, user))
        )

    async def _process_view_async(
        self, request: Any, view: Any, args: Any, kwargs: Any
    ) -> HttpResponse | None:
        routed = self._routed(request)
        if routed is None:
            return None
        served, metering, exempt = routed
        if inspect.isawaitable(exempt):
            exempt = await exempt
        if exempt:
            self._exempted(served)
            return None
        if metering is None:
            return None
        user = self.config.user_of(request)
        admission = await drive_async(self.flow, metering.admit(self.flow.core, user))
        return self._admitted(served, metering, admission)

    def _admitted(
        self, served: _Served, metering: Metering, admission: Admission
    ) -> HttpResponse | None:
        if admission is PASS:
            return None
        if isinstance(admission, Refusal):
            return problem_response(admission.problem)
        assert isinstance(admission, Ticket)
        served.metering = metering
        served.ticket = admission
        # The view runs in this context (or a copy of it): a @metered view of the same
        # feature is metered once, and it sees the user. __call__ restores both.
        active_features.set(metering.entered())
        current_user_id.set(admission.user)
        return None

    def process_exception(self, request: Any, exception: Exception) -> HttpResponse | None:
        """A view raised: its route is not charged; a :class:`MeteringError` (a ``@metered``
        view refused) is answered with its problem response."""
        served: _Served | None = getattr(request, _STATE, None)
        if served is not None:
            served.raised = True
        if isinstance(exception, MeteringError):
            return problem_response(exception.problem)
        return None

    # -- response: settle -----------------------------------------------------------------------
    def _credits(self, metering: Metering, request: Any, response: Any) -> Any:
        credits = metering.meter.credits
        if isinstance(credits, int):
            return None
        return lambda: _resolved_here(credits(request, response))

    def _streamed(self, served: _Served, response: Any, status: int | None) -> bool:
        ticket = served.ticket
        assert ticket is not None
        return (
            status is not None and getattr(response, "streaming", False) and ticket.charges(status)
        )

    def _settling(
        self, request: Any, response: Any, served: _Served
    ) -> tuple[Ticket, Op[int]] | int | None:
        """What is left to settle once the view has answered: ``None`` (not metered), ``0``
        (a stream settles itself when consumed), or the ticket and its ``finish`` steps."""
        ticket, metering = served.ticket, served.metering
        if ticket is None or metering is None:
            return None
        status = None if served.raised else response.status_code
        credits = self._credits(metering, request, response)
        if self._streamed(served, response, status):
            self._defer_to_stream(response, metering, ticket, status, credits)
            return 0
        return ticket, metering.finish(self.flow.core, ticket, status, credits)

    def _respond_sync(self, request: Any, response: Any, served: _Served) -> Any:
        settling = self._settling(request, response, served)
        if isinstance(settling, tuple):
            ticket, steps = settling
            settling = ticket.credits - drive_sync(self.flow, steps)
        self._headers(response, served, settling)
        return response

    async def _respond_async(self, request: Any, response: Any, served: _Served) -> Any:
        settling = self._settling(request, response, served)
        if isinstance(settling, tuple):
            ticket, steps = settling
            settling = ticket.credits - await drive_async(self.flow, steps, shielded=True)
        self._headers(response, served, settling)
        return response

    def _defer_to_stream(
        self,
        response: Any,
        metering: Metering,
        ticket: Ticket,
        status: int | None,
        credits: Callable[[], object] | None,
    ) -> None:
        """Settle when the streamed content has been consumed to its end (charged) or is
        closed, fails or is cancelled before (given back)."""
        flow, core = self.flow, self.flow.core

        def finish(completed: bool) -> None:
            drive_sync(flow, metering.finish(core, ticket, status if completed else None, credits))

        async def finish_async(completed: bool) -> None:
            outcome = status if completed else None
            await drive_async(flow, metering.finish(core, ticket, outcome, credits), shielded=True)

        content = response.streaming_content
        if getattr(response, "is_async", False):
            response.streaming_content = _SettledAsyncBody(content, finish_async, finish)
        else:
            response.streaming_content = _SettledBody(content, finish)

    def _headers(self, response: Any, served: _Served, refund: int | None) -> None:
        if not self.config.headers:
            return
        decisions = served.binding.decisions
        if refund is None and not decisions:
            return
        now = self.flow.core.clock()
        headers: list[tuple[str, str]] = []
        if refund is not None and served.ticket is not None:
            headers.extend(quota_headers(served.ticket.decision, now, refund=refund))
        if decisions:
            headers.extend(headers_of(decisions, now))
        _add_headers(response, headers)


def _restore(saved: tuple[frozenset[str], str | None]) -> None:
    """Put back what ``process_view`` set for the view (by value: Django may have run it in
    a copied context)."""
    features, user = saved
    if active_features.get() != features:
        active_features.set(features)
    if current_user_id.get() != user:
        current_user_id.set(user)


def _resolved_here(value: Any) -> Any:
    """A credits function's value: awaited by the async driver on an event loop, run to its
    end here in sync code."""
    return value if _on_event_loop() else _resolved(value)


# -- Stripe -----------------------------------------------------------------------------------
def stripe_webhook_view(
    flow: UsageFlow | AsyncUsageFlow | None = None,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
) -> Callable[..., Any]:
    """The Stripe webhook endpoint as a Django view (CSRF-exempt, ``POST`` only)::

        urlpatterns = [path("stripe/webhook", stripe_webhook_view(), name="stripe-webhook")]

    It verifies the raw body against the ``Stripe-Signature`` header with the flow's
    ``stripe_webhook_secret`` (``settings.USAGEFLOW["stripe_webhook_secret"]``, else
    ``$STRIPE_WEBHOOK_SECRET``) and answers ``200 {"received": true, "action": ...,
    "reason": ..., "warning": ...}`` (the fields of the
    :class:`~usageflow.integrations.stripe.WebhookResult`), ``400 {"error": ...}`` for a webhook
    that does not verify, ``413`` for a body over ``max_body_size`` bytes (default 1 MiB; read
    in chunks, never whole), ``500`` on a store failure (Stripe delivers it again). ``flow``
    defaults to the middleware's; an ``AsyncUsageFlow`` gives an async view.
    """
    if flow is None:
        if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance <= 0:
            raise config_error("tolerance must be a positive number of seconds")
        _check_size(max_body_size)
        is_async = False
    else:
        is_async = _check(flow, tolerance, max_body_size)
    given = flow

    def read_body(request: Any) -> bytes | None:
        # Not request.body: DATA_UPLOAD_MAX_MEMORY_SIZE may be off, and it reads the body whole.
        if over_limit(request.META.get("CONTENT_LENGTH"), max_body_size):
            return None
        return read_limited(request.read, max_body_size)

    def too_large() -> JsonResponse:
        content, status = too_large_answer(max_body_size)
        return JsonResponse(content, status=status)

    if is_async:

        async def stripe_webhook_async(request: Any) -> JsonResponse:
            assert isinstance(given, AsyncUsageFlow)
            body = read_body(request)
            if body is None:
                return too_large()
            outcome: WebhookResult | UsageFlowError
            try:
                outcome = await given.handle_webhook(
                    body, request.headers.get("Stripe-Signature"), tolerance=tolerance
                )
            except UsageFlowError as exc:
                outcome = exc
            content, status = answer(outcome)
            return JsonResponse(content, status=status)

        return csrf_exempt(require_POST(stripe_webhook_async))  # type: ignore[no-any-return]

    def stripe_webhook(request: Any) -> JsonResponse:
        body = read_body(request)
        if body is None:
            return too_large()
        outcome: WebhookResult | UsageFlowError
        try:
            outcome = (given if isinstance(given, UsageFlow) else get_flow()).handle_webhook(
                body, request.headers.get("Stripe-Signature"), tolerance=tolerance
            )
        except UsageFlowError as exc:
            outcome = exc
        content, status = answer(outcome)
        return JsonResponse(content, status=status)

    return csrf_exempt(require_POST(stripe_webhook))  # type: ignore[no-any-return]
