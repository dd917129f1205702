"""TDX appraisal on the real dcap-qvl quotes."""

from __future__ import annotations

from datetime import UTC, datetime

from attest.appraise.tdx import appraise_tdx
from attest.binding import SessionBinding
from attest.ear import Status
from attest.policy import RtmrRule, TdxPolicy, TdxTcbStatus
from attest.tdx.collateral import parse_collateral_json
from attest.tdx.quote import parse_quote
from attest.tdx.verify import verify_quote
from tests.conftest import CPU

AT = datetime(2025, 6, 19, 11, 16, 3, tzinfo=UTC)


def _verified(name: str):  # type: ignore[no-untyped-def]
    quote = parse_quote(
        (CPU / f"tdx/dcap-qvl/{name}").read_bytes(), allow_trailing_zero_padding=True
    )
    coll = parse_collateral_json((CPU / f"tdx/dcap-qvl/{name}_collateral.json").read_bytes())
    at = (
        AT
        if name == "tdx_quote"
        else datetime.fromisoformat(
            __import__("json")
            .loads((CPU / f"tdx/dcap-qvl/{name}_collateral.json").read_text())["tcb_info"]
            .split('"issueDate":"')[1]
            .split('"')[0]
            .replace("Z", "+00:00")
        )
    )
    return verify_quote(quote, coll, at=at)


def _b(v) -> SessionBinding:  # type: ignore[no-untyped-def]
    return SessionBinding(report_data=v.body.report_data, gpu_nonce=b"\0" * 32)


def test_up_to_date_quote_with_its_mrtd_is_affirmed() -> None:
    v = _verified("tdx_quote")
    a = appraise_tdx(v, TdxPolicy(allowed_mrtd=(v.body.mr_td.hex(),)), _b(v))
    assert a.findings == () and a.status is Status.AFFIRMING


def test_outdated_quote_rejected_on_tcb_status_and_every_failure_listed() -> None:
    v = _verified("tdx_quote_outdated")
    policy = TdxPolicy(allowed_mrtd=("00" * 48,), rtmrs=(RtmrRule(index=3, allowed=("11" * 48,)),))
    wrong = SessionBinding(report_data=b"\x05" * 64, gpu_nonce=b"\0" * 32)
    found = {f.field: f.actual for f in appraise_tdx(v, policy, wrong).findings}
    assert found["tdx.tcb_status"] == "NoMatchingTcbLevel"
    assert set(found) == {"tdx.report_data", "tdx.tcb_status", "tdx.mr_td", "tdx.rtmr[3]"}
    relaxed = TdxPolicy(
        unsafe_any_mrtd=True,
        accepted_tcb_statuses=(TdxTcbStatus.UP_TO_DATE,),
    )
    assert appraise_tdx(v, relaxed, _b(v)).status is Status.CONTRAINDICATED


def test_collateral_older_than_the_policy_allows_is_a_finding() -> None:
    from datetime import timedelta

    v = _verified("tdx_quote")
    policy = TdxPolicy(allowed_mrtd=(v.body.mr_td.hex(),))
    fresh = appraise_tdx(v, policy, _b(v), max_collateral_age=timedelta(days=30))
    assert fresh.findings == ()
    stale = appraise_tdx(v, policy, _b(v), max_collateral_age=timedelta(minutes=30))
    assert {f.field for f in stale.findings} == {
        "tdx.collateral.tcb_info.age",
        "tdx.collateral.qe_identity.age",
    }
    assert stale.status is Status.CONTRAINDICATED


def test_a_policy_cannot_accept_a_revoked_tcb_and_outdated_ones_are_unsafe() -> None:
    """``Revoked`` once loaded as an accepted status, affirmed a revoked platform and was not
    listed as unsafe. It no longer loads; each ``OutOfDate*`` status accepted is listed."""
    import dataclasses

    import pytest

    from attest.errors import InputError
    from attest.policy import load_policy
    from attest.tdx.verify import TcbStatus

    def doc(*statuses: str) -> str:
        return __import__("json").dumps(
            {
                "name": "t",
                "cpu_tees": ["tdx"],
                "tdx": {"unsafe_any_mrtd": True, "accepted_tcb_statuses": list(statuses)},
            }
        )

    with pytest.raises(InputError, match="accepted_tcb_statuses"):
        load_policy(doc("UpToDate", "Revoked"))
    lax = load_policy(doc("UpToDate", "OutOfDate", "OutOfDateConfigurationNeeded"))
    assert {"tdx.accepted_tcb_statuses=OutOfDate"} <= set(lax.unsafe_settings())
    assert "tdx.accepted_tcb_statuses=OutOfDateConfigurationNeeded" in lax.unsafe_settings()
    assert load_policy(doc("UpToDate", "SWHardeningNeeded")).unsafe_settings() == [
        "tdx.unsafe_any_mrtd"
    ]
    v = _verified("tdx_quote")
    revoked = dataclasses.replace(
        v, evaluation=dataclasses.replace(v.evaluation, status=TcbStatus.REVOKED)
    )
    assert lax.tdx is not None
    assert appraise_tdx(revoked, lax.tdx, _b(v)).status is Status.CONTRAINDICATED
