"""The migration: idempotent, versioned, safe when several processes run it at once, and
parameterized by the configured table names (two setups can share one database)."""

from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.support.postgres import store_url
from usageflow import AsyncUsageFlow, ErrorCodes, UsageFlow, UsageFlowError, ops
from usageflow.stores import open_store
from usageflow.stores.base import Tables
from usageflow.stores.postgres import PostgresStore
from usageflow.stores.sql import SCHEMA_VERSION


def test_concurrent_migrations_of_one_database(pg_url: str, schema: str) -> None:
    stores = [PostgresStore(store_url(pg_url, schema)) for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        versions = list(pool.map(lambda s: s.migrate(), stores))
    assert versions == [SCHEMA_VERSION] * 6
    assert stores[0].migrate() == SCHEMA_VERSION  # and again: idempotent
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(f'SELECT name, version FROM "{schema}".usageflow_schema').fetchall()
    assert rows == [("usage_events", SCHEMA_VERSION)]
    for store in stores:
        store.close()


def test_custom_table_names_share_one_database(pg_url: str, schema: str) -> None:
    url = store_url(pg_url, schema)
    default = open_store(url)
    custom = PostgresStore(
        url,
        Tables(
            user_plans="acme_plans",
            usage_events="acme_events",
            usage_feature_limits="acme_limits",
            user_limit_adjustments="acme_adjustments",
            profiles="acme_profiles",
        ),
    )
    assert default.migrate() == custom.migrate() == SCHEMA_VERSION
    sql = custom.migration_sql()
    assert '"acme_events_counters"' in sql and '"acme_events_charge"' in sql
    a, b = UsageFlow(default), UsageFlow(custom)
    a.create_plan("Free", is_free=True, limits={"api": 1})
    b.create_plan("Free", is_free=True, limits={"api": 2})
    assert [a.consume("u1", "api").allowed for _ in range(2)] == [True, False]
    assert [b.consume("u1", "api").allowed for _ in range(3)] == [True, True, False]
    default.close()
    custom.close()


def test_missing_schema_and_bad_urls_say_what_to_do(pg_url: str, schema: str) -> None:
    store = PostgresStore(store_url(pg_url, schema))
    with pytest.raises(UsageFlowError) as caught:
        UsageFlow(store).consume("u1", "api")
    assert caught.value.code is ErrorCodes.USAGE_CONFIG_ERROR
    assert "migrate" in caught.value.message and caught.value.details["operation"]
    store.close()
    for bad in ("pool_size=0", "timeout=abc", "prepare=maybe", "schema=a;b"):
        with pytest.raises(UsageFlowError) as caught:
            open_store(f"postgresql://u:secret@h/db?{bad}")
        assert "secret" not in str(caught.value)


def test_a_failed_call_names_the_table_of_its_operation(pg_url: str, schema: str) -> None:
    """The error of an operation on an unmigrated database names the table it concerns."""
    store = PostgresStore(store_url(pg_url, schema))
    calls = {
        "usage_events_grants": ops.list_grants(user_id="u1", feature_name=None),
        "usage_events_members": ops.list_members(account_id="acct", removed=False),
        "usage_events_alerts": ops.list_alerts(user_id=None, undelivered=False, limit=5),
        "usage_events_packs": ops.load_credit_packs(),
        "user_plans": ops.load_catalog(),
    }
    for table, call in calls.items():
        with pytest.raises(UsageFlowError) as caught:
            store.call(call)
        assert caught.value.details["table"] == table, caught.value.details
    store.close()


def test_password_never_in_errors_or_repr(pg_url: str, schema: str) -> None:
    store = PostgresStore(
        f"postgresql://nobody:s3cr3t-pw@127.0.0.1:9/none?schema={schema}&connect_timeout=1&timeout=1"
    )
    assert "s3cr3t-pw" not in repr(store) + store.url
    with pytest.raises(UsageFlowError) as caught:
        store.call(ops.load_catalog())
    assert "s3cr3t-pw" not in str(caught.value) + repr(caught.value.details)
    store.close()


@pytest.mark.parametrize(("prepare", "expected"), [("false", 0), ("true", 1)])
def test_transaction_pooler_mode_without_prepared_statements(
    pg_url: str, schema: str, prepare: str, expected: int
) -> None:
    """``prepare=false`` (Supabase's transaction pooler, PgBouncer) never prepares a statement
    on the server; by default the charge is prepared after a few calls."""
    store = PostgresStore(store_url(pg_url, schema, prepare=prepare, pool_size=1, pool_min=1))
    store.migrate()
    flow = UsageFlow(store)
    flow.create_plan("Free", is_free=True, limits={"api": 100})
    assert all(flow.consume("u1", "api").allowed for _ in range(10))
    # The server's view of the pool's one session (a driver-level property, so read there).
    with store._get_pool().connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%_charge%'"
        ).fetchone()
    assert row == (expected,)
    store.close()


def test_connection_check_needs_no_schema(pg_url: str, schema: str) -> None:
    store = PostgresStore(store_url(pg_url, schema))
    assert store.connection_check() and UsageFlow(store).connection_check()
    store.close()
    dead = PostgresStore("postgresql://nobody@127.0.0.1:9/none?connect_timeout=1&timeout=1")
    assert UsageFlow(dead).connection_check() is False  # never an exception
    dead.close()


