"""``UsageFlowFlask``: plan quotas for Flask views, in Flask's extension conventions.

::

    flow = UsageFlow("sqlite:///usageflow.db")
    usage = UsageFlowFlask(app, flow=flow, user_id=lambda: flask.g.user_id)
    # or, with an app factory: usage = UsageFlowFlask(flow=flow, ...); usage.init_app(app)

    @app.post("/v1/exports")
    @metered("design-export")
    def export(): ...

Or name the routes instead of decorating the views (keys are Flask rules, as in
``@app.route``, with an optional method)::

    UsageFlowFlask(app, flow=flow, routes={"POST /v1/exports": "design-export",
                                           "/v1/chat/<int:chat_id>": "ai_chat"})

The extension keeps its state in ``app.extensions["usageflow"]``, answers the refusals of
:func:`usageflow.metered` views (``402`` problem+json with the quota headers, ``401``,
``400``, ``503``), and adds the ``RateLimit`` quota headers to metered responses. Async views
work (Flask runs them through ``current_app.ensure_sync``; a blocking store is then called in a
worker thread). Configuration keys, read at ``init_app``:

``USAGEFLOW_ENABLED`` (``True``)          ``False`` turns metering off (views run unmetered)
``USAGEFLOW_STORE`` (``None``)            a store URL, when no ``flow`` is given
``USAGEFLOW_FAIL_OPEN`` (``False``)       on a store failure let views run unmetered
``USAGEFLOW_HEADERS_ENABLED`` (``True``)  add the quota headers
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from usageflow.integrations import requires

with requires("flask"):
    from flask import (
        Blueprint,
        Flask,
        Response,
        current_app,
        g,
        has_request_context,
        request,
        url_for,
    )
    from flask.globals import app_ctx

from usageflow.errors import config_error
from usageflow.flow import AsyncUsageFlow, UsageFlow
from usageflow.integrations import _pages
from usageflow.integrations._http import (
    PROBLEM_CONTENT_TYPE,
    ChargeIf,
    Meter,
    MeteringError,
    default_charge_if,
    headers_of,
    normalize_user_id,
    split_route_key,
)
from usageflow.integrations._lifecycle import (
    Binding,
    MeterStats,
    Policy,
    binding_providers,
    check_reservation_ttl,
)
from usageflow.integrations.metered import metered

__all__ = ["MeterStats", "MeteringError", "UsageFlowFlask", "admin_blueprint", "usage_blueprint"]

logger = logging.getLogger("usageflow.integrations")

EXTENSION = "usageflow"
_G_KEY = "_usageflow_binding"


#: Set once the missing ``user_id=`` has been logged (a mistake is reported once, not per request).
_warned_no_user = threading.Event()


def _default_user_id() -> Any:
    """``flask.g.user_id`` when the app's authentication sets it."""
    if "user_id" not in g and not _warned_no_user.is_set():
        _warned_no_user.set()
        logger.warning(
            "usageflow: UsageFlowFlask has no user_id= and nothing sets flask.g.user_id: every "
            "metered request is answered 401. Pass user_id=fn() -> str (reading flask.request "
            "or flask.g), or set g.user_id in your authentication"
        )
    return g.get("user_id")


@dataclass(frozen=True)
class _RouteKey:
    key: str
    method: str | None
    rule: str
    meter: Meter


def _route_keys(routes: Mapping[str, object] | None) -> list[_RouteKey]:
    """The ``routes=`` table, checked at construction: ``"[METHOD ]/rule"`` -> a feature name,
    a :class:`~usageflow.integrations._http.Meter` or a dict of its fields."""
    if routes is None:
        return []
    if not isinstance(routes, Mapping):
        raise config_error("routes must be a dict of Flask rule to feature")
    keys = []
    for key, spec in routes.items():
        method, rule = split_route_key(key)
        keys.append(_RouteKey(str(key), method, rule, Meter.of(spec, key)))
    return keys


