"""Requests per second of one small app, bare and metered, against the rate-limit peers.

    python benchmarks/http_middleware.py [--n 4000] [--rounds 3] [--concurrency 1]
    python benchmarks/http_middleware.py --http [--n 8000] [--rounds 2] [--connections 8]
    python benchmarks/http_middleware.py --instructions [--n 2000] [--only REGEX]

Needs ``pip install -e ".[bench]"`` (the peers and the servers). Starlette: bare;
``UsageFlowMiddleware`` on ``memory://`` and on SQLite (``AsyncUsageFlow``); slowapi on its
in-memory storage. Flask: bare; ``UsageFlowFlask`` + ``@metered`` on ``memory://`` and on
SQLite; Flask-Limiter on its in-memory storage. Every metered variant does its full work per
request (UsageFlow: reserve, then commit with the quota headers; the peers: hit a
moving-window counter and add their headers), one user, a quota that never runs out.

By default the requests are driven in-process, straight through the ASGI / WSGI callable (no
sockets, no client library), timed in CPU seconds: the figures are the cost of the framework
plus the metering alone, the harshest setting for the ratios. With ``--http`` each app is
served in its own process (Starlette by uvicorn, with uvloop and httptools when installed;
Flask by gunicorn, one gthread worker) and driven over keep-alive sockets on 127.0.0.1 by a
minimal asyncio client; the figure is then the server's capacity, requests per CPU-second of
the server process (from /proc, Linux), which the client sharing the machine does not blur.
The best of ``--rounds`` rounds is kept; rounds are interleaved across the variants.

``--instructions`` serves each app the same way under valgrind's callgrind (Linux, valgrind
installed) and counts the CPU instructions the server executes per request, collection
switched on only while the measured requests run: a count, which a noisy shared machine does
not move, at the price of leaving out the kernel's side of each system call and the cost of
cache misses. Ratios then compare requests per instruction. Run by hand; it is not a test.
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
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
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

QUOTA = 10**15
#: In-process rounds are timed in CPU seconds of this process (all its threads): other load
#: on a shared machine does not skew them. ``--wall`` switches to wall-clock time.
TIMER: dict[str, Callable[[], float]] = {"clock": time.process_time}
USER = "bench-user"
PATH = "/v1/exports"


def make_flow(kind: str, url: str) -> Any:
    flow: Any = AsyncUsageFlow(url) if kind == "async" else UsageFlow(url)
    setup = UsageFlow(flow.store)
    setup.create_plan("Free", is_free=True, limits={"exports": QUOTA})
    return flow


# -- Starlette ----------------------------------------------------------------------------------
async def export(request: Request) -> Response:
    return JSONResponse({"ok": True})


def user_of(request: Request) -> str | None:
    return request.headers.get("x-user")


def starlette_bare() -> Any:
    return Starlette(routes=[Route(PATH, export, methods=["POST"])])


def starlette_usageflow(url: str) -> Any:
    app = starlette_bare()
    app.add_middleware(
        UsageFlowMiddleware,
        flow=make_flow("async", url),
        routes={f"POST {PATH}": "exports"},
        user_id=user_of,
    )
    return app


def starlette_slowapi() -> Any:
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded

    limiter = Limiter(key_func=user_of, storage_uri="memory://", headers_enabled=True)

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
        "state": {},
    }

    async def one() -> int:
        status = 0

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(dict(scope_base), receive, send)
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
def flask_bare() -> Flask:
    app = Flask("bench")

    @app.post(PATH)
    def export_view() -> Any:
        return {"ok": True}

    return app


def flask_usageflow(url: str) -> Flask:
    app = Flask("bench")
    UsageFlowFlask(app, flow=make_flow("sync", url), user_id=lambda: request.headers.get("x-user"))

    @app.post(PATH)
    @metered("exports")
    def export_view() -> Any:
        return {"ok": True}

    return app


def flask_limiter() -> Flask:
    from flask_limiter import Limiter

    app = Flask("bench")
    limiter = Limiter(
        key_func=lambda: request.headers.get("x-user", ""),
        app=app,
        storage_uri="memory://",
        headers_enabled=True,
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


# -- over HTTP ------------------------------------------------------------------------------------
APPS: dict[str, Callable[[str], Any]] = {
    "starlette bare": lambda tmp: starlette_bare(),
    "starlette usageflow memory": lambda tmp: starlette_usageflow("memory://"),
    "starlette usageflow sqlite": lambda tmp: starlette_usageflow(
        f"sqlite:///{tmp}/http.db?synchronous=normal"
    ),
    "starlette slowapi memory": lambda tmp: starlette_slowapi(),
    "flask bare": lambda tmp: flask_bare(),
    "flask usageflow memory": lambda tmp: flask_usageflow("memory://"),
    "flask usageflow sqlite": lambda tmp: flask_usageflow(
        f"sqlite:///{tmp}/http-flask.db?synchronous=normal"
    ),
    "flask flask-limiter memory": lambda tmp: flask_limiter(),
}
#: (label, numerator, denominator): the ratios printed, when both variants were run.
RATIOS = [
    (
        "starlette: usageflow memory / bare (target >= 0.85)",
        "starlette usageflow memory",
        "starlette bare",
    ),
    (
        "starlette: usageflow memory / slowapi (target >= 1.0)",
        "starlette usageflow memory",
        "starlette slowapi memory",
    ),
    (
        "starlette: usageflow sqlite / slowapi (target >= 0.67)",
        "starlette usageflow sqlite",
        "starlette slowapi memory",
    ),
    (
        "starlette: slowapi / bare (the peer, for scale)",
        "starlette slowapi memory",
        "starlette bare",
    ),
    ("flask: usageflow memory / bare (target >= 0.85)", "flask usageflow memory", "flask bare"),
    (
        "flask: usageflow memory / flask-limiter (target >= 1.0)",
        "flask usageflow memory",
        "flask flask-limiter memory",
    ),
    (
        "flask: usageflow sqlite / flask-limiter (target >= 0.67)",
        "flask usageflow sqlite",
        "flask flask-limiter memory",
    ),
    (
        "flask: flask-limiter / bare (the peer, for scale)",
        "flask flask-limiter memory",
        "flask bare",
    ),
]
_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *([0-9]+)")


def serve(name: str, port: int, tmp: str) -> None:
    """Serve one variant (run in a child process): Starlette by uvicorn (uvloop and httptools
    when installed, as ``uvicorn[standard]`` has them), Flask by gunicorn (one ``gthread``
    worker, keep-alive), each a single process on one core."""
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    app = APPS[name](tmp)
    if name.startswith("flask"):
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
                return app

        Server().run()
    else:
        import uvicorn

        uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


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


def _start_server(
    name: str, tmp: str, launcher: list[str], timeout: float
) -> tuple[subprocess.Popen[bytes], int]:
    """Serve ``name`` in a child process (run by ``launcher``, e.g. valgrind, when given) on a
    free port; return once it accepts connections."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    child = subprocess.Popen(
        [*launcher, sys.executable, __file__, "--serve", name, "--port", str(port), "--tmp", tmp],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return child, port
        except OSError:
            if time.monotonic() > deadline or child.poll() is not None:
                child.kill()
                raise RuntimeError(f"{name} did not start") from None
            time.sleep(0.2)


