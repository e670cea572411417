"""``sqlite:///path.db``: the embedded default store.

A small pool of connections shared by all threads, WAL journal, ``BEGIN IMMEDIATE`` for every
decision (the write lock is taken before the check, so check-and-charge is atomic across threads
*and* processes), a busy timeout instead of "database is locked" errors, and
``synchronous=FULL`` unless the URL asks for ``?synchronous=normal``.

URL options: ``timeout`` (seconds to wait for the write lock, default 30), ``synchronous``
(``full`` or ``normal``), ``migrate`` (``true`` by default: the schema is created on first use).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from usageflow.errors import UsageFlowError, config_error, invalid, reservation_error
from usageflow.models import (
    Alert,
    CreditPack,
    FeatureLimit,
    Grant,
    LimitAdjustment,
    Membership,
    Plan,
    Profile,
    StripeEventRecord,
    UsageEvent,
)
from usageflow.ops import (
    PROFILE_FIELDS,
    Charge,
    HourlyTotal,
    ResetInfo,
    StoreCall,
    StripeApplied,
    StripeGrant,
    StripeLink,
    StripePrice,
    StripeRefund,
    StripeSubscription,
    UsageRead,
)
from usageflow.stores._sqlite_adopt import adopt
from usageflow.stores._sqlite_async import SQLiteAsyncStore, WouldBlock
from usageflow.stores.base import (
    HOLD_GRACE,
    AsyncStore,
    Store,
    Tables,
    TeamSplit,
    alert_window,
    check_total,
    crossed,
    grant_share,
    team_split,
    window_used,
)
from usageflow.stores.sql import SCHEMA_VERSION, render_sqlite, sqlite_statements

__all__ = ["SCHEMA_VERSION", "MemoryStore", "SQLiteStore"]

_EXACT_FLOAT = 2**53  # every integer below it is a float exactly
_ADD_COLUMN = re.compile(r'ALTER TABLE ("(?:[^"]|"")+") ADD COLUMN (\w+)')


def _ts(value: datetime) -> str:
    if value.tzinfo is not timezone.utc:
        value = value.astimezone(timezone.utc)
    return value.isoformat(" ", "microseconds")[:26]  # without the "+00:00"


def _ts_or_none(value: datetime | None) -> str | None:
    return None if value is None else _ts(value)


def _dt(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)


def _at(value: str) -> datetime:
    """A time that is never NULL (a NOT NULL column)."""
    return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)


def _is_busy(exc: sqlite3.Error) -> bool:
    """The lock is taken (``SQLITE_BUSY`` / ``SQLITE_LOCKED``, by code or, before 3.11, by
    message)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
    return "locked" in str(exc) or "busy" in str(exc)


