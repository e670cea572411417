"""Pure pieces: periods, plan resolution, configuration, store URLs, logging, errors."""

from __future__ import annotations

import logging
import pickle
from datetime import datetime, timezone

import pytest

import usageflow
from usageflow import ErrorCodes, UsageFlow, UsageFlowError
from usageflow.periods import GroupBy, Period, add_months, bucket_starts, window_for
from usageflow.stores import open_store, redact_url

UTC = timezone.utc


def d(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        (Period.CURRENT_MONTH, d(2024, 2, 29, 23), d(2024, 2, 1), d(2024, 3, 1)),
        (Period.CURRENT_MONTH, d(2024, 12, 31), d(2024, 12, 1), d(2025, 1, 1)),
        (Period.CURRENT_WEEK, d(2024, 1, 14, 23), d(2024, 1, 8), d(2024, 1, 15)),
        (Period.CURRENT_WEEK, d(2024, 1, 15), d(2024, 1, 15), d(2024, 1, 22)),
        (Period.DAY, d(2024, 3, 10, 5), d(2024, 3, 10), d(2024, 3, 11)),
        (Period.LAST_30_DAYS, d(2024, 3, 1), d(2024, 1, 31), None),
        (Period.LAST_28_DAYS, d(2024, 3, 1), d(2024, 2, 2), None),
        (Period.LIFETIME, d(2024, 3, 1), None, None),
        (Period.BILLING_CYCLE, d(2024, 3, 1), d(2024, 3, 1), d(2024, 4, 1)),
    ],
)
def test_windows(
    period: Period, now: datetime, start: datetime | None, end: datetime | None
) -> None:
    window = window_for(period, now)
    assert (window.start, window.end) == (start, end)


def test_billing_cycle_anchors_and_clamps() -> None:
    anchor = d(2023, 1, 31, 9)
    assert window_for(Period.BILLING_CYCLE, d(2023, 2, 15), cycle_start=anchor).start == anchor
    w = window_for(Period.BILLING_CYCLE, d(2023, 3, 1), cycle_start=anchor)
    assert (w.start, w.end) == (d(2023, 2, 28, 9), d(2023, 3, 31, 9))
    w = window_for(Period.BILLING_CYCLE, d(2024, 2, 29, 10), cycle_start=anchor)
    assert (w.start, w.end) == (d(2024, 2, 29, 9), d(2024, 3, 31, 9))
    # Stripe's own period wins while it holds.
    w = window_for(
        Period.BILLING_CYCLE, d(2024, 5, 3), cycle_start=d(2024, 5, 2), cycle_end=d(2024, 5, 9)
    )
    assert (w.start, w.end) == (d(2024, 5, 2), d(2024, 5, 9))
    # A cycle that starts in the future (clock skew): the previous anchored cycle.
    w = window_for(Period.BILLING_CYCLE, d(2024, 5, 1), cycle_start=d(2024, 5, 2))
    assert (w.start, w.end) == (d(2024, 4, 2), d(2024, 5, 2))


def test_add_months_and_buckets() -> None:
    assert add_months(d(2024, 1, 31), 1) == d(2024, 2, 29)
    assert add_months(d(2024, 2, 29), 12) == d(2025, 2, 28)
    assert add_months(d(2024, 1, 15), -1) == d(2023, 12, 15)
    weeks = list(bucket_starts(d(2024, 1, 1), d(2024, 1, 31), GroupBy.WEEK))
    assert weeks[0] == d(2024, 1, 1) and weeks[-1] == d(2024, 1, 29) and len(weeks) == 5
    months = list(bucket_starts(d(2023, 11, 30), d(2024, 2, 1), GroupBy.MONTH))
    assert months == [d(2023, 11, 1), d(2023, 12, 1), d(2024, 1, 1), d(2024, 2, 1)]


@pytest.mark.parametrize(
    "name", ["", "1abc", "user plans", "plans;drop", 'x"y', "a" * 49, "ünïcode", "a.b"]
)
def test_bad_table_names_fail_at_construction(name: str) -> None:
    with pytest.raises(UsageFlowError) as err:
        UsageFlow("memory://", user_plans_table=name)
    assert err.value.code is ErrorCodes.USAGE_CONFIG_ERROR


def test_custom_table_names_work_on_sqlite(tmp_path: object) -> None:
    flow = UsageFlow(
        f"sqlite:///{tmp_path}/c.db",
        user_plans_table="custom_user_plans",
        usage_events_table="custom_usage_events",
        usage_feature_limits_table="custom_feature_limits",
        user_limit_adjustments_table="custom_limit_adjustments",
        profiles_table="accounts",
    )
    flow.create_plan("Free", is_free=True, limits={"x": 1})
    assert flow.consume("u", "x").allowed
    with flow.store._tx("t", "", write=False) as c:  # type: ignore[attr-defined]
        names = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"custom_user_plans", "custom_usage_events", "accounts"} <= names
    assert "usage_events" not in names


