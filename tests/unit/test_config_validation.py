"""Each configuration surface refuses bad input with its code and a message naming the field:
the plans file (``USAGE_INVALID_PARAMS``), the flows' options and the route table
(``USAGE_CONFIG_ERROR``). None of them writes anything or repeats a secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from usageflow import AsyncUsageFlow, ErrorCodes, UsageFlow, UsageFlowError
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
        ('name = "Pro"\nis_free = "yes"', "plans[1].is_free must be a bool (true or false)"),
        ('name = "  "', "plans[1].name must not be blank"),
        ("is_free = false", "plans[1].name is required"),
        ('name = "Pro"\nstripe_price_id = 5', "plans[1].stripe_price_id must be a string"),
        (
            'name = "Pro"\nlimits = { exports = { limit = 5, alert_thresholds = [0] } }',
            "plans[1].limits.exports.alert_thresholds[0] must be at least 1",
        ),
        ('name = "Pro"\n[alerts]\nexports = [1001]', "alerts.exports[0] must be at most 1000"),
        ('name = "Pro"\n[alerts]\nexports = "80"', "alerts.exports must be a list"),
        ('name = "Pro"\n[alert]\nexports = [80]', "plans file has unknown tables ['alert']"),
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


@pytest.mark.parametrize("flow_class", [UsageFlow, AsyncUsageFlow])
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cache_tll": 5}, "unknown option 'cache_tll' (did you mean 'cache_ttl'?)"),
        ({"colour": 1, "size": 2}, "unknown options 'colour', 'size'"),
        ({"cache_ttl": "30"}, "cache_ttl must be a non-negative number of seconds"),
        ({"cache_ttl": float("nan")}, "cache_ttl must be a non-negative number of seconds"),
        ({"reservation_ttl": True}, "reservation_ttl must be a positive number of seconds"),
        ({"reservation_ttl": float("inf")}, "reservation_ttl must be a positive number of seconds"),
        ({"debug": 1}, "debug must be a bool"),
        ({"enable_user_adjustments": "yes"}, "enable_user_adjustments must be a bool"),
        ({"clock": "now"}, "clock must be a function"),
        ({"plan_resolver": 3}, "plan_resolver must be a function"),
        ({"profiles_table": None}, "profiles_table must be a string"),
    ],
)
def test_bad_flow_options_are_config_errors_naming_the_option(
    tmp_path: Path,
    flow_class: type[UsageFlow | AsyncUsageFlow],
    options: dict[str, Any],
    message: str,
) -> None:
    db = tmp_path / "never.db"
    with pytest.raises(UsageFlowError) as caught:
        flow_class(f"sqlite:///{db}", **options)
    assert caught.value.code is ErrorCodes.USAGE_CONFIG_ERROR
    assert message in caught.value.message
    assert not db.exists()  # refused before the store is opened


def test_refused_options_never_repeat_a_secret(tmp_path: Path) -> None:
    secrets = ["hunter2", "sk_live_SECRET", "whsec_SECRET", "eyJSECRET"]
    with pytest.raises(UsageFlowError) as caught:
        UsageFlow(
            "postgresql://app:hunter2@127.0.0.1:1/db",
            stripe_api_key=b"sk_live_SECRET",  # type: ignore[arg-type]
            stripe_webhook_secret=["whsec_SECRET"],  # type: ignore[arg-type]
            supabase_key=("eyJSECRET",),  # type: ignore[arg-type]
            stripe_secret_key="sk_live_SECRET",  # type: ignore[call-arg]
            cache_ttl="hunter2",  # type: ignore[arg-type]
        )
    err = caught.value
    assert err.code is ErrorCodes.USAGE_CONFIG_ERROR
    for field in ("stripe_api_key", "stripe_webhook_secret", "supabase_key", "cache_ttl"):
        assert field in err.message
    assert "unknown option 'stripe_secret_key'" in err.message
    shown = f"{err} {err!r} {err.details} {err.__cause__!r} {err.__context__!r}"
    for secret in secrets:
        assert secret not in shown


ROUTE_ERRORS = [
    ({"PSOT /v1/exports": "exports"}, "route 'PSOT /v1/exports': 'PSOT' is not an HTTP method"),
    (
        {"/v1/exports": {"feature": "exports", "credits": 0}},
        "route '/v1/exports': credits must be between 1 and",
    ),
    (
        {"/v1/exports": {"feature": "exports", "credits": 2.5}},
        "credits must be an int or a callable, not float",
    ),
    (
        {"/v1/exports": {"feature": "exports", "credits": True}},
        "credits must be an int or a callable, not bool",
    ),
    (
        {"/v1/exports": {"feature": "exports", "credits": 2, "reserve": 3}},
        "reserve is only for callable credits",
    ),
    (
        {"/v1/exports": {"feature": "exports", "cost": 2}},
        "route '/v1/exports': unknown route option 'cost'",
    ),
    ({"/v1/exports": {"credits": 2}}, "route '/v1/exports': feature is required"),
    (
        {"/v1/exports": {"feature": "exports", "settle": "later"}},
        "settle must be 'charge' or 'hold'",
    ),
    ({"/v1/exports": {"feature": "exports", "fail_open": "no"}}, "fail_open must be a bool"),
    ({"/v1/exports": 7}, "route '/v1/exports': a route value must be a feature name"),
]


@pytest.mark.parametrize(("routes", "message"), ROUTE_ERRORS)
def test_starlette_route_tables_refuse_bad_entries_naming_the_route(
    tmp_path: Path, routes: dict[str, object], message: str
) -> None:
    from starlette.applications import Starlette

    from usageflow.integrations.starlette import UsageFlowMiddleware

    flow = AsyncUsageFlow(f"sqlite:///{tmp_path / 'r.db'}")
    with pytest.raises(UsageFlowError) as caught:
        UsageFlowMiddleware(Starlette(), flow=flow, routes=routes)
    assert caught.value.code is ErrorCodes.USAGE_CONFIG_ERROR
    assert message in caught.value.message


@pytest.mark.parametrize(("routes", "message"), ROUTE_ERRORS)
def test_flask_route_tables_refuse_bad_entries_naming_the_route(
    tmp_path: Path, routes: dict[str, object], message: str
) -> None:
    from flask import Flask

    from usageflow.integrations.flask import UsageFlowFlask

    flow = UsageFlow(f"sqlite:///{tmp_path / 'r.db'}")
    with pytest.raises(UsageFlowError) as caught:
        UsageFlowFlask(Flask(__name__), flow=flow, routes=routes)
    assert caught.value.code is ErrorCodes.USAGE_CONFIG_ERROR
    assert message in caught.value.message


def test_a_decorated_function_is_refused_with_the_same_messages(tmp_path: Path) -> None:
    from usageflow import metered

    flow = UsageFlow(f"sqlite:///{tmp_path / 'r.db'}")
    with pytest.raises(UsageFlowError, match="credits must be between 1 and") as caught:
        metered("exports", credits=-1, flow=flow)
    assert caught.value.code is ErrorCodes.USAGE_CONFIG_ERROR
    with pytest.raises(UsageFlowError, match="feature must be at most 255 printable characters"):
        metered("bad\nname", flow=flow)


def test_a_plans_file_sets_alert_thresholds_of_every_plan_and_of_one(tmp_path: Path) -> None:
    flow = UsageFlow(f"sqlite:///{tmp_path / 'plans.db'}")
    text = (
        '[[plans]]\nname = "Free"\nis_free = true\n'
        "limits = { exports = { limit = 10, alert_thresholds = [90, 50] }, api = 5 }\n"
        "[alerts]\nexports = [100, 80]\napi = [50]\n"
    )
    (free,) = load_plans(flow, text)
    assert flow.get_alert_thresholds("exports") == [80, 100]
    assert flow.get_alert_thresholds("exports", plan_id=free.id) == [50, 90]
    assert flow.get_alert_thresholds("api", plan_id=free.id) == [50]
    assert flow.consume("u1", "exports", 9).alerts == (50, 90)
