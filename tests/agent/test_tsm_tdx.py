"""configfs-tsm on TDX: the agent hands the broker exactly the quote and the operator's collateral.

The fake ``tdx_guest`` provider (``FakeTsm``, shared with the SNP tests) serves a REAL quote:
dcap-qvl's v4 quote without its 70 bytes of capture padding (the kernel's provider returns the
quote's own length), with dcap-qvl's real collateral for it. A real quote made for another
session cannot carry this session's report data, so the broker-side checks below pass for
everything but that binding, and the binding is the one finding.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.evidence.sources import (
    MAX_TDX_COLLATERAL_BYTES,
    HardwareUnavailableError,
    TeeMismatchError,
    TsmCpuSource,
    check_tdx_collateral,
)
from attest.appraise.composite import appraise_bundle
from attest.binding import SessionBinding
from attest.bundle import MAX_ITEM_BYTES, EvidenceBundle, SnpEvidenceIn, TdxEvidenceIn, load_bundle
from attest.ear import Status
from attest.errors import InputError, VerificationError
from attest.policy import CpuTee, Policy, TdxPolicy
from attest.tdx.collateral import MAX_COLLATERAL_JSON_BYTES, parse_collateral_json
from attest.tdx.quote import MAX_QUOTE_BUFFER_BYTES, parse_quote
from attest.tdx.verify import TcbStatus, verify_quote
from tests.agent.test_tsm_snp import REPORT_DATA, FakeTsm, _fake
from tests.snp.helpers import virtee_report
from tests.tdx.helpers import DCAP, DCAP_AT, dcap_quote_bytes

COLLATERAL = (DCAP / "tdx_quote_collateral.json").read_bytes()


def _tdx(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outblob: bytes | None = None
) -> tuple[FakeTsm, Path]:
    quote = dcap_quote_bytes() if outblob is None else outblob
    return _fake(tmp_path, monkeypatch, provider="tdx_guest", outblob=quote, auxblob=None)


def _collect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeTsm, TdxEvidenceIn]:
    fake, root = _tdx(tmp_path, monkeypatch)
    source = TsmCpuSource(root, tdx_collateral=COLLATERAL)
    assert source.provider == "tdx_guest"
    ev = source.collect(REPORT_DATA)
    assert isinstance(ev, TdxEvidenceIn)
    assert list(root.iterdir()) == []  # the probe's entry and the quote's were removed
    return fake, ev


def test_collects_the_quote_and_the_operators_collateral_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, ev = _collect(tmp_path, monkeypatch)
    assert ev.quote == dcap_quote_bytes()
    assert ev.collateral_json == COLLATERAL
    assert fake.inblob == REPORT_DATA
    assert len(fake.entries) == 2  # one to read the provider, one for the quote


def test_the_bundle_round_trips_as_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, ev = _collect(tmp_path, monkeypatch)
    bundle = EvidenceBundle(cpu=ev, cc_mode_on=True, devtools_on=False)
    loaded = load_bundle(bundle.to_json())
    assert loaded == bundle
    assert loaded.cpu == TdxEvidenceIn(quote=dcap_quote_bytes(), collateral_json=COLLATERAL)


def test_the_broker_verifies_it_all_but_the_session_binding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What attest/appraise/composite.py does with TDX evidence, on the collected bytes as of
    the vector's date: every signature, chain, CRL and TCB check passes; only the report data
    (this session's binding) differs, because the quote was made for another session."""
    _, ev = _collect(tmp_path, monkeypatch)
    quote = parse_quote(ev.quote)
    collateral = parse_collateral_json(ev.collateral_json)
    verified = verify_quote(quote, collateral, at=DCAP_AT)
    assert verified.tcb_status is TcbStatus.UP_TO_DATE
    with pytest.raises(VerificationError) as info:
        verify_quote(quote, collateral, at=DCAP_AT, expected_report_data=REPORT_DATA)
    assert info.value.reason == "report_data_mismatch"

    policy = Policy(
        name="tdx", cpu_tees=(CpuTee.TDX,), tdx=TdxPolicy(allowed_mrtd=(verified.mr_td.hex(),))
    )
    bundle = load_bundle(EvidenceBundle(cpu=ev, cc_mode_on=True, devtools_on=False).to_json())
    ours = SessionBinding(report_data=REPORT_DATA, gpu_nonce=bytes(32))
    cpu, *_ = appraise_bundle(bundle, ours, policy, DCAP_AT)[0]
    assert [f.field for f in cpu.findings] == ["tdx.report_data"]
    theirs = SessionBinding(report_data=verified.report_data, gpu_nonce=bytes(32))
    cpu, *_ = appraise_bundle(bundle, theirs, policy, DCAP_AT)[0]
    assert cpu.findings == () and cpu.status is Status.AFFIRMING


