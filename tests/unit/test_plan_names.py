"""A plan is named the same way wherever the API takes one (``assign_plan``, ``upgrade_url``,
an app's ``plan_resolver``): a ``Plan``, a plan id or a ``stripe_price_id``, each resolved by
one lookup; a name that matches no plan is refused with an error that says which kind it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from usageflow import ErrorCodes, UsageFlow, UsageFlowError

LINK = "https://buy.stripe.com/test_pro"


@pytest.fixture
def flow(tmp_path: Path) -> UsageFlow:
    flow = UsageFlow(f"sqlite:///{tmp_path / 'plans.db'}")
    flow.create_plan("Free", is_free=True, limits={"exports": 3})
    flow.create_plan(
        "Pro", stripe_price_id="price_pro", payment_link_url=LINK, limits={"exports": 100}
    )
    return flow


def _pro(flow: UsageFlow) -> object:
    return next(p for p in flow.get_plans() if p.name == "Pro")


@pytest.mark.parametrize("kind", ["plan", "id", "price"])
def test_each_kind_of_name_finds_the_same_plan_everywhere(flow: UsageFlow, kind: str) -> None:
    pro = _pro(flow)
    name = {"plan": pro, "id": pro.id, "price": "price_pro"}[kind]  # type: ignore[attr-defined]
    assert flow.upgrade_url("u1", name) == f"{LINK}?client_reference_id=u1"
    assert flow.assign_plan("u1", name).plan == "price_pro"
    resolving = UsageFlow(flow.store, plan_resolver=lambda user_id: name)
    assert resolving.get_user_plan("u2").name == "Pro"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("price_gone", "no plan sold at price 'price_gone'"),
        (999, "no such plan"),
        (2.5, "plan must be a Plan, a plan id or a stripe_price_id"),
        (True, "plan must be a Plan, a plan id or a stripe_price_id"),
    ],
)
def test_a_name_that_matches_no_plan_says_why(flow: UsageFlow, name: object, message: str) -> None:
    for call in (lambda: flow.upgrade_url("u1", name), lambda: flow.assign_plan("u1", name)):
        with pytest.raises(UsageFlowError) as err:
            call()  # type: ignore[no-untyped-call]
        assert err.value.code is ErrorCodes.USAGE_INVALID_PARAMS
        assert err.value.message == message
        assert err.value.details["field"] == "plan"
    # The app's resolver naming no plan is the app's bug, refused as a limit error.
    resolving = UsageFlow(flow.store, plan_resolver=lambda user_id: name)
    with pytest.raises(UsageFlowError) as err:
        resolving.authorize("u3", "exports")
    assert err.value.code is ErrorCodes.USAGE_LIMIT_ERROR
    assert "plan_resolver returned a plan that does not exist" in err.value.message
