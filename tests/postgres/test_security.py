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

from tests.support.js_schema import JSDatabase
from tests.support.postgres import store_url
from tests.support.postgrest import PostgrestStandIn, make_key
from usageflow import ErrorCodes, UsageFlow, UsageFlowError
from usageflow.stores.base import Tables
from usageflow.stores.postgres import PostgresStore
from usageflow.stores.sql import SCHEMA_VERSION, api_functions, function_name
from usageflow.stores.supabase import SupabaseStore

API_FUNCTIONS = api_functions()

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
    TABLES.alerts,
    TABLES.alert_rules,
    TABLES.grants,
    TABLES.credit_packs,
    TABLES.members,
]
_SAMPLE = {
    "text": "x",
    "text[]": ["x"],
    "integer[]": [80],
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


#: Every privilege each kind of object can carry (MAINTAIN exists from PostgreSQL 17).
_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
_SEQUENCE_PRIVILEGES = ("USAGE", "SELECT", "UPDATE")


def _held(conn: psycopg.Connection[Any], role: str, project: str) -> list[tuple[str, str, str]]:
    """``(kind, object, privilege)`` for every privilege ``role`` holds (directly, through
    PUBLIC or a role it belongs to) on an object in ``project``, read from the catalog:
    relations (tables, views, sequences...) and their columns from ``pg_class``, functions
    from ``pg_proc``, and the schema itself."""
    table_privileges = list(_TABLE_PRIVILEGES)
    if conn.info.server_version >= 170000:
        table_privileges.append("MAINTAIN")
    held: list[tuple[str, str, str]] = []
    relations = conn.execute(
        "SELECT c.oid, c.oid::regclass::text, c.relkind FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s",
        (project,),
    ).fetchall()
    for oid, name, kind in relations:
        if kind == "S":
            checks = [("sequence", p, "has_sequence_privilege") for p in _SEQUENCE_PRIVILEGES]
        elif kind in ("r", "p", "v", "m", "f"):
            checks = [("table", p, "has_table_privilege") for p in table_privileges]
            checks += [
                ("column", p, "has_any_column_privilege")
                for p in ("SELECT", "INSERT", "UPDATE", "REFERENCES")
            ]
        else:  # indexes and composite types carry no privileges of their own
            assert kind in ("i", "I", "c"), (name, kind)
            continue
        for what, privilege, function in checks:
            row = conn.execute(
                sql.SQL("SELECT {}(%s, %s::oid, %s)").format(sql.Identifier(function)),
                (role, oid, privilege),
            ).fetchone()
            if row == (True,):
                held.append((what, name, privilege))
    functions = conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s",
        (project,),
    ).fetchall()
    for (signature,) in functions:
        row = conn.execute(
            "SELECT has_function_privilege(%s, %s::regprocedure, 'EXECUTE')", (role, signature)
        ).fetchone()
        if row == (True,):
            held.append(("function", signature, "EXECUTE"))
    for privilege in ("USAGE", "CREATE"):
        row = conn.execute("SELECT has_schema_privilege(%s, %s, %s)", (role, project, privilege))
        if row.fetchone() == (True,):
            held.append(("schema", project, privilege))
    return held


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_hold_no_privilege_on_anything_the_migration_creates(
    pg_url: str, project: str, role: str
) -> None:
    """Every object in the project's schema (all made by the migration) is read from the
    catalog, so an object kind or a new object cannot be forgotten. What is meant: the API
    roles keep only USAGE on the schema (Supabase grants it, so that the API can address the
    schema at all; usageflow neither grants nor revokes it). Tables, views, columns,
    sequences and functions: nothing."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        kinds = conn.execute(
            "SELECT c.relkind::text, count(*) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
            "GROUP BY c.relkind",
            (project,),
        ).fetchall()
        assert dict(kinds)["r"] == len(TABLE_NAMES)
        # the id sequences of plans, limits, events, adjustments, alerts, grants and packs
        assert dict(kinds)["S"] == 7
        held = _held(conn, role, project)
    assert held == [("schema", project, "USAGE")]


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_cannot_exhaust_an_id_sequence(
    pg_url: str, postgrest: PostgrestStandIn, project: str, role: str
) -> None:
    """Supabase's default privileges grant USAGE, SELECT and UPDATE on new sequences to the
    API roles: with them, ``setval(<id sequence>, <its maximum>)`` would make every later
    insert (every charge) fail. The migration revokes them: both calls are refused, and
    charging still works afterwards."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(project)))
        tables = [
            TABLES.user_plans,
            TABLES.usage_feature_limits,
            TABLES.usage_events,
            TABLES.user_limit_adjustments,
        ]
        sequences = [
            row[0]
            for table in tables
            for row in conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (table,))
        ]
        assert len(sequences) == 4 and all(sequences)
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        for sequence in sequences:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(
                    "SELECT setval(%s::regclass, seqmax) FROM pg_sequence "
                    "WHERE seqrelid = %s::regclass",
                    (sequence, sequence),
                )
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT nextval(%s::regclass)", (sequence,))
    flow = UsageFlow(SupabaseStore(postgrest.url, postgrest.service_key, schema=project))
    flow.create_plan("Free", is_free=True, limits={"api": 2})
    assert flow.consume("u1", "api").allowed
    flow.close()


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_a_database_adopted_from_the_javascript_package_is_locked_down_too(
    pg_url: str, postgrest: PostgrestStandIn, schema: str, role: str
) -> None:
    """The JS tables (and their serial id sequences) were made in a Supabase project, so the
    default privileges gave the API roles everything on them; after the migration adopts
    them, the roles hold nothing but the schema's USAGE, and setval() is refused."""
    js = JSDatabase("postgresql", store_url(pg_url, schema), pg_url=pg_url, schema=schema)

    def made_by_the_javascript_package() -> None:
        js.create()
        js.fill()

    postgrest.migrate(schema, before=made_by_the_javascript_package)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert _held(conn, role, schema) == [("schema", schema, "USAGE")]
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT setval('usage_events_id_seq', 2147483647)")


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
        assert error.details["operation"] in ("get_membership", "load_catalog", "charge")
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


def test_the_charge_function_refuses_an_unknown_event_type(pg_url: str, schema: str) -> None:
    """The ledger's event types are checked by the function that writes them (the table has
    no CHECK constraint, which PostgreSQL would plan again for every insert): a caller of the
    function itself, past the library's validation, cannot record another type."""
    store = PostgresStore(store_url(pg_url, schema))
    store.migrate()
    UsageFlow(store).create_plan("Free", is_free=True, limits={"api": 10})
    UsageFlow(store).consume("alice", "api")  # the key's row and its window: the common path
    charge = sql.Identifier(function_name(TABLES, "charge"))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        for event_type in ("bogus", None):
            row = conn.execute(
                sql.SQL(
                    "SELECT {}('alice', 'api', 1, %s, 10, date_trunc('month', now()), now(), "
                    "NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
                ).format(charge),
                (event_type,),
            ).fetchone()
            assert row is not None
            assert row[0]["error"] == "invalid"
            assert row[0]["details"] == {"event_type": event_type}
        events = conn.execute("SELECT event_type, count(*) FROM usage_events GROUP BY 1").fetchall()
        checks = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'usage_events'::regclass "
            "AND contype = 'c'"
        ).fetchone()
    assert events == [("usage", 1)]
    assert checks == (0,)
    store.close()
