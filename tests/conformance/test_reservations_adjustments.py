"""Conformance: reservations (reserve/commit/release) and per-user limit adjustments."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tests.conformance.test_enforcement import setup_plans
from tests.support.stores import hold_rows
from usageflow import ErrorCodes, UsageFlowError, ops
from usageflow.testing import FakeClock

UTC = timezone.utc


def test_held_credits_count_as_used(flow: Any) -> None:
    setup_plans(flow)
    reservation = flow.reserve("u1", "api", 6)
    assert reservation.decision.current == 6 and reservation.decision.remaining == 4
    assert flow.fetch_usage("u1", "api").current == 6
    assert flow.get_total_usage("u1", "api") == 0
    assert not flow.authorize("u1", "api", credits=5)
    assert not flow.consume("u1", "api", credits=5).allowed
    with pytest.raises(UsageFlowError) as err:
        flow.reserve("u1", "api", 5)
    assert err.value.code is ErrorCodes.USAGE_LIMIT_ERROR
    decision = err.value.details["decision"]
    assert (decision.current, decision.remaining, decision.allowed) == (6, 4, False)
    event = reservation.commit(2, metadata={"pages": 2})
    assert event.credits_used == 2 and event.metadata == {"pages": 2}
    usage = flow.fetch_usage("u1", "api")
    assert usage.current == 2 and usage.remaining == 8
    assert flow.store.call(ops.ledger_check(user_id="u1", feature_name="api")) == (2, 2)


def test_release_gives_credits_back(flow: Any) -> None:
    setup_plans(flow)
    reservation = flow.reserve("u1", "exports", 3)
    assert not flow.consume("u1", "exports").allowed
    reservation.release()
    assert flow.fetch_usage("u1", "exports").current == 0
    assert flow.consume("u1", "exports").allowed
    with pytest.raises(UsageFlowError) as err:
        reservation.commit()
    assert err.value.code is ErrorCodes.USAGE_RESERVATION_ERROR
    reservation.release()  # releasing twice is harmless
    assert flow.get_total_usage("u1", "exports") == 1


def test_commit_is_idempotent_and_may_exceed_the_estimate(flow: Any) -> None:
    setup_plans(flow)
    reservation = flow.reserve("u1", "api", 2)
    first = reservation.commit(4)
    again = reservation.commit(4)
    assert again.id == first.id and again.replayed
    reservation.release()  # after commit: nothing changes
    assert flow.get_total_usage("u1", "api") == 4
    assert flow.fetch_usage("u1", "api").current == 4


def test_expired_reservation_frees_its_credits_but_still_commits(
    flow: Any, clock: FakeClock
) -> None:
    setup_plans(flow)
    reservation = flow.reserve("u1", "exports", 3, ttl=60)
    assert reservation.expires_at == datetime(2024, 1, 15, 12, 1, tzinfo=UTC)
    assert not flow.consume("u1", "exports").allowed
    clock.advance(seconds=61)
    assert flow.fetch_usage("u1", "exports").current == 0
    assert flow.consume("u1", "exports").allowed
    other = flow.reserve("u1", "exports", 2)  # sweeps expired holds too
    event = reservation.commit(3)  # the work was done: nothing is lost
    assert event.credits_used == 3
    assert flow.fetch_usage("u1", "exports").current == 6
    other.release()
    assert flow.fetch_usage("u1", "exports").current == 4


def test_reservation_as_context_manager(flow: Any) -> None:
    setup_plans(flow)
    with flow.reserve("u1", "api", 3):
        pass
    assert flow.get_total_usage("u1", "api") == 3
    with flow.reserve("u1", "api", 3) as reservation:
        reservation.commit(1)
    assert flow.get_total_usage("u1", "api") == 4
    with pytest.raises(RuntimeError), flow.reserve("u1", "api", 3):
        raise RuntimeError("the work failed")
    assert flow.fetch_usage("u1", "api").current == 4


def test_reserve_idempotency_key_returns_the_same_reservation(flow: Any) -> None:
    setup_plans(flow)
    first = flow.reserve("u1", "api", 4, idempotency_key="job-7")
    again = flow.reserve("u1", "api", 4, idempotency_key="job-7")
    assert again.id == first.id and again.decision.replayed
    assert flow.fetch_usage("u1", "api").current == 4


def test_a_committed_hold_leaves_no_row_and_its_event_answers_again(flow: Any) -> None:
    """The holds table holds what is in flight, not history: a commit deletes its hold (unless
    it is keyed), and the ledger answers a repeated commit or a release."""
    setup_plans(flow)
    committed = flow.reserve("u1", "api", 2)
    event = committed.commit()
    keyed = flow.reserve("u1", "api", 1, idempotency_key="job-1")
    keyed.commit()
    released = flow.reserve("u1", "api", 1)
    released.release()
    open_ = flow.reserve("u1", "api", 1)
    assert hold_rows(flow.store) == {
        keyed.id: "committed",
        released.id: "released",
        open_.id: "held",
    }
    again = committed.commit()
    assert again.replayed and again.id == event.id and again.credits_used == 2
    committed.release()  # after a commit: changes nothing
    replay = flow.reserve("u1", "api", 1, idempotency_key="job-1")
    assert replay.id == keyed.id and replay.decision.replayed
    with pytest.raises(UsageFlowError) as err:
        released.commit()
    assert err.value.code is ErrorCodes.USAGE_RESERVATION_ERROR
    assert "released" in err.value.message
    assert flow.get_total_usage("u1", "api") == 3
    assert flow.fetch_usage("u1", "api").current == 4  # and the open hold
    assert flow.store.call(ops.ledger_check(user_id="u1", feature_name="api")) == (3, 3)


def test_settled_and_expired_holds_are_deleted_a_day_after_their_expiry(
    flow: Any, clock: FakeClock
) -> None:
    setup_plans(flow)
    released = flow.reserve("u1", "api", 1, ttl=60)
    released.release()
    expired = flow.reserve("u1", "api", 1, ttl=60)
    keyed = flow.reserve("u1", "api", 1, ttl=60, idempotency_key="job-2")
    keyed.commit()
    clock.advance(seconds=61)
    flow.reserve("u1", "api", 1, ttl=60).release()  # sweeps `expired`: kept, marked so
    assert hold_rows(flow.store)[expired.id] == "expired"
    clock.advance(seconds=86_400 - 1)  # not yet a day past their expiry
    flow.reserve("u1", "api", 1, ttl=60).release()
    assert {released.id, expired.id, keyed.id} <= set(hold_rows(flow.store))
    clock.advance(seconds=2)
    last = flow.reserve("u1", "api", 1, ttl=60)
    last.release()  # prunes this user and feature's holds settled over a day ago
    rows = hold_rows(flow.store)
    assert not {released.id, expired.id, keyed.id} & set(rows)
    assert rows[last.id] == "released"
    for gone in (released, expired):
        with pytest.raises(UsageFlowError) as err:
            gone.commit()
        assert err.value.code is ErrorCodes.USAGE_RESERVATION_ERROR
    fresh = flow.reserve("u1", "api", 1, idempotency_key="job-2")  # the key is free again
    assert fresh.id != keyed.id and not fresh.decision.replayed
    assert flow.get_total_usage("u1", "api") == 1


def test_reservation_errors(flow: Any) -> None:
    setup_plans(flow)
    from usageflow.flow import AsyncReservation, Reservation

    decision = flow.consume("u1", "api")
    if hasattr(flow, "_flow"):  # the async API behind the test facade
        ghost = flow._wrap(
            AsyncReservation(flow._flow, "f" * 32, "u1", "api", 1, datetime.now(UTC), decision)
        )
    else:
        ghost = Reservation(flow, "f" * 32, "u1", "api", 1, datetime.now(UTC), decision)
    with pytest.raises(UsageFlowError) as err:
        ghost.commit()
    assert err.value.code is ErrorCodes.USAGE_RESERVATION_ERROR
    for bad in (
        {"credits": 0},
        {"credits": -1},
        {"credits": 1, "ttl": 0},
        {"credits": 1, "ttl": float("nan")},
    ):
        with pytest.raises(UsageFlowError) as err:
            flow.reserve("u1", "api", **bad)
        assert err.value.code is ErrorCodes.USAGE_INVALID_PARAMS
    reservation = flow.reserve("u1", "api", 1)
    with pytest.raises(UsageFlowError) as err:
        reservation.commit(-1)
    assert err.value.code is ErrorCodes.USAGE_INVALID_PARAMS


def test_adjustments_need_the_option(flow: Any) -> None:
    setup_plans(flow)
    with pytest.raises(UsageFlowError) as err:
        flow.add_limit_adjustment(
            "u1", "api", 5, "recurring", datetime(2024, 1, 1), datetime(2024, 2, 1)
        )
    assert err.value.code is ErrorCodes.USAGE_ADJUSTMENT_ERROR


def test_recurring_and_one_time_adjustments(make_flow: Any, clock: FakeClock) -> None:
    flow = make_flow(enable_user_adjustments=True)
    setup_plans(flow)
    start = datetime(2024, 1, 10, tzinfo=UTC)
    row = flow.add_limit_adjustment(
        "u1", "api", 5, "recurring", start, start + timedelta(days=60), {"reason": "grandfathered"}
    )
    assert (
        row.amount == 5 and row.type == "recurring" and row.metadata == {"reason": "grandfathered"}
    )
    flow.add_limit_adjustment("u1", "api", 20, "one_time", start, start + timedelta(days=60))
    assert flow.fetch_feature_limit_for_user("u1", "api") == 35
    assert flow.fetch_usage("u1", "api").limit == 35
    assert flow.fetch_feature_limit_for_user("u2", "api") == 10
    clock.set(datetime(2024, 2, 5, tzinfo=UTC))  # next window: the one-time bonus is spent
    assert flow.fetch_feature_limit_for_user("u1", "api") == 15
    clock.set(datetime(2024, 3, 15, tzinfo=UTC))  # after end_date
    assert flow.fetch_feature_limit_for_user("u1", "api") == 10
    flow.add_limit_adjustment(
        "u1", "api", -50, "recurring", datetime(2024, 3, 1), datetime(2024, 4, 1)
    )
    assert flow.fetch_feature_limit_for_user("u1", "api") == 0
    assert not flow.consume("u1", "api").allowed


def test_adjustments_on_unlimited_features_stay_unlimited(make_flow: Any) -> None:
    flow = make_flow(enable_user_adjustments=True)
    setup_plans(flow)
    flow.assign_plan("u1", "price_ent")
    flow.add_limit_adjustment(
        "u1", "api", -5, "recurring", datetime(2024, 1, 1), datetime(2025, 1, 1)
    )
    assert flow.fetch_feature_limit_for_user("u1", "api") is None


def test_adjustment_validation(make_flow: Any) -> None:
    flow = make_flow(enable_user_adjustments=True)
    cases = [
        (
            "api",
            5,
            "forever",
            datetime(2024, 1, 1),
            datetime(2024, 2, 1),
            ErrorCodes.USAGE_INVALID_PARAMS,
        ),
        (
            "api",
            0,
            "one_time",
            datetime(2024, 1, 1),
            datetime(2024, 2, 1),
            ErrorCodes.USAGE_INVALID_PARAMS,
        ),
        (
            "api",
            5,
            "one_time",
            datetime(2024, 2, 1),
            datetime(2024, 1, 1),
            ErrorCodes.USAGE_ADJUSTMENT_ERROR,
        ),
        ("api", 5, "one_time", "2024-01-01", datetime(2024, 1, 1), ErrorCodes.USAGE_INVALID_PARAMS),
        (
            "",
            5,
            "one_time",
            datetime(2024, 1, 1),
            datetime(2024, 2, 1),
            ErrorCodes.USAGE_INVALID_PARAMS,
        ),
    ]
    for feature, amount, kind, start, end, code in cases:
        with pytest.raises(UsageFlowError) as err:
            flow.add_limit_adjustment("u1", feature, amount, kind, start, end)
        assert err.value.code is code


def test_reservation_ids_are_unique_and_ordered_by_time(flow: Any) -> None:
    import time
    import uuid

    setup_plans(flow)
    ids = []
    for _ in range(3):
        reservation = flow.reserve("u1", "api", 1)
        ids.append(reservation.id)
        reservation.release()
        time.sleep(0.002)  # the time part counts milliseconds
    assert ids == sorted(ids) and len(set(ids)) == 3
    for value in ids:  # 32 hex digits, the UUIDv7 layout (RFC 9562)
        parsed = uuid.UUID(value)
        assert parsed.hex == value and parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert abs(int(value[:12], 16) / 1000 - time.time()) < 60


def test_holds_past_64_bits_on_an_unlimited_feature_are_summed_exactly(flow: Any) -> None:
    """Two live holds of 2**63 - 1 add up past a 64-bit integer: reads still answer, exactly
    (SQLite's SUM() would fail every read of the user until the holds expired)."""
    setup_plans(flow)
    flow.assign_plan("u1", "price_ent")
    biggest = 2**63 - 1
    first = flow.reserve("u1", "exports", biggest)
    second = flow.reserve("u1", "exports", biggest)
    usage = flow.fetch_usage("u1", "exports")
    assert usage.is_unlimited and usage.current == 2 * biggest
    assert flow.consume("u1", "exports", 1).allowed
    assert flow.get_total_usage("u1", "exports") == 1
    first.release()
    second.release()
    assert flow.fetch_usage("u1", "exports").current == 1


def test_a_reused_reservation_id_is_refused_as_invalid_input(flow: Any, clock: FakeClock) -> None:
    """The core makes reservation ids; a store handed one already used refuses it the same way
    everywhere, whether or not the credits would fit and whoever asks: invalid input, with
    nothing written (not a store failure)."""
    setup_plans(flow)
    held = flow.reserve("u1", "api", 2)
    released = flow.reserve("u1", "api", 1)
    released.release()
    before = hold_rows(flow.store)

    def reserve_again(reservation_id: str, user_id: str, credits: int) -> Any:
        kwargs = {
            "reservation_id": reservation_id,
            "user_id": user_id,
            "feature_name": "api",
            "credits": credits,
            "limit": 10,
            "window_start": None,
            "now": clock(),
            "expires_at": clock() + timedelta(minutes=5),
            "idempotency_key": None,
        }
        if hasattr(flow, "_flow"):  # the async API: through the store's async face
            return flow._loop.run_until_complete(flow._flow.astore.call(ops.reserve(**kwargs)))
        return flow.store.call(ops.reserve(**kwargs))

    for reservation_id, user_id, credits in (
        (held.id, "u1", 1),  # would fit
        (held.id, "u1", 50),  # would not fit
        (released.id, "u1", 1),  # released, still kept
        (held.id, "u2", 1),  # ids are not scoped to a user
    ):
        with pytest.raises(UsageFlowError) as err:
            reserve_again(reservation_id, user_id, credits)
        assert err.value.code is ErrorCodes.USAGE_INVALID_PARAMS
        assert err.value.message == "reservation id already used"
        assert err.value.details["reservation_id"] == reservation_id
    assert hold_rows(flow.store) == before
    assert flow.fetch_usage("u1", "api").current == 2
    assert held.commit().credits_used == 2
    assert flow.get_total_usage("u1", "api") == 2
