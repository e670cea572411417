"""Values through PostgreSQL and Supabase: metadata round trips, moments independent of the
session time zone, and what ``jsonb`` cannot hold refused as invalid input."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from tests.support.postgres import store_url
from tests.support.postgrest import PostgrestStandIn
from usageflow import ErrorCodes, UsageFlow, UsageFlowError, ops
from usageflow.stores.base import Store
from usageflow.stores.postgres import PostgresStore
from usageflow.stores.supabase import SupabaseStore
from usageflow.testing import FakeClock

MOMENT = datetime(2024, 3, 10, 6, 59, 59, 123456, tzinfo=timezone.utc)


@pytest.fixture(params=["postgres", "supabase"])
def store(
    request: pytest.FixtureRequest, pg_url: str, schema: str, postgrest: PostgrestStandIn
) -> Iterator[Store]:
    built: Store
    if request.param == "postgres":
        # A session time zone far from UTC: results must not depend on it.
        built = PostgresStore(store_url(pg_url, schema, options="-c TimeZone=Asia/Kolkata"))
        built.migrate()
    else:
        postgrest.migrate(schema)
        built = SupabaseStore(postgrest.url, postgrest.service_key, schema=schema)
    yield built
    built.close()


def test_metadata_and_moments_round_trip(store: Store) -> None:
    flow = UsageFlow(store, clock=FakeClock(MOMENT))
    metadata = {"model": "gpt-4o", "ünï": "😀 \\u0000 literal", "n": [1, 2.5, None, True], "d": {}}
    event = flow.increment_usage("u1", "api", credits_used=3, metadata=metadata)
    assert event.metadata == metadata and event.timestamp == MOMENT
    (listed,) = flow.list_events("u1", "api")
    assert listed == event
    stats = flow.get_usage_stats("u1", "api", period="current_month", group_by="hour")
    assert stats.total == 3


@pytest.mark.parametrize("bad", [{"s": "a\x00b"}, {"k\x00": 1}, {"s": "\ud800"}])
def test_metadata_jsonb_cannot_hold_is_invalid_input(store: Store, bad: dict[str, object]) -> None:
    flow = UsageFlow(store, clock=FakeClock(MOMENT))
    with pytest.raises(UsageFlowError) as caught:
        flow.increment_usage("u1", "api", metadata=bad)
    assert caught.value.code is ErrorCodes.USAGE_INVALID_PARAMS
    assert store.call(ops.ledger_check(user_id="u1", feature_name="api")) == (0, 0)
