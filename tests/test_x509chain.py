from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from attest import roots
from attest.errors import ChainError, InputError
from attest.x509chain import (
    ChainCache,
    VerifiedChain,
    _Link,
    _LinkCache,
    load_certificate,
    load_pem_chain,
    verify_chain,
)
from tests.conftest import NVIDIA, RIM_ERA, TODAY


def _hopper() -> tuple:  # type: ignore[type-arg]
    return load_pem_chain((NVIDIA / "hopper/hopperCertChain.txt").read_bytes())


def test_hopper_chain_verifies_to_pinned_root() -> None:
    chain = verify_chain(_hopper(), root=roots.nvidia_device_root(), at=TODAY, expected_length=5)
    assert chain.valid_until.year == 9999
    assert chain.leaf.subject.rfc4514_string().startswith("CN=GH100 A01 GSP FMC LF")


def test_wrong_length_rejected() -> None:
    with pytest.raises(ChainError) as e:
        verify_chain(_hopper()[:4], root=roots.nvidia_device_root(), at=TODAY, expected_length=5)
    assert e.value.reason == "length"


def test_chain_does_not_reach_other_root() -> None:
    with pytest.raises(ChainError) as e:
        verify_chain(_hopper(), root=roots.nvidia_rim_root(), at=TODAY)
    assert e.value.reason in {"issuer_mismatch", "bad_signature"}


def test_swapped_links_rejected() -> None:
    c = _hopper()
    with pytest.raises(ChainError) as e:
        verify_chain((c[1], c[0], *c[2:]), root=roots.nvidia_device_root(), at=TODAY)
    assert e.value.reason == "issuer_mismatch"


def test_not_yet_valid() -> None:
    with pytest.raises(ChainError) as e:
        verify_chain(
            _hopper(), root=roots.nvidia_device_root(), at=datetime(2019, 1, 1, tzinfo=UTC)
        )
    assert e.value.reason == "not_yet_valid"


def test_naive_time_refused() -> None:
    with pytest.raises(InputError):
        verify_chain(_hopper(), root=roots.nvidia_device_root(), at=datetime(2025, 1, 1))


def test_cache_hit_only_inside_window() -> None:
    cache = ChainCache()
    first = cache.verify(_hopper(), root=roots.nvidia_device_root(), at=TODAY)
    assert cache.verify(_hopper(), root=roots.nvidia_device_root(), at=TODAY) is first
    with pytest.raises(ChainError):
        cache.verify(
            _hopper(), root=roots.nvidia_device_root(), at=datetime(2019, 1, 1, tzinfo=UTC)
        )


def test_pem_bounds() -> None:
    with pytest.raises(InputError):
        load_pem_chain(b"not a pem")
    with pytest.raises(InputError):
        load_pem_chain(b"-----BEGIN CERTIFICATE-----\n" * 11)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_der_certificates_only_raise_input_errors(data: st.DataObject) -> None:
    original = _hopper()[1].public_bytes(Encoding.DER)
    der = bytearray(original)
    pos = data.draw(st.integers(0, len(der) - 1))
    der[pos] = data.draw(st.integers(0, 255))
    try:
        cert = load_certificate(bytes(der))
    except InputError:
        return
    # Whatever loads must be fully decoded: chain checks then fail only with typed errors.
    try:
        verify_chain((cert, *_hopper()[2:]), root=roots.nvidia_device_root(), at=TODAY)
    except ChainError:
        pass
    else:
        # Every byte is covered by the issuer's signature or a strict DER rule (the signature
        # value included), so only the unchanged certificate (a draw of the same byte) verifies.
        assert bytes(der) == original


# ---------------------------------------------------------------------------------------------
# per-link cache inside ChainCache


def _rim_chains() -> tuple[tuple, tuple]:  # type: ignore[type-arg]
    from attest.nvidia.rim import parse_rim

    rims = NVIDIA / "rims" / "test_no_gpu"
    driver = parse_rim((rims / "Driver_RIM_test_no_gpu.swidtag").read_bytes())
    vbios = parse_rim((rims / "1010_0200_882_96005E0001_test_no_gpu.swidtag").read_bytes())
    return driver.signer_chain, vbios.signer_chain


def _ders(*certs: x509.Certificate) -> dict[str, bytes]:
    child, issuer = certs
    return {
        "child_der": child.public_bytes(Encoding.DER),
        "issuer_der": issuer.public_bytes(Encoding.DER),
    }


