"""A TCP proxy in front of PostgreSQL that a test controls: it counts the round trips clients
make, and can be killed (every connection reset, the port closed), restarted on the same port,
made silent (accepting connections but never answering) or stalled (established connections
stay open but no byte goes through, like a hung pooler or a network that drops packets).

Round trips are counted from the PostgreSQL protocol itself: every simple ``Query`` message
and every ``Sync`` (which ends one extended-protocol exchange) is one request the client waits
on. Clients must not use SSL or GSS encryption through it (``sslmode=disable``).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from typing import Literal

Mode = Literal["forward", "silent", "stall"]


class _Counter:
    """Parses the client -> server byte stream into messages; counts Query and Sync."""

    def __init__(self) -> None:
        self.buffer = b""
        self.startup = True
        self.round_trips = 0

    def feed(self, data: bytes) -> int:
        self.buffer += data
        counted = 0
        while True:
            if self.startup:
                if len(self.buffer) < 4:
                    break
                (length,) = struct.unpack("!i", self.buffer[:4])
                if len(self.buffer) < length:
                    break
                code = struct.unpack("!i", self.buffer[4:8])[0] if length >= 8 else 0
                self.buffer = self.buffer[length:]
                if code not in (80877103, 80877104):  # SSLRequest, GSSENCRequest
                    self.startup = False
                continue
            if len(self.buffer) < 5:
                break
            kind = self.buffer[:1]
            (length,) = struct.unpack("!i", self.buffer[1:5])
            if len(self.buffer) < 1 + length:
                break
            self.buffer = self.buffer[1 + length :]
            if kind in (b"Q", b"S"):
                counted += 1
        self.round_trips += counted
        return counted


class PgProxy:
    """Forwards 127.0.0.1:<port> to the database at ``target``."""

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self.mode: Mode = "forward"
        self.round_trips = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.port = port
        self.start()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def kill(self) -> None:
        """Stop listening and reset every connection, as a crashed server would."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pipe threads; the peers see EOF
            with contextlib.suppress(OSError):
                sock.close()

    def reset_count(self) -> None:
        with self._lock:
            self.round_trips = 0

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self.mode == "silent":
                with self._lock:
                    self._sockets.add(client)  # held open, never answered
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, server))
            counter = _Counter()
            threading.Thread(target=self._pipe, args=(client, server, counter), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, None), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, counter: _Counter | None) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.mode == "stall":
                    continue  # swallowed: the peer waits for an answer that never comes
                if counter is not None:
                    counted = counter.feed(data)
                    if counted:
                        with self._lock:
                            self.round_trips += counted
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()
