"""Concurrent response checks in check_chain_revocation answer as one check after another.

The source is asked and the cache consulted in index order; the responses the cache cannot
answer are verified concurrently on the shared pool and remembered in index order. So for every
named response case (good, revoked, forged, stale, delegated, malformed...), with the pool or
without, the verdicts, the cache's contents and its hit/miss counters are the same. Also: the
issuer key bits read from a certificate's own DER equal the re-serialised key's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from attest.concurrency import pool_workers, set_pool_workers
from attest.nvidia.rim import parse_rim
from attest.revocation import OcspCache, StapledOcsp, check_chain_revocation
from attest.revocation.ocsp import (
    _certificate_key_bits,
    _der_tlv,
    _public_key_bits,
    _spki_bits,
)
from attest.x509chain import load_pem_chain
from tests.conftest import CPU, NVIDIA
from tests.revocation.pki import NOW, TestPki


@pytest.fixture
def workers() -> Iterator[Callable[[int], int]]:
    before = pool_workers()
    yield set_pool_workers
    set_pool_workers(before)


class _Answers:
    """An online-style source: one response per certificate serial (None: no answer)."""

    def __init__(self, by_serial: dict[int, bytes]) -> None:
        self._by_serial = by_serial

    def response_for(self, cert: x509.Certificate, issuer: x509.Certificate) -> bytes | None:
        return self._by_serial.get(cert.serial_number)


def _check(
    pki: TestPki, leaf_answer: bytes, indices: tuple[int, ...], cache: OcspCache
) -> tuple[object, ...]:
    source = _Answers(
        {pki.leaf.serial_number: leaf_answer, pki.intermediate.serial_number: leaf_answer}
    )
    return check_chain_revocation(
        pki.chain, indices=indices, mode="online", source=source, at=NOW, cache=cache
    )


def _run_all_cases(pki: TestPki, cases: dict[str, bytes], indices: tuple[int, ...]) -> list[object]:
    """Every case about the leaf, the intermediate answered by its own good response (or the
    leaf's, for a wrong-certificate verdict); one cache across all, each case asked twice."""
    cache = OcspCache(max_entries=8)  # small: evictions happen during the run too
    out: list[object] = []
    for name in sorted(cases):
        for _ in range(2):
            source = _Answers(
                {
                    pki.leaf.serial_number: cases[name],
                    pki.intermediate.serial_number: cases["intermediate_good"],
                }
            )
            checks = check_chain_revocation(
                pki.chain, indices=indices, mode="online", source=source, at=NOW, cache=cache
            )
            out.append((name, checks, cache.hits, cache.misses, len(cache)))
    return out


@pytest.mark.parametrize("indices", [(0, 1), (1, 0), (0, 1, 0, 1)])
def test_every_case_answers_as_sequential_checks(
    pki: TestPki,
    cases: dict[str, bytes],
    indices: tuple[int, ...],
    workers: Callable[[int], int],
) -> None:
    workers(0)
    expected = _run_all_cases(pki, cases, indices)
    statuses = {c.status for _, checks, *_ in expected for c in checks}  # type: ignore[attr-defined]
    assert {"good", "revoked", "invalid", "unknown", "certificate_hold"} <= statuses
    for n in (1, 2, 4):
        workers(n)
        assert _run_all_cases(pki, cases, indices) == expected


def test_the_same_question_twice_is_one_verification_and_one_hit(
    pki: TestPki, cases: dict[str, bytes], workers: Callable[[int], int]
) -> None:
    """Indices (0, 0): the second asks after the first is remembered, as before."""
    for n in (0, 2):
        workers(n)
        cache = OcspCache()
        checks = _check(pki, cases["good"], (0, 0), cache)
        assert [c.status for c in checks] == ["good", "good"]  # type: ignore[attr-defined]
        assert (cache.misses, cache.hits) == (1, 1)


def test_stapled_set_checked_on_the_pool(
    pki: TestPki, cases: dict[str, bytes], workers: Callable[[int], int]
) -> None:
    """Stapled answers for both links, parsed fresh each time, verified on the pool."""
    for n in (0, 1, 2):
        workers(n)
        cache = OcspCache()
        for _ in range(3):
            stapled = StapledOcsp([cases["intermediate_good"], cases["delegated"]])
            checks = check_chain_revocation(
                pki.chain, indices=(0, 1), mode="stapled", source=stapled, at=NOW, cache=cache
            )
            assert [c.status for c in checks] == ["good", "good"]
            assert [c.responder for c in checks] == ["OCSP Responder", "issuer"]
        assert (cache.misses, cache.hits) == (2, 4)


# ---------------------------------------------------------------------------------------------
# issuer key bits from the certificate's DER


def _replace_spki(cert: x509.Certificate, spki: bytes) -> x509.Certificate:
    """The same certificate with another SubjectPublicKeyInfo (its signature no longer
    verifies; loading does not check it)."""

    def tlv(tag: int, content: bytes) -> bytes:
        n = len(content)
        if n < 0x80:
            return bytes([tag, n]) + content
        size = n.to_bytes((n.bit_length() + 7) // 8, "big")
        return bytes([tag, 0x80 | len(size)]) + size + content

    der = cert.public_bytes(Encoding.DER)
    _, start, _ = _der_tlv(der, 0)
    _, tbs_start, tbs_end = _der_tlv(der, start)
    fields, pos = [], tbs_start
    while pos < tbs_end:
        _, _, end = _der_tlv(der, pos)
        fields.append(der[pos:end])
        pos = end
    spki_at = 6 if fields[0][0] == 0xA0 else 5
    fields[spki_at] = spki
    tbs = tlv(0x30, b"".join(fields))
    return x509.load_der_x509_certificate(tlv(0x30, tbs + der[tbs_end:]))


def _compressed(cert: x509.Certificate) -> x509.Certificate:
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    uncompressed = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    point = key.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    _, start, _ = _der_tlv(uncompressed, 0)
    _, _, alg_end = _der_tlv(uncompressed, start)
    algorithm = uncompressed[start:alg_end]
    bits = b"\x03" + bytes([len(point) + 1]) + b"\x00" + point
    body = algorithm + bits
    return _replace_spki(cert, b"\x30" + bytes([len(body)]) + body)


def test_key_bits_from_der_equal_the_reserialised_key(pki: TestPki) -> None:
    rims = NVIDIA / "rims" / "test_no_gpu"
    certs = [
        *pki.chain,
        pki.responder,
        pki.responder_ed25519,  # Ed25519: serialised as before
        *load_pem_chain((NVIDIA / "hopper/hopperCertChain.txt").read_bytes()),  # P-384
        *parse_rim((rims / "Driver_RIM_test_no_gpu.swidtag").read_bytes()).signer_chain,
        *load_pem_chain((CPU / "snp/virtee-sev/cert_chain_milan").read_bytes()),  # RSA
    ]
    compressed = _compressed(pki.intermediate)  # a compressed point: serialised as before
    raw = _spki_bits(compressed.public_bytes(Encoding.DER))
    assert raw is not None and raw[0] in (2, 3) and len(raw) == 49
    for cert in (*certs, compressed):
        expected = _public_key_bits(cert.public_key())
        assert _certificate_key_bits(cert) == expected
        assert _certificate_key_bits(cert, cert.public_bytes(Encoding.DER)) == expected
