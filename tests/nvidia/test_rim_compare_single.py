"""One RIM alone (NVSwitch BIOS): the same comparison rules as the driver + VBIOS pair, one
implementation, used by the pipeline's switch branch."""

from __future__ import annotations

import dataclasses

from attest.nvidia.rim import NVDEC_RIM_INDEX, compare_measurements, compare_single, parse_rim
from attest.nvidia.verifier import Status, verify_gpu_evidence
from tests.conftest import RIM_ERA
from tests.nvidia.test_rim import VBIOS, VBIOS_PROD
from tests.nvidia.test_rim_compare import LEGACY_REPORT, rims, runtime_blocks
from tests.nvidia.test_verifier import PPCIE_NONCE, SWITCHES

VBIOS_RIM = parse_rim(VBIOS.read_bytes())


def test_single_vbios_rim_matches_the_legacy_report() -> None:
    runtime = runtime_blocks(LEGACY_REPORT)
    result = compare_single(runtime, VBIOS_RIM, source="vbios")
    active = [m.index for m in VBIOS_RIM.active_measurements]
    assert result.ok and result.matched == tuple(active)
    assert result.conflicts == () and result.golden_count == len(active) == 12


def test_single_agrees_with_the_pair_on_the_vbios_indexes() -> None:
    """Pair and single share one loop: on the VBIOS RIM's indexes they say the same thing."""
    driver, vbios = rims()
    runtime = runtime_blocks(LEGACY_REPORT)
    prod = parse_rim(VBIOS_PROD.read_bytes())
    for rim in (vbios, prod):
        pair = compare_measurements(runtime, driver=driver, vbios=rim)
        single = compare_single(runtime, rim, source="vbios")
        vbios_indexes = {m.index for m in rim.active_measurements}
        assert [m for m in pair.mismatches if m.rim_index in vbios_indexes] == list(
            single.mismatches
        )
        assert {i for i in pair.matched if i in vbios_indexes} == set(single.matched)
    assert compare_single(runtime, prod, source="vbios").mismatched_indexes == (1, 2, 3, 9)


def test_single_reports_value_size_missing_and_labels_the_source() -> None:
    runtime = dict(runtime_blocks(LEGACY_REPORT))
    runtime[1] = b"\x5a" * 48  # index 0: wrong value
    runtime[2] = b"\x00" * 32  # index 1: wrong size
    del runtime[3]  # index 2: missing
    result = compare_single(runtime, VBIOS_RIM)
    assert [(m.rim_index, m.reason, m.source) for m in result.mismatches] == [
        (0, "value", "bios"),
        (1, "size", "bios"),
        (2, "missing", "bios"),
    ]
    assert result.mismatches[2].actual is None and not result.ok


def test_single_skips_and_empty_rims() -> None:
    runtime = runtime_blocks(LEGACY_REPORT)
    skipped = compare_single(runtime, VBIOS_RIM, skip_rim_indexes={0, NVDEC_RIM_INDEX})
    assert skipped.skipped == (0,) and 0 not in skipped.matched
    inactive = tuple(dataclasses.replace(m, active=False) for m in VBIOS_RIM.measurements)
    empty = compare_single(runtime, dataclasses.replace(VBIOS_RIM, measurements=inactive))
    assert empty.golden_count == 0 and not empty.ok  # nothing checked is not a pass


class _AnyId:
    """Hands out the test VBIOS RIM for any id: the switch's own BIOS RIM is not public."""

    def rim_bytes(self, rim_id: str) -> bytes | None:
        return VBIOS.read_bytes()


def test_switch_branch_of_the_pipeline_uses_compare_single() -> None:
    switch = SWITCHES[:1]
    result = verify_gpu_evidence(
        switch,
        at=RIM_ERA,
        expected_nonce=PPCIE_NONCE,
        rim_source=_AnyId(),
        revocation_mode="skip",
        ocsp_source=None,
    )
    device = result.devices[0]
    assert device.status is Status.CONTRAINDICATED
    from attest.nvidia.opaque import parse_device_report

    report = parse_device_report(switch[0].report_bytes, switch[0].arch.kind)  # type: ignore[union-attr]
    expected = compare_single(report.measurements, VBIOS_RIM)
    assert device.mismatched_rim_indexes == expected.mismatched_indexes
    assert expected.mismatched_indexes  # a GPU VBIOS RIM does not describe a switch
    details = [f.detail for f in device.failures if f.field.startswith("measurement[")]
    assert len(details) == len(expected.mismatches)
    assert all("(BIOS RIM)" in d for d in details)
    assert device.claims["x-nvidia-switch-bios-rim-measurements-available"] is True
