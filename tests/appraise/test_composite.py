"""Composite appraisal on real evidence: every device verified, the binding enforced across them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from agent.emulation import EmulationPki
from attest.appraise.common import DeviceAppraisal
from attest.appraise.composite import AppraisalContext, appraise_bundle
from attest.binding import SessionBinding
from attest.bundle import DeviceEvidenceIn, EvidenceBundle, SnpEvidenceIn
from attest.ear import WARNING_VALUE, Status
from attest.errors import InputError
from attest.policy import Policy, load_policy
from tests.conftest import CPU, LEGACY_NONCE, NVIDIA, RIM_ERA

LEGACY_REPORT = bytes.fromhex((NVIDIA / "hopper_legacy/attestationReport.txt").read_text().strip())
LEGACY_CHAIN = (NVIDIA / "hopper_legacy/gpuAkCertChain.txt").read_bytes()
RIMS = tuple(p.read_bytes() for p in sorted((NVIDIA / "rims/test_no_gpu").glob("*.swidtag")))
SNP_REPORT = bytes.fromhex((CPU / "snp/virtee-sev/report_milan.hex").read_text().strip())
SNP_CERTS = (
    (CPU / "snp/virtee-sev/vcek_milan.der").read_bytes(),
    (CPU / "snp/virtee-sev/cert_chain_milan").read_bytes(),
)


def _bundle(**kw: object) -> EvidenceBundle:
    base: dict[str, object] = dict(
        cpu=SnpEvidenceIn(SNP_REPORT, SNP_CERTS),
        gpus=(DeviceEvidenceIn("HOPPER", LEGACY_REPORT, LEGACY_CHAIN, rims=RIMS),),
        cc_mode_on=True,
        devtools_on=False,
    )
    base.update(kw)
    return EvidenceBundle(**base)  # type: ignore[arg-type]


def _policy(measurement: str, **gpu: object) -> Policy:
    return load_policy(
        json.dumps(
            {
                "name": "t",
                "cpu_tees": ["snp"],
                "snp": {"allowed_measurements": [measurement]},
                "gpu": gpu,
                "missing_revocation": "warn",
            }
        )
    )


def _snp_measurement() -> str:
    from attest.snp.report import parse_report

    return parse_report(SNP_REPORT).measurement.hex()


def gpu_policy(**gpu: object) -> Policy:
    """The real Milan vector's measurement allowed, these ``gpu`` rules, revocation a warning."""
    return load_policy(
        json.dumps(
            {
                "name": "t",
                "cpu_tees": ["snp"],
                "snp": {"allowed_measurements": [_snp_measurement()]},
                "gpu": gpu,
                "missing_revocation": "warn",
            }
        )
    )


def emulated_context(pki: EmulationPki) -> AppraisalContext:
    """An appraisal context that offers an emulation PKI's GPU, RIM and AMD roots (they count
    only where a policy pins them, as ``demo_policy`` does)."""
    return AppraisalContext(
        candidates={
            "nvidia_device_root": pki.gpu_root.cert,
            "nvidia_rim_root": pki.rim_root.cert,
        },
        amd_extra_arks=(pki.ark.cert,),
    )


def _binding(report_data: bytes | None = None) -> SessionBinding:
    from attest.snp.report import parse_report

    rd = report_data if report_data is not None else parse_report(SNP_REPORT).report_data
    return SessionBinding(report_data=rd, gpu_nonce=bytes.fromhex(LEGACY_NONCE))


#: What the CPU gets for the real Milan vector, which comes without AMD's CRL: revocation of the
#: ASK unknown, a warning under missing_revocation=warn.
SNP_REVOCATION_WARNING = ("snp.revocation", "checked", "missing", "warn")


def _cpu_findings(devices: tuple[DeviceAppraisal, ...]) -> list[tuple[str, object, object, str]]:
    return [(f.field, f.expected, f.actual, f.severity.value) for f in devices[0].findings]


def test_real_cpu_and_gpu_from_one_session_pass_with_only_revocation_warnings() -> None:
    # The two real reports were not made in one session; a binding object that carries both of
    # their values stands in for a session that produced both (the test of the rule, not of luck).
    devices, findings = appraise_bundle(_bundle(), _binding(), _policy(_snp_measurement()), RIM_ERA)
    assert findings == ()
    assert [d.name for d in devices] == ["cpu0", "gpu0"]
    # No AMD CRL and no OCSP responses exist offline for these vectors: with
    # missing_revocation=warn each is a warning, never silently good. The CPU's is the only
    # finding it has (report, chain, binding and policy all pass).
    assert devices[0].status is Status.WARNING
    assert _cpu_findings(devices) == [SNP_REVOCATION_WARNING]
    assert devices[0].trust_vector()["hardware"] == WARNING_VALUE
    gpu = devices[1]
    assert gpu.claims["measres"] == "success"
    assert gpu.status is Status.WARNING
    assert all(f.severity.value == "warn" for f in gpu.findings)


