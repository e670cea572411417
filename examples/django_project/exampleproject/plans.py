"""The plans of the example, created at start-up (idempotent: matched by name / price)."""

from __future__ import annotations

from usageflow.integrations.django import get_flow

#: A Stripe Payment Link for the Pro plan (a test-mode placeholder: put your own here).
PRO_PAYMENT_LINK = "https://buy.stripe.com/test_pro_plan"


def setup_plans() -> None:
    """Free: 3 exports, 20 chat credits, 100 summary pages a month; Pro: more, sold through a
    Payment Link."""
    flow = get_flow()  # the flow settings.USAGEFLOW configures
    flow.create_plan(
        "Free",
        is_free=True,
        limits={"design-export": 3, "ai_chat_limit": 20, "summaries": 100},
    )
    flow.create_plan(
        "Pro",
        stripe_price_id="price_pro_monthly",
        price_amount=29,
        price_currency="usd",
        payment_link_url=PRO_PAYMENT_LINK,
        limits={"design-export": 1000, "ai_chat_limit": None, "summaries": 10_000},
    )
