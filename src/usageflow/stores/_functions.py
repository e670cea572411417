"""The stores whose rules live in SQL functions (PostgreSQL, Supabase): an operation of
:mod:`usageflow.ops` is one call of the function :data:`~usageflow.stores.sql.OPERATIONS` maps
it to. The sync and async faces of both stores differ only in how they make that call
(:meth:`_rpc`: a ``SELECT fn(...)`` over psycopg, or a PostgREST ``rpc()``), so the mapping
is applied here, once.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from usageflow.ops import StoreCall
from usageflow.stores.base import AsyncStore, Store
from usageflow.stores.sql import decode, encode

__all__ = ["TABLE_OF", "AsyncFunctionStore", "FunctionStore"]

T = TypeVar("T")
#: The operations a function store runs as its own methods.
_OWN = frozenset({"migrate", "connection_check"})

#: The table each operation mostly concerns (for error details); ledger operations are not
#: listed and report the events table.
TABLE_OF: dict[str, str] = {
    "load_catalog": "user_plans",
    "upsert_plan": "user_plans",
    "update_price": "user_plans",
    "set_feature_limit": "usage_feature_limits",
    "get_profile": "profiles",
    "upsert_profile": "profiles",
    "add_limit_adjustment": "user_limit_adjustments",
    "get_limit_adjustments": "user_limit_adjustments",
    "top_usage": "counters",
    "apply_stripe_event": "stripe_events",
    "pending_stripe_subscriptions": "stripe_subscriptions",
    "recent_stripe_events": "stripe_events",
    "stripe_export_batch": "stripe_exports",
    "advance_stripe_cursor": "stripe_exports",
    "load_alert_thresholds": "alert_rules",
    "set_alert_thresholds": "alert_rules",
    "claim_alerts": "alerts",
    "finish_alert": "alerts",
    "list_alerts": "alerts",
    "grant_credits": "grants",
    "list_grants": "grants",
    "upsert_credit_pack": "credit_packs",
    "load_credit_packs": "credit_packs",
    "add_member": "members",
    "remove_member": "members",
    "list_members": "members",
    "get_membership": "members",
    "has_members": "members",
}


class FunctionStore(Store):
    """A :class:`Store` whose every operation is one database function call."""

    stripe: ClassVar[bool] = True

    @abstractmethod
    def _rpc(self, operation: str, suffix: str, args: Mapping[str, Any]) -> Any:
        """Call the function ``suffix`` with ``args`` (for ``operation``); answer its JSON."""

    def call(self, op: StoreCall[T]) -> T:
        method = op.method
        if method in _OWN:
            result: T = getattr(self, method)()
            return result
        suffix, args = encode(method, op.kwargs)
        decoded: T = decode(method, self._rpc(method, suffix, args))
        return decoded


class AsyncFunctionStore(AsyncStore):
    """The asyncio face of a :class:`FunctionStore`."""

    @abstractmethod
    async def _rpc(self, operation: str, suffix: str, args: Mapping[str, Any]) -> Any:
        """Call the function ``suffix`` with ``args`` (for ``operation``); answer its JSON."""

    @abstractmethod
    async def migrate(self) -> int: ...

    @abstractmethod
    async def connection_check(self) -> bool: ...

    async def call(self, op: StoreCall[T]) -> T:
        method = op.method
        if method in _OWN:
            result: T = await getattr(self, method)()
            return result
        suffix, args = encode(method, op.kwargs)
        decoded: T = decode(method, await self._rpc(method, suffix, args))
        return decoded
