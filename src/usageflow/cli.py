"""The ``usageflow`` command (also ``python -m usageflow``); see docs/cli.md.

    usageflow --version
    usageflow migrate [--print-sql [--dialect sqlite|postgresql]]
    usageflow plans list | plans load FILE.toml | plans sync-stripe
    usageflow packs list | packs load FILE.toml
    usageflow grants USER_ID [--feature FEATURE]
    usageflow usage USER_ID FEATURE
    usageflow user USER_ID
    usageflow top FEATURE [--limit N] [--period PERIOD | --since DATE]
    usageflow events [--user USER_ID] [--feature FEATURE] [--limit N]
    usageflow pending [--limit N]
    usageflow alerts list [--user USER_ID] [--undelivered] [--limit N]
    usageflow alerts deliver --webhook URL [--secret-env NAME] [--limit N]

Every command takes ``--store URL`` (default ``$USAGEFLOW_STORE``, then
``sqlite:///usageflow.db``), the flow's table-name options (``--usage-events-table NAME``,
...), and ``--json`` or ``--table``: one JSON document, or an aligned table. The default is a
table when standard output is a terminal and JSON otherwise (pipes, files, scripts).

``migrate``, ``plans load``, ``plans sync-stripe``, ``packs load`` and ``alerts deliver``
write (and create an SQLite file); every other command only reads and creates nothing.
Errors go to standard error: exit status 1 for a ``UsageFlowError``, 2 for a bad command
line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sqlite3
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from usageflow import __version__
from usageflow.errors import UsageFlowError, config_error
from usageflow.flow import DEFAULT_STORE, UsageFlow
from usageflow.models import (
    Alert,
    CreditPack,
    Grant,
    PendingSubscription,
    Plan,
    Profile,
    TopUsers,
    Usage,
    UsageEvent,
    UserOverview,
)
from usageflow.periods import Period

__all__ = ["main"]

_TABLE_OPTIONS = (
    "user_plans_table",
    "usage_events_table",
    "usage_feature_limits_table",
    "user_limit_adjustments_table",
    "profiles_table",
)


def _moment(text: str) -> datetime:
    """An ISO 8601 date or date-time (``2024-05-01``, ``2024-05-01T12:00:00Z``); UTC unless
    it names another offset."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 date or date-time: {text!r} (e.g. 2024-05-01)"
        ) from None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="usageflow",
        description="Usage tracking and quota enforcement: schema, plans and usage from the "
        "command line.",
        epilog="Output: a table on a terminal, JSON otherwise (--json / --table choose).",
    )
    parser.add_argument("--version", action="version", version=f"usageflow {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", help="store URL (default: $USAGEFLOW_STORE or sqlite)")
    for option in _TABLE_OPTIONS:
        common.add_argument(f"--{option.replace('_', '-')}", metavar="NAME", help="table name")
    output = common.add_mutually_exclusive_group()
    output.add_argument(
        "--json",
        dest="output",
        action="store_const",
        const="json",
        help="print one JSON document (the default when stdout is not a terminal)",
    )
    output.add_argument(
        "--table",
        dest="output",
        action="store_const",
        const="table",
        help="print an aligned table (the default on a terminal)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    migrate = sub.add_parser("migrate", parents=[common], help="create or upgrade the schema")
    migrate.add_argument(
        "--print-sql", action="store_true", help="print the SQL instead of applying it"
    )
    migrate.add_argument(
        "--dialect",
        choices=["sqlite", "postgresql"],
        help="with --print-sql: the SQL dialect (default: the store's)",
    )

    plans = sub.add_parser("plans", help="list or load plans").add_subparsers(
        dest="plans_command", required=True, metavar="COMMAND"
    )
    plans.add_parser("list", parents=[common], help="every plan and its limits")
    load = plans.add_parser("load", parents=[common], help="create or update plans from TOML")
    load.add_argument("file", type=Path)
    plans.add_parser(
        "sync-stripe",
        parents=[common],
        help="create or update plans from Stripe prices, Payment Links and product metadata "
        "(API key from $STRIPE_API_KEY)",
    )

    packs = sub.add_parser("packs", help="list or load credit packs").add_subparsers(
        dest="packs_command", required=True, metavar="COMMAND"
    )
    packs.add_parser("list", parents=[common], help="every credit pack")
    load_packs = packs.add_parser(
        "load", parents=[common], help="create or update the [[packs]] of a plans file"
    )
    load_packs.add_argument("file", type=Path)

    grants = sub.add_parser("grants", parents=[common], help="a user's credit grants")
    grants.add_argument("user_id")
    grants.add_argument("--feature", metavar="FEATURE", help="only this feature's")

    usage = sub.add_parser("usage", parents=[common], help="a user's usage of one feature")
    usage.add_argument("user_id")
    usage.add_argument("feature_name")

    user = sub.add_parser(
        "user", parents=[common], help="a user's plan, subscription and usage of every feature"
    )
    user.add_argument("user_id")

    top = sub.add_parser("top", parents=[common], help="the users with the most usage")
    top.add_argument("feature_name")
    top.add_argument("--limit", type=_positive, default=10, help="how many (default 10)")
    window = top.add_mutually_exclusive_group()
    window.add_argument(
        "--period",
        choices=[p.value for p in Period if p is not Period.BILLING_CYCLE],
        help="the window (default: the feature's period in the plans)",
    )
    window.add_argument(
        "--since", type=_moment, metavar="DATE", help="count from this date (ISO 8601, UTC)"
    )

    events = sub.add_parser("events", parents=[common], help="recent ledger events")
    events.add_argument("--user", metavar="USER_ID", help="only this user's")
    events.add_argument("--feature", metavar="FEATURE", help="only this feature's")
    events.add_argument("--limit", type=_positive, default=20, help="how many (default 20)")

    pending = sub.add_parser(
        "pending",
        parents=[common],
        help="Stripe subscriptions waiting for their customer to be linked to a user",
    )
    pending.add_argument("--limit", type=_positive, default=100, help="how many (default 100)")

    alerts = sub.add_parser("alerts", help="usage alerts: list or deliver").add_subparsers(
        dest="alerts_command", required=True, metavar="COMMAND"
    )
    listed = alerts.add_parser("list", parents=[common], help="the alerts recorded, newest first")
    listed.add_argument("--user", metavar="USER_ID", help="only this user's")
    listed.add_argument("--undelivered", action="store_true", help="only undelivered ones")
    listed.add_argument("--limit", type=_positive, default=100, help="how many (default 100)")
    deliver = alerts.add_parser(
        "deliver",
        parents=[common],
        help="POST undelivered alerts to a webhook, signed (for cron)",
    )
    deliver.add_argument("--webhook", required=True, metavar="URL", help="where to POST them")
    deliver.add_argument(
        "--secret-env",
        default="USAGEFLOW_ALERT_SECRET",
        metavar="NAME",
        help="the environment variable holding the signing secret (default USAGEFLOW_ALERT_SECRET)",
    )
    deliver.add_argument(
        "--limit", type=_positive, default=100, help="how many at most (default 100)"
    )
    return parser


# -- rendering ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Output:
    """What a command prints: ``document`` as JSON, or ``text`` (its table)."""

    document: dict[str, Any]
    text: str


def _iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z`` (``None`` stays ``None``)."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return _iso(value) or "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Rows under headers in aligned columns (numbers to the right); ``(none)`` when empty."""
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [
        any(_is_number(r[i]) for r in rows) and all(r[i] is None or _is_number(r[i]) for r in rows)
        for i in range(len(headers))
    ]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [line(headers), line(["-" * w for w in widths])]
    lines.extend(line(r) for r in cells)
    if not rows:
        lines.append("(none)")
    return "\n".join(lines)


def _pairs(items: Sequence[tuple[str, object]]) -> str:
    """``name: value`` lines with the values aligned."""
    width = max(len(name) for name, _ in items) + 1
    return "\n".join(f"{(name + ':').ljust(width)}  {_cell(value)}" for name, value in items)


def _amount(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _plan_document(plan: Plan) -> dict[str, Any]:
    return {
        "id": plan.id,
        "name": plan.name,
        "stripe_price_id": plan.stripe_price_id,
        "price_amount": _amount(plan.price_amount),
        "price_currency": plan.price_currency,
        "is_free": plan.is_free,
        "payment_link_url": plan.payment_link_url,
        "limits": {
            feature: {
                "limit": None if row.limit_value == -1 else row.limit_value,
                "period": row.period,
            }
            for feature, row in sorted(plan.limits.items())
        },
    }


def _packs_output(packs: Sequence[CreditPack]) -> _Output:
    rows = [
        (
            p.id,
            p.name,
            ", ".join(f"{feature}={credits}" for feature, credits in sorted(p.credits.items())),
            p.stripe_payment_link_id or p.stripe_price_id,
            p.expires_in_days,
        )
        for p in packs
    ]
    text = _table(["ID", "NAME", "CREDITS", "STRIPE LINK/PRICE", "EXPIRES (DAYS)"], rows)
    return _Output({"packs": [p.model_dump() for p in packs]}, text)


def _grants_output(grants: Sequence[Grant]) -> _Output:
    rows = [
        (g.id, g.feature_name, g.credits, g.remaining, g.expires_at, g.source, g.reason)
        for g in grants
    ]
    text = _table(["ID", "FEATURE", "CREDITS", "REMAINING", "EXPIRES", "SOURCE", "REASON"], rows)
    return _Output({"grants": [g.model_dump(mode="json") for g in grants]}, text)


def _plans_output(plans: Sequence[Plan], **extra: Any) -> _Output:
    rows = [
        (
            p.id,
            p.name,
            p.stripe_price_id,
            None if p.price_amount is None else f"{p.price_amount} {p.price_currency or ''}",
            p.is_free,
            ", ".join(
                f"{feature}={'unlimited' if row.limit_value == -1 else row.limit_value}"
                f"/{row.period}"
                for feature, row in sorted(p.limits.items())
            ),
        )
        for p in plans
    ]
    text = _table(["ID", "NAME", "STRIPE PRICE", "PRICE", "FREE", "LIMITS"], rows)
    return _Output({"plans": [_plan_document(p) for p in plans], **extra}, text)


def _profile_document(profile: Profile | None) -> dict[str, Any] | None:
    if profile is None:
        return None
    return {
        "email": profile.email,
        "plan": profile.plan,
        "subscription_status": profile.subscription_status,
        "stripe_customer_id": profile.stripe_customer_id,
        "current_period_start": _iso(profile.current_period_start),
        "current_period_end": _iso(profile.current_period_end),
    }


def _usage_output(user_id: str, feature_name: str, usage: Usage) -> _Output:
    document = {
        "user_id": user_id,
        "feature_name": feature_name,
        "current": usage.current,
        "limit": usage.limit,
        "remaining": usage.remaining,
        "is_unlimited": usage.is_unlimited,
        "credit_balance": usage.credit_balance,
    }
    shown = {**document, "limit": "unlimited" if usage.is_unlimited else usage.limit}
    return _Output(document, _pairs(list(shown.items())))


def _user_output(overview: UserOverview) -> _Output:
    features = [
        {
            "feature_name": f.feature_name,
            "period": f.period,
            "current": f.current,
            "held": f.held,
            "limit": f.limit,
            "remaining": f.remaining,
            "is_unlimited": f.is_unlimited,
            "window_start": _iso(f.window_start),
            "resets_at": _iso(f.resets_at),
        }
        for f in overview.features
    ]
    document = {
        "user_id": overview.user_id,
        "plan": None if overview.plan is None else _plan_document(overview.plan),
        "profile": _profile_document(overview.profile),
        "features": features,
    }
    plan, profile = overview.plan, overview.profile or Profile(id=overview.user_id)
    summary = _pairs(
        [
            ("user", overview.user_id),
            ("plan", None if plan is None else f"{plan.name} (id {plan.id})"),
            ("profile plan", profile.plan),
            ("subscription", profile.subscription_status),
            ("email", profile.email),
            ("stripe customer", profile.stripe_customer_id),
            ("current period", _period_text(profile)),
        ]
    )
    rows = [
        (
            f.feature_name,
            f.period,
            f.current,
            f.held,
            "unlimited" if f.is_unlimited else f.limit,
            f.remaining,
            f.resets_at,
        )
        for f in overview.features
    ]
    features_table = _table(
        ["FEATURE", "PERIOD", "USED", "HELD", "LIMIT", "REMAINING", "RESETS AT"], rows
    )
    return _Output(document, f"{summary}\n\n{features_table}")


def _period_text(profile: Profile) -> str | None:
    if profile.current_period_start is None and profile.current_period_end is None:
        return None
    return f"{_cell(profile.current_period_start)} .. {_cell(profile.current_period_end)}"


def _top_output(top: TopUsers) -> _Output:
    document = {
        "feature_name": top.feature_name,
        "period": top.period,
        "window_start": _iso(top.window_start),
        "users": [{"user_id": u.user_id, "used": u.used} for u in top.users],
    }
    window = top.period or "since"
    start = "the beginning" if top.window_start is None else _iso(top.window_start)
    heading = f"{top.feature_name}: {window}, counted from {start}"
    rows = [(rank, u.user_id, u.used) for rank, u in enumerate(top.users, 1)]
    return _Output(document, f"{heading}\n\n{_table(['#', 'USER', 'USED'], rows)}")


def _event_document(event: UsageEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "timestamp": _iso(event.timestamp),
        "user_id": event.user_id,
        "feature_name": event.feature_name,
        "event_type": event.event_type,
        "credits_used": event.credits_used,
        "idempotency_key": event.idempotency_key,
        "metadata": event.metadata,
    }


def _events_output(events: Sequence[UsageEvent]) -> _Output:
    rows = [
        (
            e.id,
            e.timestamp,
            e.user_id,
            e.feature_name,
            e.event_type,
            e.credits_used,
            e.idempotency_key,
            e.metadata,
        )
        for e in events
    ]
    headers = ["ID", "TIME", "USER", "FEATURE", "TYPE", "CREDITS", "KEY", "METADATA"]
    return _Output({"events": [_event_document(e) for e in events]}, _table(headers, rows))


def _alerts_output(alerts: Sequence[Alert]) -> _Output:
    rows = [
        (
            a.id,
            a.created_at,
            a.user_id,
            a.feature_name,
            a.threshold,
            a.usage,
            a.limit,
            a.delivered_at,
            a.attempts,
        )
        for a in alerts
    ]
    headers = ["ID", "TIME", "USER", "FEATURE", "%", "USAGE", "LIMIT", "DELIVERED", "ATTEMPTS"]
    documents = [a.model_dump(mode="json") for a in alerts]
    return _Output({"alerts": documents}, _table(headers, rows))


def _deliver_alerts(args: argparse.Namespace, flow: UsageFlow) -> _Output:
    from usageflow.alerts import webhook_sender

    secret = os.environ.get(args.secret_env)
    if not secret:
        raise config_error(
            f"alerts deliver signs with the secret in ${args.secret_env}, which is not set"
        )
    delivered = flow.deliver_alerts(webhook_sender(args.webhook, secret), limit=args.limit)
    left = len(flow.list_alerts(undelivered=True, limit=10_000))
    return _Output(
        {"delivered": delivered, "undelivered": left},
        f"{delivered} delivered, {left} undelivered",
    )


def _pending_output(pending: Sequence[PendingSubscription]) -> _Output:
    documents = [
        {
            "subscription_id": p.subscription_id,
            "customer_id": p.customer_id,
            "plan": p.plan,
            "status": p.status,
            "started": _iso(p.started),
            "current_period_start": _iso(p.current_period_start),
            "current_period_end": _iso(p.current_period_end),
        }
        for p in pending
    ]
    rows = [
        (p.subscription_id, p.customer_id, p.plan, p.status, p.started, p.current_period_end)
        for p in pending
    ]
    headers = ["SUBSCRIPTION", "CUSTOMER", "PRICE", "STATUS", "STARTED", "PERIOD END"]
    return _Output({"subscriptions": documents}, _table(headers, rows))


# -- stores ---------------------------------------------------------------------------------
def _tables(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in _TABLE_OPTIONS if getattr(args, name, None)}


def _store_url(args: argparse.Namespace) -> str:
    return str(args.store or os.environ.get("USAGEFLOW_STORE") or DEFAULT_STORE)


def _migration_sql(args: argparse.Namespace) -> str:
    """The migration for ``--dialect`` (or the store's), without connecting to anything."""
    if args.dialect is None:
        flow = UsageFlow(args.store or None, **_tables(args))
        migration_sql = getattr(flow.store, "migration_sql", None)
        if callable(migration_sql):
            return str(migration_sql())
        tables = flow.tables
    else:
        tables = UsageFlow("memory://", **_tables(args)).tables
        if args.dialect == "postgresql":
            from usageflow.stores.sql import render

            return render(tables)
    from usageflow.stores.sqlite import schema_sql

    return schema_sql(tables)


def _reading_flow(args: argparse.Namespace) -> UsageFlow:
    """A flow for a command that only reads: it never creates or migrates a database.

    An SQLite store otherwise creates its file and schema on first use. Here the file must
    exist and hold a current schema, which is checked through a read-only connection
    (``mode=ro``: SQLite then cannot create or change the file), and the store is told not
    to migrate. PostgreSQL and Supabase stores never migrate on their own; a missing schema
    is their error saying to run ``usageflow migrate``.
    """
    flow = UsageFlow(args.store or None, **_tables(args))
    from usageflow.stores.sqlite import MemoryStore, SQLiteStore

    if isinstance(flow.store, SQLiteStore) and not isinstance(flow.store, MemoryStore):
        flow.store.auto_migrate = False
        try:
            _check_sqlite(flow.store, _store_url(args))
        except BaseException:
            flow.close()
            raise
    return flow


def _check_sqlite(store: Any, url: str) -> None:
    from usageflow.stores.sqlite import SCHEMA_VERSION

    path = Path(store.path)
    fix = f"usageflow migrate --store {shlex.quote(url)}"
    if not path.is_file():
        raise config_error(
            f"no database at {path}: this command only reads and creates nothing; "
            f"create the database with `{fix}`",
            path=str(path),
        )
    tables = store.tables
    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        ) as conn:
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                (tables.schema,),
            ).fetchone()
            row = None
            if found is not None:
                row = conn.execute(
                    f'SELECT version FROM "{tables.schema}" WHERE component = ?',
                    (tables.usage_events,),
                ).fetchone()
    except sqlite3.Error as exc:
        raise config_error(
            f"cannot read the SQLite database at {path}: {exc}",
            path=str(path),
            original_error=str(exc),
        ) from None
    if row is None:
        raise config_error(
            f"the database at {path} has no usageflow schema (for these table names): run `{fix}`",
            path=str(path),
        )
    version = int(row[0])
    if version < SCHEMA_VERSION:
        raise config_error(
            f"the usageflow schema at {path} is version {version}, older than this "
            f"usageflow's ({SCHEMA_VERSION}): run `{fix}` to upgrade it",
            path=str(path),
        )
    if version > SCHEMA_VERSION:
        raise config_error(
            f"the usageflow schema at {path} is version {version}, newer than this "
            f"usageflow's ({SCHEMA_VERSION}); upgrade usageflow",
            path=str(path),
        )


