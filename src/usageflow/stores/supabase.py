"""Supabase: the PostgreSQL functions of the migration, called over HTTPS with the official
``supabase`` client (``pip install 'usageflow[supabase]'``).

Every store operation is ONE ``client.rpc(<function>, {...})`` call, that is one HTTP request
to PostgREST running one SQL function in one transaction: a decision is atomic under any number
of app servers, and never fetches rows to add them up in Python.

Setup: apply the migration once (``usageflow migrate --print-sql`` pasted into the Supabase SQL
editor); it enables row level security on every table and lets only ``service_role`` execute
the functions, so the store needs the **service role key** (a server-side secret). The key is
never logged, shown in a repr, or included in an error.
"""

from __future__ import annotations

import functools
import inspect
import re
import threading
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from usageflow.errors import UsageFlowError, config_error, missing_dependency
from usageflow.stores._functions import TABLE_OF as _TABLE_OF
from usageflow.stores._functions import AsyncFunctionStore, FunctionStore
from usageflow.stores._redact import redact_url
from usageflow.stores.base import (
    Tables,
)
from usageflow.stores.sql import SCHEMA_VERSION, function_name, render

__all__ = ["AsyncSupabaseStore", "SupabaseStore"]

_SCHEMA = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _json_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """Function arguments as JSON values, as PostgREST takes them (ISO moments, exact
    decimals as strings)."""
    return {
        name: value.isoformat()
        if isinstance(value, datetime)
        else str(value)
        if isinstance(value, Decimal)
        else value
        for name, value in args.items()
    }


class _Settings:
    def __init__(
        self, supabase_url: str, supabase_key: str, tables: Tables, schema: str, timeout: float
    ) -> None:
        if not isinstance(supabase_url, str) or not re.match(r"^https?://[^\s/]+", supabase_url):
            raise config_error("supabase_url must be the project URL, https://<ref>.supabase.co")
        if not isinstance(supabase_key, str) or not supabase_key.strip():
            raise config_error("supabase_key must be the project's service role key")
        if not isinstance(schema, str) or not _SCHEMA.match(schema):
            raise config_error("schema must be a plain SQL identifier")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise config_error("timeout must be a positive number of seconds")
        self.url = supabase_url.rstrip("/")
        self._key = supabase_key
        #: The URL as shown (reprs, errors, logs): a key it may carry is masked.
        self.shown = redact_url(self.url).replace(supabase_key, "***")
        self.tables = tables
        self.schema = schema
        self.timeout = float(timeout)

    @property
    def key(self) -> str:
        return self._key

    def __repr__(self) -> str:
        return f"<supabase {self.shown} schema={self.schema}>"

    def scrub(self, text: str) -> str:
        """``text`` with the key (and any bearer token) removed."""
        text = text.replace(self._key, "***")
        return re.sub(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+", r"\1***", text)

    def failure(self, exc: BaseException, operation: str) -> UsageFlowError:
        """One ``UsageFlowError`` for a failed request; never carries the key."""
        code = getattr(exc, "code", None)
        message = getattr(exc, "message", None)
        text = self.scrub(" ".join(str(message or exc).split()) or type(exc).__name__)
        if code:
            text = f"{code}: {text}"
        table = getattr(self.tables, _TABLE_OF.get(operation, "usage_events"))
        if code in ("PGRST202", "42883", "42P01"):
            summary = (
                "the usageflow functions are missing or out of date in this Supabase project: "
                "paste the output of `usageflow migrate --print-sql` into the SQL editor"
            )
        elif code in ("42501", "PGRST301", "PGRST302"):
            summary = (
                "Supabase refused the call: UsageFlow needs the service role key "
                "(the functions are not executable by anon or authenticated)"
            )
        else:
            summary = f"Supabase {operation} failed: {text}"
        return config_error(
            summary, original_error=text, table=table, operation=operation, store=self.shown
        )

    def check_version(self, version: Any) -> int:
        if version != SCHEMA_VERSION:
            raise config_error(
                f"the usageflow schema in this Supabase project is version {version}, this "
                f"library needs {SCHEMA_VERSION}: paste the output of `usageflow migrate "
                "--print-sql` into the SQL editor",
                store=self.shown,
            )
        return SCHEMA_VERSION


def _options(module: Any, settings: _Settings, http_client: Any, cls_name: str) -> Any:
    cls = getattr(module, cls_name)
    extra: dict[str, Any] = {}
    if "postgrest_client_retry" in _parameters(cls):
        # supabase >= 2.34 may retry requests; a decision is never sent twice behind our back.
        # (Before it, postgrest retried only GET and HEAD, and an rpc() is a POST.)
        extra["postgrest_client_retry"] = False
    return cls(
        schema=settings.schema,
        httpx_client=http_client,  # ours: it carries the timeout, and we close it
        auto_refresh_token=False,
        persist_session=False,
        **extra,
    )


@functools.lru_cache(maxsize=4)
def _parameters(cls: Any) -> frozenset[str]:
    return frozenset(inspect.signature(cls).parameters)


@functools.lru_cache(maxsize=1)
def _ssl_context() -> Any:
    """One TLS context per process: building one loads the CA bundle, too slow to repeat for
    every client (docs/benchmarks.md)."""
    import httpx

    return httpx.create_ssl_context()


def _import_supabase() -> Any:
    try:
        import supabase
    except ImportError:
        raise missing_dependency("supabase", "supabase") from None
    return supabase


class SupabaseStore(FunctionStore):
    """A store over a Supabase project's PostgREST API, with the service role key.

    ``schema`` is the exposed schema holding the tables (default ``public``); ``timeout`` bounds
    each HTTP request in seconds.
    """

    schemes: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        supabase_url: str,
        supabase_key: str,
        tables: Tables | None = None,
        *,
        schema: str = "public",
        timeout: float = 10.0,
    ) -> None:
        super().__init__(tables)
        self._supabase = _import_supabase()
        self._settings = _Settings(supabase_url, supabase_key, self.tables, schema, timeout)
        self.url = self._settings.shown
        self._client: Any = None
        self._http: Any = None
        self._lock = threading.Lock()
        self._names = {s: function_name(self.tables, s) for s in _suffixes()}

    def __repr__(self) -> str:
        return f"<SupabaseStore {self.url} schema={self._settings.schema}>"

    def _get_client(self) -> Any:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    import httpx

                    sb = self._supabase
                    self._http = httpx.Client(timeout=self._settings.timeout, verify=_ssl_context())
                    try:
                        self._client = sb.create_client(
                            self._settings.url,
                            self._settings.key,
                            _options(sb, self._settings, self._http, "ClientOptions"),
                        )
                    except Exception as exc:  # the client validates URL and key
                        self._http.close()
                        raise self._settings.failure(exc, "connect") from None
                client = self._client
        return client

    def _rpc(self, operation: str, suffix: str, args: Mapping[str, Any]) -> Any:
        client = self._get_client()
        try:
            response = client.rpc(self._names[suffix], _json_args(args)).execute()
        except Exception as exc:  # APIError, httpx errors: one wrapped error, no key
            raise self._settings.failure(exc, operation) from None
        return response.data

    # -- lifecycle ----------------------------------------------------------------------------
    def migration_sql(self) -> str:
        """The SQL to paste into the Supabase SQL editor (schema, functions, RLS, grants)."""
        return render(self.tables)

    def migrate(self) -> int:
        """PostgREST cannot run DDL: check that the migration was applied (and is current)
        and return its version; otherwise raise, saying how to apply it."""
        return self._settings.check_version(self._rpc("migrate", "version", {}))

    def connection_check(self) -> bool:
        self._rpc("connection_check", "version", {})
        return True

    def close(self) -> None:
        with self._lock:
            http, self._http = self._http, None
            self._client = None
        if http is not None:
            http.close()

    def to_async(self) -> AsyncSupabaseStore:
        """The asyncio face: the same calls with the client made by ``acreate_client``."""
        return AsyncSupabaseStore(self._supabase, self._settings, self._names)


