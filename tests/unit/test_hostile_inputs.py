"""Property tests: hostile inputs to every public method are a UsageFlowError with a code,
never a crash and never a partial write; random operation sequences keep the invariants."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from usageflow import ErrorCodes, UsageFlow, UsageFlowError, ops
from usageflow.testing import FakeClock

hostile = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=300),
    st.sampled_from(["", " ", "\x00", "a\nb", "x" * 256, "current_month", "day", "u1", "api"]),
    st.binary(max_size=10),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
    st.datetimes(timezones=st.just(timezone.utc)),
    st.just(float("nan")),
    st.just({"reason": object()}),
)

METHODS: dict[str, int] = {
    "consume": 5,
    "authorize": 3,
    "increment_usage": 5,
    "adjust_usage": 5,
    "fetch_usage": 3,
    "get_total_usage": 3,
    "get_usage_stats": 4,
    "get_batch_usage_stats": 4,
    "get_usage_since_reset": 2,
    "reset_feature_usage": 3,
    "fetch_feature_limit": 2,
    "fetch_feature_limit_for_user": 2,
    "add_limit_adjustment": 7,
    "reserve": 5,
    "create_plan": 1,
    "set_feature_limit": 4,
    "assign_plan": 2,
    "sync_price": 1,
    "upgrade_url": 3,
    "list_events": 3,
    "get_user_plan": 1,
    "get_profile": 1,
}


@pytest.fixture(scope="module")
def hostile_flow(tmp_path_factory: pytest.TempPathFactory) -> UsageFlow:
    path: Path = tmp_path_factory.mktemp("hostile") / "h.db"
    flow = UsageFlow(f"sqlite:///{path}", enable_user_adjustments=True, cache_ttl=0)
    flow.create_plan("Free", is_free=True, limits={"api": 10})
    return flow


def _ledger_size(flow: UsageFlow) -> int:
    with flow.store._tx("count", "usage_events", write=False) as c:  # type: ignore[attr-defined]
        events = c.execute("SELECT COUNT(*) FROM usage_events").fetchone()[0]
        rest = c.execute(
            "SELECT (SELECT COUNT(*) FROM user_plans) + (SELECT COUNT(*) FROM profiles) + "
            "(SELECT COUNT(*) FROM user_limit_adjustments) + (SELECT COUNT(*) FROM usage_events_holds)"
        ).fetchone()[0]
    return int(events) + int(rest)


@pytest.mark.parametrize("method", sorted(METHODS))
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_hostile_arguments(hostile_flow: UsageFlow, method: str, data: st.DataObject) -> None:
    args = data.draw(st.lists(hostile, min_size=METHODS[method], max_size=METHODS[method]))
    before = _ledger_size(hostile_flow)
    try:
        getattr(hostile_flow, method)(*args)
    except UsageFlowError as err:
        assert isinstance(err.code, ErrorCodes)
        assert err.message
        assert _ledger_size(hostile_flow) == before, "an error must write nothing"


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    user_id=hostile,
    fields=st.dictionaries(
        st.sampled_from(
            [
                "email",
                "plan",
                "subscription_status",
                "stripe_customer_id",
                "current_period_start",
                "current_period_end",
                "bogus",
            ]
        ),
        hostile,
        max_size=3,
    ),
)
def test_hostile_profile_updates(
    hostile_flow: UsageFlow, user_id: Any, fields: dict[str, Any]
) -> None:
    before = _ledger_size(hostile_flow)
    try:
        profile = hostile_flow.update_profile(user_id, **fields)
    except UsageFlowError as err:
        assert err.code is ErrorCodes.USAGE_INVALID_PARAMS
        assert _ledger_size(hostile_flow) == before
    else:
        assert profile.id == user_id


@settings(max_examples=200, deadline=None)
@given(
    credits=st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        st.text(max_size=4),
        st.booleans(),
    )
)
def test_credits_are_python_ints_in_range(credits: Any) -> None:
    flow = UsageFlow("memory://")
    flow.create_plan("Free", is_free=True, limits={"api": -1})
    valid = isinstance(credits, int) and not isinstance(credits, bool) and 1 <= credits < 2**63
    if valid:
        assert flow.consume("u", "api", credits=credits).allowed
    else:
        with pytest.raises(UsageFlowError) as err:
            flow.consume("u", "api", credits=credits)
        assert err.value.code is ErrorCodes.USAGE_INVALID_PARAMS
        assert flow.list_events("u") == []


def test_counter_overflow_is_refused_and_writes_nothing() -> None:
    flow = UsageFlow("memory://")
    flow.create_plan("Free", is_free=True, limits={"api": -1})
    flow.increment_usage("u", "api", 2**62)
    flow.increment_usage("u", "api", 2**62 - 1)
    with pytest.raises(UsageFlowError) as err:
        flow.increment_usage("u", "api", 2)
    assert err.value.code is ErrorCodes.USAGE_INVALID_PARAMS
    assert len(flow.list_events("u")) == 2


class LedgerMachine(RuleBasedStateMachine):
    """Random sequences of charges, reservations, refunds, resets and time passing."""

    LIMIT = 20

    @initialize(kind=st.sampled_from(["memory", "sqlite"]))
    def start(self, kind: str) -> None:
        self.clock = FakeClock(datetime(2024, 3, 30, tzinfo=timezone.utc))
        self._dir = None
        if kind == "sqlite":
            import tempfile

            self._dir = tempfile.TemporaryDirectory()
            url = f"sqlite:///{self._dir.name}/m.db"
        else:
            url = "memory://"
        self.flow = UsageFlow(url, clock=self.clock)
        self.flow.create_plan("Free", is_free=True, limits={"f": (self.LIMIT, "day")})
        self.open: list[Any] = []
        self.refunded = False

    def teardown(self) -> None:
        self.flow.close()
        if self._dir is not None:
            self._dir.cleanup()

    @rule(credits=st.integers(1, 8))
    def consume(self, credits: int) -> None:
        before = self.flow.fetch_usage("u", "f")
        decision = self.flow.consume("u", "f", credits=credits)
        assert decision.allowed == (before.current + credits <= self.LIMIT)

    @rule(credits=st.integers(1, 8))
    def reserve(self, credits: int) -> None:
        try:
            self.open.append(self.flow.reserve("u", "f", credits, ttl=600))
        except UsageFlowError as err:
            assert err.code is ErrorCodes.USAGE_LIMIT_ERROR

    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        if not self.open:
            return
        reservation = self.open.pop(data.draw(st.integers(0, len(self.open) - 1)))
        if data.draw(st.booleans()):
            reservation.commit(data.draw(st.integers(0, reservation.credits)))
        else:
            reservation.release()

    @rule(amount=st.integers(1, 5))
    def refund(self, amount: int) -> None:
        self.flow.adjust_usage("u", "f", -amount, {"reason": "test"})
        self.refunded = True

    @rule()
    def reset(self) -> None:
        self.flow.reset_feature_usage("u", "f")

    @rule(minutes=st.integers(1, 24 * 60))
    def wait(self, minutes: int) -> None:
        self.clock.advance(minutes=minutes)
        self.open = [r for r in self.open if r.expires_at > self.clock()]

    @invariant()
    def counters_agree_with_the_ledger(self) -> None:
        total, ledger = self.flow.store.call(ops.ledger_check(user_id="u", feature_name="f"))
        assert total == ledger

    @invariant()
    def never_over_the_limit(self) -> None:
        assert self.flow.fetch_usage("u", "f").current <= self.LIMIT


LedgerMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
test_ledger_machine = LedgerMachine.TestCase


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(datetime(2024, 1, 1))
    assert clock() == datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert clock.advance(days=1, hours=1) == datetime(2024, 1, 2, 1, tzinfo=timezone.utc)
    clock.set(datetime(2020, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=1))
    assert clock().second == 1


def test_deeply_nested_metadata_is_invalid_params_and_writes_nothing() -> None:
    """Metadata nested past 32 levels (here 2,000: json would hit Python's recursion limit)
    is USAGE_INVALID_PARAMS, never a RecursionError, and nothing is recorded; 32 levels pass."""
    flow = UsageFlow("memory://")
    flow.create_plan("Free", is_free=True, limits={"api": 10})
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(2000):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(UsageFlowError) as caught:
        flow.consume("u1", "api", metadata=deep)
    assert caught.value.code is ErrorCodes.USAGE_INVALID_PARAMS
    assert "32 levels" in caught.value.message
    looped: dict[str, Any] = {}
    looped["self"] = looped
    with pytest.raises(UsageFlowError, match="32 levels"):
        flow.increment_usage("u1", "api", metadata=looped)
    assert flow.get_total_usage("u1", "api") == 0
    ok: dict[str, Any] = {}
    node = ok
    for _ in range(31):
        node["x"] = {}
        node = node["x"]
    assert flow.consume("u1", "api", metadata=ok).allowed


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({"usage_events_table": "usage_events\n"}, "plain SQL identifier"),
        ({"profiles_table": "usage_events_counters"}, "derives"),
        ({"user_plans_table": "usage_events_holds"}, "derives"),
    ],
)
def test_table_names_are_checked_whole(
    tmp_path: Path, tables: dict[str, str], message: str
) -> None:
    """A table name ending in a newline is not an identifier (the check matches the whole
    name), and a name that UsageFlow derives from usage_events is refused at construction."""
    with pytest.raises(UsageFlowError, match=message) as caught:
        UsageFlow(f"sqlite:///{tmp_path / 'x.db'}", **tables)
    assert caught.value.code is ErrorCodes.USAGE_CONFIG_ERROR
