"""Report fields no policy could appraise before (security review): SEV-SNP guest POLICY
CXL_ALLOW and SINGLE_SOCKET, PLATFORM_INFO ALIAS_CHECK_COMPLETE and undefined bits; TDX
MRCONFIGID, MROWNER, MROWNERCONFIG and MRSERVICETD.

Each finding fires on an edited report and not by default on the real vectors. SEV-SNP: the
emulated report is edited inside its signed bytes and re-signed with the emulated VCEK, as a
host or firmware could make it (the real reports are signed by AMD and cannot be edited). TDX:
the verified dcap-qvl quote's typed facts are replaced, as ``test_tdx_attributes.py`` does (a
quote edited before verification fails Intel's signature).
"""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from agent.demo import EMULATED_LAUNCH_MEASUREMENT, demo_policy
from agent.emulation import EmulationPki
from agent.emulation.snp import EmulatedSnp, SnpTcb
from attest.appraise.snp import appraise_snp
from attest.appraise.tdx import appraise_tdx
from attest.binding import SessionBinding
from attest.ear import CONTRAINDICATED_VALUE, Status
from attest.errors import InputError
from attest.findings import Finding
from attest.policy import SnpPolicy, TdxPolicy, load_policy
from attest.snp.report import (
    OFF_PLATFORM_INFO,
    OFF_POLICY,
    OFF_SIGNATURE,
    PLAT_ALIAS_CHECK_COMPLETE,
    PLAT_SMT_EN,
    POLICY_CXL_ALLOW,
    POLICY_SINGLE_SOCKET,
    SIGNED_SIZE,
    parse_report,
)
from attest.snp.verify import VerifiedSnpReport, load_amd_certificates, verify_snp_report
from attest.tdx.quote import parse_quote
from attest.tdx.verify import VerifiedTdxQuote, verify_quote
from tests.appraise.test_snp_appraisal import _go_sev_guest, _virtee
from tests.tdx import helpers as h

# --- SEV-SNP ---------------------------------------------------------------------------------

TCB = SnpTcb(bootloader=4, tee=0, snp=24, microcode=219)
RD = b"\x22" * 64
BINDING = SessionBinding(report_data=RD, gpu_nonce=bytes(32))
MEASUREMENT = "11" * 48
NEW_SNP_FINDINGS = {
    "snp.policy.cxl_allow",
    "snp.policy.single_socket",
    "snp.platform.alias_check_complete",
    "snp.platform.unknown_bits",
}


def _snp(
    pki: EmulationPki,
    *,
    policy_bits: int = 0,
    platform_info: int | None = None,
    measurement: bytes = b"\x11" * 48,
) -> VerifiedSnpReport:
    """An emulated report, POLICY bits ORed in and PLATFORM_INFO replaced, re-signed by the
    emulated VCEK of its TCB, then verified for real (chain, signature, CRL)."""
    snp = EmulatedSnp(pki, measurement=measurement, tcb=TCB)
    r = bytearray(snp.report(RD))
    struct.pack_into("<Q", r, OFF_POLICY, struct.unpack_from("<Q", r, OFF_POLICY)[0] | policy_bits)
    if platform_info is not None:
        struct.pack_into("<Q", r, OFF_PLATFORM_INFO, platform_info)
    der = pki.vcek(TCB).key.sign(bytes(r[:SIGNED_SIZE]), ec.ECDSA(hashes.SHA384()))
    sig_r, sig_s = decode_dss_signature(der)
    r[OFF_SIGNATURE : OFF_SIGNATURE + 48] = sig_r.to_bytes(48, "little")
    r[OFF_SIGNATURE + 72 : OFF_SIGNATURE + 120] = sig_s.to_bytes(48, "little")
    at = datetime.now(UTC)
    vcek, chain = snp.certificates()
    certs = (*load_amd_certificates(vcek), *load_amd_certificates(chain))
    return verify_snp_report(bytes(r), certs, at=at, crl=snp.crl(at), extra_arks=[pki.ark.cert])


