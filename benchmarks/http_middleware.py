"""Requests per second of one small app, bare and metered, against the rate-limit peers.

    python benchmarks/http_middleware.py [--n 4000] [--rounds 3] [--concurrency 1]
    python benchmarks/http_middleware.py --http [--n 8000] [--rounds 3] [--connections 8]
    python benchmarks/http_middleware.py --instructions [--n 2000] [--only REGEX]

Needs ``pip install -e ".[bench]"`` (the peers and the servers), and ``pip install redis`` for
the peers on Redis. Starlette: bare; a minimal metering middleware written here (the floor:
one dict counter per user, check and increment, one ``RateLimit`` field; what pure Python can
do); ``UsageFlowMiddleware`` on ``memory://``, on SQLite and on PostgreSQL
(``AsyncUsageFlow``); slowapi on its in-memory storage and on Redis. Flask: bare;
``UsageFlowFlask`` + ``@metered`` on ``memory://``, on SQLite and on PostgreSQL; Flask-Limiter
on its in-memory storage and on Redis. Every metered variant does its full work per request
(UsageFlow: reserve, then commit with the quota headers; the peers: hit a fixed-window counter
and add their headers), one user, a quota that never runs out.

Each run of a variant gets a fresh store: a new SQLite file; a new schema of
``$USAGEFLOW_TEST_POSTGRES_URL``, migrated, dropped afterwards (the PostgreSQL variants are
skipped when it is not set); the peers' keys cleared from Redis (``$USAGEFLOW_BENCH_REDIS_URL``,
default ``redis://127.0.0.1:6379/15``; their keys carry the prefix ``usageflow-bench``).

By default the requests are driven in-process, straight through the ASGI / WSGI callable (no
sockets, no client library), timed in CPU seconds: the figures are the cost of the framework
plus the metering alone, the harshest setting for the ratios; the best of ``--rounds`` rounds
is kept. With ``--http`` each app is served in its own process (Starlette by uvicorn, with
uvloop and httptools when installed; Flask by gunicorn, one gthread worker) and driven over
keep-alive sockets on 127.0.0.1 by a minimal asyncio client; the figure is then the server's
capacity, requests per CPU-second of the server process (from /proc, Linux), which the client
sharing the machine does not blur; the median of ``--rounds`` rounds is kept. Rounds are
interleaved across the variants. The CPU time of Redis and PostgreSQL themselves is not
counted, in any mode.

``--instructions`` serves each app the same way under valgrind's callgrind (Linux, valgrind
installed) and counts the CPU instructions the server executes per request, collection
switched on only while the measured requests run: a count, which a noisy shared machine does
not move, at the price of leaving out the kernel's side of each system call, the cost of cache
misses, and the work of the Redis or PostgreSQL server. Ratios then compare requests per
instruction.

Every mode ends with the ratios of the issue, each beside its target, and, for scale, each
variant over its bare app. Run by hand; it is not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from usageflow import AsyncUsageFlow, UsageFlow, metered
from usageflow.integrations.flask import UsageFlowFlask
from usageflow.integrations.starlette import UsageFlowMiddleware

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, for PostgreSQL

QUOTA = 10**15
#: In-process rounds are timed in CPU seconds of this process (all its threads): other load
#: on a shared machine does not skew them. ``--wall`` switches to wall-clock time.
TIMER: dict[str, Callable[[], float]] = {"clock": time.process_time}
USER = "bench-user"
PATH = "/v1/exports"
POSTGRES_ENV = "USAGEFLOW_TEST_POSTGRES_URL"
REDIS_URL = os.environ.get("USAGEFLOW_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
#: Prefix of the peers' rate-limit keys (on every storage, so that both storages do the same
#: work): what is cleared from Redis before and after each run.
KEY_PREFIX = "usageflow-bench"
#: The flows made by the apps of this process, closed after each in-process run.
OPEN_FLOWS: list[Any] = []


def make_flow(kind: str, url: str) -> Any:
    flow: Any = AsyncUsageFlow(url) if kind == "async" else UsageFlow(url)
    setup = UsageFlow(flow.store)
    setup.create_plan("Free", is_free=True, limits={"exports": QUOTA})
    OPEN_FLOWS.append(flow)
    return flow


def close_flows() -> None:
    while OPEN_FLOWS:
        OPEN_FLOWS.pop().store.close()  # the sync store closes its async face too


# -- Starlette ----------------------------------------------------------------------------------
async def export(request: Request) -> Response:
    return JSONResponse({"ok": True})


def user_of(request: Request) -> str | None:
    return request.headers.get("x-user")


def starlette_bare(store: str = "") -> Any:
    return Starlette(routes=[Route(PATH, export, methods=["POST"])])


class MinimalMeter:
    """The floor: exact metering in pure ASGI and nothing more. One counter per user in a dict,
    guarded by nothing but the single event loop, checked against the quota and incremented
    before the handler runs; one ``RateLimit`` field on the answer, or a bare 429 when the quota
    is used up."""

    def __init__(self, app: Any, quota: int = QUOTA) -> None:
        self.app = app
        self.quota = quota
        self.used: dict[str, int] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        user = next((v for k, v in scope["headers"] if k == b"x-user"), b"").decode("latin-1")
        used = self.used.get(user, 0)
        if used >= self.quota:
            headers = [(b"ratelimit", b'"exports";r=0')]
            await send({"type": "http.response.start", "status": 429, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        self.used[user] = used + 1
        quota_field = (b"ratelimit", f'"exports";r={self.quota - used - 1}'.encode())

        async def send_metered(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), quota_field]}
            await send(message)

        await self.app(scope, receive, send_metered)


def starlette_minimal(store: str = "") -> Any:
    app = starlette_bare()
    app.add_middleware(MinimalMeter)
    return app


def starlette_usageflow(store: str) -> Any:
    app = starlette_bare()
    app.add_middleware(
        UsageFlowMiddleware,
        flow=make_flow("async", store),
        routes={f"POST {PATH}": "exports"},
        user_id=user_of,
    )
    return app


def starlette_slowapi(store: str) -> Any:
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded

    limiter = Limiter(
        key_func=user_of, storage_uri=store, headers_enabled=True, key_prefix=KEY_PREFIX
    )

    @limiter.limit(f"{QUOTA}/day")
    async def limited(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route(PATH, limited, methods=["POST"])])
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    return app


async def drive_asgi(app: Any, n: int, concurrency: int) -> float:
    scope_base = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench"), (b"x-user", USER.encode()), (b"content-length", b"0")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }

    async def one() -> int:
        status = 0

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        # A state dict of its own, as uvicorn gives each request: a shared one would let
        # slowapi mark the first request's check as done for all of them.
        await app({**scope_base, "state": {}}, receive, send)
        return status

    async def worker(count: int) -> None:
        for _ in range(count):
            if await one() != 200:
                raise RuntimeError("a benchmark request was not answered 200")

    await worker(50)  # warm up: caches, connections, threads
    start = TIMER["clock"]()
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    return (n // concurrency * concurrency) / (TIMER["clock"]() - start)


# -- Flask ----------------------------------------------------------------------------------------
def flask_bare(store: str = "") -> Flask:
    app = Flask("bench")

    @app.post(PATH)
    def export_view() -> Any:
        return {"ok": True}

    return app


def flask_usageflow(store: str) -> Flask:
    app = Flask("bench")
    UsageFlowFlask(
        app, flow=make_flow("sync", store), user_id=lambda: request.headers.get("x-user")
    )

    @app.post(PATH)
    @metered("exports")
    def export_view() -> Any:
        return {"ok": True}

    return app


def flask_limiter(store: str) -> Flask:
    from flask_limiter import Limiter

    app = Flask("bench")
    limiter = Limiter(
        key_func=lambda: request.headers.get("x-user", ""),
        app=app,
        storage_uri=store,
        headers_enabled=True,
        key_prefix=KEY_PREFIX,
    )

    @app.post(PATH)
    @limiter.limit(f"{QUOTA}/day")
    def export_view() -> Any:
        return {"ok": True}

    return app


def drive_wsgi(app: Flask, n: int) -> float:
    environ_base = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": PATH,
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "bench",
        "HTTP_X_USER": USER,
        "CONTENT_LENGTH": "0",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)
        return None

    def one() -> None:
        environ = dict(environ_base)
        environ["wsgi.input"] = io.BytesIO(b"")
        body = app.wsgi_app(environ, start_response)
        for _ in body:
            pass
        if hasattr(body, "close"):
            body.close()

    for _ in range(50):
        one()
    if not all(s.startswith("200") for s in statuses):
        raise RuntimeError(f"a benchmark request was not answered 200: {set(statuses)}")
    start = TIMER["clock"]()
    for _ in range(n):
        one()
    return n / (TIMER["clock"]() - start)


# -- stores -------------------------------------------------------------------------------------
class Backing:
    """Where a variant keeps its counts: ``fresh`` yields the store URL of one run, and cleans up
    after it; ``missing`` says why the store cannot be had here (None: it can)."""

    def __init__(self, url: str = "") -> None:
        self.url = url

    def missing(self) -> str | None:
        return None

    @contextmanager
    def fresh(self, tmp: Path) -> Iterator[str]:
        yield self.url


class SQLite(Backing):
    @contextmanager
    def fresh(self, tmp: Path) -> Iterator[str]:
        yield f"sqlite:///{tmp / uuid.uuid4().hex}.db?synchronous=normal"


class Postgres(Backing):
    """A new schema of ``$USAGEFLOW_TEST_POSTGRES_URL`` per run, migrated before serving."""

    def missing(self) -> str | None:
        if not os.environ.get(POSTGRES_ENV):
            return f"{POSTGRES_ENV} is not set"
        return None

    @contextmanager
    def fresh(self, tmp: Path) -> Iterator[str]:
        from tests.support.postgres import fresh_schema, store_url

        base = os.environ[POSTGRES_ENV]
        with fresh_schema(base) as schema:
            url = store_url(base, schema)
            with UsageFlow(url) as setup:
                setup.migrate()
            yield url


class Redis(Backing):
    """``REDIS_URL``, the peers' keys (``KEY_PREFIX``) deleted before and after each run."""

    def missing(self) -> str | None:
        try:
            import redis
        except ImportError:
            return "the redis package is not installed (pip install redis)"
        try:
            with redis.Redis.from_url(self.url, socket_connect_timeout=2) as client:
                client.ping()
        except redis.RedisError as exc:
            return f"no Redis at {self.url} ({exc})"
        return None

    def clear(self) -> None:
        import redis

        with redis.Redis.from_url(self.url) as client:
            keys = list(client.scan_iter(match=f"*{KEY_PREFIX}*", count=1000))
            if keys:
                client.delete(*keys)

    @contextmanager
    def fresh(self, tmp: Path) -> Iterator[str]:
        self.clear()
        try:
            yield self.url
        finally:
            self.clear()


