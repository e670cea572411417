"""HTTP translation shared by every framework adapter; imports no framework and no store.

What lives here, written once for Starlette, FastAPI, Flask and Django:

* :class:`Meter`, the metering of one route (feature, credits, ``fail_open``, ``charge_if``,
  ``settle``), and :class:`RouteTable`, route patterns (``"POST /v1/exports"``,
  ``"/v1/chat/{chat_id}"``, ``"/files/{file_id:int}"``) compiled once and matched per request;
* :func:`problem_for`, the translation of a refusal into an HTTP answer: ``402`` when the
  quota is spent (``application/problem+json`` with ``feature``, ``limit``, ``current``,
  ``remaining``, ``resets_at`` and ``upgrade_url``), ``401`` with no user, ``400`` for a
  malformed user id, ``503`` when the store failed (fail closed);
* :func:`quota_headers`, the IETF ``RateLimit-Policy`` / ``RateLimit`` fields
  (draft-ietf-httpapi-ratelimit-headers, structured fields) and ``Retry-After``.

The metering itself (decide, serve, settle) is :mod:`usageflow.integrations._lifecycle`.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, PlainValidator, model_validator

from usageflow._config import validate
from usageflow.errors import ErrorCodes, UsageFlowError, config_error
from usageflow.flow import AsyncUsageFlow, UsageFlow
from usageflow.models import INT64_MAX, Decision

__all__ = [
    "Meter",
    "MeteringError",
    "Problem",
    "RouteTable",
    "ServedResponse",
    "default_charge_if",
    "headers_of",
    "problem_for",
    "quota_header_bytes",
    "quota_headers",
]

AnyFlow = UsageFlow | AsyncUsageFlow
ChargeIf = Callable[[int], bool]

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
QUOTA_EXHAUSTED: Final = "urn:usageflow:problem:quota-exhausted"
NO_USER: Final = "urn:usageflow:problem:unauthenticated"
BAD_USER: Final = "urn:usageflow:problem:invalid-user-id"
UNAVAILABLE: Final = "urn:usageflow:problem:metering-unavailable"


def default_charge_if(status: int) -> bool:
    """The default charging rule: a response is charged when its status is below 400."""
    return status < 400


# -- routes -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Meter:
    """How one route (or one decorated handler) is metered.

    ``credits`` is an int, or a callable computing the credits actually used once the response
    is known (the middleware calls it with the request and a :class:`ServedResponse`; the
    decorator with the handler's return value). With callable credits, ``reserve`` credits
    (default 1) are held before the handler runs, so that a user with nothing left is refused
    up front; the computed amount is then recorded even when it exceeds the hold.
    ``fail_open`` and ``charge_if`` left as ``None`` inherit the adapter's settings.

    ``settle`` chooses how a request is charged: ``"charge"`` (the default for an int) checks
    and charges in one store call before the handler and gives the credits back if the
    response is not charged; ``"hold"`` (always for callable credits) reserves them before and
    commits or releases after (two calls; a process that dies mid-request then costs the user
    nothing once the hold expires).
    """

    feature: str
    credits: int | Callable[..., Any] = 1
    reserve: int | None = None
    fail_open: bool | None = None
    charge_if: ChargeIf | None = None
    settle: Literal["charge", "hold"] | None = None

    def __post_init__(self) -> None:
        validate(_MeterSpec, self.__dict__, config_error, unknown="unknown route option")

    @property
    def settle_mode(self) -> Literal["charge", "hold"]:
        """``settle`` with its default: ``"charge"`` for an int, ``"hold"`` for a function."""
        if self.settle is not None:
            return self.settle
        return "charge" if isinstance(self.credits, int) else "hold"

    @property
    def held(self) -> int:
        """The credits reserved before the handler runs."""
        if isinstance(self.credits, int):
            return self.credits
        return self.reserve or 1

    @classmethod
    def of(cls, spec: object, route: object = None) -> Meter:
        """A :class:`Meter` from a feature name, a ``Meter`` or a dict of its fields; with
        ``route`` (its key in a route table), an error names that route."""
        try:
            if isinstance(spec, Meter):
                return spec
            if isinstance(spec, str):
                return cls(spec)
            if isinstance(spec, Mapping):
                fields = validate(_MeterSpec, spec, config_error, unknown="unknown route option")
                return cls(**{name: getattr(fields, name) for name in fields.model_fields_set})
            raise config_error(
                "a route value must be a feature name, a Meter or a dict such as "
                "{'feature': 'exports', 'credits': 2}"
            )
        except UsageFlowError as err:
            if route is None:
                raise
            raise config_error(f"route {route!r}: {err.message}") from None


def _feature(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    if len(value) > 255 or not value.isprintable():
        raise ValueError("must be at most 255 printable characters")
    return value


def _credits(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an int or a callable, not {type(value).__name__}")
    if not 1 <= value <= INT64_MAX:
        raise ValueError(f"must be between 1 and {INT64_MAX}")
    return value


def _credits_or_function(value: object) -> int | Callable[..., Any]:
    return value if callable(value) else _credits(value)


class _MeterSpec(BaseModel):
    """The fields of a :class:`Meter`, as a route table's dict value gives them."""

    model_config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)

    feature: Annotated[str, PlainValidator(_feature)]
    credits: Annotated[int | Callable[..., Any], PlainValidator(_credits_or_function)] = 1
    reserve: Annotated[int, PlainValidator(_credits)] | None = None
    fail_open: bool | None = None
    charge_if: Callable[[int], bool] | None = None
    settle: Literal["charge", "hold"] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> _MeterSpec:
        if self.reserve is not None and not callable(self.credits):
            raise ValueError("reserve is only for callable credits")
        if self.settle == "charge" and callable(self.credits):
            raise ValueError(
                f"{self.feature!r}: settle='charge' needs a fixed number of credits; credits "
                "computed from the response are reserved first (settle='hold')"
            )
        return self


