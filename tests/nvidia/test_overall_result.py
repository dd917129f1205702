"""NVIDIA's ``x-nvidia-overall-att-result`` is true only for a set where everything was checked
and passed (``affirming``).

It was true for any set that was not contraindicated, so a ``warning`` set, one whose nonce
was never checked (a replayed report is not excluded) or whose revocation was skipped, claimed
NVIDIA's overall pass; and the composite appraisal's relying-party check looked at the devices
only, so a set failure (one device given twice) did not make it false.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from agent.emulation import EmulatedGpu, EmulationPki
from agent.rim_fetch import DirectoryRimSource
from attest.binding import SessionBinding
from attest.bundle import DeviceEvidenceIn
from attest.ear import Status as EarStatus
from attest.findings import Finding
from attest.nvidia.evidence import load_evidence
from attest.nvidia.verifier import Status, verify_gpu_evidence
from attest.revocation.ocsp import RevocationMode
from tests.appraise.test_composite_device_set import Emulated
from tests.conftest import LEGACY_NONCE, NVIDIA, RIM_ERA
from tests.emulation.helpers import run_pipeline

LEGACY = load_evidence(
    (NVIDIA / "hopper_legacy/attestationReport.txt").read_bytes(),
    certs=(NVIDIA / "hopper_legacy/gpuAkCertChain.txt").read_bytes(),
)
RIMS = DirectoryRimSource([NVIDIA / "rims" / "test_no_gpu"])
#: An NVIDIA relying-party policy that asks for the overall result and one claim every
#: emulated GPU has, so only the overall claim is at issue.
OVERALL_ONLY = {
    "version": "4.0",
    "authorization-rules": {
        "type": "JWT",
        "overall-claims": {"x-nvidia-overall-att-result": True},
        "detached-claims": {"x-nvidia-gpu-arch-check": True},
    },
}
OVERALL = "x-nvidia-overall-att-result"


def test_a_set_whose_nonce_was_not_checked_is_no_overall_pass() -> None:
    r = verify_gpu_evidence(
        LEGACY,
        at=RIM_ERA,
        expected_nonce=None,
        rim_source=RIMS,
        revocation_mode=RevocationMode.SKIP,
        ocsp_source=None,
    )
    j = r.to_json()
    assert j["status"] == "warning"
    assert j["devices"][0]["claims"]["x-nvidia-gpu-attestation-report-nonce-match"] is False
    assert j[OVERALL] is False


def test_a_set_with_everything_checked_is_not_a_pass_when_revocation_was_skipped() -> None:
    r = verify_gpu_evidence(
        LEGACY,
        at=RIM_ERA,
        expected_nonce=bytes.fromhex(LEGACY_NONCE),
        rim_source=RIMS,
        revocation_mode=RevocationMode.SKIP,
        ocsp_source=None,
    )
    assert r.status is Status.WARNING and r.to_json()[OVERALL] is False


def test_an_affirming_set_is_an_overall_pass(pki: EmulationPki) -> None:
    at, nonce = datetime.now(UTC), os.urandom(32)
    gpu = EmulatedGpu(pki, index=0)
    item = DeviceEvidenceIn(
        "HOPPER",
        gpu.report(nonce),
        gpu.certificate_chain_pem(),
        gpu.ocsp_responses(at),
        (gpu.driver_rim(), gpu.vbios_rim()),
    )
    r = run_pipeline([item], nonce=nonce, at=at, pki=pki)
    assert r.status is Status.AFFIRMING and r.to_json()[OVERALL] is True


# --- the composite appraisal's relying-party policies ----------------------------------------


@pytest.fixture(scope="module")
def emu(pki: EmulationPki) -> Emulated:
    return Emulated(pki, datetime.now(UTC))


def _overall_findings(findings: Sequence[Finding]) -> list[tuple[object, object]]:
    return [(f.expected, f.actual) for f in findings if f.field == OVERALL]


def test_composite_overall_pass_for_an_affirming_set(emu: Emulated) -> None:
    b = SessionBinding(report_data=os.urandom(64), gpu_nonce=os.urandom(32))
    status, _, findings = emu.appraise(
        emu.policy(nvidia_relying_party_policies=[OVERALL_ONLY]),
        b,
        [emu.gpu(0, b.gpu_nonce), emu.gpu(1, b.gpu_nonce)],
    )
    assert (status, findings) == (EarStatus.AFFIRMING, ())


def test_composite_overall_fails_on_a_set_failure(emu: Emulated) -> None:
    """Both copies of one GPU verify on their own; the set does not, and neither does NVIDIA's
    overall claim (it once looked at the devices only)."""
    b = SessionBinding(report_data=os.urandom(64), gpu_nonce=os.urandom(32))
    _, devices, findings = emu.appraise(
        emu.policy(nvidia_relying_party_policies=[OVERALL_ONLY]),
        b,
        [emu.gpu(0, b.gpu_nonce), emu.gpu(0, b.gpu_nonce)],
    )
    assert [d.status for d in devices[1:]] == [EarStatus.AFFIRMING] * 2
    assert _overall_findings(findings) == [(True, False)]


def _held(pki: EmulationPki, at: datetime) -> bytes:
    """An OCSP answer that puts GPU 0's BROM certificate on hold."""
    cert, issuer = pki.device_chain(0)[1], pki.device_issuers(0)[1]
    response = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=cert,
            issuer=issuer.cert,
            algorithm=hashes.SHA384(),
            cert_status=ocsp.OCSPCertStatus.REVOKED,
            this_update=at,
            next_update=at + timedelta(days=1),
            revocation_time=at - timedelta(hours=1),
            revocation_reason=x509.ReasonFlags.certificate_hold,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, issuer.cert)
        .sign(issuer.key, hashes.SHA384())
    )
    return response.public_bytes(Encoding.DER)


def test_composite_overall_fails_on_a_warning_set(emu: Emulated) -> None:
    """A hold the lessee policy allows leaves the device a warning: not NVIDIA's overall pass,
    so a relying-party policy that demands that pass refuses it."""
    b = SessionBinding(report_data=os.urandom(64), gpu_nonce=os.urandom(32))
    gpu = emu.gpu(0, b.gpu_nonce)
    held = DeviceEvidenceIn(
        gpu.arch,
        gpu.report,
        gpu.certificate_chain_pem,
        (_held(emu.pki, emu.made), *gpu.ocsp_responses[1:]),
        gpu.rims,
    )
    allow_hold = {"allowed_ocsp_statuses": ["good", "certificate_hold"]}
    status, devices, findings = emu.appraise(emu.policy(**allow_hold), b, [held])
    assert status is EarStatus.WARNING and findings == ()  # the hold: a warning, as before
    assert any("on hold" in f.detail for f in devices[1].findings)
    policy = emu.policy(**allow_hold, nvidia_relying_party_policies=[OVERALL_ONLY])
    status, _, findings = emu.appraise(policy, b, [held])
    assert _overall_findings(findings) == [(True, False)]
    assert status is EarStatus.CONTRAINDICATED
