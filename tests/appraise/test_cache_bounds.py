"""Memory bounds of caches that inputs from outside can fill (review of the verifier caches)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from attest.appraise.composite import MAX_CACHED_ANCHOR_SETS, AppraisalContext, TrustAnchors
from attest.snp import verify as snp_verify

_KEY = ec.generate_private_key(ec.SECP256R1())


def _cert(serial: int, padding: int = 0) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"c{serial}")])
    now = datetime(2026, 1, 1, tzinfo=UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(_KEY.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    if padding:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\0" * padding
            ),
            critical=False,
        )
    return builder.sign(_KEY, hashes.SHA256())


def test_verifier_caches_are_kept_for_a_bounded_number_of_trust_anchor_sets() -> None:
    """The audit replay takes each entry's roots from the log: a hostile log varying them per
    entry made the replay keep a full set of verifier caches per entry (~150 KiB each)."""
    ctx = AppraisalContext()
    anchors = [
        TrustAnchors(_cert(1 + i), _cert(1000 + i)) for i in range(MAX_CACHED_ANCHOR_SETS + 5)
    ]
    first = ctx.caches_for(anchors[0])
    for a in anchors[1:]:
        ctx.caches_for(a)
        assert ctx.caches_for(anchors[0]) is first  # in use: never the one evicted
    assert len(ctx._caches) == MAX_CACHED_ANCHOR_SETS
    assert ctx.caches_for(anchors[1]) is not None  # evicted earlier: made again, empty


def test_facts_of_large_certificates_are_not_kept() -> None:
    """Facts about AMD certificates are taken before the chain is checked, so the caller picks
    the certificates: 4096 of up to 64 KiB each were kept (~0.5 GiB after the evidence was
    refused). At most MAX_CACHED_CERT_FACTS, and none larger than AMD's own."""
    fact = snp_verify._sha256_der
    big = _cert(1, padding=snp_verify.MAX_MEMOISED_CERT_BYTES)
    before = fact.kept()
    assert fact(big) == fact(big)
    assert fact.kept() == before
    for i in range(snp_verify.MAX_CACHED_CERT_FACTS + 20):
        fact(_cert(10_000 + i))
    assert fact.kept() == snp_verify.MAX_CACHED_CERT_FACTS