def test_rim_chains_share_their_upper_links_once() -> None:
    """Driver and VBIOS RIM chains share L3 -> CA and CA -> root: the second pays one signature."""
    driver, vbios = _rim_chains()
    cache = ChainCache()
    cache.verify(driver, root=roots.nvidia_rim_root(), at=RIM_ERA)
    assert (cache.link_hits, cache.link_misses) == (0, 3)
    second = cache.verify(vbios, root=roots.nvidia_rim_root(), at=RIM_ERA)
    assert (cache.link_hits, cache.link_misses) == (2, 4)
    assert second == verify_chain(vbios, root=roots.nvidia_rim_root(), at=RIM_ERA)
    assert (cache.hits, cache.misses) == (0, 2)  # two different chains: no whole-chain hit


def test_device_chains_of_two_gpus_share_identity_and_provisioner_links() -> None:
    hopper = _hopper()
    legacy = load_pem_chain((NVIDIA / "hopper_legacy/gpuAkCertChain.txt").read_bytes())
    cache = ChainCache()
    cache.verify(hopper, root=roots.nvidia_device_root(), at=TODAY, expected_length=5)
    cache.verify(legacy, root=roots.nvidia_device_root(), at=TODAY, expected_length=5)
    # 4 links each; ICA -> Identity and Identity -> root copy are the same bytes
    assert (cache.link_hits, cache.link_misses) == (2, 6)
    cache.verify(legacy, root=roots.nvidia_device_root(), at=TODAY, expected_length=5)
    assert cache.hits == 1 and cache.link_misses == 6  # whole-chain hit: no link looked at


def test_link_hit_only_inside_both_certificates_validity_window() -> None:
    driver, _ = _rim_chains()
    child, issuer = driver[0], driver[1]
    links = _LinkCache(8)
    links.check(child, issuer, **_ders(child, issuer), at=RIM_ERA, what="t")
    links.check(child, issuer, **_ders(child, issuer), at=RIM_ERA, what="t")
    assert (links.hits, links.misses) == (1, 1)
    # the L4 signer expired in 2025: TODAY is outside the link's window, so no hit
    assert child.not_valid_after_utc < TODAY
    links.check(child, issuer, **_ders(child, issuer), at=TODAY, what="t")
    assert (links.hits, links.misses) == (1, 2)
    before = datetime(2019, 1, 1, tzinfo=UTC)
    assert before < child.not_valid_before_utc
    links.check(child, issuer, **_ders(child, issuer), at=before, what="t")
    assert (links.hits, links.misses) == (1, 3)


def test_a_link_checked_for_another_chain_is_remembered_even_if_that_chain_fails() -> None:
    """Chain A starts a link check and fails at an earlier link (it never commits this one);
    chain B, which waited for A's check, counts a hit and remembers the link itself: the cache
    then holds what checking B alone would have left."""
    driver, _ = _rim_chains()
    child, issuer = driver[0], driver[1]
    link = _Link(child, issuer, **_ders(child, issuer))
    links = _LinkCache(8)
    a = links.claim(link, RIM_ERA, "chain A")
    b = links.claim(link, RIM_ERA, "chain B")
    assert (a.kind, b.kind) == ("own", "shared") and a.deferred is b.deferred
    assert a.deferred is not None
    a.deferred.run_here()
    links.release(a)  # A stops at an earlier link: no commit
    links.commit(b, link, "chain B")
    assert links.hits == 1
    assert links.claim(link, RIM_ERA, "chain C").kind == "hit"


