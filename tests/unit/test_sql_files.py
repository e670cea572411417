"""sqlite.sql beside postgres.sql: the same sections and names in the same order, table names
substituted from the validated configuration, and every statement valid on a real database."""

from __future__ import annotations

import re
import sqlite3
from importlib import resources
from pathlib import Path

import pytest

from usageflow import UsageFlow
from usageflow.stores.base import Tables
from usageflow.stores.sql import render_sqlite, sqlite_statements

_SQL = resources.files("usageflow.stores.sql")
#: Blocks that are parts of statements, not statements.
_FRAGMENTS = {
    "event_columns",
    "alert_columns",
    "hourly_since",
    "upsert_profile_update",
    "upsert_profile_keep",
    "grant_columns",
    "pack_columns",
}
#: SQLite statements with no PostgreSQL function of their name (PostgreSQL reads the counters
#: row inside each function; a fragment).
_UNPAIRED = {"counter", "event_columns", "alert_columns", "pack_columns"}
#: Upgrades of older files (tests/unit/test_sqlite_migrations.py runs them).
_UPGRADES = {"holds_alert_column"}


def _layout(name: str) -> list[tuple[str, str]]:
    """(kind, text) in file order: ("section", title) after each divider line, ("name", x)
    for each sqlite.sql block or PostgreSQL function."""
    lines = _SQL.joinpath(name).read_text(encoding="utf-8").splitlines()
    items: list[tuple[str, str]] = []
    for i, line in enumerate(lines):
        if re.fullmatch(r"-- -{20,}", line):
            items.append(("section", re.split(r"[.:(]", lines[i + 1][3:])[0].strip()))
        else:
            m = re.fullmatch(r"-- name: (\w+)", line) or re.match(
                r"CREATE OR REPLACE FUNCTION @fn_(\w+)@", line
            )
            if m:
                items.append(("name", m[1]))
    return items


def test_sqlite_sql_has_postgres_sections_and_names_in_the_same_order() -> None:
    pg, lite = _layout("postgres.sql"), _layout("sqlite.sql")
    pg_sections = [t for k, t in pg if k == "section"]
    lite_sections = [t for k, t in lite if k == "section"]
    assert lite_sections == pg_sections[: len(lite_sections)]
    assert lite_sections == [
        "Internal helpers",
        "The operations",
        "Credit grants",
        "Plans, limits, profiles, adjustments",
        "Stripe",
        "Alerts",
    ]

    functions = [t for k, t in pg if k == "name"]
    first_section = lite.index(("section", lite_sections[0]))
    positions: list[tuple[int, str]] = []
    for kind, name in lite[first_section:]:
        if kind != "name" or name in _UNPAIRED:
            continue
        twins = [f for f in functions if name == f or name.startswith(f + "_")]
        assert twins, f"{name} is named after no PostgreSQL function"
        twin = max(twins, key=len)
        positions.append((functions.index(twin), name))
    assert positions == sorted(positions, key=lambda p: p[0]), "not in postgres.sql's order"
    # every operation with statements of its own on SQLite has them under its own name
    paired = {functions[i] for i, _ in positions}
    assert {"reserve", "settle", "hourly", "events", "top_users", "stripe_apply"} <= paired


def test_statements_are_rendered_once_per_table_names_from_validated_names() -> None:
    tables = Tables(usage_events="acme_events", profiles="acme_profiles")
    statements = sqlite_statements(tables)
    assert sqlite_statements(Tables(usage_events="acme_events", profiles="acme_profiles")) is (
        statements
    )
    for name, text in statements.items():
        assert "@" not in text, name
        assert '"usage_events' not in text and '"profiles"' not in text, name
    assert 'FROM "acme_events" WHERE idempotency_key = ?' in statements["settle_replay"]
    assert 'CREATE TABLE IF NOT EXISTS "acme_events_holds"' in statements["schema"]
    assert 'CREATE INDEX IF NOT EXISTS "idx_acme_profiles_email"' in statements["schema"]
    assert render_sqlite(tables, holds="acme_events_holds_v3")["holds_table"].startswith(
        'CREATE TABLE IF NOT EXISTS "acme_events_holds_v3" ('
    )


def test_every_statement_prepares_on_a_migrated_database(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    flow = UsageFlow(f"sqlite:///{path}", usage_events_table="acme_events")
    flow.migrate()
    flow.close()
    statements = sqlite_statements(flow.tables)
    fields = {
        "hourly": {"users": "?, ?", "features": "?", "since": statements["hourly_since"]},
        "upsert_profile": {
            "columns": "id, email",
            "marks": "?, ?",
            "update": statements["upsert_profile_update"].format(
                assignments="email = excluded.email"
            ),
        },
    }
    conn = sqlite3.connect(path)
    try:
        checked = 0
        for name, template in statements.items():
            if name in _FRAGMENTS or ";" in template:  # parts, and scripts (run by migrate)
                continue
            if name in _UPGRADES:  # DDL for older files: the column exists here
                continue
            text = template.format(**fields[name]) if name in fields else template
            assert "{" not in text, name
            numbered = [int(n) for n in re.findall(r"\?(\d+)", text)]
            marks = max(numbered) if numbered else text.count("?")
            # compiles against the real schema: its tables, indexes and columns exist
            conn.execute(f"EXPLAIN {text}", [None] * marks)
            checked += 1
        assert checked > 50
        with pytest.raises(sqlite3.OperationalError):
            conn.execute(f"EXPLAIN {statements['hourly']}")  # its marks must be filled in
    finally:
        conn.close()
