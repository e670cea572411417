"""The usage page (for a signed-in user) and the admin page (for the founder), written once.

Each page is a generator, in the style of the core: it yields the flow calls it needs
(:class:`Call`) and returns a :class:`PageResponse`. :func:`drive_sync` runs it on a
``UsageFlow``, :func:`drive_async` on either flow from async code; the Starlette and Flask
adapters only translate their request into a :class:`PageRequest` and the response back.

The HTML is rendered on the server with every value escaped, needs no JavaScript, no CDN
and no build step, follows ``prefers-color-scheme``, and uses real headings, labels, table
headers and text equivalents for the bars and the chart (docs/pages.md lists the checks).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Generator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from html import escape
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode

from usageflow.errors import UsageFlowError, config_error
from usageflow.flow import AsyncUsageFlow, UsageFlow
from usageflow.models import FeatureUsage, Plan, UsageStats, UserOverview

__all__ = [
    "CSRF_COOKIE",
    "PageRequest",
    "PageResponse",
    "admin_page",
    "check_authorize",
    "drive_async",
    "drive_sync",
    "forbidden",
    "usage_page",
]

#: The cookie holding the admin page's anti-forgery token (double submit: each form carries
#: the same value, which a page of another origin can neither read nor set).
CSRF_COOKIE = "usageflow_csrf"


class Call(NamedTuple):
    """One call of the flow a page needs: ``flow.<method>(*args, **kwargs)``."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = {}


class PageRequest(NamedTuple):
    """What a page reads of a request."""

    method: str
    path: str  # the page's own path: "/", "/usage.json", "/user", "/user/adjust", ...
    query: Mapping[str, str]
    form: Mapping[str, str]
    cookies: Mapping[str, str]
    base: str  # where the page is mounted ("/admin"), for its links and forms


class PageResponse(NamedTuple):
    status: int
    body: str
    content_type: str = "text/html; charset=utf-8"
    headers: Sequence[tuple[str, str]] = ()

    def all_headers(self) -> list[tuple[str, str]]:
        """The response's headers, with the security headers every page carries: a page
        may load nothing but its own inline stylesheet (by its hash), run no script, be
        framed by no one and submit forms only to its own origin."""
        return [*self.headers, *security_headers()]


@functools.cache
def security_headers() -> tuple[tuple[str, str], ...]:
    digest = base64.b64encode(hashlib.sha256(_css().encode()).digest()).decode()
    policy = (
        f"default-src 'none'; style-src 'sha256-{digest}'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    return (
        ("content-security-policy", policy),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        ("cache-control", "no-store"),
    )


Page = Generator[Call, Any, PageResponse]


def drive_sync(flow: UsageFlow, page: Page) -> PageResponse:
    """Run ``page`` on a sync flow; a ``UsageFlowError`` of a call is thrown into it."""
    sent: Any = None
    error: BaseException | None = None
    while True:
        try:
            call = page.send(sent) if error is None else page.throw(error)
        except StopIteration as done:
            result: PageResponse = done.value
            return result
        sent, error = None, None
        try:
            sent = getattr(flow, call.method)(*call.args, **call.kwargs)
        except UsageFlowError as exc:
            error = exc


async def drive_async(
    flow: UsageFlow | AsyncUsageFlow, page: Page, in_thread: Callable[..., Any]
) -> PageResponse:
    """Run ``page`` from async code: awaited on an ``AsyncUsageFlow``; a sync flow's calls go
    through ``in_thread`` (the framework's way to run blocking work off the loop)."""
    sent: Any = None
    error: BaseException | None = None
    while True:
        try:
            call = page.send(sent) if error is None else page.throw(error)
        except StopIteration as done:
            result: PageResponse = done.value
            return result
        sent, error = None, None
        method = getattr(flow, call.method)
        try:
            if isinstance(flow, AsyncUsageFlow):
                sent = await method(*call.args, **call.kwargs)
            else:
                sent = await in_thread(functools.partial(method, *call.args, **call.kwargs))
        except UsageFlowError as exc:
            error = exc


def check_authorize(authorize: object) -> None:
    """The admin page is refused unless the app says who may see it."""
    if not callable(authorize):
        raise config_error(
            "the admin page needs authorize=fn(request) -> bool, deciding who may see it "
            "(for example: the signed-in user is an admin); it is never open by default"
        )


