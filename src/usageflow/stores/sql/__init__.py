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
from usageflow.models import (
    Alert,
    CreditPack,
    FeatureLimit,
    Grant,
    LimitAdjustment,
    Membership,
    Plan,
    Profile,
    StripeEventRecord,
    UsageEvent,
)
from usageflow.ops import (
    Charge,
    HourlyTotal,
    ResetInfo,
    StripeApplied,
    StripeSubscription,
    UsageRead,
)
from usageflow.stores.base import HOLD_GRACE, Tables

__all__ = [
    "ADOPTION_REFUSED",
    "OPERATIONS",
    "SCHEMA_VERSION",
    "decode",
    "encode",
    "api_functions",
    "function_name",
    "render",
    "render_sqlite",
    "sqlite_statements",
]

#: The schema's version, one for every engine: bumped whenever postgres.sql or sqlite.sql
#: changes in a way that needs ``migrate()`` to run again.
SCHEMA_VERSION = 6

#: The SQLSTATE with which the migration refuses to adopt a table holding a row usageflow
#: cannot accept (its message names the row, its diagnostics the table).
ADOPTION_REFUSED = "UF001"

_TS = "timestamptz"

Signature = tuple[tuple[str, str], ...]
_FUNCTION = re.compile(
    r"CREATE OR REPLACE FUNCTION @fn_(\w+)@\((.*?)\)\s*RETURNS.*?(?=\$fn\$|\$\$)", re.S
)


@functools.cache
def _signatures() -> tuple[dict[str, Signature], dict[str, Signature]]:
    """The functions postgres.sql defines, read from it once: ``(api, helpers)``, each
    name suffix -> its ordered ``(parameter, SQL type)``. The API functions are the
    ``SECURITY DEFINER`` ones, which the stores call; the helpers are internal."""
    api: dict[str, Signature] = {}
    helpers: dict[str, Signature] = {}
    for match in _FUNCTION.finditer(_template("postgres.sql")):
        suffix, params, header = match[1], match[2], match[0]
        signature = tuple(
            (name, sql_type.strip().lower())
            for name, _, sql_type in (p.strip().partition(" ") for p in params.split(","))
            if name
        )
        (api if "SECURITY DEFINER" in header else helpers)[suffix] = signature
    return api, helpers


def api_functions() -> dict[str, Signature]:
    """The functions the stores call: name suffix -> ordered ``(parameter, SQL type)``."""
    return _signatures()[0]


@functools.cache
def _template(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


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
        "alerts": tables.alerts,
        "alert_rules": tables.alert_rules,
        "grants": tables.grants,
        "credit_packs": tables.credit_packs,
        "members": tables.members,
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
        "ix_counters_feature": quote(f"{tables.usage_events}_counters_feature_idx"),
        "ix_hold_pool": quote(f"{tables.usage_events}_hold_pool_idx"),
        "ix_members_user": quote(f"{tables.usage_events}_members_user_idx"),
        "ix_alerts_key": quote(f"{tables.usage_events}_alerts_key_idx"),
        "ix_alerts_pending": quote(f"{tables.usage_events}_alerts_pending_idx"),
        "ix_grants_live": quote(f"{tables.usage_events}_grants_live_idx"),
        "ix_grants_user": quote(f"{tables.usage_events}_grants_user_idx"),
        "ix_grants_idem": quote(f"{tables.usage_events}_grants_idem_idx"),
        "ix_grants_payment": quote(f"{tables.usage_events}_grants_payment_idx"),
        "events_literal": literal(tables.usage_events),
        "holds_literal": literal(tables.holds),
        "version": str(SCHEMA_VERSION),
        "adoption_refused": literal(ADOPTION_REFUSED),
        "hold_grace": f"interval '{int(HOLD_GRACE.total_seconds())} seconds'",
    }
    api, helpers = _signatures()
    for suffix in (*api, *helpers):
        names[f"fn_{suffix}"] = quote(function_name(tables, suffix))
    return names


def _substitute(text: str, names: Mapping[str, str]) -> str:
    parts = text.split("@")
    # Tokens sit between '@'s; the SQL itself contains no '@'.
    return "".join(names[p] if i % 2 else p for i, p in enumerate(parts))


