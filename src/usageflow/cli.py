"""The ``usageflow`` command.

    usageflow migrate [--store URL] [--print-sql [--dialect sqlite|postgresql]]
    usageflow plans list [--store URL]
    usageflow plans load FILE.toml [--store URL]
    usageflow plans sync-stripe [--store URL]      (Stripe API key from $STRIPE_API_KEY)
    usageflow usage USER_ID FEATURE [--store URL]

``--store`` defaults to ``$USAGEFLOW_STORE``, then ``sqlite:///usageflow.db``; custom table
names are given with ``--user-plans-table NAME`` and its siblings, as in the flow's options.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from usageflow.errors import UsageFlowError
from usageflow.flow import UsageFlow

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="usageflow", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", help="store URL (default: $USAGEFLOW_STORE or sqlite)")
    for option in _TABLE_OPTIONS:
        common.add_argument(f"--{option.replace('_', '-')}", metavar="NAME", help="table name")
    sub = parser.add_subparsers(dest="command", required=True)

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
        dest="plans_command", required=True
    )
    plans.add_parser("list", parents=[common], help="print every plan and its limits")
    load = plans.add_parser("load", parents=[common], help="create or update plans from TOML")
    load.add_argument("file", type=Path)
    plans.add_parser(
        "sync-stripe",
        parents=[common],
        help="create or update plans from Stripe prices, Payment Links and product metadata "
        "(API key from $STRIPE_API_KEY)",
    )

    usage = sub.add_parser("usage", parents=[common], help="show a user's usage of a feature")
    usage.add_argument("user_id")
    usage.add_argument("feature_name")
    return parser


_TABLE_OPTIONS = (
    "user_plans_table",
    "usage_events_table",
    "usage_feature_limits_table",
    "user_limit_adjustments_table",
    "profiles_table",
)


def _tables(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in _TABLE_OPTIONS if getattr(args, name, None)}


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the process exit code (0 ok, 1 UsageFlowError, 2 usage)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "migrate" and args.print_sql:
            print(_migration_sql(args))
            return 0
        with UsageFlow(args.store or None, **_tables(args)) as flow:
            if args.command == "migrate":
                print(f"schema version {flow.migrate()}")
            elif args.command == "usage":
                usage = flow.fetch_usage(args.user_id, args.feature_name)
                print(json.dumps(usage.model_dump(), indent=2))
            elif args.plans_command == "sync-stripe":
                flow.migrate()
                result = flow.sync_plans_from_stripe()
                for warning in result.warnings:
                    print(f"warning: {warning}", file=sys.stderr)
                for plan in result.plans:
                    print(
                        f"{plan.id}\t{plan.name}\t{plan.stripe_price_id}\t{len(plan.limits)} limits"
                    )
            elif args.plans_command == "load":
                flow.migrate()
                from usageflow.plans_file import load_plans

                for plan in load_plans(flow, args.file):
                    print(f"{plan.id}\t{plan.name}\t{len(plan.limits)} limits")
            else:
                for plan in flow.get_plans():
                    limits = {f: (lim.limit_value, lim.period) for f, lim in plan.limits.items()}
                    print(f"{plan.id}\t{plan.name}\t{plan.stripe_price_id or '-'}\t{limits}")
    except UsageFlowError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
