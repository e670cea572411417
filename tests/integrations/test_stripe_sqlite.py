"""SQLite specifics of the Stripe tables: the upgrade from schema 1, and atomicity (an event
whose write fails leaves no trace, not even its processed-event record)."""

from __future__ import annotations

import contextlib
import random
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.stripe_events import SECRET, T0, Events, deliver
from usageflow import UsageFlow, ops
from usageflow.errors import ErrorCodes, UsageFlowError
from usageflow.stores.base import Tables
from usageflow.stores.sqlite import SCHEMA_VERSION

STRIPE_TABLES = ("_stripe_events", "_stripe_subs", "_stripe_cust", "_stripe_export")


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    conn.close()
    return {r[0] for r in rows}


def test_upgrade_from_schema_1_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    flow = UsageFlow(f"sqlite:///{path}")
    flow.create_plan("Free", is_free=True, limits={"exports": 3})
    flow.increment_usage("u1", "exports", 2)
    flow.close()
    # Make it a version-1 database: no Stripe tables, version row 1.
    conn = sqlite3.connect(path)
    for suffix in STRIPE_TABLES:
        conn.execute(f'DROP TABLE "usage_events{suffix}"')
    conn.execute("UPDATE usageflow_schema SET version = 1")
    conn.commit()
    conn.close()
    assert not {f"usage_events{s}" for s in STRIPE_TABLES} & tables(path)

    flow = UsageFlow(f"sqlite:///{path}", stripe_webhook_secret=SECRET)
    assert flow.migrate() == SCHEMA_VERSION == 6
    assert flow.migrate() == SCHEMA_VERSION  # idempotent
    assert {f"usage_events{s}" for s in STRIPE_TABLES} <= tables(path)
    assert flow.get_total_usage("u1", "exports") == 2
    assert deliver(flow, Events().checkout("cus_1", T0, client_reference_id="u1")).action == (
        "applied"
    )
    flow.close()


def test_upgrade_from_schema_2_drops_the_committed_holds_it_kept(tmp_path: Path) -> None:
    """Version 2 kept every committed hold; version 3 deletes them (their events answer a
    repeated commit) and keeps the keyed ones, which replay a reserve."""
    path = tmp_path / "v2.db"
    flow = UsageFlow(f"sqlite:///{path}")
    flow.create_plan("Free", is_free=True, limits={"api": 100})
    plain = flow.reserve("u1", "api", 2)
    event = plain.commit()
    keyed = flow.reserve("u1", "api", 1, idempotency_key="job-1")
    keyed.commit()
    flow.close()
    conn = sqlite3.connect(path)
    kept = conn.execute(
        "SELECT id, user_id, feature_name, credits, status, created_at, expires_at, "
        "idempotency_key, event_id FROM usage_events_holds"
    ).fetchall()
    # Version 2's holds table (a rowid table, a UNIQUE key column), with the committed hold
    # it kept beside the keyed one.
    conn.execute("DROP TABLE usage_events_holds")
    conn.execute(
        "CREATE TABLE usage_events_holds (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, "
        "feature_name TEXT NOT NULL, credits INTEGER NOT NULL, status TEXT NOT NULL "
        "DEFAULT 'held', created_at TIMESTAMP NOT NULL, expires_at TIMESTAMP NOT NULL, "
        "idempotency_key TEXT UNIQUE, event_id INTEGER)"
    )
    conn.execute(
        'CREATE INDEX "idx_usage_events_holds_active" ON usage_events_holds '
        "(user_id, feature_name, expires_at) WHERE status = 'held'"
    )
    conn.executemany("INSERT INTO usage_events_holds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", kept)
    conn.execute(
        "INSERT INTO usage_events_holds (id, user_id, feature_name, credits, status, "
        "created_at, expires_at, event_id) VALUES (?, 'u1', 'api', 2, 'committed', "
        "'2024-01-01 00:00:00', '2024-01-01 00:05:00', ?)",
        (plain.id, event.id),
    )
    conn.execute("UPDATE usageflow_schema SET version = 2")
    conn.commit()
    conn.close()
    flow = UsageFlow(f"sqlite:///{path}")
    assert flow.migrate() == SCHEMA_VERSION == 6
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT id, status FROM usage_events_holds").fetchall()
        schema = dict(conn.execute("SELECT name, sql FROM sqlite_master").fetchall())
    assert rows == [(keyed.id, "committed")]
    assert "WITHOUT ROWID" in schema["usage_events_holds"]
    assert "UNIQUE" not in schema["usage_events_holds"]
    assert {
        "idx_usage_events_holds_active",
        "idx_usage_events_holds_settled",
        "idx_usage_events_holds_idem",
    } <= set(schema)
    again = flow.reserve("u1", "api", 1, idempotency_key="job-1")
    assert again.id == keyed.id and again.decision.replayed
    replayed = flow.store.call(
        ops.settle(reservation_id=plain.id, credits=2, now=T0, metadata=None)
    )
    assert replayed is not None and replayed.replayed and replayed.id == event.id
    assert flow.get_total_usage("u1", "api") == 3
    flow.close()


