"""Emulated SEV-SNP guest: byte-exact ABI reports, AMD-shaped chain, rejected by the pinned ARKs.

``verify_snp_report(extra_arks=...)`` takes the emulation ARK, but still sorts the certificates
by AMD's exact common names, which the emulation's CAs deliberately do not carry (they start
with ``LESSEE EMULATION``); the change it needs is in the report of this work. Until then the
acceptance tests run its building blocks (``attest.snp.verify``: AMD's signature algorithm,
the chain to a given ARK, the AMD extensions vs REPORTED_TCB and CHIP_ID) with the emulation
ARK, plus the report signature exactly as its step 7 does it, and one test runs the whole
verifier with the emulation ARK passed as an extra root.
"""

from __future__ import annotations

import struct
from datetime import datetime

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from agent.emulation import EmulatedSnp, EmulationPki, SnpTcb
from attest.errors import InputError, LesseeError, VerificationError
from attest.snp import parse_report
from attest.snp.report import AttestationReport, Product, SigningKey
from attest.snp.verify import (
    _check_amd_signature_algorithm,
    check_extensions_match_report,
    load_amd_certificates,
    parse_amd_extensions,
    verify_snp_report,
)
from attest.x509chain import verify_chain
from tests.conftest import CPU

MEASUREMENT = bytes.fromhex("ab" * 48)
REPORT_DATA = bytes(range(64))
REAL_REPORT = bytes.fromhex((CPU / "snp" / "virtee-sev" / "report_milan.hex").read_text().strip())


def _certs(snp: EmulatedSnp) -> tuple[x509.Certificate, ...]:
    vcek, ask_ark = snp.certificates()
    return load_amd_certificates(vcek) + load_amd_certificates(ask_ark)


def verify_with_emulation_ark(data: bytes, snp: EmulatedSnp, at: datetime) -> AttestationReport:
    """verify_snp_report's steps 1, 3 and 5-9, with the emulation ARK instead of AMD's."""
    report = parse_report(data)
    vcek, ask, ark = _certs(snp)
    assert report.signing_key is SigningKey.VCEK
    ext = parse_amd_extensions(vcek)
    assert ext.product is Product.MILAN
    if report.cpuid_product not in (None, Product.MILAN):  # as verify_snp_report refuses it
        raise VerificationError("report's CPUID names another product", reason="product_mismatch")
    for cert in (vcek, ask, ark):
        _check_amd_signature_algorithm(cert)
    verify_chain((vcek, ask), root=ark, at=at, expected_length=2, what="AMD chain")
    key = vcek.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(
        encode_dss_signature(report.signature_r, report.signature_s),
        report.signed_bytes,
        ec.ECDSA(hashes.SHA384()),
    )
    _, chip_checked = check_extensions_match_report(ext, report, Product.MILAN, SigningKey.VCEK)
    assert chip_checked
    return report


@pytest.fixture(scope="module")
def snp(pki: EmulationPki) -> EmulatedSnp:
    return EmulatedSnp(pki, measurement=MEASUREMENT)


def test_report_fields_at_their_abi_offsets(snp: EmulatedSnp, pki: EmulationPki) -> None:
    data = snp.report(REPORT_DATA)
    assert len(data) == len(REAL_REPORT) == 1184
    report = parse_report(data)
    assert report.version == 3
    assert report.policy.raw == 0x30000 and not report.policy.debug
    assert report.vmpl == 0
    assert report.signature_algo == 1
    assert report.report_data == REPORT_DATA == data[0x50:0x90]
    assert report.measurement == MEASUREMENT == data[0x90:0xC0]
    assert report.chip_id == pki.chip_id
    assert report.report_id_ma == b"\xff" * 32
    assert report.cpuid is not None and report.cpuid_product is Product.MILAN
    for raw in (report.current_tcb_raw, report.reported_tcb_raw, report.committed_tcb_raw):
        assert raw == SnpTcb().raw == bytes.fromhex("0300000000000873")
    assert report.launch_tcb_raw == SnpTcb().raw
    assert str(report.current_version) == "1.55.21"
    # the same platform facts the real Milan report states
    real = parse_report(REAL_REPORT)
    assert report.platform_info == real.platform_info
    assert report.policy == real.policy
    assert report.reported_tcb_raw == real.reported_tcb_raw
    # reserved ranges are zero (the parser checks most; these are the rest)
    for start, end in (
        (0x4C, 0x50),
        (0x18B, 0x1A0),
        (0x1F8, 0x2A0),
        (0x2D0, 0x2E8),
        (0x318, 0x4A0),
    ):
        assert not any(data[start:end]), hex(start)


def test_version_2_has_no_cpuid(pki: EmulationPki, at: datetime) -> None:
    snp = EmulatedSnp(pki, measurement=MEASUREMENT, version=2)
    data = snp.report(REPORT_DATA)
    report = verify_with_emulation_ark(data, snp, at)
    assert report.version == 2 and report.cpuid is None
    assert not any(data[0x188:0x1A0])


