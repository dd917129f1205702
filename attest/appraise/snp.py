"""Appraise a verified SEV-SNP report against the policy's ``snp`` section."""

from __future__ import annotations

from attest.appraise.common import DeviceAppraisal, FindingCollector
from attest.binding import SessionBinding
from attest.policy import SnpPolicy
from attest.snp.report import GuestPolicy, PlatformInfo
from attest.snp.verify import VerifiedSnpReport

#: AR4SI claims and the finding fields that feed each.
SNP_CATEGORIES = {
    "instance-identity": ("snp.report_data",),
    "hardware": ("snp.product", "snp.signing_key", "snp.tcb", "snp.launch_tcb"),
    "executables": ("snp.measurement",),
    "configuration": ("snp.policy", "snp.vmpl", "snp.platform"),
}

_TCB_PARTS = ("bootloader", "tee", "snp", "microcode", "fmc")


def appraise_snp(
    verified: VerifiedSnpReport, policy: SnpPolicy, binding: SessionBinding, *, name: str = "cpu0"
) -> DeviceAppraisal:
    """Every check, every failure reported: binding, debug, migration agent, SMT, CXL, single
    socket, alias check, undefined PLATFORM_INFO bits, VMPL, key type, product, minimum TCB,
    launch measurement."""
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
    _appraise_policy_and_platform(c, r.policy, r.platform_info, policy)
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
    for field, judged_tcb in judged:
        for part in _TCB_PARTS:
            minimum = getattr(minimum_tcb, part)
            actual = getattr(judged_tcb, part)
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
            # REPORTED_TCB, the TCB the VCEK certifies, whatever else was judged: a host may
            # lower it below LAUNCH_TCB, and the claim must not then state the higher one.
            "tcb": {p: getattr(verified.tcb, p) for p in _TCB_PARTS},
        }
    }
    return DeviceAppraisal(name, tuple(c.findings), SNP_CATEGORIES, claims)


def _appraise_policy_and_platform(
    c: FindingCollector, guest: GuestPolicy, platform: PlatformInfo, policy: SnpPolicy
) -> None:
    """The guest POLICY bits the owner set at launch (CXL_ALLOW, SINGLE_SOCKET) and the
    PLATFORM_INFO facts about the host (ALIAS_CHECK_COMPLETE, undefined bits); docs/snp.md
    (1.1, 1.2) gives each default's reason. Findings only: no claim changes (``ear.lessee.snp``
    is compared as logged by the audit replay)."""
    c.expect(
        policy.unsafe_allow_cxl or not guest.cxl_allow,
        "snp.policy.cxl_allow",
        False,
        True,
        detail="the guest's memory may be placed in CXL-attached memory",
    )
    c.expect(
        guest.single_socket or not policy.require_single_socket,
        "snp.policy.single_socket",
        True,
        False,
    )
    c.expect(
        platform.alias_check_complete or not policy.require_alias_check_complete,
        "snp.platform.alias_check_complete",
        True,
        False,
        detail="the firmware did not check the DRAM for aliases (BadRAM, CVE-2024-21944)",
    )
    refused = platform.unknown_bits & ~policy.allowed_platform_info_unknown_bits
    c.expect(
        not refused,
        "snp.platform.unknown_bits",
        f"0x{policy.allowed_platform_info_unknown_bits:x}",
        f"0x{refused:x}",
        detail="PLATFORM_INFO bits the ABI does not define are set: "
        + ", ".join(str(b) for b in range(64) if refused >> b & 1),
    )