def _cannot_open(exc: BaseException) -> bool:
    """SQLite could not open (or create) a file of the database (``SQLITE_CANTOPEN``)."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == 14)
    return "unable to open database file" in str(exc)


def _json(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run a block of several statements (separated by ``;``) in the caller's transaction,
    which ``executescript`` would commit."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def schema_sql(t: Tables) -> str:
    """The DDL of the schema for these table names (``schema`` in ``sql/sqlite.sql``): a
    script of idempotent statements."""
    return sqlite_statements(t)["schema"] + ";\n"


P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class _Slot:
    """One decision waiting for a group commit: what to run, then how it went."""

    __slots__ = ("kwargs", "method", "outcome")

    def __init__(self, method: str, kwargs: dict[str, Any]) -> None:
        self.method = method
        self.kwargs = kwargs
        self.outcome: tuple[bool, Any] | None = None


def _group_committed(
    fn: Callable[Concatenate[SQLiteStore, P], R],
) -> Callable[Concatenate[SQLiteStore, P], R]:
    """Route a decision made from a thread through the store's group commit; calls made
    inside a batch or on an event loop (:meth:`SQLiteStore.call_nowait`) run directly."""
    name = fn.__name__

    @functools.wraps(fn)
    def decision(self: SQLiteStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        local = self._local.__dict__
        if args or local.get("nowait") or local.get("batch") is not None or local.get("direct"):
            return fn(self, *args, **kwargs)
        result: R = self._group_commit(name, kwargs)
        return result

    return decision


class _RollBack(Exception):
    """Raised inside a transaction to undo it (``connection_check``'s test write)."""


class SQLiteStore(Store):
    """A SQLite database file shared by threads and processes.

    Each operation of :mod:`usageflow.ops` is the method of its name. For its event-loop face
    (:class:`~usageflow.stores._sqlite_async.SQLiteAsyncStore`) it also offers the hooks of
    :class:`~usageflow.stores._sqlite_async.Scheduled`: no-wait calls, batches, upkeep.
    """

    schemes: ClassVar[tuple[str, ...]] = ("sqlite",)
    stripe: ClassVar[bool] = True

    def __init__(
        self,
        path: str | Path,
        tables: Tables | None = None,
        *,
        timeout: float = 30.0,
        synchronous: str = "full",
        auto_migrate: bool = True,
    ) -> None:
        super().__init__(tables)
        if synchronous.lower() not in ("full", "normal"):
            raise config_error("sqlite synchronous must be 'full' or 'normal'")
        self.path = str(path)
        self.url = f"sqlite:///{self.path}"
        self.timeout = timeout
        self.synchronous = synchronous.upper()
        self.auto_migrate = auto_migrate
        self._local = threading.local()
        self._all: set[sqlite3.Connection] = set()  # every open connection
        self._idle: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._migrated = False
        self._nowait_commits = 0
        self._checkpointing = threading.Lock()
        self._writer = threading.Lock()
        self._group = threading.Condition()
        self._group_queue: list[_Slot] = []
        self._group_leading = False
        self._sql = sqlite_statements(self.tables)

    @classmethod
    def from_url(cls, url: str, tables: Tables | None = None) -> SQLiteStore:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise config_error(
                "sqlite URLs look like sqlite:///relative.db or sqlite:////absolute/path.db"
            )
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if not path:
            raise config_error("sqlite URL needs a file path: sqlite:///usageflow.db")
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(options) - {"timeout", "synchronous", "migrate"}
        if unknown:
            raise config_error(f"unknown sqlite URL options: {sorted(unknown)}")
        try:
            timeout = float(options.get("timeout", "30"))
        except ValueError:
            raise config_error("sqlite timeout must be a number of seconds") from None
        return cls(
            path,
            tables,
            timeout=timeout,
            synchronous=options.get("synchronous", "full"),
            auto_migrate=options.get("migrate", "true").lower() not in ("false", "0", "no"),
        )

    # -- connections ----------------------------------------------------------------------------
    #: Idle connections kept for reuse; more are opened while many threads are busy at once,
    #: and closed when given back beyond this. (Not one per thread: servers that start a
    #: thread per request would open, and leak, a connection per request.)
    MAX_IDLE: ClassVar[int] = 8

    def _borrow(self) -> sqlite3.Connection:
        """A connection for one transaction, to :meth:`_give_back` after it; on an event loop
        inside :meth:`call_nowait`, that thread's own no-wait connection."""
        local = self._local
        if local.__dict__.get("nowait"):
            fast: sqlite3.Connection | None = getattr(local, "fast", None)
            if fast is None:
                if self.auto_migrate and not self._migrated:
                    raise WouldBlock("migrate")  # the first call migrates, in a worker thread
                fast = local.fast = self._connect(nowait=True)
            return fast
        if self.auto_migrate and not self._migrated:
            self.migrate()
        return self._checkout()

    def _checkout(self) -> sqlite3.Connection:
        with self._pool_lock:
            if self._idle:
                return self._idle.pop()  # the most recently used: its page cache is warmest
        return self._connect()

    def _give_back(self, conn: sqlite3.Connection) -> None:
        if self._local.__dict__.get("nowait"):
            return  # the loop thread's own connection
        with self._pool_lock:
            if conn in self._all and len(self._idle) < self.MAX_IDLE:
                self._idle.append(conn)
                return
            self._all.discard(conn)
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    def _connect(self, *, nowait: bool = False) -> sqlite3.Connection:
        """A connection; a ``nowait`` one never waits for the lock (``SQLITE_BUSY`` at once)
        and leaves WAL checkpoints (which fsync) to :meth:`upkeep`."""
        timeout = 0.0 if nowait else self.timeout
        try:
            conn = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
            if nowait:
                conn.execute("PRAGMA wal_autocheckpoint = 0")
        except sqlite3.Error as exc:
            raise self._error(exc, "connect", None) from None
        with self._pool_lock:
            self._all.add(conn)
        return conn

    def call(self, op: StoreCall[T]) -> T:
        result: T = getattr(self, op.method)(**op.kwargs)
        return result

    def to_async(self) -> AsyncStore:
        return SQLiteAsyncStore(self)

    # -- calls on an event loop ----------------------------------------------------------------
    #: Bounded operations (a few index seeks, one short transaction) worth trying inline.
    NOWAIT: ClassVar[frozenset[str]] = frozenset(
        {"charge", "reserve", "settle", "usage", "get_profile", "load_catalog"}
        | {"get_limit_adjustments", "load_alert_thresholds", "load_credit_packs"}
        | {"get_membership", "has_members"}
    )
    #: Commits made without waiting after which a WAL checkpoint is owed. A checkpoint copies
    #: each page once however often it changed, and decisions keep changing the same few
    #: pages: rarer checkpoints cost less per decision, for a WAL of a few MB.
    CHECKPOINT_EVERY: ClassVar[int] = 500

    def nowait_methods(self) -> frozenset[str]:
        """The decisions, when a commit does not wait for the disk (``synchronous=normal``).
        With ``full`` every commit is an fsync: those calls stay in worker threads."""
        return self.NOWAIT if self.synchronous == "NORMAL" else frozenset()

    def call_nowait(self, method: str, kwargs: dict[str, Any]) -> Any:
        if method not in self.NOWAIT:
            raise WouldBlock(method)
        local = self._local
        local.nowait = True
        try:
            return getattr(self, method)(**kwargs)
        finally:
            local.nowait = False

    #: The decisions an event loop groups into one transaction when several are pending.
    BATCHED: ClassVar[frozenset[str]] = frozenset({"charge", "reserve", "settle"})

    def batch_methods(self) -> frozenset[str]:
        return self.BATCHED

    def run_batch(
        self, calls: Sequence[tuple[str, dict[str, Any]]], *, nowait: bool = False
    ) -> list[tuple[bool, Any]]:
        if any(method not in self.BATCHED for method, _ in calls):
            raise WouldBlock("run_batch")
        local = self._local
        local.nowait = nowait
        results: list[tuple[bool, Any]] = []
        if len(calls) == 1:  # its own transaction: no savepoint needed
            method, kwargs = calls[0]
            local.direct = True
            try:
                results.append((True, getattr(self, method)(**kwargs)))
            except WouldBlock:
                raise
            except Exception as exc:
                results.append((False, exc))
            finally:
                local.nowait = local.direct = False
            return results
        try:
            with self._tx("run_batch", self.tables.usage_events) as conn:
                local.batch = conn
                try:
                    for method, kwargs in calls:
                        try:
                            results.append((True, getattr(self, method)(**kwargs)))
                        except Exception as exc:  # rolled back to its savepoint
                            results.append((False, exc))
                finally:
                    local.batch = None
        finally:
            local.nowait = False
        if nowait:
            self._nowait_commits += len(calls) - 1  # the transaction counted one
        return results

    def _group_commit(self, method: str, kwargs: dict[str, Any]) -> Any:
        """Group commit for threads: the decisions that threads ask for while another batch
        is being written wait for it, then go together in the next transaction, led by one of
        them (each leader writes one batch, its own decision in it, then hands over)."""
        slot = _Slot(method, kwargs)
        with self._group:
            self._group_queue.append(slot)
            while slot.outcome is None and self._group_leading:
                self._group.wait()
            if slot.outcome is None:
                self._group_leading = True
                batch, self._group_queue = self._group_queue, []
        if slot.outcome is None:
            outcomes: list[tuple[bool, Any]] | None = None
            try:
                outcomes = self.run_batch([(s.method, s.kwargs) for s in batch])
            except Exception as exc:  # the transaction failed: nothing written
                outcomes = [(False, exc)] * len(batch)
            finally:
                with self._group:
                    for waiting, outcome in zip(
                        batch,
                        outcomes or [(False, RuntimeError("interrupted"))] * len(batch),
                        strict=True,
                    ):
                        waiting.outcome = outcome
                    self._group_leading = False
                    self._group.notify_all()
        assert slot.outcome is not None
        ok, value = slot.outcome
        if ok:
            return value
        raise value

    def upkeep(self) -> Callable[[], None] | None:
        if self._nowait_commits < self.CHECKPOINT_EVERY or self._checkpointing.locked():
            return None
        self._nowait_commits = 0
        return self.checkpoint

    def checkpoint(self) -> None:
        """Copy the WAL into the database file and rewind it (``RESTART``). This process's
        writers wait meanwhile (on the event loop: in worker threads), so that they cannot
        starve it. One at a time: a call while another runs returns at once."""
        if not self._checkpointing.acquire(blocking=False):
            return
        try:
            if not self._writer.acquire(timeout=self.timeout):
                return
            conn = self._checkout()
            try:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
            finally:
                self._writer.release()
                self._give_back(conn)
        finally:
            self._checkpointing.release()

    def close(self) -> None:
        with self._pool_lock:
            conns, self._all, self._idle = self._all, set(), []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    def _error(self, exc: BaseException, operation: str, table: str | None) -> UsageFlowError:
        if _cannot_open(exc):
            tried, why = self._open_failure()
            return config_error(
                f"sqlite {operation} failed: {exc}: {tried}{why}",
                original_error=str(exc),
                table=table,
                operation=operation,
                path=tried,
            )
        return config_error(
            f"sqlite {operation} failed: {exc}",
            original_error=str(exc),
            table=table,
            operation=operation,
        )

    def _open_failure(self) -> tuple[str, str]:
        """The path SQLite tried (a relative one resolved as SQLite does, against the working
        directory) and what is known to be wrong with it; for a relative path whose
        ``/``-prefixed twin has an existing directory (``sqlite:///tmp/x.db``), how to write
        that one."""
        try:
            cwd = os.getcwd()
        except OSError:  # the working directory was removed
            return self.path, ""
        tried = os.path.join(cwd, self.path)
        directory = os.path.dirname(tried)
        why = ""
        if not os.path.exists(directory):
            why = f" (the directory {directory} does not exist)"
        elif not os.path.isdir(directory):
            why = f" ({directory} is not a directory)"
        elif not os.access(directory, os.W_OK | os.X_OK):
            why = f" (the directory {directory} is not writable)"
        elif os.path.exists(tried) and not os.access(tried, os.R_OK | os.W_OK):
            why = " (the file is not readable and writable)"
        if not os.path.isabs(self.path) and os.path.dirname(self.path):
            twin = "/" + self.path
            if os.path.isdir(os.path.dirname(twin)):
                why += (
                    f"; {self.url} is the relative path {self.path}, in {cwd}: "
                    f"for {twin} write sqlite:///{twin}"
                )
        return tried, why

    @contextmanager
    def _tx(
        self, operation: str, table: str, *, write: bool = True, savepoint: bool = True
    ) -> Iterator[sqlite3.Connection]:
        """A transaction: ``BEGIN IMMEDIATE`` for writes (the lock is held from the first read),
        a deferred one for consistent reads. Driver errors become ``USAGE_CONFIG_ERROR``.

        Inside a batch each call gets a savepoint, so that a call that fails leaves nothing
        written; ``savepoint=False`` is for a call whose one write is its last statement
        (SQLite undoes a failed statement by itself), which then saves two statements."""
        batch: sqlite3.Connection | None = self._local.__dict__.get("batch")
        if batch is not None and not savepoint:
            try:
                yield batch
            except sqlite3.Error as exc:
                raise self._error(exc, operation, table) from None
            return
        if batch is not None:  # inside run_batch: one savepoint per call
            try:
                batch.execute("SAVEPOINT call")
                try:
                    yield batch
                except BaseException:
                    batch.execute("ROLLBACK TO call")
                    batch.execute("RELEASE call")
                    raise
                batch.execute("RELEASE call")
            except sqlite3.Error as exc:
                raise self._error(exc, operation, table) from None
            return
        nowait = self._local.__dict__.get("nowait", False)
        begin = "BEGIN IMMEDIATE" if write else self._READ_BEGIN
        conn, locked = self._take_turn(operation, table, write, nowait)
        try:
            if begin:
                conn.execute(begin)
            try:
                yield conn
            except BaseException:
                if begin:
                    conn.execute("ROLLBACK")
                raise
            if begin:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if nowait and _is_busy(exc):
                raise WouldBlock(operation) from None
            raise self._error(exc, operation, table) from None
        finally:
            self._end_turn(conn, locked)
        if write and nowait:
            self._nowait_commits += 1

    #: How a read begins: a deferred transaction, for a consistent view across statements.
    _READ_BEGIN: ClassVar[str | None] = "BEGIN"

    def _take_turn(
        self, operation: str, table: str, write: bool, nowait: bool
    ) -> tuple[sqlite3.Connection, bool]:
        """A connection of the pool, with this process's write lock for a write (``(conn,
        locked)``; :meth:`_end_turn` gives both back): its writers queue on a lock, in order,
        rather than poll SQLite's busy handler (which sleeps for milliseconds); other
        processes still meet at SQLite's lock."""
        conn = self._borrow()
        if not write:
            return conn, False
        if self._writer.acquire(blocking=not nowait, timeout=-1 if nowait else self.timeout):
            return conn, True
        self._give_back(conn)
        if nowait:
            raise WouldBlock(operation)
        busy = sqlite3.OperationalError("database is locked (by this process)")
        raise self._error(busy, operation, table)

    def _end_turn(self, conn: sqlite3.Connection, locked: bool) -> None:
        if locked:
            self._writer.release()
        self._give_back(conn)

    # -- lifecycle --------------------------------------------------------------------------------
    def migrate(self) -> int:
        conn = self._checkout()
        try:
            return self._migrate(conn)
        finally:
            self._give_back(conn)

    def _migrate(self, conn: sqlite3.Connection) -> int:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                sql = self._sql
                conn.execute(sql["schema_table"])
                row = conn.execute(sql["schema_version"], (self.tables.usage_events,)).fetchone()
                version = row[0] if row else 0
                if version > SCHEMA_VERSION:
                    raise config_error(
                        f"the database schema is version {version}, newer than this "
                        f"usageflow ({SCHEMA_VERSION}); upgrade usageflow"
                    )
                if version == 0:  # tables made by the JavaScript package, if any
                    adopt(conn, self.tables, sql["schema"])
                if 0 < version < 3:
                    self._rebuild_holds(conn)
                if 0 < version < 4:
                    self._rebuild_events(conn)
                if 0 < version < 5:
                    columns = {row[1] for row in conn.execute(sql["holds_columns"])}
                    if "alert" not in columns:
                        conn.execute(sql["holds_alert_column"])
                if 0 < version < 6:
                    self._add_columns(conn, "columns_v6")
                if version < SCHEMA_VERSION:
                    _run_script(conn, sql["schema"])
                    conn.execute(sql["holds_pool_v6"])
                    conn.execute(
                        sql["schema_version_set"], (self.tables.usage_events, SCHEMA_VERSION)
                    )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._error(exc, "migrate", None) from None
        self._migrated = True
        return SCHEMA_VERSION

    def _add_columns(self, conn: sqlite3.Connection, block: str) -> None:
        """Run the ``ALTER TABLE ... ADD COLUMN`` statements of ``block`` whose table exists
        without the column (a table the schema creates next gets it from its DDL)."""
        for statement in filter(str.strip, self._sql[block].split(";")):
            match = _ADD_COLUMN.search(statement)
            assert match is not None, statement
            table, column = match[1], match[2]
            info = self._sql["table_columns"].format(table=table)
            columns = {row[1] for row in conn.execute(info)}
            if columns and column not in columns:
                conn.execute(statement)

    def _rebuild_holds(self, conn: sqlite3.Connection) -> None:
        """Version 3's holds table, from an older one (``rebuild_holds`` in sqlite.sql)."""
        name = self.tables.holds
        if not conn.execute(self._sql["table_exists"], (name,)).fetchone():
            return
        conn.execute(render_sqlite(self.tables, holds=f"{name}_v3")["holds_table"])
        _run_script(conn, self._sql["rebuild_holds"])

    def _rebuild_events(self, conn: sqlite3.Connection) -> None:
        """Version 4's ledger, from an older one whose ``idempotency_key`` column was UNIQUE
        (``rebuild_events`` in sqlite.sql)."""
        indexes = conn.execute(self._sql["events_indexes"]).fetchall()
        if not any(row[3] == "u" for row in indexes):
            return
        name = self.tables.usage_events
        conn.execute(render_sqlite(self.tables, events=f"{name}_v4")["events_table"])
        _run_script(conn, self._sql["rebuild_events"])

    def connection_check(self) -> bool:
        """True when the database accepts writes: under the write lock, page 1 is rewritten
        with the ``user_version`` it already holds, then rolled back, so nothing is written.
        A file SQLite opened read-only (permissions, an immutable file, a read-only mount)
        fails here, as every write would, instead of answering a read."""
        try:
            with self._tx("connection_check", "", write=True) as c:
                (version,) = c.execute("PRAGMA user_version").fetchone()
                c.execute(f"PRAGMA user_version = {int(version)}")
                raise _RollBack
        except _RollBack:
            return True

    # -- plans ----------------------------------------------------------------------------------
    def _plan(self, row: sqlite3.Row | tuple[Any, ...], limits: dict[str, FeatureLimit]) -> Plan:
        pid, name, price_id, amount, currency, is_free, link = row
        return Plan(
            id=pid,
            name=name,
            stripe_price_id=price_id,
            price_amount=None if amount is None else Decimal(str(amount)).quantize(Decimal("0.01")),
            price_currency=currency,
            is_free=bool(is_free),
            payment_link_url=link,
            limits=limits,
        )

    def load_catalog(self) -> list[Plan]:
        sql = self._sql
        with self._tx("load_catalog", self.tables.user_plans, write=False) as c:
            plans = c.execute(sql["catalog_plans"]).fetchall()
            rows = c.execute(sql["catalog_limits"]).fetchall()
        limits: dict[int, dict[str, FeatureLimit]] = {}
        for plan_id, feature, value, period, per_seat in rows:
            limits.setdefault(plan_id, {})[feature] = FeatureLimit(
                plan_id=plan_id,
                feature_name=feature,
                limit_value=value,
                period=period,
                per_seat=bool(per_seat),
            )
        return [self._plan(p, limits.get(p[0], {})) for p in plans]

    def upsert_plan(
        self,
        *,
        name: str,
        stripe_price_id: str | None,
        price_amount: Decimal | None,
        price_currency: str | None,
        is_free: bool,
        payment_link_url: str | None,
    ) -> Plan:
        sql = self._sql
        amount = None if price_amount is None else str(price_amount)
        with self._tx("upsert_plan", self.tables.user_plans) as c:
            if stripe_price_id is not None:
                found = c.execute(sql["upsert_plan_by_price"], (stripe_price_id,)).fetchone()
            else:
                found = c.execute(sql["upsert_plan_by_name"], (name,)).fetchone()
            values = (name, stripe_price_id, amount, price_currency, int(is_free), payment_link_url)
            if found:
                c.execute(sql["upsert_plan_update"], (*values, found[0]))
                plan_id = found[0]
            else:
                plan_id = c.execute(sql["upsert_plan_insert"], values).lastrowid
            row = c.execute(sql["upsert_plan_read"], (plan_id,)).fetchone()
        return self._plan(row, {})

    def set_feature_limit(
        self,
        *,
        plan_id: int,
        feature_name: str,
        limit_value: int,
        period: str,
        per_seat: bool = False,
    ) -> FeatureLimit:
        sql = self._sql
        with self._tx("set_feature_limit", self.tables.usage_feature_limits) as c:
            if not c.execute(sql["set_limit_plan"], (plan_id,)).fetchone():
                raise invalid(f"no plan with id {plan_id}", plan_id=plan_id)
            c.execute(sql["set_limit"], (plan_id, feature_name, limit_value, period, per_seat))
        return FeatureLimit(
            plan_id=plan_id,
            feature_name=feature_name,
            limit_value=limit_value,
            period=period,
            per_seat=per_seat,
        )

    def update_price(
        self, *, stripe_price_id: str, price_amount: Decimal | None, price_currency: str | None
    ) -> int:
        with self._tx("update_price", self.tables.user_plans) as c:
            cur = c.execute(
                self._sql["update_price"],
                (
                    None if price_amount is None else str(price_amount),
                    price_currency,
                    stripe_price_id,
                ),
            )
            return cur.rowcount

    # -- profiles and adjustments ---------------------------------------------------------------
    _PROFILE_COLS = ("id", *PROFILE_FIELDS)

    def _profile(self, row: tuple[Any, ...]) -> Profile:
        data = dict(zip(self._PROFILE_COLS, row, strict=True))
        for field in ("current_period_start", "current_period_end"):
            data[field] = _dt(data[field])
        return Profile(**data)

    def get_profile(self, *, user_id: str) -> Profile | None:
        with self._tx("get_profile", self.tables.profiles, write=False) as c:
            row = c.execute(self._sql["get_profile"], (user_id,)).fetchone()
        return None if row is None else self._profile(row)

    def upsert_profile(self, *, user_id: str, fields: dict[str, Any]) -> Profile:
        columns = [f for f in PROFILE_FIELDS if f in fields]
        values = [
            _ts_or_none(fields[f]) if isinstance(fields[f], datetime) else fields[f]
            for f in columns
        ]
        with self._tx("upsert_profile", self.tables.profiles) as c:
            c.execute(self._upsert_profile_sql(columns), (user_id, *values))
            row = c.execute(self._sql["get_profile"], (user_id,)).fetchone()
        return self._profile(row)

    def _upsert_profile_sql(self, columns: Sequence[str]) -> str:
        """``upsert_profile`` for these columns (of :data:`PROFILE_FIELDS`, so plain names)."""
        sql = self._sql
        update = (
            sql["upsert_profile_update"].format(
                assignments=", ".join(f"{col} = excluded.{col}" for col in columns)
            )
            if columns
            else sql["upsert_profile_keep"]
        )
        return sql["upsert_profile"].format(
            columns=", ".join(["id", *columns]),
            marks=", ".join("?" * (len(columns) + 1)),
            update=update,
        )

    def add_limit_adjustment(
        self,
        *,
        user_id: str,
        feature_name: str,
        amount: int,
        type: str,
        start_date: datetime,
        end_date: datetime,
        metadata: dict[str, Any] | None,
    ) -> LimitAdjustment:
        with self._tx("add_limit_adjustment", self.tables.user_limit_adjustments) as c:
            cur = c.execute(
                self._sql["add_adjustment"],
                (
                    user_id,
                    feature_name,
                    amount,
                    type,
                    _ts(start_date),
                    _ts(end_date),
                    _json(metadata),
                ),
            )
            adj_id = cur.lastrowid
        assert adj_id is not None
        return LimitAdjustment(
            id=adj_id,
            user_id=user_id,
            feature_name=feature_name,
            amount=amount,
            type=type,  # type: ignore[arg-type]
            start_date=start_date,
            end_date=end_date,
            metadata=metadata,
        )

    def get_limit_adjustments(
        self, *, user_id: str, feature_name: str, ending_after: datetime
    ) -> list[LimitAdjustment]:
        with self._tx(
            "get_limit_adjustments", self.tables.user_limit_adjustments, write=False
        ) as c:
            rows = c.execute(
                self._sql["adjustments"], (user_id, feature_name, _ts(ending_after))
            ).fetchall()
        return [
            LimitAdjustment(
                id=r[0],
                user_id=user_id,
                feature_name=feature_name,
                amount=r[1],
                type=r[2],
                start_date=_dt(r[3]),  # type: ignore[arg-type]
                end_date=_dt(r[4]),  # type: ignore[arg-type]
                metadata=json.loads(r[5]) if r[5] else None,
            )
            for r in rows
        ]

    # -- the ledger -----------------------------------------------------------------------------
    # A counter is (total, last_ts, last_reset_at, reset_base, reset_pre_total, grant_total,
    # reset_grant_base).
    _NO_COUNTER: ClassVar[tuple[Any, ...]] = (0, None, None, 0, 0, 0, 0)

    def _counter(self, c: sqlite3.Connection, user_id: str, feature_name: str) -> tuple[Any, ...]:
        row = c.execute(self._sql["counter"], (user_id, feature_name)).fetchone()
        return row or self._NO_COUNTER

    def _state(
        self,
        c: sqlite3.Connection,
        user_id: str,
        feature_name: str,
        window_start: datetime | None,
        now: datetime,
    ) -> tuple[tuple[Any, ...], int, int, int, int, int]:
        """What a decision reads, in one statement (``used``): (the counter, the usage in the
        window, the credits of live holds, how many holds have expired but are still marked
        held, the part of the usage grants paid for in the window, the live grants'
        balance)."""
        row = c.execute(
            self._sql["used"],
            (user_id, feature_name, None if window_start is None else _ts(window_start), _ts(now)),
        ).fetchone()
        counter = self._NO_COUNTER if row[0] is None else row[:7]
        last_reset = _dt(counter[2])
        used = window_used(counter[0], window_start, last_reset, counter[3], row[7] or 0)
        granted = (
            window_used(counter[5], window_start, last_reset, counter[6], row[8] or 0)
            if counter[5] or row[8]
            else 0  # the key has never spent a grant's credit
        )
        live, balance = row[9], row[11]
        # The credits are non-negative integers, so TOTAL()'s float below 2**53 is exact;
        # past it, they are summed here.
        held = (
            int(live) if live < _EXACT_FLOAT else self._held_exactly(c, user_id, feature_name, now)
        )
        if balance >= _EXACT_FLOAT:
            spend = c.execute(self._sql["grant_draw_spend"], (user_id, feature_name, _ts(now)))
            balance = sum(remaining for _id, remaining in spend)
        return counter, used, held, int(row[10]), granted, int(balance)

    def _held_exactly(
        self, c: sqlite3.Connection, user_id: str, feature_name: str, now: datetime
    ) -> int:
        rows = c.execute(self._sql["held"], (user_id, feature_name, _ts(now))).fetchall()
        return sum(credits for (credits,) in rows)

    def _event(self, row: tuple[Any, ...], replayed: bool = False) -> UsageEvent:
        return UsageEvent(
            id=row[0],
            user_id=row[1],
            feature_name=row[2],
            credits_used=row[3],
            event_type=row[4],
            metadata=json.loads(row[5]) if row[5] else None,
            timestamp=_dt(row[6]),  # type: ignore[arg-type]
            idempotency_key=row[7],
            replayed=replayed,
        )

    def _by_key(
        self, c: sqlite3.Connection, key: str, user_id: str | None = None, feature_name: str = ""
    ) -> UsageEvent | None:
        """The event of an idempotency key in its (user, feature); without a user, the event
        of a reservation's commit (``reservation:<id>``, unique by construction)."""
        if user_id is None:
            row = c.execute(self._sql["settle_replay"], (key,)).fetchone()
        else:
            row = c.execute(self._sql["charge_replay"], (key, user_id, feature_name)).fetchone()
        return None if row is None else self._event(row, replayed=True)

    def _append(
        self,
        c: sqlite3.Connection,
        counter: tuple[Any, ...],
        user_id: str,
        feature_name: str,
        credits: int | None,
        event_type: str,
        now: datetime,
        metadata: dict[str, Any] | None,
        idempotency_key: str | None,
        *,
        reset: bool = False,
        granted: int = 0,
    ) -> UsageEvent:
        total, last_ts, last_reset_at, reset_base, reset_pre, grant_total, grant_base = counter
        if credits is not None:
            check_total(total, credits)
        now_s = _ts(now)
        ts = now_s if last_ts is None or now_s > last_ts else last_ts
        new_total = total + (credits or 0)
        grant_total += granted
        cur = c.execute(
            self._sql["append_event"],
            (
                user_id,
                feature_name,
                credits,
                event_type,
                _json(metadata),
                ts,
                idempotency_key,
                new_total,
                granted,
                grant_total,
            ),
        )
        if reset:
            last_reset_at, reset_base, grant_base = ts, new_total, grant_total
            reset_pre = int((metadata or {}).get("pre_reset_total", 0))
        c.execute(
            self._sql["append_counter"],
            (
                user_id,
                feature_name,
                new_total,
                ts,
                last_reset_at,
                reset_base,
                reset_pre,
                grant_total,
                grant_base,
            ),
        )
        event_id = cur.lastrowid
        assert event_id is not None
        return UsageEvent._trusted(
            id=event_id,
            user_id=user_id,
            feature_name=feature_name,
            credits_used=credits,
            event_type=event_type,
            metadata=metadata,
            timestamp=_dt(ts),
            idempotency_key=idempotency_key,
            replayed=False,
        )

    @_group_committed
    def charge(
        self,
        *,
        user_id: str,
        feature_name: str,
        credits: int,
        event_type: str,
        limit: int | None,
        window_start: datetime | None,
        now: datetime,
        metadata: dict[str, Any] | None,
        idempotency_key: str | None,
        alert_thresholds: Sequence[int] | None = None,
        resets_at: datetime | None = None,
        force: bool = False,
        pool_id: str | None = None,
        member_cap: int | None = None,
    ) -> Charge:
        with self._tx("charge", self.tables.usage_events) as c:
            if pool_id is not None:
                return self._team_charge(
                    c,
                    user_id,
                    pool_id,
                    feature_name,
                    credits,
                    event_type,
                    limit,
                    member_cap,
                    window_start,
                    now,
                    metadata,
                    idempotency_key,
                    alert_thresholds,
                    resets_at,
                    force,
                )
            first = (
                None
                if idempotency_key is None
                else self._by_key(c, idempotency_key, user_id, feature_name)
            )
            if first is not None or limit is not None or credits < 0:
                counter, used, held, _expired, granted, balance = self._state(
                    c, user_id, feature_name, window_start, now
                )
            else:  # pure tracking: no window is asked for, no grant is touched
                counter = self._counter(c, user_id, feature_name)
                used, held, granted, balance = counter[0], 0, 0, 0
            if first is not None:
                return Charge(True, used, held, first, True, None, None, (), granted, balance)
            share: int | None
            if balance or granted or credits < 0 or force:
                share = grant_share(credits, limit, used, held, granted, balance, force)
            else:  # no grant in play (the common case): the plain quota rule, no call
                share = None if limit is not None and max(used, 0) + held + credits > limit else 0
            if share is None:
                return Charge(False, used, held, None, False, None, None, (), granted, balance)
            moved = self._draw(c, user_id, feature_name, share, now) if share else 0
            event = self._append(
                c,
                counter,
                user_id,
                feature_name,
                credits,
                event_type,
                now,
                metadata,
                idempotency_key,
                granted=share,
            )
            after = Charge(
                True,
                used + credits,
                held,
                event,
                False,
                None,
                None,
                (),
                granted + share,
                balance - moved,
            )
            if not alert_thresholds or limit is None:
                return after
            alerts = self._record_alerts(
                c,
                user_id,
                feature_name,
                alert_thresholds,
                (used - granted, after.used - after.granted, limit),
                alert_window(window_start, _dt(counter[2])),
                resets_at,
                event.timestamp,
            )
            return after._replace(alerts=alerts)

    def _member_state(
        self,
        c: sqlite3.Connection,
        user_id: str,
        pool_id: str,
        feature_name: str,
        window_start: datetime | None,
        now: datetime,
    ) -> tuple[
        tuple[Any, ...], tuple[Any, ...], tuple[int, int, int, int], tuple[int, int, int, int]
    ]:
        """A team member's decision reads: (the pool's counter, the member's counter, the
        pool's (used, held, granted, balance), the member's)."""
        pool_counter, used, held, expired, granted, balance = self._state(
            c, pool_id, feature_name, window_start, now
        )
        if expired:
            c.execute(self._sql["reserve_expire"], (pool_id, feature_name, _ts(now)))
        counter, m_used, _h, _e, m_granted, m_balance = self._state(
            c, user_id, feature_name, window_start, now
        )
        (m_held,) = c.execute(
            self._sql["charge_member_held"], (user_id, feature_name, _ts(now))
        ).fetchone()
        return (
            pool_counter,
            counter,
            (used, held, granted, balance),
            (m_used, int(m_held), m_granted, m_balance),
        )

    def _team_charge(
        self,
        c: sqlite3.Connection,
        user_id: str,
        pool_id: str,
        feature_name: str,
        credits: int,
        event_type: str,
        limit: int | None,
        cap: int | None,
        window_start: datetime | None,
        now: datetime,
        metadata: dict[str, Any] | None,
        idempotency_key: str | None,
        alert_thresholds: Sequence[int] | None,
        resets_at: datetime | None,
        force: bool,
    ) -> Charge:
        """:meth:`charge` of a team member (see :func:`usageflow.ops.charge`)."""
        pool_counter, counter, pool, member = self._member_state(
            c, user_id, pool_id, feature_name, window_start, now
        )
        used, held, granted, balance = pool
        first = (
            None
            if idempotency_key is None
            else self._by_key(c, idempotency_key, user_id, feature_name)
        )
        if first is not None:
            return Charge(
                True, used, held, first, True, granted=granted, balance=balance, member=member
            )
        split = team_split(credits, limit, cap, pool, member, force)
        if isinstance(split, str):
            return Charge(
                False, used, held, granted=granted, balance=balance, member=member, scope=split
            )
        event, alerts = self._team_append(
            c,
            user_id,
            pool_id,
            feature_name,
            credits,
            event_type,
            split,
            (pool_counter, counter),
            (pool, member),
            window_start,
            now,
            metadata,
            idempotency_key,
            (alert_thresholds, limit, resets_at),
        )
        m_used, m_held, m_granted, m_balance = member
        return Charge(
            True,
            used + split.pool,
            held,
            event,
            granted=granted + split.pool_granted,
            balance=balance - split.pool_granted,
            member=(m_used + credits, m_held, m_granted + split.own, m_balance - split.own),
            alerts=alerts,
        )

    def _team_append(
        self,
        c: sqlite3.Connection,
        user_id: str,
        pool_id: str,
        feature_name: str,
        credits: int,
        event_type: str,
        split: TeamSplit,
        counters: tuple[tuple[Any, ...], tuple[Any, ...]],
        states: tuple[tuple[int, int, int, int], tuple[int, int, int, int]],
        window_start: datetime | None,
        now: datetime,
        metadata: dict[str, Any] | None,
        idempotency_key: str | None,
        alert: tuple[Sequence[int] | None, int | None, datetime | None],
    ) -> tuple[UsageEvent, tuple[int, ...]]:
        """Record a team member's split charge: the whole on the member's key, the pool's
        part on the account's (marked with the member), grants drawn or given back, and the
        alerts the pool's part crossed."""
        pool_counter, counter = counters
        if split.own:
            self._draw(c, user_id, feature_name, split.own, now)
        if split.pool_granted:
            self._draw(c, pool_id, feature_name, split.pool_granted, now)
        event = self._append(
            c,
            counter,
            user_id,
            feature_name,
            credits,
            event_type,
            now,
            metadata,
            idempotency_key,
            granted=split.own,
        )
        alerts: tuple[int, ...] = ()
        if split.pool:
            mirror = {**(metadata or {}), "_usageflow_member": user_id}
            pool_event = self._append(
                c,
                pool_counter,
                pool_id,
                feature_name,
                split.pool,
                event_type,
                now,
                mirror,
                None,
                granted=split.pool_granted,
            )
            thresholds, limit, resets_at = alert
            used, _held, granted, _balance = states[0]
            if thresholds and limit is not None and split.pool > 0:
                alerts = self._record_alerts(
                    c,
                    pool_id,
                    feature_name,
                    thresholds,
                    (used - granted, used + split.pool - granted - split.pool_granted, limit),
                    alert_window(window_start, _dt(pool_counter[2])),
                    resets_at,
                    pool_event.timestamp,
                )
        return event, alerts

    def _draw(
        self, c: sqlite3.Connection, user_id: str, feature_name: str, amount: int, now: datetime
    ) -> int:
        """Take ``amount`` credits from the key's live grants in spending order (a negative
        ``amount``: give them back in the reverse order, to grants something was spent from
        and that have not expired); answer the credits moved (given back: negative)."""
        sql = self._sql
        spend = amount > 0
        left = abs(amount)
        rows = c.execute(
            sql["grant_draw_spend" if spend else "grant_draw_give_back"],
            (user_id, feature_name, _ts(now)),
        ).fetchall()
        for grant_id, room in rows:
            step = min(room, left)
            c.execute(sql["grant_draw_remaining"], (step if spend else -step, grant_id))
            left -= step
            if not left:
                break
        moved = abs(amount) - left
        return moved if spend else -moved

    def _record_alerts(
        self,
        c: sqlite3.Connection,
        user_id: str,
        feature_name: str,
        thresholds: Sequence[int],
        usage: tuple[int, int, int],
        window: datetime | None,
        resets_at: datetime | None,
        now: datetime,
    ) -> tuple[int, ...]:
        """The alerts of the thresholds a charge crossed (``usage``: before, after, limit),
        each unless it already has one in the window (``None``: ever)."""
        sql = self._sql
        since = "" if window is None else _ts(window)
        recorded = []
        for threshold in crossed(thresholds, *usage):
            if c.execute(sql["alerts_seen"], (user_id, feature_name, threshold, since)).fetchone():
                continue
            c.execute(
                sql["alerts_record"],
                (
                    user_id,
                    feature_name,
                    threshold,
                    usage[1],
                    usage[2],
                    _ts_or_none(window),
                    _ts_or_none(resets_at),
                    _ts(now),
                ),
            )
            recorded.append(threshold)
        return tuple(recorded)

    @_group_committed
    def reserve(
        self,
        *,
        reservation_id: str,
        user_id: str,
        feature_name: str,
        credits: int,
        limit: int | None,
        window_start: datetime | None,
        now: datetime,
        expires_at: datetime,
        idempotency_key: str | None,
        alert_thresholds: Sequence[int] | None = None,
        resets_at: datetime | None = None,
        pool_id: str | None = None,
        member_cap: int | None = None,
    ) -> Charge:
        sql = self._sql
        # No savepoint in a batch: the insert of the hold is the one write (marking expired
        # holds and pruning old ones change nothing a decision reads, so they may stay).
        with self._tx("reserve", self.tables.holds, savepoint=False) as c:
            member: tuple[int, int, int, int] | None = None
            if pool_id is None:
                _counter, used, held, expired, granted, balance = self._state(
                    c, user_id, feature_name, window_start, now
                )
                if expired:
                    c.execute(sql["reserve_expire"], (user_id, feature_name, _ts(now)))
                    self._prune_holds(c, user_id, feature_name, now)
                fits = grant_share(credits, limit, used, held, granted, balance, False) is not None
                scope = None
            else:
                _p, _m, pool, own = self._member_state(
                    c, user_id, pool_id, feature_name, window_start, now
                )
                member = own
                used, held, granted, balance = pool
                split = team_split(credits, limit, member_cap, pool, own, False)
                fits = not isinstance(split, str)
                scope = split if isinstance(split, str) else None
            if idempotency_key is not None:
                row = c.execute(
                    sql["reserve_replay"], (idempotency_key, user_id, feature_name)
                ).fetchone()
                if row:
                    return Charge(
                        True,
                        used,
                        held,
                        replayed=True,
                        reservation_id=row[0],
                        first_credits=row[1],
                        granted=granted,
                        balance=balance,
                        member=member,
                    )
            # A reused reservation id is refused as PostgreSQL refuses it, whether or not the
            # credits fit; the id is looked up only when the insert fails or nothing fits, so
            # a reservation that goes through pays no extra seek.
            if not fits:
                self._refuse_reused_id(c, reservation_id)
                return Charge(
                    False, used, held, granted=granted, balance=balance, member=member, scope=scope
                )
            try:
                c.execute(
                    sql["reserve"],
                    (
                        reservation_id,
                        user_id,
                        feature_name,
                        credits,
                        _ts(now),
                        _ts(expires_at),
                        idempotency_key,
                        _hold_alert(
                            alert_thresholds, limit, window_start, resets_at, pool_id, member_cap
                        ),
                        pool_id or user_id,
                    ),
                )
            except sqlite3.IntegrityError:  # SQLite undid the statement: nothing written
                self._refuse_reused_id(c, reservation_id)
                raise
            if member is not None:
                member = (member[0], member[1] + credits, member[2], member[3])
            return Charge(
                True,
                used,
                held + credits,
                reservation_id=reservation_id,
                granted=granted,
                balance=balance,
                member=member,
            )

    def _refuse_reused_id(self, c: sqlite3.Connection, reservation_id: str) -> None:
        """Raise ``USAGE_INVALID_PARAMS`` when a hold with this id exists."""
        if c.execute(self._sql["reserve_id_used"], (reservation_id,)).fetchone():
            raise invalid("reservation id already used", reservation_id=reservation_id)

    @_group_committed
    def settle(
        self,
        *,
        reservation_id: str,
        credits: int | None,
        now: datetime,
        metadata: dict[str, Any] | None,
    ) -> UsageEvent | None:
        sql = self._sql
        with self._tx("settle", self.tables.holds) as c:
            row = c.execute(sql["settle_hold"], (reservation_id,)).fetchone()
            key = f"reservation:{reservation_id}"
            if row is None or row[2] == "committed":
                event = self._by_key(c, key)
                if event is None and row is None:
                    raise reservation_error("no such reservation", reservation_id=reservation_id)
                return event
            user_id, feature_name, status, hold_key, alert, _pool = row[:6]
            if credits is None:
                c.execute(sql["settle_release"], (reservation_id,))
                self._prune_holds(c, user_id, feature_name, now)
                return None
            if status == "released":
                raise reservation_error(
                    "reservation was released; it cannot be committed",
                    reservation_id=reservation_id,
                )
            counter = self._NO_COUNTER if row[6] is None else row[6:]
            rule = None if alert is None else json.loads(alert)
            if rule is not None and rule.get("pool_id"):  # a team member's hold
                event = self._team_commit(
                    c, user_id, feature_name, credits, rule, now, metadata, key
                )
                self._end_hold(c, reservation_id, hold_key, event, user_id, feature_name, now)
                return event
            share = 0
            if rule is not None:  # split as a forced charge in the hold's window
                window = _dt(rule["window_start"])
                _c, used, _h, _e, granted, balance = self._state(
                    c, user_id, feature_name, window, now
                )
                share = grant_share(credits, rule["limit"], used, 0, granted, balance, True) or 0
                if share:
                    self._draw(c, user_id, feature_name, share, now)
            event = self._append(
                c,
                counter,
                user_id,
                feature_name,
                credits,
                "usage",
                now,
                metadata,
                key,
                granted=share,
            )
            if rule is not None and rule["thresholds"]:
                self._record_alerts(
                    c,
                    user_id,
                    feature_name,
                    rule["thresholds"],
                    (used - granted, used + credits - granted - share, rule["limit"]),
                    alert_window(window, _dt(counter[2])),
                    _dt(rule["resets_at"]),
                    event.timestamp,
                )
            self._end_hold(c, reservation_id, hold_key, event, user_id, feature_name, now)
            return event

    def _team_commit(
        self,
        c: sqlite3.Connection,
        user_id: str,
        feature_name: str,
        credits: int,
        rule: dict[str, Any],
        now: datetime,
        metadata: dict[str, Any] | None,
        key: str,
    ) -> UsageEvent:
        """The commit of a team member's hold: split as a forced charge in its window."""
        pool_id, window = rule["pool_id"], _dt(rule["window_start"])
        pool_counter, counter, pool, member = self._member_state(
            c, user_id, pool_id, feature_name, window, now
        )
        split = team_split(credits, rule["limit"], rule["cap"], pool, member, True)
        assert not isinstance(split, str)  # a forced split always fits
        event, _alerts = self._team_append(
            c,
            user_id,
            pool_id,
            feature_name,
            credits,
            "usage",
            split,
            (pool_counter, counter),
            (pool, member),
            window,
            now,
            metadata,
            key,
            (rule["thresholds"], rule["limit"], _dt(rule["resets_at"])),
        )
        return event

    def _end_hold(
        self,
        c: sqlite3.Connection,
        reservation_id: str,
        hold_key: str | None,
        event: UsageEvent,
        user_id: str,
        feature_name: str,
        now: datetime,
    ) -> None:
        """A committed hold is deleted (its event, keyed by the reservation, answers), or kept
        when it has an idempotency key (a reserve with the key replays it)."""
        if hold_key is None:
            c.execute(self._sql["settle_delete"], (reservation_id,))
        else:
            c.execute(self._sql["settle_commit"], (event.id, reservation_id))
            self._prune_holds(c, user_id, feature_name, now)

    def _prune_holds(
        self, c: sqlite3.Connection, user_id: str, feature_name: str, now: datetime
    ) -> None:
        """Delete the settled or expired holds of this key kept past :data:`HOLD_GRACE`."""
        c.execute(self._sql["prune_holds"], (user_id, feature_name, _ts(now - HOLD_GRACE)))

    def usage(
        self,
        *,
        user_id: str,
        feature_name: str,
        window_start: datetime | None,
        now: datetime,
        pool_id: str | None = None,
    ) -> UsageRead:
        with self._tx("usage", self.tables.usage_events, write=False) as c:
            if pool_id is not None:
                _p, _m, pool, member = self._member_state(
                    c, user_id, pool_id, feature_name, window_start, now
                )
                return UsageRead(*pool, member=member)
            _counter, used, held, _expired, granted, balance = self._state(
                c, user_id, feature_name, window_start, now
            )
            return UsageRead(used, held, granted, balance)

    def reset(
        self,
        *,
        user_id: str,
        feature_name: str,
        window_start: datetime | None,
        now: datetime,
        metadata: dict[str, Any] | None,
    ) -> UsageEvent:
        with self._tx("reset", self.tables.usage_events) as c:
            counter, used, _held, _expired, _granted, _balance = self._state(
                c, user_id, feature_name, window_start, now
            )
            meta = {**(metadata or {}), "pre_reset_total": max(used, 0)}
            return self._append(
                c, counter, user_id, feature_name, None, "reset", now, meta, None, reset=True
            )

    def usage_since_reset(self, *, user_id: str, feature_name: str) -> ResetInfo:
        with self._tx("usage_since_reset", self.tables.usage_events, write=False) as c:
            total, _last_ts, last_reset_at, reset_base, pre, *_grants = self._counter(
                c, user_id, feature_name
            )
        if last_reset_at is None:
            return ResetInfo(total, None, 0)
        return ResetInfo(total - reset_base, _dt(last_reset_at), pre)

    def hourly_totals(
        self,
        *,
        user_ids: Sequence[str],
        feature_names: Sequence[str],
        start: datetime | None,
        end: datetime,
        by_member: bool = False,
    ) -> list[HourlyTotal]:
        params: list[Any] = [*user_ids, *feature_names, _ts(end)]
        if start is not None:
            params.append(_ts(start))
        sql = self._hourly_sql(len(user_ids), len(feature_names), start is not None, by_member)
        with self._tx("hourly_totals", self.tables.usage_events, write=False) as c:
            rows = c.execute(sql, params).fetchall()
        return [
            HourlyTotal(
                u, f, datetime.strptime(h, "%Y-%m-%d %H").replace(tzinfo=timezone.utc), int(t)
            )
            for u, f, h, t in rows
        ]

    def _hourly_sql(self, users: int, features: int, since: bool, by_member: bool) -> str:
        """``hourly`` (or ``hourly_by_member``) with its IN lists of ``users`` and
        ``features`` marks, and the start term when ``since``."""
        sql = self._sql
        return sql["hourly_by_member" if by_member else "hourly"].format(
            users=", ".join("?" * users),
            features=", ".join("?" * features),
            since=sql["hourly_since"] if since else "",
        )

    def list_events(
        self, *, user_id: str, feature_name: str | None = None, limit: int = 100
    ) -> list[UsageEvent]:
        with self._tx("list_events", self.tables.usage_events, write=False) as c:
            if feature_name is None:
                rows = c.execute(self._sql["events"], (user_id, limit)).fetchall()
            else:
                rows = c.execute(
                    self._sql["events_of_feature"], (user_id, feature_name, limit)
                ).fetchall()
        return [self._event(r) for r in rows]

    def ledger_check(self, *, user_id: str, feature_name: str) -> tuple[int, int]:
        with self._tx("ledger_check", self.tables.usage_events, write=False) as c:
            total = self._counter(c, user_id, feature_name)[0]
            (ledger,) = c.execute(self._sql["ledger_check"], (user_id, feature_name)).fetchone()
        return int(total), int(ledger)

    def top_usage(
        self, *, feature_name: str, window_start: datetime | None, limit: int
    ) -> list[tuple[str, int]]:
        start = None if window_start is None else _ts(window_start)
        with self._tx("top_usage", self.tables.counters, write=False) as c:
            rows = c.execute(self._sql["top_users"], (feature_name, start, limit)).fetchall()
        return [(str(user_id), int(used)) for user_id, used in rows]

    def list_recent_events(self, *, feature_name: str | None, limit: int) -> list[UsageEvent]:
        with self._tx("list_recent_events", self.tables.usage_events, write=False) as c:
            if feature_name is None:
                rows = c.execute(self._sql["recent_events"], (limit,)).fetchall()
            else:
                rows = c.execute(
                    self._sql["recent_events_of_feature"], (feature_name, limit)
                ).fetchall()
        return [self._event(r) for r in rows]

    # -- Stripe ---------------------------------------------------------------------------------
    # -- team accounts ----------------------------------------------------------------------------
    def add_member(
        self, *, account_id: str, user_id: str, limits: dict[str, int], now: datetime
    ) -> Membership:
        sql = self._sql
        with self._tx("add_member", self.tables.members) as c:
            current, account_is_member, user_has_members = c.execute(
                sql["add_member_current"], (user_id, account_id)
            ).fetchone()
            if current is not None and current != account_id:
                raise invalid(
                    f"user {user_id!r} is a member of another account ({current!r}); "
                    "remove them from it first",
                    field="user_id",
                )
            if account_is_member:
                raise invalid(
                    f"{account_id!r} is a member of an account itself; accounts do not nest",
                    field="account_id",
                )
            if user_has_members:
                raise invalid(
                    f"{user_id!r} is an account with members; accounts do not nest",
                    field="user_id",
                )
            c.execute(
                sql["add_member_upsert"],
                (account_id, user_id, json.dumps(limits, sort_keys=True), _ts(now)),
            )
            return _membership(c.execute(sql["add_member_read"], (account_id, user_id)).fetchone())

    def remove_member(self, *, account_id: str, user_id: str, now: datetime) -> bool:
        with self._tx("remove_member", self.tables.members) as c:
            cur = c.execute(self._sql["remove_member"], (_ts(now), account_id, user_id))
            return cur.rowcount > 0

    def list_members(self, *, account_id: str, removed: bool) -> list[Membership]:
        with self._tx("list_members", self.tables.members, write=False) as c:
            rows = c.execute(self._sql["list_members"], (account_id, removed)).fetchall()
        return [_membership(row) for row in rows]

    def has_members(self) -> bool:
        with self._tx("has_members", self.tables.members, write=False) as c:
            return bool(c.execute(self._sql["has_members"]).fetchone()[0])

    def get_membership(self, *, user_id: str) -> Membership | None:
        with self._tx("get_membership", self.tables.members, write=False) as c:
            row = c.execute(self._sql["get_membership"], (user_id,)).fetchone()
        return None if row is None else _membership(row)

    # -- credits --------------------------------------------------------------------------------
    def grant_credits(
        self,
        *,
        user_id: str,
        feature_name: str,
        credits: int,
        expires_at: datetime | None,
        source: str,
        reason: str | None,
        metadata: dict[str, Any] | None,
        idempotency_key: str | None,
        payment_ref: str | None,
        now: datetime,
    ) -> Grant:
        with self._tx("grant_credits", self.tables.grants) as c:
            return self._grant(
                c,
                user_id,
                feature_name,
                credits,
                expires_at,
                source,
                reason,
                metadata,
                idempotency_key,
                payment_ref,
                now,
            )

    def _grant(
        self,
        c: sqlite3.Connection,
        user_id: str,
        feature_name: str,
        credits: int,
        expires_at: datetime | None,
        source: str,
        reason: str | None,
        metadata: dict[str, Any] | None,
        idempotency_key: str | None,
        payment_ref: str | None,
        now: datetime,
    ) -> Grant:
        sql = self._sql
        if idempotency_key is not None:
            row = c.execute(sql["grant_credits_replay"], (user_id, idempotency_key)).fetchone()
            if row is not None:
                return _grant(row, replayed=True)
        cur = c.execute(
            sql["grant_credits_insert"],
            (
                user_id,
                feature_name,
                credits,
                credits,
                _ts_or_none(expires_at),
                source,
                reason,
                _json(metadata),
                idempotency_key,
                payment_ref,
                _ts(now),
            ),
        )
        c.execute(sql["grant_credits_mark"], (user_id, feature_name))
        return _grant(c.execute(sql["grant_credits_read"], (cur.lastrowid,)).fetchone())

    def list_grants(self, *, user_id: str, feature_name: str | None) -> list[Grant]:
        with self._tx("list_grants", self.tables.grants, write=False) as c:
            rows = c.execute(self._sql["list_grants"], (user_id, feature_name)).fetchall()
        return [_grant(row) for row in rows]

    def upsert_credit_pack(
        self,
        *,
        name: str,
        credits: dict[str, int],
        stripe_price_id: str | None,
        stripe_payment_link_id: str | None,
        payment_link_url: str | None,
        expires_in_days: int | None,
    ) -> CreditPack:
        sql = self._sql
        values = (
            name,
            json.dumps(credits, sort_keys=True),
            stripe_price_id,
            stripe_payment_link_id,
            payment_link_url,
            expires_in_days,
        )
        with self._tx("upsert_credit_pack", self.tables.credit_packs) as c:
            row = c.execute(
                sql["upsert_credit_pack_find"], (stripe_price_id, stripe_payment_link_id, name)
            )
            found = row.fetchone()
            if found is None:
                pack_id = c.execute(sql["upsert_credit_pack_insert"], values).lastrowid
            else:
                pack_id = found[0]
                c.execute(sql["upsert_credit_pack_update"], (*values, pack_id))
            return _pack(c.execute(sql["upsert_credit_pack_read"], (pack_id,)).fetchone())

    def load_credit_packs(self) -> list[CreditPack]:
        with self._tx("load_credit_packs", self.tables.credit_packs, write=False) as c:
            return [_pack(row) for row in c.execute(self._sql["credit_packs"]).fetchall()]

    def apply_stripe_event(
        self,
        *,
        event_id: str | None,
        event_type: str,
        created: datetime,
        now: datetime,
        price: StripePrice | None = None,
        link: StripeLink | None = None,
        subscription: StripeSubscription | None = None,
        grant: StripeGrant | None = None,
        refund: StripeRefund | None = None,
    ) -> StripeApplied:
        sql = self._sql
        with self._tx("apply_stripe_event", self.tables.stripe_events) as c:
            if event_id is not None:
                row = c.execute(sql["stripe_apply_seen"], (event_id,)).fetchone()
                if row is not None:
                    return StripeApplied("duplicate", row[0])
            result = StripeApplied("ignored")
            if price is not None:
                c.execute(
                    sql["update_price"],
                    (
                        None if price.price_amount is None else str(price.price_amount),
                        price.price_currency,
                        price.stripe_price_id,
                    ),
                )
                result = StripeApplied("applied")
            if link is not None:
                result = self._stripe_link(c, link)
            if subscription is not None:
                result = self._stripe_subscription(c, subscription)
            if grant is not None:
                result = self._stripe_grant(c, grant, now, result)
            if refund is not None:
                result = self._stripe_refund(c, refund)
            if event_id is not None:
                c.execute(
                    sql["stripe_apply_record"],
                    (event_id, event_type, _ts(created), result.action, result.user_id, _ts(now)),
                )
            return result

    def _stripe_grant(
        self, c: sqlite3.Connection, grant: StripeGrant, now: datetime, linked: StripeApplied
    ) -> StripeApplied:
        """Grant a credit pack bought in a Checkout Session, once per session."""
        sql = self._sql
        user_id = grant.user_id or linked.user_id
        if user_id is None and grant.customer_id is not None:
            user_id = self._stripe_user(c, grant.customer_id)
        if user_id is None and grant.email:
            rows = c.execute(sql["stripe_apply_link_email"], (grant.email,)).fetchall()
            user_id = rows[0][0] if len(rows) == 1 else None
        if user_id is None:
            return linked
        c.execute(sql["stripe_refresh_profile"], (user_id,))
        grants = tuple(
            self._grant(
                c,
                user_id,
                feature,
                credits,
                expires_at,
                "stripe",
                grant.reason,
                None,
                f"checkout:{grant.session_id}:{feature}",
                grant.payment_ref,
                now,
            )
            for feature, credits, expires_at in grant.grants
        )
        fresh = any(not g.replayed for g in grants)
        action = "applied" if fresh or linked.action == "applied" else "ignored"
        return StripeApplied(action, user_id, grants=grants)

    def _stripe_refund(self, c: sqlite3.Connection, refund: StripeRefund) -> StripeApplied:
        """Take back what is left of the grants a refunded payment paid for, in proportion."""
        sql = self._sql
        rows = c.execute(sql["stripe_apply_grants_of_payment"], (refund.payment_ref,)).fetchall()
        unrecovered: dict[str, int] = {}
        changed = False
        for grant_id, feature, credits, remaining, revoked, _user in rows:
            target = min(credits * refund.refunded // max(refund.amount, 1), credits)
            if target <= revoked:
                continue
            take = min(remaining, target - revoked)
            c.execute(sql["stripe_apply_grant_revoke"], (remaining - take, target, grant_id))
            changed = True
            if target - revoked > take:
                unrecovered[feature] = unrecovered.get(feature, 0) + target - revoked - take
        user_id = rows[0][5] if rows else None
        return StripeApplied(
            "applied" if changed else "ignored", user_id, unrecovered=tuple(unrecovered.items())
        )

    def _stripe_link(self, c: sqlite3.Connection, link: StripeLink) -> StripeApplied:
        sql = self._sql
        user_id = link.user_id
        if user_id is None:
            rows = c.execute(sql["stripe_apply_link_email"], (link.email or "",)).fetchall()
            if not link.email or len(rows) != 1:
                return StripeApplied("ignored")
            user_id = rows[0][0]
        known = c.execute(sql["stripe_apply_link_known"], (link.customer_id,)).fetchone()
        if known is not None and known[0] >= link.order_key:
            return StripeApplied("stale", user_id)
        c.execute(sql["stripe_apply_link_customer"], (link.customer_id, user_id, link.order_key))
        c.execute(sql["stripe_apply_link_profile"], (user_id, link.email))
        self._stripe_refresh(c, user_id)
        return StripeApplied("applied", user_id)

    def _stripe_subscription(self, c: sqlite3.Connection, sub: StripeSubscription) -> StripeApplied:
        sql = self._sql
        old = c.execute(sql["stripe_apply_sub_old"], (sub.subscription_id,)).fetchone()
        new_end = _ts_or_none(sub.current_period_end)
        if old is not None and (
            old[0] >= sub.order_key
            or (sub.period_guard and old[1] is not None and (new_end is None or old[1] > new_end))
        ):
            if sub.started is not None:
                c.execute(sql["stripe_apply_sub_started"], (_ts(sub.started), sub.subscription_id))
            return StripeApplied("stale", self._stripe_user(c, sub.customer_id))
        c.execute(
            sql["stripe_apply_sub_upsert"],
            (
                sub.subscription_id,
                sub.customer_id,
                sub.order_key,
                _ts_or_none(sub.started),
                int(sub.ended),
                sub.plan,
                sub.status,
                _ts_or_none(sub.current_period_start),
                new_end,
                sub.quantity,
            ),
        )
        user_id = self._stripe_user(c, sub.customer_id)
        if user_id is None:
            row = c.execute(sql["stripe_apply_sub_profile"], (sub.customer_id,)).fetchone()
            if row is None:
                return StripeApplied("pending")
            user_id = row[0]
            c.execute(sql["stripe_apply_sub_customer"], (sub.customer_id, user_id))
        self._stripe_refresh(c, user_id)
        return StripeApplied("applied", user_id)

    def _stripe_user(self, c: sqlite3.Connection, customer_id: str) -> str | None:
        row = c.execute(self._sql["stripe_apply_user"], (customer_id,)).fetchone()
        return None if row is None else str(row[0])

    def _stripe_refresh(self, c: sqlite3.Connection, user_id: str) -> None:
        sql = self._sql
        c.execute(sql["stripe_refresh_profile"], (user_id,))
        best = c.execute(sql["stripe_refresh_best"], (user_id,)).fetchone()
        if best is not None:
            c.execute(sql["stripe_refresh_set"], (*best, user_id))
            return
        c.execute(sql["stripe_refresh_customer"], (user_id, user_id))

    def stripe_export_batch(
        self, *, meter: str, feature_name: str | None, limit: int
    ) -> tuple[int, list[tuple[UsageEvent, str | None]]]:
        sql = self._sql
        with self._tx("stripe_export_batch", self.tables.stripe_exports, write=False) as c:
            row = c.execute(sql["stripe_cursor"], (meter,)).fetchone()
            cursor = int(row[0]) if row else 0
            if feature_name is None:
                rows = c.execute(sql["stripe_batch"], (cursor, limit)).fetchall()
            else:
                rows = c.execute(
                    sql["stripe_batch_of_feature"], (cursor, feature_name, limit)
                ).fetchall()
        return cursor, [(self._event(r[:-1]), r[-1]) for r in rows]

    def advance_stripe_cursor(self, *, meter: str, event_id: int) -> int:
        sql = self._sql
        with self._tx("advance_stripe_cursor", self.tables.stripe_exports) as c:
            c.execute(sql["stripe_cursor_advance"], (meter, event_id))
            row = c.execute(sql["stripe_cursor"], (meter,)).fetchone()
        return int(row[0])

    def pending_stripe_subscriptions(self, *, limit: int) -> list[StripeSubscription]:
        with self._tx(
            "pending_stripe_subscriptions", self.tables.stripe_subscriptions, write=False
        ) as c:
            rows = c.execute(self._sql["stripe_pending"], (limit,)).fetchall()
        return [
            StripeSubscription(
                subscription_id=r[0],
                customer_id=r[1],
                order_key=r[2],
                started=_dt(r[3]),
                ended=bool(r[4]),
                plan=r[5],
                status=r[6],
                current_period_start=_dt(r[7]),
                current_period_end=_dt(r[8]),
                quantity=r[9],
            )
            for r in rows
        ]

    def recent_stripe_events(self, *, limit: int) -> list[StripeEventRecord]:
        with self._tx("recent_stripe_events", self.tables.stripe_events, write=False) as c:
            rows = c.execute(self._sql["stripe_recent"], (limit,)).fetchall()
        return [
            StripeEventRecord(
                event_id=r[0],
                type=r[1],
                created=_at(r[2]),
                action=r[3],
                user_id=r[4],
                processed_at=_at(r[5]),
            )
            for r in rows
        ]

    # -- alerts -----------------------------------------------------------------------------------
    def load_alert_thresholds(self) -> list[tuple[str, int | None, list[int]]]:
        with self._tx("load_alert_thresholds", self.tables.alert_rules, write=False) as c:
            rows = c.execute(self._sql["alert_thresholds"]).fetchall()
        return [
            (feature, plan or None, json.loads(thresholds)) for feature, plan, thresholds in rows
        ]

    def set_alert_thresholds(
        self, *, feature_name: str, plan_id: int | None, thresholds: list[int]
    ) -> list[int]:
        sql = self._sql
        with self._tx("set_alert_thresholds", self.tables.alert_rules) as c:
            if thresholds:
                c.execute(
                    sql["set_alert_thresholds"],
                    (feature_name, plan_id or 0, json.dumps(thresholds)),
                )
            else:
                c.execute(sql["set_alert_thresholds_clear"], (feature_name, plan_id or 0))
        return thresholds

    def claim_alerts(self, *, now: datetime, lease_until: datetime, limit: int) -> list[Alert]:
        sql = self._sql
        with self._tx("claim_alerts", self.tables.alerts) as c:
            rows = c.execute(sql["claim_alerts"], (_ts(now), limit)).fetchall()
            c.executemany(sql["claim_alerts_lease"], [(_ts(lease_until), r[0]) for r in rows])
        return [_alert(r) for r in rows]

    def finish_alert(self, *, alert_id: int, delivered: bool, now: datetime) -> bool:
        with self._tx("finish_alert", self.tables.alerts) as c:
            cur = c.execute(self._sql["finish_alert"], (delivered, _ts(now), alert_id))
        return cur.rowcount == 1

    def list_alerts(self, *, user_id: str | None, undelivered: bool, limit: int) -> list[Alert]:
        with self._tx("list_alerts", self.tables.alerts, write=False) as c:
            rows = c.execute(self._sql["list_alerts"], (user_id, undelivered, limit)).fetchall()
        return [_alert(r) for r in rows]


def _hold_alert(
    thresholds: Sequence[int] | None,
    limit: int | None,
    window_start: datetime | None,
    resets_at: datetime | None,
    pool_id: str | None = None,
    cap: int | None = None,
) -> str | None:
    """What a hold keeps for its commit to be split between the plan's allowance and grants
    (and, for a team member, their own grants), and measured against the alert thresholds
    (none for an unlimited feature, unless the member has a cap)."""
    if limit is None and pool_id is None:
        return None
    rule = {
        "pool_id": pool_id,
        "cap": cap,
        "thresholds": list(thresholds or ()),
        "limit": limit,
        "window_start": _ts_or_none(window_start),
        "resets_at": _ts_or_none(resets_at),
    }
    return json.dumps(rule, separators=(",", ":"))


def _grant(row: Sequence[Any], replayed: bool = False) -> Grant:
    return Grant(
        id=row[0],
        user_id=row[1],
        feature_name=row[2],
        credits=row[3],
        remaining=row[4],
        revoked=row[5],
        expires_at=_dt(row[6]),
        source=row[7],
        reason=row[8],
        metadata=json.loads(row[9]) if row[9] else None,
        payment_ref=row[10],
        created_at=_at(row[11]),
        replayed=replayed,
    )


def _membership(row: Sequence[Any]) -> Membership:
    return Membership(
        account_id=row[0],
        user_id=row[1],
        limits=json.loads(row[2]),
        added_at=_at(row[3]),
        removed_at=_dt(row[4]),
    )


def _pack(row: Sequence[Any]) -> CreditPack:
    return CreditPack(
        id=row[0],
        name=row[1],
        credits=json.loads(row[2]),
        stripe_price_id=row[3],
        stripe_payment_link_id=row[4],
        payment_link_url=row[5],
        expires_in_days=row[6],
    )


def _alert(row: Sequence[Any]) -> Alert:
    return Alert(
        id=row[0],
        user_id=row[1],
        feature_name=row[2],
        threshold=row[3],
        usage=row[4],
        limit=row[5],
        window_start=_dt(row[6]),
        resets_at=_dt(row[7]),
        created_at=_at(row[8]),
        delivered_at=_dt(row[9]),
        attempts=row[10],
    )


class MemoryStore(SQLiteStore):
    """``memory://``: the SQLite store on a private in-memory database, for tests and demos.

    The same schema and the same statements as a file, so the rules are written once. One
    connection, opened with the store and migrated at once, holds the database; calls from
    every thread take turns on it behind one lock (a write is a few page updates in RAM, no
    I/O). Two stores never share data, and the data is gone when the store closes: a call
    after :meth:`close` is refused with ``USAGE_CONFIG_ERROR``.

    Nothing here blocks on I/O, so the async API calls it inline on the event loop
    (``blocking = False``): no worker threads, no group commit, no WAL (memory databases have
    none), no checkpoints.
    """

    schemes: ClassVar[tuple[str, ...]] = ("memory",)
    blocking: ClassVar[bool] = False

    # Straight to the transaction: group commit only pays when commits wait for a disk.
    charge = SQLiteStore.charge.__wrapped__  # type: ignore[attr-defined]
    reserve = SQLiteStore.reserve.__wrapped__  # type: ignore[attr-defined]
    settle = SQLiteStore.settle.__wrapped__  # type: ignore[attr-defined]

    def __init__(self, tables: Tables | None = None) -> None:
        super().__init__(":memory:", tables)
        self.url = "memory://"
        self._lock = threading.Lock()
        try:
            conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise self._error(exc, "connect", None) from None
        self._conn: sqlite3.Connection | None = conn
        self._migrate(conn)

    @classmethod
    def from_url(cls, url: str, tables: Tables | None = None) -> MemoryStore:
        return cls(tables)

    def __repr__(self) -> str:
        return f"<MemoryStore {'closed' if self._conn is None else 'open'}>"

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            raise config_error("this memory:// store is closed; its data went with it")
        return conn

    #: Reads need no transaction: no other call runs meanwhile.
    _READ_BEGIN: ClassVar[str | None] = None

    def _take_turn(
        self, operation: str, table: str, write: bool, nowait: bool
    ) -> tuple[sqlite3.Connection, bool]:
        """The one connection, behind the lock, for the whole call."""
        self._lock.acquire()
        try:
            return self._connection(), True
        except BaseException:
            self._lock.release()
            raise

    def _end_turn(self, conn: sqlite3.Connection, locked: bool) -> None:
        self._lock.release()

    def _error(self, exc: BaseException, operation: str, table: str | None) -> UsageFlowError:
        return config_error(
            f"sqlite (memory) {operation} failed: {exc}",
            original_error=str(exc),
            table=table,
            operation=operation,
        )

    def migrate(self) -> int:
        """Migrated when opened: the schema version."""
        with self._lock:
            self._connection()
        return SCHEMA_VERSION

    def checkpoint(self) -> None:
        """Nothing to do: a memory database has no WAL."""

    def close(self) -> None:
        """Close the connection; the database, and all its data, go with it."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
