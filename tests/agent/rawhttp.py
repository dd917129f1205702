"""A raw TCP server on loopback for fetcher tests: each connection's handler gets the socket
once the request (head and Content-Length body) has been read, and writes whatever bytes it
likes, however slowly. http.server cannot speak broken HTTP or drip a status line; this can."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator

#: A handler: (the connection, an event set when the test is over) -> None.
Handler = Callable[[socket.socket, threading.Event], None]


def _read_request(conn: socket.socket) -> None:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        data = conn.recv(65536)
        if not data:
            return
        rest += data


class RawServer:
    """``handler`` answers every connection; ``url`` is ``http://127.0.0.1:<port>``.
    ``read_request=False``: the handler starts at once (a TLS client's hello has no HTTP head
    to wait for). ``tls``: each connection is wrapped with this server context first (then
    ``url`` is https)."""

    def __init__(
        self, handler: Handler, *, read_request: bool = True, tls: ssl.SSLContext | None = None
    ) -> None:
        self.handler = handler
        self.read_request = read_request
        self.tls = tls
        self.connections = 0
        self.stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        scheme = "http" if tls is None else "https"
        self.url = f"{scheme}://127.0.0.1:{self._sock.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    def _accept(self) -> None:
        self._sock.settimeout(0.05)  # a blocked accept() does not wake when the socket closes
        while not self.stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._one, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            # the client hanging up mid-answer is what several tests expect
            with contextlib.suppress(OSError):
                if self.tls is not None:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                if self.read_request:
                    _read_request(conn)
                self.handler(conn, self.stop)

    def close(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._sock.close()


def serve(handler: Handler) -> Iterator[RawServer]:
    """For a fixture: ``yield from serve(handler)``."""
    server = RawServer(handler)
    try:
        yield server
    finally:
        server.close()


def drip(conn: socket.socket, stop: threading.Event, head: bytes, byte: bytes = b"a") -> None:
    """Send ``head``, then one ``byte`` every 0.1 s until the client hangs up or the test ends
    (at most 10 s): never idle for as long as a socket timeout, never done."""
    conn.sendall(head)
    end = time.monotonic() + 10
    while not stop.is_set() and time.monotonic() < end:
        conn.sendall(byte)
        stop.wait(0.1)


def answer(data: bytes) -> Handler:
    """A handler that sends ``data`` and closes the connection."""

    def handler(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(data)

    return handler
