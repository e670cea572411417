"""UsageFlow in one minute: a plan with a monthly export quota, a metered function, the limit
enforced, a refund, a bonus and the usage statistics.

    python examples/quickstart.py

Runs on the embedded default store (the SQLite file ./usageflow.db, or $USAGEFLOW_STORE).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from usageflow import UsageFlow, UsageFlowError

flow = UsageFlow(enable_user_adjustments=True)
flow.migrate()

# Plans: a free tier and a paid one sold through a Stripe Payment Link (idempotent: safe to
# run again). Limits are per calendar month unless a period is given.
flow.create_plan("Basic", is_free=True, limits={"design-export": 5, "api-call": 100})
flow.create_plan(
    "Pro",
    stripe_price_id="price_pro_monthly",
    price_amount="19.00",
    price_currency="usd",
    payment_link_url="https://buy.stripe.com/test_pro",
    limits={"design-export": 1000, "api-call": -1},  # -1: unlimited
)

USER = f"user-{uuid.uuid4().hex[:8]}"  # a new user each run, so every run tells the same story


def export_design(user_id: str, design: str) -> str:
    """The metered function: check and charge in one atomic step, then do the work."""
    decision = flow.consume(user_id, "design-export", metadata={"design": design})
    if not decision.allowed:
        upgrade = flow.upgrade_url(user_id, feature_name="design-export")
        return f"402 quota spent ({decision.current}/{decision.limit}); upgrade: {upgrade}"
    return f"exported {design} ({decision.remaining} left this month)"


for n in range(1, 8):
    print(export_design(USER, f"poster-{n}.png"))

print("refund one failed export:")
flow.adjust_usage(USER, "design-export", amount=-1, metadata={"reason": "render failed"})
print(" ", flow.fetch_usage(USER, "design-export"))

print("grant a one-time bonus of 3 exports this month:")
now = datetime.now(timezone.utc)
flow.add_limit_adjustment(USER, "design-export", 3, "one_time", now, now + timedelta(days=30))
print(" ", flow.fetch_usage(USER, "design-export"))
print(" ", export_design(USER, "poster-8.png"))

print("upgrade to Pro:")
flow.assign_plan(USER, "price_pro_monthly")
print(" ", export_design(USER, "poster-9.png"))

stats = flow.get_usage_stats(USER, "design-export", period="current_month", group_by="day")
print(f"this month: total={stats.total} max/day={stats.max} days={len(stats.by_period)}")

try:
    flow.consume(USER, "design-export", credits=-1)
except UsageFlowError as err:
    print(f"bad input is refused: {err.code}: {err.message}")

flow.reset_feature_usage(USER, "design-export", metadata={"reason": "support request"})
print("after a reset:", flow.get_usage_since_reset(USER, "design-export"))
flow.close()