def _forged_l4(l3: x509.Certificate) -> x509.Certificate:
    """A signer certificate naming the real L3 as issuer but signed by another key."""
    key = ec.derive_private_key(0x5EED, ec.SECP384R1())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "forged L4")]))
        .issuer_name(l3.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(datetime(2023, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2025, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA384())
    )


def test_failed_links_and_chains_are_never_cached() -> None:
    driver, _ = _rim_chains()
    forged = (_forged_l4(driver[1]), *driver[1:])
    cache = ChainCache()
    for _ in range(2):
        with pytest.raises(ChainError) as e:
            cache.verify(forged, root=roots.nvidia_rim_root(), at=RIM_ERA)
        assert e.value.reason == "bad_signature"
    assert (cache.link_hits, cache.link_misses) == (0, 2)  # checked for real both times
    assert (cache.hits, cache.misses) == (0, 2)
    links = _LinkCache(8)
    for _ in range(2):
        with pytest.raises(ChainError):
            links.check(forged[0], forged[1], **_ders(forged[0], forged[1]), at=RIM_ERA, what="t")
    assert len(links) == 0 and links.misses == 2


def test_link_cache_is_bounded() -> None:
    driver, vbios = _rim_chains()
    links = _LinkCache(1)
    links.check(driver[0], driver[1], **_ders(driver[0], driver[1]), at=RIM_ERA, what="t")
    links.check(vbios[0], vbios[1], **_ders(vbios[0], vbios[1]), at=RIM_ERA, what="t")
    assert len(links) == 1
    links.check(driver[0], driver[1], **_ders(driver[0], driver[1]), at=RIM_ERA, what="t")
    assert links.hits == 0  # the first link was evicted


def _pool() -> list[x509.Certificate]:
    driver, vbios = _rim_chains()
    legacy = load_pem_chain((NVIDIA / "hopper_legacy/gpuAkCertChain.txt").read_bytes())
    return [*_hopper(), *legacy[:2], *driver, vbios[0], _forged_l4(driver[1])]


_POOL = _pool()
_SHARED = ChainCache(max_entries=4)  # small: evictions happen during the run too
_TIMES = (RIM_ERA, TODAY, datetime(2019, 1, 1, tzinfo=UTC), datetime(2025, 6, 24, tzinfo=UTC))


def _outcome(fn: Callable[[], object]) -> object:
    try:
        chain = fn()
    except ChainError as exc:
        return ("error", exc.reason, str(exc))
    assert isinstance(chain, VerifiedChain)
    return ("ok", chain.certs, chain.valid_from, chain.valid_until)


#: Index lists into _POOL that are real chains (or one forged link away from one), so the
#: property sees successes and window hits, not only random junk.
_REAL = ([0, 1, 2, 3, 4], [5, 6, 2, 3, 4], [1, 2, 3, 4], [7, 8, 9], [10, 8, 9], [11, 8, 9], [8, 9])


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.sampled_from(_REAL), st.lists(st.integers(0, len(_POOL) - 1), min_size=1, max_size=6)
    ),
    st.sampled_from(_TIMES),
    st.booleans(),
    st.sampled_from((None, 3, 5)),
)
def test_cached_answers_equal_uncached_ones(
    picks: list[int], at: datetime, device_root: bool, length: int | None
) -> None:
    """Whatever the chain, time and root, a ChainCache shared across all examples (whole-chain
    and link hits, evictions) answers exactly as a fresh verify_chain: same result or same
    error, reason and message."""
    certs = tuple(_POOL[i] for i in picks)
    root = roots.nvidia_device_root() if device_root else roots.nvidia_rim_root()
    kw: dict[str, object] = {"root": root, "at": at, "expected_length": length}
    fresh = _outcome(lambda: verify_chain(certs, **kw))  # type: ignore[arg-type]
    assert _outcome(lambda: _SHARED.verify(certs, **kw)) == fresh  # type: ignore[arg-type]
    assert _outcome(lambda: _SHARED.verify(certs, **kw)) == fresh  # type: ignore[arg-type]


def test_certificate_der_is_public_bytes_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DER memo answers exactly ``public_bytes`` for the very object asked about, and its
    size stays within ``MAX_DER_MEMO``."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from attest import x509chain

    monkeypatch.setattr(x509chain, "MAX_DER_MEMO", 3)
    monkeypatch.setattr(x509chain, "_der_memo", {})
    chain = load_pem_chain((NVIDIA / "hopper_legacy" / "gpuAkCertChain.txt").read_bytes())
    for _ in range(2):
        for cert in chain:
            assert x509chain.certificate_der(cert) == cert.public_bytes(Encoding.DER)
            assert len(x509chain._der_memo) <= 3
    # An entry is only a hit for the object it holds, never for another one with its id.
    cert = chain[0]
    x509chain._der_memo[id(cert)] = (chain[1], b"not this one")
    assert x509chain.certificate_der(cert) == cert.public_bytes(Encoding.DER)


# --- chain shape: only the last certificate may be the root; critical extensions -------------


_T0, _T1 = datetime(2024, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC)


def _key(seed: int) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(seed, ec.SECP384R1())


def _cn(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, text)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: str,
    signer: ec.EllipticCurvePrivateKey,
    ca: bool,
    extra: tuple[tuple[x509.ExtensionType, bool], ...] = (),
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(_cn(subject))
        .issuer_name(_cn(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_T0)
        .not_valid_after(_T1)
    )
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    for value, critical in extra:
        b = b.add_extension(value, critical=critical)
    return b.sign(signer, hashes.SHA384())