def _snp_policy(**kw: Any) -> SnpPolicy:
    return SnpPolicy(allowed_measurements=(MEASUREMENT,), **kw)


def _snp_findings(v: VerifiedSnpReport, policy: SnpPolicy) -> dict[str, Finding]:
    found = appraise_snp(v, policy, BINDING).findings
    return {f.field: f for f in found}


def test_real_reports_set_none_of_the_new_bits() -> None:
    """Both real reports (Milan, 2023 firmware): no CXL_ALLOW, no SINGLE_SOCKET,
    ALIAS_CHECK_COMPLETE clear (firmware before the BadRAM mitigation), no undefined
    PLATFORM_INFO bit; PLATFORM_INFO is SMT_EN alone."""
    for v in (_virtee(), _go_sev_guest()):
        r = v.report
        assert (r.policy.cxl_allow, r.policy.single_socket) == (False, False)
        assert r.platform_info.raw == PLAT_SMT_EN
        assert not r.platform_info.alias_check_complete and r.platform_info.unknown_bits == 0


def test_real_reports_have_no_new_finding_by_default() -> None:
    for v, expected in ((_virtee(), set()), (_go_sev_guest(), {"snp.policy.debug"})):
        policy = SnpPolicy(allowed_measurements=(v.report.measurement.hex(),))
        binding = SessionBinding(report_data=v.report.report_data, gpu_nonce=bytes(32))
        assert {f.field for f in appraise_snp(v, policy, binding).findings} == expected


def test_real_reports_refused_when_the_alias_check_is_required() -> None:
    """Why ``require_alias_check_complete`` is opt-in: the real reports would be refused."""
    v = _virtee()
    policy = SnpPolicy(
        allowed_measurements=(v.report.measurement.hex(),), require_alias_check_complete=True
    )
    binding = SessionBinding(report_data=v.report.report_data, gpu_nonce=bytes(32))
    found = appraise_snp(v, policy, binding).findings
    assert [(f.field, f.expected, f.actual) for f in found] == [
        ("snp.platform.alias_check_complete", True, False)
    ]


def test_emulated_report_affirmed_under_the_demo_policy(pki: EmulationPki) -> None:
    doc = demo_policy(list(pki.root_fingerprints().values()), "00" * 32)
    policy = load_policy(json.dumps(doc)).snp
    assert policy is not None
    v = _snp(pki, measurement=EMULATED_LAUNCH_MEASUREMENT)
    assert appraise_snp(v, policy, BINDING).status is Status.AFFIRMING


def test_cxl_allow_refused_by_default(pki: EmulationPki) -> None:
    v = _snp(pki, policy_bits=POLICY_CXL_ALLOW)
    assert v.report.policy.cxl_allow
    a = appraise_snp(v, _snp_policy(), BINDING)
    assert [(f.field, f.expected, f.actual) for f in a.findings] == [
        ("snp.policy.cxl_allow", False, True)
    ]
    assert a.status is Status.CONTRAINDICATED
    assert a.trust_vector()["configuration"] == CONTRAINDICATED_VALUE
    lax = _snp_policy(unsafe_allow_cxl=True)
    assert appraise_snp(v, lax, BINDING).status is Status.AFFIRMING
    doc = {"name": "t", "cpu_tees": ["snp"], "snp": {"unsafe_any_measurement": True}}
    doc["snp"]["unsafe_allow_cxl"] = True  # type: ignore[index]
    assert "snp.unsafe_allow_cxl" in load_policy(json.dumps(doc)).unsafe_settings()


