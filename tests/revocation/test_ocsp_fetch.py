"""OnlineOcsp against a real HTTP responder on 127.0.0.1 (http.server in a thread)."""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import ocsp

from agent.ocsp_fetch import CACHE_FILE_SUFFIX, DEFAULT_OCSP_URL, DEFAULT_TIMEOUT_S, OnlineOcsp
from attest.errors import InputError, RevocationError
from attest.revocation import MAX_OCSP_RESPONSE_BYTES, check_chain_revocation
from tests.revocation.pki import NOW, load_pki, make_response

PKI = load_pki()


@dataclass
class Responder:
    """What the loopback responder does; tests change it between calls."""

    mode: str = (
        "good"  # good | wrong_nonce | no_nonce | http500 | redirect | html | huge | slow | garbage
    )
    now: datetime = NOW
    requests: list[bytes] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return

    def do_POST(self) -> None:
        cfg = self.server.cfg
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        cfg.requests.append(body)
        cfg.content_types.append(self.headers.get("Content-Type", ""))
        if cfg.mode == "http500":
            self.send_error(500)
            return
        if cfg.mode == "redirect":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.end_headers()
            return
        if cfg.mode == "slow":
            time.sleep(1.0)
        req = ocsp.load_der_ocsp_request(body)
        nonce = req.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        if cfg.mode == "wrong_nonce":
            nonce = bytes(32)
        cert = {c.serial_number: c for c in PKI.chain}[req.serial_number]
        issuer = PKI.intermediate if cert is PKI.leaf else PKI.root
        payload = make_response(
            PKI,
            cert=cert,
            issuer=issuer,
            this_update=cfg.now - timedelta(minutes=10),
            next_update=cfg.now + timedelta(days=1),
            nonce=None if cfg.mode == "no_nonce" else nonce,
        )
        ctype = "application/ocsp-response"
        if cfg.mode == "html":
            payload, ctype = b"<html>captive portal</html>", "text/html"
        elif cfg.mode == "huge":
            payload = b"\x30" * (MAX_OCSP_RESPONSE_BYTES + 10)
        elif cfg.mode == "garbage":
            payload = b"\x30\x03\x0a\x01\x00"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client hung up (timeout test)
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    cfg: Responder


@pytest.fixture
def responder() -> Iterator[tuple[Responder, str]]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.cfg = Responder()
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server.cfg, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _online(url: str, **kw: object) -> OnlineOcsp:
    return OnlineOcsp(url, timeout=2.0, allow_http=True, clock=lambda: NOW, **kw)  # type: ignore[arg-type]


def test_defaults_match_nvtrust() -> None:
    assert DEFAULT_OCSP_URL == "https://ocsp.ndis.nvidia.com/"
    assert DEFAULT_TIMEOUT_S == 10.0


def test_fetch_good_and_verify_chain(responder: tuple[Responder, str]) -> None:
    cfg, url = responder
    source = _online(url)
    checks = check_chain_revocation(PKI.chain, indices=(0, 1), mode="online", source=source, at=NOW)
    assert [(c.subject, c.status, c.ok) for c in checks] == [
        ("Leaf", "good", True),
        ("OCSP Intermediate", "good", True),
    ]
    assert source.fetches == 2
    assert cfg.content_types == ["application/ocsp-request"] * 2
    # The request is NVIDIA's form: SHA-384 CertID and a critical 32-byte nonce.
    req = ocsp.load_der_ocsp_request(cfg.requests[0])
    ext = req.extensions.get_extension_for_class(x509.OCSPNonce)
    assert ext.critical and len(ext.value.nonce) == 32
    assert req.hash_algorithm.name == "sha384"


def test_nonces_are_fresh_per_request(responder: tuple[Responder, str]) -> None:
    cfg, url = responder
    source = _online(url)
    source.response_for(PKI.leaf, PKI.intermediate)
    source.response_for(PKI.intermediate, PKI.root)
    nonces = {
        ocsp.load_der_ocsp_request(r).extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        for r in cfg.requests
    }
    assert len(nonces) == 2


def test_memory_cache_until_next_update(responder: tuple[Responder, str]) -> None:
    cfg, url = responder
    clock = [NOW]
    source = OnlineOcsp(url, timeout=2.0, allow_http=True, clock=lambda: clock[0])
    first = source.response_for(PKI.leaf, PKI.intermediate)
    assert source.response_for(PKI.leaf, PKI.intermediate) == first
    assert (source.fetches, source.cache_hits, len(cfg.requests)) == (1, 1, 1)
    clock[0] = NOW + timedelta(days=2)  # past nextUpdate (now + 1 day)
    cfg.now = clock[0]
    second = source.response_for(PKI.leaf, PKI.intermediate)
    assert second != first and source.fetches == 2


