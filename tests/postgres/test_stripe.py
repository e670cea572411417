"""The Stripe store methods on PostgreSQL beyond the shared contract (tests/integrations/
test_stripe_store.py): racing deliveries, the upgrade from schema 1, the longest table names,
one round trip per method, wrapped driver errors."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from tests.postgres._proxy import PgProxy
from tests.postgres.conftest import via_proxy
from tests.support.postgres import store_url
from tests.support.postgrest import PostgrestStandIn
from usageflow import ErrorCodes, UsageFlowError, ops
from usageflow.ops import StripeApplied, StripeLink, StripeSubscription
from usageflow.stores.base import Tables
from usageflow.stores.postgres import PostgresStore
from usageflow.stores.sql import SCHEMA_VERSION, function_name
from usageflow.stores.supabase import SupabaseStore

NOW = datetime(2024, 1, 15, 12, tzinfo=timezone.utc)
THREADS = 8


def _sub(
    sub_id: str, customer: str, key: str, started: datetime = NOW, plan: str = "price_a"
) -> StripeSubscription:
    return StripeSubscription(
        subscription_id=sub_id,
        customer_id=customer,
        order_key=key,
        started=started,
        ended=False,
        plan=plan,
        status="active",
        current_period_start=NOW,
        current_period_end=NOW + timedelta(days=30),
    )


def _apply(store: Any, event_id: str | None, **changes: Any) -> StripeApplied:
    result: StripeApplied = store.call(
        ops.apply_stripe_event(event_id=event_id, event_type="t", created=NOW, now=NOW, **changes)
    )
    return result


def _race(store: Any, *deliveries: tuple[str, dict[str, Any]]) -> list[StripeApplied]:
    """Apply the events at once, each in its own thread (and pooled connection)."""
    barrier = threading.Barrier(len(deliveries))

    def run(delivery: tuple[str, dict[str, Any]]) -> StripeApplied:
        barrier.wait()
        return _apply(store, delivery[0], **delivery[1])

    with ThreadPoolExecutor(len(deliveries)) as pool:
        return list(pool.map(run, deliveries))


@pytest.fixture
def store(pg_url: str, schema: str) -> Any:
    s = PostgresStore(store_url(pg_url, schema, pool_size=THREADS))
    s.migrate()
    yield s
    s.close()


def test_racing_redeliveries_apply_once(store: PostgresStore) -> None:
    for n in range(5):
        link = StripeLink(f"cus_{n}", f"u{n}", None, "1")
        results = _race(store, *[(f"evt_{n}", {"link": link})] * THREADS)
        actions = sorted(r.action for r in results)
        assert actions == ["applied"] + ["duplicate"] * (THREADS - 1)
        assert {r.user_id for r in results} == {f"u{n}"}


def test_a_link_racing_a_subscription_of_its_customer(store: PostgresStore) -> None:
    """Neither row exists before: the subscription is applied, or left pending and then
    applied by the link, never lost between the two."""
    for n in range(12):
        customer, user = f"cus_{n}", f"u{n}"
        link, sub = StripeLink(customer, user, None, "1"), _sub(f"sub_{n}", customer, "0|1")
        _race(store, (f"l{n}", {"link": link}), (f"s{n}", {"subscription": sub}))
        profile = store.call(ops.get_profile(user_id=user))
        assert profile is not None
        assert (profile.plan, profile.subscription_status) == ("price_a", "active"), n


def test_subscriptions_of_two_customers_of_one_user_racing(
    pg_url: str, schema: str, store: PostgresStore
) -> None:
    """A refresh reads the subscriptions only once it holds the profile's row lock, so after
    any other refresh of the user committed: the subscription that started last is shown,
    whichever event commits last. (A trigger makes each profile update wait a moment, so
    that the two refreshes overlap.)"""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            f'CREATE FUNCTION "{schema}".slow() RETURNS trigger LANGUAGE plpgsql '
            "AS $$BEGIN PERFORM pg_sleep(0.1); RETURN NEW; END$$"
        )
        conn.execute(
            f'CREATE TRIGGER slow BEFORE UPDATE ON "{schema}"."{store.tables.profiles}" '
            "FOR EACH ROW WHEN (NEW.plan IS DISTINCT FROM OLD.plan) "
            f'EXECUTE FUNCTION "{schema}".slow()'
        )
    for n in range(6):
        user = f"u{n}"
        _apply(store, None, link=StripeLink(f"a{n}", user, None, "1"))
        _apply(store, None, link=StripeLink(f"b{n}", user, None, "2"))
        old = _sub(f"sa{n}", f"a{n}", "0|1", plan="price_old")
        new = _sub(f"sb{n}", f"b{n}", "0|1", started=NOW + timedelta(days=1), plan="price_new")
        _race(store, (f"a{n}", {"subscription": old}), (f"b{n}", {"subscription": new}))
        profile = store.call(ops.get_profile(user_id=user))
        assert profile is not None
        assert (profile.plan, profile.stripe_customer_id) == ("price_new", f"b{n}"), n


def test_racing_states_of_one_subscription_keep_the_newest(store: PostgresStore) -> None:
    _apply(store, None, link=StripeLink("cus_1", "u1", None, "1"))
    states = [_sub("sub_1", "cus_1", f"0|{k:02d}", plan=f"price_{k:02d}") for k in range(THREADS)]
    results = _race(store, *[(s.order_key, {"subscription": s}) for s in states])
    assert {r.action for r in results} <= {"applied", "stale"}
    profile = store.call(ops.get_profile(user_id="u1"))
    assert profile is not None and profile.plan == f"price_{THREADS - 1:02d}"


def test_upgrade_from_schema_1(pg_url: str, schema: str, store: PostgresStore) -> None:
    """A version-1 database (no Stripe tables or functions) is upgraded in place by migrate,
    its data kept; running it again changes nothing."""
    store.call(
        ops.charge(
            user_id="u1",
            feature_name="api",
            credits=3,
            event_type="usage",
            limit=None,
            window_start=None,
            now=NOW,
            metadata=None,
            idempotency_key=None,
        )
    )
    t = Tables()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        for suffix in ("stripe_apply", "stripe_batch", "stripe_cursor", "stripe_refresh"):
            conn.execute(f'DROP FUNCTION "{function_name(t, suffix)}"')
        for table in (
            t.stripe_events,
            t.stripe_subscriptions,
            t.stripe_customers,
            t.stripe_exports,
        ):
            conn.execute(f'DROP TABLE "{table}"')
        conn.execute("UPDATE usageflow_schema SET version = 1")
    with pytest.raises(UsageFlowError):
        store.call(ops.advance_stripe_cursor(meter="m", event_id=1))
    assert store.migrate() == SCHEMA_VERSION == 6
    assert _apply(store, "evt_1", link=StripeLink("cus_1", "u1", None, "1")).action == "applied"
    assert store.migrate() == SCHEMA_VERSION  # idempotent: the event is still known
    assert _apply(store, "evt_1").action == "duplicate"
    assert (
        store.call(ops.stripe_export_batch(meter="m", feature_name=None, limit=10))[1][0][1]
        == "cus_1"
    )
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(f'SELECT version FROM "{schema}".usageflow_schema').fetchone()
    assert row == (SCHEMA_VERSION,)


def test_longest_table_names(pg_url: str, schema: str) -> None:
    """With a 48-character events table every derived name still fits PostgreSQL's 63."""
    t = Tables(usage_events="e" * 48)
    assert max(len(t.stripe_exports), len(function_name(t, "stripe_refresh"))) <= 63
    s = PostgresStore(store_url(pg_url, schema), t)
    s.migrate()
    assert _apply(s, "e1", link=StripeLink("cus_1", "u1", None, "1")).action == "applied"
    assert _apply(s, "e2", subscription=_sub("sub_1", "cus_1", "0|1")).action == "applied"
    assert s.call(ops.advance_stripe_cursor(meter="m" * 200, event_id=7)) == 7
    assert s.call(ops.stripe_export_batch(meter="m" * 200, feature_name=None, limit=5)) == (7, [])
    with psycopg.connect(pg_url) as conn:
        names = {
            r[0]
            for r in conn.execute(
                "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s",
                (schema,),
            )
        }
    assert {t.stripe_events, t.stripe_subscriptions, t.stripe_customers, t.stripe_exports} <= names
    s.close()


