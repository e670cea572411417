"""Credit grants on PostgreSQL (and Supabase, which calls the same functions): spent after the
plan's allowance, the one expiring first first; refunds given back in the reverse order;
reservations committed beyond the allowance split between the plan and the grants; and an
upgrade of a version 5 schema, which keeps every event and counter."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from tests.support.postgres import store_url
from tests.support.postgrest import PostgrestStandIn
from usageflow import UsageFlow, ops
from usageflow.stores.base import Store
from usageflow.stores.postgres import PostgresStore
from usageflow.stores.sql import SCHEMA_VERSION
from usageflow.stores.supabase import SupabaseStore
from usageflow.testing import FakeClock

NOW = datetime(2024, 1, 15, 12, 0, tzinfo=timezone.utc)
JAN = datetime(2024, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(params=["postgres", "supabase"])
def store(
    request: pytest.FixtureRequest, pg_url: str, schema: str, postgrest: PostgrestStandIn
) -> Iterator[Store]:
    built: Store
    if request.param == "postgres":
        built = PostgresStore(store_url(pg_url, schema))
        built.migrate()
    else:
        postgrest.migrate(schema)
        built = SupabaseStore(postgrest.url, postgrest.service_key, schema=schema)
    yield built
    built.close()


def _flow(store: Store, clock: FakeClock) -> UsageFlow:
    flow = UsageFlow(store, clock=clock)
    flow.create_plan("Free", is_free=True, limits={"tokens": 10})
    return flow


def _three_grants(flow: UsageFlow) -> dict[str, int]:
    """Grants of 5 tokens each: one that never expires, one expiring in 10 days, one in 3 (in
    that order, so that the spending order is not the order of creation)."""
    forever = flow.grant_credits("u1", "tokens", 5, reason="forever")
    late = flow.grant_credits("u1", "tokens", 5, expires_at=NOW + timedelta(days=10))
    soon = flow.grant_credits("u1", "tokens", 5, expires_at=NOW + timedelta(days=3))
    return {"forever": forever.id, "late": late.id, "soon": soon.id}


def _remaining(flow: UsageFlow, ids: dict[str, int]) -> dict[str, int]:
    by_id = {g.id: g.remaining for g in flow.list_grants("u1", "tokens")}
    return {name: by_id[grant_id] for name, grant_id in ids.items()}


def test_the_plan_pays_first_then_the_grant_expiring_first_and_those_without_expiry_last(
    store: Store,
) -> None:
    flow = _flow(store, FakeClock(NOW))
    ids = _three_grants(flow)

    first = flow.consume("u1", "tokens", 8)  # the plan's allowance: no grant touched
    assert first.allowed and (first.current, first.remaining, first.credit_balance) == (8, 17, 15)
    assert _remaining(flow, ids) == {"forever": 5, "late": 5, "soon": 5}

    assert flow.consume("u1", "tokens", 6).allowed  # 2 from the plan, 4 from "soon"
    assert _remaining(flow, ids) == {"forever": 5, "late": 5, "soon": 1}
    assert flow.consume("u1", "tokens", 4).allowed  # "soon"'s last, then "late"
    assert _remaining(flow, ids) == {"forever": 5, "late": 2, "soon": 0}
    last = flow.consume("u1", "tokens", 4)  # "late"'s last, then the grant without expiry
    assert (last.current, last.remaining, last.credit_balance) == (22, 3, 3)
    assert _remaining(flow, ids) == {"forever": 3, "late": 0, "soon": 0}

    usage = flow.fetch_usage("u1", "tokens")
    assert (usage.current, usage.limit, usage.remaining, usage.credit_balance) == (22, 10, 3, 3)
    assert flow.get_credit_balance("u1", "tokens") == 3
    refused = flow.consume("u1", "tokens", 4)
    assert not refused.allowed and (refused.current, refused.remaining) == (22, 3)
    assert _remaining(flow, ids) == {"forever": 3, "late": 0, "soon": 0}
    assert flow.consume("u1", "tokens", 3).allowed
    assert flow.fetch_usage("u1", "tokens").remaining == 0
    assert store.call(ops.ledger_check(user_id="u1", feature_name="tokens")) == (25, 25)


def test_an_expired_grant_is_not_spent_and_the_next_period_starts_from_the_plan(
    store: Store,
) -> None:
    clock = FakeClock(NOW)
    flow = _flow(store, clock)
    ids = _three_grants(flow)
    assert flow.consume("u1", "tokens", 10).allowed
    clock.advance(days=4)  # "soon" has expired, unspent
    assert flow.fetch_usage("u1", "tokens").credit_balance == 10
    assert flow.consume("u1", "tokens", 6).allowed  # "late" then "forever"
    assert _remaining(flow, ids) == {"forever": 4, "late": 0, "soon": 5}
    clock.set(datetime(2024, 2, 1, 9, tzinfo=timezone.utc))  # a new month: the plan again
    usage = flow.fetch_usage("u1", "tokens")
    assert (usage.current, usage.remaining, usage.credit_balance) == (0, 14, 4)
    assert flow.consume("u1", "tokens", 10).allowed
    assert _remaining(flow, ids) == {"forever": 4, "late": 0, "soon": 5}


def test_a_refund_gives_back_to_the_grants_in_the_reverse_order(store: Store) -> None:
    flow = _flow(store, FakeClock(NOW))
    ids = _three_grants(flow)
    assert flow.consume("u1", "tokens", 10).allowed
    assert flow.consume("u1", "tokens", 12).allowed  # "soon" 5, "late" 5, "forever" 2
    assert _remaining(flow, ids) == {"forever": 3, "late": 0, "soon": 0}

    # Given back to "forever" first, then "late".
    flow.adjust_usage("u1", "tokens", -4, {"reason": "refund"})
    assert _remaining(flow, ids) == {"forever": 5, "late": 2, "soon": 0}
    usage = flow.fetch_usage("u1", "tokens")
    assert (usage.current, usage.remaining, usage.credit_balance) == (18, 7, 7)

    # What grants paid (8) goes back to them, "soon" last; the rest to the plan's allowance.
    flow.adjust_usage("u1", "tokens", -10, {"reason": "refund"})
    assert _remaining(flow, ids) == {"forever": 5, "late": 5, "soon": 5}
    usage = flow.fetch_usage("u1", "tokens")
    assert (usage.current, usage.remaining, usage.credit_balance) == (8, 17, 15)
    # Tracking is split as a decision would be: the plan's 2, then the grants in order.
    flow.increment_usage("u1", "tokens", 10)
    assert _remaining(flow, ids) == {"forever": 5, "late": 2, "soon": 0}
    usage = flow.fetch_usage("u1", "tokens")
    assert (usage.current, usage.remaining, usage.credit_balance) == (18, 7, 7)
    # ... and recorded beyond what the grants hold.
    flow.increment_usage("u1", "tokens", 20)
    assert _remaining(flow, ids) == {"forever": 0, "late": 0, "soon": 0}
    usage = flow.fetch_usage("u1", "tokens")
    assert (usage.current, usage.remaining, usage.credit_balance) == (38, 0, 0)


def test_a_reservation_committed_beyond_the_allowance_draws_from_the_grants(
    store: Store, pg_url: str, schema: str
) -> None:
    flow = _flow(store, FakeClock(NOW))
    grant = flow.grant_credits("u1", "tokens", 20)
    held = flow.reserve("u1", "tokens", 25)  # fits: 10 from the plan, 15 from the grant
    assert (held.decision.remaining, held.decision.credit_balance) == (5, 20)
    assert flow.list_grants("u1")[0].remaining == 20  # a hold draws nothing
    assert not flow.consume("u1", "tokens", 6).allowed
    event = held.commit(27)  # more than held: still split, the plan's share first
    assert [g.remaining for g in flow.list_grants("u1")] == [3]
    usage = flow.fetch_usage("u1", "tokens")
    assert (usage.current, usage.remaining, usage.credit_balance) == (27, 3, 3)

    small = flow.reserve("u1", "tokens", 2)
    small.commit()  # from the grant: the plan's allowance is spent
    assert [g.remaining for g in flow.list_grants("u1")] == [1]
    with psycopg.connect(pg_url) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        rows = conn.execute(
            "SELECT credits_used, granted, grant_running FROM usage_events ORDER BY id"
        ).fetchall()
    assert rows == [(27, 17, 17), (2, 2, 19)]
    assert event.credits_used == 27 and grant.credits == 20


def test_grants_and_packs_round_trip(store: Store) -> None:
    clock = FakeClock(NOW)
    flow = _flow(store, clock)
    first = flow.grant_credits(
        "u1", "tokens", 7, reason="welcome", idempotency_key="g-1", metadata={"by": "ops"}
    )
    again = flow.grant_credits("u1", "tokens", 7, idempotency_key="g-1")
    assert again.replayed and again.model_dump(exclude={"replayed"}) == first.model_dump(
        exclude={"replayed"}
    )
    assert (first.source, first.reason, first.metadata, first.created_at) == (
        "manual",
        "welcome",
        {"by": "ops"},
        NOW,
    )
    other = flow.grant_credits("u1", "api", 1, expires_at=NOW + timedelta(hours=1))
    assert [g.id for g in flow.list_grants("u1")] == [other.id, first.id]
    assert [g.id for g in flow.list_grants("u1", "api")] == [other.id]
    assert flow.list_grants("u2") == []

    pack = flow.create_credit_pack(
        "Top-up", credits={"tokens": 1000, "api": 5}, stripe_price_id="price_topup"
    )
    assert list(pack.credits) == ["api", "tokens"]
    updated = flow.create_credit_pack(
        "Top-up XL", credits={"tokens": 5000}, stripe_price_id="price_topup", expires_in_days=30
    )
    assert updated.id == pack.id and updated.expires_in_days == 30
    assert [(p.name, p.credits) for p in flow.list_credit_packs()] == [
        ("Top-up XL", {"tokens": 5000})
    ]


def _columns(conn: psycopg.Connection[Any], table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s",
        (table,),
    ).fetchall()
    return {name for (name,) in rows}


def test_upgrade_from_schema_5_keeps_events_and_counters(pg_url: str, schema: str) -> None:
    clock = FakeClock(datetime(2023, 12, 20, 9, tzinfo=timezone.utc))
    store = PostgresStore(store_url(pg_url, schema))
    store.migrate()
    flow = UsageFlow(store, clock=clock)
    flow.create_plan("Free", is_free=True, limits={"tokens": 10, "api": 100})
    flow.consume("u1", "tokens", 4)  # December: before the window below
    clock.set(NOW)
    flow.consume("u1", "tokens", 3)  # keeps January's start (and the usage before it) cached
    flow.increment_usage("u1", "api", 7)
    flow.reset_feature_usage("u1", "api")
    flow.increment_usage("u1", "api", 2)
    events = flow.list_events("u1")
    counters_sql = (
        "SELECT user_id, feature_name, total, last_ts, last_reset_at, reset_base, "
        "reset_pre_total, win_start, win_base FROM usage_events_counters ORDER BY 1, 2"
    )
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        counters = conn.execute(counters_sql).fetchall()
        assert counters[1][:3] == ("u1", "tokens", 7) and counters[1][7] == JAN
        # What version 5 had: no grant columns or tables, a `used` answering a number, and a
        # charge without p_force (its overload must go).
        conn.execute(
            "DROP TABLE usage_events_grants, usage_events_packs, usage_events_members CASCADE"
        )
        conn.execute("ALTER TABLE usage_events_holds DROP COLUMN pool_id")
        conn.execute("ALTER TABLE profiles DROP COLUMN seats")
        conn.execute("ALTER TABLE usage_feature_limits DROP COLUMN per_seat")
        conn.execute("ALTER TABLE usage_events_stripe_subs DROP COLUMN quantity")
        conn.execute("ALTER TABLE usage_events DROP COLUMN granted, DROP COLUMN grant_running")
        conn.execute(
            "ALTER TABLE usage_events_counters DROP COLUMN grant_total, "
            "DROP COLUMN reset_grant_base, DROP COLUMN win_grant_base"
        )
        conn.execute("DROP FUNCTION usage_events_used(usage_events_counters, timestamptz)")
        conn.execute(
            "CREATE FUNCTION usage_events_used(c usage_events_counters, p_window_start "
            "timestamptz) RETURNS numeric LANGUAGE sql AS 'SELECT 0::numeric'"
        )
        charge = (
            "usage_events_charge(text, text, bigint, text, bigint, timestamptz, timestamptz, "
            "jsonb, text, integer[], timestamptz"
        )
        charge_v5 = f"{charge})"
        conn.execute(f"DROP FUNCTION {charge}, boolean, text, bigint)")
        conn.execute(
            f"CREATE FUNCTION {charge_v5} RETURNS jsonb LANGUAGE sql AS 'SELECT NULL::jsonb'"
        )
        conn.execute("UPDATE usageflow_schema SET version = 5")

    assert store.migrate() == SCHEMA_VERSION == 6
    assert store.migrate() == SCHEMA_VERSION  # idempotent
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        assert conn.execute(counters_sql).fetchall() == counters
        assert {"granted", "grant_running"} <= _columns(conn, "usage_events")
        assert {"grant_total", "reset_grant_base", "win_grant_base"} <= _columns(
            conn, "usage_events_counters"
        )
        assert conn.execute(
            "SELECT sum(granted), sum(grant_running) FROM usage_events"
        ).fetchone() == (0, 0)
        assert conn.execute(
            "SELECT version FROM usageflow_schema WHERE name = 'usage_events'"
        ).fetchone() == (6,)
        assert conn.execute(f"SELECT to_regprocedure('{charge_v5}')").fetchone() == (None,)
        returns = conn.execute(
            "SELECT prorettype::regtype::text FROM pg_proc "
            "WHERE oid = 'usage_events_used(usage_events_counters, timestamptz)'::regprocedure"
        ).fetchone()
        assert returns == ("numeric[]",)

    upgraded = UsageFlow(store, clock=clock)
    assert upgraded.list_events("u1") == events
    assert upgraded.fetch_usage("u1", "tokens").current == 3  # the cached window, upgraded
    assert upgraded.fetch_usage("u1", "api").current == 2  # since the reset
    upgraded.grant_credits("u1", "tokens", 5)
    decision = upgraded.consume("u1", "tokens", 9)  # 7 from the plan, 2 from the grant
    assert decision.allowed and (decision.remaining, decision.credit_balance) == (3, 3)
    assert upgraded.list_grants("u1")[0].remaining == 3
    assert store.call(ops.ledger_check(user_id="u1", feature_name="tokens")) == (16, 16)
    store.close()
