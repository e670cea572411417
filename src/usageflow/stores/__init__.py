"""Stores, selected by URL.

===========================  ================================================================
``memory://``                SQLite on a private in-memory database, for tests and demos
``sqlite:///relative.db``    the embedded default (``sqlite:////abs/path.db`` for absolute)
``postgresql://…``           PostgreSQL with psycopg 3 (``pip install 'usageflow[postgres]'``)
===========================  ================================================================

Supabase is selected with ``supabase_url=`` and ``supabase_key=`` on the flow.
Drivers (psycopg, supabase) are imported only when a store that needs them is built.
"""

from __future__ import annotations

from usageflow.errors import config_error
from usageflow.stores import _redact
from usageflow.stores.base import AsyncStore, Store, Tables
from usageflow.stores.postgres import PostgresStore, display_url
from usageflow.stores.sqlite import MemoryStore, SQLiteStore

__all__ = ["AsyncStore", "Store", "Tables", "open_store", "redact_url"]

#: Each store class by the URL schemes it declares.
_SCHEMES: dict[str, type[Store]] = {
    scheme: cls for cls in (MemoryStore, SQLiteStore, PostgresStore) for scheme in cls.schemes
}


def open_store(url: str, tables: Tables | None = None) -> Store:
    """Build the store a URL names."""
    if not isinstance(url, str) or "://" not in url:
        raise config_error(
            "store must be a URL such as 'sqlite:///usageflow.db', 'memory://' or "
            "'postgresql://user@host/db', or a Store object"
        )
    scheme = url.split("://", 1)[0].lower().split("+", 1)[0]
    cls = _SCHEMES.get(scheme)
    if cls is None:
        raise config_error(
            f"unknown store scheme {scheme!r}; known: {', '.join(sorted(_SCHEMES))}",
            store=redact_url(url),
        )
    return cls.from_url(url, tables)


def redact_url(url: str) -> str:
    """``url`` fit to show in a message or a log: every secret it may carry replaced by
    ``***`` (a PostgreSQL URL read by libpq's rules; see :func:`_redact.redact_url`)."""
    return _redact.redact_url(url, postgres=display_url)