@dataclass
class _State:
    flow: UsageFlow
    user_id: Callable[[], Any]
    policy: Policy
    headers: bool
    enabled: bool
    exempt_when: Callable[[], Any] | None = None
    routes: list[_RouteKey] = field(default_factory=list)
    routed: bool = False
    routing: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._is_async = inspect.iscoroutinefunction(self.user_id)  # once, not per request

    @property
    def stats(self) -> MeterStats:
        assert self.policy.stats is not None
        return self.policy.stats

    def resolve_user(self) -> Any:
        fn = self.user_id
        if self._is_async:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return current_app.ensure_sync(fn)()
            return fn()  # an async view awaits it
        return fn()


class UsageFlowFlask:
    """The Flask extension. See the module docstring for configuration keys.

    :param flow: a :class:`usageflow.UsageFlow` (an ``AsyncUsageFlow`` is refused: Flask
        serves from threads). Default: one built from ``USAGEFLOW_STORE`` (or the embedded
        default store) at ``init_app``.
    :param user_id: a function with no arguments returning the current user's id (read
        ``flask.request`` or ``flask.g``); sync or async. Default: ``flask.g.user_id``.
    :param fail_open: overrides ``USAGEFLOW_FAIL_OPEN``.
    :param charge_if: ``fn(status) -> bool``, which responses are charged (default < 400).
    :param stats: a :class:`MeterStats` to count decisions in.
    :param exempt_when: a function of no arguments (as in Flask-Limiter): a true answer lets
        the request through unmetered, before its user is resolved (health checks, admins,
        internal calls); counted as ``exempt``.
    :param reservation_ttl: seconds a hold lives if the process dies mid-request.
    :param routes: meter views by their rule instead of decorating them: ``{"POST
        /v1/exports": "exports", "/v1/chat/<int:chat_id>": {"feature": "chat", "credits": 2}}``.
        A key is a rule exactly as given to ``@app.route`` (any method, or the one named);
        a value is a feature name, a ``Meter`` or a dict of its fields, whose ``credits`` may
        be a function of the view's return value, as with :func:`usageflow.metered`. The
        views are wrapped with ``@metered`` when the app serves its first request; a key that
        matches no rule is then a ``USAGE_CONFIG_ERROR``.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        flow: UsageFlow | None = None,
        user_id: Callable[[], Any] | None = None,
        fail_open: bool | None = None,
        charge_if: ChargeIf = default_charge_if,
        stats: MeterStats | None = None,
        routes: Mapping[str, object] | None = None,
        exempt_when: Callable[[], Any] | None = None,
        reservation_ttl: float | None = None,
    ) -> None:
        if isinstance(flow, AsyncUsageFlow):
            raise config_error(
                "UsageFlowFlask needs a usageflow.UsageFlow (Flask serves requests from "
                "threads); use AsyncUsageFlow with Starlette or FastAPI"
            )
        if flow is not None and not isinstance(flow, UsageFlow):
            raise config_error("flow must be a usageflow.UsageFlow")
        if user_id is not None and not callable(user_id):
            raise config_error("user_id must be a function with no arguments")
        if fail_open is not None and not isinstance(fail_open, bool):
            raise config_error("fail_open must be a bool")
        if not callable(charge_if):
            raise config_error("charge_if must be a function of the status code")
        if stats is not None and not isinstance(stats, MeterStats):
            raise config_error("stats must be a MeterStats")
        self._flow = flow
        self._user_id = user_id or _default_user_id
        self._fail_open = fail_open
        self._charge_if = charge_if
        if exempt_when is not None and not callable(exempt_when):
            raise config_error("exempt_when must be a function with no arguments")
        self._exempt_when = exempt_when
        self._reservation_ttl = check_reservation_ttl(reservation_ttl)
        self._routes = _route_keys(routes)
        self.stats = stats or MeterStats()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the extension on ``app`` (state in ``app.extensions['usageflow']``)."""
        config = app.config
        config.setdefault("USAGEFLOW_ENABLED", True)
        config.setdefault("USAGEFLOW_STORE", None)
        config.setdefault("USAGEFLOW_FAIL_OPEN", False)
        config.setdefault("USAGEFLOW_HEADERS_ENABLED", True)
        for key in ("USAGEFLOW_ENABLED", "USAGEFLOW_FAIL_OPEN", "USAGEFLOW_HEADERS_ENABLED"):
            if not isinstance(config[key], bool):
                raise config_error(f"{key} must be True or False")
        flow = self._flow
        if flow is None:
            store = config["USAGEFLOW_STORE"]
            if store is not None and not isinstance(store, str):
                raise config_error("USAGEFLOW_STORE must be a store URL")
            flow = UsageFlow(store)
        fail_open = self._fail_open
        if fail_open is None:
            fail_open = config["USAGEFLOW_FAIL_OPEN"]
        app.extensions[EXTENSION] = _State(
            flow=flow,
            user_id=self._user_id,
            policy=Policy(fail_open, self._charge_if, self._reservation_ttl, self.stats),
            headers=config["USAGEFLOW_HEADERS_ENABLED"],
            enabled=config["USAGEFLOW_ENABLED"],
            exempt_when=self._exempt_when,
            routes=self._routes,
        )
        app.register_error_handler(MeteringError, _answer_refusal)
        app.after_request(_add_headers)
        if self._routes:
            app.before_request(_route_views)

    @property
    def flow(self) -> UsageFlow:
        """The flow of the current app."""
        state: _State = current_app.extensions[EXTENSION]
        return state.flow


