"""The stores every conformance test runs over.

Each entry builds a fresh, empty store for one test. Stores that need a server read its address
from the environment and are skipped, with the reason, when it is absent; CI sets the variables
so that nothing is skipped there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from usageflow.stores import open_store
from usageflow.stores.base import Store

StoreFactory = Callable[[Path], AbstractContextManager[Store]]

POSTGRES_URL_ENV = "USAGEFLOW_TEST_POSTGRES_URL"


@contextmanager
def memory_store(tmp_path: Path) -> Iterator[Store]:
    store = open_store("memory://")
    yield store
    store.close()


@contextmanager
def sqlite_store(tmp_path: Path, options: str = "") -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path / 'usageflow.db'}{options}")
    store.migrate()
    yield store
    store.close()


def sqlite_normal_store(tmp_path: Path) -> AbstractContextManager[Store]:
    """``synchronous=normal``: the async API then tries decisions inline on the event loop."""
    return sqlite_store(tmp_path, "?synchronous=normal")


#: name -> (factory, skip reason or None). Networked stores register themselves below.
STORES: dict[str, tuple[Callable[[Path], object], str | None]] = {
    "memory": (memory_store, None),
    "sqlite": (sqlite_store, None),
    "sqlite-normal": (sqlite_normal_store, None),
}


def store_params() -> list[object]:
    return [
        pytest.param(name, id=name, marks=[pytest.mark.skip(reason=reason)] if reason else [])
        for name, (_factory, reason) in STORES.items()
    ]


def postgres_url() -> str | None:
    return os.environ.get(POSTGRES_URL_ENV) or None


# -- PostgreSQL and Supabase ---------------------------------------------------------------------
# Each test gets a fresh schema of the test database (created, migrated, dropped), so tests are
# isolated and may run side by side; the Supabase store reaches the same functions through the
# real ``supabase`` client and the PostgREST stand-in of ``tests/support/postgrest.py``.
_NO_POSTGRES = (
    f"PostgreSQL tests need {POSTGRES_URL_ENV} (e.g. postgresql://postgres@127.0.0.1/test)"
)


def _required_url() -> str:
    url = postgres_url()
    if url is None:
        pytest.skip(_NO_POSTGRES)
    return url


@contextmanager
def postgres_store(tmp_path: Path) -> Iterator[Store]:
    from tests.support.postgres import fresh_schema, store_url

    with fresh_schema(_required_url()) as schema:
        store = open_store(store_url(_required_url(), schema))
        store.migrate()
        try:
            yield store
        finally:
            store.close()


@contextmanager
def supabase_store(tmp_path: Path) -> Iterator[Store]:
    from tests.support.postgres import fresh_schema
    from tests.support.postgrest import shared_server
    from usageflow.stores.supabase import SupabaseStore

    url = _required_url()
    server = shared_server(url)
    with fresh_schema(url) as schema:
        server.migrate(schema)
        store = SupabaseStore(server.url, server.service_key, schema=schema)
        try:
            yield store
        finally:
            store.close()


_pg_reason = None if postgres_url() else _NO_POSTGRES
STORES["postgres"] = (postgres_store, _pg_reason)
STORES["supabase"] = (supabase_store, _pg_reason)


def hold_rows(store: Store) -> dict[str, str]:
    """The holds a store keeps, id -> status, read from its real table: what the holds-pruning
    tests look at, since no public API lists holds."""
    from usageflow.stores.postgres import PostgresStore
    from usageflow.stores.sqlite import MemoryStore, SQLiteStore
    from usageflow.stores.supabase import SupabaseStore

    sql = f'SELECT id, status FROM "{store.tables.holds}"'
    if isinstance(store, MemoryStore):  # its database lives in its one connection
        with store._tx("hold_rows", store.tables.holds, write=False) as c:
            return dict(c.execute(sql).fetchall())
    if isinstance(store, SQLiteStore):
        import sqlite3

        with contextlib.closing(sqlite3.connect(store.path)) as conn:
            return dict(conn.execute(sql).fetchall())
    if isinstance(store, (PostgresStore, SupabaseStore)):
        import psycopg

        schema = (
            store._settings.schema if isinstance(store, SupabaseStore) else store.settings.schema
        )
        with psycopg.connect(_required_url()) as conn:
            conn.execute(f'SET search_path TO "{schema}"')
            return dict(conn.execute(sql).fetchall())  # type: ignore[arg-type]
    raise TypeError(f"no hold_rows for {store!r}")
