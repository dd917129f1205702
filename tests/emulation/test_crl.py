"""The emulated AMD CRL: AMD's form, signed by the emulated ARK, passing the real checks.

``check_amd_crl`` and ``verify_snp_report`` are the verifiers the broker runs; the emulation
must produce a CRL they accept (so the default ``missing_revocation: reject`` passes the demo)
and one that revokes the ASK must be refused like AMD's would be.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agent.emulation import EmulatedCpuSource, EmulatedSnp, EmulationPki
from agent.emulation.pki import (
    AMD_CRL_BACKDATE,
    AMD_CRL_MIN_REMAINING,
    AMD_CRL_VALIDITY,
    MAX_AMD_CRL_REVOKED,
)
from attest.errors import InputError, RevocationError
from attest.snp.verify import (
    AMD_PSS_SHA384_ALGIDS,
    check_amd_crl,
    load_amd_certificates,
    verify_snp_report,
)


def _signature_algid(der: bytes) -> bytes:
    """The outer signatureAlgorithm of a DER CRL (the second element of its SEQUENCE)."""
    from attest.snp.verify import _der_tlv

    _, start, _ = _der_tlv(der, 0, "crl")
    _, _, tbs_end = _der_tlv(der, start, "crl")
    _, _, alg_end = _der_tlv(der, tbs_end, "crl")
    return der[tbs_end:alg_end]


def test_emulated_crl_is_amds_form_and_passes_check_amd_crl(pki: EmulationPki) -> None:
    at = datetime.now(UTC).replace(microsecond=0)
    der = pki.amd_crl(at=at + timedelta(days=30))  # a time no other test asked for: fresh
    crl = x509.load_der_x509_crl(der)
    assert crl.issuer == pki.ark.cert.subject
    assert _signature_algid(der) in AMD_PSS_SHA384_ALGIDS  # PSS, SHA-384, MGF1-SHA-384, salt 48
    assert isinstance(crl.signature_hash_algorithm, hashes.SHA384)
    assert crl.last_update_utc == at + timedelta(days=30) - AMD_CRL_BACKDATE
    assert crl.next_update_utc == at + timedelta(days=30) + AMD_CRL_VALIDITY
    assert len(crl) == 0
    for when in (crl.last_update_utc, at + timedelta(days=30), crl.next_update_utc):
        check_amd_crl(der, ark=pki.ark.cert, intermediate=pki.ask.cert, at=when)
    with pytest.raises(RevocationError) as e:
        check_amd_crl(
            der, ark=pki.ark.cert, intermediate=pki.ask.cert, at=crl.next_update_utc + timedelta(1)
        )
    assert e.value.reason == "crl_stale"


def test_revoked_ask_crl_is_refused(pki: EmulationPki) -> None:
    at = datetime.now(UTC)
    der = pki.amd_crl(at=at, revoked_serials=(7, pki.ask.cert.serial_number))
    with pytest.raises(RevocationError) as e:
        check_amd_crl(der, ark=pki.ark.cert, intermediate=pki.ask.cert, at=at)
    assert e.value.reason == "revoked"
    # the whole SNP verification refuses it too, and a revoking CRL is never handed out later
    snp = EmulatedSnp(pki, measurement=bytes(48))
    vcek, ask_ark = snp.certificates()
    certs = load_amd_certificates(vcek) + load_amd_certificates(ask_ark)
    with pytest.raises(RevocationError):
        verify_snp_report(snp.report(bytes(64)), certs, at=at, crl=der, extra_arks=[pki.ark.cert])
    assert len(x509.load_der_x509_crl(pki.amd_crl(at=at))) == 0
    with pytest.raises(InputError):
        pki.amd_crl(at=at, revoked_serials=tuple(range(1, MAX_AMD_CRL_REVOKED + 2)))


def test_emulated_snp_evidence_carries_a_crl_that_verifies(pki: EmulationPki) -> None:
    at = datetime.now(UTC)
    evidence = EmulatedCpuSource(EmulatedSnp(pki, measurement=bytes(48)), clock=lambda: at).collect(
        bytes(64)
    )
    assert evidence.crl is not None
    certs = tuple(c for blob in evidence.certificates for c in load_amd_certificates(blob))
    verified = verify_snp_report(
        evidence.report, certs, at=at, crl=evidence.crl, extra_arks=[pki.ark.cert]
    )
    assert verified.revocation_checked


def test_crl_is_reused_while_current_and_remade_near_its_end(pki: EmulationPki) -> None:
    """One RSA-4096 signature per publication, not per report; the same bytes in every bundle
    (as a host re-serves AMD's file) until less than AMD_CRL_MIN_REMAINING of it is left."""
    start = datetime.now(UTC) + timedelta(days=100)
    first = pki.amd_crl(at=start)
    assert pki.amd_crl(at=start + timedelta(hours=5)) == first
    end = x509.load_der_x509_crl(first).next_update_utc
    assert end is not None
    assert pki.amd_crl(at=end - AMD_CRL_MIN_REMAINING) == first
    later = end - AMD_CRL_MIN_REMAINING + timedelta(seconds=1)
    second = pki.amd_crl(at=later)
    assert second != first
    check_amd_crl(second, ark=pki.ark.cert, intermediate=pki.ask.cert, at=later)
    # a time before the remembered CRL's own start gets one made for it, never a future one
    earlier = pki.amd_crl(at=start - timedelta(days=1))
    check_amd_crl(earlier, ark=pki.ark.cert, intermediate=pki.ask.cert, at=start - timedelta(1))


def test_crl_is_public_data_written_nowhere(pki: EmulationPki) -> None:
    """Made from the ARK key at run time: the PKI directory holds no CRL to go stale."""
    pki.amd_crl(at=datetime.now(UTC))
    assert not [p for p in pki.directory.rglob("*") if "crl" in p.name.lower()]
