"""SQLite schema upgrades on real files: every event kept, ids included."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from usageflow import UsageFlow, ops
from usageflow.stores.sqlite import SCHEMA_VERSION

V3_EVENTS = """CREATE TABLE usage_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    feature_name TEXT NOT NULL,
    credits_used INTEGER,
    event_type TEXT NOT NULL DEFAULT 'usage'
        CHECK (event_type IN ('usage', 'credit', 'reset', 'adjustment')),
    metadata JSON,
    timestamp TIMESTAMP NOT NULL,
    idempotency_key TEXT UNIQUE,
    running_total INTEGER NOT NULL
)"""


def _downgrade_to_version_3(path: Path) -> None:
    """Rewrite a version 4 file as version 3 left it: a ledger whose keys are UNIQUE by a
    column constraint, the holds' global key index, the schema row at 3."""
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE usage_events RENAME TO usage_events_new")
        conn.execute(V3_EVENTS)
        columns = (
            "id, user_id, feature_name, credits_used, event_type, metadata, timestamp, "
            "idempotency_key, running_total"
        )
        conn.execute(f"INSERT INTO usage_events SELECT {columns} FROM usage_events_new")
        conn.execute("DROP TABLE usage_events_new")
        conn.execute('DROP INDEX "idx_usage_events_holds_idem"')
        conn.execute(
            'CREATE UNIQUE INDEX "idx_usage_events_holds_key" ON usage_events_holds '
            "(idempotency_key) WHERE idempotency_key IS NOT NULL"
        )
        conn.execute("UPDATE usageflow_schema SET version = 3")
    conn.close()


def test_upgrade_from_version_3_scopes_idempotency_keys(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    url = f"sqlite:///{path}"
    with UsageFlow(url) as flow:
        flow.migrate()
        flow.create_plan("Free", is_free=True, limits={"api": 100})
        first = flow.consume("alice", "api", 3, idempotency_key="req-1")
        flow.increment_usage("bob", "api", 4)
        flow.reserve("alice", "api", 2, idempotency_key="job-1")
        before = flow.list_events("alice") + flow.list_events("bob")
    _downgrade_to_version_3(path)
    with UsageFlow(url) as flow:
        assert flow.migrate() == SCHEMA_VERSION == 6
        assert flow.migrate() == SCHEMA_VERSION  # idempotent
        assert flow.list_events("alice") + flow.list_events("bob") == before
        replay = flow.consume("alice", "api", 3, idempotency_key="req-1")
        assert replay.replayed and replay.event_id == first.event_id
        mallory = flow.consume("mallory", "api", 1, idempotency_key="req-1")
        assert mallory.allowed and not mallory.replayed
        assert flow.reserve("alice", "api", 2, idempotency_key="job-1").decision.replayed
        assert not flow.reserve("mallory", "api", 1, idempotency_key="job-1").decision.replayed
        assert flow.get_total_usage("alice", "api") == 3
        assert flow.store.call(ops.ledger_check(user_id="bob", feature_name="api")) == (4, 4)
    with sqlite3.connect(path) as conn:
        unique = [r for r in conn.execute("PRAGMA index_list(usage_events)") if r[3] == "u"]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    conn.close()
    assert unique == []
    assert {"idx_usage_events_idem", "idx_usage_events_holds_idem"} <= indexes
    assert "idx_usage_events_holds_key" not in indexes


def test_upgrade_from_version_4_adds_the_holds_alert_column(tmp_path: Path) -> None:
    """Version 5 keeps, on a hold, the alert thresholds its commit is measured against: a
    version 4 file gets the column, and its holds still commit (without alerts)."""
    path = tmp_path / "usage.db"
    url = f"sqlite:///{path}"
    with UsageFlow(url) as flow:
        flow.create_plan("Free", is_free=True, limits={"api": 10})
        flow.set_alert_thresholds("api", [50])
        old_hold = flow.reserve("alice", "api", 6)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE usage_events_holds SET alert = NULL")
        conn.execute("ALTER TABLE usage_events_holds DROP COLUMN alert")
        conn.execute("UPDATE usageflow_schema SET version = 4")
    conn.close()
    with UsageFlow(url) as flow:
        assert flow.migrate() == SCHEMA_VERSION == 6
        flow.get_plans()
        assert flow.consume("bob", "api", 5).alerts == (50,)
        flow.store.call(
            ops.settle(
                reservation_id=old_hold.id, credits=6, now=old_hold.expires_at, metadata=None
            )
        )
        assert flow.get_total_usage("alice", "api") == 6
        assert [a.user_id for a in flow.list_alerts()] == ["bob"]  # held before version 5
        held = flow.reserve("carol", "api", 5)
        held.commit(5)
        assert [a.user_id for a in flow.list_alerts()] == ["carol", "bob"]
    with sqlite3.connect(path) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(usage_events_holds)")}
    conn.close()
    assert "alert" in columns
