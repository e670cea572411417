"""PostgreSQL specifics of adopting a database made by the JavaScript package (the rest, on
every SQL store, is in ``tests/conformance/test_adopt_javascript_db.py``)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from tests.support.js_schema import NOW, POSTGRES_DDL, JSDatabase
from tests.support.postgres import store_url
from usageflow import AsyncUsageFlow, ErrorCodes, UsageFlow, UsageFlowError
from usageflow.testing import FakeClock


@pytest.fixture
def js(pg_url: str, schema: str) -> JSDatabase:
    db = JSDatabase("postgresql", store_url(pg_url, schema), pg_url=pg_url, schema=schema)
    db.create()
    db.fill()
    return db


def test_the_javascript_package_can_read_but_not_record_usage_afterwards(js: JSDatabase) -> None:
    """What docs/stores.md states: after the adoption the JS package's reads (its SUM over
    the events, its plans, limits and adjustments) and its plan and adjustment writes still
    work, but recording usage fails: an event written without its running total would make
    usageflow's counters wrong, so the insert is refused (running_total is NOT NULL)."""
    flow = UsageFlow(js.url, clock=FakeClock(NOW))
    flow.migrate()
    with js.connect() as conn:
        total = conn.execute(
            "SELECT SUM(credits_used) FROM usage_events WHERE user_id = 'dave' "
            "AND feature_name = 'api' AND timestamp >= '2024-03-01'"
        ).fetchone()
        assert total == (95,)
        assert conn.execute(
            "SELECT limit_value FROM usage_feature_limits l JOIN user_plans p "
            "ON p.id = l.plan_id WHERE p.is_free AND l.feature_name = 'api'"
        ).fetchone() == (100,)
        conn.execute(
            "INSERT INTO user_limit_adjustments (user_id, feature_name, amount, type, "
            "start_date, end_date) VALUES ('dave', 'api', 10, 'recurring', now(), "
            "now() + interval '1 day')"
        )
        conn.execute("UPDATE user_plans SET price_amount = 30 WHERE stripe_price_id = 'price_pro'")
        conn.execute(  # saas-subscription-helper's sync
            "UPDATE profiles SET plan = 'price_pro', subscription_status = 'active', "
            "current_period_end = '2024-05-05T00:00:00Z' WHERE id = 'bob'"
        )
        with pytest.raises(psycopg.errors.NotNullViolation, match="running_total"):
            conn.execute(
                "INSERT INTO usage_events (user_id, feature_name, credits_used, event_type) "
                "VALUES ('dave', 'api', 1, 'usage')"
            )
    assert flow.get_total_usage("dave", "api") == 95
    plan = flow.get_user_plan("bob")
    assert plan is not None and plan.name == "Pro"
    flow.close()


def test_a_profiles_table_keyed_by_uuid_is_refused_with_what_to_do(
    pg_url: str, schema: str
) -> None:
    """Supabase apps often key profiles by auth.users' uuid; usageflow's user ids are TEXT."""
    db = JSDatabase("postgresql", store_url(pg_url, schema), pg_url=pg_url, schema=schema)
    with db.connect() as conn:
        conn.execute(POSTGRES_DDL)
        conn.execute("CREATE TABLE profiles (id UUID PRIMARY KEY, email TEXT, plan TEXT)")
    shape = db.shape()
    flow = UsageFlow(db.url)
    with pytest.raises(UsageFlowError) as caught:
        flow.migrate()
    error = caught.value
    assert error.code is ErrorCodes.USAGE_CONFIG_ERROR and error.details["table"] == "profiles"
    assert "TEXT id" in error.message and "uuid" in error.message
    assert "profiles_table=" in error.message
    assert db.shape() == shape
    flow.close()
    flow = UsageFlow(db.url, profiles_table="usageflow_profiles")
    flow.migrate()  # with a profiles table of its own, the rest is adopted
    assert flow.get_plans() == []
    flow.close()


def test_the_async_flow_adopts_too(js: JSDatabase) -> None:
    before = js.total_usage("dave", "api", None)

    async def main() -> tuple[int, bool]:
        flow = AsyncUsageFlow(js.url, clock=FakeClock(NOW))
        await flow.migrate()
        try:
            used = await flow.get_total_usage("dave", "api")
            return used, (await flow.consume("dave", "api", 6)).allowed
        finally:
            await flow.aclose()

    assert asyncio.run(main()) == (before, False) and before == 95