def render(tables: Tables) -> str:
    """The full migration SQL for these table names: one transaction, idempotent."""
    names = _names(tables)
    api_signatures, helper_signatures = _signatures()
    api = [
        f"{names['fn_' + s]}({', '.join(t for _, t in params)})"
        for s, params in api_signatures.items()
    ]
    helpers = [
        f"{names['fn_' + s]}({', '.join(_substitute(t, names) for _, t in params)})"
        for s, params in helper_signatures.items()
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
        tables.alerts,
        tables.alert_rules,
        tables.grants,
        tables.credit_packs,
        tables.members,
    ]
    names = {
        **names,
        "table_literals": ", ".join(literal(t) for t in table_names),
        "function_signatures": ", ".join(literal(f) for f in [*api, *helpers]),
        "api_function_signatures": ", ".join(literal(f) for f in api),
    }
    return _substitute(_template("postgres.sql"), names)


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
    ("counters", "feature"),
    ("alerts", "key"),
    ("alerts", "pending"),
    ("grants", "live"),
    ("grants", "user"),
    ("grants", "idem"),
    ("grants", "payment"),
    ("holds", "pool"),
    ("members", "user"),
)


@functools.cache
def _sqlite_templates() -> dict[str, str]:
    """sqlite.sql's blocks by name, in file order, parsed once: each block's text runs from its
    first to its last line that is not a comment, without a final ``;``."""
    text = _template("sqlite.sql")
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
    """A ledger row as the functions return it (``event_json``): every field present and of
    its type, so the model is built without validation (one per decision)."""
    if row is None:
        return None
    return UsageEvent._trusted(
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
        seats=row.get("seats"),
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
        alerts=tuple(row.get("alerts") or ()),
        granted=int(row.get("granted") or 0),
        balance=int(row.get("balance") or 0),
        member=_four(row["member"]) if row.get("member") is not None else None,
        scope=row.get("scope"),
    )


def _four(values: Any) -> tuple[int, int, int, int]:
    used, held, granted, balance = (int(v) for v in values)
    return used, held, granted, balance


def _usage(row: list[Any]) -> UsageRead:
    """``[used, held, granted, balance]``, or a team member's eight: the pool's, then theirs."""
    if len(row) == 8:
        return UsageRead(*_four(row[:4]), member=_four(row[4:]))
    return UsageRead(*_four(row))


def _membership(row: Mapping[str, Any] | None) -> Membership | None:
    if row is None:
        return None
    added = moment(row["added_at"])
    assert added is not None
    return Membership(
        account_id=row["account_id"],
        user_id=row["user_id"],
        limits=row["limits"],
        added_at=added,
        removed_at=moment(row["removed_at"]),
    )


def _grant(row: Mapping[str, Any]) -> Grant:
    created = moment(row["created_at"])
    assert created is not None
    return Grant(
        id=row["id"],
        user_id=row["user_id"],
        feature_name=row["feature_name"],
        credits=row["credits"],
        remaining=row["remaining"],
        revoked=row["revoked"],
        expires_at=moment(row["expires_at"]),
        source=row["source"],
        reason=row["reason"],
        metadata=row["metadata"],
        payment_ref=row["payment_ref"],
        created_at=created,
        replayed=bool(row.get("replayed", False)),
    )


def _pack(row: Mapping[str, Any]) -> CreditPack:
    return CreditPack(
        id=row["id"],
        name=row["name"],
        # in the order SQLite keeps them (sorted keys), not jsonb's (shortest key first)
        credits=dict(sorted(row["credits"].items())),
        stripe_price_id=row["stripe_price_id"],
        stripe_payment_link_id=row["stripe_payment_link_id"],
        payment_link_url=row["payment_link_url"],
        expires_in_days=row["expires_in_days"],
    )


def _stripe_applied(row: Mapping[str, Any]) -> StripeApplied:
    return StripeApplied(
        row["action"],
        row["user_id"],
        grants=tuple(_grant(g) for g in row.get("grants") or ()),
        unrecovered=tuple((str(f), int(n)) for f, n in row.get("unrecovered") or ()),
    )


def _alert(row: Mapping[str, Any]) -> Alert:
    created = moment(row["created_at"])
    assert created is not None
    return Alert(
        id=row["id"],
        user_id=row["user_id"],
        feature_name=row["feature_name"],
        threshold=row["threshold"],
        usage=row["usage"],
        limit=row["limit"],
        window_start=moment(row["window_start"]),
        resets_at=moment(row["resets_at"]),
        created_at=created,
        delivered_at=moment(row["delivered_at"]),
        attempts=row["attempts"],
    )


def _settled(row: Mapping[str, Any]) -> UsageEvent | None:
    return _event(row.get("event"), replayed=bool(row.get("replayed", False)))


def _profile_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in fields.items()}


def _plain(value: Any) -> Any:
    """A dataclass (or None) as a JSON object: moments in ISO format, decimals as strings, at
    any depth (tuples as arrays)."""
    if value is None:
        return None
    return _jsonable(dataclasses.asdict(value))


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


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
        quantity=row.get("quantity"),
    )


def _event_required(row: Mapping[str, Any]) -> UsageEvent:
    event = _event(row)
    assert event is not None
    return event


