"""A local stand-in for the part of ``api.stripe.com`` UsageFlow calls, for the plan sync,
reconcile and meter export tests.

It serves, on ``127.0.0.1`` from a thread, in Stripe's wire format (form-encoded requests with
``a[b]=c`` / ``a[0]=c`` brackets, ``Authorization: Bearer <secret key>``, JSON answers, lists
as ``{"object": "list", "data": [...], "has_more": ..., "url": ...}`` paginated with ``limit``
and ``starting_after``, ``expand[]=data.product``, errors as ``{"error": {"type": ...,
"message": ...}}``):

* ``GET /v1/prices`` (``active``; products inline when expanded),
* ``GET /v1/payment_links`` (``active``) and ``GET /v1/payment_links/{id}/line_items``,
* ``GET /v1/subscriptions`` (``status=all`` or one status),
* ``GET /v1/checkout/sessions`` (``status``) and ``GET /v1/checkout/sessions/{id}/line_items``,
* ``POST /v1/billing/meter_events`` (identifier unique, as Stripe enforces; a repeated
  ``Idempotency-Key`` gets the first answer back).

The objects are plain dicts the test puts in :class:`StripeData`; nothing is invented. The real
``stripe`` library talks to it: point ``stripe.api_base`` at :attr:`StripeServer.url`.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

API_KEY = "sk_test_usageflow_local_51Hx"


@dataclass
class StripeData:
    """What the fake account holds, and what it was asked."""

    products: dict[str, dict[str, Any]] = field(default_factory=dict)
    prices: list[dict[str, Any]] = field(default_factory=list)
    payment_links: list[dict[str, Any]] = field(default_factory=list)
    line_items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    subscriptions: list[dict[str, Any]] = field(default_factory=list)
    checkout_sessions: list[dict[str, Any]] = field(default_factory=list)
    meter_events: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    #: Refuse meter events (400) once this many have been accepted.
    meter_events_limit: int | None = None
    idempotent: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def parse_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's bracket encoding -> nested dicts (``expand[0]=x`` -> ``{"expand": ["x"]}``)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node = out
        for part, nxt in zip(parts, [*parts[1:], None], strict=True):
            if nxt is None:
                if part.isdigit() and isinstance(node, list):
                    node.append(value)
                else:
                    node[part] = value
            else:
                node = node.setdefault(part, [] if nxt.isdigit() else {})
    return out


def _page(url: str, items: list[dict[str, Any]], query: dict[str, Any]) -> dict[str, Any]:
    limit = int(query.get("limit", 10))
    after = query.get("starting_after")
    if after is not None:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1 :]
    return {"object": "list", "url": url, "data": items[:limit], "has_more": len(items) > limit}


def _flag(query: dict[str, Any], name: str) -> bool | None:
    value = query.get(name)
    return None if value is None else value == "true"


class _Handler(BaseHTTPRequestHandler):
    data: StripeData

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _send(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Request-Id", "req_local")
        self.end_headers()
        self.wfile.write(raw)

    def _error(self, status: int, type_: str, message: str) -> None:
        self._send(status, {"error": {"type": type_, "message": message}})

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            self._error(401, "invalid_request_error", "Invalid API Key provided: sk_test_****")
            return False
        return True

    def do_GET(self) -> None:
        if not self._authorized():
            return
        parts = urlsplit(self.path)
        query = parse_form(parse_qsl(parts.query))
        path = parts.path
        data = self.data
        with data.lock:
            data.requests.append(("GET", path))
        if path == "/v1/prices":
            active = _flag(query, "active")
            expand = "data.product" in (query.get("expand") or [])
            prices = []
            for stored in data.prices:
                if active is not None and stored.get("active", True) is not active:
                    continue
                product = data.products[stored["product"]] if expand else stored["product"]
                prices.append({**stored, "product": product})
            self._send(200, _page(path, prices, query))
        elif path == "/v1/payment_links":
            active = _flag(query, "active")
            links = [
                link
                for link in data.payment_links
                if active is None or link.get("active", True) is active
            ]
            self._send(200, _page(path, links, query))
        elif m := re.fullmatch(r"/v1/payment_links/([^/]+)/line_items", path):
            if m.group(1) not in data.line_items:
                self._error(404, "invalid_request_error", "No such payment link")
                return
            self._send(200, _page(path, data.line_items[m.group(1)], query))
        elif m := re.fullmatch(r"/v1/checkout/sessions/([^/]+)/line_items", path):
            if m.group(1) not in data.line_items:
                self._error(404, "invalid_request_error", "No such checkout session")
                return
            self._send(200, _page(path, data.line_items[m.group(1)], query))
        elif path == "/v1/subscriptions":
            status = query.get("status")
            subs = [
                s
                for s in data.subscriptions
                if status == "all"
                or (status is None and s["status"] != "canceled")
                or s["status"] == status
            ]
            self._send(200, _page(path, subs, query))
        elif path == "/v1/checkout/sessions":
            status = query.get("status")
            sessions = [s for s in data.checkout_sessions if status in (None, s["status"])]
            self._send(200, _page(path, sessions, query))
        else:
            self._error(404, "invalid_request_error", f"Unrecognized request URL (GET: {path})")

    def do_POST(self) -> None:
        if not self._authorized():
            return
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_form(parse_qsl(self.rfile.read(length).decode()))
        data = self.data
        with data.lock:
            data.requests.append(("POST", self.path))
            if self.path != "/v1/billing/meter_events":
                self._error(404, "invalid_request_error", "Unrecognized request URL")
                return
            key = self.headers.get("Idempotency-Key")
            if key is not None and key in data.idempotent:
                self._send(200, data.idempotent[key])
                return
            if data.meter_events_limit is not None and (
                len(data.meter_events) >= data.meter_events_limit
            ):
                self._error(400, "invalid_request_error", "Meter event refused (test limit)")
                return
            identifier = form.get("identifier")
            if identifier and any(e["identifier"] == identifier for e in data.meter_events):
                self._error(400, "invalid_request_error", "An event with this identifier exists")
                return
            if "event_name" not in form or not isinstance(form.get("payload"), dict):
                self._error(400, "invalid_request_error", "Missing required param: payload")
                return
            event = {
                "object": "billing.meter_event",
                "created": int(form.get("timestamp", 0)),
                "event_name": form["event_name"],
                "identifier": identifier,
                "livemode": False,
                "payload": form["payload"],
                "timestamp": int(form.get("timestamp", 0)),
            }
            data.meter_events.append(event)
            if key is not None:
                data.idempotent[key] = event
        self._send(200, event)


class StripeServer:
    def __init__(self, data: StripeData, httpd: ThreadingHTTPServer) -> None:
        self.data = data
        self.httpd = httpd
        host, port = httpd.server_address[:2]
        self.url = f"http://{host!s}:{port}"


@contextmanager
def stripe_server(data: StripeData | None = None) -> Iterator[StripeServer]:
    """Serve ``data`` on a free port of 127.0.0.1 until the block ends."""
    data = data or StripeData()
    handler = type("Handler", (_Handler,), {"data": data})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=httpd.serve_forever, args=(0.02,), name="stripe-server", daemon=True
    )
    thread.start()
    try:
        yield StripeServer(data, httpd)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
