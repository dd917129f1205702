"""The GIL-free link check and the concurrent chain walk give the answers they replaced.

``_check_signed_by`` checks an ECDSA link with ``EllipticCurvePublicKey.verify`` (which releases
the GIL) where that is exactly what ``Certificate.verify_directly_issued_by`` does, and falls
back to the latter for everything else. These tests compare it, pair by pair, with the old
check (name comparison + ``verify_directly_issued_by``), on real NVIDIA and AMD certificates
and on synthetic ones built for each fallback case; and they pin that the chain walk reports
the same first failure whatever the pool's timing.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from attest import roots
from attest.concurrency import pool_workers, run_all, set_pool_workers
from attest.errors import ChainError
from attest.nvidia.rim import parse_rim
from attest.x509chain import (
    ChainCache,
    _check_signed_by,
    _fast_link_verify,
    describe,
    load_pem_chain,
    verify_chain,
)
from tests.conftest import CPU, NVIDIA, RIM_ERA, TODAY

NOT_BEFORE = datetime(2020, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2030, 1, 1, tzinfo=UTC)


def _name(cn: str, kind: _ASN1Type = _ASN1Type.UTF8String) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn, _type=kind)])


def _cert(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: object,
    signer: object,
    algorithm: hashes.HashAlgorithm | None,
    *,
    ca: bool,
    serial: int,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(serial)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(signer, algorithm)  # type: ignore[arg-type]


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


# Deterministic EC and Ed25519 test keys (fixed scalars / seeds; they protect nothing). RSA has
# no deterministic derivation in cryptography: one is generated (outcomes do not depend on it).
EC_CA = ec.derive_private_key(0xFA57CA, ec.SECP384R1())
EC_LEAF = ec.derive_private_key(0xFA57EE, ec.SECP384R1())
EC_OTHER = ec.derive_private_key(0xBADBAD, ec.SECP384R1())
P256_CA = ec.derive_private_key(0xFA5256, ec.SECP256R1())
ED_CA = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
RSA_CA = rsa.generate_private_key(65537, 2048)


class Synthetic:
    """One certificate per fallback case (and fast-path cases), built once."""

    def __init__(self) -> None:
        ec_ca_name = _name("fast ec ca", _ASN1Type.PrintableString)
        self.ec_ca = _cert(
            ec_ca_name, ec_ca_name, EC_CA.public_key(), EC_CA, hashes.SHA384(), ca=True, serial=1
        )
        #: the fast path: ECDSA-with-SHA384 by an EC issuer, names byte-identical
        self.ec_leaf = _cert(
            _name("fast leaf"),
            ec_ca_name,
            EC_LEAF.public_key(),
            EC_CA,
            hashes.SHA384(),
            ca=False,
            serial=2,
        )
        #: ECDSA-with-SHA256 and -SHA512 take the fast path too
        self.ec_leaf_sha256 = _cert(
            _name("sha256 leaf"),
            ec_ca_name,
            EC_LEAF.public_key(),
            EC_CA,
            hashes.SHA256(),
            ca=False,
            serial=3,
        )
        self.ec_leaf_sha512 = _cert(
            _name("sha512 leaf"),
            ec_ca_name,
            EC_LEAF.public_key(),
            EC_CA,
            hashes.SHA512(),
            ca=False,
            serial=4,
        )
        #: the right issuer name, signed by another key: a wrong link signature
        self.forged = _cert(
            _name("forged leaf"),
            ec_ca_name,
            EC_LEAF.public_key(),
            EC_OTHER,
            hashes.SHA384(),
            ca=False,
            serial=5,
        )
        #: issuer name equal as a Name (same CN text) but encoded as UTF8String where the CA's
        #: subject is a PrintableString: the names differ byte for byte, which
        #: verify_directly_issued_by refuses (so the fast path must not take it)
        self.utf8_issuer = _cert(
            _name("utf8 leaf"),
            _name("fast ec ca", _ASN1Type.UTF8String),
            EC_LEAF.public_key(),
            EC_CA,
            hashes.SHA384(),
            ca=False,
            serial=6,
        )
        #: inner (TBSCertificate) algorithm ecdsa-with-SHA384, outer changed to -SHA256
        der = _der(self.ec_leaf)
        outer = der.rfind(bytes.fromhex("300a06082a8648ce3d040303"))
        assert outer > len(der) // 2  # the outer AlgorithmIdentifier, after the TBSCertificate
        self.alg_mismatch = x509.load_der_x509_certificate(
            der[:outer] + bytes.fromhex("300a06082a8648ce3d040302") + der[outer + 12 :]
        )
        rsa_name = _name("rsa ca")
        self.rsa_ca = _cert(
            rsa_name, rsa_name, RSA_CA.public_key(), RSA_CA, hashes.SHA256(), ca=True, serial=7
        )
        #: an EC leaf under an RSA CA (sha256WithRSAEncryption): the fallback
        self.rsa_leaf = _cert(
            _name("rsa leaf"),
            rsa_name,
            EC_LEAF.public_key(),
            RSA_CA,
            hashes.SHA256(),
            ca=False,
            serial=8,
        )
        #: an ECDSA signature claimed under an RSA issuer: the fast path must not take it
        self.ecdsa_under_rsa = _cert(
            _name("ecdsa under rsa"),
            rsa_name,
            EC_LEAF.public_key(),
            EC_OTHER,
            hashes.SHA384(),
            ca=False,
            serial=9,
        )
        ed_name = _name("ed25519 ca")
        self.ed_ca = _cert(ed_name, ed_name, ED_CA.public_key(), ED_CA, None, ca=True, serial=10)
        self.ed_leaf = _cert(
            _name("ed25519 leaf"), ed_name, EC_LEAF.public_key(), ED_CA, None, ca=False, serial=11
        )
        p256_name = _name("p256 ca")
        self.p256_ca = _cert(
            p256_name, p256_name, P256_CA.public_key(), P256_CA, hashes.SHA256(), ca=True, serial=12
        )
        #: a P-256 issuer signing with SHA-384 (curve and hash need not match)
        self.p256_leaf = _cert(
            _name("p256 leaf"),
            p256_name,
            EC_LEAF.public_key(),
            P256_CA,
            hashes.SHA384(),
            ca=False,
            serial=13,
        )

    def all(self) -> list[x509.Certificate]:
        return [v for v in vars(self).values() if isinstance(v, x509.Certificate)]


SYN = Synthetic()


def _real() -> list[x509.Certificate]:
    hopper = load_pem_chain((NVIDIA / "hopper/hopperCertChain.txt").read_bytes())
    rims = NVIDIA / "rims" / "test_no_gpu"
    driver = parse_rim((rims / "Driver_RIM_test_no_gpu.swidtag").read_bytes()).signer_chain
    vbios = parse_rim((rims / "1010_0200_882_96005E0001_test_no_gpu.swidtag").read_bytes())
    amd = load_pem_chain((CPU / "snp/virtee-sev/cert_chain_milan").read_bytes())  # RSA-PSS
    return [*hopper, *driver, vbios.signer_chain[0], roots.nvidia_rim_root(), *amd]


CERTS = [*_real(), *SYN.all()]


def _old_check(child: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    """The link check as it was before the fast path (kept here as the reference)."""
    if child.issuer != issuer.subject:
        raise ChainError(
            f"{what}: issuer of '{describe(child)}' is not '{describe(issuer)}'",
            reason="issuer_mismatch",
        )
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ChainError(
            f"{what}: signature on '{describe(child)}' does not verify with '{describe(issuer)}'",
            reason="bad_signature",
        ) from exc


def _outcome(check: Callable[[], None]) -> tuple[str, str]:
    try:
        check()
    except ChainError as exc:
        return (exc.reason, str(exc))
    return ("ok", "")


def _pairs() -> Iterator[tuple[x509.Certificate, x509.Certificate]]:
    for child in CERTS:
        for issuer in CERTS:
            yield child, issuer


def test_every_pair_answers_as_verify_directly_issued_by() -> None:
    """All ordered pairs of real and synthetic certificates: same verdict, reason and text."""
    verdicts: dict[str, int] = {}
    for child, issuer in _pairs():
        old = _outcome(lambda c=child, i=issuer: _old_check(c, i, "t"))  # type: ignore[misc]
        new = _outcome(lambda c=child, i=issuer: _check_signed_by(c, i, "t"))  # type: ignore[misc]
        assert new == old, (describe(child), describe(issuer))
        verdicts[old[0]] = verdicts.get(old[0], 0) + 1
    # the comparison saw every kind of answer, not only "issuer_mismatch"
    assert verdicts["ok"] >= 20 and verdicts["bad_signature"] >= 4


@pytest.mark.parametrize(
    ("child", "issuer"),
    [
        (SYN.ec_leaf, SYN.ec_ca),
        (SYN.ec_leaf_sha256, SYN.ec_ca),
        (SYN.ec_leaf_sha512, SYN.ec_ca),
        (SYN.p256_leaf, SYN.p256_ca),
        (SYN.ec_ca, SYN.ec_ca),
    ],
)
def test_ecdsa_links_take_the_gil_free_path(
    child: x509.Certificate, issuer: x509.Certificate
) -> None:
    assert _fast_link_verify(child, issuer, _der(child), _der(issuer)) is True
    child.verify_directly_issued_by(issuer)  # and the reference agrees


def test_real_nvidia_links_take_the_gil_free_path() -> None:
    hopper = load_pem_chain((NVIDIA / "hopper/hopperCertChain.txt").read_bytes())
    for child, issuer in itertools.pairwise(hopper):
        assert _fast_link_verify(child, issuer, _der(child), _der(issuer)) is True


def test_wrong_link_signature_is_bad_signature() -> None:
    with pytest.raises(InvalidSignature):
        _fast_link_verify(SYN.forged, SYN.ec_ca, _der(SYN.forged), _der(SYN.ec_ca))
    with pytest.raises(ChainError) as e:
        verify_chain((SYN.forged, SYN.ec_ca), root=SYN.ec_ca, at=TODAY)
    assert e.value.reason == "bad_signature"
    assert str(e.value) == (
        "certificate chain: signature on 'forged leaf' does not verify with 'fast ec ca'"
    )


@pytest.mark.parametrize(
    ("child", "issuer", "reason"),
    [
        (SYN.rsa_leaf, SYN.rsa_ca, "ok"),  # sha256WithRSAEncryption: not ECDSA
        (SYN.ecdsa_under_rsa, SYN.rsa_ca, "bad_signature"),  # ECDSA OID, RSA issuer key
        (SYN.ed_leaf, SYN.ed_ca, "ok"),  # Ed25519
        (SYN.utf8_issuer, SYN.ec_ca, "bad_signature"),  # names equal as text, not as bytes
        (SYN.alg_mismatch, SYN.ec_ca, "bad_signature"),  # inner != outer algorithm
    ],
)
def test_everything_else_falls_back_with_the_same_outcome(
    child: x509.Certificate, issuer: x509.Certificate, reason: str
) -> None:
    assert _fast_link_verify(child, issuer, _der(child), _der(issuer)) is False
    old = _outcome(lambda: _old_check(child, issuer, "t"))
    assert old[0] == reason
    assert _outcome(lambda: _check_signed_by(child, issuer, "t")) == old


def test_rsa_pss_links_fall_back() -> None:
    ask, ark = load_pem_chain((CPU / "snp/virtee-sev/cert_chain_milan").read_bytes())
    assert _fast_link_verify(ask, ark, _der(ask), _der(ark)) is False
    assert _outcome(lambda: _check_signed_by(ask, ark, "t")) == ("ok", "")


def test_mismatched_issuer_name_is_issuer_mismatch() -> None:
    with pytest.raises(ChainError) as e:
        verify_chain((SYN.rsa_leaf, SYN.ec_ca), root=SYN.ec_ca, at=TODAY)
    assert e.value.reason == "issuer_mismatch"


# ---------------------------------------------------------------------------------------------
# concurrency: the same first failure whatever the timing


@pytest.fixture
def workers() -> Iterator[Callable[[int], int]]:
    """``set_pool_workers`` for one test; the pool size is restored afterwards."""
    before = pool_workers()
    yield set_pool_workers
    set_pool_workers(before)


def _chain_outcome(chain: tuple[x509.Certificate, ...], cache: ChainCache | None) -> object:
    try:
        if cache is None:
            verified = verify_chain(chain, root=roots.nvidia_rim_root(), at=RIM_ERA)
        else:
            verified = cache.verify(chain, root=roots.nvidia_rim_root(), at=RIM_ERA)
    except ChainError as exc:
        return (exc.reason, str(exc))
    return verified.certs


def test_first_failure_in_chain_order_whatever_the_timing(
    workers: Callable[[int], int],
) -> None:
    """A chain whose leaf link is forged and whose middle link is broken too: the walk reports
    the leaf link, with the pool or without, cached or not, every time."""
    rims = NVIDIA / "rims" / "test_no_gpu"
    l4, l3, ca = parse_rim((rims / "Driver_RIM_test_no_gpu.swidtag").read_bytes()).signer_chain
    forged = _cert(
        l4.subject, l3.subject, EC_LEAF.public_key(), EC_OTHER, hashes.SHA384(), ca=False, serial=99
    )
    broken = (forged, l3, SYN.ec_ca)  # L3 -> "fast ec ca": wrong issuer as well
    workers(0)
    expected = _chain_outcome(broken, None)
    assert expected == (
        "bad_signature",
        f"certificate chain: signature on '{describe(l4)}' does not verify with '{describe(l3)}'",
    )
    assert _chain_outcome((l4, l3, ca), None) == (l4, l3, ca)
    for n in (1, 2, 4):
        workers(n)
        shared = ChainCache()
        for _ in range(25):
            assert _chain_outcome(broken, None) == expected
            assert _chain_outcome(broken, shared) == expected
            assert _chain_outcome((l4, l3, ca), shared) == (l4, l3, ca)
        # the failed leaf link is checked (and counted) every time, never remembered; the
        # broken chain's later links, checked alongside, are neither counted nor remembered;
        # the good chain pays its 3 links once, then is a whole-chain hit
        assert (shared.link_misses, shared.link_hits) == (25 + 3, 0)


def test_two_chains_at_once_check_a_shared_link_once(workers: Callable[[int], int]) -> None:
    """The driver and VBIOS RIM chains verified at the same moment on the pool still pay for
    their shared L3 -> CA and CA -> root links once (8 checks in all would mean twice)."""
    rims = NVIDIA / "rims" / "test_no_gpu"
    driver = parse_rim((rims / "Driver_RIM_test_no_gpu.swidtag").read_bytes()).signer_chain
    vbios = parse_rim(
        (rims / "1010_0200_882_96005E0001_test_no_gpu.swidtag").read_bytes()
    ).signer_chain
    workers(2)
    for _ in range(20):
        cache = ChainCache()
        root = roots.nvidia_rim_root()
        done = run_all(
            [partial(cache.verify, chain, root=root, at=RIM_ERA) for chain in (driver, vbios)]
        )
        assert [d.result().certs for d in done] == [driver, vbios]
        assert (cache.link_misses, cache.link_hits) == (4, 2)


def test_pool_off_runs_everything_in_the_calling_thread(workers: Callable[[int], int]) -> None:
    workers(0)
    seen: list[threading.Thread] = []
    done = run_all([lambda: seen.append(threading.current_thread()) for _ in range(4)])
    assert len(done) == 4 and seen == [threading.current_thread()] * 4


def test_run_all_keeps_order_and_exceptions(workers: Callable[[int], int]) -> None:
    workers(2)

    def fail(n: int) -> int:
        raise ValueError(f"call {n}")

    calls: list[Callable[[], int]] = [lambda: 1, lambda: fail(2), lambda: 3, lambda: fail(4)]
    done = run_all(calls)
    assert done[0].result() == 1 and done[2].result() == 3
    for d, n in ((done[1], 2), (done[3], 4)):
        with pytest.raises(ValueError, match=f"call {n}"):
            d.result()


def test_nested_waits_on_the_pool_do_not_deadlock(workers: Callable[[int], int]) -> None:
    """Pool threads that themselves fan out and wait (a RIM verification checking its chain)
    never wait for work nobody has started: every level finishes, on any pool size."""
    for n in (1, 2):
        workers(n)

        def level(depth: int) -> int:
            if depth == 0:
                return 1
            return sum(d.result() for d in run_all([lambda: level(depth - 1)] * 3))

        outer = run_all([lambda: level(3) for _ in range(4)])
        assert [d.result() for d in outer] == [27] * 4
