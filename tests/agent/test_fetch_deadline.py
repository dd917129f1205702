"""Every vendor fetcher (OCSP, RIM service, AMD KDS) gives up when its deadline passes, however
the server stalls, and turns every way a server can break HTTP into its own typed error.

A socket timeout bounds one read; a server that sends a byte just before each timeout would
otherwise hold the caller for as long as it likes. The servers here drip one byte every 0.1 s
(into the body, into a header line, into a TLS record) against a 0.5 s deadline, so every
socket read succeeds and only the overall deadline can end the request.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.amd_crl_fetch import AmdCrlFetchError, fetch_amd_crl
from agent.fetching import http_fetch, require_https
from agent.ocsp_fetch import OnlineOcsp
from agent.rim_fetch import OnlineRimSource, RimFetchError
from attest.errors import InputError, LesseeError, RevocationError
from attest.snp.report import Product, SigningKey
from tests.agent.rawhttp import Handler, RawServer, answer, drip
from tests.revocation.pki import load_pki

PKI = load_pki()
DEADLINE_S = 0.5
#: The deadline plus slack for a loaded test machine; far below what a drip could hold.
BOUND_S = 1.5


def _ocsp(url: str, timeout: float) -> object:
    return OnlineOcsp(url + "/", timeout=timeout, allow_http=True).response_for(
        PKI.leaf, PKI.intermediate
    )


def _rim(url: str, timeout: float) -> object:
    return OnlineRimSource(url + "/v1/rim/", timeout=timeout).rim_bytes(
        "NV_GPU_DRIVER_GH100_545.00"
    )


def _kds(url: str, timeout: float) -> object:
    return fetch_amd_crl(SigningKey.VCEK, Product.MILAN, base_url=url, timeout=timeout)


#: (fetcher, the typed error it raises, the reason that error carries)
FETCHERS: dict[str, tuple[Callable[[str, float], object], type[LesseeError], str]] = {
    "ocsp": (_ocsp, RevocationError, "ocsp_unreachable"),
    "rim": (_rim, RimFetchError, "rim_unavailable"),
    "kds": (_kds, AmdCrlFetchError, "crl_unavailable"),
}


def _drip_body(conn: socket.socket, stop: threading.Event) -> None:
    drip(conn, stop, b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n", b"0")


def _drip_header(conn: socket.socket, stop: threading.Event) -> None:
    drip(conn, stop, b"HTTP/1.1 200 OK\r\nX-Slow: ")


def _drip_status_line(conn: socket.socket, stop: threading.Event) -> None:
    drip(conn, stop, b"HTTP/1.1 2")


def _drip_tls_record(conn: socket.socket, stop: threading.Event) -> None:
    # a TLS handshake record header announcing 16 KiB, then its bytes one by one
    drip(conn, stop, b"\x16\x03\x03\x40\x00", b"\x00")


DRIPS: dict[str, Handler] = {
    "body": _drip_body,
    "header": _drip_header,
    "status-line": _drip_status_line,
}


@pytest.fixture
def raw() -> Iterator[Callable[..., RawServer]]:
    servers: list[RawServer] = []

    def make(handler: Handler, **kw: Any) -> RawServer:
        servers.append(RawServer(handler, **kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


@pytest.mark.parametrize("where", DRIPS)
@pytest.mark.parametrize("fetcher", FETCHERS)
def test_a_dripping_server_is_cut_off_at_the_deadline(
    raw: Callable[..., RawServer], fetcher: str, where: str
) -> None:
    fetch, error, reason = FETCHERS[fetcher]
    server = raw(DRIPS[where])
    start = time.monotonic()
    with pytest.raises(error) as exc:
        fetch(server.url, DEADLINE_S)
    elapsed = time.monotonic() - start
    assert DEADLINE_S * 0.9 <= elapsed < BOUND_S
    assert getattr(exc.value, "reason", None) == reason
    assert f"within {DEADLINE_S:g} s" in str(exc.value)


def test_a_dripping_tls_handshake_is_cut_off_at_the_deadline(
    raw: Callable[..., RawServer],
) -> None:
    server = raw(_drip_tls_record, read_request=False)
    url = server.url.replace("http://", "https://") + "/v1/rim/"
    start = time.monotonic()
    with pytest.raises(RimFetchError, match=r"within 0\.5 s"):
        OnlineRimSource(url, timeout=DEADLINE_S).rim_bytes("NV_GPU_DRIVER_GH100_545.00")
    assert DEADLINE_S * 0.9 <= time.monotonic() - start < BOUND_S


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context for 127.0.0.1 and a client context that trusts it (and checks the
    host name, as the default one does)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lessee test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(d / "cert.pem", d / "key.pem")
    client = ssl.create_default_context(cafile=str(d / "cert.pem"))
    return server, client


def test_a_dripping_body_over_tls_is_cut_off_at_the_deadline(
    raw: Callable[..., RawServer],
    tls_pair: tuple[ssl.SSLContext, ssl.SSLContext],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the handshake the TLS layer owns the socket; the watchdog, holding a duplicate of
    its descriptor, still shuts it down. (The client trusts the test server through Python's
    default-context hook, which http.client uses.)"""
    server_ctx, client_ctx = tls_pair
    monkeypatch.setattr(ssl, "_create_default_https_context", lambda: client_ctx)
    server = raw(_drip_body, tls=server_ctx)
    assert server.url.startswith("https://")
    start = time.monotonic()
    with pytest.raises(RimFetchError, match=r"within 0\.5 s"):
        _rim(server.url, DEADLINE_S)
    assert DEADLINE_S * 0.9 <= time.monotonic() - start < BOUND_S
    # the same server, answering at once, is read whole: TLS itself works through the guard
    body = b'{"rim": "!!"}'
    good = raw(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n" + body), tls=server_ctx)
    got = http_fetch(
        urllib.request.Request(good.url + "/"), timeout=2, limit=100, unreachable=InputError
    )
    assert got.body == body


def test_a_silent_server_is_cut_off_at_the_deadline(raw: Callable[..., RawServer]) -> None:
    server = raw(lambda conn, stop: stop.wait(10))
    start = time.monotonic()
    with pytest.raises(AmdCrlFetchError, match="unreachable"):
        _kds(server.url, DEADLINE_S)
    assert time.monotonic() - start < BOUND_S


def test_a_prompt_answer_is_read_whole_and_the_watchdog_stops(
    raw: Callable[..., RawServer],
) -> None:
    body = b"x" * 100_000
    server = raw(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + body))
    before = threading.active_count()
    for _ in range(20):
        got = http_fetch(
            urllib.request.Request(server.url + "/"),
            timeout=DEADLINE_S,
            limit=len(body),
            unreachable=InputError,
        )
        assert (got.status, got.body) == (200, body)
    time.sleep(0.05)
    assert threading.active_count() <= before + 2  # no watchdog left behind per request


