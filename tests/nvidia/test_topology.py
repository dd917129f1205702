"""PPCIe topology on the real 8-GPU + 4-NVSwitch evidence, and what breaks it."""

from __future__ import annotations

import base64
import json

import pytest

from attest.nvidia.opaque import DeviceKind, OpaqueData, parse_device_report, parse_opaque
from attest.nvidia.topology import check_topology, gpu_seen_switches
from tests.conftest import NVIDIA


def _opaques(name: str, kind: DeviceKind) -> list[OpaqueData]:
    doc = json.loads((NVIDIA / "ppcie" / name).read_text())
    return [parse_device_report(base64.b64decode(e["evidence"]), kind).opaque for e in doc]


GPUS = _opaques("gpu_evidence.json", DeviceKind.GPU)
SWITCHES = _opaques("switch_evidence.json", DeviceKind.SWITCH)


def _with_field(o: OpaqueData, ftype: int, value: bytes) -> OpaqueData:
    """Rebuild ``o`` with one field replaced (synthetic: only for topology logic)."""
    out = b""
    for f in o.fields:
        v = value if f.type == ftype else f.value
        out += f.type.to_bytes(2, "little") + len(v).to_bytes(2, "little") + v
    return parse_opaque(out, o.kind)


def test_real_set_is_consistent() -> None:
    r = check_topology(GPUS, SWITCHES, expected_gpus=8, expected_switches=4)
    assert r.ok and r.failures == ()
    assert len(r.switch_pdis) == 4 and len(r.gpu_pdis) == 8
    assert {s.device_pdi.hex() for s in SWITCHES if s.device_pdi} == set(r.switch_pdis)


def test_gpu_pdis_are_byte_reversed() -> None:
    seen = gpu_seen_switches(GPUS[0])
    assert SWITCHES[0].device_pdi in seen
    assert SWITCHES[0].device_pdi[::-1] not in seen


def test_missing_switch_report() -> None:
    r = check_topology(GPUS, SWITCHES[:3])
    assert not r.ok
    assert any(f.field == "topology.switches" for f in r.failures)


def test_same_switch_twice() -> None:
    r = check_topology(GPUS, [*SWITCHES[:3], SWITCHES[0]])
    assert any(f.field == "switch3.DEVICE_PDI" and f.expected == "unique" for f in r.failures)


def test_missing_gpu_report() -> None:
    r = check_topology(GPUS[:7], SWITCHES)
    assert [f.field for f in r.failures] == ["topology.gpu_count"]
    assert (r.failures[0].expected, r.failures[0].actual) == (7, 8)


def test_pinned_counts() -> None:
    r = check_topology(GPUS, SWITCHES, expected_gpus=4, expected_switches=2)
    assert {f.field for f in r.failures} == {"topology.gpu_count", "topology.switch_count"}


def test_gpu_seeing_other_switches() -> None:
    odd = _with_field(GPUS[2], 22, bytes(range(1, 9)) * 18)
    r = check_topology([*GPUS[:2], odd, *GPUS[3:]], SWITCHES)
    assert any(f.field == "gpu2.SWITCH_PDI" for f in r.failures)


def test_disabled_links_are_ignored() -> None:
    raw = GPUS[1].value("SWITCH_PDI")
    assert raw is not None
    disabled = _with_field(GPUS[1], 22, raw[:-16] + bytes(16))
    assert gpu_seen_switches(disabled) == gpu_seen_switches(GPUS[1])


def test_switch_serving_other_gpus() -> None:
    raw = SWITCHES[1].value("SWITCH_GPU_PDIS")
    assert raw is not None
    odd = _with_field(SWITCHES[1], 26, b"\x42" * 8 + raw[8:])
    r = check_topology(GPUS, [SWITCHES[0], odd, *SWITCHES[2:]])
    assert any(f.field == "switch1.SWITCH_GPU_PDIS" for f in r.failures)


def test_gpu_not_in_ppcie_mode() -> None:
    spt = _with_field(GPUS[0], 36, b"\x00\x00")
    off = _with_field(GPUS[1], 21, b"\x55")
    r = check_topology([spt, off, *GPUS[2:]], SWITCHES)
    fields = {f.field for f in r.failures}
    assert fields == {"gpu0.FEATURE_FLAG", "gpu1.PROTECTED_PCIE_STATUS"}


def test_lists_must_hold_the_right_kind() -> None:
    with pytest.raises(ValueError, match="wrong lists"):
        check_topology(SWITCHES, GPUS)
