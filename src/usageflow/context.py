"""The request-scoped user, set by the framework adapters while a metered request runs.

Integrations that need "the current user" (the LLM wrappers, for instance) read it from here,
so that code inside a metered handler need not pass the user id along.
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["current_user_id"]

#: The user id of the metered request being served, or ``None`` outside one.
current_user_id: ContextVar[str | None] = ContextVar("usageflow_current_user_id", default=None)