def test_the_body_read_is_bounded(raw: Callable[..., RawServer]) -> None:
    server = raw(answer(b"HTTP/1.1 200 OK\r\n\r\n" + b"y" * 5000))
    got = http_fetch(
        urllib.request.Request(server.url + "/"), timeout=2, limit=100, unreachable=InputError
    )
    assert got.body == b"y" * 101  # one more than the limit: enough to say "too large"


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
#: Answers that are not HTTP, each once raised http.client's own exception out of a fetcher.
BROKEN_HTTP = {
    "garbage-status-line": b"garbage\r\n\r\n",
    "101-headers": b"HTTP/1.1 200 OK\r\n"
    + b"".join(b"X-%d: a\r\n" % i for i in range(101))
    + b"\r\n",
    "header-line-over-64KiB": b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
    "bad-chunk-size": CHUNKED + b"zz\r\nabc\r\n0\r\n\r\n",
    "truncated-chunked": CHUNKED + b"100\r\nabc",
    "body-shorter-than-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc",
    "status-line-with-control-bytes": b"\x1b[31mHTTP\r\nInjected: line\r\n\r\n",
}


@pytest.mark.parametrize("case", BROKEN_HTTP)
@pytest.mark.parametrize("fetcher", FETCHERS)
def test_broken_http_is_the_fetchers_typed_error(
    raw: Callable[..., RawServer], fetcher: str, case: str
) -> None:
    fetch, error, reason = FETCHERS[fetcher]
    server = raw(answer(BROKEN_HTTP[case]))
    start = time.monotonic()
    with pytest.raises(error) as exc:
        fetch(server.url, 2.0)
    assert time.monotonic() - start < BOUND_S
    assert getattr(exc.value, "reason", None) == reason
    message = str(exc.value)
    assert message.isprintable()  # a server's bytes cannot start a new line of a report
    assert len(message) < 400


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:abc",
        "https://127.0.0.1:99999/",
        "https://[::1/",
        "https://:443/",
        "https:///v1/rim/",
    ],
)
def test_a_malformed_url_is_an_input_error_before_any_fetch(url: str) -> None:
    with pytest.raises(InputError):
        require_https(url, "KDS")
    with pytest.raises(InputError):
        OnlineRimSource(url)
    with pytest.raises(InputError):
        OnlineOcsp(url)