def _state() -> _State | None:
    state = current_app.extensions.get(EXTENSION)
    return state if isinstance(state, _State) else None


def _flask_binding() -> Binding | None:
    """The binding of the Flask request being served (one per request, in ``flask.g``)."""
    if not has_request_context():
        return None
    ctx = app_ctx._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
    found: tuple[Binding, _State] | None = getattr(ctx.g, _G_KEY, None)
    if found is not None:
        return found[0]
    state = ctx.app.extensions.get(EXTENSION)
    if not isinstance(state, _State):
        return None
    enabled = state.enabled
    if enabled and state.exempt_when is not None and state.exempt_when():
        enabled = False
        if state.policy.stats is not None:
            state.policy.stats.add("exempt")
    binding = Binding(state.flow, state.resolve_user, state.policy, enabled)
    setattr(ctx.g, _G_KEY, (binding, state))
    return binding


binding_providers.append(_flask_binding)


def _answer_refusal(exc: MeteringError) -> Response:
    problem = exc.problem
    response = Response(problem.content(), status=problem.status, mimetype=PROBLEM_CONTENT_TYPE)
    for key, value in problem.headers:
        response.headers.add(key, value)
    return response


def _add_headers(response: Response) -> Response:
    found: tuple[Binding, _State] | None = g.get(_G_KEY)
    if found is None:
        return response
    binding, state = found
    if binding.decisions and state.headers:
        add = response.headers.add
        for key, value in headers_of(binding.decisions, state.flow.core.clock()):
            add(key, value)
    return response


def _route_views() -> None:
    """Before the app's first request (its rules are then all known): wrap the views that
    the ``routes`` table names with ``@metered``, once."""
    state = _state()
    if state is None or state.routed:
        return
    with state.routing:
        if state.routed:
            return
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        # endpoint -> (rule, method or None: any) -> meter; the first key for each wins.
        plan: dict[str, dict[tuple[str, str | None], Meter]] = {}
        for route in state.routes:
            found = False
            for rule in app.url_map.iter_rules():
                if rule.rule != route.rule:
                    continue
                if route.method is not None and route.method not in (rule.methods or ()):
                    continue
                found = True
                meters = plan.setdefault(rule.endpoint, {})
                meters.setdefault((route.rule, route.method), route.meter)
            if not found:
                raise config_error(
                    f"route {route.key!r} matches no rule of this app (give the rule as in "
                    "@app.route, e.g. '/v1/chat/<int:chat_id>', with a method it accepts)"
                )
        for endpoint, meters in plan.items():
            app.view_functions[endpoint] = _routed(app.view_functions[endpoint], meters)
        state.routed = True


