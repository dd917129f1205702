"""Intel's TCB status algorithm, branch by branch, on variants of the real dcap-qvl collateral.

``evaluate_tcb`` is pure and takes already-verified documents, so each test edits the parsed
TCB Info / QE Identity (``dataclasses.replace``) to reach one branch of Intel's QVL logic.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from attest.errors import VerificationError
from attest.tdx.collateral import IdentityTcbLevel, QeIdentity, TcbInfo, TcbLevel
from attest.tdx.quote import TdxQuote
from attest.tdx.verify import PckExtensions, TcbStatus, evaluate_tcb, verify_quote
from tests.tdx import helpers as h


@pytest.fixture(scope="module")
def base() -> tuple[TdxQuote, PckExtensions, TcbInfo, QeIdentity]:
    v = verify_quote(h.dcap_quote(), h.dcap_collateral(), at=h.DCAP_AT)
    return v.quote, v.pck, v.collateral.tcb_info, v.collateral.qe_identity


def _first(tcb: TcbInfo, **kw: object) -> TcbInfo:
    levels = (replace(tcb.tcb_levels[0], **kw), *tcb.tcb_levels[1:])
    return replace(tcb, tcb_levels=levels)


def _module_levels(tcb: TcbInfo, ident: str, levels: tuple[IdentityTcbLevel, ...]) -> TcbInfo:
    ids = tuple(
        replace(i, tcb_levels=levels) if i.id == ident else i for i in tcb.tdx_module_identities
    )
    return replace(tcb, tdx_module_identities=ids)


@pytest.mark.parametrize(
    "status",
    ["UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
     "OutOfDate", "OutOfDateConfigurationNeeded", "Revoked"],
)  # fmt: skip
def test_level_status_passes_through(base: tuple, status: str) -> None:  # type: ignore[type-arg]
    q, pck, tcb, qe = base
    ev = evaluate_tcb(q, pck, _first(tcb, status=status, advisory_ids=("INTEL-SA-1",)), qe)
    assert ev.status.value == status
    assert ev.advisory_ids == ("INTEL-SA-1",)


def test_falls_to_second_level_when_pcesvn_lower(base: tuple) -> None:  # type: ignore[type-arg]
    q, pck, tcb, qe = base
    ev = evaluate_tcb(q, pck, _first(tcb, pce_svn=pck.pce_svn + 1), qe)
    assert ev.status is TcbStatus.OUT_OF_DATE
    assert "INTEL-SA-00837" in ev.advisory_ids
    assert ev.tdx_level is tcb.tcb_levels[1]


def test_each_sgx_component_counts(base: tuple) -> None:  # type: ignore[type-arg]
    q, pck, tcb, qe = base
    for i in range(16):
        comps = list(tcb.tcb_levels[0].sgx_components)
        comps[i] = pck.tcb_components[i] + 1
        only = replace(tcb, tcb_levels=(replace(tcb.tcb_levels[0], sgx_components=tuple(comps)),))
        assert evaluate_tcb(q, pck, only, qe).status is TcbStatus.NO_MATCHING_TCB_LEVEL, i


def test_tdx_components_skip_module_bytes_when_version_set(base: tuple) -> None:  # type: ignore[type-arg]
    q, pck, tcb, qe = base
    tee = q.body.tee_tcb_svn
    comps = list(tcb.tcb_levels[0].tdx_components)
    comps[0] = tee[0] + 1  # covered by the TDX module identity instead
    assert (
        evaluate_tcb(q, pck, _first(tcb, tdx_components=tuple(comps)), qe).status
        is TcbStatus.UP_TO_DATE
    )
    comps[2] = tee[2] + 1  # the late microcode SVN does count
    only = replace(tcb, tcb_levels=(replace(tcb.tcb_levels[0], tdx_components=tuple(comps)),))
    assert evaluate_tcb(q, pck, only, qe).status is TcbStatus.NO_MATCHING_TCB_LEVEL


def test_module_version_zero_uses_tdx_module(base: tuple) -> None:  # type: ignore[type-arg]
    q, pck, tcb, qe = base
    body = replace(q.body, tee_tcb_svn=bytes([9, 0]) + q.body.tee_tcb_svn[2:])
    q0 = replace(q, body=body)
    ev = evaluate_tcb(q0, pck, tcb, qe)
    assert ev.status is TcbStatus.UP_TO_DATE and ev.tdx_module_status is None
    comps = list(tcb.tcb_levels[0].tdx_components)
    comps[0] = 10  # now byte 0 is compared with the level
    assert (
        evaluate_tcb(q0, pck, _first(tcb, tdx_components=tuple(comps)), qe).tdx_level
        is tcb.tcb_levels[1]
    )
    with pytest.raises(VerificationError) as e:
        evaluate_tcb(q0, pck, replace(tcb, tdx_module=None), qe)
    assert e.value.reason == "tdx_module_mismatch"


def test_module_identity_convergence(base: tuple) -> None:  # type: ignore[type-arg]
    q, pck, tcb, qe = base
    old = IdentityTcbLevel(
        isv_svn=0, tcb_date=tcb.issue_date, status="OutOfDate", advisory_ids=("INTEL-SA-M",)
    )
    t = _module_levels(tcb, "TDX_01", (old,))
    ev = evaluate_tcb(q, pck, t, qe)
    assert ev.status is TcbStatus.OUT_OF_DATE and ev.tdx_module_status is TcbStatus.OUT_OF_DATE
    assert ev.advisory_ids == ("INTEL-SA-M",)
    ev = evaluate_tcb(q, pck, _first(t, status="ConfigurationNeeded"), qe)
    assert ev.status is TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED
    revoked = replace(old, status="Revoked")
    assert (
        evaluate_tcb(q, pck, _module_levels(tcb, "TDX_01", (revoked,)), qe).status
        is TcbStatus.REVOKED
    )
    too_new = replace(old, isv_svn=q.body.tdx_module_isv_svn + 1, status="UpToDate")
    ev = evaluate_tcb(q, pck, _module_levels(tcb, "TDX_01", (too_new,)), qe)
    assert ev.status is TcbStatus.NO_MATCHING_TCB_LEVEL


def test_module_identity_missing_or_mismatched(base: tuple) -> None:  # type: ignore[type-arg]
    q, pck, tcb, qe = base
    no_01 = replace(
        tcb, tdx_module_identities=tuple(i for i in tcb.tdx_module_identities if i.id != "TDX_01")
    )
    with pytest.raises(VerificationError) as e:
        evaluate_tcb(q, pck, no_01, qe)
    assert e.value.reason == "tdx_module_mismatch"
    ids = tuple(
        replace(i, module=replace(i.module, mrsigner=b"\x01" * 48))
        for i in tcb.tdx_module_identities
    )
    with pytest.raises(VerificationError) as e:
        evaluate_tcb(q, pck, replace(tcb, tdx_module_identities=ids), qe)
    assert e.value.reason == "tdx_module_mismatch"


def test_qe_identity_checks_and_convergence(base: tuple) -> None:  # type: ignore[type-arg]
    q, pck, tcb, qe = base
    isv = q.signature_data.qe_report.isv_svn
    newer = IdentityTcbLevel(
        isv_svn=isv + 1, tcb_date=qe.issue_date, status="UpToDate", advisory_ids=()
    )
    older = IdentityTcbLevel(
        isv_svn=0, tcb_date=qe.issue_date, status="OutOfDate", advisory_ids=("INTEL-SA-Q",)
    )
    ev = evaluate_tcb(q, pck, tcb, replace(qe, tcb_levels=(newer, older)))
    assert ev.status is TcbStatus.OUT_OF_DATE and ev.qe_status is TcbStatus.OUT_OF_DATE
    assert ev.advisory_ids == ("INTEL-SA-Q",)
    ev = evaluate_tcb(
        q,
        pck,
        _first(tcb, status="ConfigurationAndSWHardeningNeeded"),
        replace(qe, tcb_levels=(newer, older)),
    )
    assert ev.status is TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED
    assert (
        evaluate_tcb(
            q, pck, tcb, replace(qe, tcb_levels=(replace(older, status="Revoked"),))
        ).status
        is TcbStatus.REVOKED
    )
    assert (
        evaluate_tcb(q, pck, tcb, replace(qe, tcb_levels=(newer,))).status
        is TcbStatus.NO_MATCHING_TCB_LEVEL
    )
    for change in (
        {"mrsigner": bytes(32)},
        {"isv_prod_id": 7},
        {"miscselect": 1},
        {"attributes": b"\x13" + qe.attributes[1:]},
    ):
        with pytest.raises(VerificationError) as e:
            evaluate_tcb(q, pck, tcb, replace(qe, **change))  # type: ignore[arg-type]
        assert e.value.reason == "qe_identity_mismatch", change


def test_pceid_mismatch(base: tuple) -> None:  # type: ignore[type-arg]
    q, pck, tcb, qe = base
    with pytest.raises(VerificationError) as e:
        evaluate_tcb(q, pck, replace(tcb, pce_id=b"\x00\x01"), qe)
    assert e.value.reason == "pceid_mismatch"


def test_levels_are_used_in_order(base: tuple) -> None:  # type: ignore[type-arg]
    q, pck, tcb, qe = base
    flipped = replace(tcb, tcb_levels=tuple(reversed(tcb.tcb_levels)))
    assert evaluate_tcb(q, pck, flipped, qe).status is TcbStatus.OUT_OF_DATE
    assert isinstance(tcb.tcb_levels[0], TcbLevel)
