"""A deliberately bad HTTP/2 client for the gRPC abuse tests: raw frames over a raw socket.

Real gRPC clients are polite: they finish their requests and read their responses. An attacker
does not have to. This client speaks just enough HTTP/2 (RFC 9113) and gRPC framing to open
calls the server accepts, and then misbehaves on purpose: it sends the request headers and never
the message, or dribbles the message a byte at a time, or sets no deadline. A reader thread
answers SETTINGS and (optionally) PING like a live peer would, so the server cannot tell it from
a slow but healthy client, and records what the server does about it: RST_STREAM, GOAWAY, the
connection closing, and when.

Header blocks use HPACK literals without indexing and without Huffman coding (RFC 7541 §6.2.2),
which every decoder must accept; server header blocks are not decoded (the tests only need to
know whether and when a stream or the connection was ended).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 §6) and the flags used here.
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
#: The largest frame payload a peer must accept without a SETTINGS change (RFC 9113 §4.2).
MAX_FRAME_PAYLOAD = 16_384
#: A frame header is 9 bytes; a server frame larger than this means the reader is lost.
_FRAME_HEADER = 9
#: Seconds a socket read waits before the reader checks whether it should stop.
_READ_POLL_S = 0.2


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """RFC 7541 §5.1 integer with an N-bit prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name: str, value: str) -> bytes:
    """One header as 'literal without indexing, new name', no Huffman (RFC 7541 §6.2.2)."""
    n, v = name.encode("ascii"), value.encode("ascii")
    return b"\x00" + _hpack_int(len(n), 7) + n + _hpack_int(len(v), 7) + v


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise ValueError("frame payload over the default maximum frame size")
    head = struct.pack(">I", len(payload))[1:] + bytes([kind, flags])
    return head + struct.pack(">I", stream & 0x7FFFFFFF) + payload


def grpc_message(body: bytes) -> bytes:
    """gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, body."""
    return b"\x00" + struct.pack(">I", len(body)) + body


@dataclass
class StreamState:
    reset_at: float | None = None
    reset_code: int | None = None
    headers_frames: int = 0
    data_bytes: int = 0
    ended_at: float | None = None


@dataclass
class RawH2Client:
    """One TCP connection to ``host:port``; see the module docstring."""

    host: str
    port: int
    answer_pings: bool = True
    sock: socket.socket = field(init=False)
    streams: dict[int, StreamState] = field(default_factory=dict)
    goaway_at: float | None = None
    closed_at: float | None = None
    opened_at: float = field(default_factory=time.monotonic)
    pings_seen: int = 0
    _next_stream: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _reader: threading.Thread | None = None

    def connect(self, *, settings: bool = True) -> RawH2Client:
        self.sock = socket.create_connection((self.host, self.port), timeout=5)
        self.sock.settimeout(_READ_POLL_S)
        self.opened_at = time.monotonic()
        if settings:
            self.send(PREFACE + frame(SETTINGS, 0, 0))
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        return self

    # -- sending ------------------------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """Write bytes; False once the server has closed the connection."""
        with self._lock:
            try:
                self.sock.sendall(data)
            except OSError:
                return False
        return True

    def open_call(
        self, path: str, *, timeout_s: int | None = None, end_headers: bool = True
    ) -> int:
        """Send the HEADERS of a gRPC call (no message yet); return its stream id."""
        sid = self._next_stream
        self._next_stream += 2
        block = b"".join(
            hpack_literal(k, v)
            for k, v in (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", f"{self.host}:{self.port}"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *((("grpc-timeout", f"{timeout_s}S"),) if timeout_s is not None else ()),
            )
        )
        self.streams[sid] = StreamState()
        self.send(frame(HEADERS, END_HEADERS if end_headers else 0, sid, block))
        return sid

    def send_data(self, sid: int, data: bytes, *, end: bool = False) -> bool:
        return self.send(frame(DATA, END_STREAM if end else 0, sid, data))

    def close(self) -> None:
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        if self._reader is not None:
            self._reader.join(2)

    # -- what the server did ------------------------------------------------------------------

    def stream_done(self, sid: int) -> bool:
        """The server reset or finished the stream, or dropped the whole connection."""
        s = self.streams[sid]
        return s.reset_at is not None or s.ended_at is not None or self.closed_at is not None

    def connection_ended(self) -> bool:
        return self.closed_at is not None

    def _read_exact(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            if self._stop.is_set():
                return None
            try:
                chunk = self.sock.recv(n - len(buf))
            except TimeoutError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            head = self._read_exact(_FRAME_HEADER)
            if head is None:
                break
            length = int.from_bytes(head[:3], "big")
            kind, flags = head[3], head[4]
            sid = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            payload = self._read_exact(length) if length else b""
            if payload is None:
                break
            now = time.monotonic()
            state = self.streams.get(sid)
            if kind == SETTINGS and not flags & ACK:
                self.send(frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                self.pings_seen += 1
                if self.answer_pings:
                    self.send(frame(PING, ACK, 0, payload))
            elif kind == GOAWAY:
                self.goaway_at = self.goaway_at or now
            elif kind == RST_STREAM and state is not None:
                state.reset_at = now
                state.reset_code = int.from_bytes(payload[:4], "big")
            elif kind == HEADERS and state is not None:
                state.headers_frames += 1
                if flags & END_STREAM:
                    state.ended_at = now
            elif kind == DATA and state is not None:
                state.data_bytes += len(payload)
                if flags & END_STREAM:
                    state.ended_at = now
        if not self._stop.is_set():
            self.closed_at = time.monotonic()


__all__ = ["RawH2Client", "StreamState", "grpc_message", "hpack_literal"]