def run_http(name: str, tmp: str, n: int, connections: int) -> tuple[float, float]:
    """Serve ``name`` in a child process and drive it; (requests per second of wall time,
    requests per CPU-second of the server)."""
    child, port = _start_server(name, tmp, [], 30)
    try:
        asyncio.run(drive_http(port, 1000, connections))  # warm up: caches, JIT-free paths
        cpu_before = cpu_seconds(child.pid)
        wall, sent = asyncio.run(drive_http(port, n, connections))
        cpu = cpu_seconds(child.pid) - cpu_before
        return sent / wall, sent / cpu
    finally:
        child.terminate()
        child.wait(10)


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


def run_instructions(name: str, tmp: str, n: int, connections: int) -> float:
    """Serve ``name`` under valgrind's callgrind and count the CPU instructions its server
    processes execute per request, over ``n`` requests after a warm-up (collection is switched
    on only meanwhile). Free of timing noise: a count, not a time; it leaves out the kernel's
    work (the system calls) and the cost of cache misses."""
    out = Path(tempfile.mkdtemp(prefix="callgrind-", dir=tmp))
    valgrind = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--trace-children=yes",
        f"--callgrind-out-file={out}/cg.%p",
    ]
    child, port = _start_server(name, tmp, valgrind, 300)
    try:
        asyncio.run(drive_http(port, 600, connections))  # warm up
        pids = [str(pid) for pid in _tree(child.pid)]
        control = ["callgrind_control", "--instr=on"]
        subprocess.run([*control, *pids], check=True, capture_output=True)
        _, sent = asyncio.run(drive_http(port, n, connections))
        control[1] = "--instr=off"
        subprocess.run([*control, *pids], check=True, capture_output=True)
    finally:
        child.send_signal(2)  # SIGINT: uvicorn and gunicorn stop, callgrind writes its counts
        child.wait(120)
    total = 0
    for dump in out.glob("cg.*"):  # one per process; its "totals:" line sums its counts
        lines = dump.read_text(errors="replace").splitlines()
        total += max((int(x.split()[1]) for x in lines if x.startswith("totals:")), default=0)
    # The client's warm-up requests inside drive_http (50 per connection) were counted too.
    return total / (sent + 50 * connections)


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
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.tmp)
        return
    if args.wall:
        TIMER["clock"] = time.perf_counter
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    tmp = Path(tempfile.mkdtemp(prefix="usageflow-bench-"))
    sqlite = f"sqlite:///{tmp / 'bench.db'}?synchronous=normal"
    sqlite_flask = f"sqlite:///{tmp / 'bench-flask.db'}?synchronous=normal"

    def asgi(app: Any) -> Callable[[], float]:
        return lambda: asyncio.run(drive_asgi(app, args.n, args.concurrency))

    results: dict[str, float] = {}
    plan: list[tuple[str, Callable[[], float]]] = [
        ("starlette bare", asgi(starlette_bare())),
        ("starlette usageflow memory", asgi(starlette_usageflow("memory://"))),
        ("starlette usageflow sqlite", asgi(starlette_usageflow(sqlite))),
        ("starlette slowapi memory", asgi(starlette_slowapi())),
        ("flask bare", lambda: drive_wsgi(flask_bare(), args.n)),
    ]
    memory_flask, sqlite_app, limiter_app = (
        flask_usageflow("memory://"),
        flask_usageflow(sqlite_flask),
        flask_limiter(),
    )
    plan += [
        ("flask usageflow memory", lambda: drive_wsgi(memory_flask, args.n)),
        ("flask usageflow sqlite", lambda: drive_wsgi(sqlite_app, args.n)),
        ("flask flask-limiter memory", lambda: drive_wsgi(limiter_app, args.n)),
    ]
    # Rounds are interleaved (every variant once, then again): drift on a shared machine
    # then touches every variant alike instead of favouring whichever ran in a quiet spell.
    figures: dict[str, dict[str, float]] = {}

    def chosen(name: str) -> bool:
        return args.only is None or re.search(args.only, name) is not None

    if args.instructions:
        for name in APPS:
            if chosen(name):
                per_request = run_instructions(name, str(tmp), args.n, args.connections)
                # Fewer instructions is more capacity: ratios compare requests per instruction.
                results[name] = 1e9 / per_request
                print(f"{name:32s} {per_request:12,.0f} instructions per request")
                figures[name] = {"instructions_per_request": per_request}
    elif args.http:
        served: dict[str, list[tuple[float, float]]] = {name: [] for name in APPS if chosen(name)}
        for _ in range(args.rounds):
            for name, rounds in served.items():
                rounds.append(run_http(name, str(tmp), args.n, args.connections))
        for name, rounds in served.items():
            wall, capacity = max(rounds, key=lambda r: r[1])
            results[name] = capacity
            print(f"{name:32s} {capacity:10,.0f} req/CPU-s of the server {wall:10,.0f} req/s")
            figures[name] = {"req_per_server_cpu_second": capacity, "req_per_second": wall}
    else:
        measured: dict[str, list[float]] = {name: [] for name, _ in plan if chosen(name)}
        for _ in range(args.rounds):
            for name, run in plan:
                if name in measured:
                    measured[name].append(run())
        for name, values in measured.items():
            results[name] = max(values)
            print(f"{name:32s} {results[name]:10,.0f} req/s")
            figures[name] = {"req_per_second": results[name]}

    ratios = {
        label: results[top] / results[bottom]
        for label, top, bottom in RATIOS
        if top in results and bottom in results
    }
    print()
    for name, ratio in ratios.items():
        print(f"{name:58s} {ratio:6.2f}")
    if args.json:
        print(json.dumps({"figures": figures, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