_ROOT_KEY, _CA_KEY, _LEAF_KEY, _OTHER_KEY = _key(11), _key(12), _key(13), _key(14)
_ROOT = _cert("root", _ROOT_KEY, issuer="root", signer=_ROOT_KEY, ca=True)
_CA = _cert("ca", _CA_KEY, issuer="root", signer=_ROOT_KEY, ca=True)
_LEAF = _cert("leaf", _LEAF_KEY, issuer="ca", signer=_CA_KEY, ca=False)
_AT = datetime(2025, 1, 1, tzinfo=UTC)
_UNKNOWN = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")


def test_synthetic_chain_verifies() -> None:
    """The baseline every test below changes in one place."""
    verify_chain((_LEAF, _CA), root=_ROOT, at=_AT)
    verify_chain((_LEAF, _CA, _ROOT), root=_ROOT, at=_AT)


def test_real_device_chain_shifted_onto_a_second_root_copy_is_refused() -> None:
    """[BROM, ICA, Identity, root, root]: five certificates, each signed by the next, the last
    the pinned root; it made the BROM (a CA) the leaf. A root copy may only come last."""
    _leaf, brom, ica, identity, root = _hopper()
    shifted = (brom, ica, identity, root, root)
    for verify in (verify_chain, ChainCache().verify):
        with pytest.raises(ChainError) as e:
            verify(shifted, root=roots.nvidia_device_root(), at=TODAY, expected_length=5)
        assert e.value.reason == "pinned_root_not_last"


def test_self_signed_certificate_before_the_last_is_refused() -> None:
    """A self-signed CA inside the chain, its key also certified by the real CA under the
    pinned root: every link verifies, but a self-signed certificate is a root, and only the
    last certificate may be one."""
    inner_root = _cert("ca", _CA_KEY, issuer="ca", signer=_CA_KEY, ca=True)
    with pytest.raises(ChainError) as e:
        verify_chain((_LEAF, inner_root, _CA), root=_ROOT, at=_AT)
    assert e.value.reason == "self_signed_not_last"


def test_self_issued_certificate_under_another_key_is_not_self_signed() -> None:
    """A key rollover certificate (subject = issuer, signed by the old key) is self-issued,
    not self-signed (RFC 5280 6.1): it may sit inside a chain."""
    new_key = _key(15)
    new_with_old = _cert("ca", new_key, issuer="ca", signer=_CA_KEY, ca=True)
    leaf = _cert("leaf", _LEAF_KEY, issuer="ca", signer=new_key, ca=False)
    assert verify_chain((leaf, new_with_old, _CA), root=_ROOT, at=_AT).leaf == leaf


@pytest.mark.parametrize("where", ["leaf", "ca", "root"])
def test_unknown_critical_extension_is_refused(where: str) -> None:
    """RFC 5280 4.2: a certificate with a critical extension not understood is refused, at any
    place in the chain, the pinned root included; the same extension non-critical is fine."""
    for critical in (False, True):
        extra = ((_UNKNOWN, critical),)
        root = _cert("root", _ROOT_KEY, issuer="root", signer=_ROOT_KEY, ca=True, extra=extra)
        ca = _cert("ca", _CA_KEY, issuer="root", signer=_ROOT_KEY, ca=True, extra=extra)
        leaf = _cert("leaf", _LEAF_KEY, issuer="ca", signer=_CA_KEY, ca=False, extra=extra)
        chain = (leaf if where == "leaf" else _LEAF, ca if where == "ca" else _CA)
        pinned = root if where == "root" else _ROOT
        if not critical:
            verify_chain(chain, root=pinned, at=_AT)
            continue
        with pytest.raises(ChainError) as e:
            verify_chain(chain, root=pinned, at=_AT)
        assert e.value.reason == "unsupported_critical_extension"
        assert "1.3.6.1.4.1.99999.1" in str(e.value)


def test_critical_extension_that_is_decoded_but_not_enforced_is_refused() -> None:
    """``cryptography`` decodes name constraints, but nothing here enforces them: marked
    critical they are not understood either (the rule is an allow-list)."""
    constraints = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("example.com")], excluded_subtrees=None
    )
    ca = _cert(
        "ca", _CA_KEY, issuer="root", signer=_ROOT_KEY, ca=True, extra=((constraints, True),)
    )
    with pytest.raises(ChainError) as e:
        verify_chain((_LEAF, ca), root=_ROOT, at=_AT)
    assert e.value.reason == "unsupported_critical_extension"


