"""SNP appraisal on the real reports: every failed check named, with both values."""

from __future__ import annotations

from datetime import UTC, datetime

from attest.appraise.snp import appraise_snp
from attest.binding import SessionBinding
from attest.ear import Status
from attest.policy import SnpMinimumTcb, SnpPolicy
from attest.snp.report import parse_report
from attest.snp.verify import load_amd_certificates, verify_snp_report
from tests.conftest import CPU

AT = datetime(2025, 1, 1, tzinfo=UTC)


def _virtee():  # type: ignore[no-untyped-def]
    report = bytes.fromhex((CPU / "snp/virtee-sev/report_milan.hex").read_text().strip())
    certs = load_amd_certificates((CPU / "snp/virtee-sev/vcek_milan.der").read_bytes())
    certs += load_amd_certificates((CPU / "snp/virtee-sev/cert_chain_milan").read_bytes())
    return verify_snp_report(report, certs, at=AT)


def _go_sev_guest():  # type: ignore[no-untyped-def]
    report = (CPU / "snp/go-sev-guest/attestation.bin").read_bytes()
    certs = load_amd_certificates((CPU / "snp/go-sev-guest/vcek.testcer").read_bytes())
    certs += load_amd_certificates((CPU / "snp/go-sev-guest/ask_ark_milan.pem").read_bytes())
    return verify_snp_report(report, certs, at=AT)


def _binding_of(v) -> SessionBinding:  # type: ignore[no-untyped-def]
    return SessionBinding(report_data=v.report.report_data, gpu_nonce=b"\0" * 32)


def test_real_non_debug_report_affirmed_by_matching_policy() -> None:
    v = _virtee()
    policy = SnpPolicy(allowed_measurements=(v.report.measurement.hex(),))
    a = appraise_snp(v, policy, _binding_of(v))
    assert a.findings == ()
    assert a.status is Status.AFFIRMING
    assert set(a.trust_vector().values()) == {2}


def test_debug_report_rejected_by_default_policy() -> None:
    v = _go_sev_guest()
    a = appraise_snp(
        v, SnpPolicy(allowed_measurements=(v.report.measurement.hex(),)), _binding_of(v)
    )
    assert [(f.field, f.expected, f.actual) for f in a.findings] == [
        ("snp.policy.debug", False, True)
    ]
    assert a.status is Status.CONTRAINDICATED
    assert a.trust_vector()["configuration"] == 96
    unsafe = SnpPolicy(allowed_measurements=(v.report.measurement.hex(),), unsafe_allow_debug=True)
    assert appraise_snp(v, unsafe, _binding_of(v)).status is Status.AFFIRMING


def test_every_failure_is_reported_at_once() -> None:
    v = _go_sev_guest()
    policy = SnpPolicy(
        allowed_measurements=("00" * 48,),
        allowed_vmpls=(3,),
        allowed_signing_keys=("vlek",),
        minimum_tcb=SnpMinimumTcb(snp=200, microcode=255),
        products=("Genoa",),
    )
    wrong_session = SessionBinding(report_data=b"\x01" * 64, gpu_nonce=b"\0" * 32)
    fields = {f.field for f in appraise_snp(v, policy, wrong_session).findings}
    assert fields == {
        "snp.report_data",
        "snp.policy.debug",
        "snp.vmpl",
        "snp.signing_key",
        "snp.product",
        "snp.tcb.snp",
        "snp.tcb.microcode",
        "snp.measurement",
    }


def test_measurement_parse_consistency() -> None:
    v = _virtee()
    assert parse_report(v.report.raw).measurement == v.report.measurement
