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
from usageflow.models import FeatureLimit, LimitAdjustment, Plan, Profile, UsageEvent
from usageflow.stores._sqlite_adopt import adopt
from usageflow.stores.base import (
    HOLD_GRACE,
    PROFILE_FIELDS,
    Charge,
    HourlyTotal,
    ResetInfo,
    Store,
    StripeApplied,
    StripeLink,
    StripePrice,
    StripeSubscription,
    Tables,
    WouldBlock,
    check_total,
    fits,
    window_used,
)

__all__ = ["MemoryStore", "SQLiteStore"]

SCHEMA_VERSION = 4


_EXACT_FLOAT = 2**53  # every integer below it is a float exactly


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


_HOLD_COLUMNS = (
    "id, user_id, feature_name, credits, status, created_at, expires_at, idempotency_key, event_id"
)


def _holds_table(name: str) -> str:
    """The holds table (version 3): what is in flight, so small; one B-tree keyed by the
    reservation id (``WITHOUT ROWID``), and the idempotency keys in a partial index, which
    holds without a key do not touch. A reservation then writes three pages, not five."""
    return f"""CREATE TABLE IF NOT EXISTS "{name}" (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    feature_name TEXT NOT NULL,
    credits INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'held'
        CHECK (status IN ('held', 'committed', 'released', 'expired')),
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    idempotency_key TEXT,
    event_id INTEGER
) WITHOUT ROWID"""


def _events_table(name: str) -> str:
    """The ledger (version 4: its idempotency keys are unique per (user, feature), by the
    index ``idx_<events>_idem``, no longer by a column constraint)."""
    return f"""CREATE TABLE IF NOT EXISTS "{name}" (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    feature_name TEXT NOT NULL,
    credits_used INTEGER,
    event_type TEXT NOT NULL DEFAULT 'usage'
        CHECK (event_type IN ('usage', 'credit', 'reset', 'adjustment')),
    metadata JSON,
    timestamp TIMESTAMP NOT NULL,
    idempotency_key TEXT,
    running_total INTEGER NOT NULL
)"""


def schema_sql(t: Tables) -> str:
    """The DDL of the schema (version 4: version 1, the Stripe tables of version 2, the index
    that prunes settled holds of version 3, idempotency keys scoped to (user, feature) of
    version 4), for these table names. Every statement is idempotent, so
    upgrading from 1 or 2 runs it all again.

    The ledger's ``id`` is a plain ``INTEGER PRIMARY KEY`` (the largest id plus one): events
    are never deleted, so ids still only grow, without the ``sqlite_sequence`` row that
    ``AUTOINCREMENT`` reads and rewrites on every insert (a sixth of the cost of recording an
    event). Databases created before keep their ``AUTOINCREMENT``: it answers the same."""
    return f"""
CREATE TABLE IF NOT EXISTS "{t.user_plans}" (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    stripe_price_id TEXT UNIQUE,
    price_amount DECIMAL(10,2),
    price_currency TEXT,
    is_free BOOLEAN NOT NULL DEFAULT 0,
    payment_link_url TEXT,
    created_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    updated_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);
CREATE TABLE IF NOT EXISTS "{t.usage_feature_limits}" (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    plan_id INTEGER NOT NULL REFERENCES "{t.user_plans}"(id) ON DELETE CASCADE,
    feature_name TEXT NOT NULL,
    limit_value INTEGER NOT NULL CHECK (limit_value >= -1),
    period TEXT NOT NULL DEFAULT 'current_month' CHECK (period IN ('current_month',
        'last_30_days', 'last_28_days', 'current_week', 'day', 'lifetime', 'billing_cycle')),
    created_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    updated_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    UNIQUE (plan_id, feature_name)
);
{_events_table(t.usage_events)};
-- Keys are unique per (user, feature), and led by the key the index also finds a reservation's
-- commit by its key alone.
CREATE UNIQUE INDEX IF NOT EXISTS "idx_{t.usage_events}_idem"
    ON "{t.usage_events}" (idempotency_key, user_id, feature_name)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS "idx_{t.usage_events}_user_feature"
    ON "{t.usage_events}" (user_id, feature_name, timestamp);
CREATE INDEX IF NOT EXISTS "idx_{t.usage_events}_timestamp" ON "{t.usage_events}" (timestamp);
CREATE INDEX IF NOT EXISTS "idx_{t.usage_events}_type" ON "{t.usage_events}" (event_type);
CREATE TABLE IF NOT EXISTS "{t.user_limit_adjustments}" (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    feature_name TEXT NOT NULL,
    amount INTEGER NOT NULL,
    type TEXT NOT NULL CHECK (type IN ('one_time', 'recurring')),
    start_date TIMESTAMP NOT NULL,
    end_date TIMESTAMP NOT NULL,
    metadata JSON,
    created_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    CHECK (start_date < end_date)
);
CREATE INDEX IF NOT EXISTS "idx_{t.user_limit_adjustments}_user"
    ON "{t.user_limit_adjustments}" (user_id, feature_name);
CREATE INDEX IF NOT EXISTS "idx_{t.user_limit_adjustments}_dates"
    ON "{t.user_limit_adjustments}" (start_date, end_date);
CREATE TABLE IF NOT EXISTS "{t.profiles}" (
    id TEXT PRIMARY KEY,
    email TEXT,
    plan TEXT,
    subscription_status TEXT,
    stripe_customer_id TEXT,
    current_period_start TIMESTAMP,
    current_period_end TIMESTAMP,
    created_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    updated_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);
CREATE INDEX IF NOT EXISTS "idx_{t.profiles}_email" ON "{t.profiles}" (email);
CREATE INDEX IF NOT EXISTS "idx_{t.profiles}_customer" ON "{t.profiles}" (stripe_customer_id);
CREATE TABLE IF NOT EXISTS "{t.counters}" (
    user_id TEXT NOT NULL,
    feature_name TEXT NOT NULL,
    total INTEGER NOT NULL DEFAULT 0,
    last_ts TIMESTAMP,
    last_reset_at TIMESTAMP,
    reset_base INTEGER NOT NULL DEFAULT 0,
    reset_pre_total INTEGER NOT NULL DEFAULT 0,
    open_holds INTEGER NOT NULL DEFAULT 0, -- unused since version 3 (holds are read directly)
    PRIMARY KEY (user_id, feature_name)
) WITHOUT ROWID;
{_holds_table(t.holds)};
CREATE INDEX IF NOT EXISTS "idx_{t.holds}_active"
    ON "{t.holds}" (user_id, feature_name, expires_at) WHERE status = 'held';
CREATE INDEX IF NOT EXISTS "idx_{t.holds}_settled"
    ON "{t.holds}" (user_id, feature_name, expires_at) WHERE status <> 'held';
DROP INDEX IF EXISTS "idx_{t.holds}_key";
CREATE UNIQUE INDEX IF NOT EXISTS "idx_{t.holds}_idem"
    ON "{t.holds}" (idempotency_key, user_id, feature_name) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS "{t.stripe_events}" (
    event_id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    created TIMESTAMP NOT NULL,
    action TEXT NOT NULL,
    user_id TEXT,
    processed_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS "{t.stripe_subscriptions}" (
    subscription_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    order_key TEXT NOT NULL,
    started TIMESTAMP,
    ended BOOLEAN NOT NULL,
    plan TEXT NOT NULL,
    status TEXT NOT NULL,
    current_period_start TIMESTAMP,
    current_period_end TIMESTAMP
);
CREATE INDEX IF NOT EXISTS "idx_{t.stripe_subscriptions}_customer"
    ON "{t.stripe_subscriptions}" (customer_id);
CREATE TABLE IF NOT EXISTS "{t.stripe_customers}" (
    customer_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    order_key TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS "idx_{t.stripe_customers}_user" ON "{t.stripe_customers}" (user_id);
CREATE TABLE IF NOT EXISTS "{t.stripe_exports}" (
    meter TEXT PRIMARY KEY,
    last_event_id INTEGER NOT NULL
);
"""