@dataclass(frozen=True)
class Variant:
    framework: str  # "starlette" (ASGI, served by uvicorn) or "flask" (WSGI, by gunicorn)
    build: Callable[[str], Any]  # the app, given the store URL of this run
    backing: Backing = field(default_factory=Backing)


MEMORY, SQLITE, POSTGRES, REDIS = Backing("memory://"), SQLite(), Postgres(), Redis(REDIS_URL)
VARIANTS: dict[str, Variant] = {
    "starlette bare": Variant("starlette", starlette_bare),
    "starlette minimal": Variant("starlette", starlette_minimal),
    "starlette usageflow memory": Variant("starlette", starlette_usageflow, MEMORY),
    "starlette usageflow sqlite": Variant("starlette", starlette_usageflow, SQLITE),
    "starlette usageflow postgres": Variant("starlette", starlette_usageflow, POSTGRES),
    "starlette slowapi memory": Variant("starlette", starlette_slowapi, MEMORY),
    "starlette slowapi redis": Variant("starlette", starlette_slowapi, REDIS),
    "flask bare": Variant("flask", flask_bare),
    "flask usageflow memory": Variant("flask", flask_usageflow, MEMORY),
    "flask usageflow sqlite": Variant("flask", flask_usageflow, SQLITE),
    "flask usageflow postgres": Variant("flask", flask_usageflow, POSTGRES),
    "flask flask-limiter memory": Variant("flask", flask_limiter, MEMORY),
    "flask flask-limiter redis": Variant("flask", flask_limiter, REDIS),
}
#: (numerator, denominator, target): the ratios of throughput printed, when both ran.
TARGETS: list[tuple[str, str, float | None]] = [
    ("starlette usageflow memory", "starlette slowapi memory", 1.3),
    ("starlette usageflow sqlite", "starlette slowapi redis", 1.3),
    ("starlette usageflow postgres", "starlette slowapi redis", 1.2),
    ("flask usageflow memory", "flask flask-limiter memory", 1.6),
    ("flask usageflow sqlite", "flask flask-limiter redis", 1.5),
    ("flask usageflow postgres", "flask flask-limiter redis", 1.5),
]
#: For scale, no target: every variant over its bare app.
SCALE: list[tuple[str, str, float | None]] = [
    (name, f"{v.framework} bare", None)
    for name, v in VARIANTS.items()
    if name != f"{v.framework} bare"
]


