"""Protected-PCIe (PPCIe) topology: do the GPUs and NVSwitches of one set see each other?

In an HGX system in PPCIe mode every GPU reports, in its signed opaque data, the PDI of the
NVSwitch at the far end of each NVLink (type 22 SWITCH_PDI, stored byte-reversed; all-zero for a
link that is down), and every NVSwitch reports its own PDI (type 22 DEVICE_PDI) and the PDIs of
the GPU slots it serves (type 26). A set of reports is consistent when:

1. every GPU sees the same non-empty set of switches (NVIDIA: "4 unique switches");
2. that set is exactly the set of switches whose reports were given, with no switch twice
   (NVIDIA checks only that each switch is *in* the set, so two copies of one switch's report,
   or a set missing a switch, pass its check);
3. every switch serves the same set of GPU slots, as many as there are GPU reports;
4. every GPU runs in PPCIe mode (FEATURE_FLAG = PPCIE) with protected PCIe enabled.

A GPU reports no PDI of its own, so 3. can only compare numbers: that no GPU's evidence fills
two slots is the verifier's set check (``attest.nvidia.verifier.DeviceIdentity``: the same
leaf or device identity key twice), which runs on every set.

NVIDIA hard-codes 8 GPUs and 4 switches; here the counts come from the evidence set itself, and
the caller may pin them. The reports must already be verified: this is pure set logic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attest.nvidia.claims import Failure
from attest.nvidia.opaque import PDI_LENGTH, DeviceKind, FeatureFlag, OpaqueData

#: A link that is down reports this PDI.
DISABLED_PDI = bytes(PDI_LENGTH)


def gpu_seen_switches(opaque: OpaqueData) -> frozenset[bytes]:
    """The switch PDIs a GPU reports, in the switches' own byte order, disabled links removed."""
    return frozenset(p[::-1] for p in opaque.switch_pdis if p != DISABLED_PDI)


@dataclass(frozen=True)
class TopologyResult:
    """``ok`` iff ``failures`` is empty. PDIs are hex strings in the switches' byte order."""

    ok: bool
    switch_pdis: tuple[str, ...]
    gpu_pdis: tuple[str, ...]
    failures: tuple[Failure, ...]


def _hexes(pdis: frozenset[bytes]) -> tuple[str, ...]:
    return tuple(sorted(p.hex() for p in pdis))


def check_topology(
    gpus: Sequence[OpaqueData],
    switches: Sequence[OpaqueData],
    *,
    expected_gpus: int | None = None,
    expected_switches: int | None = None,
) -> TopologyResult:
    """Check a PPCIe set (verified GPU and NVSwitch opaque data); collect every failure."""
    failures: list[Failure] = []
    if any(g.kind is not DeviceKind.GPU for g in gpus) or any(
        s.kind is not DeviceKind.SWITCH for s in switches
    ):
        raise ValueError("check_topology: GPU and switch opaque data given in the wrong lists")
    if expected_gpus is not None and len(gpus) != expected_gpus:
        failures.append(Failure("topology.gpu_count", expected_gpus, len(gpus)))
    if expected_switches is not None and len(switches) != expected_switches:
        failures.append(Failure("topology.switch_count", expected_switches, len(switches)))
    if not gpus:
        failures.append(Failure("topology.gpu_count", ">= 1", 0))
    if not switches:
        failures.append(Failure("topology.switch_count", ">= 1", 0))

    for i, g in enumerate(gpus):
        if g.feature_flag is not FeatureFlag.PPCIE:
            flag = g.feature_flag.value if g.feature_flag else None
            failures.append(Failure(f"gpu{i}.FEATURE_FLAG", FeatureFlag.PPCIE.value, flag))
        if g.protected_pcie_status != "enabled":
            failures.append(
                Failure(f"gpu{i}.PROTECTED_PCIE_STATUS", "enabled", g.protected_pcie_status)
            )

    # 1. every GPU sees the same switches
    seen = [gpu_seen_switches(g) for g in gpus]
    reference = seen[0] if seen else frozenset()
    for i, s in enumerate(seen):
        if not s:
            failures.append(Failure(f"gpu{i}.SWITCH_PDI", "at least one switch", "none"))
        elif s != reference:
            failures.append(Failure(f"gpu{i}.SWITCH_PDI", _hexes(reference), _hexes(s)))

    # 2. the switches seen are exactly the switches attested, each once
    device_pdis: list[bytes] = []
    for i, sw in enumerate(switches):
        pdi = sw.device_pdi
        if pdi is None:
            failures.append(Failure(f"switch{i}.DEVICE_PDI", "present", None))
            continue
        if pdi in device_pdis:
            failures.append(
                Failure(f"switch{i}.DEVICE_PDI", "unique", pdi.hex(), "same switch given twice")
            )
        device_pdis.append(pdi)
        if gpus and pdi not in reference:
            failures.append(
                Failure(f"switch{i}.DEVICE_PDI", _hexes(reference), pdi.hex(), "no GPU sees it")
            )
    attested = frozenset(device_pdis)
    if gpus and switches and reference and reference - attested:
        failures.append(
            Failure(
                "topology.switches",
                _hexes(reference),
                _hexes(attested),
                "switches seen by the GPUs without a report",
            )
        )

    # 3. every switch serves the same GPU slots, one per GPU report
    served = [frozenset(p for p in sw.switch_gpu_pdis if p != DISABLED_PDI) for sw in switches]
    gpu_ref = served[0] if served else frozenset()
    for i, s in enumerate(served):
        if not s:
            failures.append(Failure(f"switch{i}.SWITCH_GPU_PDIS", "at least one GPU", "none"))
        elif s != gpu_ref:
            failures.append(Failure(f"switch{i}.SWITCH_GPU_PDIS", _hexes(gpu_ref), _hexes(s)))
    if served and gpus and len(gpu_ref) != len(gpus):
        failures.append(
            Failure(
                "topology.gpu_count",
                len(gpus),
                len(gpu_ref),
                "GPUs served by the switches vs GPU reports given",
            )
        )
    return TopologyResult(
        ok=not failures,
        switch_pdis=_hexes(reference),
        gpu_pdis=_hexes(gpu_ref),
        failures=tuple(failures),
    )