_CONVERTORS: Final = {
    "str": "[^/]+",
    "path": ".*",
    "int": "[0-9]+",
    "float": r"[0-9]+(?:\.[0-9]+)?",
    "uuid": "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
}
_PARAM: Final = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_][A-Za-z0-9_]*))?}")
#: The methods a route key may name; ``WS`` is a websocket route (metered once, at accept).
METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "WS"}
)


def split_route_key(key: object) -> tuple[str | None, str]:
    """``"POST /v1/exports"`` -> ``("POST", "/v1/exports")``; ``"/v1/x"`` -> ``(None, "/v1/x")``
    (any method). A bad key is a ``USAGE_CONFIG_ERROR``, at setup."""
    if not isinstance(key, str):
        raise config_error("a route must be a string such as 'POST /v1/exports'")
    method: str | None = None
    path = key.strip()
    if " " in path:
        method, path = (part.strip() for part in path.split(None, 1))
        method = method.upper()
        if method not in METHODS:
            raise config_error(
                f"route {key!r}: {method!r} is not an HTTP method "
                f"(one of {', '.join(sorted(METHODS))}; WS for a websocket route)"
            )
    if not path.startswith("/") or any(c.isspace() for c in path):
        raise config_error(f"route {key!r}: the path must start with '/' and have no spaces")
    return method, path


@dataclass(frozen=True)
class _Route:
    method: str | None
    pattern: str
    regex: re.Pattern[str] | None
    meter: Meter


