"""Online OCSP for ``--revocation online``: ask NVIDIA's responder, remember the answers.

:class:`OnlineOcsp` implements :class:`attest.revocation.OcspSource`. For each (certificate,
issuer) it POSTs the request NVIDIA's own verifier sends (``attest.revocation.build_ocsp_request``:
SHA-384 CertID, critical 32-byte random nonce) as ``application/ocsp-request`` to
``https://ocsp.ndis.nvidia.com/`` (nvtrust ``BaseSettings.OCSP_URL``) with a 10 s deadline for
the whole exchange (nvtrust ``MAX_OCSP_TIME_DELAY``; ``agent.fetching.http_fetch``), reads at
most ``MAX_OCSP_RESPONSE_BYTES``, and checks that the answer echoes the nonce before keeping it.

The cache (a dict, or a directory for reuse across processes) holds raw responses keyed by the
URL and the certificate's CertID, and an entry is used only while
:func:`attest.revocation.check_ocsp_response` still accepts it at the current time (so until its
nextUpdate). The cache is never trusted: whatever it returns is verified again by the caller, like
any other OCSP response. Responses are public data (no secret is stored or logged).

Errors: no network, DNS failure, refused connection, the deadline, or an answer that is not HTTP
-> ``RevocationError`` with reason ``ocsp_unreachable``; an HTTP error status or a redirect ->
``ocsp_http_error``; an oversized or non-OCSP body -> ``ocsp_bad_response``; a fresh answer
without our nonce -> ``ocsp_nonce_mismatch``.
``check_chain_revocation`` reports each of these as a ``missing`` check naming the reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from agent.fetching import http_fetch, read_cache_file, write_atomically
from attest.errors import InputError, RevocationError
from attest.revocation.ocsp import (
    MAX_OCSP_RESPONSE_BYTES,
    NVIDIA_OCSP_NONCE_BYTES,
    build_ocsp_request,
    cert_id_key,
    check_ocsp_response,
)

#: nvtrust ``verifier/config.py`` ``BaseSettings.OCSP_URL`` (overridable there by NV_OCSP_URL).
DEFAULT_OCSP_URL = "https://ocsp.ndis.nvidia.com/"
#: nvtrust ``BaseSettings.MAX_OCSP_TIME_DELAY``: 10 seconds per OCSP call (the whole call).
DEFAULT_TIMEOUT_S = 10.0
#: In-memory cache entries kept when the caller gives no cache (3 per GPU chain, 3 per RIM chain).
MAX_MEMORY_CACHE_ENTRIES = 1024
#: Cached responses on disk are named ``<sha256 hex>`` + this suffix.
CACHE_FILE_SUFFIX = ".ocsp.der"
_OCSP_RESPONSE_TYPE = "application/ocsp-response"

_log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _MemoryStore:
    def __init__(self, mapping: MutableMapping[str, bytes] | None) -> None:
        self._map: MutableMapping[str, bytes] = OrderedDict() if mapping is None else mapping
        self._bounded = mapping is None
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._map.get(key)

    def put(self, key: str, der: bytes) -> None:
        with self._lock:
            self._map[key] = der
            if self._bounded and isinstance(self._map, OrderedDict):
                self._map.move_to_end(key)
                while len(self._map) > MAX_MEMORY_CACHE_ENTRIES:
                    self._map.popitem(last=False)

    def drop(self, key: str) -> None:
        with self._lock:
            self._map.pop(key, None)


class _DiskStore:
    """One file per response; written atomically so concurrent processes never see half a file.

    Best effort both ways, because the cache only saves round trips: whatever is at an entry's
    path that is not a regular file we can read (a directory, a symlink, a FIFO that would block
    an ``open`` forever, a file we may not read) is a miss, and a write or removal that fails
    (read-only or full file system, permissions) is logged and forgotten, never allowed to throw
    away an answer that was fetched and checked. Names are hashes and responses are public, so
    the log says nothing secret.
    """

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, key: str) -> Path:
        return self._dir / f"{key}{CACHE_FILE_SUFFIX}"

    def get(self, key: str) -> bytes | None:
        return read_cache_file(
            self._path(key), MAX_OCSP_RESPONSE_BYTES, what="OCSP", follow_symlinks=False
        )

    def put(self, key: str, der: bytes) -> None:
        path = self._path(key)
        try:
            # a cache: a lost write is refetched; OCSP answers are public (0644)
            write_atomically(path, der, mode=0o644, fsync=False)
        except OSError as exc:
            _log.warning("OCSP cache entry %s not written (%s)", path.name, exc.strerror or exc)

    def drop(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            _log.warning("OCSP cache entry %s not removed (%s)", path.name, exc.strerror or exc)


class OnlineOcsp:
    """Fetches OCSP responses over HTTP(S), with a timeout, a size bound and a cache.

    ``cache``: None (a bounded in-memory cache private to this object), a dict-like mapping you
    own (shared between objects), or a directory path (shared between processes).
    ``allow_http`` permits a plain-http URL (the test responder on loopback; OCSP answers are
    signed, but the question still reveals which GPU is asking). ``clock`` and ``nonce_source``
    exist for tests; the defaults are the system clock and ``secrets.token_bytes``.
    """

    def __init__(
        self,
        url: str = DEFAULT_OCSP_URL,
        timeout: float = DEFAULT_TIMEOUT_S,
        cache: MutableMapping[str, bytes] | str | os.PathLike[str] | None = None,
        *,
        allow_http: bool = False,
        require_nonce: bool = True,
        clock: Callable[[], datetime] = _utcnow,
        nonce_source: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        try:
            parsed = urllib.parse.urlsplit(url)
            _ = parsed.port  # a port that is not a number: a usage error, not a failed fetch
        except ValueError:
            raise InputError(f"OCSP URL is not a valid URL: {url!r}") from None
        scheme = parsed.scheme.lower()
        if scheme != "https" and not (scheme == "http" and allow_http):
            raise InputError(f"OCSP URL must be https:// (got {url!r})")
        if not parsed.hostname:
            raise InputError(f"OCSP URL has no host: {url!r}")
        if not 0 < timeout <= 300:
            raise InputError(f"OCSP timeout must be in (0, 300] seconds, got {timeout}")
        self.url = url
        self.timeout = timeout
        self.require_nonce = require_nonce
        self._clock = clock
        self._nonce = nonce_source
        self._store: _MemoryStore | _DiskStore
        if isinstance(cache, str | os.PathLike):
            self._store = _DiskStore(Path(cache))
        else:
            self._store = _MemoryStore(cache)
        #: Counters for tests and the benchmark: network round trips and cache answers.
        self.fetches = 0
        self.cache_hits = 0

    def _key(self, cert: x509.Certificate, issuer: x509.Certificate) -> str:
        alg, name_hash, key_hash, serial = cert_id_key(cert, issuer, "sha384")
        h = hashlib.sha256(b"lessee-ocsp-fetch-v1\0" + self.url.encode() + b"\0" + alg.encode())
        h.update(name_hash + key_hash + serial.to_bytes(20, "big", signed=False))
        return h.hexdigest()

    def _still_usable(
        self, der: bytes, cert: x509.Certificate, issuer: x509.Certificate, now: datetime
    ) -> bool:
        check = check_ocsp_response(der, cert=cert, issuer=issuer, at=now, allow_hold=True)
        return check.status != "invalid"

    def response_for(self, cert: x509.Certificate, issuer: x509.Certificate) -> bytes | None:
        """The cached answer while it is still fresh and valid, else a new one from the network."""
        key = self._key(cert, issuer)
        now = self._clock()
        cached = self._store.get(key)
        if cached is not None:
            if self._still_usable(cached, cert, issuer, now):
                self.cache_hits += 1
                return cached
            self._store.drop(key)
        nonce = self._nonce(NVIDIA_OCSP_NONCE_BYTES)
        body = self._post(build_ocsp_request(cert, issuer, nonce=nonce))
        self.fetches += 1
        check = check_ocsp_response(
            body,
            cert=cert,
            issuer=issuer,
            at=now,
            allow_hold=True,
            expected_nonce=nonce if self.require_nonce else None,
        )
        if check.code in ("nonce_missing", "nonce_mismatch"):
            raise RevocationError(
                f"OCSP responder {self.url}: {check.detail}", reason="ocsp_nonce_mismatch"
            )
        if check.status != "invalid":
            self._store.put(key, body)
        # An invalid answer is still returned: the caller's check reports why, per certificate.
        return body

    def _post(self, request_der: bytes) -> bytes:
        req = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            self.url,
            data=request_der,
            method="POST",
            headers={"Content-Type": "application/ocsp-request", "Accept": _OCSP_RESPONSE_TYPE},
        )
        answer = http_fetch(
            req,
            timeout=self.timeout,
            limit=MAX_OCSP_RESPONSE_BYTES,
            unreachable=lambda why: RevocationError(
                f"OCSP responder {self.url} unreachable ({why})", reason="ocsp_unreachable"
            ),
        )
        if not answer.ok:
            raise RevocationError(
                f"OCSP responder {self.url} answered HTTP {answer.status}",
                reason="ocsp_http_error",
            )
        body = answer.body
        if len(body) > MAX_OCSP_RESPONSE_BYTES:
            raise RevocationError(
                f"OCSP responder {self.url} sent more than {MAX_OCSP_RESPONSE_BYTES} bytes",
                reason="ocsp_bad_response",
            )
        media = answer.content_type.split(";", 1)[0].strip().lower()
        if media and media != _OCSP_RESPONSE_TYPE:
            raise RevocationError(
                f"OCSP responder {self.url} sent {media!r}, not {_OCSP_RESPONSE_TYPE}",
                reason="ocsp_bad_response",
            )
        return body
