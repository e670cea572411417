"""A PostgREST stand-in for the Supabase tests: real ``supabase`` client, real PostgreSQL.

What it stands in for
---------------------
The ``/rest/v1`` API of a Supabase project, that is PostgREST (behind Supabase's API gateway),
for the two kinds of request the tests make, and nothing else:

* ``POST /rest/v1/rpc/<function>``: calls the SQL function ``<function>`` of the schema named
  by the ``Content-Profile`` header (default ``public``) in the real PostgreSQL, in one
  transaction, with PostgREST's conventions: the JSON body's keys are the function's argument
  names (``json_to_record`` turns them into typed arguments, so JSON arrays become SQL arrays
  and ISO strings become ``timestamptz``); a scalar result is returned as the JSON body; a
  function that does not exist with exactly these argument names is ``404 PGRST202``.
* ``GET /rest/v1/<table>`` (``select=*``) and ``POST /rest/v1/<table>`` (insert): table access,
  used only to prove that the API roles can neither read nor write the tables.

Authentication as PostgREST does it: the ``Authorization: Bearer <JWT>`` header (HS256, signed
with :data:`JWT_SECRET`) gives the role (claim ``role``); without one the request runs as
``anon``; a bad signature is ``401 PGRST301``. Each request runs ``SET LOCAL ROLE <role>`` and
sets ``request.jwt.claims``, so grants and row level security are enforced by PostgreSQL
itself. Errors are PostgREST's JSON body (``code``, ``message``, ``details``, ``hint``) with its
SQLSTATE to HTTP status mapping (``42501`` -> 401 for anon, 403 otherwise; ``P0001`` -> 400;
``23505`` -> 409; ...). The roles ``anon``, ``authenticated`` and ``service_role`` (with
``BYPASSRLS``, as on Supabase) are created when missing, and :meth:`PostgrestStandIn.migrate`
reproduces Supabase's default privileges (everything granted to the three roles) before
running the usageflow migration, so that the migration's revokes are what is tested.

Not covered: filters, embedding, ``Prefer`` options, GET rpc calls, OpenAPI, the schema cache.
Responses close the connection (HTTP/1.0 style) so that clients that are never closed leave
no sockets behind; with ``keep_alive=True`` connections are kept open (HTTP/1.1), as behind
Supabase's gateway, and :attr:`PostgrestStandIn.connections` counts those accepted.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from usageflow.stores.base import Tables
from usageflow.stores.sql import render

JWT_SECRET = "usageflow-test-jwt-secret-at-least-32-bytes-long"
ROLES = ("anon", "authenticated", "service_role")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def make_key(role: str, secret: str = JWT_SECRET) -> str:
    """An API key as Supabase issues them: a JWT whose ``role`` claim names the role."""
    return jwt.encode({"role": role, "iss": "supabase-test"}, secret, algorithm="HS256")


def ensure_roles(conn: psycopg.Connection[Any]) -> None:
    """Create the Supabase API roles when missing (races between processes are harmless)."""
    for role in ROLES:
        extra = " BYPASSRLS" if role == "service_role" else ""
        with suppress(psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN" + extra).format(sql.Identifier(role)))


class _Server(ThreadingHTTPServer):
    request_queue_size = 512  # many clients connect at once in the race tests
    daemon_threads = True


class _Error(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message"))
        self.status = status
        self.body = body


def _status_of(sqlstate: str, role: str) -> int:
    if sqlstate == "42501":
        return 401 if role == "anon" else 403
    if sqlstate in ("42883", "42P01"):
        return 404
    if sqlstate in ("23503", "23505"):
        return 409
    if sqlstate.startswith(("08", "53")):
        return 503
    if sqlstate == "57014":
        return 500
    return 400


class PostgrestStandIn:
    """The server: ``url`` is the Supabase project URL to give the client."""

    def __init__(self, db_url: str, secret: str = JWT_SECRET, keep_alive: bool = False) -> None:
        self.db_url = db_url
        self.secret = secret
        self.keep_alive = keep_alive
        self.calls = 0  # rpc requests served (the tests count round trips with it)
        self.connections = 0  # TCP connections accepted
        self._calls_lock = threading.Lock()
        self._functions: dict[tuple[str, str], list[tuple[str, str]] | None] = {}
        with psycopg.connect(db_url, autocommit=True) as conn:
            ensure_roles(conn)
        self.pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            db_url, min_size=2, max_size=20, open=True, timeout=10, name="postgrest-stand-in"
        )
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.service_key = make_key("service_role", secret)
        self.anon_key = make_key("anon", secret)
        self.authenticated_key = make_key("authenticated", secret)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.pool.close()

    def migrate(
        self,
        schema: str,
        tables: Tables | None = None,
        before: Callable[[], None] | None = None,
    ) -> None:
        """What a Supabase project has (API roles may use the schema; default privileges give
        them everything), then ``before()`` (tables the project already has), then the
        usageflow migration, as pasted into the SQL editor."""
        ident = sql.Identifier(schema)
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            for role in ROLES:
                r = sql.Identifier(role)
                conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ident, r))
                for kind in ("TABLES", "FUNCTIONS", "SEQUENCES"):
                    conn.execute(
                        sql.SQL(
                            "ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT ALL ON " + kind + " TO {}"
                        ).format(ident, r)
                    )
            if before is not None:
                before()
            conn.execute(sql.SQL("SET search_path TO {}").format(ident))
            conn.execute(render(tables or Tables()).encode())

    # -- request handling ----------------------------------------------------------------------
    def _role(self, headers: Any) -> tuple[str, dict[str, Any]]:
        auth = headers.get("Authorization") or ""
        if not auth.lower().startswith("bearer "):
            return "anon", {"role": "anon"}
        try:
            claims = jwt.decode(auth[7:].strip(), self.secret, algorithms=["HS256"])
        except jwt.PyJWTError as exc:
            raise _Error(
                401, {"code": "PGRST301", "message": str(exc), "details": None, "hint": None}
            ) from None
        role = claims.get("role", "anon")
        if role not in ROLES:
            raise _Error(
                401,
                {
                    "code": "PGRST301",
                    "message": f"role {role} is not allowed",
                    "details": None,
                    "hint": None,
                },
            )
        return str(role), claims

    def _signature(
        self, conn: psycopg.Connection[Any], schema: str, fn: str
    ) -> list[tuple[str, str]] | None:
        key = (schema, fn)
        if key not in self._functions:
            row = conn.execute(
                "SELECT p.proargnames, "
                "ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes) AS t) "
                "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = %s AND p.proname = %s",
                (schema, fn),
            ).fetchone()
            self._functions[key] = (
                None if row is None else list(zip(row[0] or [], row[1], strict=True))
            )
        return self._functions[key]

    def rpc(self, schema: str, fn: str, body: Any, headers: Any) -> Any:
        role, claims = self._role(headers)
        if not isinstance(body, dict):
            body = {}
        with self.pool.connection() as conn, conn.transaction():
            params = self._signature(conn, schema, fn)
            if params is None or sorted(n for n, _ in params) != sorted(body):
                raise _Error(
                    404,
                    {
                        "code": "PGRST202",
                        "message": f"Could not find the function {schema}.{fn}"
                        f"({', '.join(sorted(body))}) in the schema cache",
                        "details": None,
                        "hint": None,
                    },
                )
            self._as_role(conn, role, claims, schema)
            columns = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in params
            )
            args = sql.SQL(", ").join(
                sql.SQL("{} := _.{}").format(sql.Identifier(n), sql.Identifier(n))
                for n, _ in params
            )
            if params:
                query = sql.SQL(
                    "SELECT to_jsonb({}.{}({})) FROM json_to_record(%s::json) AS _({})"
                ).format(sql.Identifier(schema), sql.Identifier(fn), args, columns)
                row = conn.execute(query, (json.dumps(body),)).fetchone()
            else:
                query = sql.SQL("SELECT to_jsonb({}.{}())").format(
                    sql.Identifier(schema), sql.Identifier(fn)
                )
                row = conn.execute(query).fetchone()
        with self._calls_lock:
            self.calls += 1
        return None if row is None else row[0]

    def table(self, method: str, schema: str, name: str, body: Any, headers: Any) -> Any:
        role, claims = self._role(headers)
        with self.pool.connection() as conn, conn.transaction():
            self._as_role(conn, role, claims, schema)
            target = sql.Identifier(schema, name)
            if method == "GET":
                query = sql.SQL("SELECT coalesce(json_agg(t), '[]') FROM {} AS t").format(target)
                row = conn.execute(query).fetchone()
                return row[0] if row else []
            rows = body if isinstance(body, list) else [body]
            query = sql.SQL(
                "INSERT INTO {} SELECT * FROM json_populate_recordset(NULL::{}, %s::json)"
            ).format(target, target)
            conn.execute(query, (json.dumps(rows),))
            return None

    @staticmethod
    def _as_role(
        conn: psycopg.Connection[Any], role: str, claims: dict[str, Any], schema: str
    ) -> None:
        """Become the request's role, as PostgREST does at the start of its transaction."""
        conn.execute(
            sql.SQL(
                "SET LOCAL ROLE {}; SET LOCAL search_path TO {}, public; "
                "SELECT set_config('request.jwt.claims', {}, true)"
            ).format(sql.Identifier(role), sql.Identifier(schema), sql.Literal(json.dumps(claims))),
            prepare=False,
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if server.keep_alive else "HTTP/1.0"

            def setup(self) -> None:
                super().setup()
                with server._calls_lock:
                    server.connections += 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, payload: Any) -> None:
                data = b"" if payload is None and status == 204 else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                if not server.keep_alive:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                path = self.path.split("?", 1)[0]
                profile = "Content-Profile" if method == "POST" else "Accept-Profile"
                schema = self.headers.get(profile) or "public"
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    raw = self.rfile.read(length) if length else b""
                    body = json.loads(raw) if raw else {}
                    if not _IDENT.match(schema):
                        raise _Error(
                            406,
                            {
                                "code": "PGRST106",
                                "message": "bad schema",
                                "details": None,
                                "hint": None,
                            },
                        )
                    parts = path.strip("/").split("/")
                    if parts[:3] == ["rest", "v1", "rpc"] and len(parts) == 4 and method == "POST":
                        self._reply(200, server.rpc(schema, parts[3], body, self.headers))
                    elif parts[:2] == ["rest", "v1"] and len(parts) == 3:
                        result = server.table(method, schema, parts[2], body, self.headers)
                        self._reply(200 if method == "GET" else 201, result or [])
                    else:
                        raise _Error(
                            404,
                            {
                                "code": "PGRST125",
                                "message": "not found",
                                "details": None,
                                "hint": None,
                            },
                        )
                except _Error as exc:
                    self._reply(exc.status, exc.body)
                except psycopg.Error as exc:
                    diag = exc.diag
                    sqlstate = exc.sqlstate or "XX000"
                    role = "anon"
                    with suppress(_Error):
                        role = server._role(self.headers)[0]
                    self._reply(
                        _status_of(sqlstate, role),
                        {
                            "code": sqlstate,
                            "message": diag.message_primary or str(exc),
                            "details": diag.message_detail,
                            "hint": diag.message_hint,
                        },
                    )
                except ValueError as exc:
                    self._reply(
                        400,
                        {"code": "PGRST102", "message": str(exc), "details": None, "hint": None},
                    )

            def do_POST(self) -> None:
                self._handle("POST")

            def do_GET(self) -> None:
                self._handle("GET")

        return Handler


_shared: dict[str, PostgrestStandIn] = {}
_shared_lock = threading.Lock()


def shared_server(db_url: str) -> PostgrestStandIn:
    """One stand-in per test process and database, started on first use (a daemon thread)."""
    with _shared_lock:
        if db_url not in _shared:
            _shared[db_url] = PostgrestStandIn(db_url)
        return _shared[db_url]


@contextmanager
def running(db_url: str) -> Iterator[PostgrestStandIn]:
    """A private stand-in, stopped afterwards."""
    server = PostgrestStandIn(db_url)
    try:
        yield server
    finally:
        server.close()