def test_a_new_sqlite_ledger_numbers_events_without_autoincrement(tmp_path: object) -> None:
    flow = UsageFlow(f"sqlite:///{tmp_path}/n.db")
    flow.create_plan("Free", is_free=True, limits={"x": 10})
    ids = [flow.increment_usage("u", "x").id for _ in range(3)]
    assert ids == [ids[0], ids[0] + 1, ids[0] + 2]
    with flow.store._tx("t", "", write=False) as c:  # type: ignore[attr-defined]
        ddl = c.execute("SELECT sql FROM sqlite_master WHERE name = 'usage_events'").fetchone()[0]
        sequences = c.execute("SELECT name FROM sqlite_master WHERE name = 'sqlite_sequence'")
        tables = [r[0] for r in sequences]
        counted = c.execute("SELECT name FROM sqlite_sequence").fetchall() if tables else []
    assert "AUTOINCREMENT" not in ddl.upper()
    assert ("usage_events",) not in counted  # no sequence row rewritten per event


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"store": "redis://localhost"}, "unknown store scheme"),
        ({"store": "nonsense"}, "must be a URL"),
        ({"store": "sqlite:///x.db", "supabase_url": "https://x.supabase.co"}, "not both"),
        ({"store": None, "supabase_url": "https://x.supabase.co"}, "both required"),
        ({"store": "memory://", "debug": "yes"}, "must be a bool"),
        ({"store": "memory://", "cache_ttl": -1}, "non-negative"),
        ({"store": "memory://", "reservation_ttl": 0}, "positive"),
        ({"store": "sqlite:///x.db?bogus=1"}, "unknown sqlite URL options"),
    ],
)
def test_configuration_errors(kwargs: dict[str, object], fragment: str) -> None:
    store = kwargs.pop("store")
    with pytest.raises(UsageFlowError) as err:
        UsageFlow(store, **kwargs)  # type: ignore[arg-type]
    assert err.value.code is ErrorCodes.USAGE_CONFIG_ERROR
    assert fragment in err.value.message