@pytest.mark.parametrize(
    ("module", "build"),
    [
        ("psycopg", lambda: open_store("postgresql://h/db")),
        ("supabase", lambda: UsageFlow(supabase_url="https://x.supabase.co", supabase_key="k")),
    ],
)
def test_missing_driver_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, build: object
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(UsageFlowError) as caught:
        build()  # type: ignore[operator]
    assert caught.value.code is ErrorCodes.USAGE_CONFIG_ERROR
    assert "pip install 'usageflow[" in caught.value.message


def test_upgrade_from_schema_2_drops_the_committed_holds_it_kept(pg_url: str, schema: str) -> None:
    """Version 2 kept every committed hold; version 3 deletes them (their events, keyed by the
    reservation, answer a repeated commit) and keeps the keyed ones, which replay a reserve."""
    store = PostgresStore(store_url(pg_url, schema))
    store.migrate()
    flow = UsageFlow(store)
    flow.create_plan("Free", is_free=True, limits={"api": 100})
    plain = flow.reserve("u1", "api", 2)
    event = plain.commit()
    keyed = flow.reserve("u1", "api", 1, idempotency_key="job-1")
    keyed.commit()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        # What version 2 left behind: the committed hold, with its event.
        conn.execute(
            "INSERT INTO usage_events_holds (id, user_id, feature_name, credits, status, "
            "expires_at, event_id) VALUES (%s, 'u1', 'api', 2, 'committed', now(), %s)",
            (plain.id, event.id),
        )
        conn.execute("UPDATE usageflow_schema SET version = 2")
        assert store.migrate() == SCHEMA_VERSION == 6
        rows = conn.execute("SELECT id, status FROM usage_events_holds").fetchall()
    assert rows == [(keyed.id, "committed")]
    again = plain.commit()
    assert again.replayed and again.id == event.id
    assert flow.reserve("u1", "api", 1, idempotency_key="job-1").id == keyed.id
    assert flow.get_total_usage("u1", "api") == 3
    store.close()


def test_upgrade_from_schema_3_scopes_idempotency_keys(pg_url: str, schema: str) -> None:
    """Version 3 held keys unique across the ledger (a column constraint, whatever PostgreSQL
    named it); version 4 makes them unique per (user, feature) and keeps every event."""
    store = PostgresStore(store_url(pg_url, schema))
    store.migrate()
    flow = UsageFlow(store)
    flow.create_plan("Free", is_free=True, limits={"api": 100})
    first = flow.consume("alice", "api", 3, idempotency_key="req-1")
    flow.reserve("alice", "api", 2, idempotency_key="job-1")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        # What version 3 had: global UNIQUE constraints, no scoped indexes.
        conn.execute("DROP INDEX usage_events_idem_idx, usage_events_hold_idem_idx")
        conn.execute("ALTER TABLE usage_events ADD UNIQUE (idempotency_key)")
        conn.execute("ALTER TABLE usage_events_holds ADD UNIQUE (idempotency_key)")
        conn.execute("UPDATE usageflow_schema SET version = 3")
        with pytest.raises(UsageFlowError):  # the global constraint refuses mallory's key
            flow.consume("mallory", "api", 1, idempotency_key="req-1")
        assert store.migrate() == SCHEMA_VERSION == 6
        constraints = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'u' AND conrelid IN "
            "('usage_events'::regclass, 'usage_events_holds'::regclass)"
        ).fetchone()
    assert constraints == (0,)
    assert store.migrate() == SCHEMA_VERSION  # idempotent
    replay = flow.consume("alice", "api", 3, idempotency_key="req-1")
    assert replay.replayed and replay.event_id == first.event_id
    mallory = flow.consume("mallory", "api", 1, idempotency_key="req-1")
    assert mallory.allowed and not mallory.replayed
    assert flow.reserve("mallory", "api", 1, idempotency_key="job-1").decision.replayed is False
    assert flow.get_total_usage("alice", "api") == 3
    store.close()


def test_keys_granted_before_the_grants_flag_keep_their_balance(pg_url: str, schema: str) -> None:
    """A decision reads the grants of a key only once its counters row says it has had one;
    the migration that adds that flag marks the keys granted before it existed."""
    store = PostgresStore(store_url(pg_url, schema))
    store.migrate()
    flow = UsageFlow(store)
    flow.create_plan("Free", is_free=True, limits={"api": 2})
    flow.grant_credits("alice", "api", 3)
    assert [flow.consume("bob", "api").allowed for _ in range(2)] == [True, True]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute("ALTER TABLE usage_events_counters DROP COLUMN grants")  # before the flag
        assert store.migrate() == SCHEMA_VERSION
        flags = conn.execute(
            "SELECT user_id, grants FROM usage_events_counters ORDER BY user_id"
        ).fetchall()
    assert flags == [("alice", True), ("bob", False)]
    # Two from the plan, then the three granted, then refused.
    assert [flow.consume("alice", "api").allowed for _ in range(6)] == [True] * 5 + [False]
    assert flow.get_credit_balance("alice", "api") == 0
    store.close()


def test_async_migrate_returns_the_version(pg_url: str, schema: str) -> None:
    """The script's first result (its BEGIN) has no row: the async face must not fetch one."""

    async def main() -> int:
        flow = AsyncUsageFlow(store_url(pg_url, schema))
        try:
            return await flow.migrate()
        finally:
            await flow.aclose()

    assert asyncio.run(main()) == SCHEMA_VERSION
    assert asyncio.run(main()) == SCHEMA_VERSION  # and again