def test_single_socket_required_on_request(pki: EmulationPki) -> None:
    plain = _snp(pki)
    assert set(_snp_findings(plain, _snp_policy())) == set()
    required = _snp_policy(require_single_socket=True)
    f = _snp_findings(plain, required)
    assert list(f) == ["snp.policy.single_socket"]
    assert (f["snp.policy.single_socket"].expected, f["snp.policy.single_socket"].actual) == (
        True,
        False,
    )
    single = _snp(pki, policy_bits=POLICY_SINGLE_SOCKET)
    assert single.report.policy.single_socket
    assert appraise_snp(single, required, BINDING).status is Status.AFFIRMING
    assert appraise_snp(single, _snp_policy(), BINDING).status is Status.AFFIRMING


def test_alias_check_complete_required_on_request(pki: EmulationPki) -> None:
    required = _snp_policy(require_alias_check_complete=True)
    assert list(_snp_findings(_snp(pki), required)) == ["snp.platform.alias_check_complete"]
    checked = _snp(pki, platform_info=PLAT_SMT_EN | PLAT_ALIAS_CHECK_COMPLETE)
    assert checked.report.platform_info.alias_check_complete
    assert appraise_snp(checked, required, BINDING).status is Status.AFFIRMING


def test_undefined_platform_info_bits_refused_unless_allowed(pki: EmulationPki) -> None:
    v = _snp(pki, platform_info=PLAT_SMT_EN | 1 << 6 | 1 << 8)
    assert v.report.platform_info.unknown_bits == 0x140
    f = _snp_findings(v, _snp_policy())
    assert list(f) == ["snp.platform.unknown_bits"]
    assert (f["snp.platform.unknown_bits"].expected, f["snp.platform.unknown_bits"].actual) == (
        "0x0",
        "0x140",
    )
    assert "6, 8" in f["snp.platform.unknown_bits"].detail
    partly = _snp_findings(v, _snp_policy(allowed_platform_info_unknown_bits=1 << 6))
    assert partly["snp.platform.unknown_bits"].actual == "0x100"
    allowed = _snp_policy(allowed_platform_info_unknown_bits=0x140)
    assert appraise_snp(v, allowed, BINDING).status is Status.AFFIRMING
    top = _snp(pki, platform_info=PLAT_SMT_EN | 1 << 63)
    assert _snp_findings(top, _snp_policy())["snp.platform.unknown_bits"].actual == hex(1 << 63)


def test_every_new_snp_finding_at_once(pki: EmulationPki) -> None:
    v = _snp(pki, policy_bits=POLICY_CXL_ALLOW, platform_info=PLAT_SMT_EN | 1 << 6)
    strict = _snp_policy(require_single_socket=True, require_alias_check_complete=True)
    assert set(_snp_findings(v, strict)) == NEW_SNP_FINDINGS


def test_claims_unchanged_by_the_new_bits(pki: EmulationPki) -> None:
    """No new claim keys: the audit replay compares ``ear.lessee.snp`` with the logged one."""
    plain = appraise_snp(_snp(pki), _snp_policy(), BINDING)
    edited = _snp(pki, policy_bits=POLICY_CXL_ALLOW, platform_info=PLAT_SMT_EN | 1 << 6)
    assert appraise_snp(edited, _snp_policy(), BINDING).claims == plain.claims


@pytest.mark.parametrize(
    "mask",
    [1, PLAT_ALIAS_CHECK_COMPLETE, 1 << 7, (1 << 8) | PLAT_SMT_EN, -1, 1 << 64],
)
def test_platform_info_mask_must_name_undefined_bits_only(mask: int) -> None:
    doc = {"name": "t", "cpu_tees": ["snp"], "snp": {"unsafe_any_measurement": True}}
    doc["snp"]["allowed_platform_info_unknown_bits"] = mask  # type: ignore[index]
    with pytest.raises(InputError, match="allowed_platform_info_unknown_bits"):
        load_policy(json.dumps(doc))