# -- the usage page ---------------------------------------------------------------------------
def usage_page(request: PageRequest, user_id: str | None) -> Page:
    """``GET /``: the user's page; ``GET /usage.json``: the same data as JSON. No user: 401
    (never a redirect, never anyone else's page)."""
    if user_id is None:
        if request.path.endswith(".json"):
            return PageResponse(401, '{"error": "not signed in"}', "application/json")
        return PageResponse(401, _document("Usage", "<p>Sign in to see your usage.</p>"))
    overview: UserOverview = yield Call("get_user_overview", (user_id,))
    charts: dict[str, UsageStats] = {}
    for feature in overview.features:
        if feature.period != "lifetime" and not feature.is_unlimited:
            charts[feature.feature_name] = yield Call(
                "get_usage_stats", (user_id, feature.feature_name, feature.period, "day")
            )
    upgrade = yield Call("upgrade_url", (user_id,))
    top_ups: dict[str, str] = {}
    for feature in overview.features:
        if not feature.is_unlimited:
            url = yield Call("top_up_url", (user_id, feature.feature_name))
            if url:
                top_ups[feature.feature_name] = url
    data = usage_data(overview, upgrade, top_ups)
    if request.path.endswith(".json"):
        return PageResponse(200, json.dumps(data), "application/json")
    return PageResponse(200, _usage_html(overview, charts, upgrade, top_ups))


