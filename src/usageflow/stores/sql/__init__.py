"""The SQL of the stores: PostgreSQL's schema and functions, SQLite's schema and statements, and
the translation shared by the stores that call the PostgreSQL functions.

``postgres.sql`` holds the schema and one SQL function per store operation. :func:`render`
substitutes the configured table names (quoted identifiers, validated by
:class:`~usageflow.stores.base.Tables`) and the derived function and index names.
``sqlite.sql`` holds SQLite's schema and the statements of the SQLite store, named and laid out
as their PostgreSQL twins; :func:`sqlite_statements` renders them with the same substitution.

Both :class:`~usageflow.stores.postgres.PostgresStore` (psycopg, one ``SELECT fn(...)``) and
:class:`~usageflow.stores.supabase.SupabaseStore` (one PostgREST ``rpc()``) make every store
operation ONE call of one of these functions. What differs is only the transport, so the
translation (arguments in, JSON out, refusals into :class:`UsageFlowError`) is written once
here, as plain functions with no I/O: :func:`encode` and :func:`decode`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from importlib import resources
from typing import Any

from usageflow.errors import UsageFlowError, invalid, reservation_error
from usageflow.models import FeatureLimit, LimitAdjustment, Plan, Profile, UsageEvent
from usageflow.ops import Charge, HourlyTotal, ResetInfo, StripeApplied, StripeSubscription
from usageflow.stores.base import HOLD_GRACE, Tables

__all__ = [
    "ADOPTION_REFUSED",
    "API_FUNCTIONS",
    "OPERATIONS",
    "SCHEMA_VERSION",
    "decode",
    "encode",
    "function_name",
    "render",
    "render_sqlite",
    "sqlite_statements",
]

#: The schema's version, one for every engine: bumped whenever postgres.sql or sqlite.sql
#: changes in a way that needs ``migrate()`` to run again.
SCHEMA_VERSION = 4

#: The SQLSTATE with which the migration refuses to adopt a table holding a row usageflow
#: cannot accept (its message names the row, its diagnostics the table).
ADOPTION_REFUSED = "UF001"

_TS = "timestamptz"

#: The functions the stores call: name suffix -> ordered (parameter, SQL type).
API_FUNCTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "charge": (
        ("p_user_id", "text"),
        ("p_feature_name", "text"),
        ("p_credits", "bigint"),
        ("p_event_type", "text"),
        ("p_limit", "bigint"),
        ("p_window_start", _TS),
        ("p_now", _TS),
        ("p_metadata", "jsonb"),
        ("p_idempotency_key", "text"),
    ),
    "reserve": (
        ("p_reservation_id", "text"),
        ("p_user_id", "text"),
        ("p_feature_name", "text"),
        ("p_credits", "bigint"),
        ("p_limit", "bigint"),
        ("p_window_start", _TS),
        ("p_now", _TS),
        ("p_expires_at", _TS),
        ("p_idempotency_key", "text"),
    ),
    "settle": (
        ("p_reservation_id", "text"),
        ("p_credits", "bigint"),
        ("p_now", _TS),
        ("p_metadata", "jsonb"),
    ),
    "usage": (
        ("p_user_id", "text"),
        ("p_feature_name", "text"),
        ("p_window_start", _TS),
        ("p_now", _TS),
    ),
    "reset": (
        ("p_user_id", "text"),
        ("p_feature_name", "text"),
        ("p_window_start", _TS),
        ("p_now", _TS),
        ("p_metadata", "jsonb"),
    ),
    "since_reset": (("p_user_id", "text"), ("p_feature_name", "text")),
    "hourly": (
        ("p_user_ids", "text[]"),
        ("p_feature_names", "text[]"),
        ("p_start", _TS),
        ("p_end", _TS),
    ),
    "events": (("p_user_id", "text"), ("p_feature_name", "text"), ("p_limit", "integer")),
    "ledger_check": (("p_user_id", "text"), ("p_feature_name", "text")),
    "top_users": (("p_feature_name", "text"), ("p_window_start", _TS), ("p_limit", "integer")),
    "recent_events": (("p_feature_name", "text"), ("p_limit", "integer")),
    "catalog": (),
    "upsert_plan": (
        ("p_name", "text"),
        ("p_stripe_price_id", "text"),
        ("p_price_amount", "numeric"),
        ("p_price_currency", "text"),
        ("p_is_free", "boolean"),
        ("p_payment_link_url", "text"),
    ),
    "set_limit": (
        ("p_plan_id", "bigint"),
        ("p_feature_name", "text"),
        ("p_limit_value", "bigint"),
        ("p_period", "text"),
    ),
    "update_price": (
        ("p_stripe_price_id", "text"),
        ("p_price_amount", "numeric"),
        ("p_price_currency", "text"),
    ),
    "get_profile": (("p_user_id", "text"),),
    "upsert_profile": (("p_user_id", "text"), ("p_fields", "jsonb")),
    "add_adjustment": (
        ("p_user_id", "text"),
        ("p_feature_name", "text"),
        ("p_amount", "integer"),
        ("p_type", "text"),
        ("p_start_date", _TS),
        ("p_end_date", _TS),
        ("p_metadata", "jsonb"),
    ),
    "adjustments": (("p_user_id", "text"), ("p_feature_name", "text"), ("p_ending_after", _TS)),
    "stripe_apply": (
        ("p_event_id", "text"),
        ("p_event_type", "text"),
        ("p_created", _TS),
        ("p_now", _TS),
        ("p_price", "jsonb"),
        ("p_link", "jsonb"),
        ("p_subscription", "jsonb"),
    ),
    "stripe_batch": (("p_meter", "text"), ("p_feature_name", "text"), ("p_limit", "integer")),
    "stripe_cursor": (("p_meter", "text"), ("p_event_id", "bigint")),
    "stripe_pending": (("p_limit", "integer"),),
    "version": (),
}

#: Internal helpers: suffix -> argument types ("@x@" names a table's row type).
_HELPERS: dict[str, tuple[str, ...]] = {
    "us": (_TS,),
    "event_json": ("@events@",),
    "used": ("@counters@", _TS),
    "lock": ("text", "text"),
    "held": ("@counters@", _TS),
    "prune_holds": ("text", "text", _TS),
    "append": ("@counters@", "bigint", "text", _TS, "jsonb", "text"),
    "overflows": ("bigint", "bigint"),
    "plan_json": ("@plans@",),
    "profile_json": ("@profiles@",),
    "adj_json": ("@adjustments@",),
    "stripe_refresh": ("text",),
}


def quote(identifier: str) -> str:
    """A quoted SQL identifier (names are validated plain identifiers; quotes are doubled)."""
    return '"' + identifier.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def function_name(tables: Tables, suffix: str) -> str:
    """The (unquoted) name of a function: derived from the events table, so that two setups
    with different table names can share one database."""
    return f"{tables.usage_events}_{suffix}"


def _table_names(tables: Tables) -> dict[str, str]:
    """The placeholders of the tables, shared by postgres.sql and sqlite.sql: name -> table."""
    return {
        "plans": tables.user_plans,
        "limits": tables.usage_feature_limits,
        "events": tables.usage_events,
        "adjustments": tables.user_limit_adjustments,
        "profiles": tables.profiles,
        "counters": tables.counters,
        "holds": tables.holds,
        "stripe_events": tables.stripe_events,
        "stripe_subs": tables.stripe_subscriptions,
        "stripe_cust": tables.stripe_customers,
        "stripe_export": tables.stripe_exports,
    }


def _names(tables: Tables) -> dict[str, str]:
    names = {
        **{key: quote(table) for key, table in _table_names(tables).items()},
        "ix_key": quote(f"{tables.usage_events}_key_idx"),
        "ix_user": quote(f"{tables.usage_events}_user_idx"),
        "ix_adj": quote(f"{tables.usage_events}_adj_idx"),
        "ix_hold": quote(f"{tables.usage_events}_hold_idx"),
        "ix_settled": quote(f"{tables.usage_events}_settled_idx"),
        "ix_idem": quote(f"{tables.usage_events}_idem_idx"),
        "ix_hold_idem": quote(f"{tables.usage_events}_hold_idem_idx"),
        "ix_subs": quote(f"{tables.usage_events}_subs_idx"),
        "ix_cust": quote(f"{tables.usage_events}_cust_idx"),
        "events_literal": literal(tables.usage_events),
        "holds_literal": literal(tables.holds),
        "version": str(SCHEMA_VERSION),
        "adoption_refused": literal(ADOPTION_REFUSED),
        "hold_grace": f"interval '{int(HOLD_GRACE.total_seconds())} seconds'",
    }
    for suffix in (*API_FUNCTIONS, *_HELPERS):
        names[f"fn_{suffix}"] = quote(function_name(tables, suffix))
    return names


def _substitute(text: str, names: Mapping[str, str]) -> str:
    parts = text.split("@")
    # Tokens sit between '@'s; the SQL itself contains no '@'.
    return "".join(names[p] if i % 2 else p for i, p in enumerate(parts))


def render(tables: Tables) -> str:
    """The full migration SQL for these table names: one transaction, idempotent."""
    names = _names(tables)
    api = [
        f"{names['fn_' + s]}({', '.join(t for _, t in params)})"
        for s, params in API_FUNCTIONS.items()
    ]
    helpers = [
        f"{names['fn_' + s]}({', '.join(_substitute(t, names) for t in types)})"
        for s, types in _HELPERS.items()
    ]
    table_names = [
        tables.user_plans,
        tables.usage_feature_limits,
        tables.usage_events,
        tables.user_limit_adjustments,
        tables.profiles,
        tables.counters,
        tables.holds,
        tables.schema,
        tables.stripe_events,
        tables.stripe_subscriptions,
        tables.stripe_customers,
        tables.stripe_exports,
    ]
    names = {
        **names,
        "table_literals": ", ".join(literal(t) for t in table_names),
        "function_signatures": ", ".join(literal(f) for f in [*api, *helpers]),
        "api_function_signatures": ", ".join(literal(f) for f in api),
    }
    template = resources.files(__name__).joinpath("postgres.sql").read_text(encoding="utf-8")
    return _substitute(template, names)


# -- SQLite's statements ----------------------------------------------------------------------
_NAME_LINE = re.compile(r"-- name: ([a-z][a-z0-9_]*)")

#: The indexes sqlite.sql names: placeholder ``idx_<table placeholder>_<suffix>``, index
#: ``idx_<table>_<suffix>``.
_SQLITE_INDEXES = (
    ("events", "idem"),
    ("events", "user_feature"),
    ("events", "timestamp"),
    ("events", "type"),
    ("adjustments", "user"),
    ("adjustments", "dates"),
    ("profiles", "email"),
    ("profiles", "customer"),
    ("holds", "active"),
    ("holds", "settled"),
    ("holds", "key"),
    ("holds", "idem"),
    ("stripe_subs", "customer"),
    ("stripe_cust", "user"),
)


@functools.cache
def _sqlite_templates() -> dict[str, str]:
    """sqlite.sql's blocks by name, in file order, parsed once: each block's text runs from its
    first to its last line that is not a comment, without a final ``;``."""
    text = resources.files(__name__).joinpath("sqlite.sql").read_text(encoding="utf-8")
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None  # the header, before the first name, is no block
    for line in text.splitlines():
        match = _NAME_LINE.fullmatch(line.rstrip())
        if match is not None:
            if match[1] in blocks:
                raise ValueError(f"sqlite.sql: the name {match[1]} is used twice")
            current = blocks[match[1]] = []
        elif current is not None:
            current.append(line.rstrip())
    templates = {}
    for name, lines in blocks.items():
        code = [i for i, line in enumerate(lines) if line and not line.lstrip().startswith("--")]
        if not code:
            raise ValueError(f"sqlite.sql: {name} has no SQL")
        body = "\n".join(lines[code[0] : code[-1] + 1])
        templates[name] = body[:-1] if body.endswith(";") else body
    return templates


def _sqlite_names(tables: Tables, overrides: Mapping[str, str]) -> dict[str, str]:
    table_names = {**_table_names(tables), "schema": tables.schema, **overrides}
    names = {key: quote(table) for key, table in table_names.items()}
    names["holds_v3"] = quote(f"{tables.holds}_v3")
    names["events_v4"] = quote(f"{tables.usage_events}_v4")
    for key, suffix in _SQLITE_INDEXES:
        names[f"idx_{key}_{suffix}"] = quote(f"idx_{table_names[key]}_{suffix}")
    return names


def render_sqlite(tables: Tables, **overrides: str) -> dict[str, str]:
    """sqlite.sql's statements for these table names, by name: each ``@x@`` replaced by the
    quoted name of a table or index or, when ``x`` names none, by the text of the block ``x``
    defined before (``overrides``: placeholder -> another table name, e.g. a table created
    under a temporary name)."""
    names = _sqlite_names(tables, overrides)
    statements: dict[str, str] = {}
    for name, template in _sqlite_templates().items():
        statements[name] = _substitute(template, {**statements, **names})
    return statements


@functools.lru_cache(maxsize=16)
def sqlite_statements(tables: Tables) -> Mapping[str, str]:
    """sqlite.sql's statements for these table names (:func:`render_sqlite`), rendered once
    per set of names: the store runs these very strings, which SQLite's statement cache (keyed
    by text) then finds without formatting anything per call."""
    return render_sqlite(tables)


# -- values in and out ---------------------------------------------------------------------------
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def moment(micros: int | None) -> datetime | None:
    """A moment from microseconds since the Unix epoch (as the functions return them)."""
    return None if micros is None else _EPOCH + timedelta(microseconds=micros)


def _event(row: Mapping[str, Any] | None, replayed: bool = False) -> UsageEvent | None:
    if row is None:
        return None
    return UsageEvent(
        id=row["id"],
        user_id=row["user_id"],
        feature_name=row["feature_name"],
        credits_used=row["credits_used"],
        event_type=row["event_type"],
        metadata=row["metadata"],
        timestamp=_EPOCH + timedelta(microseconds=row["ts"]),
        idempotency_key=row["idempotency_key"],
        replayed=replayed,
    )


def _plan(row: Mapping[str, Any]) -> Plan:
    amount = row["price_amount"]
    return Plan(
        id=row["id"],
        name=row["name"],
        stripe_price_id=row["stripe_price_id"],
        price_amount=None if amount is None else Decimal(amount),
        price_currency=row["price_currency"],
        is_free=row["is_free"],
        payment_link_url=row["payment_link_url"],
        limits={lim["feature_name"]: FeatureLimit(**lim) for lim in row["limits"]},
    )


def _profile(row: Mapping[str, Any] | None) -> Profile | None:
    if row is None:
        return None
    return Profile(
        id=row["id"],
        email=row["email"],
        plan=row["plan"],
        subscription_status=row["subscription_status"],
        stripe_customer_id=row["stripe_customer_id"],
        current_period_start=moment(row["current_period_start"]),
        current_period_end=moment(row["current_period_end"]),
    )


def _adjustment(row: Mapping[str, Any]) -> LimitAdjustment:
    return LimitAdjustment(
        id=row["id"],
        user_id=row["user_id"],
        feature_name=row["feature_name"],
        amount=row["amount"],
        type=row["type"],
        start_date=_EPOCH + timedelta(microseconds=row["start_date"]),
        end_date=_EPOCH + timedelta(microseconds=row["end_date"]),
        metadata=row["metadata"],
    )


def _charge(row: Mapping[str, Any]) -> Charge:
    return Charge(
        allowed=row["allowed"],
        used=int(row["used"]),
        held=int(row["held"]),
        event=_event(row.get("event")),
        replayed=bool(row.get("replayed", False)),
        reservation_id=row.get("reservation_id"),
        first_credits=row.get("first_credits"),
    )


def _settled(row: Mapping[str, Any]) -> UsageEvent | None:
    return _event(row.get("event"), replayed=bool(row.get("replayed", False)))


def _profile_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in fields.items()}


def _plain(value: Any) -> Any:
    """A dataclass (or None) as a JSON object: moments in ISO format, decimals as strings."""
    if value is None:
        return None
    return {
        k: v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, Decimal) else v
        for k, v in dataclasses.asdict(value).items()
    }


def _export_batch(row: list[Any]) -> tuple[int, list[tuple[UsageEvent, str | None]]]:
    cursor, rows = row
    return int(cursor), [(_event_required(e), customer) for e, customer in rows]


def _subscription(row: Mapping[str, Any]) -> StripeSubscription:
    return StripeSubscription(
        subscription_id=row["subscription_id"],
        customer_id=row["customer_id"],
        order_key=row["order_key"],
        started=moment(row["started"]),
        ended=bool(row["ended"]),
        plan=row["plan"],
        status=row["status"],
        current_period_start=moment(row["current_period_start"]),
        current_period_end=moment(row["current_period_end"]),
    )


def _event_required(row: Mapping[str, Any]) -> UsageEvent:
    event = _event(row)
    assert event is not None
    return event


Args = dict[str, Any]
Encoder = Callable[..., Args]
Decoder = Callable[[Any], Any]

#: Store method -> (function suffix, kwargs -> function arguments, JSON result -> value).
OPERATIONS: dict[str, tuple[str, Encoder, Decoder]] = {
    "charge": (
        "charge",
        lambda **k: {
            "p_user_id": k["user_id"],
            "p_feature_name": k["feature_name"],
            "p_credits": k["credits"],
            "p_event_type": k["event_type"],
            "p_limit": k["limit"],
            "p_window_start": k["window_start"],
            "p_now": k["now"],
            "p_metadata": k["metadata"],
            "p_idempotency_key": k["idempotency_key"],
        },
        _charge,
    ),
    "reserve": (
        "reserve",
        lambda **k: {
            "p_reservation_id": k["reservation_id"],
            "p_user_id": k["user_id"],
            "p_feature_name": k["feature_name"],
            "p_credits": k["credits"],
            "p_limit": k["limit"],
            "p_window_start": k["window_start"],
            "p_now": k["now"],
            "p_expires_at": k["expires_at"],
            "p_idempotency_key": k["idempotency_key"],
        },
        _charge,
    ),
    "settle": (
        "settle",
        lambda **k: {
            "p_reservation_id": k["reservation_id"],
            "p_credits": k["credits"],
            "p_now": k["now"],
            "p_metadata": k["metadata"],
        },
        _settled,
    ),
    "usage": (
        "usage",
        lambda **k: {
            "p_user_id": k["user_id"],
            "p_feature_name": k["feature_name"],
            "p_window_start": k["window_start"],
            "p_now": k["now"],
        },
        lambda r: (int(r[0]), int(r[1])),
    ),
    "reset": (
        "reset",
        lambda **k: {
            "p_user_id": k["user_id"],
            "p_feature_name": k["feature_name"],
            "p_window_start": k["window_start"],
            "p_now": k["now"],
            "p_metadata": k["metadata"],
        },
        _event,
    ),
    "usage_since_reset": (
        "since_reset",
        lambda **k: {"p_user_id": k["user_id"], "p_feature_name": k["feature_name"]},
        lambda r: ResetInfo(int(r[0]), moment(r[1]), int(r[2])),
    ),
    "hourly_totals": (
        "hourly",
        lambda **k: {
            "p_user_ids": list(k["user_ids"]),
            "p_feature_names": list(k["feature_names"]),
            "p_start": k["start"],
            "p_end": k["end"],
        },
        lambda rows: sorted(
            (HourlyTotal(u, f, _EPOCH + timedelta(microseconds=h), int(t)) for u, f, h, t in rows),
            key=lambda h: (h.user_id, h.feature_name, h.hour),
        ),
    ),
    "list_events": (
        "events",
        lambda **k: {
            "p_user_id": k["user_id"],
            "p_feature_name": k.get("feature_name"),
            "p_limit": k.get("limit", 100),
        },
        lambda rows: [_event(r) for r in rows],
    ),
    "ledger_check": (
        "ledger_check",
        lambda **k: {"p_user_id": k["user_id"], "p_feature_name": k["feature_name"]},
        lambda r: (int(r[0]), int(r[1])),
    ),
    "top_usage": (
        "top_users",
        lambda **k: {
            "p_feature_name": k["feature_name"],
            "p_window_start": k["window_start"],
            "p_limit": k["limit"],
        },
        lambda rows: [(str(u), int(n)) for u, n in rows],
    ),
    "list_recent_events": (
        "recent_events",
        lambda **k: {"p_feature_name": k["feature_name"], "p_limit": k["limit"]},
        lambda rows: [_event(r) for r in rows],
    ),
    "load_catalog": ("catalog", lambda **k: {}, lambda rows: [_plan(r) for r in rows]),
    "upsert_plan": (
        "upsert_plan",
        lambda **k: {
            "p_name": k["name"],
            "p_stripe_price_id": k["stripe_price_id"],
            "p_price_amount": k["price_amount"],
            "p_price_currency": k["price_currency"],
            "p_is_free": k["is_free"],
            "p_payment_link_url": k["payment_link_url"],
        },
        _plan,
    ),
    "set_feature_limit": (
        "set_limit",
        lambda **k: {
            "p_plan_id": k["plan_id"],
            "p_feature_name": k["feature_name"],
            "p_limit_value": k["limit_value"],
            "p_period": k["period"],
        },
        lambda r: FeatureLimit(**r),
    ),
    "update_price": (
        "update_price",
        lambda **k: {
            "p_stripe_price_id": k["stripe_price_id"],
            "p_price_amount": k["price_amount"],
            "p_price_currency": k["price_currency"],
        },
        int,
    ),
    "get_profile": ("get_profile", lambda **k: {"p_user_id": k["user_id"]}, _profile),
    "upsert_profile": (
        "upsert_profile",
        lambda **k: {"p_user_id": k["user_id"], "p_fields": _profile_fields(k["fields"])},
        _profile,
    ),
    "add_limit_adjustment": (
        "add_adjustment",
        lambda **k: {
            "p_user_id": k["user_id"],
            "p_feature_name": k["feature_name"],
            "p_amount": k["amount"],
            "p_type": k["type"],
            "p_start_date": k["start_date"],
            "p_end_date": k["end_date"],
            "p_metadata": k["metadata"],
        },
        _adjustment,
    ),
    "apply_stripe_event": (
        "stripe_apply",
        lambda **k: {
            "p_event_id": k["event_id"],
            "p_event_type": k["event_type"],
            "p_created": k["created"],
            "p_now": k["now"],
            "p_price": _plain(k.get("price")),
            "p_link": _plain(k.get("link")),
            "p_subscription": _plain(k.get("subscription")),
        },
        lambda r: StripeApplied(r["action"], r["user_id"]),
    ),
    "stripe_export_batch": (
        "stripe_batch",
        lambda **k: {
            "p_meter": k["meter"],
            "p_feature_name": k["feature_name"],
            "p_limit": k["limit"],
        },
        _export_batch,
    ),
    "advance_stripe_cursor": (
        "stripe_cursor",
        lambda **k: {"p_meter": k["meter"], "p_event_id": k["event_id"]},
        int,
    ),
    "pending_stripe_subscriptions": (
        "stripe_pending",
        lambda **k: {"p_limit": k["limit"]},
        lambda rows: [_subscription(r) for r in rows],
    ),
    "get_limit_adjustments": (
        "adjustments",
        lambda **k: {
            "p_user_id": k["user_id"],
            "p_feature_name": k["feature_name"],
            "p_ending_after": k["ending_after"],
        },
        lambda rows: [_adjustment(r) for r in rows],
    ),
}


def encode(method: str, kwargs: Mapping[str, Any]) -> tuple[str, Args]:
    """``(function suffix, arguments)`` of a store operation."""
    suffix, enc, _dec = OPERATIONS[method]
    args = enc(**kwargs)
    metadata = args.get("p_metadata")
    if metadata is not None:
        _check_jsonb(metadata)
    return suffix, args


def _check_jsonb(value: Any) -> None:
    """PostgreSQL's ``jsonb`` cannot hold a NUL character or an unpaired surrogate: refuse
    such metadata as invalid input (nothing is sent) rather than as a store failure."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                raise invalid(
                    "metadata cannot be stored in PostgreSQL: strings must not contain NUL",
                    field="metadata",
                )
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise invalid(
                    "metadata cannot be stored in PostgreSQL: strings must not contain "
                    "unpaired surrogates",
                    field="metadata",
                ) from None


def decode(method: str, result: Any) -> Any:
    """The store operation's value from the function's JSON result; a refusal by rule
    (``{"error": ...}``) is raised as the :class:`UsageFlowError` the memory store raises."""
    if isinstance(result, dict) and "error" in result:
        raise refusal(result)
    return OPERATIONS[method][2](result)


def refusal(result: Mapping[str, Any]) -> UsageFlowError:
    details = dict(result.get("details") or {})
    message = str(result.get("message", "refused"))
    if result["error"] == "reservation":
        return reservation_error(message, **details)
    return invalid(message, **details)
