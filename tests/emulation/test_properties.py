"""Properties: any emulated evidence verifies, any single-byte change is caught by the real
parsers or verifiers with a typed error, and a damaged PKI directory only ever raises
EmulationPkiError."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.emulation import EmulatedGpu, EmulatedSnp, EmulationPki, EmulationPkiError, SnpTcb
from attest.errors import ParseError, VerificationError
from attest.nvidia.device import SignatureError, check_fwid, verify_signature
from attest.nvidia.opaque import DeviceKind, parse_device_report
from attest.nvidia.rim import compare_measurements, parse_rim
from attest.nvidia.spdm import ReportParseError
from tests.emulation.test_snp import verify_with_emulation_ark

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
NONCE = bytes(32)

measurement_lists = st.lists(st.binary(min_size=48, max_size=48), min_size=64, max_size=64)


@SETTINGS
@given(nonce=st.binary(min_size=32, max_size=32), values=measurement_lists, index=st.integers(0, 7))
def test_any_gpu_report_verifies_and_its_rims_match(
    pki: EmulationPki, nonce: bytes, values: list[bytes], index: int
) -> None:
    gpu = EmulatedGpu(pki, measurements=values, index=index)
    report = parse_device_report(gpu.report(nonce), DeviceKind.GPU)
    verify_signature(report, pki.device_chain(index)[0])
    check_fwid(report, pki.device_chain(index)[0])
    assert report.nonce == nonce
    comparison = compare_measurements(
        report.measurements, driver=parse_rim(gpu.driver_rim()), vbios=parse_rim(gpu.vbios_rim())
    )
    assert comparison.ok and comparison.mismatches == ()


@pytest.fixture(scope="module")
def signed_report(pki: EmulationPki) -> bytes:
    return EmulatedGpu(pki).report(NONCE)


@SETTINGS
@given(data=st.data())
def test_any_single_byte_change_is_caught(
    pki: EmulationPki, signed_report: bytes, data: st.DataObject
) -> None:
    pos = data.draw(st.integers(0, len(signed_report) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != signed_report[pos]))
    changed = signed_report[:pos] + bytes([new]) + signed_report[pos + 1 :]
    try:
        report = parse_device_report(changed, DeviceKind.GPU)
    except ReportParseError:
        return
    with pytest.raises(SignatureError):
        verify_signature(report, pki.device_chain(0)[0])


@SETTINGS
@given(cut=st.integers(1, 4116))
def test_truncation_is_a_parse_error(signed_report: bytes, cut: int) -> None:
    with pytest.raises(ReportParseError):
        parse_device_report(signed_report[:cut], DeviceKind.GPU)


@pytest.fixture(scope="module")
def snp(pki: EmulationPki) -> EmulatedSnp:
    return EmulatedSnp(pki, measurement=bytes(48))


@SETTINGS
@given(data=st.data())
def test_any_single_byte_change_to_an_snp_report_is_caught(
    snp: EmulatedSnp, data: st.DataObject
) -> None:
    original = snp.report(bytes(64))
    pos = data.draw(st.integers(0, len(original) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != original[pos]))
    changed = original[:pos] + bytes([new]) + original[pos + 1 :]
    with pytest.raises((ParseError, InvalidSignature, VerificationError)):
        verify_with_emulation_ark(changed, snp, datetime.now(UTC))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    bl=st.integers(0, 255),
    tee=st.integers(0, 255),
    snp_svn=st.integers(0, 255),
    uc=st.integers(0, 255),
)
def test_any_tcb_gets_a_vcek_that_vouches_for_it(
    pki: EmulationPki, bl: int, tee: int, snp_svn: int, uc: int
) -> None:
    guest = EmulatedSnp(pki, measurement=bytes(48), tcb=SnpTcb(bl, tee, snp_svn, uc), version=2)
    report = verify_with_emulation_ark(guest.report(bytes(64)), guest, datetime.now(UTC))
    assert report.reported_tcb_raw == bytes([bl, tee, 0, 0, 0, 0, snp_svn, uc])


@pytest.fixture(scope="module")
def pki_copy(pki: EmulationPki) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "pki"
        shutil.copytree(pki.directory, target)
        yield target


_FILES = (
    "manifest.json",
    "gpu/root.pem",
    "gpu/root.key",
    "gpu/5/leaf.pem",
    "gpu/5/brom.key",
    "rim/vbios.pem",
    "rim/l3.key",
    "snp/ask.key",
    "snp/ark.pem",
    "snp/chip.secret",
)


@settings(max_examples=120, deadline=None)
@given(name=st.sampled_from(_FILES), junk=st.binary(max_size=600), keep=st.integers(0, 4000))
def test_a_damaged_pki_file_is_an_emulation_pki_error(
    pki_copy: Path, name: str, junk: bytes, keep: int
) -> None:
    path = pki_copy / name
    original = path.read_bytes()
    try:
        path.write_bytes(original[: keep % (len(original) + 1)] + junk)
        if path.read_bytes() == original:
            return
        with pytest.raises(EmulationPkiError):
            EmulationPki.load(pki_copy)
    finally:
        path.write_bytes(original)
    EmulationPki.load(pki_copy)  # restored: loads again