def test_shared_dict_cache(responder: tuple[Responder, str]) -> None:
    cfg, url = responder
    shared: dict[str, bytes] = {}
    _online(url, cache=shared).response_for(PKI.leaf, PKI.intermediate)
    other = _online(url, cache=shared)
    assert other.response_for(PKI.leaf, PKI.intermediate) is not None
    assert (other.fetches, other.cache_hits, len(cfg.requests)) == (0, 1, 1)


def test_disk_cache_across_instances(responder: tuple[Responder, str], tmp_path: Path) -> None:
    cfg, url = responder
    cache_dir = tmp_path / "ocsp"
    der = _online(url, cache=cache_dir).response_for(PKI.leaf, PKI.intermediate)
    files = list(cache_dir.glob(f"*{CACHE_FILE_SUFFIX}"))
    assert len(files) == 1 and files[0].read_bytes() == der
    again = _online(url, cache=str(cache_dir))
    assert again.response_for(PKI.leaf, PKI.intermediate) == der
    assert again.fetches == 0 and len(cfg.requests) == 1


def test_disk_cache_is_not_trusted(responder: tuple[Responder, str], tmp_path: Path) -> None:
    cfg, url = responder
    _online(url, cache=tmp_path).response_for(PKI.leaf, PKI.intermediate)
    (path,) = tmp_path.glob(f"*{CACHE_FILE_SUFFIX}")
    forged = make_response(PKI, signer="rogue_self")  # someone with disk access swaps the file
    path.write_bytes(forged)
    source = _online(url, cache=tmp_path)
    der = source.response_for(PKI.leaf, PKI.intermediate)
    assert der != forged and source.fetches == 1 and len(cfg.requests) == 2
    assert path.read_bytes() == der


def test_wrong_nonce_is_refused(responder: tuple[Responder, str]) -> None:
    cfg, url = responder
    cfg.mode = "wrong_nonce"
    source = _online(url)
    with pytest.raises(RevocationError) as e:
        source.response_for(PKI.leaf, PKI.intermediate)
    assert e.value.reason == "ocsp_nonce_mismatch"
    (check,) = check_chain_revocation(PKI.chain, indices=(0,), mode="online", source=source, at=NOW)
    assert (check.status, check.code) == ("missing", "ocsp_nonce_mismatch")


def test_missing_nonce_refused_unless_allowed(responder: tuple[Responder, str]) -> None:
    cfg, url = responder
    cfg.mode = "no_nonce"
    with pytest.raises(RevocationError) as e:
        _online(url).response_for(PKI.leaf, PKI.intermediate)
    assert e.value.reason == "ocsp_nonce_mismatch"
    assert _online(url, require_nonce=False).response_for(PKI.leaf, PKI.intermediate)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("http500", "ocsp_http_error"),
        ("redirect", "ocsp_http_error"),
        ("html", "ocsp_bad_response"),
        ("huge", "ocsp_bad_response"),
        ("slow", "ocsp_unreachable"),
    ],
)
def test_transport_errors(responder: tuple[Responder, str], mode: str, reason: str) -> None:
    cfg, url = responder
    cfg.mode = mode
    # The timeout bounds the whole request: short only where the server is meant to be too
    # slow (it sleeps 1 s); the others must not turn into a timeout on a loaded machine.
    timeout = 0.3 if mode == "slow" else 10.0
    source = OnlineOcsp(url, timeout=timeout, allow_http=True, clock=lambda: NOW)
    with pytest.raises(RevocationError) as e:
        source.response_for(PKI.leaf, PKI.intermediate)
    assert e.value.reason == reason
    if mode == "redirect":
        assert len(cfg.requests) == 1  # the redirect was not followed


def test_garbage_is_returned_for_the_checker_not_cached(responder: tuple[Responder, str]) -> None:
    cfg, url = responder
    cfg.mode = "garbage"
    cache: dict[str, bytes] = {}
    source = _online(url, cache=cache)
    (check,) = check_chain_revocation(PKI.chain, indices=(0,), mode="online", source=source, at=NOW)
    assert (check.status, check.code) == ("invalid", "malformed")
    assert cache == {}


def test_unreachable_port() -> None:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = OnlineOcsp(f"http://127.0.0.1:{port}/", timeout=1.0, allow_http=True)
    with pytest.raises(RevocationError) as e:
        source.response_for(PKI.leaf, PKI.intermediate)
    assert e.value.reason == "ocsp_unreachable"
    (check,) = check_chain_revocation(PKI.chain, indices=(0,), mode="online", source=source, at=NOW)
    assert (check.status, check.ok, check.code) == ("missing", False, "ocsp_unreachable")