def test_report_verifies_with_the_emulation_ark(snp: EmulatedSnp, at: datetime) -> None:
    report = verify_with_emulation_ark(snp.report(REPORT_DATA), snp, at)
    assert report.report_data == REPORT_DATA


def test_pinned_amd_roots_reject_it(snp: EmulatedSnp, at: datetime) -> None:
    data = snp.report(REPORT_DATA)
    with pytest.raises(LesseeError):
        verify_snp_report(data, _certs(snp), at=at)
    vcek = _certs(snp)[0]
    with pytest.raises(VerificationError) as err:  # only the VCEK: chained to AMD's own ASK
        verify_snp_report(data, [vcek], at=at)
    assert err.value.reason in ("issuer_mismatch", "bad_signature")


def test_whole_verifier_with_the_emulation_ark_as_extra_root(
    snp: EmulatedSnp, pki: EmulationPki, at: datetime
) -> None:
    verified = verify_snp_report(
        snp.report(REPORT_DATA),
        _certs(snp),
        at=at,
        report_data=REPORT_DATA,
        extra_arks=[pki.ark.cert],
    )
    assert verified.chip_id_checked
    assert verified.chain.root == pki.ark.cert


def test_debug_policy_verifies_but_says_debug(pki: EmulationPki, at: datetime) -> None:
    snp = EmulatedSnp(pki, measurement=MEASUREMENT, policy_debug=True, vmpl=2)
    report = verify_with_emulation_ark(snp.report(REPORT_DATA), snp, at)
    assert report.policy.debug
    assert report.policy.raw == 0x30000 | (1 << 19)
    assert report.vmpl == 2


def test_vcek_certifies_the_reported_tcb_and_chip(pki: EmulationPki, snp: EmulatedSnp) -> None:
    vcek = _certs(snp)[0]
    ext = parse_amd_extensions(vcek)
    assert (ext.bootloader, ext.tee, ext.snp, ext.microcode) == (3, 0, 8, 115)
    assert ext.hwid == pki.chip_id
    assert ext.product_name == "Milan-B0"
    assert ext.reserved_spls == (0, 0, 0, 0)
    newer = EmulatedSnp(
        pki, measurement=MEASUREMENT, tcb=SnpTcb(bootloader=4, snp=22, microcode=211)
    )
    newer_report = parse_report(newer.report(REPORT_DATA))
    with pytest.raises(VerificationError) as err:  # the old VCEK does not vouch for the new TCB
        check_extensions_match_report(ext, newer_report, Product.MILAN, SigningKey.VCEK)
    assert err.value.reason == "tcb_mismatch"
    newer_ext = parse_amd_extensions(_certs(newer)[0])
    check_extensions_match_report(newer_ext, newer_report, Product.MILAN, SigningKey.VCEK)


def test_any_change_to_the_signed_bytes_breaks_the_signature(
    snp: EmulatedSnp, at: datetime
) -> None:
    data = snp.report(REPORT_DATA)
    changed = data[:0x90] + bytes([data[0x90] ^ 1]) + data[0x91:]  # one measurement bit
    with pytest.raises(InvalidSignature):
        verify_with_emulation_ark(changed, snp, at)
    replayed = data[:0x50] + bytes(64) + data[0x90:]  # another session's binding
    with pytest.raises(InvalidSignature):
        verify_with_emulation_ark(replayed, snp, at)


def test_certificates_are_what_a_host_serves(snp: EmulatedSnp, pki: EmulationPki) -> None:
    vcek_der, ask_ark_pem = snp.certificates()
    assert vcek_der.startswith(b"\x30\x82")  # DER, as AMD's KDS serves a VCEK
    assert ask_ark_pem.count(b"-----BEGIN CERTIFICATE-----") == 2  # KDS cert_chain: ASK, ARK
    ask, ark = load_amd_certificates(ask_ark_pem)
    assert ask == pki.ask.cert and ark == pki.ark.cert
    assert ark.subject == ark.issuer


def test_bad_inputs_are_input_errors(pki: EmulationPki, snp: EmulatedSnp) -> None:
    with pytest.raises(InputError):
        snp.report(bytes(63))
    with pytest.raises(InputError):
        EmulatedSnp(pki, measurement=bytes(32))
    with pytest.raises(InputError):
        EmulatedSnp(pki, measurement=MEASUREMENT, vmpl=4)
    with pytest.raises(InputError):
        EmulatedSnp(pki, measurement=MEASUREMENT, version=5)
    with pytest.raises(InputError):
        SnpTcb(bootloader=256)


def test_guest_fields_are_written_little_endian(pki: EmulationPki) -> None:
    snp = EmulatedSnp(pki, measurement=MEASUREMENT, guest_svn=0x01020304, host_data=b"\x11" * 32)
    data = snp.report(REPORT_DATA)
    assert struct.unpack_from("<I", data, 0x04)[0] == 0x01020304
    assert data[0xC0:0xE0] == b"\x11" * 32
    assert parse_report(data).guest_svn == 0x01020304