def usage_data(
    overview: UserOverview, upgrade_url: str | None, top_ups: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The usage page's data (``GET /usage.json``)."""
    plan = overview.plan
    return {
        "user_id": overview.user_id,
        "plan": None if plan is None else _plan_data(plan),
        "features": [
            {
                "feature": f.feature_name,
                "used": f.current - f.held,
                "held": f.held,
                "limit": f.limit,
                "remaining": f.remaining,
                "credit_balance": f.credit_balance,
                "period": f.period,
                "resets_at": _iso(f.resets_at),
                "top_up_url": (top_ups or {}).get(f.feature_name),
            }
            for f in overview.features
        ],
        "upgrade_url": upgrade_url,
    }


def _plan_data(plan: Plan) -> dict[str, Any]:
    return {
        "id": plan.id,
        "name": plan.name,
        "is_free": plan.is_free,
        "price_amount": None if plan.price_amount is None else str(plan.price_amount),
        "price_currency": plan.price_currency,
    }


def _usage_html(
    overview: UserOverview,
    charts: Mapping[str, UsageStats],
    upgrade: str | None,
    top_ups: Mapping[str, str],
) -> str:
    plan = overview.plan
    parts = ["<h1>Usage</h1>"]
    parts.append(f"<p class=plan>Plan: <strong>{_e(plan.name if plan else 'none')}</strong></p>")
    if upgrade:
        parts.append(f'<p><a class=button href="{_e(upgrade)}">Upgrade your plan</a></p>')
    if not overview.features:
        parts.append("<p>Your plan has no metered features.</p>")
    for feature in overview.features:
        top_up = top_ups.get(feature.feature_name)
        parts.append(_feature_html(feature, charts.get(feature.feature_name), top_up))
    return _document("Usage", "".join(parts))


def _feature_html(f: FeatureUsage, stats: UsageStats | None, top_up: str | None = None) -> str:
    name = _e(f.feature_name)
    used = f.current - f.held
    out = [f'<section aria-labelledby="f-{name}"><h2 id="f-{name}">{name}</h2>']
    if f.limit is None:
        out.append(f"<p><strong>{used:,}</strong> used; unlimited.</p>")
    else:
        limit = max(f.limit, 0)
        summary = f"{used:,} used, {f.held:,} held, {f.remaining or 0:,} left of {limit:,}"
        if f.credit_balance:
            summary += f" (the plan's, plus {f.credit_balance:,} bought credits)"
        out.append(f"<p>{summary}</p>")
        out.append(_bar(used, f.held, limit + f.credit_balance, summary))
        if top_up:
            out.append(f'<p><a class=button href="{_e(top_up)}">Buy more {name}</a></p>')
    out.append(f"<p class=period>{_period_text(f)}</p>")
    if stats is not None and stats.by_period:
        out.append(_chart(f.feature_name, stats, f.window_start, f.resets_at))
    out.append("</section>")
    return "".join(out)


def _bar(used: int, held: int, limit: int, label: str) -> str:
    """A bar: used, held and left as shares of the limit (an overdraft fills it)."""
    total = max(limit, used + held, 1)
    used_pct = 100 * max(used, 0) / total
    held_pct = 100 * held / total
    # An SVG, not styled spans: widths as attributes, since the page's policy allows no
    # inline style attribute.
    return (
        f'<svg class=bar viewBox="0 0 100 1" preserveAspectRatio="none" role="img" '
        f'aria-label="{_e(label)}"><rect class=used width="{used_pct:.2f}" height="1"/>'
        f'<rect class=held x="{used_pct:.2f}" width="{held_pct:.2f}" height="1"/></svg>'
    )


def _period_text(f: FeatureUsage) -> str:
    period = _e(f.period.replace("_", " "))
    if f.resets_at is not None:
        moment = f.resets_at.astimezone(timezone.utc).strftime("%B %-d, %Y at %H:%M UTC")
        return f'Period: {period}. Resets <time datetime="{_iso(f.resets_at)}">{moment}</time>.'
    return f"Period: {period}."


def _chart(feature: str, stats: UsageStats, start: datetime | None, end: datetime | None) -> str:
    """The window's daily usage as an inline SVG bar chart (a slot for every day of a window
    with an end, the days to come empty), with a text equivalent."""
    totals = {d.date: d.total for d in stats.by_period}
    dates = [d.date for d in stats.by_period]
    if start is not None and end is not None:
        first = start.astimezone(timezone.utc).date()
        count = max((end.astimezone(timezone.utc).date() - first).days, 1)
        dates = [(first + timedelta(days=i)).isoformat() for i in range(min(count, 400))]
    top = max([*totals.values(), 1])
    width, height, gap = 600, 120, 2
    step = width / len(dates)
    bars = []
    for i, date in enumerate(dates):
        total = totals.get(date, 0)
        h = max(total, 0) / top * (height - 20)
        bars.append(
            f'<rect x="{i * step:.1f}" y="{height - h:.1f}" width="{max(step - gap, 1):.1f}" '
            f'height="{h:.1f}"><title>{_e(date)}: {total:,}</title></rect>'
        )
    label = f"Daily usage of {feature} this period: {stats.total:,} in all, at most {top:,} a day"
    return (
        f'<figure><svg class=chart viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_e(label)}">{"".join(bars)}</svg>'
        f"<figcaption>{_e(label)}.</figcaption></figure>"
    )


# -- the admin page ---------------------------------------------------------------------------
def forbidden() -> PageResponse:
    return PageResponse(403, _document("Forbidden", "<h1>Forbidden</h1>"))


def admin_page(request: PageRequest, admin: str) -> Page:
    """The founder's pages (the adapter has checked ``authorize`` already): ``GET /`` plans,
    top users and Stripe events; ``GET /user?id=`` one user; ``POST /user/<action>`` an action,
    confirmed, recorded with ``admin`` in its metadata, then back to the user's page."""
    token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    cookie = [("set-cookie", _cookie(token, request.base))]
    if request.method == "POST":
        return (yield from _admin_action(request, admin, token))
    if request.path == "/user" and request.query.get("id"):
        body = yield from _admin_user(request, request.query["id"], token)
        return PageResponse(200, body, headers=cookie)
    if request.path != "/":
        return PageResponse(404, _document("Not found", "<h1>Not found</h1>"))
    plans: list[Plan] = yield Call("get_plans")
    features = sorted({f for p in plans for f, row in p.limits.items() if row.limit_value != -1})
    tops = []
    for feature in features:
        tops.append((feature, (yield Call("top_users", (feature, 5)))))
    events = yield Call("recent_stripe_events", (20,))
    return PageResponse(200, _admin_home(request, plans, tops, events), headers=cookie)


def _admin_home(request: PageRequest, plans: list[Plan], tops: list[Any], events: list[Any]) -> str:
    base = _e(request.base)
    rows = "".join(
        f"<tr><td>{_e(p.name)}{' (free)' if p.is_free else ''}</td>"
        f"<td>{_e(str(p.price_amount or ''))} {_e(p.price_currency or '')}</td>"
        f"<td>{_e(_limits_text(p))}</td></tr>"
        for p in plans
    )
    parts = [
        "<h1>UsageFlow admin</h1>",
        f'<form method=get action="{base}/user"><label for=uid>User id</label> '
        "<input id=uid name=id required> <button>Open</button></form>",
        "<h2>Plans</h2><table><thead><tr><th scope=col>Plan</th><th scope=col>Price</th>"
        f"<th scope=col>Limits</th></tr></thead><tbody>{rows}</tbody></table>",
        "<h2>Closest to their limits</h2>",
    ]
    for feature, top in tops:
        items = "".join(
            f'<li><a href="{base}/user?id={quote(u.user_id)}">{_e(u.user_id)}</a>: {u.used:,}</li>'
            for u in top.users
        )
        parts.append(f"<h3>{_e(feature)}</h3><ol>{items or '<li>nobody yet</li>'}</ol>")
    event_rows = "".join(
        f"<tr><td>{_e(e.processed_at.strftime('%Y-%m-%d %H:%M:%S'))}</td><td>{_e(e.type)}</td>"
        f"<td>{_e(e.action)}</td><td>{_e(e.user_id or '')}</td><td>{_e(e.event_id)}</td></tr>"
        for e in events
    )
    parts.append(
        "<h2>Stripe events</h2><table><thead><tr><th scope=col>Processed</th>"
        "<th scope=col>Type</th><th scope=col>Outcome</th><th scope=col>User</th>"
        f"<th scope=col>Event</th></tr></thead><tbody>{event_rows}</tbody></table>"
        if events
        else "<h2>Stripe events</h2><p>No webhook received yet.</p>"
    )
    return _document("UsageFlow admin", "".join(parts))


def _limits_text(plan: Plan) -> str:
    return ", ".join(
        f"{feature}: {'unlimited' if row.limit_value == -1 else f'{row.limit_value:,}'}"
        f" / {row.period.replace('_', ' ')}"
        for feature, row in sorted(plan.limits.items())
    )


def _admin_user(request: PageRequest, user_id: str, token: str) -> Generator[Call, Any, str]:
    overview: UserOverview = yield Call("get_user_overview", (user_id,))
    events = yield Call("list_events", (user_id, None, 20))
    grants = yield Call("list_grants", (user_id,))
    adjustments = []
    for feature in overview.features:
        adjustments.extend((yield Call("list_limit_adjustments", (user_id, feature.feature_name))))
    profile = overview.profile
    status = (profile.subscription_status if profile else None) or "none"
    email = (profile.email if profile else None) or ""
    customer = (profile.stripe_customer_id if profile else None) or ""
    base = _e(request.base)
    uid = _e(user_id)
    notice = request.query.get("done")
    parts = [f'<p><a href="{base}/">All users</a></p><h1>User {uid}</h1>']
    if notice:
        parts.append(f'<p role="status" class=notice>{_e(notice)}</p>')
    parts.append(
        "<dl>"
        f"<dt>Plan</dt><dd>{_e(overview.plan.name if overview.plan else 'none')}</dd>"
        f"<dt>Subscription</dt><dd>{_e(status)}</dd><dt>Email</dt><dd>{_e(email)}</dd>"
        f"<dt>Stripe customer</dt><dd>{_e(customer)}</dd>"
        "</dl><h2>Usage</h2><table><thead><tr><th scope=col>Feature</th><th scope=col>Used</th>"
        "<th scope=col>Held</th><th scope=col>Limit</th><th scope=col>Credits</th>"
        "<th scope=col>Left</th><th scope=col>Resets</th></tr></thead><tbody>"
    )
    for f in overview.features:
        limit = "unlimited" if f.limit is None else f"{f.limit:,}"
        left = "" if f.remaining is None else f"{f.remaining:,}"
        parts.append(
            f"<tr><td>{_e(f.feature_name)}</td><td>{f.current - f.held:,}</td><td>{f.held:,}</td>"
            f"<td>{limit}</td><td>{f.credit_balance:,}</td><td>{left}</td>"
            f"<td>{_e(_iso(f.resets_at) or '')}</td></tr>"
        )
    parts.append("</tbody></table><h2>Credit grants</h2>")
    parts.append(
        "<table><thead><tr><th scope=col>Feature</th><th scope=col>Credits</th>"
        "<th scope=col>Left</th><th scope=col>Expires</th><th scope=col>Source</th>"
        "<th scope=col>Reason</th></tr></thead><tbody>"
        + "".join(
            f"<tr><td>{_e(g.feature_name)}</td><td>{g.credits:,}</td><td>{g.remaining:,}</td>"
            f"<td>{_e(_iso(g.expires_at) or 'never')}</td><td>{_e(g.source)}</td>"
            f"<td>{_e(g.reason or '')}</td></tr>"
            for g in grants
        )
        + "</tbody></table>"
        if grants
        else "<p>None.</p>"
    )
    parts.append("<h2>Limit adjustments</h2>")
    parts.append(
        "<ul>"
        + "".join(
            f"<li>{_e(a.feature_name)}: {a.amount:+,} ({_e(a.type)}) "
            f"until {_e(_iso(a.end_date) or '')}</li>"
            for a in adjustments
        )
        + "</ul>"
        if adjustments
        else "<p>None active.</p>"
    )
    parts.append("<h2>Recent events</h2>")
    parts.append(
        "<table><thead><tr><th scope=col>Time</th><th scope=col>Feature</th><th scope=col>Type</th>"
        "<th scope=col>Credits</th></tr></thead><tbody>"
        + "".join(
            f"<tr><td>{_e(e.timestamp.strftime('%Y-%m-%d %H:%M:%S'))}</td>"
            f"<td>{_e(e.feature_name)}</td><td>{_e(e.event_type)}</td>"
            f"<td>{'' if e.credits_used is None else f'{e.credits_used:,}'}</td></tr>"
            for e in events
        )
        + "</tbody></table>"
    )
    features = [f.feature_name for f in overview.features]
    parts.append("<h2>Actions</h2>")
    parts.append(
        _action_form(
            base, uid, token, "adjust", "Add to the limit", features, amount=True, days=True
        )
    )
    parts.append(
        _action_form(
            base,
            uid,
            token,
            "grant",
            "Grant credits",
            features,
            amount=True,
            days=True,
            free_feature=True,
        )
    )
    parts.append(_action_form(base, uid, token, "refund", "Refund usage", features, amount=True))
    parts.append(_action_form(base, uid, token, "reset", "Reset usage", features))
    return _document(f"User {user_id}", "".join(parts))


def _action_form(
    base: str,
    uid: str,
    token: str,
    action: str,
    title: str,
    features: list[str],
    *,
    amount: bool = False,
    days: bool = False,
    free_feature: bool = False,
) -> str:
    """An action's form; ``free_feature``: any feature name, the plan's suggested (a grant
    may be of a feature the plan lacks: pay as you go)."""
    options = "".join(f"<option>{_e(f)}</option>" for f in features)
    feature_field = (
        f'<input id="{action}-feature" name=feature required list="{action}-features">'
        f'<datalist id="{action}-features">{options}</datalist>'
        if free_feature
        else f'<select id="{action}-feature" name=feature required>{options}</select>'
    )
    fields = [
        f'<form method=post action="{base}/user/{action}" class=action>',
        f"<fieldset><legend>{_e(title)}</legend>",
        f'<input type=hidden name=id value="{uid}">',
        f'<input type=hidden name=csrf value="{_e(token)}">',
        f'<label for="{action}-feature">Feature</label> ',
        feature_field,
    ]
    if amount:
        fields.append(
            f'<label for="{action}-amount">Credits</label> '
            f'<input id="{action}-amount" name=amount type=number min=1 required>'
        )
    if days:
        fields.append(
            f'<label for="{action}-days">For days</label> '
            f'<input id="{action}-days" name=days type=number min=1 value=30 required>'
        )
    fields.append(
        f'<label for="{action}-reason">Reason</label> '
        f'<input id="{action}-reason" name=reason required>'
        f"<label><input type=checkbox name=confirm value=yes required> I confirm</label>"
        f"<button>{_e(title)}</button></fieldset></form>"
    )
    return "".join(fields)


def _admin_action(request: PageRequest, admin: str, token: str) -> Page:
    form = request.form
    if not hmac.compare_digest(form.get("csrf", ""), request.cookies.get(CSRF_COOKIE, "\0")):
        return PageResponse(
            403, _document("Forbidden", "<h1>Forbidden</h1><p>Reload the page.</p>")
        )
    action = request.path.rpartition("/")[2]
    user_id, feature = form.get("id", ""), form.get("feature", "")
    if form.get("confirm") != "yes" or action not in ("adjust", "grant", "refund", "reset"):
        return PageResponse(
            400, _document("Not done", "<h1>Not done</h1><p>Confirm the action.</p>")
        )
    reason = form.get("reason", "").strip() or action
    metadata = {"reason": reason, "admin": admin}
    try:
        if action == "reset":
            yield Call("reset_feature_usage", (user_id, feature, metadata))
            done = f"{feature} reset"
        else:
            amount = int(form.get("amount", ""))
            if action == "refund":
                yield Call("adjust_usage", (user_id, feature, -amount, metadata))
                done = f"{amount:,} {feature} refunded"
            elif action == "grant":
                expires = datetime.now(timezone.utc) + _days(form.get("days", "30"))
                yield Call(
                    "grant_credits",
                    (user_id, feature, amount),
                    {
                        "expires_at": expires,
                        "reason": reason,
                        "metadata": metadata,
                        "source": "admin",
                    },
                )
                done = f"{amount:,} {feature} credits granted"
            else:
                now = datetime.now(timezone.utc)
                end = now + _days(form.get("days", "30"))
                yield Call(
                    "add_limit_adjustment",
                    (user_id, feature, amount, "one_time", now, end, metadata),
                )
                done = f"{feature} limit raised by {amount:,}"
    except (UsageFlowError, ValueError) as exc:
        message = exc.message if isinstance(exc, UsageFlowError) else "amounts are whole numbers"
        return PageResponse(400, _document("Not done", f"<h1>Not done</h1><p>{_e(message)}</p>"))
    target = f"{request.base}/user?{urlencode({'id': user_id, 'done': done})}"
    return PageResponse(303, "", headers=[("location", target)])


def _days(text: str) -> timedelta:
    days = int(text)
    if not 1 <= days <= 3650:
        raise ValueError(days)
    return timedelta(days=days)


def _cookie(token: str, base: str) -> str:
    return f"{CSRF_COOKIE}={token}; Path={base or '/'}; HttpOnly; SameSite=Strict"


# -- shared -------------------------------------------------------------------------------------
def _e(value: str) -> str:
    return escape(value, quote=True)


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


#: Light and dark palettes; every text/background pair has a contrast ratio of at least 4.5
#: (tests/integrations/test_pages.py computes them).
PALETTE = {
    "light": {
        "bg": "#ffffff",
        "fg": "#1f2328",
        "muted": "#57606a",
        "accent": "#0a58ca",
        "used": "#0a58ca",
        "held": "#b35900",
        "track": "#d0d7de",
    },
    "dark": {
        "bg": "#0d1117",
        "fg": "#e6edf3",
        "muted": "#a8b3bd",
        "accent": "#79b8ff",
        "used": "#79b8ff",
        "held": "#f0b35a",
        "track": "#30363d",
    },
}


def _css() -> str:
    def vars_of(p: Mapping[str, str]) -> str:
        return ";".join(f"--{k}:{v}" for k, v in p.items())

    return (
        f":root{{{vars_of(PALETTE['light'])};color-scheme:light dark}}"
        f"@media (prefers-color-scheme:dark){{:root{{{vars_of(PALETTE['dark'])}}}}}"
        "body{font:16px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:46rem;padding:0 1rem;"
        "background:var(--bg);color:var(--fg)}a{color:var(--accent)}"
        ".bar{display:block;width:100%;height:1rem;border-radius:.5rem;background:var(--track)}"
        ".bar .used{fill:var(--used)}.bar .held{fill:var(--held)}"
        ".period,figcaption{color:var(--muted)}.chart{width:100%;height:auto}"
        ".chart rect{fill:var(--used)}"
        ".button{display:inline-block;padding:.4rem .9rem;border:2px solid var(--accent);"
        "border-radius:.4rem;text-decoration:none;font-weight:600}"
        "table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25rem .5rem;"
        "border-bottom:1px solid var(--track)}fieldset{margin:1rem 0}label{margin-right:.5rem}"
        "input,select,button{font:inherit;margin:.2rem .5rem .2rem 0}"
    )


def _document(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_css()}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )
