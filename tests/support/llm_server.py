"""A local stand-in for the OpenAI and Anthropic HTTP APIs, for tests of the LLM wrappers.

It stands in for exactly these endpoints, in their wire formats, so that the real ``openai`` and
``anthropic`` client libraries can be pointed at it with ``base_url``:

* ``POST /v1/chat/completions`` (OpenAI Chat Completions): a ``chat.completion`` JSON body, or
  with ``"stream": true`` server-sent ``chat.completion.chunk`` events, a last chunk with no
  choices carrying ``usage`` when ``stream_options.include_usage`` is set, then ``[DONE]``;
* ``POST /v1/responses`` (OpenAI Responses): a ``response`` JSON body, or the events
  ``response.created``, ``.in_progress``, ``.output_item.added``, ``.content_part.added``,
  ``response.output_text.delta``..., ``.output_text.done``, ``.content_part.done``,
  ``.output_item.done`` and ``response.completed`` (with usage);
* ``POST /v1/messages`` (Anthropic Messages): a ``message`` JSON body, or the events
  ``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``...,
  ``content_block_stop``, ``message_delta`` (with the output usage) and ``message_stop``.

It is not a model: the reply is always the words of :data:`REPLY`, one token per word (capped
by the request's ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens``), and the
prompt costs :func:`prompt_tokens` of the request body. What it reports is recorded with each
request (:attr:`Recorded.usage`) so that tests compare the ledger with it.

The model name selects a failure:

* ``...-error-400`` / ``...-error-500``: that status with the provider's error JSON;
* ``...-truncate``: a stream that stops half-way: the connection is closed in the middle of the
  chunked body, before any usage is sent.

Requests carrying ``cache_control`` anywhere get Anthropic cache counts (7 written, 5 read).
``delay`` seconds (default 0) are waited before answering, for concurrency tests.
Every request is recorded in :attr:`LLMServer.requests`, so "a refused call makes no request"
is checked by counting them. Plain stdlib (``http.server``), one thread per connection.
"""

from __future__ import annotations

import itertools
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["REPLY", "LLMServer", "Recorded", "prompt_tokens"]

REPLY = [
    "The",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "again",
    "and",
    "again",
]
CACHE_CREATION_TOKENS = 7
CACHE_READ_TOKENS = 5


def prompt_tokens(body: dict[str, Any]) -> int:
    """What the server reports as prompt tokens: a quarter of the prompt's JSON length."""
    prompt = {k: body.get(k) for k in ("messages", "input", "instructions", "system", "tools")}
    return max(1, len(json.dumps(prompt, sort_keys=True)) // 4)


@dataclass
class Recorded:
    """One request the server received, and the usage it reported (empty when none)."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    usage: dict[str, int] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    owner: LLMServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client that stops reading a stream closes its connection: expected
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing ------------------------------------------------------------------------------
    def _json(self, status: int, payload: dict[str, Any], request_id: str) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", request_id)
        self.send_header("request-id", request_id)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _start_events(self, request_id: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", request_id)
        self.send_header("request-id", request_id)
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _event(self, payload: dict[str, Any] | str, name: str | None = None) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        prefix = f"event: {name}\n" if name else ""
        self._chunk(f"{prefix}data: {data}\n\n".encode())

    def _end_events(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _cut(self) -> None:
        """Close the connection in the middle of the chunked body."""
        self.close_connection = True
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)

    # -- dispatch ------------------------------------------------------------------------------
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        body: dict[str, Any] = json.loads(raw or b"{}")
        owner = self.server.owner
        record = Recorded(self.path, body, {k.lower(): v for k, v in self.headers.items()})
        number = owner._record(record)
        if owner.delay:
            time.sleep(owner.delay)
        request_id = f"req_{number}"
        model = str(body.get("model") or "")
        anthropic = self.path.endswith("/messages")
        for status in (400, 500):
            if model.endswith(f"-error-{status}"):
                self._error(status, anthropic, request_id)
                return
        truncate = model.endswith("-truncate")
        cap = next(
            (
                body[k]
                for k in ("max_completion_tokens", "max_output_tokens", "max_tokens")
                if isinstance(body.get(k), int)
            ),
            len(REPLY),
        )
        words = REPLY[: max(0, min(cap, len(REPLY)))]
        prompt = prompt_tokens(body)
        if self.path.endswith("/chat/completions"):
            self._chat(record, body, model, words, prompt, number, request_id, truncate)
        elif self.path.endswith("/responses"):
            self._responses(record, body, model, words, prompt, number, request_id, truncate)
        elif anthropic:
            cached = "cache_control" in raw.decode()
            self._messages(record, body, model, words, prompt, cached, number, request_id, truncate)
        else:
            self._json(404, {"error": {"message": "not found"}}, request_id)

    def _error(self, status: int, anthropic: bool, request_id: str) -> None:
        kind = "invalid_request_error" if status == 400 else "api_error"
        message = f"fake {status} error"
        if anthropic:
            payload: dict[str, Any] = {
                "type": "error",
                "error": {"type": kind, "message": message},
            }
        else:
            payload = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        self._json(status, payload, request_id)

    # -- OpenAI chat completions ---------------------------------------------------------------
    def _chat(
        self,
        record: Recorded,
        body: dict[str, Any],
        model: str,
        words: list[str],
        prompt: int,
        number: int,
        request_id: str,
        truncate: bool,
    ) -> None:
        ident = f"chatcmpl-{number}"
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": len(words),
            "total_tokens": prompt + len(words),
        }
        base = {"id": ident, "created": 1700000000, "model": model}
        if not body.get("stream"):
            record.usage = usage
            message = {"role": "assistant", "content": " ".join(words), "refusal": None}
            choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
            payload = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            self._json(200, payload, request_id)
            return
        self._start_events(request_id)
        chunk = {**base, "object": "chat.completion.chunk"}
        for index, word in enumerate(words):
            if truncate and index == len(words) // 2:
                self._cut()
                return
            delta = {"content": " " + word} if index else {"role": "assistant", "content": word}
            self._event({**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        self._event({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            record.usage = usage
            self._event({**chunk, "choices": [], "usage": usage})
        self._event("[DONE]")
        self._end_events()

    # -- OpenAI responses ----------------------------------------------------------------------
    def _responses(
        self,
        record: Recorded,
        body: dict[str, Any],
        model: str,
        words: list[str],
        prompt: int,
        number: int,
        request_id: str,
        truncate: bool,
    ) -> None:
        usage = {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": len(words),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + len(words),
        }
        text = " ".join(words)
        item = {
            "type": "message",
            "id": f"msg_{number}",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        response: dict[str, Any] = {
            "id": f"resp_{number}",
            "object": "response",
            "created_at": 1700000000,
            "model": model,
            "status": "completed",
            "output": [item],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": usage,
        }
        flat = {
            "input_tokens": prompt,
            "output_tokens": len(words),
            "total_tokens": prompt + len(words),
        }
        if not body.get("stream"):
            record.usage = flat
            self._json(200, response, request_id)
            return
        self._start_events(request_id)
        started = {**response, "status": "in_progress", "output": [], "usage": None}
        sequence = itertools.count()

        def emit(kind: str, **fields: Any) -> None:
            self._event({"type": kind, "sequence_number": next(sequence), **fields}, kind)

        emit("response.created", response=started)
        emit("response.in_progress", response=started)
        part = {"type": "output_text", "text": "", "annotations": []}
        where = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        emit(
            "response.output_item.added",
            output_index=0,
            item={**item, "status": "in_progress", "content": []},
        )
        emit("response.content_part.added", part=part, **where)
        for index, word in enumerate(words):
            if truncate and index == len(words) // 2:
                self._cut()
                return
            delta = word if index == 0 else " " + word
            emit("response.output_text.delta", delta=delta, logprobs=[], **where)
        emit("response.output_text.done", text=text, logprobs=[], **where)
        emit("response.content_part.done", part={**part, "text": text}, **where)
        emit("response.output_item.done", output_index=0, item=item)
        record.usage = flat
        emit("response.completed", response=response)
        self._end_events()

    # -- Anthropic messages --------------------------------------------------------------------
    def _messages(
        self,
        record: Recorded,
        body: dict[str, Any],
        model: str,
        words: list[str],
        prompt: int,
        cached: bool,
        number: int,
        request_id: str,
        truncate: bool,
    ) -> None:
        usage = {
            "input_tokens": prompt,
            "output_tokens": len(words),
            "cache_creation_input_tokens": CACHE_CREATION_TOKENS if cached else 0,
            "cache_read_input_tokens": CACHE_READ_TOKENS if cached else 0,
        }
        message: dict[str, Any] = {
            "id": f"msg_{number}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": " ".join(words)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            record.usage = usage
            self._json(200, message, request_id)
            return
        self._start_events(request_id)
        start_usage = {**usage, "output_tokens": 1}
        self._event(
            {
                "type": "message_start",
                "message": {**message, "content": [], "stop_reason": None, "usage": start_usage},
            },
            "message_start",
        )
        self._event(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            "content_block_start",
        )
        self._event({"type": "ping"}, "ping")
        for index, word in enumerate(words):
            if truncate and index == len(words) // 2:
                self._cut()
                return
            self._event(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": word if index == 0 else " " + word},
                },
                "content_block_delta",
            )
        self._event({"type": "content_block_stop", "index": 0}, "content_block_stop")
        record.usage = usage
        self._event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(words)},
            },
            "message_delta",
        )
        self._event({"type": "message_stop"}, "message_stop")
        self._end_events()


class LLMServer:
    """The server, on a free port of 127.0.0.1, served from a thread while in a ``with`` block.

    ``openai_base_url`` (``…/v1``) and ``anthropic_base_url`` are what the clients take as
    ``base_url``.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def _record(self, record: Recorded) -> int:
        with self._lock:
            self.requests.append(record)
            return next(self._numbers)

    @property
    def port(self) -> int:
        assert self._server is not None, "the server is not running"
        return int(self._server.server_address[1])

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LLMServer:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