def _suffixes() -> tuple[str, ...]:
    from usageflow.stores.sql import api_functions

    return tuple(api_functions())


class AsyncSupabaseStore(AsyncFunctionStore):
    """The asyncio face of :class:`SupabaseStore`: one awaited ``rpc()`` per operation, with
    the client of ``supabase.acreate_client`` (made on first use, in the running loop)."""

    def __init__(self, module: Any, settings: _Settings, names: Mapping[str, str]) -> None:
        self._supabase = module
        self._settings = settings
        self._names = dict(names)
        self._client: Any = None
        self._http: Any = None

    def __repr__(self) -> str:
        return f"<AsyncSupabaseStore {self._settings.shown} schema={self._settings.schema}>"

    async def _get_client(self) -> Any:
        if self._client is None:
            import httpx

            sb = self._supabase
            self._http = httpx.AsyncClient(timeout=self._settings.timeout, verify=_ssl_context())
            try:
                self._client = await sb.acreate_client(
                    self._settings.url,
                    self._settings.key,
                    _options(sb, self._settings, self._http, "AsyncClientOptions"),
                )
            except Exception as exc:
                await self._http.aclose()
                self._http = None
                raise self._settings.failure(exc, "connect") from None
        return self._client

    async def _rpc(self, operation: str, suffix: str, args: Mapping[str, Any]) -> Any:
        client = await self._get_client()
        try:
            response = await client.rpc(self._names[suffix], _json_args(args)).execute()
        except Exception as exc:
            raise self._settings.failure(exc, operation) from None
        return response.data

    async def migrate(self) -> int:
        return self._settings.check_version(await self._rpc("migrate", "version", {}))

    async def connection_check(self) -> bool:
        await self._rpc("connection_check", "version", {})
        return True

    async def aclose(self) -> None:
        http, self._http = self._http, None
        self._client = None
        if http is not None:
            await http.aclose()
