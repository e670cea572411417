"""Checked by ``mypy --strict`` (see pyproject): the public API as users write it must type-check,
and its results must have the types the docs promise. Not collected by pytest."""

from __future__ import annotations

from datetime import datetime, timezone

from usageflow import (
    AsyncUsageFlow,
    Decision,
    ErrorCodes,
    Usage,
    UsageEvent,
    UsageFlow,
    UsageFlowError,
    UsageStats,
)


def sync_usage(flow: UsageFlow) -> None:
    decision: Decision = flow.consume("u", "exports", credits=2, idempotency_key="k")
    allowed: bool = decision.allowed and flow.authorize("u", "exports")
    usage: Usage = flow.fetch_usage("u", "exports", period="last_30_days")
    remaining: int | None = usage.remaining
    event: UsageEvent = flow.increment_usage("u", "tokens", 1234, {"model": "gpt-4o-mini"})
    stats: UsageStats = flow.get_usage_stats("u", "exports", group_by="week")
    batch: dict[str, dict[str, UsageStats]] = flow.get_batch_usage_stats(["u"], ["exports"])
    limit: int | None = flow.fetch_feature_limit_for_user("u", "exports")
    with flow.reserve("u", "tokens", 500) as reservation:
        reservation.commit(420)
    flow.add_limit_adjustment(
        "u", "exports", 10, "one_time", datetime.now(timezone.utc), datetime.now(timezone.utc)
    )
    try:
        flow.adjust_usage("u", "exports", -1, {"reason": "refund"})
    except UsageFlowError as err:
        code: ErrorCodes = err.code
        print(code, allowed, remaining, event.id, stats.total, batch, limit)


async def async_usage(flow: AsyncUsageFlow) -> None:
    decision: Decision = await flow.consume("u", "exports")
    reservation = await flow.reserve("u", "tokens", 500)
    event: UsageEvent | None = await reservation.commit(10)
    async with await flow.reserve("u", "tokens", 5):
        pass
    print(decision.current, event)
