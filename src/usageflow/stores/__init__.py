"""Stores, selected by URL.

===========================  ================================================================
``memory://``                SQLite on a private in-memory database, for tests and demos
``sqlite:///relative.db``    the embedded default (``sqlite:////abs/path.db`` for absolute)
``postgresql://…``           PostgreSQL with psycopg 3 (``pip install 'usageflow[postgres]'``)
===========================  ================================================================

Supabase is selected with ``supabase_url=`` and ``supabase_key=`` on the flow.
Drivers are imported only when a store that needs them is built.
"""

from __future__ import annotations

import importlib

from usageflow.errors import config_error
from usageflow.stores._redact import redact_url
from usageflow.stores.base import AsyncStore, Store, Tables

__all__ = ["AsyncStore", "Store", "Tables", "open_store", "redact_url"]

_SCHEMES: dict[str, str] = {
    "memory": "usageflow.stores.sqlite:MemoryStore",
    "sqlite": "usageflow.stores.sqlite:SQLiteStore",
    "postgresql": "usageflow.stores.postgres:PostgresStore",
    "postgres": "usageflow.stores.postgres:PostgresStore",
}


def open_store(url: str, tables: Tables | None = None) -> Store:
    """Build the store a URL names."""
    if not isinstance(url, str) or "://" not in url:
        raise config_error(
            "store must be a URL such as 'sqlite:///usageflow.db', 'memory://' or "
            "'postgresql://user@host/db', or a Store object"
        )
    scheme = url.split("://", 1)[0].lower().split("+", 1)[0]
    target = _SCHEMES.get(scheme)
    if target is None:
        raise config_error(
            f"unknown store scheme {scheme!r}; known: {', '.join(sorted(_SCHEMES))}",
            store=redact_url(url),
        )
    module_name, cls_name = target.split(":")
    module = importlib.import_module(module_name)
    store: Store = getattr(module, cls_name).from_url(url, tables)
    return store
