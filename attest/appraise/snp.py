"""Appraise a verified SEV-SNP report against the policy's ``snp`` section."""

from __future__ import annotations

from attest.appraise.common import DeviceAppraisal, FindingCollector
from attest.binding import SessionBinding
from attest.policy import SnpPolicy
from attest.snp.verify import VerifiedSnpReport

#: AR4SI claims and the finding fields that feed each.
SNP_CATEGORIES = {
    "instance-identity": ("snp.report_data",),
    "hardware": ("snp.product", "snp.signing_key", "snp.tcb"),
    "executables": ("snp.measurement",),
    "configuration": ("snp.policy", "snp.vmpl", "snp.platform"),
}


def appraise_snp(
    verified: VerifiedSnpReport, policy: SnpPolicy, binding: SessionBinding, *, name: str = "cpu0"
) -> DeviceAppraisal:
    """Every check, every failure reported: binding, debug, migration agent, SMT, VMPL, key type,
    product, minimum TCB, launch measurement."""
    r = verified.report
    c = FindingCollector(name)
    c.expect(
        binding.matches_report_data(r.report_data),
        "snp.report_data",
        binding.report_data.hex(),
        r.report_data.hex(),
        detail="the CPU report does not carry this session's binding",
    )
    c.expect(
        policy.unsafe_allow_debug or not r.policy.debug, "snp.policy.debug", False, r.policy.debug
    )
    c.expect(
        policy.unsafe_allow_migration_agent or not r.policy.migrate_ma,
        "snp.policy.migrate_ma",
        False,
        r.policy.migrate_ma,
    )
    c.expect(
        policy.allow_smt or not r.platform_info.smt_enabled, "snp.platform.smt_enabled", False, True
    )
    c.expect(r.vmpl in policy.allowed_vmpls, "snp.vmpl", list(policy.allowed_vmpls), r.vmpl)
    kind = verified.signing_key_kind.value
    c.expect(
        kind in policy.allowed_signing_keys,
        "snp.signing_key",
        list(policy.allowed_signing_keys),
        kind,
    )
    product = verified.product.value
    c.expect(product in policy.products, "snp.product", list(policy.products), product)
    minimum_tcb = policy.minimum_tcb_by_product.get(verified.product.value, policy.minimum_tcb)
    judged = [("tcb", verified.tcb)]
    if not policy.unsafe_ignore_launch_tcb and verified.launch_tcb is not None:
        judged.append(("launch_tcb", verified.launch_tcb))
    for field, tcb in judged:
        for part in ("bootloader", "tee", "snp", "microcode", "fmc"):
            minimum = getattr(minimum_tcb, part)
            actual = getattr(tcb, part)
            if actual is None:
                continue
            c.expect(actual >= minimum, f"snp.{field}.{part}", f">= {minimum}", actual)
    if not policy.unsafe_any_measurement:
        allowed = policy.allowed_measurements or ()
        c.expect(
            r.measurement.hex() in allowed, "snp.measurement", list(allowed), r.measurement.hex()
        )
    claims = {
        "ear.lessee.snp": {
            "product": product,
            "measurement": r.measurement.hex(),
            "host_data": r.host_data.hex(),
            "vmpl": r.vmpl,
            "debug": r.policy.debug,
            "signing_key": kind,
            "tcb": {p: getattr(tcb, p) for p in ("bootloader", "tee", "snp", "microcode", "fmc")},
        }
    }
    return DeviceAppraisal(name, tuple(c.findings), SNP_CATEGORIES, claims)
