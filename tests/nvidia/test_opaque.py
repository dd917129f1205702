"""Opaque-data TLVs: every GPU and NVSwitch type decoded from real reports; strictness."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.nvidia.opaque import (
    DeviceKind,
    FeatureFlag,
    OpaqueParseError,
    ReportCache,
    gpu_vbios_text,
    parse_device_report,
    parse_opaque,
)
from attest.nvidia.spdm import ReportParseError, parse_report
from tests.conftest import NVIDIA


def _hex(path: str) -> bytes:
    return bytes.fromhex("".join((NVIDIA / path).read_text().split()))


def _json(name: str) -> list[bytes]:
    doc = json.loads((NVIDIA / "ppcie" / name).read_text())
    return [base64.b64decode(e["evidence"]) for e in doc]


HOPPER = _hex("hopper/hopperAttestationReport.txt")
LEGACY = _hex("hopper_legacy/attestationReport.txt")
BLACKWELL = _hex("blackwell/blackwell_coco_report.txt")
PPCIE_GPUS = _json("gpu_evidence.json")
SWITCHES = _json("switch_evidence.json")


def _tlv(t: int, v: bytes) -> bytes:
    return t.to_bytes(2, "little") + len(v).to_bytes(2, "little") + v


def test_hopper_fields() -> None:
    o = parse_device_report(HOPPER, DeviceKind.GPU).opaque
    assert o.driver_version == "550.90.07"
    assert o.vbios_version == "96.00.9f.00.01"
    assert (o.project, o.project_sku, o.chip_sku) == ("1010", "0200", "882")
    assert o.fwid is not None and o.fwid.hex().startswith("f5c384ae")
    assert o.decoded["NVDEC0_STATUS"] == "disabled"
    assert o.decoded["PROTECTED_PCIE_STATUS"] == "disabled"
    msrscnt = o.decoded["MSRSCNT"]
    assert isinstance(msrscnt, list) and len(msrscnt) == 64
    assert [f.type for f in o.fields] == [6, 14, 15, 16, 17, 18, 19, 3, 4, 12, 13, 11, 20, 21]


def test_legacy_has_no_fwid() -> None:
    o = parse_device_report(LEGACY, DeviceKind.GPU).opaque
    assert o.fwid is None
    assert (o.driver_version, o.vbios_version) == ("545.00", "96.00.5e.00.01")


def test_blackwell_fields() -> None:
    o = parse_device_report(BLACKWELL, DeviceKind.GPU).opaque
    assert o.chip_info == "GB202"
    assert o.feature_flag is FeatureFlag.SPT
    assert o.decoded["OPAQUE_DATA_VERSION"] == 1
    assert (o.driver_version, o.vbios_version) == ("595.58.03", "98.02.74.00.01")
    assert o.decoded["SYS_ENABLE_STATUS"] == "0700"


def test_ppcie_gpu_fields() -> None:
    o = parse_device_report(PPCIE_GPUS[0], DeviceKind.GPU).opaque
    assert o.feature_flag is FeatureFlag.PPCIE
    assert o.protected_pcie_status == "enabled"
    assert len(o.switch_pdis) == 18
    assert {p.hex() for p in o.switch_pdis} == {
        "8abd113c3ba2db03",
        "77e911d843b7533a",
        "2d7dec9de1936e66",
        "7532679ebabee39a",
    }


def test_switch_fields() -> None:
    o = parse_device_report(SWITCHES[0], DeviceKind.SWITCH).opaque
    assert o.vbios_version == "96.10.73.00.01"
    assert o.device_pdi is not None and o.device_pdi.hex() == "666e93e19dec7d2d"
    assert len(o.switch_gpu_pdis) == 8
    decoded = o.decoded["SWITCH_GPU_PDIS"]
    assert isinstance(decoded, dict) and len(decoded["ports"]) == 128  # 64 ports, hex
    assert o.switch_pdis == ()  # the GPU-only accessor is empty for a switch
    assert o.decoded["SWITCH_POSITION_ID"] == "0000"


def test_vbios_text_rule() -> None:
    assert gpu_vbios_text(bytes.fromhex("009f009601000000")) == "96.00.9f.00.01"
    with pytest.raises(OpaqueParseError, match=r"5\.\.7"):
        gpu_vbios_text(bytes.fromhex("009f009601000001"))
    with pytest.raises(OpaqueParseError):
        gpu_vbios_text(b"\x00" * 7)


def test_unknown_type_kept_raw() -> None:
    o = parse_opaque(_tlv(3, b"1.0\x00") + _tlv(999, b"\xab\xcd"), DeviceKind.GPU)
    assert o.decoded["UNKNOWN_999"] == "abcd"
    assert o.value("UNKNOWN_999") == b"\xab\xcd"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_tlv(3, b"1\x00") + _tlv(3, b"2\x00"), "twice"),
        (_tlv(3, b"1\x00")[:-1], "runs past"),
        (_tlv(3, b"1\x00") + b"\x01\x00", "too few"),
        (_tlv(255, b""), "INVALID"),
        (_tlv(3, b"550.90"), "NUL-terminated"),
        (_tlv(3, b"5\x0150\x00"), "printable"),
        (_tlv(20, b"\x00" * 47), "48 bytes"),
        (_tlv(11, b"\x00"), "neither"),
        (_tlv(36, b"\x07\x00"), "feature flag"),
        (_tlv(22, b"\x00" * 9), "multiple of 8"),
        (_tlv(12, b"\x00" * 5), "multiple of 4"),
        (_tlv(34, b"\x01"), "2 bytes"),
    ],
)
def test_gpu_opaque_strictness(data: bytes, match: str) -> None:
    with pytest.raises(OpaqueParseError, match=match):
        parse_opaque(data, DeviceKind.GPU)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_tlv(22, b"\x00" * 7), "8 bytes"),
        (_tlv(26, b"\x00" * 63), "below 64"),
        (_tlv(26, b"\x00" * 64 + b"\x09"), "GPU slot"),
        (_tlv(6, b""), "empty"),
    ],
)
def test_switch_opaque_strictness(data: bytes, match: str) -> None:
    with pytest.raises(OpaqueParseError, match=match):
        parse_opaque(data, DeviceKind.SWITCH)


def test_opaque_error_is_report_error() -> None:
    assert issubclass(OpaqueParseError, ReportParseError)


def test_switch_report_read_as_gpu_fails() -> None:
    # type 6 of a switch is ASCII; the GPU rule wants 8 binary bytes
    with pytest.raises(OpaqueParseError):
        parse_device_report(SWITCHES[0], DeviceKind.GPU)


def test_report_cache_returns_same_object() -> None:
    cache = ReportCache(max_entries=2)
    a = cache.parse(HOPPER, DeviceKind.GPU)
    assert cache.parse(bytes(HOPPER), DeviceKind.GPU) is a
    cache.parse(LEGACY, DeviceKind.GPU)
    cache.parse(BLACKWELL, DeviceKind.GPU)  # evicts HOPPER
    assert cache.parse(HOPPER, DeviceKind.GPU) is not a


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(list(DeviceKind)))
def test_random_opaque_only_parse_error(data: bytes, kind: DeviceKind) -> None:
    try:
        parse_opaque(data, kind)
    except OpaqueParseError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([HOPPER, BLACKWELL, PPCIE_GPUS[0]]), st.data())
def test_opaque_byte_flips_only_parse_error(report: bytes, data: st.DataObject) -> None:
    opaque = parse_report(report).response.opaque_data
    i = data.draw(st.integers(min_value=0, max_value=len(opaque) - 1))
    flipped = opaque[:i] + bytes([opaque[i] ^ data.draw(st.integers(1, 255))]) + opaque[i + 1 :]
    try:
        out = parse_opaque(flipped, DeviceKind.GPU)
    except OpaqueParseError:
        return
    assert out.raw == flipped and out.raw != opaque
