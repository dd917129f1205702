"""Property tests over whole reports: a single changed byte anywhere makes verification fail
with a typed error; random bytes and truncations raise only the parser's error type."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import VerificationError
from attest.nvidia.device import verify_device
from attest.nvidia.evidence import DeviceEvidence, load_evidence
from attest.nvidia.opaque import DeviceKind, parse_device_report
from attest.nvidia.spdm import ReportParseError
from attest.x509chain import ChainCache
from tests.conftest import NVIDIA, TODAY

HOPPER = load_evidence(
    (NVIDIA / "hopper/hopperAttestationReport.txt").read_bytes(),
    certs=(NVIDIA / "hopper/hopperCertChain.txt").read_bytes(),
)[0]
SWITCH = load_evidence((NVIDIA / "ppcie/switch_evidence.json").read_bytes())[0]
CACHE = ChainCache()
NONCES = {ev.report_bytes: ev.report_bytes[4:36] for ev in (HOPPER, SWITCH)}


def _verify(ev: DeviceEvidence, data: bytes) -> None:
    verify_device(
        replace(ev, report_bytes=data),
        at=TODAY,
        expected_nonce=NONCES[ev.report_bytes],
        chain_cache=CACHE,
    )


def test_unchanged_reports_verify() -> None:
    for ev in (HOPPER, SWITCH):
        _verify(ev, ev.report_bytes)


@settings(max_examples=250, deadline=None)
@given(st.sampled_from([HOPPER, SWITCH]), st.data())
def test_any_single_byte_change_fails_typed(ev: DeviceEvidence, data: st.DataObject) -> None:
    raw = ev.report_bytes
    i = data.draw(st.integers(min_value=0, max_value=len(raw) - 1), label="offset")
    delta = data.draw(st.integers(min_value=1, max_value=255), label="xor")
    changed = raw[:i] + bytes([raw[i] ^ delta]) + raw[i + 1 :]
    with pytest.raises((ReportParseError, VerificationError)):
        _verify(ev, changed)


@pytest.mark.parametrize("ev", [HOPPER, SWITCH], ids=["hopper", "switch"])
def test_every_offset_of_the_signature_and_nonce(ev: DeviceEvidence) -> None:
    raw = ev.report_bytes
    # exhaustive where it is cheap: nonce bytes and signature bytes
    for i in [*range(4, 36), *range(len(raw) - 96, len(raw))]:
        with pytest.raises(VerificationError):
            _verify(ev, raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :])


@settings(max_examples=250, deadline=None)
@given(st.binary(max_size=4300), st.sampled_from(list(DeviceKind)))
def test_random_bytes_only_parser_error(data: bytes, kind: DeviceKind) -> None:
    try:
        parse_device_report(data, kind)
    except ReportParseError:
        pass


@settings(max_examples=250, deadline=None)
@given(st.sampled_from([HOPPER, SWITCH]), st.data())
def test_truncations_only_parser_error(ev: DeviceEvidence, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(ev.report_bytes) - 1))
    kind = DeviceKind.GPU if ev is HOPPER else DeviceKind.SWITCH
    with pytest.raises(ReportParseError):
        parse_device_report(ev.report_bytes[:cut], kind)