Args = dict[str, Any]
Decoder = Callable[[Any], Any]

#: Store operation -> (function suffix, JSON result -> value). The function's parameters are
#: the operation's keyword arguments prefixed ``p_``.
OPERATIONS: dict[str, tuple[str, Decoder]] = {
    "charge": ("charge", _charge),
    "reserve": ("reserve", _charge),
    "settle": ("settle", _settled),
    "usage": ("usage", _usage),
    "reset": ("reset", _event),
    "usage_since_reset": (
        "since_reset",
        lambda r: ResetInfo(int(r[0]), moment(r[1]), int(r[2])),
    ),
    "hourly_totals": (
        "hourly",
        lambda rows: sorted(
            (HourlyTotal(u, f, _EPOCH + timedelta(microseconds=h), int(t)) for u, f, h, t in rows),
            key=lambda h: (h.user_id, h.feature_name, h.hour),
        ),
    ),
    "list_events": ("events", lambda rows: [_event(r) for r in rows]),
    "ledger_check": ("ledger_check", lambda r: (int(r[0]), int(r[1]))),
    "top_usage": ("top_users", lambda rows: [(str(u), int(n)) for u, n in rows]),
    "list_recent_events": ("recent_events", lambda rows: [_event(r) for r in rows]),
    "load_catalog": ("catalog", lambda rows: [_plan(r) for r in rows]),
    "upsert_plan": ("upsert_plan", _plan),
    "set_feature_limit": ("set_limit", lambda r: FeatureLimit(**r)),
    "update_price": ("update_price", int),
    "get_profile": ("get_profile", _profile),
    "upsert_profile": ("upsert_profile", _profile),
    "add_limit_adjustment": ("add_adjustment", _adjustment),
    "get_limit_adjustments": ("adjustments", lambda rows: [_adjustment(r) for r in rows]),
    "grant_credits": ("grant_credits", _grant),
    "list_grants": ("list_grants", lambda rows: [_grant(r) for r in rows]),
    "upsert_credit_pack": ("upsert_credit_pack", _pack),
    "load_credit_packs": ("credit_packs", lambda rows: [_pack(r) for r in rows]),
    "add_member": ("add_member", _membership),
    "remove_member": ("remove_member", bool),
    "list_members": ("list_members", lambda rows: [_membership(r) for r in rows]),
    "get_membership": ("get_membership", _membership),
    "has_members": ("has_members", bool),
    "apply_stripe_event": ("stripe_apply", _stripe_applied),
    "stripe_export_batch": ("stripe_batch", _export_batch),
    "advance_stripe_cursor": ("stripe_cursor", int),
    "pending_stripe_subscriptions": (
        "stripe_pending",
        lambda rows: [_subscription(r) for r in rows],
    ),
    "recent_stripe_events": (
        "stripe_recent",
        lambda rows: [
            StripeEventRecord(
                event_id=r["event_id"],
                type=r["type"],
                created=_EPOCH + timedelta(microseconds=r["created"]),
                action=r["action"],
                user_id=r["user_id"],
                processed_at=_EPOCH + timedelta(microseconds=r["processed_at"]),
            )
            for r in rows
        ],
    ),
    "load_alert_thresholds": (
        "alert_thresholds",
        lambda rows: [(f, plan, [int(t) for t in ts]) for f, plan, ts in rows],
    ),
    "set_alert_thresholds": ("set_alert_thresholds", lambda r: [int(t) for t in r]),
    "claim_alerts": ("claim_alerts", lambda rows: [_alert(r) for r in rows]),
    "finish_alert": ("finish_alert", bool),
    "list_alerts": ("list_alerts", lambda rows: [_alert(r) for r in rows]),
}

#: The arguments sent in another form than the operation's (the rest are sent as they are).
_SENT_AS: dict[str, Callable[[Any], Any]] = {
    "user_ids": list,
    "feature_names": list,
    "alert_thresholds": lambda value: None if value is None else list(value),
    "fields": _profile_fields,
    "price": _plain,
    "link": _plain,
    "subscription": _plain,
    "grant": _plain,
    "refund": _plain,
}


def encode(method: str, kwargs: Mapping[str, Any]) -> tuple[str, Args]:
    """``(function suffix, arguments)`` of a store operation."""
    suffix = OPERATIONS[method][0]
    args = {
        f"p_{name}": _SENT_AS[name](value) if name in _SENT_AS else value
        for name, value in kwargs.items()
    }
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
    return OPERATIONS[method][1](result)


def refusal(result: Mapping[str, Any]) -> UsageFlowError:
    details = dict(result.get("details") or {})
    message = str(result.get("message", "refused"))
    if result["error"] == "reservation":
        return reservation_error(message, **details)
    return invalid(message, **details)