def run_inprocess(variant: Variant, tmp: Path, n: int, concurrency: int) -> float:
    """Requests per second of ``variant`` driven through its ASGI / WSGI callable, on a fresh
    store."""
    with variant.backing.fresh(tmp) as store:
        app = variant.build(store)
        try:
            if variant.framework == "flask":
                return drive_wsgi(app, n)
            return asyncio.run(drive_asgi(app, n, concurrency))
        finally:
            close_flows()


# -- over HTTP ------------------------------------------------------------------------------------
_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *([0-9]+)")


def serve(name: str, port: int, store: str) -> None:
    """Serve one variant (run in a child process): Starlette by uvicorn (uvloop and httptools
    when installed, as ``uvicorn[standard]`` has them), Flask by gunicorn (one ``gthread``
    worker, keep-alive, the app built in the worker as without ``--preload``), each a single
    process on one core."""
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    variant = VARIANTS[name]
    if variant.framework == "flask":
        from gunicorn.app.base import BaseApplication

        class Server(BaseApplication):  # type: ignore[misc]
            def load_config(self) -> None:
                for key, value in {
                    "bind": f"127.0.0.1:{port}",
                    "workers": 1,
                    "worker_class": "gthread",
                    "threads": 4,
                    "keepalive": 30,
                    "loglevel": "error",
                }.items():
                    self.cfg.set(key, value)

            def load(self) -> Any:
                return variant.build(store)

        Server().run()
    else:
        import uvicorn

        uvicorn.run(
            variant.build(store), host="127.0.0.1", port=port, log_level="error", access_log=False
        )