def test_tdx_guest_without_collateral_is_refused_before_any_quote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, root = _tdx(tmp_path, monkeypatch)
    with pytest.raises(TeeMismatchError, match="--tdx-collateral FILE") as info:
        TsmCpuSource(root)
    assert "Intel PCS" in str(info.value) and "PCCS" in str(info.value)
    assert isinstance(info.value, InputError)  # lessee agent: exit 2
    assert fake.inblob is None  # no quote was requested
    assert list(root.iterdir()) == []


def test_amd_crl_on_a_tdx_guest_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake, root = _tdx(tmp_path, monkeypatch)
    with pytest.raises(TeeMismatchError, match=r"TDX guest.*--amd-crl"):
        TsmCpuSource(root, crl=b"\x30\x82" + b"c" * 100)
    assert fake.inblob is None and list(root.iterdir()) == []


def test_tdx_collateral_on_an_snp_guest_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, root = _fake(
        tmp_path, monkeypatch, provider="sev_guest", outblob=virtee_report(), auxblob=None
    )
    with pytest.raises(TeeMismatchError, match=r"SEV-SNP guest.*--tdx-collateral"):
        TsmCpuSource(root, tdx_collateral=COLLATERAL)
    assert fake.inblob is None and list(root.iterdir()) == []
    assert isinstance(TsmCpuSource(root).collect(REPORT_DATA), SnpEvidenceIn)  # without: fine


def test_both_supplements_are_refused_before_the_hardware_is_looked_at(tmp_path: Path) -> None:
    with pytest.raises(TeeMismatchError, match="both given"):
        TsmCpuSource(tmp_path / "absent", crl=b"c", tdx_collateral=COLLATERAL)


@pytest.mark.parametrize("size", [MAX_QUOTE_BUFFER_BYTES + 1, 1 << 20])
def test_oversized_outblob_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Bounded at the largest buffer the broker parses (64 KiB), not configfs-tsm's general
    256 KiB: a larger 'quote' could only be refused by the broker."""
    _, root = _tdx(tmp_path, monkeypatch, outblob=dcap_quote_bytes() + bytes(size - 4936))
    source = TsmCpuSource(root, tdx_collateral=COLLATERAL)
    with pytest.raises(HardwareUnavailableError, match=f"larger than {MAX_QUOTE_BUFFER_BYTES}"):
        source.collect(REPORT_DATA)
    assert list(root.iterdir()) == []


def test_largest_outblob_is_passed_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blob = dcap_quote_bytes() + bytes(MAX_QUOTE_BUFFER_BYTES - 4936)
    _, root = _tdx(tmp_path, monkeypatch, outblob=blob)
    ev = TsmCpuSource(root, tdx_collateral=COLLATERAL).collect(REPORT_DATA)
    assert isinstance(ev, TdxEvidenceIn) and ev.quote == blob  # the agent trims nothing


def test_empty_outblob_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, root = _tdx(tmp_path, monkeypatch, outblob=b"")
    with pytest.raises(HardwareUnavailableError, match="empty TDX quote"):
        TsmCpuSource(root, tdx_collateral=COLLATERAL).collect(REPORT_DATA)


@pytest.mark.parametrize("provider", ["arm_cca_guest", "tdx_guest_v2", ""])
def test_unknown_provider_is_refused_when_the_source_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    fake, root = _fake(tmp_path, monkeypatch, provider=provider, outblob=b"x", auxblob=None)
    with pytest.raises(HardwareUnavailableError, match="unknown configfs-tsm provider"):
        TsmCpuSource(root, tdx_collateral=COLLATERAL)
    assert fake.inblob is None and list(root.iterdir()) == []


def test_report_data_must_be_64_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake, root = _tdx(tmp_path, monkeypatch)
    source = TsmCpuSource(root, tdx_collateral=COLLATERAL)
    with pytest.raises(HardwareUnavailableError, match="64 bytes"):
        source.collect(REPORT_DATA[:32])
    assert fake.inblob is None


def test_collateral_checked_structurally(tmp_path: Path) -> None:
    assert check_tdx_collateral(COLLATERAL) == COLLATERAL
    doc = json.loads(COLLATERAL)
    for bad, match in [
        (b"", "1.."),
        (b" " * (MAX_TDX_COLLATERAL_BYTES + 1), "1.."),
        (json.dumps({**doc, "extra": ""}).encode(), "QuoteCollateralV3"),
        (json.dumps({**doc, "pck_crl": "zz"}).encode(), "pck_crl"),
        ((DCAP / "tdx_quote").read_bytes(), "QuoteCollateralV3"),  # the quote, not collateral
    ]:
        with pytest.raises(InputError, match=match):
            check_tdx_collateral(bad)
        with pytest.raises(InputError, match=match):  # before the hardware is looked at
            TsmCpuSource(tmp_path / "absent", tdx_collateral=bad)


def test_collateral_bound_is_what_the_broker_takes() -> None:
    """The broker's gRPC/bundle limit per item (512 KiB) is below the parser's (2 MiB): a file
    between the two would pass a parse here and be refused by the broker."""
    assert min(MAX_ITEM_BYTES, MAX_COLLATERAL_JSON_BYTES) == MAX_TDX_COLLATERAL_BYTES
