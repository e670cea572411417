"""``postgresql://``: PostgreSQL through psycopg 3, for many app processes sharing one database.

Every store operation is ONE round trip: ``SELECT <function>(...)`` of a function installed by
:meth:`PostgresStore.migrate` (see ``usageflow/stores/sql/postgres.sql``), run in autocommit,
so each decision is one atomic transaction that locks only the counters row of its
(user, feature). Its cost does not grow with the number of past events.

URL options (query string; every other parameter is passed to libpq)::

    postgresql://user:pass@host:5432/db?pool_size=10&connect_timeout=5&timeout=5
        &statement_timeout=10&prepare=false&schema=usageflow

=====================  ============================================================  =======
``pool_size``          most connections of the pool                                  10
``pool_min``           connections kept open                                         1
``connect_timeout``    seconds to establish a connection                             5
``timeout``            seconds a call waits for a free (or new) pooled connection    5
``statement_timeout``  seconds a function may run on the server (0: no limit)        10
``tcp_user_timeout``   seconds unacknowledged data may wait before the connection    10
                       is dropped (a vanished server fails instead of hanging)
``query_timeout``      seconds the client waits for an answer before it drops the    statement
                       connection (a server that accepts but never answers; 0: no    timeout + 2
                       limit)
``prepare``            ``false`` for Supabase's transaction pooler (port 6543) and    true
                       PgBouncer: no server-side prepared statements
``schema``             the schema holding the tables (sets ``search_path``)          server
=====================  ============================================================  =======

A failed call raises ``UsageFlowError(USAGE_CONFIG_ERROR)`` with ``details['original_error']``,
``details['table']`` and ``details['operation']``; no message contains the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit
from urllib.parse import quote as urlquote

from usageflow.errors import UsageFlowError, config_error, missing_dependency
from usageflow.stores._functions import TABLE_OF as _TABLE_OF
from usageflow.stores._functions import AsyncFunctionStore, FunctionStore
from usageflow.stores._redact import credentials_end, is_secret_param
from usageflow.stores.base import (
    Tables,
)
from usageflow.stores.sql import (
    ADOPTION_REFUSED,
    SCHEMA_VERSION,
    api_functions,
    function_name,
    quote,
    render,
)

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

__all__ = ["AsyncPostgresStore", "PostgresStore", "PostgresSettings"]

logger = logging.getLogger("usageflow")

_IDENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _import_psycopg() -> Any:
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError:
        raise missing_dependency("psycopg", "postgres") from None
    return psycopg


#: libpq's secret connection parameters (those it displays as ``*``); completed at run time
#: from the linked libpq's own list.
_SECRET_KEYS = frozenset({"password", "sslpassword", "oauth_client_secret"})


def _secret_keys(psycopg: Any) -> frozenset[str]:
    with contextlib.suppress(Exception):
        return _SECRET_KEYS | {
            opt.keyword.decode()
            for opt in psycopg.pq.Conninfo.get_defaults()
            if opt.dispchar == b"*"
        }
    return _SECRET_KEYS


def _scheme(url: str) -> str:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme and len(scheme) <= 20 and set(scheme.lower()) <= set("abcdefghijklmnopqrstuvwxyz+"):
        return scheme.lower()
    return "postgresql"


def parse_conninfo(
    conninfo: str, extra: Sequence[tuple[str, str]] = ()
) -> tuple[str, list[str] | None]:
    """``(display, secrets)`` of a libpq connection string (URL or ``key=value`` form), parsed
    by libpq's own rules (``psycopg.conninfo.conninfo_to_dict``): ``display`` is a URL with
    every secret parameter (``password``, ``sslpassword``, ...) shown as ``***``, followed by
    ``extra`` (usageflow's own options); ``secrets`` are their values. A string libpq cannot
    parse, or one whose credentials it would not read where the text puts them (an
    unencoded ``/`` in a password), displays as ``postgresql://***`` with
    ``secrets`` None: the caller then withholds every driver message about it. Without
    psycopg nothing is parsed, so the answer is the same."""
    hidden = "postgresql://***"
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return hidden, None
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(conninfo).items()}
    except Exception:
        return hidden, None
    if "@" in conninfo and (
        ("user" not in params and "password" not in params)
        or any("@" in params.get(k, "") for k in ("host", "port", "dbname"))
    ):
        # libpq read no credentials where the text has some, or an "@" past them (a password
        # holding "/" or "@"): it would show a piece of the password as a host or a database.
        return hidden, None
    secret_keys = _secret_keys(psycopg)
    secrets = [v for k, v in params.items() if k in secret_keys and v]
    user = params.pop("user", None)
    netloc = ""
    if user is not None or params.get("password"):
        netloc = (
            urlquote(user or "", safe="") + (":***" if params.pop("password", "") else "") + "@"
        )
    params.pop("password", None)
    hosts = params.get("host", "").split(",") if "host" in params else []
    ports = params.get("port", "").split(",") if "port" in params else []
    if hosts and (not ports or len(ports) == len(hosts)):
        params.pop("host")
        params.pop("port", None)
        netloc += ",".join(
            (f"[{h}]" if ":" in h else urlquote(h, safe="")) + (f":{p}" if p else "")
            for h, p in zip(hosts, ports or [""] * len(hosts), strict=True)
        )
    path = "/" + urlquote(params.pop("dbname"), safe="") if "dbname" in params else ""
    query = [(k, "***" if k in secret_keys or is_secret_param(k) else v) for k, v in params.items()]
    query.extend((k, v) for k, v in extra)
    text = urlencode(query, safe="*/")
    return f"postgresql://{netloc}{path}" + (f"?{text}" if text else ""), secrets


def _split_query(url: str) -> tuple[str, str]:
    """``(url without its query, query)``, split where libpq splits a connection URI: the
    credentials end at the first ``@`` before any ``/``, and the query starts at the first
    ``?`` after them. ``#`` is an ordinary character (libpq knows no fragment), so a password
    holding ``?`` or ``#`` keeps the options after it."""
    head, sep, rest = url.partition("://")
    mark = rest.find("?", credentials_end(rest) + 1)
    if mark < 0:
        return url, ""
    return f"{head}{sep}{rest[:mark]}", rest[mark + 1 :]


def display_url(url: str) -> str:
    """``url`` as a :class:`PostgresStore` shows it (``repr``, errors, logs): read by libpq's
    rules, every secret masked, ``postgresql://***`` when it cannot be read unambiguously."""
    try:
        return PostgresSettings(url).redacted
    except UsageFlowError as exc:
        shown = exc.details.get("store")
        return shown if isinstance(shown, str) else "postgresql://***"


class PostgresSettings:
    """Connection settings parsed (and validated) once from a URL."""

    _OURS = (
        "pool_size",
        "pool_min",
        "connect_timeout",
        "timeout",
        "statement_timeout",
        "tcp_user_timeout",
        "query_timeout",
        "prepare",
        "schema",
    )

    def __init__(self, url: str) -> None:
        if not isinstance(url, str):
            raise config_error("the PostgreSQL URL must be a string")
        self.redacted = f"{_scheme(url)}://***"  # until the URL is parsed
        self._url = url
        scheme = url.partition("://")[0].lower().split("+", 1)[0] if "://" in url else ""
        if scheme not in ("postgresql", "postgres"):
            raise config_error("a PostgreSQL URL starts with postgresql://", store=self.redacted)
        base, query_text = _split_query(url)
        query = parse_qsl(query_text, keep_blank_values=True)
        ours = {k: v for k, v in query if k in self._OURS}
        rest = [(k, v) for k, v in query if k not in self._OURS and k != "options"]
        self.options = " ".join(v for k, v in query if k == "options")  # merged with ours
        self.conninfo = "postgresql://" + base.partition("://")[2]
        if rest:
            self.conninfo += "?" + urlencode(rest)
        shown = [(k, v) for k, v in query if k in self._OURS or k == "options"]
        self.redacted, secrets = parse_conninfo(self.conninfo, shown)
        #: False when libpq cannot read the URL unambiguously: nothing is sent to the driver
        #: (whose messages would quote pieces of it) and the store fails with a fixed message.
        self.parseable = secrets is not None
        # Also what a generic URL parser takes for the password (a piece of it, when the
        # password holds an unencoded "?" or "#"): never shown either.
        password = None
        with contextlib.suppress(ValueError):
            password = urlsplit(url).password
        found = [*(secrets or ()), unquote(password) if password else ""]
        self.secrets = tuple(s for s in found if s)
        self.pool_size = self._int(ours, "pool_size", 10, minimum=1)
        self.pool_min = self._int(ours, "pool_min", 1, minimum=0)
        if self.pool_min > self.pool_size:
            raise config_error("pool_min must not exceed pool_size", store=self.redacted)
        self.connect_timeout = self._seconds(ours, "connect_timeout", 5.0)
        self.timeout = self._seconds(ours, "timeout", 5.0)
        self.statement_timeout = self._seconds(ours, "statement_timeout", 10.0, zero=True)
        self.tcp_user_timeout = self._seconds(ours, "tcp_user_timeout", 10.0, zero=True)
        default_query = self.statement_timeout + 2.0 if self.statement_timeout else 0.0
        self.query_timeout = self._seconds(ours, "query_timeout", default_query, zero=True)
        prepare = ours.get("prepare", "true").lower()
        if prepare not in ("true", "false", "1", "0", "yes", "no"):
            raise config_error("prepare must be true or false", store=self.redacted)
        self.prepare = prepare in ("true", "1", "yes")
        self.schema = ours.get("schema") or None
        if self.schema is not None and (
            not set(self.schema) <= _IDENT_CHARS or self.schema[0].isdigit()
        ):
            raise config_error("schema must be a plain SQL identifier", store=self.redacted)

    def unparseable(self) -> BaseException:
        """The driver-free error of a URL libpq cannot read unambiguously."""
        return _WithheldError(
            "ProgrammingError: libpq cannot read this connection URL (percent-encode any "
            "'/', '?', '#' or '@' in the user name or password); the URL is not shown"
        )

    def scrub(self, exc: BaseException) -> str:
        """``exc``'s message, or only its class name when the message quotes the URL, the
        connection string or a secret (or when the URL is unparseable)."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, _WithheldError):
            return text
        quoted = (self._url, self.conninfo, *self.secrets)
        if not self.parseable or any(q and q in text for q in quoted):
            return f"{type(exc).__name__}: (message withheld: it quoted the connection URL)"
        return text

    def _int(self, opts: Mapping[str, str], name: str, default: int, minimum: int) -> int:
        raw = opts.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise config_error(f"{name} must be an integer", store=self.redacted) from None
        if value < minimum:
            raise config_error(f"{name} must be at least {minimum}", store=self.redacted)
        return value

    def _seconds(
        self, opts: Mapping[str, str], name: str, default: float, zero: bool = False
    ) -> float:
        raw = opts.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise config_error(f"{name} must be a number of seconds", store=self.redacted) from None
        if not (value >= 0 if zero else value > 0) or value > 86400:
            raise config_error(f"{name} is out of range", store=self.redacted)
        return value

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``psycopg.connect`` (beyond the conninfo)."""
        options = [self.options] if self.options else []
        if self.statement_timeout:
            options.append(f"-c statement_timeout={int(self.statement_timeout * 1000)}")
        if self.schema:
            options.append(f"-c search_path={self.schema}")
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "client_encoding": "utf8",  # the text-format arguments are sent as UTF-8
            "prepare_threshold": 5 if self.prepare else None,
            "connect_timeout": max(1, round(self.connect_timeout)),
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        if self.tcp_user_timeout:
            kwargs["tcp_user_timeout"] = int(self.tcp_user_timeout * 1000)
        if options:
            kwargs["options"] = " ".join(options)
        if "application_name=" not in self.conninfo:
            kwargs["application_name"] = "usageflow"
        return kwargs


class _Watchdog:
    """Client-side deadlines: a call whose answer has not come by its deadline has its socket
    shut down, so the waiting driver fails at once (and the pool drops that connection).

    The server's ``statement_timeout`` ends slow statements cleanly; this covers the cases it
    cannot: a server, pooler or network that stops answering. One daemon thread serves every
    store of the process. It looks at the calls in flight every ``tick`` (a quarter of the
    shortest deadline registered so far, at most a second) rather than being woken for each
    call: registering a call is a dict insert under a lock, with no thread handoff, and a
    stalled call is cut at most a tick after its deadline.
    """

    MAX_TICK = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[int, tuple[float, int]] = {}  # token -> (deadline, fd)
        self._next = 0
        self._tick = self.MAX_TICK
        self._thread: threading.Thread | None = None

    def watch(self, fd: int, seconds: float) -> int:
        with self._lock:
            self._next += 1
            token = self._next
            self._calls[token] = (time.monotonic() + seconds, fd)
            if seconds / 4 < self._tick:
                self._tick = max(seconds / 4, 0.01)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="usageflow-watchdog", daemon=True
                )
                self._thread.start()
        return token

    def done(self, token: int) -> None:
        with self._lock:
            self._calls.pop(token, None)

    def _run(self) -> None:
        while True:
            time.sleep(self._tick)
            now = time.monotonic()
            # Under the lock, so that a call finishing meanwhile (done() waits) cannot hand
            # its connection, and so its descriptor, to another call before the shutdown.
            with self._lock:
                expired = [t for t, (deadline, _fd) in self._calls.items() if deadline <= now]
                for token in expired:
                    _deadline, fd = self._calls.pop(token)
                    _shutdown(fd)