def test_default_store_is_the_embedded_sqlite_file(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    monkeypatch.delenv("USAGEFLOW_STORE", raising=False)
    flow = UsageFlow()
    assert type(flow.store).__name__ == "SQLiteStore"
    assert flow.store.path == "usageflow.db"  # type: ignore[attr-defined]
    flow.close()
    monkeypatch.setenv("USAGEFLOW_STORE", "memory://")
    assert type(UsageFlow().store).__name__ == "MemoryStore"


def test_store_errors_carry_details_without_secrets(tmp_path: object) -> None:
    flow = UsageFlow(f"sqlite:///{tmp_path}/missing-dir/x.db")
    with pytest.raises(UsageFlowError) as err:
        flow.consume("u", "x")
    assert err.value.code is ErrorCodes.USAGE_CONFIG_ERROR
    assert err.value.is_store_failure
    assert {"original_error", "table", "operation"} <= set(err.value.details)
    assert flow.connection_check() is False


def test_redact_url_and_debug_logging(caplog: pytest.LogCaptureFixture) -> None:
    assert redact_url("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
    with caplog.at_level(logging.DEBUG, logger="usageflow"):
        flow = UsageFlow("memory://", debug=True)
        flow.create_plan("Free", is_free=True, limits={"x": 5})
        flow.consume("u", "x", idempotency_key="secret-ish")
    text = caplog.text
    assert "store.charge" in text and "'idempotency_key': '***'" in text
    assert "secret-ish" not in text


DEBUG_SCRIPT = """
import asyncio, logging, sys
if sys.argv[1] == "configured":
    logging.basicConfig(level=logging.WARNING, format="APP %(levelname)s %(message)s")
from usageflow import AsyncUsageFlow, UsageFlow

quiet = UsageFlow("memory://")
quiet.create_plan("Free", is_free=True, limits={"x": 5})
loud = UsageFlow("memory://", debug=True)
loud.create_plan("Free", is_free=True, limits={"x": 5})
print(logging.getLogger("usageflow").level)
print("-- quiet", file=sys.stderr, flush=True)
quiet.consume("u", "x", idempotency_key="quiet-key")
print("-- loud", file=sys.stderr, flush=True)
loud.consume("u", "x", idempotency_key="secret-ish")
print("-- async", file=sys.stderr, flush=True)

async def main():
    flow = AsyncUsageFlow("memory://", debug=True)
    await flow.create_plan("Free", is_free=True, limits={"x": 5})
    await flow.consume("u", "x")
    await flow.aclose()

asyncio.run(main())
"""


@pytest.mark.parametrize("logging_setup", ["none", "configured"])
def test_debug_shows_that_flows_lines_on_stderr_and_no_other_flows(logging_setup: str) -> None:
    """``debug=True`` prints without any logging configuration, leaves the ``usageflow``
    logger's level alone (a flow without ``debug`` stays silent) and, when the app configured
    logging, goes through its handlers once. In a subprocess: logging state is per process."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", DEBUG_SCRIPT, logging_setup],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(logging.NOTSET)
    setup, rest = out.stderr.split("-- quiet\n")
    quiet, rest = rest.split("-- loud\n")
    loud, in_async = rest.split("-- async\n")
    assert "usageflow: store=memory:// " in setup and "store.upsert_plan" in setup
    assert quiet == ""
    assert loud.count("store.charge") == 1
    assert "'idempotency_key': '***'" in loud and "secret-ish" not in out.stderr
    assert in_async.count("store.charge") == 1
    prefix = "APP DEBUG " if logging_setup == "configured" else "DEBUG "
    lines = (setup + loud + in_async).splitlines()
    assert lines and all(line.startswith(prefix) for line in lines), lines


def test_errors_pickle_and_compare_to_strings() -> None:
    err = UsageFlowError(ErrorCodes.USAGE_LIMIT_ERROR, "nope", {"x": 1})
    clone = pickle.loads(pickle.dumps(err))
    assert clone.code == "USAGE_LIMIT_ERROR" and clone.details == {"x": 1}
    assert str(err) == "USAGE_LIMIT_ERROR: nope"


def test_public_api_is_curated_and_imports_no_optional_dependency() -> None:
    import subprocess
    import sys

    code = (
        "import sys, usageflow; "
        "bad = [m for m in ('psycopg', 'supabase', 'stripe', 'flask', 'starlette', 'openai', "
        "'anthropic', 'fastapi') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    for name in usageflow.__all__:
        assert hasattr(usageflow, name)


def test_open_store_builds_by_scheme(tmp_path: object) -> None:
    assert type(open_store("memory://")).__name__ == "MemoryStore"
    store = open_store(f"sqlite:///{tmp_path}/a.db?synchronous=normal&timeout=2")
    assert store.synchronous == "NORMAL" and store.timeout == 2.0  # type: ignore[attr-defined]


def test_plan_cache_expires_after_its_ttl() -> None:
    from usageflow.cache import MISSING, PlanCache
    from usageflow.models import Plan, Profile

    now = [0.0]
    cache = PlanCache(30, timer=lambda: now[0])
    cache.put_catalog([Plan(id=1, name="Free", is_free=True)])
    cache.put_profile("u", Profile(id="u", plan="price_pro"))
    now[0] = 29.9
    assert cache.catalog() is not None and cache.profile("u") != MISSING
    now[0] = 30.1
    assert cache.catalog() is None and cache.profile("u") is MISSING
    cache.put_profile("u", None)
    cache.invalidate_user("u")
    assert cache.profile("u") is MISSING
    off = PlanCache(0)
    off.put_catalog([])
    assert off.catalog() is None


def test_plan_cache_keeps_at_most_maxsize_users_dropping_the_oldest() -> None:
    from usageflow.cache import MISSING, PlanCache
    from usageflow.models import Profile

    now = [0.0]
    cache = PlanCache(30, maxsize=3, timer=lambda: now[0])
    for i in range(5):
        now[0] = float(i)
        cache.put_profile(f"u{i}", Profile(id=f"u{i}"))
    assert [cache.profile(f"u{i}") is MISSING for i in range(5)] == [True, True] + [False] * 3
    cache.put_profile("u2", Profile(id="u2", plan="price_pro"))  # rewritten: now the newest
    now[0] = 5.0
    cache.put_profile("u5", Profile(id="u5"))
    assert cache.profile("u3") is MISSING and cache.profile("u2") is not MISSING
    now[0] = 34.5  # u2 (put at 4.0) has expired; u5 (put at 5.0) has not
    cache.put_profile("u6", Profile(id="u6"))
    assert cache.stats()["profiles"] == 2
    assert cache.profile("u2") is MISSING and cache.profile("u5") is not MISSING


def test_changes_from_another_server_are_seen_within_the_ttl(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    admin, cached, uncached = UsageFlow(url), UsageFlow(url), UsageFlow(url, cache_ttl=0)
    free = admin.create_plan("Free", is_free=True, limits={"x": 5})
    assert cached.fetch_feature_limit_for_user("u", "x") == 5
    admin.set_feature_limit(free.id, "x", 9)
    assert cached.fetch_feature_limit_for_user("u", "x") == 5  # cached for up to 30 s
    assert uncached.fetch_feature_limit_for_user("u", "x") == 9
    cached.cache.clear()
    assert cached.fetch_feature_limit_for_user("u", "x") == 9