def test_custom_table_names_derive_the_stripe_tables(tmp_path: Path) -> None:
    flow = UsageFlow(f"sqlite:///{tmp_path / 'c.db'}", usage_events_table="app_events")
    flow.migrate()
    assert Tables(usage_events="app_events").stripe_events == "app_events_stripe_events"
    assert {f"app_events{s}" for s in STRIPE_TABLES} <= tables(tmp_path / "c.db")
    flow.close()


def test_a_failed_write_records_nothing(tmp_path: Path) -> None:
    """A trigger of the shared database refuses one profile update (as another app's schema
    might): the event's whole transaction rolls back, so Stripe's redelivery applies it."""
    path = tmp_path / "t.db"
    flow = UsageFlow(f"sqlite:///{path}", stripe_webhook_secret=SECRET)
    flow.create_plan("Free", is_free=True, limits={"exports": 3})
    flow.create_plan("Pro", stripe_price_id="price_pro", limits={"exports": 1000})
    ev = Events()
    deliver(flow, ev.checkout("cus_1", T0, client_reference_id="u1"))
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE OF plan ON profiles "
        "BEGIN SELECT RAISE(ABORT, 'refused by the shared schema'); END"
    )
    conn.commit()
    event = ev.subscription(
        "customer.subscription.created",
        "sub_1",
        "cus_1",
        "price_pro",
        "active",
        (T0, T0 + 86_400 * 30),
        T0 + 1,
    )
    with pytest.raises(UsageFlowError) as err:
        deliver(flow, event)
    assert err.value.code is ErrorCodes.USAGE_CONFIG_ERROR and err.value.is_store_failure
    counts = conn.execute(
        "SELECT (SELECT count(*) FROM usage_events_stripe_events), "
        "(SELECT count(*) FROM usage_events_stripe_subs)"
    ).fetchone()
    assert counts == (1, 0)  # only the checkout
    conn.execute("DROP TRIGGER refuse")
    conn.commit()
    conn.close()
    assert deliver(flow, event).action == "applied"
    assert flow.get_user_plan("u1").name == "Pro"
    flow.close()


def test_concurrent_redeliveries_are_processed_once(tmp_path: Path) -> None:
    """Stripe retries while a first delivery is still running: threads (and their own SQLite
    connections) race on the same events; each is applied exactly once."""
    flow = UsageFlow(f"sqlite:///{tmp_path / 'race.db'}", stripe_webhook_secret=SECRET)
    flow.create_plan("Free", is_free=True)
    flow.create_plan("Pro", stripe_price_id="price_pro")
    ev = Events()
    events = [ev.checkout(f"cus_{n}", T0, client_reference_id=f"u{n}") for n in range(10)]
    events += [
        ev.subscription(
            "customer.subscription.updated",
            f"sub_{n}",
            f"cus_{n}",
            "price_pro",
            status,
            (T0, T0 + 86_400 * 30),
            T0 + step,
        )
        for n in range(10)
        for step, status in enumerate(("active", "past_due", "active", "canceled"))
    ]

    def worker(seed: int) -> list[str]:
        order = random.Random(seed).sample(events, len(events))
        return [deliver(flow, e).action for e in order]

    with ThreadPoolExecutor(6) as pool:
        results = [a for actions in pool.map(worker, range(6)) for a in actions]
    assert len(results) - results.count("duplicate") == len(events)
    for n in range(10):
        profile = flow.get_profile(f"u{n}")
        assert profile is not None
        assert (profile.plan, profile.subscription_status) == ("price_pro", "canceled")
    flow.close()
