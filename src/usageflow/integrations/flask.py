"""``UsageFlowFlask``: plan quotas for Flask views, in Flask's extension conventions.

::

    flow = UsageFlow("sqlite:///usageflow.db")
    usage = UsageFlowFlask(app, flow=flow, user_id=lambda: flask.g.user_id)
    # or, with an app factory: usage = UsageFlowFlask(flow=flow, ...); usage.init_app(app)

    @app.post("/v1/exports")
    @metered("design-export")
    def export(): ...

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
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, g, has_request_context

from usageflow.errors import config_error
from usageflow.flow import AsyncUsageFlow, UsageFlow
from usageflow.integrations._http import (
    PROBLEM_CONTENT_TYPE,
    Binding,
    ChargeIf,
    MeteringError,
    MeterStats,
    binding_providers,
    default_charge_if,
    headers_of,
)

__all__ = ["MeterStats", "MeteringError", "UsageFlowFlask"]

EXTENSION = "usageflow"
_G_KEY = "_usageflow_binding"


def _default_user_id() -> Any:
    """``flask.g.user_id`` when the app's authentication sets it."""
    return g.get("user_id")


@dataclass
class _State:
    flow: UsageFlow
    user_id: Callable[[], Any]
    fail_open: bool
    charge_if: ChargeIf
    headers: bool
    enabled: bool
    stats: MeterStats

    def __post_init__(self) -> None:
        self._is_async = inspect.iscoroutinefunction(self.user_id)  # once, not per request

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
            fail_open=fail_open,
            charge_if=self._charge_if,
            headers=config["USAGEFLOW_HEADERS_ENABLED"],
            enabled=config["USAGEFLOW_ENABLED"],
            stats=self.stats,
        )
        app.register_error_handler(MeteringError, _answer_refusal)
        app.after_request(_add_headers)

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
    binding: Binding | None = g.get(_G_KEY)
    if binding is not None:
        return binding
    state = _state()
    if state is None:
        return None
    binding = Binding(
        state.flow,
        state.resolve_user,
        state.fail_open,
        state.charge_if,
        state.stats,
        state.enabled,
    )
    setattr(g, _G_KEY, binding)
    return binding


binding_providers.append(_flask_binding)


def _answer_refusal(exc: MeteringError) -> Response:
    problem = exc.problem
    response = Response(problem.content(), status=problem.status, mimetype=PROBLEM_CONTENT_TYPE)
    for key, value in problem.headers:
        response.headers.add(key, value)
    return response


def _add_headers(response: Response) -> Response:
    binding: Binding | None = g.get(_G_KEY)
    if binding is None or not binding.decisions:
        return response
    state = _state()
    if state is not None and state.headers:
        headers = response.headers
        for key, value in headers_of(binding.decisions, state.flow.core.clock()):
            headers.add(key, value)
    return response
