"""What every fetcher of vendor data shares (NVIDIA's RIM and OCSP services, AMD's KDS): no
redirects, https only (plain http on loopback, for tests), and files replaced atomically.

Why each: the services never redirect, and following one could leave https or the service; a
man in the middle must not be able to downgrade to http; and a reader (a broker reloading its
held lists, a second process sharing a cache) must see the old file or the new one, never half.
"""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO

from attest.errors import InputError

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


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
    """``InputError`` unless ``url`` is https with a host, or plain http on loopback."""
    parsed = urllib.parse.urlsplit(url)
    if not parsed.netloc:
        raise InputError(f"{what} URL has no host: {url!r}")
    if parsed.scheme != "https" and not (
        parsed.scheme == "http" and parsed.hostname in LOOPBACK_HOSTS
    ):
        raise InputError(f"{what} URL must be https (http on loopback only): {url!r}")


def write_atomically(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` in one rename (a temporary file in the same directory,
    removed on any failure). ``fsync``: the bytes are on disk before the rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
