"""Fixtures for the PostgreSQL and Supabase tests: the database, a fresh schema per test, a
migrated store in it, a controllable TCP proxy, the PostgREST stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.postgres._proxy import PgProxy
from tests.support.postgres import fresh_schema, store_url
from tests.support.postgrest import PostgrestStandIn, shared_server
from tests.support.stores import postgres_url
from usageflow.stores.postgres import PostgresStore


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/postgres/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def pg_url() -> str:
    url = postgres_url()
    if url is None:
        pytest.skip("PostgreSQL tests need USAGEFLOW_TEST_POSTGRES_URL")
    return url


@pytest.fixture
def schema(pg_url: str) -> Iterator[str]:
    with fresh_schema(pg_url) as name:
        yield name


@pytest.fixture
def pg_store(pg_url: str, schema: str) -> Iterator[PostgresStore]:
    store = PostgresStore(store_url(pg_url, schema))
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def proxy(pg_url: str) -> Iterator[PgProxy]:
    parts = urlsplit(pg_url)
    p = PgProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    yield p
    p.kill()


def via_proxy(pg_url: str, proxy: PgProxy, schema: str, **options: object) -> str:
    """A store URL reaching the database through ``proxy`` (no SSL, so it can be counted)."""
    parts = urlsplit(pg_url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    base = parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host).geturl()
    return store_url(base, schema, sslmode="disable", gssencmode="disable", **options)


@pytest.fixture
def postgrest(pg_url: str) -> PostgrestStandIn:
    return shared_server(pg_url)
