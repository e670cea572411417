"""A database made by the JavaScript package, for the adoption tests.

``POSTGRES_DDL`` is the spec's SQL (``usageflow-js-readme.txt``, "Supabase Schema") exactly as
it gives it; ``SQLITE_DDL`` is its faithful translation (``SERIAL`` -> ``INTEGER PRIMARY KEY
AUTOINCREMENT``, ``JSONB`` -> ``JSON``, ``NOW()`` -> ``CURRENT_TIMESTAMP``). The spec leaves the
``profiles`` table to saas-subscription-helper, whose README names its columns (``email``,
``subscription_status``, ``plan``, and optional synced Stripe fields such as
``stripe_customer_id``, ``current_period_start``, ``current_period_end``, ``payment_last4``,
``trial``): ``PROFILES_DDL`` is that table.

:class:`JSDatabase` fills either with plans, limits, adjustments, profiles and events (several
users, features and periods; resets, refunds, an event exactly at a window start, events
inserted out of time order) and computes **the numbers before the migration** from the JS
tables alone, with plain SQL, the way the spec and ``docs/semantics.md`` define them:

- usage in a window = ``SUM(credits_used)`` of the user's events of that feature with
  ``timestamp >= window start``, counting only the events after the last ``reset`` event in
  the window when there is one, and never below 0;
- the user's plan = the plan whose ``stripe_price_id`` is ``profiles.plan`` while the
  subscription has not ended, else the free plan (lowest id);
- the limit = ``limit_value`` of that plan's row for the feature (none: 0; -1: unlimited)
  plus the adjustments active now (``recurring`` always, ``one_time`` only when it started in
  the window), never below 0; remaining = ``max(limit - current, 0)``.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

UTC = timezone.utc

#: The moment the tests run at (a Wednesday).
NOW = datetime(2024, 3, 20, 12, 0, tzinfo=UTC)

#: The window start of every period at NOW (a period of None is the limit's: current_month,
#: the only one the JS tables know).
WINDOWS: dict[str | None, datetime | None] = {
    None: datetime(2024, 3, 1, tzinfo=UTC),
    "current_month": datetime(2024, 3, 1, tzinfo=UTC),
    "current_week": datetime(2024, 3, 18, tzinfo=UTC),
    "day": datetime(2024, 3, 20, tzinfo=UTC),
    "last_30_days": NOW - timedelta(days=30),
    "last_28_days": NOW - timedelta(days=28),
    "lifetime": None,
}

USERS = ("alice", "bob", "carol", "dave", "erin")
FEATURES = ("api", "exports", "tokens")
JS_TABLES = ("user_plans", "usage_feature_limits", "usage_events", "user_limit_adjustments")
TABLES = (*JS_TABLES, "profiles")
#: Columns of each table holding moments.
TIME_COLUMNS = {
    "created_at",
    "updated_at",
    "timestamp",
    "start_date",
    "end_date",
    "current_period_start",
    "current_period_end",
}

POSTGRES_DDL = """
CREATE TABLE user_plans (
id SERIAL PRIMARY KEY,
name TEXT NOT NULL, -- Plan name (e.g., "Basic Plan")
stripe_price_id TEXT UNIQUE, -- Stripe Price ID
price_amount DECIMAL(10,2), -- Price amount
price_currency TEXT, -- Currency code
is_free BOOLEAN DEFAULT FALSE, -- Identifies free plans
created_at TIMESTAMP DEFAULT NOW(),
updated_at TIMESTAMP DEFAULT NOW()
);
CREATE TABLE usage_feature_limits (
id SERIAL PRIMARY KEY,
plan_id INT NOT NULL REFERENCES user_plans(id),
feature_name TEXT NOT NULL, -- Feature identifier
limit_value INT NOT NULL, -- -1 for unlimited
created_at TIMESTAMP DEFAULT NOW(),
updated_at TIMESTAMP DEFAULT NOW()
);
CREATE TABLE usage_events (
id SERIAL PRIMARY KEY,
user_id TEXT NOT NULL, -- User's unique identifier
feature_name TEXT NOT NULL, -- Feature being used
credits_used INT, -- Number of credits (NULL for resets)
event_type TEXT NOT NULL
CHECK (event_type IN ('usage', 'credit', 'reset', 'adjustment'))
DEFAULT 'usage',
metadata JSONB, -- Additional event data
timestamp TIMESTAMP DEFAULT NOW()
);
-- Add indexes for performance
CREATE INDEX idx_usage_events_user_feature ON usage_events(user_id, feature_name);
CREATE INDEX idx_usage_events_timestamp ON usage_events(timestamp);
CREATE INDEX idx_usage_events_type ON usage_events(event_type);
CREATE TABLE user_limit_adjustments (
id SERIAL PRIMARY KEY,
user_id TEXT NOT NULL, -- User's unique identifier
feature_name TEXT NOT NULL, -- Feature being adjusted
amount INTEGER NOT NULL, -- Adjustment amount (can be negative)
type TEXT NOT NULL
CHECK (type IN ('one_time', 'recurring')),
start_date TIMESTAMP NOT NULL, -- When adjustment becomes active
end_date TIMESTAMP NOT NULL, -- When adjustment expires
metadata JSONB, -- Optional context (reason, etc.)
created_at TIMESTAMP DEFAULT NOW()
);
-- Add indexes for performance
CREATE INDEX idx_limit_adjustments_user ON user_limit_adjustments(user_id);
CREATE INDEX idx_limit_adjustments_dates ON user_limit_adjustments(start_date, end_date);
"""

PROFILES_DDL = """
CREATE TABLE profiles (
id TEXT PRIMARY KEY,
email TEXT,
subscription_status TEXT,
plan TEXT,
stripe_customer_id TEXT,
current_period_start TIMESTAMP,
current_period_end TIMESTAMP,
payment_last4 TEXT,
trial BOOLEAN
);
"""

SQLITE_DDL = """
CREATE TABLE user_plans (
id INTEGER PRIMARY KEY AUTOINCREMENT,
name TEXT NOT NULL,
stripe_price_id TEXT UNIQUE,
price_amount DECIMAL(10,2),
price_currency TEXT,
is_free BOOLEAN DEFAULT FALSE,
created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE usage_feature_limits (
id INTEGER PRIMARY KEY AUTOINCREMENT,
plan_id INT NOT NULL REFERENCES user_plans(id),
feature_name TEXT NOT NULL,
limit_value INT NOT NULL,
created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE usage_events (
id INTEGER PRIMARY KEY AUTOINCREMENT,
user_id TEXT NOT NULL,
feature_name TEXT NOT NULL,
credits_used INT,
event_type TEXT NOT NULL
CHECK (event_type IN ('usage', 'credit', 'reset', 'adjustment'))
DEFAULT 'usage',
metadata JSON,
timestamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_usage_events_user_feature ON usage_events(user_id, feature_name);
CREATE INDEX idx_usage_events_timestamp ON usage_events(timestamp);
CREATE INDEX idx_usage_events_type ON usage_events(event_type);
CREATE TABLE user_limit_adjustments (
id INTEGER PRIMARY KEY AUTOINCREMENT,
user_id TEXT NOT NULL,
feature_name TEXT NOT NULL,
amount INTEGER NOT NULL,
type TEXT NOT NULL
CHECK (type IN ('one_time', 'recurring')),
start_date TIMESTAMP NOT NULL,
end_date TIMESTAMP NOT NULL,
metadata JSON,
created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_limit_adjustments_user ON user_limit_adjustments(user_id);
CREATE INDEX idx_limit_adjustments_dates ON user_limit_adjustments(start_date, end_date);
"""

_ENDED = ("canceled", "unpaid", "incomplete_expired", "paused")
_ISO = re.compile(r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d\d:\d\d)?")


def moment(text: str) -> datetime:
    """A UTC moment from ``YYYY-MM-DD HH:MM:SS[.ffffff]`` (or ISO with ``T``, and ``Z`` or an
    offset)."""
    match = _ISO.fullmatch(text)
    assert match, text
    day, clock, fraction, zone = match.groups()
    micros = int(((fraction or ".")[1:] + "000000")[:6])
    offset = "+00:00" if zone in (None, "Z") else zone
    when = datetime.fromisoformat(f"{day} {clock}{offset}").replace(microsecond=micros)
    return when.astimezone(UTC)


class JSDatabase:
    """One JS-made database (``dialect`` ``"postgresql"`` or ``"sqlite"``), reached directly."""

    def __init__(self, dialect: str, url: str, *, pg_url: str = "", schema: str = "") -> None:
        self.dialect = dialect
        self.url = url  # the store URL usageflow opens
        self._pg_url = pg_url
        self._schema = schema
        self._path = Path(url.removeprefix("sqlite:///")) if dialect == "sqlite" else None
        self.ids: dict[str, int] = {}

    # -- plumbing ---------------------------------------------------------------------------------
    @contextmanager
    def connect(self) -> Iterator[Any]:
        if self._path is not None:
            conn = sqlite3.connect(self._path, isolation_level=None)
            try:
                yield conn
            finally:
                conn.close()
        else:
            with psycopg.connect(self._pg_url, autocommit=True) as pg:
                pg.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self._schema)))
                yield pg

    def q(self, text: str) -> str:
        """``text`` with ``?`` placeholders in this dialect."""
        return text if self.dialect == "sqlite" else text.replace("?", "%s")

    def ts(self, expression: str) -> str:
        """``expression`` (a column or a ``?``) as a moment to order and compare by."""
        if self.dialect == "sqlite":
            return f"julianday({expression})"
        return "?::timestamp" if expression == "?" else expression

    def param(self, value: datetime | None) -> Any:
        """A moment as the JS tables hold it: naive UTC (PostgreSQL), text (SQLite)."""
        if value is None:
            return None
        naive = value.astimezone(UTC).replace(tzinfo=None)
        return naive.isoformat(" ") if self.dialect == "sqlite" else naive

    def all(self, text: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            return list(conn.execute(self.q(text), args).fetchall())

    def one(self, text: str, *args: Any) -> Any:
        rows = self.all(text, *args)
        assert len(rows) == 1, rows
        return rows[0][0]

    def insert(self, conn: Any, table: str, **values: Any) -> Any:
        names = ", ".join(f'"{k}"' for k in values)
        marks = ", ".join("?" * len(values))
        row = conn.execute(
            self.q(f"INSERT INTO {table} ({names}) VALUES ({marks}) RETURNING id"),
            [json.dumps(v) if isinstance(v, dict) else v for v in values.values()],
        ).fetchone()
        return row[0]

    # -- making it ----------------------------------------------------------------------------------
    def create(self) -> None:
        ddl = (SQLITE_DDL if self.dialect == "sqlite" else POSTGRES_DDL) + PROFILES_DDL
        with self.connect() as conn:
            if self.dialect == "sqlite":
                conn.executescript(ddl)
            else:
                conn.execute(ddl)

    def fill(self) -> None:
        """Plans, limits, profiles, adjustments and events, as the JS package writes them (ids
        from the tables' sequences; times in UTC without a time zone)."""
        sqlite = self.dialect == "sqlite"
        with self.connect() as c:
            add = self.insert
            free = add(c, "user_plans", name="Community", is_free=True)
            pro = add(
                c,
                "user_plans",
                name="Pro",
                stripe_price_id="price_pro",
                price_amount=Decimal("29.00") if not sqlite else 29.0,
                price_currency="usd",
                is_free=False,
            )
            # is_free written as NULL: the JS package reads it as false.
            team = add(
                c,
                "user_plans",
                name="Team",
                stripe_price_id="price_team",
                price_amount=Decimal("99.50") if not sqlite else 99.5,
                price_currency="usd",
                is_free=None,
            )
            self.ids.update(free=free, pro=pro, team=team)
            for plan, limits in (
                (free, {"api": 100, "exports": 5, "tokens": 1000}),
                (pro, {"api": 1000, "exports": -1, "tokens": 50000}),
                (team, {"api": 500, "exports": 50}),
            ):
                for feature, value in limits.items():
                    add(
                        c,
                        "usage_feature_limits",
                        plan_id=plan,
                        feature_name=feature,
                        limit_value=value,
                    )
            for user, plan, status, extra in (
                ("alice", "price_pro", "active", {"payment_last4": "4242", "trial": False}),
                ("bob", "price_team", "trialing", {"trial": True}),
                ("carol", "price_pro", "canceled", {}),  # ended: the free plan applies
            ):
                add(
                    c,
                    "profiles",
                    id=user,
                    email=f"{user}@example.com",
                    subscription_status=status,
                    plan=plan,
                    stripe_customer_id=f"cus_{user}",
                    current_period_start=self.param(datetime(2024, 3, 5, tzinfo=UTC)),
                    current_period_end=self.param(datetime(2024, 4, 5, tzinfo=UTC)),
                    **extra,
                )
            for user, feature, amount, kind, start, end in (
                ("alice", "api", 200, "recurring", "2024-02-01", "2024-04-01"),
                ("alice", "api", 50, "one_time", "2024-03-05", "2024-03-31"),
                ("alice", "tokens", 5000, "one_time", "2024-02-10", "2024-03-25"),
                ("bob", "api", 100, "recurring", "2024-01-01", "2024-02-01"),  # expired
                ("carol", "exports", -2, "recurring", "2024-03-01", "2024-04-01"),
            ):
                add(
                    c,
                    "user_limit_adjustments",
                    user_id=user,
                    feature_name=feature,
                    amount=amount,
                    type=kind,
                    start_date=self.param(datetime.fromisoformat(start).replace(tzinfo=UTC)),
                    end_date=self.param(datetime.fromisoformat(end).replace(tzinfo=UTC)),
                    metadata={"reason": "grandfathered"},
                )
            for user, feature, credits, kind, at, meta in EVENTS:
                add(
                    c,
                    "usage_events",
                    user_id=user,
                    feature_name=feature,
                    credits_used=credits,
                    event_type=kind,
                    metadata=meta,
                    timestamp=at if sqlite else self.param(moment(at)),
                )

    # -- the numbers before -------------------------------------------------------------------------
    def total_usage(self, user: str, feature: str, period: str | None) -> int:
        """``get_total_usage`` as the spec defines it, from the JS events table."""
        start = self.param(WINDOWS[period])
        ts = self.ts
        return max(
            0,
            int(
                self.one(
                    "SELECT COALESCE(SUM(e.credits_used), 0) FROM usage_events e "
                    "WHERE e.user_id = ? AND e.feature_name = ? "
                    f"AND ({ts('?')} IS NULL OR {ts('e.timestamp')} >= {ts('?')}) "
                    "AND NOT EXISTS (SELECT 1 FROM usage_events r WHERE r.event_type = 'reset' "
                    "AND r.user_id = e.user_id AND r.feature_name = e.feature_name "
                    f"AND ({ts('?')} IS NULL OR {ts('r.timestamp')} >= {ts('?')}) "
                    f"AND ({ts('r.timestamp')}, r.id) > ({ts('e.timestamp')}, e.id))",
                    user,
                    feature,
                    start,
                    start,
                    start,
                    start,
                )
            ),
        )

    def fetch_usage(self, user: str, feature: str, period: str | None) -> dict[str, Any]:
        """``fetch_usage`` as the spec defines it (``current``, ``limit``, ``remaining``,
        ``is_unlimited``), from the JS tables."""
        current = self.total_usage(user, feature, period)
        plan = self.one(
            "SELECT COALESCE((SELECT p.id FROM profiles r JOIN user_plans p "
            "ON p.stripe_price_id = r.plan WHERE r.id = ? AND COALESCE(r.subscription_status, "
            f"'active') NOT IN {_ENDED!r}), (SELECT MIN(id) FROM user_plans WHERE is_free))",
            user,
        )
        rows = self.all(
            "SELECT limit_value FROM usage_feature_limits WHERE plan_id = ? AND feature_name = ?",
            plan,
            feature,
        )
        if rows and rows[0][0] == -1:
            return {"current": current, "limit": None, "remaining": None, "is_unlimited": True}
        limit = rows[0][0] if rows else 0
        if rows:
            now, start = self.param(NOW), self.param(WINDOWS[period])
            ts = self.ts
            limit += int(
                self.one(
                    "SELECT COALESCE(SUM(amount), 0) FROM user_limit_adjustments "
                    f"WHERE user_id = ? AND feature_name = ? AND {ts('start_date')} <= {ts('?')} "
                    f"AND {ts('?')} < {ts('end_date')} AND (type = 'recurring' OR {ts('?')} IS NULL "
                    f"OR {ts('start_date')} >= {ts('?')})",
                    user,
                    feature,
                    now,
                    now,
                    start,
                    start,
                )
            )
        limit = max(limit, 0)
        return {
            "current": current,
            "limit": limit,
            "remaining": max(limit - current, 0),
            "is_unlimited": False,
        }

    def since_reset(self, user: str, feature: str) -> tuple[int, datetime | None, int]:
        """``get_usage_since_reset``: (recorded after the last reset, or ever; its moment; the
        usage it zeroed, recorded since the reset before it, or ever)."""
        resets = self.all(
            "SELECT id, timestamp FROM usage_events WHERE event_type = 'reset' "
            f"AND user_id = ? AND feature_name = ? ORDER BY {self.ts('timestamp')}, id",
            user,
            feature,
        )
        ts = self.ts
        between = (
            "SELECT COALESCE(SUM(credits_used), 0) FROM usage_events e "
            "WHERE user_id = ? AND feature_name = ? "
            f"AND ({ts('e.timestamp')}, e.id) > ({ts('?')}, ?) "
            f"AND ({ts('e.timestamp')}, e.id) < ({ts('?')}, ?)"
        )
        never, forever = (
            (self.param(datetime(1970, 1, 1, tzinfo=UTC)), 0),
            (
                self.param(datetime(9999, 1, 1, tzinfo=UTC)),
                0,
            ),
        )
        if not resets:
            return int(self.one(between, user, feature, *never, *forever)), None, 0
        last = (resets[-1][1], resets[-1][0])
        before = (resets[-2][1], resets[-2][0]) if len(resets) > 1 else never
        return (
            int(self.one(between, user, feature, *last, *forever)),
            self._comparable("timestamp", resets[-1][1]),
            max(int(self.one(between, user, feature, *before, *last)), 0),
        )

    def shape(self) -> dict[str, Any]:
        """What usageflow's tables look like, read from the catalog: for PostgreSQL each
        table's columns (type, nullability, default), constraints and indexes, by name; for
        SQLite every table's and index's definition."""
        if self.dialect == "sqlite":
            return dict(
                self.all(
                    "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL "
                    "AND name <> 'sqlite_sequence'"
                )
            )
        shape: dict[str, Any] = {}
        for table, column, kind, notnull, default, identity in self.all(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
            "pg_get_expr(d.adbin, d.adrelid), a.attidentity FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid AND c.relkind = 'r' "
            "JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema() "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attnum > 0 AND NOT a.attisdropped"
        ):
            generated = identity != "" or (default or "").startswith("nextval(")
            shape.setdefault(table, {})[column] = (
                kind,
                notnull,
                "generated" if generated else default,
            )
        for table, name, definition in self.all(
            "SELECT c.relname, k.conname, pg_get_constraintdef(k.oid) FROM pg_constraint k "
            "JOIN pg_class c ON c.oid = k.conrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()"
        ):
            shape.setdefault(f"{table} constraints", {})[name] = definition
        for table, name, definition in self.all(
            "SELECT tablename, indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = current_schema()"
        ):
            shape.setdefault(f"{table} indexes", {})[name] = definition.replace(
                f"{self._schema}.", ""
            )
        return shape

    # -- what is in it ------------------------------------------------------------------------------
    def rows(self, table: str) -> dict[Any, dict[str, Any]]:
        """Every row of ``table`` by id, each column as a comparable value (moments as aware
        UTC datetimes, JSON as objects, numbers as Decimal/int), whatever the column types."""
        with self.connect() as conn:
            cur = conn.execute(f"SELECT * FROM {table}")
            names = [d[0] for d in cur.description]
            found = cur.fetchall()
        result = {}
        for row in found:
            values = dict(zip(names, row, strict=True))
            for name, value in values.items():
                values[name] = self._comparable(name, value)
            result[values["id"]] = values
        return result

    def _comparable(self, name: str, value: Any) -> Any:
        if value is None:
            return None
        if name in TIME_COLUMNS:
            if isinstance(value, str):
                return moment(value)
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if name == "metadata" and isinstance(value, str):
            return json.loads(value)
        if name == "price_amount":
            return Decimal(str(value)).quantize(Decimal("0.01"))
        return value


#: (user, feature, credits_used, event_type, timestamp, metadata): in insertion (id) order.
#: Not in time order: the last event of alice's api is the earliest of its month.
EVENTS: list[tuple[str, str, int | None, str, str, dict[str, Any] | None]] = [
    ("alice", "api", 40, "usage", "2024-01-10 09:00:00", None),
    ("alice", "api", 7, "usage", "2024-02-19 11:00:00", None),  # just before last_30_days
    ("alice", "api", 3, "usage", "2024-02-19 12:00:00", None),  # exactly at its start
    ("alice", "api", 20, "usage", "2024-02-25 08:30:00", None),
    ("alice", "api", 11, "usage", "2024-03-01T00:00:00Z", None),  # exactly the month start
    ("alice", "api", 30, "usage", "2024-03-10 10:15:30.123456", {"model": "gpt-4o-mini"}),
    ("alice", "api", -5, "credit", "2024-03-12 14:00:00", {"reason": "service_error"}),
    ("alice", "api", 6, "usage", "2024-03-18T08:00:00.250Z", None),
    ("alice", "api", 2, "usage", "2024-03-20 09:30:00", None),
    ("alice", "tokens", 12000, "usage", "2024-02-28 10:00:00", {"model": "gpt-4o"}),
    ("alice", "tokens", 8000, "usage", "2024-03-18T01:30:00+02:00", {"model": "gpt-4o"}),
    ("alice", "tokens", 1500, "usage", "2024-03-19 23:59:59.999", None),  # JS Date: ms
    ("bob", "api", 100, "usage", "2024-01-20 10:00:00", None),
    ("bob", "api", None, "reset", "2024-01-25 10:00:00", {"reason": "support"}),
    ("bob", "api", 60, "usage", "2024-02-22 10:00:00", None),
    ("bob", "api", 70, "usage", "2024-03-02 10:00:00", None),
    ("bob", "api", None, "reset", "2024-03-11 09:00:00", None),
    ("bob", "api", 15, "usage", "2024-03-11 09:00:01", None),
    ("bob", "api", 9, "usage", "2024-03-19 10:00:00", None),
    ("bob", "api", 3, "adjustment", "2024-03-19 11:00:00", {"reason": "overage"}),
    ("bob", "exports", 10, "usage", "2024-03-03 10:00:00", None),
    ("carol", "exports", 2, "usage", "2024-03-04 10:00:00", None),
    ("carol", "exports", 1, "usage", "2024-03-16 10:00:00", None),
    ("dave", "api", 50, "usage", "2024-02-27 10:00:00", None),
    ("dave", "api", 45, "usage", "2024-03-02 10:00:00", None),
    ("dave", "api", 50, "usage", "2024-03-14 10:00:00", None),
    ("alice", "api", 4, "usage", "2024-03-05 10:00:00", None),  # inserted last, earlier time
]
