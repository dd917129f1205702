"""AMD's CRL in the appraisal, on the real Milan report and chain (virtee-sev vectors).

No AMD CRL is vendored and AMD's ARK cannot sign test CRLs, so the real evidence is appraised
without one (the ``snp.revocation`` finding, whose severity ``missing_revocation`` decides) and
with CRLs that must be refused: one that names the real ARK-Milan as issuer but is signed by
another RSA-4096 key in AMD's exact form, and one from another issuer. The passing case, a CRL
the ARK really signed, is covered with the emulated ARK (tests/emulation, tests/integration).
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from attest.appraise.composite import AppraisalContext, appraise_bundle
from attest.binding import SessionBinding
from attest.bundle import EvidenceBundle, SnpEvidenceIn
from attest.ear import Status
from attest.policy import Policy, load_policy
from attest.snp.report import Product, parse_report
from attest.snp.verify import pinned_ark
from tests.conftest import CPU, RIM_ERA

SNP_REPORT = bytes.fromhex((CPU / "snp/virtee-sev/report_milan.hex").read_text().strip())
SNP_CERTS = (
    (CPU / "snp/virtee-sev/vcek_milan.der").read_bytes(),
    (CPU / "snp/virtee-sev/cert_chain_milan").read_bytes(),
)
AMD_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def _policy(missing_revocation: str) -> Policy:
    report = parse_report(SNP_REPORT)
    return load_policy(
        json.dumps(
            {
                "name": "t",
                "cpu_tees": ["snp"],
                "snp": {"allowed_measurements": [report.measurement.hex()]},
                "missing_revocation": missing_revocation,
            }
        )
    )


def _cpu(crl: bytes | None, missing_revocation: str) -> tuple[Status, list[tuple[object, ...]]]:
    """The CPU's verdict for the real Milan evidence with ``crl``, bound to its own session."""
    binding = SessionBinding(
        report_data=parse_report(SNP_REPORT).report_data, gpu_nonce=b"\x00" * 32
    )
    bundle = EvidenceBundle(cpu=SnpEvidenceIn(SNP_REPORT, SNP_CERTS, crl))
    devices, _ = appraise_bundle(
        bundle, binding, _policy(missing_revocation), RIM_ERA, context=AppraisalContext()
    )
    cpu = devices[0]
    assert cpu.name == "cpu0"
    return cpu.status, [(f.field, f.expected, f.actual, f.severity.value) for f in cpu.findings]


@pytest.fixture(scope="module")
def impostor_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


def _crl(key: rsa.RSAPrivateKey, issuer: x509.Name) -> bytes:
    """A CRL in AMD's form (RSASSA-PSS/SHA-384/salt 48, current at RIM_ERA, nothing revoked)."""
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(RIM_ERA - timedelta(days=1))
        .next_update(RIM_ERA + timedelta(days=7))
        .sign(key, hashes.SHA384(), rsa_padding=AMD_PSS)
    )
    return crl.public_bytes(Encoding.DER)


@pytest.mark.parametrize(
    ("missing_revocation", "status", "severity"),
    [("reject", Status.CONTRAINDICATED, "reject"), ("warn", Status.WARNING, "warn")],
)
def test_no_crl_gives_exactly_the_revocation_finding(
    missing_revocation: str, status: Status, severity: str
) -> None:
    assert _cpu(None, missing_revocation) == (
        status,
        [("snp.revocation", "checked", "missing", severity)],
    )


@pytest.mark.parametrize("missing_revocation", ["reject", "warn"])
def test_crl_signed_by_another_key_is_refused(
    impostor_key: rsa.RSAPrivateKey, missing_revocation: str
) -> None:
    # Issuer and algorithm are ARK-Milan's exactly; only the signature is not the ARK's. A CRL
    # that is there and fails is a verification failure whatever missing_revocation says.
    forged = _crl(impostor_key, pinned_ark(Product.MILAN).subject)
    status, findings = _cpu(forged, missing_revocation)
    assert status is Status.CONTRAINDICATED
    assert findings == [("snp.verification", "verified", "crl_bad_signature", "reject")]


def test_crl_of_another_issuer_is_refused(impostor_key: rsa.RSAPrivateKey) -> None:
    other = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ARK-Genoa")])
    status, findings = _cpu(_crl(impostor_key, other), "warn")
    assert status is Status.CONTRAINDICATED
    assert findings == [("snp.verification", "verified", "crl_issuer", "reject")]


def test_unreadable_crl_is_refused() -> None:
    status, findings = _cpu(b"\x30\x03\x02\x01\x00", "warn")
    assert status is Status.CONTRAINDICATED
    assert [f[0] for f in findings] == ["snp.verification"]