def _real_certificates() -> list[x509.Certificate]:
    """Every distinct certificate of the vectors: PEM blocks (also base64'd in NVIDIA's JSON or
    JSON-escaped in Intel's collateral), RIM KeyInfo certificates, DER files, pinned roots."""
    import base64
    import re

    pem = re.compile(rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")
    seen: dict[bytes, x509.Certificate] = {}

    def scan(data: bytes) -> None:
        for block in pem.findall(data.replace(b"\\n", b"\n")):
            cert = x509.load_pem_x509_certificate(block)
            seen.setdefault(cert.public_bytes(Encoding.DER), cert)
        for b64 in re.findall(rb'"(LS0tLS1CRUdJTi[A-Za-z0-9+/=]+)"', data):
            scan(base64.b64decode(b64))
        for b64 in re.findall(rb"<ds:X509Certificate>([^<]+)</", data):
            cert = x509.load_der_x509_certificate(base64.b64decode(b"".join(b64.split())))
            seen.setdefault(cert.public_bytes(Encoding.DER), cert)

    from pathlib import Path

    for path in [*NVIDIA.parent.rglob("*"), *Path(roots.__file__).parent.rglob("*.pem")]:
        if not path.is_file():
            continue
        data = path.read_bytes()
        scan(data)
        if path.suffix in (".der", ".testcer") and data[:1] == b"\x30":
            try:
                cert = x509.load_der_x509_certificate(data)
            except ValueError:
                continue  # a DER CRL or OCSP response
            seen.setdefault(cert.public_bytes(Encoding.DER), cert)
    return list(seen.values())


@pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")
def test_real_certificates_mark_only_understood_extensions_critical() -> None:
    """No vendor certificate in the vectors (NVIDIA device and RIM chains, AMD, Intel) nor a
    pinned root carries a critical extension the chain check would refuse: all of them mark
    exactly basicConstraints and keyUsage critical, where present."""
    from attest.x509chain import UNDERSTOOD_CRITICAL_EXTENSIONS

    certs = _real_certificates()
    assert len(certs) >= 80  # NVIDIA, AMD and Intel chains, RIM signers, roots
    critical = {e.oid for c in certs for e in c.extensions if e.critical}
    assert critical == UNDERSTOOD_CRITICAL_EXTENSIONS


def _ca_with(*extensions: tuple[x509.ExtensionType, bool], ca: bool = False) -> x509.Certificate:
    """The intermediate ``ca`` (same key and names) with only these extensions."""
    return _cert("ca", _CA_KEY, issuer="root", signer=_ROOT_KEY, ca=ca, extra=extensions)


_NO_CERT_SIGN = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
    encipher_only=False, decipher_only=False,
)  # fmt: skip


@pytest.mark.parametrize(
    ("issuer", "reason"),
    [
        (_ca_with(), "not_ca"),  # no basicConstraints at all
        (_ca_with((x509.BasicConstraints(ca=False, path_length=None), True)), "not_ca"),
        (_ca_with((x509.BasicConstraints(ca=True, path_length=None), True), (_NO_CERT_SIGN, True)),
         "not_ca"),
    ],
    ids=["no-basic-constraints", "ca-false", "no-keyCertSign"],
)  # fmt: skip
def test_an_issuer_that_may_not_sign_certificates_breaks_the_chain(
    issuer: x509.Certificate, reason: str
) -> None:
    """Every link verifies (same key, same names); only the issuer's right to certify is
    wrong. Mutation testing found no test failing with any of these checks removed."""
    for verify in (verify_chain, ChainCache().verify):
        with pytest.raises(ChainError) as e:
            verify((_LEAF, issuer), root=_ROOT, at=_AT)
        assert e.value.reason == reason


def test_a_path_length_constraint_is_enforced() -> None:
    """root -> ca (pathLen 0) -> sub-CA -> leaf: the CA may not have a CA below it."""
    sub_key = _key(15)
    ca0 = _cert("ca", _CA_KEY, issuer="root", signer=_ROOT_KEY, ca=False,
                extra=((x509.BasicConstraints(ca=True, path_length=0), True),))  # fmt: skip
    sub = _cert("sub", sub_key, issuer="ca", signer=_CA_KEY, ca=True)
    leaf = _cert("leaf", _LEAF_KEY, issuer="sub", signer=sub_key, ca=False)
    ca1 = _cert("ca", _CA_KEY, issuer="root", signer=_ROOT_KEY, ca=False,
                extra=((x509.BasicConstraints(ca=True, path_length=1), True),))  # fmt: skip
    verify_chain((leaf, sub, ca1), root=_ROOT, at=_AT)
    for verify in (verify_chain, ChainCache().verify):
        with pytest.raises(ChainError) as e:
            verify((leaf, sub, ca0), root=_ROOT, at=_AT)
        assert e.value.reason == "path_length"
