"""UsageFlow: usage tracking and quota enforcement for SaaS apps.

>>> from usageflow import UsageFlow
>>> flow = UsageFlow("memory://")
>>> plan = flow.create_plan("Free", is_free=True, limits={"exports": 2})
>>> flow.consume("user-1", "exports").allowed
True
"""

from usageflow.errors import ErrorCodes, UsageFlowError
from usageflow.flow import AsyncReservation, AsyncUsageFlow, Reservation, UsageFlow
from usageflow.integrations.metered import metered
from usageflow.models import (
    Alert,
    CreditPack,
    Decision,
    FeatureLimit,
    FeatureUsage,
    Grant,
    LimitAdjustment,
    Membership,
    PendingSubscription,
    PeriodTotal,
    Plan,
    Profile,
    TopUsers,
    Usage,
    UsageEvent,
    UsageSinceReset,
    UsageStats,
    UserOverview,
    UserUsage,
)
from usageflow.periods import GroupBy, Period

__version__ = "0.1.0"

__all__ = [
    "Alert",
    "CreditPack",
    "Grant",
    "Membership",
    "AsyncReservation",
    "AsyncUsageFlow",
    "Decision",
    "ErrorCodes",
    "FeatureLimit",
    "FeatureUsage",
    "GroupBy",
    "LimitAdjustment",
    "PendingSubscription",
    "Period",
    "PeriodTotal",
    "Plan",
    "Profile",
    "Reservation",
    "TopUsers",
    "Usage",
    "UsageEvent",
    "UsageFlow",
    "UsageFlowError",
    "UsageSinceReset",
    "UsageStats",
    "UserOverview",
    "UserUsage",
    "metered",
]
