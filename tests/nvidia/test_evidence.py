"""Evidence containers: SDK JSON, hex text, binary; strict keys, base64, sizes."""

from __future__ import annotations

import base64
import json

import pytest

from attest.errors import InputError, ParseError
from attest.nvidia.evidence import (
    MAX_DEVICES,
    MAX_EVIDENCE_FILE_BYTES,
    Arch,
    chain_arch,
    decode_report_bytes,
    load_evidence,
    load_sdk_json,
    parse_nonce,
)
from tests.conftest import LEGACY_NONCE, NVIDIA

GPU_JSON = (NVIDIA / "ppcie/gpu_evidence.json").read_bytes()
SWITCH_JSON = (NVIDIA / "ppcie/switch_evidence.json").read_bytes()
HOPPER_HEX = (NVIDIA / "hopper/hopperAttestationReport.txt").read_bytes()
HOPPER_CHAIN = (NVIDIA / "hopper/hopperCertChain.txt").read_bytes()


def test_sdk_json_gpus() -> None:
    ev = load_evidence(GPU_JSON)
    assert len(ev) == 8
    assert [e.index for e in ev] == list(range(8))
    assert all(e.arch is Arch.HOPPER and len(e.chain) == 5 for e in ev)
    assert all(len(e.report_bytes) == 4274 for e in ev)
    assert ev[0].nonce_hint is not None and ev[0].nonce_hint.hex().startswith("4760e305")
    assert ev[0].declared_driver_version == "590.12"
    assert ev[0].declared_vbios_version == "96.00.A5.00.01"


def test_sdk_json_switches() -> None:
    ev = load_evidence(SWITCH_JSON)
    assert len(ev) == 4
    assert all(e.arch is Arch.LS10 and e.arch.kind.value == "switch" for e in ev)
    assert chain_arch(ev[0].chain) is Arch.LS10


def test_single_object_json() -> None:
    one = json.dumps(json.loads(GPU_JSON)[3]).encode()
    ev = load_sdk_json(one)
    assert len(ev) == 1 and ev[0].report_bytes == load_evidence(GPU_JSON)[3].report_bytes


def test_hex_and_binary_are_the_same_report() -> None:
    binary = decode_report_bytes(HOPPER_HEX)
    assert len(binary) == 4117
    a = load_evidence(HOPPER_HEX, certs=HOPPER_CHAIN)[0]
    b = load_evidence(binary, certs=HOPPER_CHAIN)[0]
    assert a.report_bytes == b.report_bytes == binary
    assert a.arch is None and chain_arch(a.chain) is Arch.HOPPER


def test_blackwell_chain_arch() -> None:
    chain = (NVIDIA / "blackwell/blackwell_coco_certs.txt").read_bytes()
    report = (NVIDIA / "blackwell/blackwell_coco_report.txt").read_bytes()
    assert chain_arch(load_evidence(report, certs=chain)[0].chain) is Arch.BLACKWELL


def _entry(**changes: object) -> bytes:
    e = json.loads(GPU_JSON)[0]
    e.update(changes)
    return json.dumps([{k: v for k, v in e.items() if v is not None}]).encode()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_entry(extra="x"), "unknown key"),
        (_entry(evidence=None), "missing key"),
        (_entry(arch="AMPERE"), "unknown arch"),
        (_entry(arch=7), "must be a string"),
        (_entry(evidence="@@@@"), "base64"),
        (_entry(certificate=base64.b64encode(b"not pem").decode()), "PEM"),
        (_entry(nonce="abcd"), "64 hex"),
        (_entry(nonce="zz" * 32), "exactly 64 hex digits"),
        (_entry(driver_version=5), "must be a string"),
        (b"[]", "no devices"),
        (b"[1]", "must be an object"),
        (b"[{", "malformed"),
        (b"[" + b"{}," * MAX_DEVICES + b"{}]", "limit"),
    ],
)
def test_bad_json(data: bytes, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_evidence(data)


def test_json_with_certs_is_ambiguous() -> None:
    with pytest.raises(InputError, match="drop --certs"):
        load_evidence(GPU_JSON, certs=HOPPER_CHAIN)


def test_bare_report_needs_certs() -> None:
    with pytest.raises(InputError, match="--certs"):
        load_evidence(HOPPER_HEX)


def test_size_limits() -> None:
    with pytest.raises(InputError, match="limit"):
        load_evidence(b" " * (MAX_EVIDENCE_FILE_BYTES + 1), certs=HOPPER_CHAIN)
    with pytest.raises(InputError, match="limit"):
        decode_report_bytes(b"\xff" * 100_000)


def test_parse_nonce() -> None:
    assert parse_nonce(LEGACY_NONCE).hex() == LEGACY_NONCE
    assert parse_nonce("0x" + LEGACY_NONCE.upper()).hex() == LEGACY_NONCE
    with pytest.raises(InputError):
        parse_nonce(LEGACY_NONCE[:-2])
    assert parse_nonce(f"  {LEGACY_NONCE}\n").hex() == LEGACY_NONCE  # around the whole: fine


@pytest.mark.parametrize(
    "text",
    [
        # 64 characters, but bytes.fromhex skips the spaces: 22 bytes, not 32.
        "ab " * 20 + "cdcd",
        # 64 hex digits with spaces between bytes: not the form NVIDIA writes.
        " ".join(LEGACY_NONCE[i : i + 2] for i in range(0, 64, 2)),
        LEGACY_NONCE[:32] + "\t" + LEGACY_NONCE[32:],
        LEGACY_NONCE + "00",
        "0x0x" + LEGACY_NONCE[4:],
        "zz" * 32,
        "\u0661" * 64,  # digits, but not ASCII hex digits
        "",
    ],
)
def test_parse_nonce_requires_exactly_64_hex_digits(text: str) -> None:
    with pytest.raises(ParseError, match="exactly 64 hex digits") as info:
        parse_nonce(text, where="--nonce")
    assert info.value.field == "--nonce"
