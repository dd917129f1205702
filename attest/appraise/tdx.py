"""Appraise a verified TDX quote against the policy's ``tdx`` section."""

from __future__ import annotations

from datetime import timedelta

from attest.appraise.common import DeviceAppraisal, FindingCollector
from attest.binding import SessionBinding
from attest.policy import TdxPolicy
from attest.tdx.quote import TdReport
from attest.tdx.verify import VerifiedTdxQuote

TDX_CATEGORIES = {
    "instance-identity": ("tdx.report_data",),
    "hardware": ("tdx.tcb_status", "tdx.collateral"),
    "executables": ("tdx.mr_td", "tdx.rtmr"),
    "configuration": (
        "tdx.td_attributes",
        "tdx.xfam",
        "tdx.mr_config_id",
        "tdx.mr_owner",
        "tdx.mr_servicetd",
    ),
}


def appraise_tdx(
    verified: VerifiedTdxQuote,
    policy: TdxPolicy,
    binding: SessionBinding,
    *,
    name: str = "cpu0",
    max_collateral_age: timedelta | None = None,
) -> DeviceAppraisal:
    """Binding, TD attributes and XFAM, TCB status, MRTD and RTMR allow-lists, MRCONFIGID,
    MROWNER, MROWNERCONFIG and MRSERVICETD allow-lists, collateral age; every failure
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
    _appraise_td_attributes(c, body, policy)
    status = verified.tcb_status.value
    accepted = [s.value for s in policy.accepted_tcb_statuses]
    c.expect(status in accepted, "tdx.tcb_status", accepted, status)
    if not policy.unsafe_any_mrtd:
        allowed = list(policy.allowed_mrtd or ())
        c.expect(body.mr_td.hex() in allowed, "tdx.mr_td", allowed, body.mr_td.hex())
    for rule in policy.rtmrs:
        actual = body.rtmrs[rule.index].hex()
        c.expect(actual in rule.allowed, f"tdx.rtmr[{rule.index}]", list(rule.allowed), actual)
    _appraise_td_identity(c, body, policy)
    claims = {
        "ear.lessee.tdx": {
            "mr_td": body.mr_td.hex(),
            "rtmrs": [r.hex() for r in body.rtmrs],
            "tcb_status": status,
            "advisory_ids": list(verified.advisory_ids),
            "fmspc": verified.fmspc.hex(),
            "debug": body.debug,
            "td_attributes": body.td_attributes.hex(),
            "td_attribute_flags": body.td_attribute_flags,
            "td_attributes_reserved_bits": list(body.td_attributes_reserved_bits),
            "xfam": body.xfam.hex(),
        }
    }
    return DeviceAppraisal(name, tuple(c.findings), TDX_CATEGORIES, claims)


def _appraise_td_attributes(c: FindingCollector, body: TdReport, policy: TdxPolicy) -> None:
    """Every TD_ATTRIBUTES bit the policy refuses is its own finding (``tdx.td_attributes.<name>``,
    reserved bits together as ``tdx.td_attributes.reserved``), and XFAM against its allow-list.

    The host picks these when it creates the TD and MRTD does not measure them, so an allowed
    MRTD says nothing about them; docs/tdx.md ("TD attributes") gives each default's reason."""
    c.expect(
        policy.unsafe_allow_debug or not body.debug, "tdx.td_attributes.debug", False, body.debug
    )
    c.expect(
        body.sept_ve_disable or not policy.require_sept_ve_disable,
        "tdx.td_attributes.sept_ve_disable",
        True,
        False,
        detail="EPT violations on pending private pages reach the guest as #VE",
    )
    c.expect(
        policy.unsafe_allow_migratable or not body.migratable,
        "tdx.td_attributes.migratable",
        False,
        True,
        detail="a Migration TD may export this TD to a platform this quote does not attest",
    )
    c.expect(policy.allow_pks or not body.pks, "tdx.td_attributes.pks", False, True)
    c.expect(policy.allow_kl or not body.kl, "tdx.td_attributes.kl", False, True)
    c.expect(policy.allow_perfmon or not body.perfmon, "tdx.td_attributes.perfmon", False, True)
    allowed = set(policy.unsafe_allow_td_attribute_bits)
    refused = [b for b in body.td_attributes_reserved_bits if b not in allowed]
    c.expect(
        not refused,
        "tdx.td_attributes.reserved",
        sorted(allowed),
        refused,
        detail="TD_ATTRIBUTES bits the TDX 1.0 ABI reserves are set",
    )
    if policy.allowed_xfam is not None:
        allowed_xfam = list(policy.allowed_xfam)
        c.expect(body.xfam.hex() in allowed_xfam, "tdx.xfam", allowed_xfam, body.xfam.hex())


def _appraise_td_identity(c: FindingCollector, body: TdReport, policy: TdxPolicy) -> None:
    """MRCONFIGID, MROWNER, MROWNERCONFIG and MRSERVICETD against their allow-lists, when the
    policy gives one (docs/tdx.md, section 7). Findings only: no claim is added, since the
    audit replay compares ``ear.lessee.tdx`` with the logged result."""
    for field, allowed, value in (
        ("tdx.mr_config_id", policy.allowed_mr_config_id, body.mr_config_id),
        ("tdx.mr_owner", policy.allowed_mr_owner, body.mr_owner),
        ("tdx.mr_owner_config", policy.allowed_mr_owner_config, body.mr_owner_config),
    ):
        if allowed is not None:
            c.expect(value.hex() in allowed, field, list(allowed), value.hex())
    if policy.allowed_mr_servicetd is not None:
        allowed_servicetd = list(policy.allowed_mr_servicetd)
        servicetd = body.mr_service_td
        if servicetd is None:
            c.expect(
                False,
                "tdx.mr_servicetd",
                allowed_servicetd,
                None,
                detail="a TDX 1.0 TD report (quote v4, or v5 body type 2) carries no MRSERVICETD",
            )
        else:
            c.expect(
                servicetd.hex() in allowed_servicetd,
                "tdx.mr_servicetd",
                allowed_servicetd,
                servicetd.hex(),
            )