# -- commands -------------------------------------------------------------------------------
def _write_command(args: argparse.Namespace, flow: UsageFlow) -> _Output:
    if args.command == "migrate":
        version = flow.migrate()
        return _Output({"schema_version": version}, f"schema version {version}")
    if args.command == "alerts":
        return _deliver_alerts(args, flow)
    flow.migrate()
    if args.command == "packs":
        from usageflow.plans_file import load_packs

        return _packs_output(load_packs(flow, args.file))
    if args.plans_command == "load":
        from usageflow.plans_file import load_plans

        return _plans_output(load_plans(flow, args.file))
    result = flow.sync_plans_from_stripe()
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return _plans_output(result.plans, warnings=list(result.warnings))


_READERS: dict[str, Callable[[argparse.Namespace, UsageFlow], _Output]] = {
    "plans list": lambda a, f: _plans_output(f.get_plans()),
    "packs list": lambda a, f: _packs_output(f.list_credit_packs()),
    "grants": lambda a, f: _grants_output(f.list_grants(a.user_id, a.feature)),
    "usage": lambda a, f: _usage_output(
        a.user_id, a.feature_name, f.fetch_usage(a.user_id, a.feature_name)
    ),
    "user": lambda a, f: _user_output(f.get_user_overview(a.user_id)),
    "top": lambda a, f: _top_output(
        f.top_users(a.feature_name, a.limit, period=a.period, since=a.since)
    ),
    "events": lambda a, f: _events_output(
        f.list_events(a.user, a.feature, a.limit)
        if a.user is not None
        else f.list_recent_events(a.feature, a.limit)
    ),
    "pending": lambda a, f: _pending_output(f.list_pending_stripe_subscriptions(a.limit)),
    "alerts list": lambda a, f: _alerts_output(
        f.list_alerts(a.user, undelivered=a.undelivered, limit=a.limit)
    ),
}


def _run(args: argparse.Namespace) -> _Output | str:
    if args.command == "migrate" and args.print_sql:
        return _migration_sql(args)
    name = args.command
    if args.command in ("plans", "alerts", "packs"):
        name = f"{args.command} {getattr(args, args.command + '_command')}"
    reader = _READERS.get(name)
    if reader is None:
        with UsageFlow(args.store or None, **_tables(args)) as flow:
            return _write_command(args, flow)
    with _reading_flow(args) as flow:
        return reader(args, flow)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the process exit status (0 ok, 1 a ``UsageFlowError`` or an
    unreadable file, 2 a bad command line: argparse exits with it)."""
    args = _parser().parse_args(argv)
    try:
        result = _run(args)
    except UsageFlowError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if isinstance(result, str):  # the SQL of migrate --print-sql
        print(result)
        return 0
    output = args.output or ("table" if sys.stdout.isatty() else "json")
    if output == "json":
        print(json.dumps(result.document, indent=2))
    else:
        print(result.text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