def test_platform_info_mask_loads_and_is_listed_as_unsafe() -> None:
    doc = {"name": "t", "cpu_tees": ["snp"], "snp": {"unsafe_any_measurement": True}}
    for bad in (True, "0x40", 64.0):
        doc["snp"]["allowed_platform_info_unknown_bits"] = bad  # type: ignore[index]
        with pytest.raises(InputError):
            load_policy(json.dumps(doc))
    doc["snp"]["allowed_platform_info_unknown_bits"] = (1 << 64) - 1 - 0xBF  # type: ignore[index]
    policy = load_policy(json.dumps(doc))
    assert "snp.allowed_platform_info_unknown_bits" in policy.unsafe_settings()
    doc["snp"]["allowed_platform_info_unknown_bits"] = 0  # type: ignore[index]
    assert load_policy(json.dumps(doc)).unsafe_settings() == ["snp.unsafe_any_measurement"]


def test_snp_report_parses_the_new_bits_from_signed_bytes(pki: EmulationPki) -> None:
    v = _snp(pki, policy_bits=POLICY_CXL_ALLOW | POLICY_SINGLE_SOCKET)
    again = parse_report(v.report.raw)
    assert again.policy.cxl_allow and again.policy.single_socket


# --- TDX -------------------------------------------------------------------------------------

ZERO48 = "00" * 48
TDX_IDENTITY_FIELDS = {
    "tdx.mr_config_id": ("allowed_mr_config_id", "mr_config_id"),
    "tdx.mr_owner": ("allowed_mr_owner", "mr_owner"),
    "tdx.mr_owner_config": ("allowed_mr_owner_config", "mr_owner_config"),
}


@cache
def _verified() -> VerifiedTdxQuote:
    return verify_quote(h.dcap_quote(), h.dcap_collateral(), at=h.DCAP_AT)


def _with_body(**fields: Any) -> VerifiedTdxQuote:
    v = _verified()
    return replace(v, quote=replace(v.quote, body=replace(v.quote.body, **fields)))


def _tdx_policy(**kw: Any) -> TdxPolicy:
    return TdxPolicy(allowed_mrtd=(_verified().body.mr_td.hex(),), **kw)


def _tdx_findings(v: VerifiedTdxQuote, policy: TdxPolicy) -> dict[str, Finding]:
    binding = SessionBinding(report_data=v.body.report_data, gpu_nonce=bytes(32))
    return {f.field: f for f in appraise_tdx(v, policy, binding).findings}


def test_real_quotes_carry_zero_identity_fields() -> None:
    """Every real quote: MRCONFIGID, MROWNER, MROWNERCONFIG all zero; MRSERVICETD zero in the
    TDX 1.5 bodies (v5 body type 3), absent in the TDX 1.0 ones."""
    quotes = {
        "dcap": (h.dcap_quote(), False),
        "dcap_outdated": (h.outdated_quote(), True),
        "spr_e4": (parse_quote(h.spr_e4_bytes()), False),
        "v5_sample": (parse_quote(h.v5_sample_bytes()), True),
        "cos_113": (parse_quote(h.cos_buffer(), allow_trailing_zero_padding=True), False),
    }
    for name, (q, tdx15) in quotes.items():
        b = q.body
        assert b.mr_config_id == b.mr_owner == b.mr_owner_config == bytes(48), name
        assert b.mr_service_td == (bytes(48) if tdx15 else None), name


def test_real_quote_has_no_new_finding_by_default() -> None:
    v = _verified()
    assert _tdx_findings(v, _tdx_policy()) == {}
    pinned = _tdx_policy(
        allowed_mr_config_id=(ZERO48,),
        allowed_mr_owner=(ZERO48,),
        allowed_mr_owner_config=(ZERO48,),
    )
    assert _tdx_findings(v, pinned) == {}