def cpu_seconds(root: int) -> float:
    """CPU time (user + system) used so far by process ``root`` and its children (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry.name), int(fields[1])
        if root in (pid, ppid):
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


async def drive_http(port: int, n: int, connections: int) -> tuple[float, int]:
    """Send ``n`` requests over ``connections`` keep-alive sockets; (seconds, requests)."""
    request_bytes = (
        f"POST {PATH} HTTP/1.1\r\nHost: bench\r\nX-User: {USER}\r\nContent-Length: 0\r\n\r\n"
    ).encode()

    async def worker(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(count):
                writer.write(request_bytes)
                head = await reader.readuntil(b"\r\n\r\n")
                if head[9:12] != b"200":
                    raise RuntimeError(f"answered {head[:12]!r}")
                length = _CONTENT_LENGTH.search(head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                if b"connection: close" in head.lower():
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    await asyncio.gather(*(worker(50) for _ in range(connections)))  # warm up
    per = n // connections
    start = time.perf_counter()
    await asyncio.gather(*(worker(per) for _ in range(connections)))
    return time.perf_counter() - start, per * connections


@contextmanager
def served(
    name: str, tmp: Path, launcher: list[str], timeout: float
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Serve ``name`` on a fresh store in a child process (run by ``launcher``, e.g. valgrind,
    when given) on a free port; yield (child, port) once it accepts connections; stop it
    (SIGINT, on which uvicorn and gunicorn stop and callgrind writes its counts) afterwards."""
    with VARIANTS[name].backing.fresh(tmp) as store:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [sys.executable, __file__, f"--serve={name}", f"--port={port}"]
        child = subprocess.Popen(
            [*launcher, *command, f"--store={store}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or child.poll() is not None:
                        raise RuntimeError(f"{name} did not start") from None
                    time.sleep(0.2)
            yield child, port
        finally:
            if child.poll() is None:
                child.send_signal(2)
            try:
                child.wait(120)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def run_http(name: str, tmp: Path, n: int, connections: int) -> tuple[float, float]:
    """Serve ``name`` in a child process and drive it; (requests per second of wall time,
    requests per CPU-second of the server)."""
    with served(name, tmp, [], 30) as (child, port):
        asyncio.run(drive_http(port, 1000, connections))  # warm up: caches, JIT-free paths
        cpu_before = cpu_seconds(child.pid)
        wall, sent = asyncio.run(drive_http(port, n, connections))
        cpu = cpu_seconds(child.pid) - cpu_before
        return sent / wall, sent / cpu


def _tree(root: int) -> list[int]:
    """``root`` and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def run_instructions(name: str, tmp: Path, n: int, connections: int) -> float:
    """Serve ``name`` under valgrind's callgrind and count the CPU instructions its server
    processes execute per request, over ``n`` requests after a warm-up (collection is switched
    on only meanwhile). Free of timing noise: a count, not a time; it leaves out the kernel's
    work (the system calls), the cost of cache misses and the database server's work."""
    out = Path(tempfile.mkdtemp(prefix="callgrind-", dir=tmp))
    valgrind = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--trace-children=yes",
        f"--callgrind-out-file={out}/cg.%p",
    ]
    with served(name, tmp, valgrind, 300) as (child, port):
        asyncio.run(drive_http(port, 600, connections))  # warm up
        pids = [str(pid) for pid in _tree(child.pid)]
        control = ["callgrind_control", "--instr=on"]
        subprocess.run([*control, *pids], check=True, capture_output=True)
        _, sent = asyncio.run(drive_http(port, n, connections))
        control[1] = "--instr=off"
        subprocess.run([*control, *pids], check=True, capture_output=True)
    total = 0
    for dump in out.glob("cg.*"):  # one per process; its "totals:" line sums its counts
        lines = dump.read_text(errors="replace").splitlines()
        total += max((int(x.split()[1]) for x in lines if x.startswith("totals:")), default=0)
    # The client's warm-up requests inside drive_http (50 per connection) were counted too.
    return total / (sent + 50 * connections)


# -- report ---------------------------------------------------------------------------------------
def ratios(results: dict[str, float]) -> dict[str, tuple[float, float | None]]:
    """label -> (throughput ratio, target) for every ratio whose two variants ran."""
    return {
        f"{top} / {bottom.split(' ', 1)[1]}": (results[top] / results[bottom], target)
        for top, bottom, target in TARGETS + SCALE
        if top in results and bottom in results
    }


def print_ratios(table: dict[str, tuple[float, float | None]]) -> None:
    print()
    print(f"{'ratio of throughput':52s} {'value':>6s}  target")
    scale = False
    for label, (value, target) in table.items():
        if target is None and not scale:
            print("for scale, over the bare app:")
            scale = True
        verdict = (
            "" if target is None else f">= {target:.1f}  {'met' if value >= target else 'MISSED'}"
        )
        print(f"{label:52s} {value:6.2f}  {verdict}".rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1, help="ASGI requests in flight")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--http", action="store_true", help="serve each app, drive it by HTTP")
    parser.add_argument("--connections", type=int, default=8, help="HTTP keep-alive sockets")
    parser.add_argument("--wall", action="store_true", help="time in-process runs by wall clock")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="serve each app under valgrind and count CPU instructions per request",
    )
    parser.add_argument("--only", help="run only the variants whose name matches this regex")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.store)
        return
    if args.wall:
        TIMER["clock"] = time.perf_counter
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")

    names: list[str] = []
    for name, variant in VARIANTS.items():
        if args.only is not None and re.search(args.only, name) is None:
            continue
        reason = variant.backing.missing()
        if reason:
            print(f"{name:32s} skipped: {reason}")
        else:
            names.append(name)

    results: dict[str, float] = {}
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="usageflow-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        if args.instructions:
            for name in names:
                per_request = run_instructions(name, tmp, args.n, args.connections)
                # Fewer instructions is more capacity: ratios compare requests per instruction.
                results[name] = 1e9 / per_request
                print(f"{name:32s} {per_request:12,.0f} instructions per request")
                figures[name] = {"instructions_per_request": per_request}
        else:
            # Rounds are interleaved (every variant once, then again): drift on a shared machine
            # then touches every variant alike instead of favouring one that ran in a quiet spell.
            rounds: dict[str, list[tuple[float, ...]]] = {name: [] for name in names}
            for _ in range(args.rounds):
                for name in names:
                    if args.http:
                        rounds[name].append(run_http(name, tmp, args.n, args.connections))
                    else:
                        rate = run_inprocess(VARIANTS[name], tmp, args.n, args.concurrency)
                        rounds[name].append((rate,))
            for name, runs in rounds.items():
                if args.http:  # the median round: a served run is noisier than a count
                    wall = statistics.median(r[0] for r in runs)
                    results[name] = statistics.median(r[1] for r in runs)
                    print(
                        f"{name:32s} {results[name]:10,.0f} req/CPU-s of the server"
                        f" {wall:10,.0f} req/s (medians of {len(runs)})"
                    )
                    figures[name] = {
                        "req_per_server_cpu_second": results[name],
                        "req_per_second": wall,
                    }
                else:
                    results[name] = max(r[0] for r in runs)
                    print(f"{name:32s} {results[name]:10,.0f} req/s")
                    figures[name] = {"req_per_second": results[name]}

    table = ratios(results)
    print_ratios(table)
    if args.json:
        print(
            json.dumps(
                {
                    "figures": figures,
                    "ratios": {k: {"ratio": r, "target": t} for k, (r, t) in table.items()},
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
