"""TD_ATTRIBUTES and XFAM appraisal: each named bit under each policy setting, reserved bits,
the real quotes' attributes, and a bit-by-bit oracle over random values.

The synthetic cases take dcap-qvl's real quote, verified against its real collateral, and edit
TD_ATTRIBUTES (or XFAM) in the *verified* result, as ``tests/tdx/test_cli.py`` does for DEBUG:
no quote signed by Intel's QE carries these bits, and a quote edited before verification fails
its signature, so only the appraisal of an edited verified result tests the rules themselves.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.appraise.tdx import appraise_tdx
from attest.binding import SessionBinding
from attest.ear import CONTRAINDICATED_VALUE, Status
from attest.errors import InputError
from attest.findings import Finding
from attest.policy import TdxPolicy, load_policy
from attest.tdx.quote import (
    TD_ATTR_DEBUG,
    TD_ATTR_KL,
    TD_ATTR_MIGRATABLE,
    TD_ATTR_PERFMON,
    TD_ATTR_PKS,
    TD_ATTR_RESERVED_MASK,
    TD_ATTR_SEPT_VE_DISABLE,
    TdxQuote,
    parse_quote,
)
from attest.tdx.verify import VerifiedTdxQuote, verify_quote
from tests.tdx import helpers as h

#: Bit numbers of the named attributes (Linux asm/shared/tdx.h, Intel's TDX module sources).
NAMED = {"debug": 0, "sept_ve_disable": 28, "migratable": 29, "pks": 30, "kl": 31, "perfmon": 63}
RESERVED = tuple(i for i in range(64) if i not in NAMED.values())
#: dcap-qvl's quote as Intel's QE signed it: SEPT_VE_DISABLE only.
DCAP_TD_ATTRIBUTES = TD_ATTR_SEPT_VE_DISABLE


@cache
def _verified() -> VerifiedTdxQuote:
    return verify_quote(h.dcap_quote(), h.dcap_collateral(), at=h.DCAP_AT)


def _with(td_attributes: int | None = None, xfam: bytes | None = None) -> VerifiedTdxQuote:
    """The verified dcap-qvl quote with TD_ATTRIBUTES (as an integer) and/or XFAM replaced."""
    v = _verified()
    body = v.quote.body
    if td_attributes is not None:
        body = replace(body, td_attributes=td_attributes.to_bytes(8, "little"))
    if xfam is not None:
        body = replace(body, xfam=xfam)
    return replace(v, quote=replace(v.quote, body=body))


def _policy(**kw: Any) -> TdxPolicy:
    return TdxPolicy(allowed_mrtd=(_verified().body.mr_td.hex(),), **kw)


def _findings(v: VerifiedTdxQuote, policy: TdxPolicy) -> dict[str, Finding]:
    binding = SessionBinding(report_data=v.body.report_data, gpu_nonce=b"\0" * 32)
    found = appraise_tdx(v, policy, binding).findings
    by_field = {f.field: f for f in found}
    assert len(by_field) == len(found), "one finding per field"
    return by_field


def _attribute_fields(v: VerifiedTdxQuote, policy: TdxPolicy) -> set[str]:
    return {k for k in _findings(v, policy) if k.startswith(("tdx.td_attributes", "tdx.xfam"))}


def _real_quotes() -> dict[str, TdxQuote]:
    return {
        "dcap": h.dcap_quote(),
        "dcap_outdated": h.outdated_quote(),
        "spr_e4": parse_quote(h.spr_e4_bytes()),
        "v5_sample": parse_quote(h.v5_sample_bytes()),
        "cos_113": parse_quote(h.cos_buffer(), allow_trailing_zero_padding=True),
    }


# --- parsing: constants and the real quotes -------------------------------------------------


def test_constants_are_the_abi_bits() -> None:
    assert TD_ATTR_DEBUG == 1 << 0 and TD_ATTR_SEPT_VE_DISABLE == 1 << 28
    assert TD_ATTR_MIGRATABLE == 1 << 29 and TD_ATTR_PKS == 1 << 30
    assert TD_ATTR_KL == 1 << 31 and TD_ATTR_PERFMON == 1 << 63
    # TUD 7:1, SEC 27:8, bits 62:32: everything but the six named bits.
    assert TD_ATTR_RESERVED_MASK == 0x7FFF_FFFF_0FFF_FFFE
    assert sum(1 << i for i in RESERVED) == TD_ATTR_RESERVED_MASK


@pytest.mark.parametrize(
    "name,td_attributes,flags",
    [
        ("dcap", "0000001000000000", {"sept_ve_disable"}),
        ("dcap_outdated", "0000001000000000", {"sept_ve_disable"}),
        ("spr_e4", "0000004000000000", {"pks"}),
        ("v5_sample", "0000001000000000", {"sept_ve_disable"}),
        ("cos_113", "0000001000000000", {"sept_ve_disable"}),
    ],
)
def test_real_quotes_decode(name: str, td_attributes: str, flags: set[str]) -> None:
    body = _real_quotes()[name].body
    assert body.td_attributes.hex() == td_attributes
    assert body.td_attribute_flags == {n: n in flags for n in NAMED}
    assert (body.debug, body.sept_ve_disable, body.migratable) == (
        False,
        "sept_ve_disable" in flags,
        False,
    )
    assert (body.pks, body.kl, body.perfmon) == ("pks" in flags, False, False)
    assert body.td_attributes_reserved_bits == ()


# --- the default policy on the real quotes ---------------------------------------------------


@pytest.mark.parametrize("name", ["dcap", "dcap_outdated", "spr_e4", "v5_sample", "cos_113"])
def test_default_policy_accepts_every_real_quotes_attributes(name: str) -> None:
    """No real vector's TD_ATTRIBUTES or XFAM is refused by default (SPR_E4 included: PKS set,
    SEPT_VE_DISABLE clear); with ``require_sept_ve_disable`` SPR_E4 alone is refused."""
    body = _real_quotes()[name].body
    v = replace(_verified(), quote=replace(_verified().quote, body=body))
    assert _attribute_fields(v, _policy()) == set()
    strict = _attribute_fields(v, _policy(require_sept_ve_disable=True))
    assert strict == ({"tdx.td_attributes.sept_ve_disable"} if name == "spr_e4" else set())


def test_default_verdict_on_the_real_quote_is_unchanged() -> None:
    a = appraise_tdx(
        _verified(),
        _policy(),
        SessionBinding(report_data=_verified().body.report_data, gpu_nonce=b"\0" * 32),
    )
    assert a.findings == () and a.status is Status.AFFIRMING
    tdx = a.claims["ear.lessee.tdx"]
    assert tdx["td_attributes"] == "0000001000000000" and tdx["debug"] is False
    assert tdx["td_attribute_flags"] == {n: n == "sept_ve_disable" for n in NAMED}
    assert tdx["td_attributes_reserved_bits"] == [] and tdx["xfam"] == "e702060000000000"
    json.dumps(a.claims)  # the claims travel in the EAR: JSON values only


# --- each named attribute under each setting -------------------------------------------------


@pytest.mark.parametrize(
    "bit,policy,field",
    [
        # DEBUG: refused unless unsafe_allow_debug.
        (TD_ATTR_DEBUG, {}, "tdx.td_attributes.debug"),
        (TD_ATTR_DEBUG, {"unsafe_allow_debug": True}, None),
        # MIGRATABLE: refused unless unsafe_allow_migratable.
        (TD_ATTR_MIGRATABLE, {}, "tdx.td_attributes.migratable"),
        (TD_ATTR_MIGRATABLE, {"unsafe_allow_migratable": True}, None),
        # PKS: accepted unless allow_pks is false.
        (TD_ATTR_PKS, {}, None),
        (TD_ATTR_PKS, {"allow_pks": False}, "tdx.td_attributes.pks"),
        # KL: refused unless allow_kl.
        (TD_ATTR_KL, {}, "tdx.td_attributes.kl"),
        (TD_ATTR_KL, {"allow_kl": True}, None),
        # PERFMON: accepted unless allow_perfmon is false.
        (TD_ATTR_PERFMON, {}, None),
        (TD_ATTR_PERFMON, {"allow_perfmon": False}, "tdx.td_attributes.perfmon"),
    ],
)
def test_named_attribute_set(bit: int, policy: dict[str, bool], field: str | None) -> None:
    v = _with(DCAP_TD_ATTRIBUTES | bit)
    found = _findings(v, _policy(**policy))
    expected = set() if field is None else {field}
    assert set(found) == expected
    if field is not None:
        f = found[field]
        assert (f.expected, f.actual) == (False, True)
        assert f.severity.value == "reject"
    # The same bit clear is never a finding, whatever the setting.
    assert _attribute_fields(_with(DCAP_TD_ATTRIBUTES), _policy(**policy)) == set()


@pytest.mark.parametrize("require", [False, True])
def test_sept_ve_disable_is_required_only_on_request(require: bool) -> None:
    clear = _findings(_with(0), _policy(require_sept_ve_disable=require))
    if require:
        f = clear["tdx.td_attributes.sept_ve_disable"]
        assert (f.expected, f.actual) == (True, False) and "#VE" in f.detail
        assert set(clear) == {"tdx.td_attributes.sept_ve_disable"}
    else:
        assert clear == {}
    assert _findings(_with(TD_ATTR_SEPT_VE_DISABLE), _policy(require_sept_ve_disable=require)) == {}


@pytest.mark.parametrize("bit", [1, 4, 5, 6, 7, 8, 16, 27, 32, 47, 62])
def test_reserved_bit_refused_unless_listed(bit: int) -> None:
    v = _with(DCAP_TD_ATTRIBUTES | 1 << bit)
    f = _findings(v, _policy())["tdx.td_attributes.reserved"]
    assert (f.expected, f.actual) == ([], [bit])
    assert set(_findings(v, _policy())) == {"tdx.td_attributes.reserved"}
    assert _findings(v, _policy(unsafe_allow_td_attribute_bits=(bit,))) == {}


def test_only_unlisted_reserved_bits_are_reported() -> None:
    v = _with(DCAP_TD_ATTRIBUTES | 1 << 27 | 1 << 40 | 1 << 3)
    f = _findings(v, _policy(unsafe_allow_td_attribute_bits=(27, 50)))["tdx.td_attributes.reserved"]
    assert (f.expected, f.actual) == ([27, 50], [3, 40])


def test_every_failing_attribute_is_reported_and_contraindicates_configuration() -> None:
    v = _with(TD_ATTR_DEBUG | TD_ATTR_MIGRATABLE | TD_ATTR_KL | 1 << 40 | 1 << 2)
    policy = _policy(require_sept_ve_disable=True, allow_pks=False, allow_perfmon=False)
    binding = SessionBinding(report_data=v.body.report_data, gpu_nonce=b"\0" * 32)
    a = appraise_tdx(v, policy, binding)
    assert [f.field for f in a.findings] == [
        "tdx.td_attributes.debug",
        "tdx.td_attributes.sept_ve_disable",
        "tdx.td_attributes.migratable",
        "tdx.td_attributes.kl",
        "tdx.td_attributes.reserved",
    ]
    assert a.findings[-1].actual == [2, 40]
    assert a.status is Status.CONTRAINDICATED
    vector = a.trust_vector()
    assert vector["configuration"] == CONTRAINDICATED_VALUE
    assert all(vector[k] != CONTRAINDICATED_VALUE for k in vector if k != "configuration")
    flags = a.claims["ear.lessee.tdx"]["td_attribute_flags"]
    assert flags == {
        "debug": True,
        "sept_ve_disable": False,
        "migratable": True,
        "pks": False,
        "kl": True,
        "perfmon": False,
    }
    assert a.claims["ear.lessee.tdx"]["td_attributes_reserved_bits"] == [2, 40]


# --- XFAM -----------------------------------------------------------------------------------


def test_xfam_allow_list() -> None:
    real = _verified().body.xfam.hex()
    assert _findings(_verified(), _policy(allowed_xfam=(real,))) == {}
    other = bytes.fromhex("e718060000000000")
    f = _findings(_with(xfam=other), _policy(allowed_xfam=(real,)))["tdx.xfam"]
    assert (f.expected, f.actual) == ([real], other.hex())
    # Without an allow-list any XFAM passes (and is reported in the claims).
    assert _findings(_with(xfam=other), _policy()) == {}


# --- the policy fields ------------------------------------------------------------------------


def _load(tdx: dict[str, object]) -> TdxPolicy:
    doc = {"name": "p", "cpu_tees": ["tdx"], "tdx": {"unsafe_any_mrtd": True, **tdx}}
    p = load_policy(json.dumps(doc))
    assert p.tdx is not None
    return p.tdx


def test_policy_defaults() -> None:
    p = _load({})
    assert (p.unsafe_allow_debug, p.require_sept_ve_disable, p.unsafe_allow_migratable) == (
        False,
        False,
        False,
    )
    assert (p.allow_pks, p.allow_kl, p.allow_perfmon) == (True, False, True)
    assert p.unsafe_allow_td_attribute_bits == () and p.allowed_xfam is None


@pytest.mark.parametrize(
    "tdx,needle",
    [
        ({"unsafe_allow_td_attribute_bits": [29]}, "named TD attributes"),
        ({"unsafe_allow_td_attribute_bits": [28, 31]}, "named TD attributes"),
        ({"unsafe_allow_td_attribute_bits": [0]}, "greater than or equal to 1"),
        ({"unsafe_allow_td_attribute_bits": [63]}, "less than or equal to 62"),
        ({"unsafe_allow_td_attribute_bits": [27, 27]}, "once"),
        ({"unsafe_allow_td_attribute_bits": list(range(1, 28)) * 3}, "at most 64"),
        ({"require_sept_ve_disable": "true"}, "require_sept_ve_disable"),
        ({"allow_kl": 1}, "allow_kl"),
        ({"allowed_xfam": ["E702060000000000"]}, "allowed_xfam"),
        ({"allowed_xfam": ["e7020600"]}, "allowed_xfam"),
        ({"allowed_xfam": ["e702060000000000"] * 65}, "allowed_xfam"),
        ({"allow_migratable": True}, "allow_migratable"),
    ],
)
def test_policy_fields_are_strict_and_bounded(tdx: dict[str, object], needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        _load(tdx)


def test_loosening_fields_are_listed_as_unsafe() -> None:
    doc = {
        "name": "p",
        "cpu_tees": ["tdx"],
        "tdx": {
            "allowed_mrtd": ["00" * 48],
            "unsafe_allow_migratable": True,
            "unsafe_allow_td_attribute_bits": [27],
            "allow_kl": True,
            "require_sept_ve_disable": True,
        },
    }
    assert load_policy(json.dumps(doc)).unsafe_settings() == [
        "tdx.unsafe_allow_migratable",
        "tdx.unsafe_allow_td_attribute_bits",
    ]
    doc["tdx"] = {"allowed_mrtd": ["00" * 48]}
    assert load_policy(json.dumps(doc)).unsafe_settings() == []


# --- the oracle ---------------------------------------------------------------------------------


def _oracle(value: int, policy: TdxPolicy) -> tuple[set[str], list[int]]:
    """The expected finding fields and refused reserved bits, bit by bit from the ABI table."""

    def bit(i: int) -> bool:
        return bool(value >> i & 1)

    expected = set()
    if bit(0) and not policy.unsafe_allow_debug:
        expected.add("tdx.td_attributes.debug")
    if not bit(28) and policy.require_sept_ve_disable:
        expected.add("tdx.td_attributes.sept_ve_disable")
    if bit(29) and not policy.unsafe_allow_migratable:
        expected.add("tdx.td_attributes.migratable")
    if bit(30) and not policy.allow_pks:
        expected.add("tdx.td_attributes.pks")
    if bit(31) and not policy.allow_kl:
        expected.add("tdx.td_attributes.kl")
    if bit(63) and not policy.allow_perfmon:
        expected.add("tdx.td_attributes.perfmon")
    refused = [i for i in RESERVED if bit(i) and i not in policy.unsafe_allow_td_attribute_bits]
    if refused:
        expected.add("tdx.td_attributes.reserved")
    return expected, refused


_SPARSE = st.sets(st.integers(0, 63), max_size=8).map(lambda bits: sum(1 << i for i in bits))
_POLICIES = st.builds(
    lambda debug, sept, mig, pks, kl, perf, extra: _policy(
        unsafe_allow_debug=debug,
        require_sept_ve_disable=sept,
        unsafe_allow_migratable=mig,
        allow_pks=pks,
        allow_kl=kl,
        allow_perfmon=perf,
        unsafe_allow_td_attribute_bits=tuple(sorted(extra)),
    ),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sets(st.sampled_from(RESERVED), max_size=6),
)


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.integers(0, 2**64 - 1), _SPARSE), policy=_POLICIES)
def test_findings_agree_with_a_bit_by_bit_oracle(value: int, policy: TdxPolicy) -> None:
    v = _with(value)
    found = _findings(v, policy)
    expected, refused = _oracle(value, policy)
    assert {k for k in found if k.startswith("tdx.td_attributes")} == expected
    assert set(found) - expected == set(), "no other check is affected"
    if refused:
        assert found["tdx.td_attributes.reserved"].actual == refused
    binding = SessionBinding(report_data=v.body.report_data, gpu_nonce=b"\0" * 32)
    claims = appraise_tdx(v, policy, binding).claims["ear.lessee.tdx"]
    assert claims["td_attributes"] == value.to_bytes(8, "little").hex()
    assert claims["td_attribute_flags"] == {n: bool(value >> i & 1) for n, i in NAMED.items()}
    assert claims["td_attributes_reserved_bits"] == [i for i in RESERVED if value >> i & 1]
    assert claims["debug"] is bool(value & 1)