class RouteTable:
    """Route patterns compiled once; :meth:`match` finds the meter of a request.

    A key is ``"/path"`` (any method) or ``"METHOD /path"``; the path uses Starlette's syntax:
    ``{name}`` matches one segment, ``{name:int}`` / ``float`` / ``uuid`` / ``path`` constrain
    it. Patterns are tried in the order given and the first match wins; a static path is found
    with one dict lookup. Invalid patterns fail here, at setup.
    """

    def __init__(self, routes: Mapping[str, object] | None) -> None:
        if routes is None:
            routes = {}
        if not isinstance(routes, Mapping):
            raise config_error("routes must be a dict of route pattern to feature")
        self._static: dict[str, list[tuple[str | None, Meter]]] = {}
        self._dynamic: list[_Route] = []
        order: list[_Route] = []
        for key, spec in routes.items():
            route = self._compile(key, Meter.of(spec, key))
            order.append(route)
            if route.regex is None:
                self._static.setdefault(route.pattern, []).append((route.method, route.meter))
            else:
                self._dynamic.append(route)
        self._order = order
        # A parameterized route declared before a static one may shadow it: first match wins,
        # so such tables are scanned in order; others use the dict lookup for static paths.
        first = next((i for i, r in enumerate(order) if r.regex is not None), len(order))
        self._scan = any(r.regex is None for r in order[first:])

    def __bool__(self) -> bool:
        return bool(self._order)

    def __len__(self) -> int:
        return len(self._order)

    @staticmethod
    def _compile(key: object, meter: Meter) -> _Route:
        method, path = split_route_key(key)
        regex, names, last = "^", set(), 0
        for m in _PARAM.finditer(path):
            name, kind = m.group(1), m.group(2) or "str"
            if kind not in _CONVERTORS:
                raise config_error(
                    f"route {key!r}: unknown convertor {kind!r} (known: {', '.join(_CONVERTORS)})"
                )
            if name in names:
                raise config_error(f"route {key!r}: parameter {name!r} appears twice")
            names.add(name)
            regex += re.escape(path[last : m.start()]) + f"(?P<{name}>{_CONVERTORS[kind]})"
            last = m.end()
        rest = path[last:]
        if "{" in _PARAM.sub("", path) or "}" in _PARAM.sub("", path):
            raise config_error(f"route {key!r}: malformed parameter braces")
        if not names:
            return _Route(method, path, None, meter)
        return _Route(method, path, re.compile(regex + re.escape(rest) + "$"), meter)

    def match(self, method: str, path: str) -> Meter | None:
        """The meter of the first route matching ``method`` and ``path``, or ``None``.
        ``HEAD`` matches ``GET`` routes too; ``WS`` (a websocket) matches only ``WS`` keys,
        and a key with no method only HTTP requests."""
        # HEAD runs the GET handler (Starlette answers it from GET routes): metered alike.
        accepted = (
            ("WS",) if method == "WS" else (None, method, "GET" if method == "HEAD" else None)
        )
        if not self._scan:
            for wanted, meter in self._static.get(path, ()):
                if wanted in accepted:
                    return meter
            for route in self._dynamic:
                if route.method in accepted and route.regex is not None and route.regex.match(path):
                    return route.meter
            return None
        for route in self._order:
            if route.method not in accepted:
                continue
            if route.regex is None:
                if route.pattern == path:
                    return route.meter
            elif route.regex.match(path):
                return route.meter
        return None


