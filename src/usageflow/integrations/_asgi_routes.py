"""The keys of the ASGI middleware's route table, checked against the routes an app declares.

``UsageFlowMiddleware(routes={"POST /export": "exports"})`` on an app whose route is
``POST /exports`` would meter nothing; :func:`check_route_keys` refuses such a table at startup.
Keys are compared with the declared routes **as templates** (``{x:str}`` is written ``{x}``),
never by trying example paths:

* ``"METHOD /path"`` matches an HTTP route with that exact template serving that method
  (``HEAD`` is served wherever ``GET`` is); ``"/path"`` matches an HTTP route of any method;
* ``"WS /path"`` matches only a websocket route;
* under a mounted ASGI app whose routes cannot be listed (an *opaque* mount, e.g.
  ``Mount("/static", app=StaticFiles(...))``), any key whose path starts with the mount prefix
  followed by ``/`` is accepted, whatever its method (``WS`` included);
* a route object of a kind this module does not know is treated like an opaque mount at its
  prefix: a right key is never refused because of it.

Paths are full paths: ``Mount``, ``APIRouter`` and ``include_router`` prefixes included. Only
Starlette is imported; FastAPI's routes subclass Starlette's, and a router included with
``app.include_router`` (kept as one entry of ``app.routes`` by recent FastAPI versions) is
walked through its ``original_router`` and ``include_context.prefix``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from starlette.routing import Host, Mount, Route, WebSocketRoute

from usageflow.errors import config_error
from usageflow.integrations._http import split_route_key

__all__ = ["DeclaredRoute", "check_route_keys", "declared_routes"]

WS: Final = "WS"
WEBSOCKET: Final = frozenset({WS})
_STR_PARAM: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):str\}")
_SYNTAX: Final = (
    "Keys are route templates with the full path (Mount and router prefixes included), "
    "in Starlette's syntax"
)


@dataclass(frozen=True)
class DeclaredRoute:
    """One route an app declares, as a client reaches it.

    ``methods`` is ``None`` for any method (a ``Route`` without methods over an ASGI endpoint,
    an opaque mount) and ``{"WS"}`` for a websocket route. ``template`` is the full path
    template, prefixes included and ``{x:str}`` written ``{x}``. ``opaque`` marks a mounted app
    whose routes cannot be listed; its template is then the prefix + ``"/{path:path}"``.
    """

    methods: frozenset[str] | None
    template: str
    opaque: bool = False

    @property
    def prefix(self) -> str:
        """The path every request under an opaque route starts with ("" at the root)."""
        return self.template.removesuffix("/{path:path}") if self.opaque else self.template

    def accepts(self, method: str | None, path: str) -> bool:
        """Whether the key ``method path`` (path normalized) names this route."""
        if self.opaque:
            return path.startswith(self.prefix + "/")
        if path != self.template:
            return False
        websocket = self.methods == WEBSOCKET
        if (method == WS) != websocket:
            return False
        return (
            websocket
            or method is None
            or self.methods is None
            or method in self.methods
            or (method == "HEAD" and "GET" in self.methods)
        )

    def spellings(self, with_method: bool) -> list[str]:
        """The keys naming this route: with a method each, or the bare template."""
        if self.methods is None:
            return [self.template]
        if self.methods == WEBSOCKET:
            return [f"{WS} {self.template}"]
        if not with_method:
            return [self.template]
        shown = self.methods - {"HEAD"} if "GET" in self.methods else self.methods
        return [f"{method} {self.template}" for method in sorted(shown)]


def _normalize(template: str) -> str:
    return _STR_PARAM.sub(r"{\1}", template)


def _listable_routes(app: object) -> Sequence[object] | None:
    """The routes of ``app``, found through ``.routes`` / ``.router.routes``, following the
    ``.app`` of middleware wrappers; ``None`` when nothing along the way lists routes."""
    seen: set[int] = set()
    while app is not None and id(app) not in seen:
        seen.add(id(app))
        for holder in (app, getattr(app, "router", None)):
            routes = getattr(holder, "routes", None)
            if isinstance(routes, Sequence) and not isinstance(routes, str):
                return routes
        app = getattr(app, "app", None)
    return None


def _walk(routes: Iterable[object], prefix: str) -> list[DeclaredRoute]:
    found: list[DeclaredRoute] = []
    for route in routes:
        if isinstance(route, WebSocketRoute):
            found.append(DeclaredRoute(WEBSOCKET, _normalize(prefix + route.path)))
        elif isinstance(route, Route):
            methods = frozenset(route.methods) if route.methods else None  # empty: any
            found.append(DeclaredRoute(methods, _normalize(prefix + route.path)))
        elif isinstance(route, (Mount, Host)):
            inner = prefix + route.path if isinstance(route, Mount) else prefix
            found.extend(_walk_app(route.app, inner))
        elif (included := _included_router(route)) is not None:
            found.extend(_walk(included[0], prefix + included[1]))
        else:
            found.append(_opaque(prefix))
    return found


def _walk_app(app: object, prefix: str) -> list[DeclaredRoute]:
    routes = _listable_routes(app)
    return [_opaque(prefix)] if routes is None else _walk(routes, prefix)


def _opaque(prefix: str) -> DeclaredRoute:
    return DeclaredRoute(None, _normalize(prefix) + "/{path:path}", opaque=True)


def _included_router(route: object) -> tuple[Sequence[object], str] | None:
    """FastAPI's entry for ``include_router``: the router's routes and the include prefix."""
    routes = getattr(getattr(route, "original_router", None), "routes", None)
    prefix = getattr(getattr(route, "include_context", None), "prefix", None)
    if isinstance(routes, Sequence) and isinstance(prefix, str):
        return routes, prefix
    return None


def declared_routes(app: object) -> list[DeclaredRoute]:
    """Every route ``app`` declares, in declaration order, with its full path template.

    ``app`` is a Starlette or FastAPI app, a ``Router``, or middleware wrapping one (each
    keeping the next app in ``.app``). Mounts, hosts and included routers are walked; a mounted
    app whose routes cannot be listed appears as one opaque route. An ``app`` exposing no
    routes at all (a plain ASGI callable) is a ``USAGE_CONFIG_ERROR``.
    """
    routes = _listable_routes(app)
    if routes is None:
        raise config_error(
            f"the routes table needs a Starlette or FastAPI app whose routes it can check, "
            f"and {type(app).__name__} lists no routes; on a plain ASGI app, meter the "
            f"handlers with @metered instead",
            app=type(app).__name__,
        )
    return _walk(routes, "")


def check_route_keys(keys: Iterable[str], app: object) -> None:
    """Raise a ``USAGE_CONFIG_ERROR`` unless every key names a route ``app`` declares.

    The message names the first bad key and the closest declared routes; ``details`` holds
    ``key`` and ``closest`` (close matches, else the first five declared routes) for it, and
    ``keys``, every bad key. A malformed key is refused as :func:`split_route_key` refuses it.
    No keys: nothing to check, ``app`` is not inspected.
    """
    parsed = [(key, *_split(key)) for key in keys]
    if not parsed:
        return
    declared = declared_routes(app)
    bad = [
        (key, method, path)
        for key, method, path in parsed
        if not any(route.accepts(method, path) for route in declared)
    ]
    if not bad:
        return
    key, method, path = bad[0]
    candidates = list(
        dict.fromkeys(s for route in declared for s in route.spellings(method is not None))
    )
    wanted = f"{method} {path}" if method else path
    close = difflib.get_close_matches(wanted, candidates, n=3)
    closest = close or candidates[:5]
    if close:
        hint = "closest: " + ", ".join(map(repr, close))
    elif candidates:
        hint = "declared routes include: " + ", ".join(map(repr, closest))
    else:
        hint = "this app declares no routes"
    if len(bad) > 1:
        hint += f" (and {len(bad) - 1} more bad key(s): {', '.join(repr(b[0]) for b in bad[1:])})"
    raise config_error(
        f"route key {key!r} matches no route of this app; {hint}. {_SYNTAX}",
        key=key,
        closest=closest,
        keys=[b[0] for b in bad],
    )


def _split(key: object) -> tuple[str | None, str]:
    """``split_route_key``, with ``"WS"`` accepted as the websocket pseudo-method and the
    path's ``{x:str}`` written ``{x}``."""
    if isinstance(key, str):
        head, _, rest = key.strip().partition(" ")
        if head.upper() == WS and rest.strip():
            return WS, _normalize(split_route_key(rest.strip())[1])
    method, path = split_route_key(key)
    return method, _normalize(path)
