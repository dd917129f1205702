"""What every fetcher of vendor data shares (NVIDIA's RIM and OCSP services, AMD's KDS): no
redirects, https only (plain http on loopback, for tests), one deadline per request, and files
replaced atomically.

Why each: the services never redirect, and following one could leave https or the service; a
man in the middle must not be able to downgrade to http; a socket timeout bounds each read, not
the request, so a server that sends a byte just before every timeout would hold a fetcher (and
the verification or the broker refresh waiting on it) for days; and a reader (a broker
reloading its held lists, a second process sharing a cache) must see the old file or the new
one, never half.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import socket
import stat
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from attest.errors import InputError

_log = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
#: Longest piece of a transport error (a server's bad status line, say) put into a message.
MAX_REASON_CHARS = 160


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as the HTTP error it is, never followed."""

    def redirect_request(  # noqa: PLR0917 - the stdlib signature
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


def require_https(url: str, what: str) -> None:
    """``InputError`` unless ``url`` is https with a host (and a numeric port, if any), or plain
    http on loopback. Checked before anything is fetched, so a mistyped URL is a usage error
    rather than one failed fetch per list."""
    try:
        parsed = urllib.parse.urlsplit(url)
        _ = parsed.port  # ValueError for a port that is not a number in 0..65535
    except ValueError:
        raise InputError(f"{what} URL is not a valid URL: {url!r}") from None
    if not parsed.netloc or not parsed.hostname:
        raise InputError(f"{what} URL has no host: {url!r}")
    if parsed.scheme != "https" and not (
        parsed.scheme == "http" and parsed.hostname in LOOPBACK_HOSTS
    ):
        raise InputError(f"{what} URL must be https (http on loopback only): {url!r}")


@dataclass(frozen=True)
class HttpAnswer:
    """What a server answered: its status, its media type and at most ``limit + 1`` bytes of
    body (so the caller can tell "too large"); the body of an error status is not read."""

    status: int
    content_type: str
    body: bytes

    @property
    def ok(self) -> bool:
        """A 2xx status: urllib turns every other one (redirects included) into an error."""
        return 200 <= self.status < 300


class _Deadline:
    """One request's deadline: the time left for each connect, and a watchdog that shuts the
    connection's socket down when the time is up.

    The watchdog is what bounds reading the status line, the headers and the body: each of
    those is many blocking reads, and a socket timeout only bounds one. ``shutdown`` (on a
    duplicate of the descriptor, which stays valid after the TLS layer takes the original over)
    wakes a blocked read with end-of-file; whatever the reading thread then makes of it, the
    caller asks ``finish`` and reports the deadline, not the symptom.
    """

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._watched: list[socket.socket] = []
        self._fired = False
        self._done = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    def remaining(self) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer within {self._seconds:g} s")
        return left

    def _watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self._fired:
                raise TimeoutError(f"no answer within {self._seconds:g} s")
            self._watched.append(sock.dup())

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._fired = True
            for sock in self._watched:
                # Not connected yet: the connect's own timeout (the time left) ends it.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def finish(self) -> bool:
        """Stop the watchdog; True if it fired (the request ran past its deadline)."""
        self._timer.cancel()
        with self._lock:
            self._done = True
            for sock in self._watched:
                sock.close()
            self._watched.clear()
            return self._fired

    def create_connection(
        self,
        address: tuple[str, int],
        timeout: object = None,
        source_address: tuple[str, int] | None = None,
    ) -> socket.socket:
        """``socket.create_connection`` with each address given only the time left, and each
        socket watched from before it connects. (Name resolution itself cannot be interrupted:
        it is bounded by the resolver's own timeouts.)"""
        host, port = address
        last: OSError | None = None
        for family, kind, proto, _, sockaddr in socket.getaddrinfo(
            host, port, 0, socket.SOCK_STREAM
        ):
            left = self.remaining()
            sock = socket.socket(family, kind, proto)
            try:
                self._watch(sock)
                sock.settimeout(left)
                if source_address is not None:
                    sock.bind(source_address)
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            return sock
        raise last if last is not None else OSError(f"no address for {host!r}")


def _through(
    deadline: _Deadline, connection_class: type[http.client.HTTPConnection]
) -> Callable[..., http.client.HTTPConnection]:
    """A connection factory for ``do_open`` whose sockets are made through ``deadline``
    (``_create_connection`` is the hook http.client's ``connect`` calls, https too, before
    wrapping the socket; untyped in the stubs)."""

    def connection(host: str, /, **kwargs: Any) -> http.client.HTTPConnection:
        conn = connection_class(host, **kwargs)
        conn._create_connection = deadline.create_connection  # type: ignore[attr-defined]
        return conn

    return connection


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    """Plain http (loopback tests), each connection made through the request's deadline."""

    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_through(self._deadline, http.client.HTTPConnection), req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    """https with Python's default context (certificates and host name checked), each
    connection made through the request's deadline."""

    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_through(self._deadline, http.client.HTTPSConnection), req)