def _shutdown(fd: int) -> None:
    """Shut a connection's socket down (both ways) without closing the driver's descriptor."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


_WATCHDOG = _Watchdog()

_POOL_NAME = "usageflow"
#: psycopg_pool's warnings about each failed connection attempt of a pool (and about giving up
#: after ``reconnect_timeout``): logged for usageflow's pools once per outage by the store.
_POOL_ATTEMPT_WARNINGS = frozenset(
    {"error connecting in %r: %s", "reconnection attempt in pool %r failed after %s sec"}
)


class _QuietPoolAttempts(logging.Filter):
    """Drops psycopg_pool's per-attempt connection warnings about usageflow's pools, which
    retry every second or so while the database refuses them; other pools' are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (
            record.msg in _POOL_ATTEMPT_WARNINGS
            and isinstance(args, tuple)
            and bool(args)
            and args[0] == _POOL_NAME
        )


_QUIET_POOL_ATTEMPTS = _QuietPoolAttempts()


class _Attempts:
    """What the pool's connection attempts (made in its worker threads) last found: the error
    of the latest failed one, forgotten once one succeeds, and how many are under way. A
    ``PoolTimeout`` says neither; the store's error then says why there was no connection."""

    def __init__(self, settings: PostgresSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self.pending = 0

    def started(self) -> None:
        with self._lock:
            self.pending += 1

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.pending -= 1
            first = self.error is None
            self.error = exc
        if first:  # one line per outage, not one per attempt
            logger.warning(
                "usageflow: cannot connect to %s (%s); the pool keeps retrying",
                self._settings.redacted,
                self._settings.scrub(exc),
            )

    def succeeded(self) -> None:
        with self._lock:
            self.pending -= 1
            self.error = None


def _connection_class(psycopg: Any, attempts: _Attempts) -> Any:
    """``psycopg.Connection`` whose ``connect`` (called by the pool for each new connection)
    tells ``attempts`` how it went."""

    class Connection(psycopg.Connection):  # type: ignore[misc]
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            attempts.started()
            try:
                conn = super().connect(conninfo, **kwargs)
            except BaseException as exc:
                attempts.failed(exc)
                raise
            attempts.succeeded()
            return conn

    return Connection


class _LastInFirstOut(deque[Any]):
    """The idle connections of a pool, handed out last in, first out: ``psycopg_pool`` takes
    them with ``popleft()`` and returns them with ``append()`` (first in, first out), which
    rotates every call through every idle connection, each then cold in the CPU caches of both
    ends (docs/benchmarks.md has the cost). The most recently used one is taken instead; the
    rest stay idle, so the pool shrinks to what the load needs (its shrinking closes one idle
    connection: which one does not matter)."""

    def popleft(self) -> Any:
        return self.pop()


def _pool_class(deadline: float) -> Any:
    """``psycopg_pool.ConnectionPool`` whose health checks are bounded by ``deadline`` and
    whose idle connections are reused last in, first out."""
    from psycopg_pool import ConnectionPool

    class Pool(ConnectionPool):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if isinstance(getattr(self, "_pool", None), deque):  # psycopg_pool 3.1 to 3.3
                self._pool = _LastInFirstOut(self._pool)

        @staticmethod
        def check_connection(conn: Any) -> None:
            token = _WATCHDOG.watch(conn.pgconn.socket, deadline) if deadline else 0
            try:
                ConnectionPool.check_connection(conn)
            finally:
                if token:
                    _WATCHDOG.done(token)

    return Pool


class _Calls:
    """The SQL text of every function call, built once per table names: with psycopg's
    placeholders (the async face) and with libpq's, with the name it is prepared under (the
    sync face)."""

    def __init__(self, tables: Tables) -> None:
        self.sql: dict[str, str] = {}
        self.statements: dict[str, tuple[bytes, bytes]] = {}  # suffix -> (name, SQL)
        self.order: dict[str, tuple[str, ...]] = {}
        for suffix, params in api_functions().items():
            name = quote(function_name(tables, suffix))
            args = ", ".join(f"%s::{sql_type}" for _, sql_type in params)
            self.sql[suffix] = f"SELECT {name}({args})"
            numbered = ", ".join(f"${i}::{sql_type}" for i, (_, sql_type) in enumerate(params, 1))
            self.statements[suffix] = (
                f"usageflow_{suffix}".encode(),
                f"SELECT {name}({numbered})".encode(),
            )
            self.order[suffix] = tuple(name for name, _ in params)

    def values(self, suffix: str, args: Mapping[str, Any]) -> list[bytes | None]:
        """The arguments of ``suffix`` in libpq's text format, in order."""
        return [_text_value(args[name]) for name in self.order[suffix]]

    def params(self, suffix: str, args: Mapping[str, Any], jsonb: Any) -> list[Any]:
        values = []
        for name in self.order[suffix]:
            value = args[name]
            if isinstance(value, dict):
                value = jsonb(value)
            values.append(value)
        return values


def _cursor(conn: Any) -> Any:
    """The one cursor a connection of the async face keeps for its calls: made once, so that
    psycopg's adaptation of the arguments (its per-cursor cache of dumpers by type) is not set
    up again for every call."""
    cur = conn.__dict__.get("_usageflow_cursor")
    if cur is None:
        cur = conn._usageflow_cursor = conn.cursor()
    return cur


def _text_value(value: Any) -> bytes | None:
    """A function argument in PostgreSQL's text format, by its Python type as psycopg adapts
    it (the call casts each to its parameter's type): ``str`` as UTF-8, ``bool`` as ``t`` or
    ``f``, ``int`` and ``Decimal`` in decimal, ``datetime`` in ISO 8601, a ``dict`` as JSON,
    a list or tuple as an array literal."""
    if value is None:
        return None
    kind = type(value)
    if kind is str:
        data: bytes = value.encode()
        if b"\x00" in data:
            raise _ArgumentError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        return data
    if kind is bool:
        return b"t" if value else b"f"
    if kind is int:
        return b"%d" % value
    if kind is datetime:
        moment: datetime = value
        return moment.isoformat().encode()
    if kind is dict:
        return json.dumps(value).encode()
    if kind is Decimal:
        return str(value).encode()
    if kind is list or kind is tuple:
        return b"{" + b",".join(_array_item(item) for item in value) + b"}"
    raise _ArgumentError(f"cannot send a {kind.__name__} to PostgreSQL")


def _array_item(value: Any) -> bytes:
    """An element of an array literal: NULL, a number, or a double-quoted string."""
    if value is None:
        return b"NULL"
    if type(value) is int:
        return b"%d" % value
    data = _text_value(value)
    assert data is not None
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


class _ArgumentError(ValueError):
    """A value the store cannot send (a programming error upstream: inputs are validated)."""


def _call(conn: Any, statement: tuple[bytes, bytes] | None, query: bytes, values: Any) -> Any:
    """Run one function call on ``conn`` through libpq (psycopg's ``pgconn``), its arguments
    in text format: prepared once per connection under ``statement``'s name, or, with no
    ``statement`` (``prepare=false``: PgBouncer, Supabase's transaction pooler), sent with
    its text each time. The JSON answer, parsed. psycopg's cursor would do the same with
    more work per call (its adaptation machinery and query conversion)."""
    pq = conn.pgconn
    if statement is None:
        result = pq.exec_params(query, values)
    else:
        name = statement[0]
        prepared: set[bytes] = conn.__dict__.setdefault("_usageflow_prepared", set())
        if name in prepared:
            result = pq.exec_prepared(name, values)
        else:
            result = _prepare_and_call(conn, name, query, values)
            prepared.add(name)
    if result.status != _TUPLES_OK:
        raise _result_error(conn, result)
    value = result.get_value(0, 0) if result.ntuples else None
    return None if value is None else json.loads(value)


def _prepare_and_call(conn: Any, name: bytes, query: bytes, values: Any) -> Any:
    """The first call of a statement on a connection: prepared and run in one round trip
    (libpq's pipeline mode sends both at once); the call's result, or raises the error of
    the preparation."""
    pq = conn.pgconn
    pq.enter_pipeline_mode()
    results = []
    try:
        pq.send_prepare(name, query)
        pq.send_query_prepared(name, values)
        pq.pipeline_sync()
        pq.flush()
        ends = 0  # libpq ends each command's results with a None: two here, then the sync
        while True:
            # psycopg's get_result() waits holding the GIL (the watchdog could not run):
            # wait for the socket here instead, select() releasing it.
            while pq.is_busy():
                select.select([pq.socket], [], [])
                pq.consume_input()
            result = pq.get_result()
            if result is None:
                ends += 1
                if ends > 2:
                    raise _result_error(conn, None)
                continue
            if result.status == _PIPELINE_SYNC:
                break
            results.append(result)
    finally:
        if pq.status == 0 and pq.pipeline_status:
            pq.exit_pipeline_mode()
    if not results or results[0].status != _COMMAND_OK:
        raise _result_error(conn, results[0] if results else None)
    return results[-1]


_COMMAND_OK = 1  # libpq's PGRES_COMMAND_OK, PGRES_TUPLES_OK and PGRES_PIPELINE_SYNC
_TUPLES_OK = 2
_PIPELINE_SYNC = 10


def _result_error(conn: Any, result: Any) -> BaseException:
    """The psycopg exception of a failed libpq result (its class from the SQLSTATE), or an
    ``OperationalError`` when the connection itself failed (or gave no result)."""
    import psycopg

    if conn.pgconn.status != 0 or result is None:  # not CONNECTION_OK: the connection broke
        message = conn.pgconn.error_message.decode("utf-8", "replace").strip()
        return psycopg.OperationalError(message or "the connection to the server was lost")
    error: BaseException = psycopg.errors.error_from_result(result, encoding="utf-8")
    return error


class _WithheldError(Exception):
    """A connection failure found before the driver was called (its text is ours)."""


def _failure(
    settings: PostgresSettings, tables: Tables, exc: BaseException, operation: str
) -> UsageFlowError:
    """One ``UsageFlowError`` for a driver failure; the password never appears."""
    diag = getattr(exc, "diag", None)
    if getattr(exc, "sqlstate", None) == ADOPTION_REFUSED and diag is not None:
        # Not a store failure: the migration's own words about a row to fix.
        hint = f"; {diag.message_hint}" if diag.message_hint else ""
        return config_error(
            f"{diag.message_primary}{hint}", table=diag.table_name, operation=operation
        )
    text = settings.scrub(exc)
    table = getattr(tables, _TABLE_OF.get(operation, "usage_events"))
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate in ("42883", "42P01"):  # undefined function / table
        message = (
            "the usageflow schema is missing or out of date in this database: run "
            "flow.migrate() (or `usageflow migrate`, or paste `usageflow migrate --print-sql`)"
        )
    elif sqlstate == "57014":
        message = f"PostgreSQL {operation} timed out (statement_timeout)"
    else:
        message = f"PostgreSQL {operation} failed: {text}"
    return config_error(
        message, original_error=text, table=table, operation=operation, store=settings.redacted
    )


class PostgresStore(FunctionStore):
    """A PostgreSQL store over a thread-safe ``psycopg_pool.ConnectionPool``.

    The pool opens on first use, so building the store never connects. Each operation takes a
    connection, runs one function call in autocommit and returns it; a connection that broke
    is discarded (and the idle ones checked), so the store recovers when the database returns.
    """

    schemes: ClassVar[tuple[str, ...]] = ("postgresql", "postgres")

    def __init__(self, url: str, tables: Tables | None = None) -> None:
        super().__init__(tables)
        self._psycopg = _import_psycopg()
        self.settings = PostgresSettings(url)
        self.url = self.settings.redacted
        self._calls = _Calls(self.tables)
        self._pool: ConnectionPool[Any] | None = None
        self._pool_lock = threading.Lock()
        self._closed = False
        self._checking = False
        self._faces: weakref.WeakSet[AsyncPostgresStore] = weakref.WeakSet()
        self._attempts = _Attempts(self.settings)

    @classmethod
    def from_url(cls, url: str, tables: Tables | None = None) -> PostgresStore:
        return cls(url, tables)

    def __repr__(self) -> str:
        return f"<PostgresStore {self.url}>"

    # -- connections --------------------------------------------------------------------------
    def _get_pool(self) -> ConnectionPool[Any]:
        pool = self._pool
        if pool is not None:
            return pool
        with self._pool_lock:
            if self._closed:
                raise config_error("this PostgresStore is closed", store=self.url)
            if self._pool is None:
                s = self.settings
                pool_log = logging.getLogger("psycopg.pool")
                if _QUIET_POOL_ATTEMPTS not in pool_log.filters:
                    pool_log.addFilter(_QUIET_POOL_ATTEMPTS)
                self._pool = _pool_class(s.query_timeout)(
                    s.conninfo,
                    connection_class=_connection_class(self._psycopg, self._attempts),
                    kwargs=s.connect_kwargs(),
                    min_size=s.pool_min,
                    max_size=s.pool_size,
                    timeout=s.timeout,
                    reconnect_timeout=max(60.0, s.connect_timeout),
                    name=_POOL_NAME,
                    open=False,
                )
                self._pool.open(wait=False)
            return self._pool

    def _rpc(self, operation: str, suffix: str, args: Mapping[str, Any]) -> Any:
        statement = self._calls.statements[suffix]
        try:
            values = self._calls.values(suffix, args)
        except _ArgumentError as exc:
            raise _failure(self.settings, self.tables, exc, operation) from None
        return self._execute(
            operation, statement if self.settings.prepare else None, statement[1], values
        )

    def _execute(
        self,
        operation: str,
        statement: tuple[bytes, bytes] | None,
        query: bytes,
        values: Sequence[bytes | None],
    ) -> Any:
        """Run one statement on a pooled connection; the JSON of its one value."""
        psycopg = self._psycopg
        if not self.settings.parseable:
            raise _failure(self.settings, self.tables, self.settings.unparseable(), operation)
        pool = self._pool or self._get_pool()
        limit = self.settings.query_timeout
        try:
            # getconn/putconn rather than pool.connection(): the same, without a generator
            # context manager around the connection's own (a no-op in autocommit).
            conn = pool.getconn()
            try:
                token = _WATCHDOG.watch(conn.pgconn.socket, limit) if limit else 0
                try:
                    answer = _call(conn, statement, query, values)
                finally:
                    if token:
                        _WATCHDOG.done(token)
            finally:
                pool.putconn(conn)
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) and not isinstance(
                exc, psycopg.errors.QueryCanceled
            ):
                self._check_idle(pool)
            raise _failure(self.settings, self.tables, self._explain(exc), operation) from None
        return answer

    def _explain(self, exc: BaseException) -> BaseException:
        """``exc``, or for the pool's ``PoolTimeout`` (which only says how long it waited)
        the reason no connection could be made: the last failed attempt's error, or a
        server that has not answered yet."""
        from psycopg_pool import PoolTimeout

        if not isinstance(exc, PoolTimeout):
            return exc
        waited = f"couldn't get a connection after {self.settings.timeout:.2f} sec"
        cause = self._attempts.error
        if cause is not None:
            text = f"{cause} ({waited})"
        elif self._attempts.pending:
            text = (
                f"{waited}: the server has not answered a connection attempt yet "
                f"(connect_timeout={self.settings.connect_timeout:g})"
            )
        else:
            return exc
        explained: BaseException = self._psycopg.OperationalError(text)
        return explained

    def _check_idle(self, pool: ConnectionPool[Any]) -> None:
        """After a connection broke, drop the other idle ones that broke with it (in the
        background, each check bounded by the query deadline), so that a database restart
        costs one failed call rather than one per pooled connection."""
        with self._pool_lock:
            if self._checking:
                return
            self._checking = True

        def run() -> None:
            try:
                with contextlib.suppress(Exception):  # best effort
                    pool.check()
            finally:
                self._checking = False

        threading.Thread(target=run, name="usageflow-pool-check", daemon=True).start()

    # -- lifecycle ----------------------------------------------------------------------------
    def migration_sql(self) -> str:
        """The full migration (schema, functions, grants) for this store's table names."""
        return render(self.tables)

    def migrate(self) -> int:
        """Apply :meth:`migration_sql` in one transaction (serialized by an advisory lock, so
        concurrent migrations are safe); return the schema version."""
        psycopg = self._psycopg
        if not self.settings.parseable:
            raise _failure(self.settings, self.tables, self.settings.unparseable(), "migrate")
        try:
            with self._get_pool().connection() as conn:
                conn.execute(self.migration_sql().encode(), prepare=False)
        except psycopg.Error as exc:
            raise _failure(self.settings, self.tables, self._explain(exc), "migrate") from None
        return SCHEMA_VERSION

    def connection_check(self) -> bool:
        """True when the database answers ``SELECT 1`` (migrated or not)."""
        return bool(self._execute("connection_check", None, b"SELECT 1", ()) == 1)

    def close(self) -> None:
        """Close the pool (and any async face made by :meth:`to_async`)."""
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        for face in list(self._faces):
            face.abandon()

    def to_async(self) -> AsyncPostgresStore:
        """An asyncio face with its own non-blocking connections (same settings)."""
        face = AsyncPostgresStore(self.settings, self.tables, self._psycopg)
        self._faces.add(face)
        return face


