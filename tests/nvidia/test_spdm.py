"""SPDM 1.1 framing of NVIDIA reports: real vectors parse; every header byte, count and length
is checked; anything else raises ReportParseError and nothing else."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attest.nvidia.spdm import (
    MAX_OPAQUE_LENGTH,
    MAX_REPORT_LENGTH,
    REQUEST_LENGTH,
    SIGNATURE_LENGTH,
    ReportParseError,
    parse_report,
)
from tests.conftest import LEGACY_NONCE, NVIDIA


def _hex(path: str) -> bytes:
    return bytes.fromhex("".join((NVIDIA / path).read_text().split()))


HOPPER = _hex("hopper/hopperAttestationReport.txt")
LEGACY = _hex("hopper_legacy/attestationReport.txt")
BLACKWELL = _hex("blackwell/blackwell_coco_report.txt")
SWITCH = base64.b64decode(
    json.loads((NVIDIA / "ppcie/switch_evidence.json").read_text())[0]["evidence"]
)
R = REQUEST_LENGTH  # response offsets are relative to this


@pytest.mark.parametrize(
    ("report", "length", "blocks", "nonce_prefix"),
    [
        (HOPPER, 4117, 64, "931d8dd0"),
        (LEGACY, 4049, 64, LEGACY_NONCE[:8]),
        (BLACKWELL, 4140, 64, "d622979b"),
        (SWITCH, 2172, 31, "4760e305"),
    ],
)
def test_real_reports_parse(report: bytes, length: int, blocks: int, nonce_prefix: str) -> None:
    r = parse_report(report)
    assert len(r.raw) == length
    assert r.request.raw == report[:37] and r.request.slot_id == 0
    assert (r.request.param1, r.request.param2) == (0x01, 0xFF)
    assert r.nonce.hex().startswith(nonce_prefix)
    assert r.response.number_of_blocks == blocks == len(r.measurements)
    assert list(r.measurements) == list(range(1, blocks + 1))
    assert all(len(v) == 48 for v in r.measurements.values())
    assert r.signed_bytes + r.signature == report
    assert len(r.signature) == SIGNATURE_LENGTH
    assert r.response.raw + b"" == report[37:]


def test_legacy_first_block_value() -> None:
    r = parse_report(LEGACY)
    blk = r.response.blocks[0]
    assert (blk.index, blk.specification, blk.value_type) == (1, 1, 1)
    assert blk.offset == R + 8


def _mutate(data: bytes, off: int, value: int) -> bytes:
    return data[:off] + bytes([value]) + data[off + 1 :]


@pytest.mark.parametrize(
    ("offset", "value", "field"),
    [
        (0, 0x10, "request.SPDMVersion"),
        (1, 0xE1, "request.RequestResponseCode"),
        (2, 0x03, "request.Param1"),
        (3, 0x01, "request.Param2"),
        (36, 0x08, "request.SlotID"),
        (R + 0, 0x12, "response.SPDMVersion"),
        (R + 1, 0x61, "response.RequestResponseCode"),
        (R + 2, 0x40, "response.Param1"),
        (R + 3, 0x01, "response.Param2"),
        (R + 4, 63, "NumberOfBlocks"),
        (R + 4, 0, "NumberOfBlocks"),
        (R + 8, 2, "Index"),  # block 1 claims index 2, then block 2 is not increasing
        (R + 8, 0, "Index"),
        (R + 9, 0x02, "MeasurementSpecification"),
        (R + 10, 0x34, "MeasurementSize"),
        (R + 12, 0x81, "DMTFSpecMeasurementValueType"),
        (R + 12, 0x05, "DMTFSpecMeasurementValueType"),
    ],
)
def test_header_bytes_are_checked(offset: int, value: int, field: str) -> None:
    with pytest.raises(ReportParseError) as info:
        parse_report(_mutate(HOPPER, offset, value))
    assert info.value.field == field


def test_value_size_must_be_sha384() -> None:
    # value size 47 with measurement size 50: consistent lengths, wrong digest size
    bad = HOPPER[: R + 10] + (50).to_bytes(2, "little") + b"\x01" + (47).to_bytes(2, "little")
    with pytest.raises(ReportParseError) as info:
        parse_report(bad + HOPPER[R + 15 :])
    assert info.value.field == "DMTFSpecMeasurementValueSize"


def test_trailing_bytes_rejected() -> None:
    with pytest.raises(ReportParseError, match="trailing") as info:
        parse_report(HOPPER + b"\x00")
    assert info.value.field == "trailing"


def test_truncated_signature_rejected() -> None:
    with pytest.raises(ReportParseError, match="truncated"):
        parse_report(HOPPER[:-1])


def test_opaque_length_limit() -> None:
    r = parse_report(HOPPER)
    off = R + 8 + r.response.record_length + 32
    bad = HOPPER[:off] + (MAX_OPAQUE_LENGTH + 1).to_bytes(2, "little") + HOPPER[off + 2 :]
    with pytest.raises(ReportParseError) as info:
        parse_report(bad)
    assert info.value.field == "OpaqueLength"


def test_record_length_past_end() -> None:
    bad = HOPPER[: R + 5] + (0xFFFF).to_bytes(3, "little") + HOPPER[R + 8 :]
    with pytest.raises(ReportParseError) as info:
        parse_report(bad)
    assert info.value.field == "MeasurementRecordLength"


def test_size_bounds() -> None:
    with pytest.raises(ReportParseError, match="limit"):
        parse_report(b"\x11" * (MAX_REPORT_LENGTH + 1))
    with pytest.raises(ReportParseError, match="smallest"):
        parse_report(HOPPER[:100])


def test_non_bytes_refused() -> None:
    with pytest.raises(ReportParseError):
        parse_report("11e0" * 200)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=5000))
def test_random_bytes_only_parse_error(data: bytes) -> None:
    try:
        parse_report(data)
    except ReportParseError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([HOPPER, LEGACY, BLACKWELL, SWITCH]), st.data())
def test_truncations_only_parse_error(report: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(report) - 1))
    with pytest.raises(ReportParseError):
        parse_report(report[:cut])


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([HOPPER, SWITCH]),
    st.data(),
    st.binary(min_size=1, max_size=64),
)
def test_spliced_random_only_parse_error(report: bytes, data: st.DataObject, junk: bytes) -> None:
    at = data.draw(st.integers(min_value=0, max_value=len(report)))
    try:
        parse_report(report[:at] + junk + report[at:])
    except ReportParseError:
        pass
    else:
        raise AssertionError("a report with inserted bytes parsed")