@pytest.mark.parametrize("finding", sorted(TDX_IDENTITY_FIELDS))
def test_identity_allow_lists(finding: str) -> None:
    policy_field, body_field = TDX_IDENTITY_FIELDS[finding]
    other = "ab" * 48
    v = _with_body(**{body_field: bytes.fromhex(other)})
    assert _tdx_findings(v, _tdx_policy()) == {}, "None accepts any value"
    f = _tdx_findings(v, _tdx_policy(**{policy_field: (ZERO48,)}))
    assert list(f) == [finding]
    assert (f[finding].expected, f[finding].actual) == ([ZERO48], other)
    binding = SessionBinding(report_data=v.body.report_data, gpu_nonce=bytes(32))
    refused = appraise_tdx(v, _tdx_policy(**{policy_field: (ZERO48,)}), binding)
    assert refused.trust_vector()["configuration"] == CONTRAINDICATED_VALUE
    assert _tdx_findings(v, _tdx_policy(**{policy_field: (ZERO48, other)})) == {}


def test_every_identity_field_judged_on_its_own() -> None:
    v = _with_body(mr_config_id=b"\xaa" * 48, mr_owner=b"\xbb" * 48, mr_owner_config=b"\xcc" * 48)
    pinned = _tdx_policy(
        allowed_mr_config_id=(ZERO48,),
        allowed_mr_owner=(ZERO48,),
        allowed_mr_owner_config=(ZERO48,),
    )
    assert set(_tdx_findings(v, pinned)) == set(TDX_IDENTITY_FIELDS)


def test_mr_servicetd_allow_list() -> None:
    # dcap-qvl's quote is v4: a TDX 1.0 body, no MRSERVICETD.
    assert _verified().body.mr_service_td is None
    assert _tdx_findings(_verified(), _tdx_policy()) == {}
    pinned = _tdx_policy(allowed_mr_servicetd=(ZERO48,))
    f = _tdx_findings(_verified(), pinned)["tdx.mr_servicetd"]
    assert (f.expected, f.actual) == ([ZERO48], None) and "TDX 1.0" in f.detail
    unbound = _with_body(tee_tcb_svn_2=bytes(16), mr_service_td=bytes(48))
    assert _tdx_findings(unbound, pinned) == {}
    bound = _with_body(tee_tcb_svn_2=bytes(16), mr_service_td=b"\x5e" * 48)
    assert _tdx_findings(bound, _tdx_policy()) == {}
    f = _tdx_findings(bound, pinned)["tdx.mr_servicetd"]
    assert (f.expected, f.actual) == ([ZERO48], "5e" * 48)
    assert _tdx_findings(bound, _tdx_policy(allowed_mr_servicetd=("5e" * 48,))) == {}


def test_tdx_claims_unchanged_by_the_new_fields() -> None:
    """No new claim keys (the audit replay compares ``ear.lessee.tdx`` as logged)."""
    v = _verified()
    binding = SessionBinding(report_data=v.body.report_data, gpu_nonce=bytes(32))
    plain = appraise_tdx(v, _tdx_policy(), binding)
    edited = _with_body(mr_config_id=b"\xaa" * 48, mr_owner=b"\xbb" * 48)
    assert appraise_tdx(edited, _tdx_policy(), binding).claims == plain.claims
    assert sorted(plain.claims["ear.lessee.tdx"]) == [
        "advisory_ids",
        "debug",
        "fmspc",
        "mr_td",
        "rtmrs",
        "tcb_status",
        "td_attribute_flags",
        "td_attributes",
        "td_attributes_reserved_bits",
        "xfam",
    ]


@pytest.mark.parametrize(
    "field", ["allowed_mr_config_id", "allowed_mr_owner", "allowed_mr_owner_config"]
)
def test_identity_values_are_48_byte_lowercase_hex(field: str) -> None:
    for bad in (["00" * 32], ["AB" * 48], "00" * 48):
        doc = {"name": "t", "cpu_tees": ["tdx"], "tdx": {"unsafe_any_mrtd": True, field: bad}}
        with pytest.raises(InputError):
            load_policy(json.dumps(doc))
