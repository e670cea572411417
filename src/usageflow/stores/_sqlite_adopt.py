"""Adopting a SQLite database whose tables were made by the JavaScript package's schema (or in
any other way, under the names usageflow uses) but never by usageflow.

:func:`adopt` runs inside :meth:`SQLiteStore.migrate`'s transaction when no usageflow version is
recorded. SQLite cannot change a column's type or constraints in place, so each existing table
is rebuilt in usageflow's shape: renamed aside, created again by the schema's own DDL (the
same statements a new database runs, so a later version upgrades it the same way), its rows
copied, the old table dropped. Every row and every value is kept; columns usageflow does not
know (saas-subscription-helper's, in ``profiles``) are carried over. Times are rewritten in
usageflow's form (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC: SQLite compares times as text), the
ledger's ``running_total`` and the counters are computed from the events.

A row usageflow cannot accept raises ``USAGE_CONFIG_ERROR`` naming it before anything is
written; the caller's transaction then leaves the file as it was. PostgreSQL does the same in
``sql/postgres.sql`` (the DO block before the holds clean-up), with the same rules.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from usageflow.errors import UsageFlowError, config_error
from usageflow.stores.base import Tables

__all__ = ["adopt"]

#: The tables that may exist before usageflow's (fields of Tables), parents first.
_ADOPTED = (
    "user_plans",
    "usage_feature_limits",
    "user_limit_adjustments",
    "profiles",
    "usage_events",
)
#: Columns usageflow needs a value for, by table field.
_REQUIRED = {
    "user_plans": ("id", "name"),
    "usage_feature_limits": ("id", "plan_id", "feature_name", "limit_value"),
    "user_limit_adjustments": (
        "id",
        "user_id",
        "feature_name",
        "amount",
        "type",
        "start_date",
        "end_date",
    ),
    "profiles": ("id",),
    "usage_events": ("id", "user_id", "feature_name", "timestamp"),
}
#: Columns holding moments (in any table).
_TIME_COLUMNS = frozenset(
    {
        "created_at",
        "updated_at",
        "timestamp",
        "start_date",
        "end_date",
        "current_period_start",
        "current_period_end",
    }
)
_SUFFIX = "__usageflow_adopting"
_MOMENT = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)(?:[T ](\d\d):(\d\d)(?::(\d\d)(?:[.,](\d+))?)?)?"
    r"\s*(Z|[+-]\d\d(?::?\d\d)?)?",
    re.IGNORECASE,
)
_TYPE = re.compile(r"[A-Za-z0-9_ (),]*")


def moment(value: object) -> str | None:
    """``value`` (ISO 8601 text: a date, a date and time, with ``T`` or a space, any fraction
    of a second, ``Z`` or an offset) as usageflow stores a moment, in UTC; None when it is
    not such text. Registered on the connection as ``usageflow_moment``."""
    if not isinstance(value, str):
        return None
    match = _MOMENT.fullmatch(value.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        when = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "")[:6].ljust(6, "0")),
        )
        if zone and zone.upper() != "Z":
            digits = zone[1:].replace(":", "")
            offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
            when = when - offset if zone[0] == "+" else when + offset
    except (ValueError, OverflowError):
        return None
    return when.isoformat(" ", "microseconds")


class _Column(NamedTuple):
    name: str
    type: str
    notnull: bool
    default: str | None


def _columns(conn: sqlite3.Connection, table: str) -> dict[str, _Column]:
    return {
        row[1]: _Column(row[1], str(row[2] or ""), bool(row[3]), row[4])
        for row in conn.execute(f'PRAGMA table_info("{table}")')
    }


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _refuse(table: str, what: str) -> UsageFlowError:
    return config_error(f'cannot adopt table "{table}": {what}', table=table, operation="migrate")


def _first(conn: sqlite3.Connection, query: str) -> Any:
    return conn.execute(query).fetchone()


def _check(conn: sqlite3.Connection, t: Tables, old: dict[str, dict[str, _Column]]) -> None:
    """Raise, naming the row, when a table holds a row usageflow cannot accept."""
    for field in _ADOPTED:
        name = getattr(t, field)
        if name not in old:
            continue
        for column in _REQUIRED[field]:
            if column not in old[name]:
                raise _refuse(name, f"it has no column {column}")
        for column in old[name]:
            if column in _TIME_COLUMNS:
                row = _first(
                    conn,
                    f'SELECT id, "{column}" FROM "{name}" WHERE "{column}" IS NOT NULL '
                    f'AND usageflow_moment("{column}") IS NULL ORDER BY id LIMIT 1',
                )
                if row:
                    raise _refuse(name, f"row id={row[0]} has {column} {row[1]!r}, not a time")
        if "metadata" in old[name]:
            row = _first(
                conn,
                f'SELECT id FROM "{name}" WHERE CASE WHEN json_valid(metadata) '
                "THEN json_type(metadata) NOT IN ('object', 'null') "
                "ELSE metadata IS NOT NULL END ORDER BY id LIMIT 1",
            )
            if row:
                raise _refuse(name, f"row id={row[0]} has metadata that is not a JSON object")
    if (limits := t.usage_feature_limits) in old:
        row = _first(
            conn,
            f"SELECT id, limit_value FROM \"{limits}\" WHERE typeof(limit_value) <> 'integer' "
            "OR limit_value < -1 ORDER BY id LIMIT 1",
        )
        if row:
            why = (
                "the lowest limit is -1, unlimited"
                if isinstance(row[1], int)
                else "not a whole number"
            )
            raise _refuse(limits, f"row id={row[0]} has limit_value {row[1]!r} ({why})")
        row = _first(
            conn,
            f'SELECT a.id, b.id, a.feature_name, a.plan_id FROM "{limits}" a JOIN "{limits}" b '
            "ON b.plan_id = a.plan_id AND b.feature_name = a.feature_name AND b.id > a.id "
            "ORDER BY a.id, b.id LIMIT 1",
        )
        if row:
            raise _refuse(
                limits,
                f"rows id={row[0]} and id={row[1]} both set the limit of {row[2]} in plan "
                f"{row[3]} (a plan has one limit per feature: delete one)",
            )
        plans = t.user_plans if t.user_plans in old else None
        row = _first(
            conn,
            f'SELECT l.id, l.plan_id FROM "{limits}" l WHERE '
            + (f'NOT EXISTS (SELECT 1 FROM "{plans}" p WHERE p.id = l.plan_id)' if plans else "1")
            + " ORDER BY l.id LIMIT 1",
        )
        if row:
            raise _refuse(limits, f"row id={row[0]} refers to plan {row[1]}, which does not exist")
    if (events := t.usage_events) in old:
        row = _first(conn, f'SELECT id FROM "{events}" WHERE timestamp IS NULL ORDER BY id LIMIT 1')
        if row:
            raise _refuse(events, f"row id={row[0]} has no timestamp")
        if "credits_used" in old[events]:
            row = _first(
                conn,
                f'SELECT id, credits_used FROM "{events}" WHERE credits_used IS NOT NULL '
                "AND typeof(credits_used) <> 'integer' ORDER BY id LIMIT 1",
            )
            if row:
                raise _refuse(
                    events, f"row id={row[0]} has credits_used {row[1]!r}, not a whole number"
                )
    if (adjustments := t.user_limit_adjustments) in old:
        row = _first(
            conn,
            f'SELECT id FROM "{adjustments}" WHERE usageflow_moment(start_date) '
            ">= usageflow_moment(end_date) ORDER BY id LIMIT 1",
        )
        if row:
            raise _refuse(
                adjustments,
                f"row id={row[0]} has an end_date that is not after its start_date",
            )
    if (profiles := t.profiles) in old:
        row = _first(
            conn,
            f'SELECT id, count(*) FROM "{profiles}" GROUP BY id HAVING id IS NULL OR count(*) > 1 '
            "LIMIT 1",
        )
        if row:
            what = "rows without an id" if row[0] is None else f"several rows with id {row[0]!r}"
            raise _refuse(profiles, f"it has {what}")


def adopt(conn: sqlite3.Connection, tables: Tables, schema_sql: str) -> bool:
    """Bring the tables of ``tables`` that exist but were not made by usageflow to
    usageflow's shape (``schema_sql``: the schema's DDL), inside the caller's transaction.
    Returns False, having done nothing, when none of them exists."""
    present = [
        name
        for field in _ADOPTED
        if conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
            (name := getattr(tables, field),),
        ).fetchone()
    ]
    if not present:
        return False
    conn.create_function("usageflow_moment", 1, moment, deterministic=True)
    old = {name: _columns(conn, name) for name in present}
    _check(conn, tables, old)
    # AUTOINCREMENT's high-water marks: ids of deleted rows are not given again.
    high: dict[str, int] = {}
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
        high = {
            name: seq
            for name, seq in conn.execute("SELECT name, seq FROM sqlite_sequence")
            if name in present
        }
    # Aside under another name; their indexes go, so that the schema can create its own
    # (some have the same names). Legacy renaming leaves views and triggers that name a
    # table pointing at the table of that name, which will be usageflow's.
    conn.execute("PRAGMA legacy_alter_table = ON")
    try:
        for name in present:
            conn.execute(f'ALTER TABLE "{name}" RENAME TO "{name}{_SUFFIX}"')
            for (index,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                "AND sql IS NOT NULL",
                (f"{name}{_SUFFIX}",),
            ).fetchall():
                conn.execute(f'DROP INDEX "{index}"')
    finally:
        conn.execute("PRAGMA legacy_alter_table = OFF")
    for statement in schema_sql.split(";"):
        if statement.strip():
            conn.execute(statement)
    for name in present:
        _copy(conn, name, old[name], tables)
        if name in high:
            conn.execute(
                "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (high[name], name)
            )
    for name in reversed(present):  # children first: their references name the parents
        conn.execute(f'DROP TABLE "{name}{_SUFFIX}"')
    _count(conn, tables)
    return True


def _copy(conn: sqlite3.Connection, name: str, old: dict[str, _Column], tables: Tables) -> None:
    """Copy the rows of the table set aside into usageflow's, value by value; columns
    usageflow does not know are added to its table first."""
    new = _columns(conn, name)
    for column in old.values():
        if column.name not in new:
            kind = column.type if _TYPE.fullmatch(column.type) else ""
            conn.execute(f'ALTER TABLE "{name}" ADD COLUMN {_quote(column.name)} {kind}')
    targets: list[str] = []
    values: list[str] = []
    for column in new.values():
        if column.name == "running_total" and name == tables.usage_events:
            value = (
                "SUM(COALESCE(credits_used, 0)) OVER (PARTITION BY user_id, feature_name "
                "ORDER BY usageflow_moment(timestamp), id)"
            )
        elif column.name in old:
            value = f'"{column.name}"'
            if column.name in _TIME_COLUMNS:
                value = f"usageflow_moment({value})"
            if column.notnull and column.default is not None:
                value = f"COALESCE({value}, {column.default})"  # is_free NULL is false
        else:
            continue  # a column the old table lacks: its default
        targets.append(f'"{column.name}"')
        values.append(value)
    for column in old.values():
        if column.name not in new:
            targets.append(_quote(column.name))
            values.append(_quote(column.name))
    conn.execute(
        f'INSERT INTO "{name}" ({", ".join(targets)}) SELECT {", ".join(values)} '
        f'FROM "{name}{_SUFFIX}" ORDER BY id'
    )


def _count(conn: sqlite3.Connection, t: Tables) -> None:
    """The counters, from the ledger: the total, the last event's time and the last reset
    (what it zeroed: its metadata's pre_reset_total when usageflow wrote it, else what was
    recorded since the reset before it)."""
    conn.execute(
        f'INSERT INTO "{t.counters}" (user_id, feature_name, total, last_ts, last_reset_at, '
        "reset_base, reset_pre_total) "
        "SELECT k.user_id, k.feature_name, k.total, k.last_ts, r.timestamp, "
        "COALESCE(r.running_total, 0), COALESCE(r.pre, 0) "
        "FROM (SELECT user_id, feature_name, SUM(COALESCE(credits_used, 0)) AS total, "
        f'MAX(timestamp) AS last_ts FROM "{t.usage_events}" GROUP BY user_id, feature_name) k '
        "LEFT JOIN (SELECT user_id, feature_name, timestamp, running_total, pre, "
        "ROW_NUMBER() OVER (PARTITION BY user_id, feature_name ORDER BY timestamp DESC, id DESC) "
        "AS n FROM (SELECT user_id, feature_name, timestamp, id, running_total, "
        "CASE WHEN json_type(metadata, '$.pre_reset_total') IN ('integer', 'real') "
        "THEN CAST(json_extract(metadata, '$.pre_reset_total') AS INTEGER) "
        "ELSE MAX(running_total - COALESCE(LAG(running_total) OVER (PARTITION BY user_id, "
        "feature_name ORDER BY timestamp, id), 0), 0) END AS pre "
        f"FROM \"{t.usage_events}\" WHERE event_type = 'reset')) r "
        "ON r.user_id = k.user_id AND r.feature_name = k.feature_name AND r.n = 1 "
        "WHERE 1 ON CONFLICT (user_id, feature_name) DO UPDATE SET total = excluded.total, "
        "last_ts = excluded.last_ts, last_reset_at = excluded.last_reset_at, "
        "reset_base = excluded.reset_base, reset_pre_total = excluded.reset_pre_total"
    )