P = ParamSpec("P")
R = TypeVar("R")


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
    """A SQLite database file shared by threads and processes."""

    schemes: ClassVar[tuple[str, ...]] = ("sqlite",)

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
        t = self.tables
        q = {
            name: f'"{getattr(t, name)}"'
            for name in (
                "user_plans",
                "usage_events",
                "usage_feature_limits",
                "user_limit_adjustments",
                "profiles",
                "counters",
                "holds",
                "schema",
                "stripe_events",
                "stripe_subscriptions",
                "stripe_customers",
                "stripe_exports",
            )
        }
        self._q = q
        self._sql_event_cols = (
            "id, user_id, feature_name, credits_used, event_type, metadata, timestamp, "
            "idempotency_key"
        )

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

    # -- calls on an event loop ----------------------------------------------------------------
    #: Bounded operations (a few index seeks, one short transaction) worth trying inline.
    NOWAIT: ClassVar[frozenset[str]] = frozenset(
        {"charge", "reserve", "settle", "usage", "get_profile", "load_catalog"}
        | {"get_limit_adjustments"}
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
        conn = self._borrow()
        locked = False
        try:
            if write:
                # This process's writers queue on a lock, in order, rather than poll SQLite's
                # busy handler (which sleeps for milliseconds); other processes still meet
                # at SQLite's lock.
                locked = self._writer.acquire(
                    blocking=not nowait, timeout=-1 if nowait else self.timeout
                )
                if not locked:
                    if nowait:
                        raise WouldBlock(operation)
                    raise sqlite3.OperationalError("database is locked (by this process)")
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if nowait and _is_busy(exc):
                raise WouldBlock(operation) from None
            raise self._error(exc, operation, table) from None
        finally:
            if locked:
                self._writer.release()
            self._give_back(conn)
        if write and self._local.__dict__.get("nowait"):
            self._nowait_commits += 1

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
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._q['schema']} ("
                    "component TEXT PRIMARY KEY, version INTEGER NOT NULL, applied_at TEXT)"
                )
                row = conn.execute(
                    f"SELECT version FROM {self._q['schema']} WHERE component = ?",
                    (self.tables.usage_events,),
                ).fetchone()
                version = row[0] if row else 0
                if version > SCHEMA_VERSION:
                    raise config_error(
                        f"the database schema is version {version}, newer than this "
                        f"usageflow ({SCHEMA_VERSION}); upgrade usageflow"
                    )
                if version == 0:  # tables made by the JavaScript package, if any
                    adopt(conn, self.tables, schema_sql(self.tables))
                if 0 < version < 3:
                    self._rebuild_holds(conn)
                if 0 < version < 4:
                    self._rebuild_events(conn)
                if version < SCHEMA_VERSION:
                    for statement in schema_sql(self.tables).split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(
                        f"INSERT INTO {self._q['schema']} (component, version, applied_at) "
                        "VALUES (?, ?, strftime('%Y-%m-%d %H:%M:%f', 'now')) "
                        "ON CONFLICT (component) DO UPDATE SET version = excluded.version, "
                        "applied_at = excluded.applied_at",
                        (self.tables.usage_events, SCHEMA_VERSION),
                    )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._error(exc, "migrate", None) from None
        self._migrated = True
        return SCHEMA_VERSION

    def _rebuild_holds(self, conn: sqlite3.Connection) -> None:
        """Version 3's holds table, from an older one (SQLite cannot change a table's key or
        constraints in place): the rows are copied, except the committed holds without a key
        that older versions kept (their events answer a repeated commit)."""
        name = self.tables.holds
        if not conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone():
            return
        conn.execute(_holds_table(f"{name}_v3"))
        conn.execute(
            f'INSERT INTO "{name}_v3" ({_HOLD_COLUMNS}) SELECT {_HOLD_COLUMNS} FROM "{name}" '
            "WHERE NOT (status = 'committed' AND idempotency_key IS NULL)"
        )
        conn.execute(f'DROP TABLE "{name}"')
        conn.execute(f'ALTER TABLE "{name}_v3" RENAME TO "{name}"')

    def _rebuild_events(self, conn: sqlite3.Connection) -> None:
        """Version 4's ledger, from an older one whose ``idempotency_key`` column was UNIQUE
        (a column constraint SQLite cannot drop): every row is copied as it is, ids included;
        the indexes are made again by the schema that runs next."""
        name = self.tables.usage_events
        constrained = any(
            row[3] == "u" for row in conn.execute(f'PRAGMA index_list("{name}")').fetchall()
        )
        if not constrained:
            return
        columns = (
            "id, user_id, feature_name, credits_used, event_type, metadata, timestamp, "
            "idempotency_key, running_total"
        )
        conn.execute(_events_table(f"{name}_v4"))
        conn.execute(f'INSERT INTO "{name}_v4" ({columns}) SELECT {columns} FROM "{name}"')
        conn.execute(f'DROP TABLE "{name}"')
        conn.execute(f'ALTER TABLE "{name}_v4" RENAME TO "{name}"')

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

    _PLAN_COLS = (
        "id, name, stripe_price_id, price_amount, price_currency, is_free, payment_link_url"
    )

    def load_catalog(self) -> list[Plan]:
        q = self._q
        with self._tx("load_catalog", self.tables.user_plans, write=False) as c:
            plans = c.execute(f"SELECT {self._PLAN_COLS} FROM {q['user_plans']}").fetchall()
            rows = c.execute(
                f"SELECT plan_id, feature_name, limit_value, period "
                f"FROM {q['usage_feature_limits']}"
            ).fetchall()
        limits: dict[int, dict[str, FeatureLimit]] = {}
        for plan_id, feature, value, period in rows:
            limits.setdefault(plan_id, {})[feature] = FeatureLimit(
                plan_id=plan_id, feature_name=feature, limit_value=value, period=period
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
        q = self._q
        amount = None if price_amount is None else str(price_amount)
        with self._tx("upsert_plan", self.tables.user_plans) as c:
            if stripe_price_id is not None:
                found = c.execute(
                    f"SELECT id FROM {q['user_plans']} WHERE stripe_price_id = ?",
                    (stripe_price_id,),
                ).fetchone()
            else:
                found = c.execute(
                    f"SELECT id FROM {q['user_plans']} WHERE stripe_price_id IS NULL "
                    "AND name = ? ORDER BY id LIMIT 1",
                    (name,),
                ).fetchone()
            values = (name, stripe_price_id, amount, price_currency, int(is_free), payment_link_url)
            if found:
                c.execute(
                    f"UPDATE {q['user_plans']} SET name = ?, stripe_price_id = ?, "
                    "price_amount = ?, price_currency = ?, is_free = ?, payment_link_url = ?, "
                    "updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = ?",
                    (*values, found[0]),
                )
                plan_id = found[0]
            else:
                cur = c.execute(
                    f"INSERT INTO {q['user_plans']} (name, stripe_price_id, price_amount, "
                    "price_currency, is_free, payment_link_url) VALUES (?, ?, ?, ?, ?, ?)",
                    values,
                )
                plan_id = cur.lastrowid
            row = c.execute(
                f"SELECT {self._PLAN_COLS} FROM {q['user_plans']} WHERE id = ?", (plan_id,)
            ).fetchone()
        return self._plan(row, {})

    def set_feature_limit(
        self, *, plan_id: int, feature_name: str, limit_value: int, period: str
    ) -> FeatureLimit:
        q = self._q
        with self._tx("set_feature_limit", self.tables.usage_feature_limits) as c:
            if not c.execute(
                f"SELECT 1 FROM {q['user_plans']} WHERE id = ?", (plan_id,)
            ).fetchone():
                raise invalid(f"no plan with id {plan_id}", plan_id=plan_id)
            c.execute(
                f"INSERT INTO {q['usage_feature_limits']} (plan_id, feature_name, limit_value, "
                "period) VALUES (?, ?, ?, ?) ON CONFLICT (plan_id, feature_name) DO UPDATE SET "
                "limit_value = excluded.limit_value, period = excluded.period, "
                "updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')",
                (plan_id, feature_name, limit_value, period),
            )
        return FeatureLimit(
            plan_id=plan_id, feature_name=feature_name, limit_value=limit_value, period=period
        )

    def update_price(
        self, *, stripe_price_id: str, price_amount: Decimal | None, price_currency: str | None
    ) -> int:
        with self._tx("update_price", self.tables.user_plans) as c:
            cur = c.execute(
                f"UPDATE {self._q['user_plans']} SET price_amount = ?, price_currency = ?, "
                "updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE stripe_price_id = ?",
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
            row = c.execute(
                f"SELECT {', '.join(self._PROFILE_COLS)} FROM {self._q['profiles']} WHERE id = ?",
                (user_id,),
            ).fetchone()
        return None if row is None else self._profile(row)

    def upsert_profile(self, *, user_id: str, fields: dict[str, Any]) -> Profile:
        columns = [f for f in PROFILE_FIELDS if f in fields]
        values = [
            _ts_or_none(fields[f]) if isinstance(fields[f], datetime) else fields[f]
            for f in columns
        ]
        assignments = ", ".join(f"{col} = excluded.{col}" for col in columns)
        names = ", ".join(["id", *columns])
        marks = ", ".join("?" * (len(columns) + 1))
        update = (
            f"DO UPDATE SET {assignments}, updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')"
            if columns
            else "DO NOTHING"
        )
        with self._tx("upsert_profile", self.tables.profiles) as c:
            c.execute(
                f"INSERT INTO {self._q['profiles']} ({names}) VALUES ({marks}) "
                f"ON CONFLICT (id) {update}",
                (user_id, *values),
            )
            row = c.execute(
                f"SELECT {', '.join(self._PROFILE_COLS)} FROM {self._q['profiles']} WHERE id = ?",
                (user_id,),
            ).fetchone()
        return self._profile(row)

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
                f"INSERT INTO {self._q['user_limit_adjustments']} (user_id, feature_name, amount, "
                "type, start_date, end_date, metadata) VALUES (?, ?, ?, ?, ?, ?, ?)",
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
                f"SELECT id, amount, type, start_date, end_date, metadata "
                f"FROM {self._q['user_limit_adjustments']} "
                "WHERE user_id = ? AND feature_name = ? AND end_date > ? ORDER BY id",
                (user_id, feature_name, _ts(ending_after)),
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
    # A counter is (total, last_ts, last_reset_at, reset_base, reset_pre_total).
    _NO_COUNTER: ClassVar[tuple[Any, ...]] = (0, None, None, 0, 0)

    def _counter(self, c: sqlite3.Connection, user_id: str, feature_name: str) -> tuple[Any, ...]:
        row = c.execute(
            f"SELECT total, last_ts, last_reset_at, reset_base, reset_pre_total "
            f"FROM {self._q['counters']} WHERE user_id = ? AND feature_name = ?",
            (user_id, feature_name),
        ).fetchone()
        return row or self._NO_COUNTER

    def _state(
        self,
        c: sqlite3.Connection,
        user_id: str,
        feature_name: str,
        window_start: datetime | None,
        now: datetime,
    ) -> tuple[tuple[Any, ...], int, int, int]:
        """What a decision reads, in one statement: (the counter, the usage in the window, the
        credits of live holds, how many holds have expired but are still marked held)."""
        row = c.execute(
            self._sql_state,
            (user_id, feature_name, None if window_start is None else _ts(window_start), _ts(now)),
        ).fetchone()
        counter = self._NO_COUNTER if row[0] is None else row[:5]
        used = window_used(counter[0], window_start, _dt(counter[2]), counter[3], row[5] or 0)
        live = row[6]
        # TOTAL() sums in floating point, where SUM() would fail the statement past 2**63
        # (holds on an unlimited feature may add up to more). The credits are non-negative
        # integers, so a float total below 2**53 is exact; past it, they are summed here.
        held = (
            int(live) if live < _EXACT_FLOAT else self._held_exactly(c, user_id, feature_name, now)
        )
        return counter, used, held, int(row[7])

    def _held_exactly(
        self, c: sqlite3.Connection, user_id: str, feature_name: str, now: datetime
    ) -> int:
        rows = c.execute(
            f"SELECT credits FROM {self._q['holds']} WHERE user_id = ? AND feature_name = ? "
            "AND status = 'held' AND expires_at > ?",
            (user_id, feature_name, _ts(now)),
        ).fetchall()
        return sum(credits for (credits,) in rows)

    @functools.cached_property
    def _sql_state(self) -> str:
        q = self._q
        # ?1 user, ?2 feature, ?3 window start (or NULL), ?4 now. The usage before the window
        # is read only when no reset since its start answers; the holds come from the partial
        # index of held ones. Timestamps are ISO strings, which sort as times.
        return (
            "SELECT c.total, c.last_ts, c.last_reset_at, c.reset_base, c.reset_pre_total, "
            "CASE WHEN ?3 IS NOT NULL AND (c.last_reset_at IS NULL OR c.last_reset_at < ?3) "
            f"THEN (SELECT e.running_total FROM {q['usage_events']} e "
            "WHERE e.user_id = ?1 AND e.feature_name = ?2 AND e.timestamp < ?3 "
            "ORDER BY e.timestamp DESC, e.id DESC LIMIT 1) END, h.live, h.expired "
            "FROM (SELECT TOTAL(CASE WHEN expires_at > ?4 THEN credits END) AS live, "
            "COUNT(CASE WHEN expires_at <= ?4 THEN 1 END) AS expired "
            f"FROM {q['holds']} WHERE user_id = ?1 AND feature_name = ?2 AND status = 'held') h "
            f"LEFT JOIN {q['counters']} c ON c.user_id = ?1 AND c.feature_name = ?2"
        )

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
            row = c.execute(
                f"SELECT {self._sql_event_cols} FROM {self._q['usage_events']} "
                "WHERE idempotency_key = ?",
                (key,),
            ).fetchone()
        else:
            row = c.execute(
                f"SELECT {self._sql_event_cols} FROM {self._q['usage_events']} "
                "WHERE idempotency_key = ? AND user_id = ? AND feature_name = ?",
                (key, user_id, feature_name),
            ).fetchone()
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
    ) -> UsageEvent:
        total, last_ts, last_reset_at, reset_base, reset_pre = counter
        if credits is not None:
            check_total(total, credits)
        now_s = _ts(now)
        ts = now_s if last_ts is None or now_s > last_ts else last_ts
        new_total = total + (credits or 0)
        cur = c.execute(
            f"INSERT INTO {self._q['usage_events']} (user_id, feature_name, credits_used, "
            "event_type, metadata, timestamp, idempotency_key, running_total) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                user_id,
                feature_name,
                credits,
                event_type,
                _json(metadata),
                ts,
                idempotency_key,
                new_total,
            ),
        )
        if reset:
            last_reset_at, reset_base = ts, new_total
            reset_pre = int((metadata or {}).get("pre_reset_total", 0))
        c.execute(
            f"INSERT INTO {self._q['counters']} (user_id, feature_name, total, last_ts, "
            "last_reset_at, reset_base, reset_pre_total) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (user_id, feature_name) DO UPDATE SET total = excluded.total, "
            "last_ts = excluded.last_ts, last_reset_at = excluded.last_reset_at, "
            "reset_base = excluded.reset_base, reset_pre_total = excluded.reset_pre_total",
            (user_id, feature_name, new_total, ts, last_reset_at, reset_base, reset_pre),
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
    ) -> Charge:
        with self._tx("charge", self.tables.usage_events) as c:
            first = (
                None
                if idempotency_key is None
                else self._by_key(c, idempotency_key, user_id, feature_name)
            )
            if first is not None or limit is not None:
                counter, used, held, _expired = self._state(
                    c, user_id, feature_name, window_start, now
                )
            else:  # pure tracking: no window is asked for
                counter = self._counter(c, user_id, feature_name)
                used, held = counter[0], 0
            if first is not None:
                return Charge(True, used, held, first, replayed=True)
            if not fits(used, held, credits, limit):
                return Charge(False, used, held)
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
            )
            return Charge(True, used + credits, held, event)

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
    ) -> Charge:
        q = self._q
        # No savepoint in a batch: the insert of the hold is the one write (marking expired
        # holds and pruning old ones change nothing a decision reads, so they may stay).
        with self._tx("reserve", self.tables.holds, savepoint=False) as c:
            _counter, used, held, expired = self._state(c, user_id, feature_name, window_start, now)
            if expired:  # mark them so (they may still be committed), prune old ones
                c.execute(
                    f"UPDATE {q['holds']} SET status = 'expired' WHERE user_id = ? AND "
                    "feature_name = ? AND status = 'held' AND expires_at <= ?",
                    (user_id, feature_name, _ts(now)),
                )
                self._prune_holds(c, user_id, feature_name, now)
            if idempotency_key is not None:
                row = c.execute(
                    f"SELECT id, credits FROM {q['holds']} WHERE idempotency_key = ? "
                    "AND user_id = ? AND feature_name = ?",
                    (idempotency_key, user_id, feature_name),
                ).fetchone()
                if row:
                    return Charge(
                        True, used, held, replayed=True, reservation_id=row[0], first_credits=row[1]
                    )
            # A reused reservation id is refused as PostgreSQL refuses it, whether or not the
            # credits fit; the id is looked up only when the insert fails or nothing fits, so
            # a reservation that goes through pays no extra seek.
            if not fits(used, held, credits, limit):
                self._refuse_reused_id(c, reservation_id)
                return Charge(False, used, held)
            try:
                c.execute(
                    f"INSERT INTO {q['holds']} (id, user_id, feature_name, credits, status, "
                    "created_at, expires_at, idempotency_key) VALUES (?, ?, ?, ?, 'held', ?, ?, ?)",
                    (
                        reservation_id,
                        user_id,
                        feature_name,
                        credits,
                        _ts(now),
                        _ts(expires_at),
                        idempotency_key,
                    ),
                )
            except sqlite3.IntegrityError:  # SQLite undid the statement: nothing written
                self._refuse_reused_id(c, reservation_id)
                raise
            return Charge(True, used, held + credits, reservation_id=reservation_id)

    def _refuse_reused_id(self, c: sqlite3.Connection, reservation_id: str) -> None:
        """Raise ``USAGE_INVALID_PARAMS`` when a hold with this id exists."""
        if c.execute(
            f"SELECT 1 FROM {self._q['holds']} WHERE id = ?", (reservation_id,)
        ).fetchone():
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
        q = self._q
        with self._tx("settle", self.tables.holds) as c:
            row = c.execute(
                f"SELECT h.user_id, h.feature_name, h.status, h.idempotency_key, c.total, "
                "c.last_ts, c.last_reset_at, c.reset_base, c.reset_pre_total "
                f"FROM {q['holds']} h LEFT JOIN {q['counters']} c "
                "ON c.user_id = h.user_id AND c.feature_name = h.feature_name WHERE h.id = ?",
                (reservation_id,),
            ).fetchone()
            key = f"reservation:{reservation_id}"
            if row is None or row[2] == "committed":
                # A committed hold is deleted (or kept, when keyed): its event answers.
                event = self._by_key(c, key)
                if event is None and row is None:
                    raise reservation_error("no such reservation", reservation_id=reservation_id)
                return event
            user_id, feature_name, status, hold_key = row[:4]
            if credits is None:
                c.execute(
                    f"UPDATE {q['holds']} SET status = 'released' WHERE id = ?", (reservation_id,)
                )
                self._prune_holds(c, user_id, feature_name, now)
                return None
            if status == "released":
                raise reservation_error(
                    "reservation was released; it cannot be committed",
                    reservation_id=reservation_id,
                )
            counter = self._NO_COUNTER if row[4] is None else row[4:]
            event = self._append(
                c, counter, user_id, feature_name, credits, "usage", now, metadata, key
            )
            if hold_key is None:
                c.execute(f"DELETE FROM {q['holds']} WHERE id = ?", (reservation_id,))
            else:  # kept: a reserve with this key replays it
                c.execute(
                    f"UPDATE {q['holds']} SET status = 'committed', event_id = ? WHERE id = ?",
                    (event.id, reservation_id),
                )
                self._prune_holds(c, user_id, feature_name, now)
            return event

    def _prune_holds(
        self, c: sqlite3.Connection, user_id: str, feature_name: str, now: datetime
    ) -> None:
        """Delete the settled or expired holds of this key kept past :data:`HOLD_GRACE`."""
        c.execute(
            f"DELETE FROM {self._q['holds']} WHERE user_id = ? AND feature_name = ? "
            "AND status <> 'held' AND expires_at < ?",
            (user_id, feature_name, _ts(now - HOLD_GRACE)),
        )

    def usage(
        self, *, user_id: str, feature_name: str, window_start: datetime | None, now: datetime
    ) -> tuple[int, int]:
        with self._tx("usage", self.tables.usage_events, write=False) as c:
            _counter, used, held, _expired = self._state(
                c, user_id, feature_name, window_start, now
            )
            return used, held

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
            counter, used, _held, _expired = self._state(
                c, user_id, feature_name, window_start, now
            )
            meta = {**(metadata or {}), "pre_reset_total": max(used, 0)}
            return self._append(
                c, counter, user_id, feature_name, None, "reset", now, meta, None, reset=True
            )

    def usage_since_reset(self, *, user_id: str, feature_name: str) -> ResetInfo:
        with self._tx("usage_since_reset", self.tables.usage_events, write=False) as c:
            total, _last_ts, last_reset_at, reset_base, pre = self._counter(
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
    ) -> list[HourlyTotal]:
        users = ", ".join("?" * len(user_ids))
        features = ", ".join("?" * len(feature_names))
        params: list[Any] = [*user_ids, *feature_names, _ts(end)]
        since = ""
        if start is not None:
            since = "AND timestamp >= ?"
            params.append(_ts(start))
        with self._tx("hourly_totals", self.tables.usage_events, write=False) as c:
            rows = c.execute(
                f"SELECT user_id, feature_name, substr(timestamp, 1, 13), "
                f"SUM(COALESCE(credits_used, 0)) FROM {self._q['usage_events']} "
                f"WHERE user_id IN ({users}) AND feature_name IN ({features}) "
                f"AND event_type != 'reset' AND timestamp < ? {since} "
                "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
                params,
            ).fetchall()
        return [
            HourlyTotal(
                u, f, datetime.strptime(h, "%Y-%m-%d %H").replace(tzinfo=timezone.utc), int(t)
            )
            for u, f, h, t in rows
        ]

    def list_events(
        self, *, user_id: str, feature_name: str | None = None, limit: int = 100
    ) -> list[UsageEvent]:
        where, params, order = "user_id = ?", [user_id], "id DESC"
        if feature_name is not None:
            # Newest by time, as PostgreSQL lists them: ids follow time within a key only for
            # events usageflow recorded (not for a ledger adopted from the JavaScript package).
            where += " AND feature_name = ?"
            params.append(feature_name)
            order = "timestamp DESC, id DESC"
        with self._tx("list_events", self.tables.usage_events, write=False) as c:
            rows = c.execute(
                f"SELECT {self._sql_event_cols} FROM {self._q['usage_events']} WHERE {where} "
                f"ORDER BY {order} LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [self._event(r) for r in rows]

    def ledger_check(self, *, user_id: str, feature_name: str) -> tuple[int, int]:
        with self._tx("ledger_check", self.tables.usage_events, write=False) as c:
            total = self._counter(c, user_id, feature_name)[0]
            (ledger,) = c.execute(
                f"SELECT COALESCE(SUM(credits_used), 0) FROM {self._q['usage_events']} "
                "WHERE user_id = ? AND feature_name = ?",
                (user_id, feature_name),
            ).fetchone()
        return int(total), int(ledger)

    def top_usage(
        self, *, feature_name: str, window_start: datetime | None, limit: int
    ) -> list[tuple[str, int]]:
        q = self._q
        # ?1 feature, ?2 window start (or NULL), ?3 limit: window_used() of every counters
        # row of the feature, the prefix before the window read by one seek per row.
        sql = (
            "SELECT user_id, used FROM (SELECT c.user_id, CASE "
            "WHEN c.last_reset_at IS NOT NULL AND (?2 IS NULL OR c.last_reset_at >= ?2) "
            "THEN c.total - c.reset_base "
            "WHEN ?2 IS NULL THEN c.total "
            "WHEN c.last_ts IS NULL OR c.last_ts < ?2 THEN 0 "
            f"ELSE c.total - COALESCE((SELECT e.running_total FROM {q['usage_events']} e "
            "WHERE e.user_id = c.user_id AND e.feature_name = c.feature_name "
            "AND e.timestamp < ?2 ORDER BY e.timestamp DESC, e.id DESC LIMIT 1), 0) "
            f"END AS used FROM {q['counters']} c WHERE c.feature_name = ?1) "
            "WHERE used > 0 ORDER BY used DESC, user_id LIMIT ?3"
        )
        start = None if window_start is None else _ts(window_start)
        with self._tx("top_usage", self.tables.counters, write=False) as c:
            rows = c.execute(sql, (feature_name, start, limit)).fetchall()
        return [(str(user_id), int(used)) for user_id, used in rows]

    def list_recent_events(self, *, feature_name: str | None, limit: int) -> list[UsageEvent]:
        where, params = "", []
        if feature_name is not None:
            where, params = "WHERE feature_name = ? ", [feature_name]
        with self._tx("list_recent_events", self.tables.usage_events, write=False) as c:
            rows = c.execute(
                f"SELECT {self._sql_event_cols} FROM {self._q['usage_events']} {where}"
                "ORDER BY id DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [self._event(r) for r in rows]

    # -- Stripe ---------------------------------------------------------------------------------
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
    ) -> StripeApplied:
        q = self._q
        with self._tx("apply_stripe_event", self.tables.stripe_events) as c:
            if event_id is not None:
                row = c.execute(
                    f"SELECT user_id FROM {q['stripe_events']} WHERE event_id = ?", (event_id,)
                ).fetchone()
                if row is not None:
                    return StripeApplied("duplicate", row[0])
            result = StripeApplied("ignored")
            if price is not None:
                c.execute(
                    f"UPDATE {q['user_plans']} SET price_amount = ?, price_currency = ?, "
                    "updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE stripe_price_id = ?",
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
            if event_id is not None:
                c.execute(
                    f"INSERT INTO {q['stripe_events']} (event_id, event_type, created, action, "
                    "user_id, processed_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (event_id, event_type, _ts(created), result.action, result.user_id, _ts(now)),
                )
            return result

    def _stripe_link(self, c: sqlite3.Connection, link: StripeLink) -> StripeApplied:
        q = self._q
        user_id = link.user_id
        if user_id is None:
            rows = c.execute(
                f"SELECT id FROM {q['profiles']} WHERE lower(email) = lower(?) LIMIT 2",
                (link.email or "",),
            ).fetchall()
            if not link.email or len(rows) != 1:
                return StripeApplied("ignored")
            user_id = rows[0][0]
        known = c.execute(
            f"SELECT order_key FROM {q['stripe_customers']} WHERE customer_id = ?",
            (link.customer_id,),
        ).fetchone()
        if known is not None and known[0] >= link.order_key:
            return StripeApplied("stale", user_id)
        c.execute(
            f"INSERT INTO {q['stripe_customers']} (customer_id, user_id, order_key) "
            "VALUES (?, ?, ?) ON CONFLICT (customer_id) DO UPDATE SET "
            "user_id = excluded.user_id, order_key = excluded.order_key",
            (link.customer_id, user_id, link.order_key),
        )
        c.execute(
            f"INSERT INTO {q['profiles']} (id, email) VALUES (?, ?) ON CONFLICT (id) DO UPDATE "
            "SET email = COALESCE(email, excluded.email)",
            (user_id, link.email),
        )
        self._stripe_refresh(c, user_id)
        return StripeApplied("applied", user_id)

    def _stripe_subscription(self, c: sqlite3.Connection, sub: StripeSubscription) -> StripeApplied:
        q = self._q
        old = c.execute(
            f"SELECT order_key, current_period_end FROM {q['stripe_subscriptions']} "
            "WHERE subscription_id = ?",
            (sub.subscription_id,),
        ).fetchone()
        new_end = _ts_or_none(sub.current_period_end)
        if old is not None and (
            old[0] >= sub.order_key
            or (sub.period_guard and old[1] is not None and (new_end is None or old[1] > new_end))
        ):
            if sub.started is not None:
                c.execute(
                    f"UPDATE {q['stripe_subscriptions']} SET started = ? "
                    "WHERE subscription_id = ? AND started IS NULL",
                    (_ts(sub.started), sub.subscription_id),
                )
            return StripeApplied("stale", self._stripe_user(c, sub.customer_id))
        c.execute(
            f"INSERT INTO {q['stripe_subscriptions']} (subscription_id, customer_id, order_key, "
            "started, ended, plan, status, current_period_start, current_period_end) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (subscription_id) DO UPDATE SET "
            "customer_id = excluded.customer_id, order_key = excluded.order_key, "
            "started = COALESCE(excluded.started, started), ended = excluded.ended, "
            "plan = excluded.plan, "
            "status = excluded.status, current_period_start = excluded.current_period_start, "
            "current_period_end = excluded.current_period_end",
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
            ),
        )
        user_id = self._stripe_user(c, sub.customer_id)
        if user_id is None:
            row = c.execute(
                f"SELECT id FROM {q['profiles']} WHERE stripe_customer_id = ? ORDER BY id LIMIT 1",
                (sub.customer_id,),
            ).fetchone()
            if row is None:
                return StripeApplied("pending")
            user_id = row[0]
            c.execute(
                f"INSERT INTO {q['stripe_customers']} (customer_id, user_id, order_key) "
                "VALUES (?, ?, '')",
                (sub.customer_id, user_id),
            )
        self._stripe_refresh(c, user_id)
        return StripeApplied("applied", user_id)

    def _stripe_user(self, c: sqlite3.Connection, customer_id: str) -> str | None:
        row = c.execute(
            f"SELECT user_id FROM {self._q['stripe_customers']} WHERE customer_id = ?",
            (customer_id,),
        ).fetchone()
        return None if row is None else str(row[0])

    def _stripe_refresh(self, c: sqlite3.Connection, user_id: str) -> None:
        q = self._q
        c.execute(
            f"INSERT INTO {q['profiles']} (id) VALUES (?) ON CONFLICT (id) DO NOTHING", (user_id,)
        )
        best = c.execute(
            f"SELECT s.customer_id, s.plan, s.status, s.current_period_start, "
            f"s.current_period_end FROM {q['stripe_subscriptions']} s "
            f"JOIN {q['stripe_customers']} k ON k.customer_id = s.customer_id "
            "WHERE k.user_id = ? "
            "ORDER BY s.ended ASC, s.started DESC, s.subscription_id DESC LIMIT 1",
            (user_id,),
        ).fetchone()
        if best is not None:
            c.execute(
                f"UPDATE {q['profiles']} SET stripe_customer_id = ?, plan = ?, "
                "subscription_status = ?, current_period_start = ?, current_period_end = ?, "
                "updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = ?",
                (*best, user_id),
            )
            return
        c.execute(
            f"UPDATE {q['profiles']} SET stripe_customer_id = (SELECT customer_id FROM "
            f"{q['stripe_customers']} WHERE user_id = ? ORDER BY order_key DESC, "
            "customer_id DESC LIMIT 1), updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') "
            "WHERE id = ?",
            (user_id, user_id),
        )

    def stripe_export_batch(
        self, *, meter: str, feature_name: str | None, limit: int
    ) -> tuple[int, list[tuple[UsageEvent, str | None]]]:
        q = self._q
        cols = ", ".join(f"e.{col.strip()}" for col in self._sql_event_cols.split(","))
        where, params = "e.id > ?", []
        if feature_name is not None:
            where += " AND e.feature_name = ?"
            params.append(feature_name)
        with self._tx("stripe_export_batch", self.tables.stripe_exports, write=False) as c:
            row = c.execute(
                f"SELECT last_event_id FROM {q['stripe_exports']} WHERE meter = ?", (meter,)
            ).fetchone()
            cursor = int(row[0]) if row else 0
            rows = c.execute(
                f"SELECT {cols}, p.stripe_customer_id FROM {q['usage_events']} e "
                f"LEFT JOIN {q['profiles']} p ON p.id = e.user_id WHERE {where} "
                "ORDER BY e.id LIMIT ?",
                (cursor, *params, limit),
            ).fetchall()
        return cursor, [(self._event(r[:-1]), r[-1]) for r in rows]

    def advance_stripe_cursor(self, *, meter: str, event_id: int) -> int:
        q = self._q
        with self._tx("advance_stripe_cursor", self.tables.stripe_exports) as c:
            c.execute(
                f"INSERT INTO {q['stripe_exports']} (meter, last_event_id) VALUES (?, ?) "
                "ON CONFLICT (meter) DO UPDATE SET "
                "last_event_id = max(last_event_id, excluded.last_event_id)",
                (meter, event_id),
            )
            row = c.execute(
                f"SELECT last_event_id FROM {q['stripe_exports']} WHERE meter = ?", (meter,)
            ).fetchone()
        return int(row[0])

    def pending_stripe_subscriptions(self, *, limit: int) -> list[StripeSubscription]:
        q = self._q
        with self._tx(
            "pending_stripe_subscriptions", self.tables.stripe_subscriptions, write=False
        ) as c:
            rows = c.execute(
                "SELECT subscription_id, customer_id, order_key, started, ended, plan, status, "
                f"current_period_start, current_period_end FROM {q['stripe_subscriptions']} s "
                f"WHERE NOT EXISTS (SELECT 1 FROM {q['stripe_customers']} k "
                "WHERE k.customer_id = s.customer_id) "
                "ORDER BY started IS NULL, started DESC, subscription_id LIMIT ?",
                (limit,),
            ).fetchall()
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
            )
            for r in rows
        ]


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

    @contextmanager
    def _tx(
        self, operation: str, table: str, *, write: bool = True, savepoint: bool = True
    ) -> Iterator[sqlite3.Connection]:
        """The lock for the whole call; a transaction for writes only (a call that fails
        leaves nothing written). Reads need none: no other call runs meanwhile."""
        with self._lock:
            conn = self._connection()
            if not write:
                try:
                    yield conn
                except sqlite3.Error as exc:
                    raise self._error(exc, operation, table) from None
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise self._error(exc, operation, table) from None

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

    def nowait_methods(self) -> frozenset[str]:
        return frozenset()

    def batch_methods(self) -> frozenset[str]:
        return frozenset()

    def call_nowait(self, method: str, kwargs: dict[str, Any]) -> Any:
        return getattr(self, method)(**kwargs)

    def run_batch(
        self, calls: Sequence[tuple[str, dict[str, Any]]], *, nowait: bool = False
    ) -> list[tuple[bool, Any]]:
        """Each call in its own transaction, in order (nothing is saved by sharing one)."""
        results: list[tuple[bool, Any]] = []
        for method, kwargs in calls:
            try:
                results.append((True, getattr(self, method)(**kwargs)))
            except Exception as exc:
                results.append((False, exc))
        return results

    def upkeep(self) -> Callable[[], None] | None:
        return None

    def checkpoint(self) -> None:
        """Nothing to do: a memory database has no WAL."""

    def close(self) -> None:
        """Close the connection; the database, and all its data, go with it."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