def test_gpu_from_another_session_is_rejected() -> None:
    other = SessionBinding(report_data=_binding().report_data, gpu_nonce=b"\x11" * 32)
    devices, _ = appraise_bundle(_bundle(), other, _policy(_snp_measurement()), RIM_ERA)
    assert _cpu_findings(devices) == [SNP_REVOCATION_WARNING]  # the CPU is still fine
    assert devices[1].status is Status.CONTRAINDICATED
    assert any("nonce" in f.field for f in devices[1].findings)


def test_cpu_from_another_session_is_rejected() -> None:
    devices, _ = appraise_bundle(
        _bundle(), _binding(b"\x22" * 64), _policy(_snp_measurement()), RIM_ERA
    )
    assert [f.field for f in devices[0].findings] == ["snp.report_data", "snp.revocation"]
    assert devices[0].status is Status.CONTRAINDICATED
    assert devices[0].findings[0].severity.value == "reject"


def test_missing_revocation_rejects_by_default_and_cc_off_devtools_on_are_findings() -> None:
    policy = load_policy(
        json.dumps(
            {
                "name": "t",
                "cpu_tees": ["snp"],
                "snp": {"allowed_measurements": [_snp_measurement()]},
            }
        )
    )
    devices, _ = appraise_bundle(
        _bundle(cc_mode_on=False, devtools_on=True), _binding(), policy, RIM_ERA
    )
    gpu = devices[1]
    assert gpu.status is Status.CONTRAINDICATED
    fields = {f.field for f in gpu.findings if f.severity.value == "reject"}
    assert {"gpu.cc_mode", "gpu.devtools"} <= fields
    assert any("cert-chain" in f for f in fields)
    # the same rule for the CPU: the real Milan vector has no AMD CRL, so it is refused for that
    assert devices[0].status is Status.CONTRAINDICATED
    assert _cpu_findings(devices) == [("snp.revocation", "checked", "missing", "reject")]


def test_no_cpu_no_gpu() -> None:
    devices, findings = appraise_bundle(
        EvidenceBundle(cpu=None),
        _binding(),
        _policy(_snp_measurement()),
        RIM_ERA,
        context=AppraisalContext(),
    )
    assert devices[0].findings[0].field == "cpu.evidence"
    assert [f.field for f in findings] == ["gpu.count"]


def test_expired_rims_today_reject() -> None:
    devices, _ = appraise_bundle(
        _bundle(), _binding(), _policy(_snp_measurement()), datetime(2026, 11, 28, tzinfo=UTC)
    )
    assert devices[1].status is Status.CONTRAINDICATED


def test_embedded_nvidia_policy_is_applied_per_device() -> None:
    nv = json.loads((NVIDIA / "policies/local_NVGPULocalv4PolicyExample.json").read_text())
    doc = {
        "name": "t",
        "cpu_tees": ["snp"],
        "snp": {"allowed_measurements": [_snp_measurement()]},
        "missing_revocation": "warn",
        "gpu": {"nvidia_relying_party_policies": [nv]},
    }
    devices, findings = appraise_bundle(
        _bundle(), _binding(), load_policy(json.dumps(doc)), RIM_ERA
    )
    gpu = devices[1]
    # NVIDIA's policy demands OCSP "good" on every chain: with no stapled answers it fails,
    # named by NVIDIA's claim, even though lessee's own policy only warns.
    rejected = {f.field for f in gpu.findings if f.severity.value == "reject"}
    assert rejected == {
        f"x-nvidia-gpu-{chain}-cert-chain.x-nvidia-cert-ocsp-status"
        for chain in ("attestation-report", "driver-rim", "vbios-rim")
    }
    assert [f.field for f in findings] == ["x-nvidia-overall-att-result"]


def test_bad_embedded_nvidia_policy_is_refused_at_load() -> None:
    doc = {
        "name": "t",
        "cpu_tees": ["snp"],
        "snp": {"unsafe_any_measurement": True},
        "gpu": {"nvidia_relying_party_policies": [{"version": "1.0"}]},
    }
    with pytest.raises(InputError, match="nvidia_relying_party_policies"):
        load_policy(json.dumps(doc))
