"""``migrate()`` adopts a database made by the JavaScript package (issue #13, item 6), on SQLite
and PostgreSQL: every row is kept, and every number ``get_total_usage`` and ``fetch_usage``
give afterwards is the number the JS tables gave before.

"Before" is computed from the JS tables alone, with plain SQL, the way the spec defines it
(``tests/support/js_schema.py`` says how): UsageFlow cannot read the JS schema before
migrating it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.js_schema import (
    FEATURES,
    NOW,
    POSTGRES_DDL,
    PROFILES_DDL,
    SQLITE_DDL,
    TABLES,
    USERS,
    UTC,
    WINDOWS,
    JSDatabase,
    moment,
)
from tests.support.postgres import fresh_schema, store_url
from tests.support.stores import postgres_url
from usageflow import ErrorCodes, UsageFlow, UsageFlowError, ops
from usageflow.testing import FakeClock

DIALECTS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@contextmanager
def _database(dialect: str, tmp_path: Path, name: str) -> Iterator[JSDatabase]:
    """An empty database of ``dialect`` (a file, or a fresh PostgreSQL schema)."""
    if dialect == "sqlite":
        yield JSDatabase("sqlite", f"sqlite:///{tmp_path / name}.db")
        return
    url = postgres_url()
    if url is None:
        pytest.skip("PostgreSQL tests need USAGEFLOW_TEST_POSTGRES_URL")
    with fresh_schema(url) as schema:
        yield JSDatabase("postgresql", store_url(url, schema), pg_url=url, schema=schema)


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def js(dialect: str, tmp_path: Path) -> Iterator[JSDatabase]:
    """A database made by the JS package, full of its data."""
    with _database(dialect, tmp_path, "js") as db:
        db.create()
        db.fill()
        yield db


def _flow(db: JSDatabase) -> UsageFlow:
    return UsageFlow(db.url, enable_user_adjustments=True, clock=FakeClock(NOW), cache_ttl=0)


def _numbers(flow: UsageFlow) -> dict[tuple[str, str, str | None], tuple[int, dict[str, Any]]]:
    return {
        (user, feature, period): (
            flow.get_total_usage(user, feature, period),
            # the spec's fields: the JavaScript package has no credit grants
            flow.fetch_usage(user, feature, period).model_dump(exclude={"credit_balance"}),
        )
        for user in USERS
        for feature in FEATURES
        for period in WINDOWS
    }


def _rows(db: JSDatabase) -> dict[str, dict[Any, dict[str, Any]]]:
    return {table: db.rows(table) for table in TABLES}


def test_every_number_is_the_same_after_adoption(js: JSDatabase) -> None:
    before = {
        (user, feature, period): (
            js.total_usage(user, feature, period),
            js.fetch_usage(user, feature, period),
        )
        for user in USERS
        for feature in FEATURES
        for period in WINDOWS
    }
    # The data is not trivial: refunds, resets, adjustments and unlimited features show.
    assert before["alice", "api", None] == (
        48,
        {"current": 48, "limit": 1250, "remaining": 1202, "is_unlimited": False},
    )
    assert before["bob", "api", "current_week"][0] == 12  # the reset is before the week
    assert before["bob", "api", "lifetime"][0] == 27  # lifetime counts from the last reset
    assert before["carol", "exports", None][1]["remaining"] == 0  # 3 of 5 - 2
    assert before["alice", "exports", None][1]["is_unlimited"]
    since_reset = js.since_reset("bob", "api")
    assert since_reset == (27, datetime(2024, 3, 11, 9, tzinfo=UTC), 130)

    flow = _flow(js)
    flow.migrate()
    assert _numbers(flow) == before
    after = flow.get_usage_since_reset("bob", "api")
    assert (after.total, after.last_reset_date, after.pre_reset_total) == since_reset
    for user in USERS:
        for feature in FEATURES:
            counter, ledger = flow.store.call(ops.ledger_check(user_id=user, feature_name=feature))
            assert counter == ledger, (user, feature)
    flow.close()


def test_every_row_is_kept(js: JSDatabase) -> None:
    before = _rows(js)
    flow = _flow(js)
    flow.migrate()
    after = _rows(js)
    for table, rows in before.items():
        assert after[table].keys() == rows.keys(), table
        for key, row in rows.items():
            kept = {column: after[table][key][column] for column in row}
            expected = row
            if table == "user_plans" and row["is_free"] is None:
                expected = {**row, "is_free": False}  # NULL read as false, as the JS package
            assert kept == expected, (table, key)
    # The columns usageflow adds, with their defaults.
    assert {r["payment_link_url"] for r in after["user_plans"].values()} == {None}
    assert {r["period"] for r in after["usage_feature_limits"].values()} == {"current_month"}
    assert {r["idempotency_key"] for r in after["usage_events"].values()} == {None}
    # saas-subscription-helper's own columns stay.
    assert after["profiles"]["alice"]["payment_last4"] == "4242"
    plans = {p.name: p for p in flow.get_plans()}
    assert plans["Pro"].limits["api"].limit_value == 1000 and not plans["Team"].is_free
    listed = flow.list_events("alice", "api", limit=3)
    assert [e.credits_used for e in listed] == [2, 6, -5]
    assert listed[2].event_type == "credit" and listed[2].metadata == {"reason": "service_error"}
    flow.close()


def test_charges_are_enforced_against_the_history(js: JSDatabase) -> None:
    flow = _flow(js)
    flow.migrate()
    last_event, last_plan = max(js.rows("usage_events")), max(js.rows("user_plans"))
    usage = flow.fetch_usage("dave", "api")
    assert (usage.current, usage.limit) == (95, 100)
    assert not flow.consume("dave", "api", 6).allowed
    assert flow.consume("dave", "api", 5).allowed
    assert not flow.consume("dave", "api", 1).allowed
    assert flow.fetch_usage("dave", "api").remaining == 0
    event = flow.increment_usage("alice", "api", 3, idempotency_key="job-1")
    assert event.id > last_event and event.timestamp == NOW
    assert flow.increment_usage("alice", "api", 3, idempotency_key="job-1").replayed
    assert flow.get_total_usage("alice", "api") == 48 + 3
    with flow.reserve("bob", "api", 10) as reservation:
        assert flow.fetch_usage("bob", "api").current == 27 + 10
    assert reservation.settled
    flow.reset_feature_usage("bob", "api")
    assert flow.get_total_usage("bob", "api") == 0
    plan = flow.create_plan("Scale", stripe_price_id="price_scale", limits={"api": 9})
    assert plan.id > last_plan
    flow.close()


def test_migrating_again_changes_nothing(js: JSDatabase) -> None:
    flow = _flow(js)
    version = flow.migrate()
    flow.consume("dave", "api", 1)
    shape, rows, numbers = js.shape(), _rows(js), _numbers(flow)
    flow.close()
    flow = _flow(js)
    assert flow.migrate() == version
    assert js.shape() == shape and _rows(js) == rows and _numbers(flow) == numbers
    flow.close()


def test_the_adopted_database_has_usageflows_shape(js: JSDatabase, tmp_path: Path) -> None:
    """Every table, column, type, default, constraint and index of a new database is there,
    by the same names: a later version of the schema upgrades an adopted database as it
    upgrades one it made. What the JS tables have beyond it stays: saas-subscription-helper's
    profile columns and, on PostgreSQL, the spec's indexes."""
    flow = _flow(js)
    flow.migrate()
    flow.close()
    adopted = js.shape()
    with _database(js.dialect, tmp_path, "new") as new:
        fresh = _flow(new)
        fresh.migrate()
        fresh.close()
        made = new.shape()
    if js.dialect == "sqlite":
        extra = ', "payment_last4" TEXT, "trial" BOOLEAN)'
        assert adopted.pop("profiles") == made.pop("profiles")[:-1] + extra
        assert adopted == made
        return
    assert adopted.pop("profiles") == {
        **made.pop("profiles"),
        "payment_last4": ("text", False, None),
        "trial": ("boolean", False, None),
    }
    js_indexes = {
        "usage_events indexes": {
            "idx_usage_events_user_feature",
            "idx_usage_events_timestamp",
            "idx_usage_events_type",
        },
        "user_limit_adjustments indexes": {
            "idx_limit_adjustments_user",
            "idx_limit_adjustments_dates",
        },
    }
    for key, names in js_indexes.items():
        assert set(adopted[key]) - set(made[key]) == names
        for name in names:
            del adopted[key][name]
    assert adopted == made


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (
            "UPDATE usage_feature_limits SET limit_value = -5 WHERE id = 2",
            ["usage_feature_limits", "id=2", "limit_value -5"],
        ),
        (
            "INSERT INTO usage_feature_limits (plan_id, feature_name, limit_value) "
            "VALUES (1, 'api', 7)",
            ["usage_feature_limits", "id=1", "id=9", "api"],
        ),
        (
            "UPDATE usage_events SET timestamp = NULL WHERE id = 4",
            ["usage_events", "id=4", "timestamp"],
        ),
        (
            "UPDATE user_limit_adjustments SET end_date = start_date WHERE id = 3",
            ["user_limit_adjustments", "id=3", "end_date"],
        ),
        (
            "UPDATE usage_events SET metadata = '[1]' WHERE id = 5",
            ["usage_events", "id=5", "not a JSON object"],
        ),
    ],
    ids=[
        "negative-limit",
        "duplicate-limit",
        "event-without-time",
        "empty-adjustment",
        "metadata-not-an-object",
    ],
)
def test_a_row_usageflow_cannot_accept_fails_the_migration_and_changes_nothing(
    js: JSDatabase, damage: str, named: list[str]
) -> None:
    with js.connect() as conn:
        conn.execute(damage)
    shape, rows = js.shape(), _rows(js)
    flow = _flow(js)
    with pytest.raises(UsageFlowError) as caught:
        flow.migrate()
    error = caught.value
    assert error.code is ErrorCodes.USAGE_CONFIG_ERROR and not error.is_store_failure
    assert error.details["table"] == named[0]
    for text in named:
        assert text in error.message, (text, error.message)
    assert js.shape() == shape and _rows(js) == rows
    flow.close()


