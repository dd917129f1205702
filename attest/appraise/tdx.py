"""Appraise a verified TDX quote against the policy's ``tdx`` section."""

from __future__ import annotations

from datetime import timedelta

from attest.appraise.common import DeviceAppraisal, FindingCollector
from attest.binding import SessionBinding
from attest.policy import TdxPolicy
from attest.tdx.verify import VerifiedTdxQuote

TDX_CATEGORIES = {
    "instance-identity": ("tdx.report_data",),
    "hardware": ("tdx.tcb_status", "tdx.collateral"),
    "executables": ("tdx.mr_td", "tdx.rtmr"),
    "configuration": ("tdx.td_attributes",),
}


def appraise_tdx(
    verified: VerifiedTdxQuote,
    policy: TdxPolicy,
    binding: SessionBinding,
    *,
    name: str = "cpu0",
    max_collateral_age: timedelta | None = None,
) -> DeviceAppraisal:
    """Binding, DEBUG, TCB status, MRTD and RTMR allow-lists, collateral age; every failure
    reported. The collateral's age is judged at the verification time."""
    body = verified.body
    c = FindingCollector(name)
    if max_collateral_age is not None:
        for what, issued in (
            ("tcb_info", verified.collateral.tcb_info.issue_date),
            ("qe_identity", verified.collateral.qe_identity.issue_date),
        ):
            age = verified.verified_at - issued
            c.expect(
                age <= max_collateral_age,
                f"tdx.collateral.{what}.age",
                f"<= {int(max_collateral_age.total_seconds())} s",
                f"{int(age.total_seconds())} s",
                detail=f"issued {issued.isoformat()}",
            )
    c.expect(
        binding.matches_report_data(body.report_data),
        "tdx.report_data",
        binding.report_data.hex(),
        body.report_data.hex(),
        detail="the CPU quote does not carry this session's binding",
    )
    c.expect(
        policy.unsafe_allow_debug or not body.debug, "tdx.td_attributes.debug", False, body.debug
    )
    status = verified.tcb_status.value
    accepted = [s.value for s in policy.accepted_tcb_statuses]
    c.expect(status in accepted, "tdx.tcb_status", accepted, status)
    if not policy.unsafe_any_mrtd:
        allowed = list(policy.allowed_mrtd or ())
        c.expect(body.mr_td.hex() in allowed, "tdx.mr_td", allowed, body.mr_td.hex())
    for rule in policy.rtmrs:
        actual = body.rtmrs[rule.index].hex()
        c.expect(actual in rule.allowed, f"tdx.rtmr[{rule.index}]", list(rule.allowed), actual)
    claims = {
        "ear.lessee.tdx": {
            "mr_td": body.mr_td.hex(),
            "rtmrs": [r.hex() for r in body.rtmrs],
            "tcb_status": status,
            "advisory_ids": list(verified.advisory_ids),
            "fmspc": verified.fmspc.hex(),
            "debug": body.debug,
        }
    }
    return DeviceAppraisal(name, tuple(c.findings), TDX_CATEGORIES, claims)
