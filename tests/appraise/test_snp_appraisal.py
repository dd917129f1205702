"""SNP appraisal on the real reports: every failed check named, with both values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

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
        "snp.launch_tcb.snp",  # the report was launched under the TCB it reports
        "snp.launch_tcb.microcode",
        "snp.measurement",
    }


def test_measurement_parse_consistency() -> None:
    v = _virtee()
    assert parse_report(v.report.raw).measurement == v.report.measurement


def _emulated(pki, *, tcb, launch_tcb):  # type: ignore[no-untyped-def]
    from agent.emulation.snp import EmulatedSnp

    snp = EmulatedSnp(pki, measurement=b"\x11" * 48, tcb=tcb, launch_tcb=launch_tcb)
    at = datetime.now(UTC)
    vcek, chain = snp.certificates()
    certs = (*load_amd_certificates(vcek), *load_amd_certificates(chain))
    report = snp.report(b"\x22" * 64)
    return verify_snp_report(report, certs, at=at, crl=snp.crl(at), extra_arks=[pki.ark.cert])


def test_a_guest_launched_under_an_older_tcb_is_held_to_the_minimum(pki) -> None:  # type: ignore[no-untyped-def]
    """LAUNCH_TCB is the TCB a guest was launched under; after a live firmware update
    REPORTED_TCB is newer, and only REPORTED_TCB was judged: a guest launched under vulnerable
    firmware was affirmed. Now the minimum applies to both (``unsafe_ignore_launch_tcb`` to
    judge REPORTED_TCB alone)."""
    from agent.emulation.snp import SnpTcb

    v = _emulated(
        pki,
        tcb=SnpTcb(bootloader=4, tee=0, snp=24, microcode=219),
        launch_tcb=SnpTcb(bootloader=1, tee=0, snp=1, microcode=10),
    )
    assert v.tcb.snp == 24 and v.launch_tcb is not None and v.launch_tcb.snp == 1
    binding = SessionBinding(report_data=b"\x22" * 64, gpu_nonce=bytes(32))
    policy = SnpPolicy(
        allowed_measurements=("11" * 48,),
        minimum_tcb=SnpMinimumTcb(bootloader=4, snp=24, microcode=219),
    )
    fields = [f.field for f in appraise_snp(v, policy, binding).findings]
    assert fields == ["snp.launch_tcb.bootloader", "snp.launch_tcb.snp", "snp.launch_tcb.microcode"]
    lax = policy.model_copy(update={"unsafe_ignore_launch_tcb": True})
    assert appraise_snp(v, lax, binding).status is Status.AFFIRMING


@pytest.mark.parametrize(("reported", "launch"), [(100, 115), (115, 100)])
def test_the_signed_tcb_claim_is_the_reported_tcb_whatever_is_judged(  # type: ignore[no-untyped-def]
    pki, reported: int, launch: int
) -> None:
    """``ear.lessee.snp.tcb`` states REPORTED_TCB (what the VCEK certifies), in both
    directions and whether or not LAUNCH_TCB is judged: it once named LAUNCH_TCB whenever that
    was judged, so a host that lowered REPORTED_TCB got a signed claim of the higher TCB."""
    from agent.emulation.snp import SnpTcb

    v = _emulated(pki, tcb=SnpTcb(microcode=reported), launch_tcb=SnpTcb(microcode=launch))
    binding = SessionBinding(report_data=b"\x22" * 64, gpu_nonce=bytes(32))
    policy = SnpPolicy(allowed_measurements=("11" * 48,))
    for p in (policy, policy.model_copy(update={"unsafe_ignore_launch_tcb": True})):
        claim = appraise_snp(v, p, binding).claims["ear.lessee.snp"]
        assert isinstance(claim, dict) and claim["tcb"]["microcode"] == reported


def test_a_launch_tcb_below_the_minimum_lowers_the_hardware_claim(pki) -> None:  # type: ignore[no-untyped-def]
    """A ``snp.launch_tcb.*`` reject is about the hardware, as a ``snp.tcb.*`` one: the
    trust vector's ``hardware`` claim says so (it said affirming while the status did not)."""
    from agent.emulation.snp import SnpTcb

    v = _emulated(pki, tcb=SnpTcb(microcode=115), launch_tcb=SnpTcb(microcode=100))
    binding = SessionBinding(report_data=b"\x22" * 64, gpu_nonce=bytes(32))
    policy = SnpPolicy(allowed_measurements=("11" * 48,), minimum_tcb=SnpMinimumTcb(microcode=110))
    a = appraise_snp(v, policy, binding)
    assert [f.field for f in a.findings] == ["snp.launch_tcb.microcode"]
    assert a.status is Status.CONTRAINDICATED
    assert a.trust_vector()["hardware"] == 96


def test_minimum_tcb_by_product_replaces_the_common_minimum_for_its_line() -> None:
    """SVNs are numbered per product line (the real Turin VCEK has microcode 9, the Milan one
    115): a minimum set per line applies to that line only; other lines keep ``minimum_tcb``."""
    v = _virtee()  # Milan, microcode 115
    binding = _binding_of(v)
    base = {"allowed_measurements": (v.report.measurement.hex(),)}
    turin_only = SnpPolicy(**base, minimum_tcb_by_product={"Turin": SnpMinimumTcb(microcode=200)})
    assert appraise_snp(v, turin_only, binding).status is Status.AFFIRMING
    milan = SnpPolicy(
        **base,
        minimum_tcb=SnpMinimumTcb(microcode=9),
        minimum_tcb_by_product={"Milan": SnpMinimumTcb(microcode=200)},
    )
    fields = {f.field for f in appraise_snp(v, milan, binding).findings}
    assert fields == {"snp.tcb.microcode", "snp.launch_tcb.microcode"}
