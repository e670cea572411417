"""The core -> store edge (:mod:`usageflow.ops`): each operation declared once, and every
store runs exactly the declared operations with the declared arguments."""

from __future__ import annotations

import inspect
from collections.abc import Generator
from typing import ClassVar

import pytest

from usageflow import UsageFlow, UsageFlowError, ops
from usageflow.stores.sql import OPERATIONS as SQL_OPERATIONS
from usageflow.stores.sqlite import MemoryStore, SQLiteStore

LIFECYCLE = ("migrate", "connection_check")


def _keywords(fn: object) -> list[tuple[str, object]]:
    params = inspect.signature(fn).parameters.values()  # type: ignore[arg-type]
    return [(p.name, p.default) for p in params if p.name != "self"]


@pytest.mark.parametrize("name", [*ops.OPERATIONS, *LIFECYCLE])
def test_the_sqlite_store_runs_each_operation_with_its_declared_arguments(name: str) -> None:
    declared = getattr(ops, name)
    method = getattr(SQLiteStore, name)
    assert _keywords(method) == _keywords(declared)
    params = inspect.signature(method).parameters.values()
    assert all(p.kind is p.KEYWORD_ONLY for p in params if p.name != "self")


def test_the_function_stores_map_every_operation_and_no_other() -> None:
    assert set(SQL_OPERATIONS) == set(ops.OPERATIONS)


def test_an_operation_answers_through_yield_from_and_shows_no_argument() -> None:
    op = ops.get_profile(user_id="secret-user")
    assert (op.method, op.kwargs) == ("get_profile", {"user_id": "secret-user"})
    assert "secret-user" not in repr(op)

    def core() -> Generator[ops.StoreCall[object], object, object]:
        profile = yield from op
        return profile

    steps = core()
    assert next(steps) is op
    with pytest.raises(StopIteration) as done:
        steps.send("the answer")
    assert done.value.value == "the answer"


def test_the_stripe_operations_are_declared() -> None:
    assert set(ops.OPERATIONS) >= ops.STRIPE_OPERATIONS
    assert {n for n in ops.OPERATIONS if "stripe" in n} == ops.STRIPE_OPERATIONS


class _NoStripe(MemoryStore):
    """A store that does not keep Stripe's state."""

    stripe: ClassVar[bool] = False


@pytest.mark.parametrize("option", ["stripe_webhook_secret", "stripe_api_key"])
def test_stripe_options_on_a_store_without_stripe_state_fail_at_start_up(option: str) -> None:
    with pytest.raises(UsageFlowError) as err:
        UsageFlow(_NoStripe(), **{option: "whsec_or_sk_value"})
    assert err.value.code == "USAGE_CONFIG_ERROR"
    assert "Stripe" in err.value.message and "_NoStripe" in err.value.message
    assert "whsec_or_sk_value" not in str(err.value)
    with UsageFlow(_NoStripe()) as flow:  # without Stripe options it is a store like any
        flow.create_plan("free", is_free=True)
    with UsageFlow(MemoryStore(), stripe_webhook_secret="whsec_x") as flow:
        assert flow.store.stripe