def _routed(
    view: Callable[..., Any], meters: dict[tuple[str, str | None], Meter]
) -> Callable[..., Any]:
    """``view``, metered when reached by a (rule, method) of ``meters`` (method ``None``: any;
    ``HEAD`` as ``GET``). A view may serve several rules; only the named ones are metered."""
    wrapped = {
        key: metered(
            meter.feature,
            meter.credits,
            reserve=meter.reserve,
            fail_open=meter.fail_open,
            charge_if=meter.charge_if,
            settle=meter.settle,
        )(view)
        for key, meter in meters.items()
    }

    def pick() -> Callable[..., Any]:
        rule = request.url_rule.rule if request.url_rule is not None else ""
        method = request.method
        return (
            wrapped.get((rule, method))
            or (wrapped.get((rule, "GET")) if method == "HEAD" else None)
            or wrapped.get((rule, None))
            or view
        )

    if inspect.iscoroutinefunction(view):

        async def routed_async(*args: Any, **kwargs: Any) -> Any:
            return await pick()(*args, **kwargs)

        return functools.wraps(view)(routed_async)

    def routed(*args: Any, **kwargs: Any) -> Any:
        return pick()(*args, **kwargs)

    return functools.wraps(view)(routed)


# -- pages ----------------------------------------------------------------------------------------
def _page_request(home: str) -> _pages.PageRequest:
    base = url_for(home).rstrip("/")
    form = request.form.to_dict() if request.method == "POST" else {}
    return _pages.PageRequest(
        request.method,
        request.path[len(base) :] or "/",
        request.args.to_dict(),
        form,
        dict(request.cookies),
        base,
    )


def _page_response(page: _pages.PageResponse) -> Response:
    response = Response(page.body, page.status, content_type=page.content_type)
    for name, value in page.all_headers():
        response.headers.add(name, value)
    return response


def _sync_flow(flow: object, what: str) -> UsageFlow:
    if not isinstance(flow, UsageFlow):
        raise config_error(f"{what} needs a UsageFlow (Flask views run in threads)")
    return flow


def usage_blueprint(
    flow: UsageFlow, *, user_id: Callable[[], object], name: str = "usageflow_usage"
) -> Blueprint:
    """The signed-in user's usage page, to register:
    ``app.register_blueprint(usage_blueprint(flow, user_id=...), url_prefix="/usage")``.
    ``GET /`` is an HTML page, ``GET /usage.json`` the same data as JSON (docs/pages.md);
    ``user_id()`` names the user of the request (as for :class:`UsageFlowFlask`), and a
    request with none is answered 401."""
    checked = _sync_flow(flow, "usage_blueprint")
    if not callable(user_id):
        raise config_error("usage_blueprint needs user_id=fn() naming the signed-in user")
    blueprint = Blueprint(name, __name__)

    def page() -> Response:
        user = normalize_user_id(user_id())
        built = _pages.usage_page(_page_request(f"{name}.home"), user)
        return _page_response(_pages.drive_sync(checked, built))

    blueprint.add_url_rule("/", "home", page)
    blueprint.add_url_rule("/usage.json", "json", page)
    return blueprint


def admin_blueprint(
    flow: UsageFlow,
    *,
    authorize: Callable[[], object] | None = None,
    admin_id: Callable[[], object] | None = None,
    name: str = "usageflow_admin",
) -> Blueprint:
    """The founder's admin page, to register under a prefix (``url_prefix="/admin"``).
    ``authorize()`` must say whether the current request may see it: a refused request is
    answered 403 before anything else is looked at, and leaving it out is a
    ``USAGE_CONFIG_ERROR``. ``admin_id()`` names the admin in the metadata of what an action
    records (default ``"admin"``)."""
    checked = _sync_flow(flow, "admin_blueprint")
    _pages.check_authorize(authorize)
    assert authorize is not None
    blueprint = Blueprint(name, __name__)

    def page(action: str | None = None) -> Response:
        if authorize() is not True:
            return _page_response(_pages.forbidden())
        admin = str(admin_id()) if admin_id is not None else "admin"
        built = _pages.admin_page(_page_request(f"{name}.home"), admin)
        return _page_response(_pages.drive_sync(checked, built))

    blueprint.add_url_rule("/", "home", page)
    blueprint.add_url_rule("/user", "user", page)
    blueprint.add_url_rule("/user/<action>", "action", page, methods=["POST"])
    return blueprint