def route_path(scope: Mapping[str, Any]) -> str:
    """The request path relative to the app's mount point (as Starlette's router sees it)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


# -- answers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServedResponse:
    """What the middleware saw of a response, for a credits function."""

    status_code: int
    headers: Mapping[str, str]
    body_size: int


@dataclass(frozen=True)
class Problem:
    """An HTTP refusal: status, ``application/problem+json`` body (RFC 9457) and headers."""

    status: int
    body: dict[str, Any]
    headers: list[tuple[str, str]] = field(default_factory=list)

    def content(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode()

    def all_headers(self, content: bytes) -> list[tuple[str, str]]:
        """Content type and length first, then the quota headers."""
        return [
            ("content-type", PROBLEM_CONTENT_TYPE),
            ("content-length", str(len(content))),
            *self.headers,
        ]


class MeteringError(UsageFlowError):
    """A refusal raised by :func:`usageflow.metered` (or the FastAPI dependency).

    It keeps the code, message and details of the core error (a quota refusal is still
    ``USAGE_LIMIT_ERROR`` with ``details['decision']``), so plain Python callers handle it like
    any :class:`UsageFlowError`; the framework adapters answer it with :attr:`problem`.
    """

    problem: Problem

    def __init__(
        self,
        code: ErrorCodes,
        message: str,
        details: Mapping[str, Any] | None,
        problem: Problem,
    ) -> None:
        super().__init__(code, message, dict(details or {}))
        self.problem = problem

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.message, self.details, self.problem))


@functools.lru_cache(maxsize=1024)
def _sf_string(value: str) -> str:
    """``value`` as a structured-field string (RFC 8941): printable ASCII, quoted, escaped
    (other characters are percent-encoded). Cached: feature names are few."""
    text = "".join(c if " " <= c <= "~" else f"%{ord(c):02X}" for c in value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _seconds_until(moment: datetime | None, now: datetime) -> int | None:
    if moment is None:
        return None
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    return max(0, math.ceil((moment - now).total_seconds()))


def _quota_fields(
    decision: Decision, now: datetime, refused: bool, refund: int
) -> tuple[str, str, str | None] | None:
    """``(RateLimit-Policy, RateLimit, Retry-After or None)``, or None when unlimited."""
    limit = decision.limit
    if limit is None:  # unlimited: no quota to tell
        return None
    name = _sf_string(decision.feature_name)
    # Credits given back cannot leave more than the plan allows plus the credit balance
    # (``r`` counts grants: a user may have more left than the plan's ``q``).
    remaining = min((decision.remaining or 0) + refund, limit + decision.credit_balance)
    reset = _seconds_until(decision.resets_at, now)
    if reset is None:
        return f"{name};q={limit}", f"{name};r={remaining}", None
    return f"{name};q={limit}", f"{name};r={remaining};t={reset}", str(reset) if refused else None


def quota_headers(
    decision: Decision, now: datetime, *, refused: bool = False, refund: int = 0
) -> list[tuple[str, str]]:
    """The quota fields of a metered response (none for an unlimited feature).

    ``RateLimit-Policy: "<feature>";q=<limit>`` and ``RateLimit: "<feature>";r=<remaining>``
    with ``;t=<seconds until the window resets>`` when the window has an end, and, when
    ``refused``, ``Retry-After`` (same seconds). ``refund`` credits are added back to
    ``remaining`` (credits given back because the response is not charged). When the charge
    crossed alert thresholds, ``UsageFlow-Alert`` (:func:`alert_field`).
    """
    fields = _quota_fields(decision, now, refused, refund)
    if fields is None:
        return []
    policy, field, retry = fields
    headers = [("ratelimit-policy", policy), ("ratelimit", field)]
    if retry is not None:
        headers.append(("retry-after", retry))
    if decision.alerts:
        headers.append(("usageflow-alert", alert_field(decision)))
    return headers


def alert_field(decision: Decision) -> str:
    """``UsageFlow-Alert``: the thresholds this request's charge crossed, a list of
    ``"<feature>";threshold=<percent>`` (a structured field, RFC 8941), so that a front end
    can show a banner without polling."""
    name = _sf_string(decision.feature_name)
    return ", ".join(f"{name};threshold={t}" for t in decision.alerts)


def quota_header_bytes(
    decision: Decision, now: datetime, *, refused: bool = False, refund: int = 0
) -> list[tuple[bytes, bytes]]:
    """:func:`quota_headers` as the raw ``(name, value)`` bytes an ASGI response carries."""
    fields = _quota_fields(decision, now, refused, refund)
    if fields is None:
        return []
    policy, field, retry = fields
    headers = [(b"ratelimit-policy", policy.encode()), (b"ratelimit", field.encode())]
    if retry is not None:
        headers.append((b"retry-after", retry.encode()))
    if decision.alerts:
        headers.append((b"usageflow-alert", alert_field(decision).encode()))
    return headers


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def exhausted(
    decision: Decision,
    now: datetime,
    upgrade_url: str | None,
    message: str | None = None,
    top_up_url: str | None = None,
) -> Problem:
    """The ``402`` of a spent quota: where to upgrade the plan and where to buy credits."""
    whose = {"account": "your team's shared quota", "member": "your own cap"}.get(
        decision.scope or "", "the quota"
    )
    detail = message or (
        f"{whose[0].upper()}{whose[1:]} of {decision.feature_name!r} is spent: "
        f"{decision.current} of {decision.limit} credits used, {decision.credits} more "
        "requested."
    )
    if decision.resets_at is not None:
        detail += f" It resets at {_iso(decision.resets_at)}."
    if upgrade_url and top_up_url:
        detail += " Upgrade, or buy credits, to get more."
    elif upgrade_url:
        detail += " Upgrade to get more."
    elif top_up_url:
        detail += " Buy credits to get more."
    body = {
        "type": QUOTA_EXHAUSTED,
        "title": "Quota exhausted",
        "status": 402,
        "detail": detail,
        "feature": decision.feature_name,
        "limit": decision.limit,
        "current": decision.current,
        "remaining": decision.remaining,
        "resets_at": _iso(decision.resets_at),
        "credit_balance": decision.credit_balance,
        "upgrade_url": upgrade_url,
        "top_up_url": top_up_url,
    }
    if decision.scope is not None:  # a team member: the account's pool, or their own cap
        body["scope"] = decision.scope
    return Problem(402, body, quota_headers(decision, now, refused=True))


def unauthenticated(feature: str) -> Problem:
    """The ``401`` of a metered request with no user id."""
    return Problem(
        401,
        {
            "type": NO_USER,
            "title": "Authentication required",
            "status": 401,
            "detail": f"{feature!r} is metered per user and this request has no user.",
            "feature": feature,
        },
    )


def invalid_user(feature: str, reason: str) -> Problem:
    """The ``400`` of a user id UsageFlow cannot accept (too long, control characters...)."""
    return Problem(
        400,
        {
            "type": BAD_USER,
            "title": "Invalid user id",
            "status": 400,
            "detail": f"The user id of this request is not valid: {reason}.",
            "feature": feature,
        },
    )


def unavailable(feature: str) -> Problem:
    """The ``503`` of a store that failed (fail closed)."""
    return Problem(
        503,
        {
            "type": UNAVAILABLE,
            "title": "Usage metering unavailable",
            "status": 503,
            "detail": "Usage could not be checked; try again shortly.",
            "feature": feature,
        },
        [("retry-after", "5")],
    )


def problem_for(
    err: UsageFlowError,
    feature: str,
    now: datetime,
    upgrade_url: str | None = None,
    top_up_url: str | None = None,
) -> Problem:
    """The HTTP answer to a :class:`UsageFlowError` raised while authorizing a request.

    ``USAGE_LIMIT_ERROR`` -> 402 (a user with no plan at all is refused like a spent quota of
    0); an invalid ``user_id`` -> 400; a store failure (and anything else) -> 503.
    """
    if err.code is ErrorCodes.USAGE_LIMIT_ERROR:
        found = err.details.get("decision")
        if not isinstance(found, Decision):
            found = Decision(
                allowed=False,
                feature_name=feature,
                credits=int(err.details.get("credits", 1) or 1),
                current=0,
                limit=0,
                remaining=0,
                is_unlimited=False,
                resets_at=None,
            )
            return exhausted(
                found, now, upgrade_url, f"No plan gives access to {feature!r}.", top_up_url
            )
        return exhausted(found, now, upgrade_url, None, top_up_url)
    if err.code is ErrorCodes.USAGE_INVALID_PARAMS and err.details.get("field") == "user_id":
        return invalid_user(feature, err.message)
    return unavailable(feature)


# -- gates: reserve / commit / release over either flow ---------------------------------------
def normalize_user_id(value: object) -> str | None:
    """A user id as UsageFlow stores it: ``str``; an ``int`` (not ``bool``) is converted;
    ``None`` and blank strings mean "no user"."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value if value.strip() else None
    raise UsageFlowError(
        ErrorCodes.USAGE_INVALID_PARAMS,
        f"user_id must be a string, not {type(value).__name__}",
        {"field": "user_id"},
    )


def check_flow(flow: object) -> AnyFlow:
    if not isinstance(flow, (UsageFlow, AsyncUsageFlow)):
        raise config_error("flow must be a usageflow.UsageFlow or usageflow.AsyncUsageFlow")
    return flow


def headers_of(decisions: Iterable[tuple[Decision, int]], now: datetime) -> list[tuple[str, str]]:
    """The quota headers of the decisions taken while serving a request."""
    out: list[tuple[str, str]] = []
    for decision, refund in decisions:
        out.extend(quota_headers(decision, now, refund=refund))
    return out