def _stripe_calls(store: Any) -> list[Callable[[], Any]]:
    return [
        lambda: _apply(store, "e1", link=StripeLink("cus_1", "u1", None, "1")),
        lambda: _apply(store, "e2", subscription=_sub("sub_1", "cus_1", "0|1")),
        lambda: _apply(store, "e2"),  # duplicate
        lambda: store.call(ops.stripe_export_batch(meter="m", feature_name="api", limit=10)),
        lambda: store.call(ops.advance_stripe_cursor(meter="m", event_id=3)),
    ]


def test_each_stripe_method_is_one_round_trip(pg_url: str, schema: str, proxy: PgProxy) -> None:
    store = PostgresStore(via_proxy(pg_url, proxy, schema, pool_size=1))
    store.migrate()
    assert store.connection_check()
    for call in _stripe_calls(store):
        proxy.reset_count()
        call()
        assert proxy.round_trips == 1
    store.close()


def test_each_stripe_method_is_one_rpc(postgrest: PostgrestStandIn, schema: str) -> None:
    postgrest.migrate(schema)
    store = SupabaseStore(postgrest.url, postgrest.service_key, schema=schema)
    for call in _stripe_calls(store):
        before = postgrest.calls
        call()
        assert postgrest.calls - before == 1
    profile = store.call(ops.get_profile(user_id="u1"))
    assert profile is not None and profile.plan == "price_a"
    store.close()


def test_driver_errors_name_the_stripe_tables(pg_url: str, schema: str) -> None:
    store = PostgresStore(store_url(pg_url, schema))  # never migrated
    t = store.tables
    for call, table, operation in (
        (lambda: _apply(store, "e1"), t.stripe_events, "apply_stripe_event"),
        (
            lambda: store.call(ops.stripe_export_batch(meter="m", feature_name=None, limit=1)),
            t.stripe_exports,
            "stripe_export_batch",
        ),
        (
            lambda: store.call(ops.advance_stripe_cursor(meter="m", event_id=1)),
            t.stripe_exports,
            "advance_stripe_cursor",
        ),
    ):
        with pytest.raises(UsageFlowError) as caught:
            call()
        assert caught.value.code is ErrorCodes.USAGE_CONFIG_ERROR
        assert "migrate" in caught.value.message
        assert (caught.value.details["table"], caught.value.details["operation"]) == (
            table,
            operation,
        )
    store.close()