class _AsyncPool:
    """A small pool of ``psycopg.AsyncConnection`` with no background tasks.

    Connections are made on demand (up to ``max_size``) inside the caller's event loop and kept
    while idle; a broken one is dropped. Having no worker tasks, it needs no loop to be torn
    down: :meth:`abandon` closes its connections from any thread, even after the loop that made
    them has closed.
    """

    def __init__(self, settings: PostgresSettings, psycopg: Any) -> None:
        self._settings = settings
        self._psycopg = psycopg
        self._idle: deque[psycopg.AsyncConnection[Any]] = deque()
        self._all: weakref.WeakSet[psycopg.AsyncConnection[Any]] = weakref.WeakSet()
        self._size = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self.closed = False

    def _bind(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._slots is None:
            # A new event loop: connections made in the old one are not reused.
            self.abandon(closing=False)
            self._loop = loop
            self._slots = asyncio.Semaphore(self._settings.pool_size)
        return self._slots

    async def acquire(self) -> psycopg.AsyncConnection[Any]:
        if self.closed:
            raise config_error("this store is closed")
        slots = self._bind()
        if slots.locked():  # every connection is in use: wait, for at most the timeout
            try:
                await asyncio.wait_for(slots.acquire(), self._settings.timeout)
            except asyncio.TimeoutError:
                raise self._psycopg.OperationalError(
                    f"couldn't get a connection after {self._settings.timeout:.2f} sec"
                ) from None
        else:  # a free slot is taken at once: no timer, no task
            await slots.acquire()
        try:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn  # type: ignore[no-any-return]
            conn = await asyncio.wait_for(
                self._psycopg.AsyncConnection.connect(
                    self._settings.conninfo, **self._settings.connect_kwargs()
                ),
                self._settings.connect_timeout + 1,
            )
        except BaseException:
            slots.release()
            raise
        # Marks the connection as pooled, as psycopg_pool does: psycopg then does not warn if
        # it is collected open (an async flow dropped without ``aclose()``).
        conn._pool = self
        self._all.add(conn)
        return conn  # type: ignore[no-any-return]

    def release(self, conn: psycopg.AsyncConnection[Any]) -> None:
        idle = self._psycopg.pq.TransactionStatus.IDLE
        if conn.closed or conn.broken or conn.info.transaction_status != idle:
            conn.pgconn.finish()
        elif self._loop is not None and self._loop.is_running():
            self._idle.append(conn)
        if self._slots is not None:
            self._slots.release()

    def abandon(self, closing: bool = True) -> None:
        """Close every connection now, without awaiting (safe from any thread or no loop)."""
        if closing:
            self.closed = True
        for conn in list(self._all):
            if not conn.closed:
                conn.pgconn.finish()
        self._idle.clear()
        self._all = weakref.WeakSet()
        self._slots = None
        self._loop = None

    async def aclose(self) -> None:
        self.closed = True
        for conn in list(self._all):
            if not conn.closed:
                await conn.close()
        self.abandon()


class AsyncPostgresStore(AsyncFunctionStore):
    """The asyncio face of :class:`PostgresStore`: the same function calls over
    ``psycopg.AsyncConnection``, so the event loop never waits on the database."""

    def __init__(self, settings: PostgresSettings, tables: Tables, psycopg: Any) -> None:
        self.settings = settings
        self.tables = tables
        self._psycopg = psycopg
        self._calls = _Calls(tables)
        self._pool = _AsyncPool(settings, psycopg)

    def __repr__(self) -> str:
        return f"<AsyncPostgresStore {self.settings.redacted}>"

    async def _execute(self, operation: str, query: str | bytes, params: Any) -> Any:
        psycopg = self._psycopg
        if not self.settings.parseable:
            raise _failure(self.settings, self.tables, self.settings.unparseable(), operation)
        try:
            conn = await self._pool.acquire()
            statement = params is not None  # None: a script (the migration), never prepared
            limit = self.settings.query_timeout if statement else 0.0
            token = _WATCHDOG.watch(conn.pgconn.socket, limit) if limit else 0
            try:
                if statement:
                    cur = await _cursor(conn).execute(query, params)
                    row = await cur.fetchone()
                else:  # a script, never prepared; its first result (its BEGIN) has no rows
                    await conn.execute(query, params, prepare=False)
                    row = None
            finally:
                if token:
                    _WATCHDOG.done(token)
                self._pool.release(conn)
        except psycopg.Error as exc:
            raise _failure(self.settings, self.tables, exc, operation) from None
        except (OSError, asyncio.TimeoutError) as exc:
            raise _failure(self.settings, self.tables, exc, operation) from None
        return row[0] if row else None

    async def migrate(self) -> int:
        await self._execute("migrate", render(self.tables).encode(), None)
        return SCHEMA_VERSION

    async def connection_check(self) -> bool:
        return bool(await self._execute("connection_check", "SELECT 1", ()) == 1)

    async def _rpc(self, operation: str, suffix: str, args: Mapping[str, Any]) -> Any:
        params = self._calls.params(suffix, args, self._psycopg.types.json.Jsonb)
        return await self._execute(operation, self._calls.sql[suffix], params)

    def abandon(self) -> None:
        self._pool.abandon()

    async def aclose(self) -> None:
        await self._pool.aclose()