def test_custom_table_names_are_adopted(tmp_path: Path, dialect: str) -> None:
    """The JS package's ``userPlansTable`` ... options: the same names given to UsageFlow."""
    names = {
        "user_limit_adjustments": "acme_adjustments",
        "usage_feature_limits": "acme_limits",
        "usage_events": "acme_events",
        "user_plans": "acme_plans",
        "profiles": "acme_profiles",
    }
    with _database(dialect, tmp_path, "custom") as db:
        ddl = (SQLITE_DDL if dialect == "sqlite" else POSTGRES_DDL) + PROFILES_DDL
        for default, custom in names.items():
            ddl = ddl.replace(default, custom)
        with db.connect() as conn:
            if dialect == "sqlite":
                conn.executescript(ddl)
            else:
                conn.execute(ddl)
            plan = db.insert(conn, "acme_plans", name="Free", is_free=True)
            db.insert(conn, "acme_limits", plan_id=plan, feature_name="api", limit_value=10)
            for credits, at in ((3, "2024-02-10 10:00:00"), (4, "2024-03-10 10:00:00")):
                db.insert(
                    conn,
                    "acme_events",
                    user_id="u1",
                    feature_name="api",
                    credits_used=credits,
                    timestamp=at if dialect == "sqlite" else db.param(moment(at)),
                )
        flow = UsageFlow(
            db.url,
            clock=FakeClock(NOW),
            user_plans_table="acme_plans",
            usage_events_table="acme_events",
            usage_feature_limits_table="acme_limits",
            user_limit_adjustments_table="acme_adjustments",
            profiles_table="acme_profiles",
        )
        flow.migrate()
        assert flow.get_total_usage("u1", "api") == 4
        assert flow.consume("u1", "api", 6).allowed and not flow.consume("u1", "api").allowed
        flow.close()
        assert not set(db.shape()) & set(names), "nothing is made under the default names"


def test_a_view_over_the_tables(js: JSDatabase) -> None:
    """SQLite keeps a view working across the rebuild; PostgreSQL cannot change the type of a
    column a view uses, so the migration names the view and changes nothing, and goes
    through once the view is dropped (to be created again after)."""
    view = (
        "CREATE VIEW monthly AS SELECT user_id, SUM(credits_used) AS total FROM usage_events "
        "GROUP BY user_id"
    )
    with js.connect() as conn:
        conn.execute(view)
    totals = js.all("SELECT user_id, total FROM monthly ORDER BY user_id")
    flow = _flow(js)
    if js.dialect == "postgresql":
        shape = js.shape()
        with pytest.raises(UsageFlowError) as caught:
            flow.migrate()
        assert "view monthly uses its column" in caught.value.message
        assert "drop the view, migrate, then create the view again" in caught.value.message
        assert js.shape() == shape
        with js.connect() as conn:
            conn.execute("DROP VIEW monthly")
        flow.migrate()
        with js.connect() as conn:
            conn.execute(view)
    else:
        flow.migrate()
    assert js.all("SELECT user_id, total FROM monthly ORDER BY user_id") == totals
    flow.close()