def test_url_and_timeout_validation() -> None:
    with pytest.raises(InputError):
        OnlineOcsp("http://ocsp.example/")  # plain http needs allow_http
    with pytest.raises(InputError):
        OnlineOcsp("ftp://ocsp.example/", allow_http=True)
    with pytest.raises(InputError):
        OnlineOcsp(timeout=0)
    assert OnlineOcsp().url == DEFAULT_OCSP_URL


def _entry_path(url: str, cache_dir: Path) -> Path:
    return cache_dir / (_online(url)._key(PKI.leaf, PKI.intermediate) + CACHE_FILE_SUFFIX)


def _directory(p: Path) -> None:
    p.mkdir()
    (p / "x").write_bytes(b"x")  # not empty: the atomic write cannot replace it either


def _symlink_loop(p: Path) -> None:
    os.symlink(p.name, p)


def _symlink_to_a_good_answer(p: Path) -> None:
    (p.parent / "elsewhere.der").write_bytes(make_response(PKI))  # valid at NOW
    os.symlink("elsewhere.der", p)


def _fifo(p: Path) -> None:
    os.mkfifo(p)  # opening it for reading (without O_NONBLOCK) would wait for a writer forever


def _unreadable_file(p: Path) -> None:
    p.write_bytes(b"\x30" * (MAX_OCSP_RESPONSE_BYTES + 1))  # larger than any answer


@pytest.mark.parametrize(
    "make",
    [_directory, _symlink_loop, _symlink_to_a_good_answer, _fifo, _unreadable_file],
    ids=lambda f: f.__name__.strip("_"),
)
def test_a_cache_entry_that_is_not_a_readable_file_is_a_miss(
    responder: tuple[Responder, str], tmp_path: Path, make: Callable[[Path], None]
) -> None:
    """Whatever is in the way at an entry's path costs one fetch, never an untyped error or a
    blocked verification (a FIFO once hung ``open`` for good)."""
    cfg, url = responder
    cache_dir = tmp_path / "ocsp"
    cache_dir.mkdir()
    make(_entry_path(url, cache_dir))
    source = _online(url, cache=cache_dir)
    start = time.monotonic()
    der = source.response_for(PKI.leaf, PKI.intermediate)
    assert time.monotonic() - start < 2.0
    assert der is not None and (source.fetches, source.cache_hits) == (1, 0)
    assert len(cfg.requests) == 1


def test_a_cache_that_cannot_be_written_keeps_the_fetched_answer(
    responder: tuple[Responder, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only or full file system (simulated: the tests may run as root, whom a 0500
    directory does not stop) loses the cache entry, not the verified answer."""
    import agent.ocsp_fetch as ocsp_fetch

    def read_only(path: Path, data: bytes, **kw: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(ocsp_fetch, "write_atomically", read_only)
    cfg, url = responder
    source = _online(url, cache=tmp_path)
    assert source.response_for(PKI.leaf, PKI.intermediate) is not None
    assert source.response_for(PKI.leaf, PKI.intermediate) is not None  # not cached: refetched
    assert (source.fetches, len(cfg.requests)) == (2, 2)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0500 directory anyway")
def test_a_read_only_cache_directory_keeps_the_fetched_answer(
    responder: tuple[Responder, str], tmp_path: Path
) -> None:
    cfg, url = responder
    tmp_path.chmod(0o500)
    try:
        assert _online(url, cache=tmp_path).response_for(PKI.leaf, PKI.intermediate) is not None
    finally:
        tmp_path.chmod(0o700)
    assert len(cfg.requests) == 1


def test_a_stale_entry_that_cannot_be_removed_is_refetched(
    responder: tuple[Responder, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, url = responder
    path = _entry_path(url, tmp_path)
    path.write_bytes(b"not an OCSP response")
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self == path:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    source = _online(url, cache=tmp_path)
    assert source.response_for(PKI.leaf, PKI.intermediate) is not None
    assert source.fetches == 1 and len(cfg.requests) == 1


def test_cache_entries_are_public_files(responder: tuple[Responder, str], tmp_path: Path) -> None:
    """OCSP answers are public: 0644, so another user sharing the cache can read them."""
    _, url = responder
    _online(url, cache=tmp_path).response_for(PKI.leaf, PKI.intermediate)
    (path,) = tmp_path.glob(f"*{CACHE_FILE_SUFFIX}")
    assert path.stat().st_mode & 0o777 == 0o644
