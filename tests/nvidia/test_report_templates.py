"""ReportTemplates: a device's next report reuses the strict parse of its last one.

The cache rests on one fact about the parser (``attest.nvidia.spdm``/``opaque``): it reads the
requester nonce, the responder nonce and the signature as opaque bytes of fixed size and place.
These tests pin that fact on real reports (Hopper, Hopper legacy, Blackwell, PPCIe GPUs and
NVSwitches from tests/assets/nvidia), and check that whatever bytes come in, the cache answers
exactly what a fresh ``parse_device_report`` answers: the same report, or the same typed error.
"""

from __future__ import annotations

import base64
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.nvidia.opaque import DeviceKind, DeviceReport, parse_device_report
from attest.nvidia.spdm import NONCE_LENGTH, SIGNATURE_LENGTH, ReportParseError
from attest.nvidia.verifier import ReportTemplates, measurement_record
from tests.conftest import NVIDIA


def _hex(path: str) -> bytes:
    return bytes.fromhex("".join((NVIDIA / path).read_text().split()))


def _json(name: str) -> list[bytes]:
    doc = json.loads((NVIDIA / "ppcie" / name).read_text())
    return [base64.b64decode(e["evidence"]) for e in doc]


HOPPER = _hex("hopper/hopperAttestationReport.txt")
LEGACY = _hex("hopper_legacy/attestationReport.txt")
BLACKWELL = _hex("blackwell/blackwell_coco_report.txt")
REAL: list[tuple[bytes, DeviceKind]] = [
    (HOPPER, DeviceKind.GPU),
    (LEGACY, DeviceKind.GPU),
    (BLACKWELL, DeviceKind.GPU),
    (_json("gpu_evidence.json")[0], DeviceKind.GPU),
    (_json("switch_evidence.json")[0], DeviceKind.SWITCH),
]


def _responder_nonce_at(report: bytes, kind: DeviceKind) -> int:
    parsed = parse_device_report(report, kind)
    return report.index(parsed.spdm.response.responder_nonce)


def _next_report(
    report: bytes, kind: DeviceKind, nonce: bytes, responder: bytes, signature: bytes
) -> bytes:
    """The same device's report with other per-session bytes (what a new session sends)."""
    at = _responder_nonce_at(report, kind)
    out = bytearray(report)
    out[4 : 4 + NONCE_LENGTH] = nonce
    out[at : at + NONCE_LENGTH] = responder
    out[-SIGNATURE_LENGTH:] = signature
    return bytes(out)


def _same(a: DeviceReport, b: DeviceReport) -> None:
    assert a == b
    assert a.raw == b.raw and a.nonce == b.nonce
    assert a.spdm.response.responder_nonce == b.spdm.response.responder_nonce
    assert a.spdm.signature == b.spdm.signature and a.spdm.signed_bytes == b.spdm.signed_bytes
    assert dict(a.measurements) == dict(b.measurements)


@pytest.mark.parametrize(("report", "kind"), REAL, ids=lambda v: getattr(v, "name", None))
def test_next_report_hits_and_equals_a_fresh_parse(report: bytes, kind: DeviceKind) -> None:
    cache = ReportTemplates()
    _same(cache.parse(report, kind), parse_device_report(report, kind))
    nxt = _next_report(
        report, kind, os.urandom(NONCE_LENGTH), os.urandom(NONCE_LENGTH), os.urandom(96)
    )
    got = cache.parse(nxt, kind)
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)
    _same(got, parse_device_report(nxt, kind))
    assert got.raw == nxt and got != cache.parse(report, kind)
    assert measurement_record(got) == measurement_record(parse_device_report(report, kind))


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(REAL),
    st.binary(min_size=NONCE_LENGTH, max_size=NONCE_LENGTH),
    st.binary(min_size=NONCE_LENGTH, max_size=NONCE_LENGTH),
    st.binary(min_size=SIGNATURE_LENGTH, max_size=SIGNATURE_LENGTH),
)
def test_parser_ignores_the_contents_of_the_per_session_fields(
    real: tuple[bytes, DeviceKind], nonce: bytes, responder: bytes, signature: bytes
) -> None:
    """The fact the cache rests on: any values there parse, and change only those fields."""
    report, kind = real
    cache = ReportTemplates()
    cache.parse(report, kind)
    nxt = _next_report(report, kind, nonce, responder, signature)
    fresh = parse_device_report(nxt, kind)
    _same(cache.parse(nxt, kind), fresh)
    assert cache.hits == 1
    base = parse_device_report(report, kind)
    assert fresh.opaque == base.opaque and dict(fresh.measurements) == dict(base.measurements)
    assert fresh.spdm.response.blocks == base.spdm.response.blocks


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(REAL), st.data())
def test_single_byte_flips_answer_like_a_fresh_parse(
    real: tuple[bytes, DeviceKind], data: st.DataObject
) -> None:
    report, kind = real
    cache = ReportTemplates()
    cache.parse(report, kind)
    pos = data.draw(st.integers(0, len(report) - 1))
    flipped = bytearray(report)
    flipped[pos] ^= data.draw(st.integers(1, 255))
    try:
        fresh = parse_device_report(bytes(flipped), kind)
    except ReportParseError as exc:
        with pytest.raises(ReportParseError) as info:
            cache.parse(bytes(flipped), kind)
        assert str(info.value) == str(exc)
    else:
        _same(cache.parse(bytes(flipped), kind), fresh)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(REAL), st.data())
def test_truncation_and_extension_only_typed_errors(
    real: tuple[bytes, DeviceKind], data: st.DataObject
) -> None:
    report, kind = real
    cache = ReportTemplates()
    cache.parse(report, kind)
    cut = data.draw(st.integers(0, len(report) - 1))
    for bad in (report[:cut], report + data.draw(st.binary(min_size=1, max_size=64))):
        with pytest.raises(ReportParseError):
            cache.parse(bad, kind)
    assert len(cache) == 1


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=4200), st.sampled_from(list(DeviceKind)))
def test_random_bytes_only_typed_errors_and_nothing_kept(data: bytes, kind: DeviceKind) -> None:
    cache = ReportTemplates()
    with pytest.raises(ReportParseError):
        cache.parse(data, kind)
    assert len(cache) == 0


def test_failure_is_not_cached() -> None:
    cache = ReportTemplates()
    bad = bytearray(HOPPER)
    bad[0] = 0x12  # SPDM version
    for _ in range(2):
        with pytest.raises(ReportParseError):
            cache.parse(bytes(bad), DeviceKind.GPU)
    assert len(cache) == 0 and cache.hits == 0


def test_kind_is_part_of_the_key() -> None:
    cache = ReportTemplates()
    cache.parse(HOPPER, DeviceKind.GPU)
    with pytest.raises(ReportParseError):
        cache.parse(HOPPER, DeviceKind.SWITCH)  # a GPU report read as a switch's, freshly
    assert cache.hits == 0


def test_bounded_oldest_out_first() -> None:
    cache = ReportTemplates(max_entries=1)
    cache.parse(HOPPER, DeviceKind.GPU)
    cache.parse(LEGACY, DeviceKind.GPU)
    assert len(cache) == 1
    cache.parse(HOPPER, DeviceKind.GPU)
    assert cache.misses == 3 and cache.hits == 0