def _reason(exc: BaseException) -> str:
    """A transport failure in a few words: the socket's reason, or what kind of bad HTTP the
    server spoke (its own text cut short, as a status line may be 64 KiB, and made printable)."""
    why = getattr(exc, "reason", None) or exc
    text = str(why).strip()[:MAX_REASON_CHARS] or type(why).__name__
    # a server's bytes must not start a new line of a report or a log
    text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    if isinstance(why, http.client.HTTPException):
        text = f"bad HTTP answer ({type(why).__name__}: {text})"
    return text


def http_fetch(
    request: urllib.request.Request,
    *,
    timeout: float,
    limit: int,
    unreachable: Callable[[str], Exception],
) -> HttpAnswer:
    """Send ``request`` and read at most ``limit + 1`` bytes of the answer, all within
    ``timeout`` seconds from now (connect, TLS, status line, headers and body together).

    Redirects are not followed (a 3xx is returned as its status). An HTTP error status comes
    back as an ``HttpAnswer`` with an empty body, for the caller to judge (a 404 means "none"
    to some services). Everything else that keeps an answer from arriving whole in time (no
    route, refused, reset, TLS failure, a server that does not speak HTTP, a body cut short,
    the deadline) raises ``unreachable(reason)``: the calling fetcher's own typed error.
    """
    deadline = _Deadline(timeout)
    opener = urllib.request.build_opener(
        NoRedirect(), _GuardedHTTPHandler(deadline), _GuardedHTTPSHandler(deadline)
    )
    answer: HttpAnswer | None = None
    failure: BaseException | None = None
    deadline.start()
    try:
        try:
            with opener.open(request, timeout=timeout) as response:
                content_type = response.headers.get("Content-Type", "")
                body: bytes = response.read(limit + 1)
                if len(body) <= limit and response.length:  # Content-Length not reached
                    raise http.client.IncompleteRead(body, response.length)
                answer = HttpAnswer(response.status, content_type, body)
        except urllib.error.HTTPError as exc:
            exc.close()  # its body is not read: the status is the answer
            answer = HttpAnswer(exc.code, "", b"")
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
        failure = exc
    finally:
        late = deadline.finish()
    # Whatever the reading thread saw when the watchdog shut its socket, the cause is the
    # deadline; so is a socket timeout, as no single wait is given more than the time left (the
    # TLS handshake, bounded as a whole by the socket timeout, can end a moment before the
    # watchdog fires).
    timed_out = isinstance(failure, TimeoutError) or isinstance(
        getattr(failure, "reason", None), TimeoutError
    )
    if late or timed_out:
        raise unreachable(f"no complete answer within {timeout:g} s") from None
    if failure is not None:
        raise unreachable(_reason(failure)) from None
    assert answer is not None
    return answer


def read_cache_file(
    path: Path, limit: int, *, what: str, follow_symlinks: bool = True
) -> bytes | None:
    """A cache entry's bytes, or None (a miss, to be refetched) for anything else: no file, not
    a regular file (a directory; a FIFO, opened without waiting for a writer; with
    ``follow_symlinks=False`` a symlink), unreadable, or more than ``limit`` bytes. A cache
    only saves round trips, so nothing at an entry's path may stop or stall a fetch; what is
    unusable is logged (``what``: whose cache), naming the entry only (names are hashes or ids,
    contents public)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        _log.warning("%s cache entry %s unusable (%s); ignored", what, path.name, exc.strerror)
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            _log.warning("%s cache entry %s is not a regular file; ignored", what, path.name)
            return None
        data = os.read(fd, limit + 1)  # a regular file: one read returns all there is, up to n
    except OSError as exc:
        _log.warning("%s cache entry %s unreadable (%s); ignored", what, path.name, exc.strerror)
        return None
    finally:
        os.close(fd)
    return None if len(data) > limit else data


def write_atomically(path: Path, data: bytes, *, mode: int = 0o600, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` in one rename (a temporary file in the same directory,
    removed on any failure). ``fsync``: the bytes are on disk before the rename.

    Permissions: a file that is replaced keeps its mode (and, when root writes, its owner and
    group), so a list the operator made readable to a broker running as another user stays
    readable after a refresh by root; a new file gets ``mode``. The default, 0600, is for
    content that may be secret; callers writing public data (CRLs, OCSP answers, RIMs) pass
    0644 on purpose.
    """
    try:
        old = os.lstat(path)
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            if old is not None and stat.S_ISREG(old.st_mode):
                if os.geteuid() == 0:
                    os.fchown(f.fileno(), old.st_uid, old.st_gid)
                os.fchmod(f.fileno(), stat.S_IMODE(old.st_mode) & 0o777)  # never set-id bits
            else:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
