"""Security as Supabase recommends: RLS on every table, the functions for service_role only.

Every check goes through the real ``supabase`` client (PostgREST stand-in, roles switched by
the JWT) and, for tables, straight SQL under ``SET ROLE`` as well. The project's default
privileges grant everything to the API roles (as on Supabase), so the refusals prove that the
migration revokes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from postgrest.exceptions import APIError
from psycopg import sql
from supabase import ClientOptions, create_client

from tests.support.postgrest import PostgrestStandIn, make_key
from usageflow import ErrorCodes, UsageFlow, UsageFlowError
from usageflow.stores.base import Tables
from usageflow.stores.sql import API_FUNCTIONS, SCHEMA_VERSION, function_name
from usageflow.stores.supabase import SupabaseStore

TABLES = Tables()
TABLE_NAMES = [
    TABLES.user_plans,
    TABLES.usage_feature_limits,
    TABLES.usage_events,
    TABLES.user_limit_adjustments,
    TABLES.profiles,
    TABLES.counters,
    TABLES.holds,
    TABLES.schema,
    TABLES.stripe_events,
    TABLES.stripe_subscriptions,
    TABLES.stripe_customers,
    TABLES.stripe_exports,
]
_SAMPLE = {
    "text": "x",
    "text[]": ["x"],
    "bigint": 1,
    "integer": 1,
    "numeric": "1.00",
    "boolean": False,
    "jsonb": {},
    "timestamptz": "2024-01-01T00:00:00+00:00",
}


def _args(suffix: str) -> dict[str, Any]:
    return {name: _SAMPLE[sql_type] for name, sql_type in API_FUNCTIONS[suffix]}


@pytest.fixture
def project(postgrest: PostgrestStandIn, schema: str) -> str:
    postgrest.migrate(schema)
    return schema


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


def _client(postgrest: PostgrestStandIn, key: str, schema: str, http: httpx.Client) -> Any:
    return create_client(postgrest.url, key, ClientOptions(schema=schema, httpx_client=http))


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_can_call_no_function(
    postgrest: PostgrestStandIn, project: str, role: str, http: httpx.Client
) -> None:
    client = _client(postgrest, make_key(role), project, http)
    for suffix in API_FUNCTIONS:
        with pytest.raises(APIError) as caught:
            client.rpc(function_name(TABLES, suffix), _args(suffix)).execute()
        assert caught.value.code == "42501", (suffix, caught.value)


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_can_read_or_write_no_table(
    postgrest: PostgrestStandIn, project: str, role: str, http: httpx.Client
) -> None:
    client = _client(postgrest, make_key(role), project, http)
    for table in TABLE_NAMES:
        with pytest.raises(APIError) as caught:
            client.table(table).select("*").execute()
        assert caught.value.code == "42501", (table, caught.value)
        with pytest.raises(APIError) as caught:
            client.table(table).insert({"id": 1}).execute()
        assert caught.value.code == "42501", (table, caught.value)


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_refused_in_sql_on_every_table_and_function(
    pg_url: str, project: str, role: str
) -> None:
    """The same under ``SET ROLE`` in SQL, for SELECT, INSERT, UPDATE, DELETE and every
    function (helpers included)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(project)))
        functions = conn.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s",
            (project,),
        ).fetchall()
        assert len(functions) >= len(API_FUNCTIONS)
        first_column: dict[str, str] = dict(
            conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = %s AND ordinal_position = 1",
                (project,),
            ).fetchall()
        )
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        for table in TABLE_NAMES:
            t = sql.Identifier(project, table)
            for statement in (
                sql.SQL("SELECT * FROM {}").format(t),
                sql.SQL("INSERT INTO {} DEFAULT VALUES").format(t),
                sql.SQL("UPDATE {} SET {} = {}").format(
                    t, sql.Identifier(first_column[table]), sql.Identifier(first_column[table])
                ),
                sql.SQL("DELETE FROM {}").format(t),
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
        for (signature,) in functions:
            row = conn.execute(
                "SELECT has_function_privilege(current_user, %s::regprocedure, 'EXECUTE')",
                (signature,),
            ).fetchone()
            assert row == (False,), signature


def test_rls_is_enabled_on_every_table(pg_url: str, project: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT c.relname, c.relrowsecurity FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r'",
            (project,),
        ).fetchall()
    assert sorted(name for name, _ in rows) == sorted(TABLE_NAMES)
    assert all(enabled for _, enabled in rows)


def test_service_role_works_and_other_keys_are_refused_without_leaking_them(
    postgrest: PostgrestStandIn, project: str
) -> None:
    flow = UsageFlow(SupabaseStore(postgrest.url, postgrest.service_key, schema=project))
    flow.create_plan("Free", is_free=True, limits={"api": 2})
    assert flow.consume("u1", "api").allowed
    for key in (
        postgrest.anon_key,
        postgrest.authenticated_key,
        make_key("service_role", "x" * 40),
    ):
        store = SupabaseStore(postgrest.url, key, schema=project)
        assert key not in repr(store)
        with pytest.raises(UsageFlowError) as caught:
            UsageFlow(store).consume("u1", "api")
        error = caught.value
        assert error.code is ErrorCodes.USAGE_CONFIG_ERROR and error.is_store_failure
        assert error.details["operation"] in ("load_catalog", "charge")
        assert key not in str(error) and key not in repr(error.details)
        assert "service role key" in error.message
        store.close()
    flow.close()


def test_supabase_flow_from_url_and_key(postgrest: PostgrestStandIn, project: str) -> None:
    """``UsageFlow(supabase_url=..., supabase_key=...)`` as in the spec (public schema is
    the default; this project lives in a test schema, so it is checked through migrate())."""
    flow = UsageFlow(supabase_url=postgrest.url, supabase_key=postgrest.service_key)
    assert isinstance(flow.store, SupabaseStore)
    assert postgrest.service_key not in repr(flow) + repr(flow.store)
    with pytest.raises(UsageFlowError) as caught:
        flow.migrate()  # no usageflow functions in public: says how to install them
    assert "migrate --print-sql" in caught.value.message
    assert postgrest.service_key not in str(caught.value)
    store = SupabaseStore(postgrest.url, postgrest.service_key, schema=project)
    assert UsageFlow(store).migrate() == SCHEMA_VERSION and UsageFlow(store).connection_check()
    assert "ENABLE ROW LEVEL SECURITY" in store.migration_sql()
    flow.close()
    store.close()
