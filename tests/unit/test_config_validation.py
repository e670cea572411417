"""Each configuration surface refuses bad input with its code and a message naming the field:
the plans file (``USAGE_INVALID_PARAMS``), the flows' options and the route table
(``USAGE_CONFIG_ERROR``). None of them writes anything or repeats a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from usageflow import ErrorCodes, UsageFlow, UsageFlowError
from usageflow.plans_file import load_plans

GOOD = '[[plans]]\nname = "Free"\nis_free = true\nlimits = { exports = 10 }\n'


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('name = "Pro"\nprice = "19.00"', "plans[1] has unknown key 'price'"),
        ('name = "Pro"\nlimit = {}', "plans[1] has unknown key 'limit' (did you mean 'limits'?)"),
        (
            'name = "Pro"\nlimits = { exports = { limit = 5, period = "fortnight" } }',
            "plans[1].limits.exports.period must be 'current_month', 'last_30_days'",
        ),
        (
            'name = "Pro"\nlimits = { exports = { limit = 5, per = "day" } }',
            "plans[1].limits.exports has unknown key 'per'",
        ),
        (
            'name = "Pro"\nlimits = { exports = -2 }',
            "plans[1].limits.exports.limit must be at least -1",
        ),
        (
            'name = "Pro"\nlimits = { exports = 1.5 }',
            "plans[1].limits.exports.limit must be an integer",
        ),
        ('name = "Pro"\nlimits = { "" = 5 }', "plans[1].limits key '' must not be empty"),
        ('name = "Pro"\nprice_amount = "cheap"', "plans[1].price_amount must be a number"),
        (
            'name = "Pro"\nprice_amount = -1',
            "plans[1].price_amount must be between 0 and 99999999.99",
        ),
        ('name = "Pro"\nprice_amount = nan', "plans[1].price_amount must be a finite number"),
        ('name = "Pro"\nprice_amount = true', "plans[1].price_amount must be a number"),
        ('name = "Pro"\nis_free = "yes"', "plans[1].is_free must be true or false"),
        ('name = "  "', "plans[1].name must not be blank"),
        ("is_free = false", "plans[1].name is required"),
        ('name = "Pro"\nstripe_price_id = 5', "plans[1].stripe_price_id must be a string"),
    ],
)
def test_a_bad_plans_file_is_refused_naming_the_key_and_writes_nothing(
    tmp_path: Path, entry: str, message: str
) -> None:
    flow = UsageFlow(f"sqlite:///{tmp_path / 'plans.db'}")
    with pytest.raises(UsageFlowError) as caught:
        load_plans(flow, GOOD + "\n[[plans]]\n" + entry + "\n")
    assert caught.value.code is ErrorCodes.USAGE_INVALID_PARAMS
    assert message in caught.value.message
    assert "pydantic" not in caught.value.message
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert flow.get_plans() == []


def test_a_good_plans_file_loads_every_form_of_limit(tmp_path: Path) -> None:
    flow = UsageFlow(f"sqlite:///{tmp_path / 'plans.db'}")
    text = GOOD + (
        '[[plans]]\nname = "Pro"\nstripe_price_id = "price_pro"\nprice_amount = 19.999\n'
        'limits = { exports = { limit = 100, period = "day" }, chats = -1, calls = { period = "day" } }\n'
    )
    created = load_plans(flow, text)
    assert [p.name for p in created] == ["Free", "Pro"]
    pro = next(p for p in flow.get_plans() if p.name == "Pro")
    assert str(pro.price_amount) == "20.00"
    limits = {f: (row.limit_value, row.period) for f, row in pro.limits.items()}
    assert limits == {"exports": (100, "day"), "chats": (-1, "current_month"), "calls": (-1, "day")}
    assert load_plans(flow, text)[1].id == pro.id  # loading twice changes nothing more
