"""RIM ids, RimCollection and golden-vs-runtime comparison on the real vectors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from attest.errors import InputError
from attest.nvidia.rim import (
    NVDEC_RIM_INDEX,
    Rim,
    RimCollection,
    RimSelectionError,
    compare_measurements,
    driver_rim_id,
    parse_rim,
    parse_rim_id,
    switch_bios_rim_id,
    vbios_rim_id,
    verify_rim,
)
from tests.conftest import NVIDIA, RIM_ERA
from tests.nvidia.test_rim import ALL_RIMS, DRIVER, VBIOS, VBIOS_PROD

LEGACY_REPORT = NVIDIA / "hopper_legacy" / "attestationReport.txt"
CURRENT_REPORT = NVIDIA / "hopper" / "hopperAttestationReport.txt"
SPDM_REQUEST_BYTES = 37


def _local_blocks(report: bytes) -> dict[int, bytes]:
    """A tiny SPDM 1.1 MEASUREMENTS reader (only used if attest.nvidia.spdm is absent)."""
    resp = report[SPDM_REQUEST_BYTES:]
    count, off, blocks = resp[4], 8, {}
    for _ in range(count):
        index, size = resp[off], int.from_bytes(resp[off + 2 : off + 4], "little")
        value_size = int.from_bytes(resp[off + 5 : off + 7], "little")
        blocks[index] = resp[off + 7 : off + 7 + value_size]
        off += 4 + size
    return blocks


def runtime_blocks(path: Path) -> dict[int, bytes]:
    report = bytes.fromhex(path.read_text().strip())
    try:
        from attest.nvidia.spdm import parse_report
    except ImportError:  # the colleague's parser is not there: read the blocks ourselves
        return _local_blocks(report)
    parsed = dict(parse_report(report).measurements)
    assert parsed == _local_blocks(report)
    return parsed


def rims() -> tuple[Rim, Rim]:
    return parse_rim(DRIVER.read_bytes()), parse_rim(VBIOS.read_bytes())


# ---------------------------------------------------------------------------------------------
# comparison


def test_legacy_hopper_report_matches_all_33_active_golden_values() -> None:
    driver, vbios = rims()
    verify_rim(driver, at=RIM_ERA)
    verify_rim(vbios, at=RIM_ERA)
    runtime = runtime_blocks(LEGACY_REPORT)
    assert len(runtime) == 64
    result = compare_measurements(runtime, driver=driver, vbios=vbios)
    assert result.ok
    assert result.golden_count == 33
    assert result.matched == (*range(13), *range(21, 41))
    assert result.mismatches == () and result.conflicts == () and result.skipped == ()


def test_current_hopper_report_has_the_20_mismatches_provenance_lists() -> None:
    driver, vbios = rims()
    result = compare_measurements(runtime_blocks(CURRENT_REPORT), driver=driver, vbios=vbios)
    assert not result.ok
    assert result.mismatched_indexes == (
        1,
        2,
        3,
        7,
        9,
        11,
        21,
        22,
        25,
        26,
        27,
        29,
        30,
        31,
        32,
        34,
        36,
        37,
        39,
        40,
    )
    assert len(result.matched) == 13
    for mm in result.mismatches:
        assert mm.reason == "value"
        assert mm.block_index == mm.rim_index + 1
        assert mm.source == ("driver" if mm.rim_index == 7 or mm.rim_index >= 21 else "vbios")
        assert mm.actual is not None and mm.actual not in mm.expected
        assert f"index {mm.rim_index} (block {mm.block_index})" in mm.describe()


def test_prod_vbios_rim_against_legacy_report_mismatches_at_the_test_only_indexes() -> None:
    driver = parse_rim(DRIVER.read_bytes())
    prod = parse_rim(VBIOS_PROD.read_bytes())
    result = compare_measurements(runtime_blocks(LEGACY_REPORT), driver=driver, vbios=prod)
    assert result.mismatched_indexes == (1, 2, 3, 9)


def test_alternatives_any_one_matches() -> None:
    driver, vbios = rims()
    runtime = runtime_blocks(LEGACY_REPORT)
    entry = vbios.measurement(12)
    assert entry is not None and len(entry.alternatives) == 4
    for alt in entry.alternatives:
        result = compare_measurements({**runtime, 13: alt}, driver=driver, vbios=vbios)
        assert 12 in result.matched


def test_missing_block_and_wrong_size_are_mismatches() -> None:
    driver, vbios = rims()
    runtime = runtime_blocks(LEGACY_REPORT)
    del runtime[8]  # RIM index 7 (driver)
    runtime[1] = runtime[1] + b"\x00"  # RIM index 0 (vbios), 49 bytes
    result = compare_measurements(runtime, driver=driver, vbios=vbios)
    assert not result.ok
    reasons = {m.rim_index: (m.reason, m.actual) for m in result.mismatches}
    assert reasons[7] == ("missing", None)
    assert reasons[0][0] == "size"
    assert len(result.matched) == 31


def test_conflicting_active_index_is_reported() -> None:
    driver, vbios = rims()
    m7 = driver.measurement(7)
    assert m7 is not None
    # the VBIOS RIM also claiming index 7 (as a forged or mixed-up RIM would)
    vb = dataclasses.replace(
        vbios,
        measurements=tuple(
            dataclasses.replace(m, active=True) if m.index == 7 else m for m in vbios.measurements
        ),
    )
    result = compare_measurements(runtime_blocks(LEGACY_REPORT), driver=driver, vbios=vb)
    assert result.conflicts == (7,)
    assert 7 not in result.matched
    assert not result.ok


def test_nvdec_index_can_be_skipped() -> None:
    driver, vbios = rims()
    runtime = runtime_blocks(LEGACY_REPORT)
    runtime[NVDEC_RIM_INDEX + 1] = b"\x00" * 48
    assert not compare_measurements(runtime, driver=driver, vbios=vbios).ok
    result = compare_measurements(
        runtime, driver=driver, vbios=vbios, skip_rim_indexes={NVDEC_RIM_INDEX}
    )
    assert result.ok and result.skipped == (NVDEC_RIM_INDEX,)


def test_nothing_to_compare_is_not_ok() -> None:
    driver, vbios = rims()
    off = [dataclasses.replace(m, active=False) for m in driver.measurements]
    d = dataclasses.replace(driver, measurements=tuple(off))
    v = dataclasses.replace(
        vbios, measurements=tuple(dataclasses.replace(m, active=False) for m in vbios.measurements)
    )
    result = compare_measurements(runtime_blocks(LEGACY_REPORT), driver=d, vbios=v)
    assert result.golden_count == 0 and not result.ok


def test_rims_the_wrong_way_round_is_input_error() -> None:
    driver, vbios = rims()
    with pytest.raises(InputError):
        compare_measurements({}, driver=vbios, vbios=driver)
    with pytest.raises(InputError):
        compare_measurements({0: b"x" * 48}, driver=driver, vbios=vbios)


# ---------------------------------------------------------------------------------------------
# naming


def test_driver_ids() -> None:
    assert (
        driver_rim_id(arch="HOPPER", chip_info=None, driver_version="545.00")
        == "NV_GPU_DRIVER_GH100_545.00"
    )
    assert (
        driver_rim_id(arch="hopper", chip_info="GH100", driver_version="550.90.07\x00")
        == "NV_GPU_DRIVER_GH100_550.90.07"
    )
    assert (
        driver_rim_id(arch="BLACKWELL", chip_info="GB202\x00\x00", driver_version="595.58.03")
        == "NV_GPU_CC_DRIVER_GB202_595.58.03"
    )
    assert (
        driver_rim_id(arch="BLACKWELL", chip_info=None, driver_version="580.1")
        == "NV_GPU_CC_DRIVER_GB100_580.1"
    )
    assert (
        driver_rim_id(arch="BLACKWELL", chip_info="\x00", driver_version="580.1")
        == "NV_GPU_CC_DRIVER_GB100_580.1"
    )
    for bad in (
        {"arch": "PASCAL", "chip_info": None, "driver_version": "1.2"},
        {"arch": "HOPPER", "chip_info": None, "driver_version": "../../x"},
        {"arch": "BLACKWELL", "chip_info": "GB/202", "driver_version": "1.2"},
    ):
        with pytest.raises(RimSelectionError):
            driver_rim_id(**bad)  # type: ignore[arg-type]


def test_vbios_and_switch_ids() -> None:
    # the legacy Hopper sample (PROVENANCE §2) and the PPCIe GPU (§5)
    assert vbios_rim_id(
        project="1010", project_sku="0200", chip_sku="882", vbios_version="96.00.5e.00.01"
    ) == ("NV_GPU_VBIOS_1010_0200_882_96005E0001")
    assert vbios_rim_id(
        project="G520\x00", project_sku="0200", chip_sku="885", vbios_version="96.00.A5.00.01"
    ) == ("NV_GPU_VBIOS_G520_0200_885_9600A50001")
    assert vbios_rim_id(
        project="g520", project_sku="0200", chip_sku="885", vbios_version="9600a50001"
    ).endswith("_9600A50001")
    assert (
        switch_bios_rim_id(bios_version="96.10.73.00.01")
        == "NV_SWITCH_BIOS_5612_0002_890_9610730001"
    )
    with pytest.raises(RimSelectionError):
        vbios_rim_id(project="1010", project_sku="0200", chip_sku="882", vbios_version="96.00.5e")


def test_parse_rim_id() -> None:
    info = parse_rim_id("NV_GPU_DRIVER_GH100_545.00")
    assert (info.kind, info.product, info.version) == ("driver", "GH100", "545.00")
    info = parse_rim_id("nv_gpu_cc_driver_gb100_595.91.07")
    assert (info.kind, info.product) == ("driver", "GB100")
    info = parse_rim_id("NV_GPU_VBIOS_1010_0200_882_96005E0001")
    assert (info.kind, info.product, info.version) == ("vbios", None, "96005E0001")
    assert parse_rim_id("NV_SWITCH_BIOS_5612_0002_890_96105E0001").kind == "vbios"
    for bad in (
        "NV_NIC_FIRMWARE_CX7_28.39.4082-LTS_MCX713104AC-ADA",
        "../etc/passwd",
        "",
        "x" * 200,
    ):
        with pytest.raises(RimSelectionError):
            parse_rim_id(bad)


# ---------------------------------------------------------------------------------------------
# collection


def test_collection_finds_both_test_rims_by_content() -> None:
    coll = RimCollection([DRIVER.read_bytes(), VBIOS.read_bytes()])
    assert coll.rim_bytes("NV_GPU_DRIVER_GH100_545.00") == DRIVER.read_bytes()
    assert coll.rim_bytes("NV_GPU_VBIOS_1010_0200_882_96005E0001") == VBIOS.read_bytes()
    assert coll.rim_bytes("NV_GPU_DRIVER_GH100_550.90.07") is None
    assert coll.rim_bytes("NV_GPU_CC_DRIVER_GB100_545.00") is None  # product must match too
    assert "NV_GPU_DRIVER_GH100_545.00" in coll.ids()
    assert len(coll) == 2 and coll.skipped == ()


def test_collection_refuses_to_guess_between_same_version_vbios_rims() -> None:
    coll = RimCollection(p.read_bytes() for p in ALL_RIMS)
    assert len(coll) == 26
    with pytest.raises(RimSelectionError, match="2 different RIMs"):
        coll.rim_bytes("NV_GPU_VBIOS_1010_0200_882_96005E0001")
    assert (
        coll.rim_bytes("NV_GPU_VBIOS_G520_0228_889_96006D0029")
        == (NVIDIA / "rims/prod_vbios/g520_0228_889_96006D0029_PROD.swidtag").read_bytes()
    )


def test_named_entries_win_and_must_agree_with_content() -> None:
    coll = RimCollection(
        [p.read_bytes() for p in ALL_RIMS],
        named=[
            ("NV_GPU_VBIOS_1010_0200_882_96005E0001", VBIOS.read_bytes()),
            ("NV_GPU_VBIOS_1010_0200_882_96005E0002", VBIOS.read_bytes()),  # wrong version
            ("NV_GPU_DRIVER_GH100_545.00", VBIOS.read_bytes()),  # wrong kind
            ("NOT_AN_ID", DRIVER.read_bytes()),
            ("NV_GPU_DRIVER_GH100_545.00", b"<junk/>"),
        ],
    )
    assert coll.rim_bytes("NV_GPU_VBIOS_1010_0200_882_96005E0001") == VBIOS.read_bytes()
    reasons = dict(coll.skipped)
    assert "NV_GPU_VBIOS_1010_0200_882_96005E0002" in reasons
    assert "NOT_AN_ID" in reasons
    assert len(coll.skipped) == 4


def test_collection_skips_garbage() -> None:
    coll = RimCollection([b"not xml", DRIVER.read_bytes()])
    assert len(coll) == 1
    assert coll.skipped[0][0] == "rims[0]"
