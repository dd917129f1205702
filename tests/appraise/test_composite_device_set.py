"""The policy's device counts and PPCIe rule, judged on what was attested, not on the bundle.

The bundle is the host's: which list (``gpus`` or ``switches``) a device's evidence sits in is
not signed by anything. ``gpu.count``, ``gpu.switch_count`` and ``gpu.ppcie_topology_required``
were once judged on the lengths of those lists, so a second GPU listed under ``switches`` went
uncounted and stood in for an NVSwitch (with no topology check at all). Devices are now counted
by the kind their leaf certificate names, a device listed under the other kind is a REJECT, and
the PPCIe rule needs an attested NVSwitch and a topology check that ran and passed. And one
physical GPU never counts twice, whatever the encoding of its certificates
(tests/nvidia/test_duplicate_devices.py).

Emulated SEV-SNP + Hopper (``agent.emulation``, the demo policy that trusts its roots) and the
real PPCIe sample set (8 GPUs, 4 NVSwitches).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from agent.agent import EMULATED_LAUNCH_MEASUREMENT
from agent.demo import demo_policy
from agent.emulation import EmulatedGpu, EmulatedSnp, EmulationPki
from attest.appraise.common import DeviceAppraisal, appraisal_status
from attest.appraise.composite import AppraisalContext, appraise_bundle
from attest.binding import SessionBinding
from attest.bundle import DeviceEvidenceIn, EvidenceBundle, SnpEvidenceIn
from attest.ear import Status
from attest.findings import Finding
from attest.nvidia.evidence import DeviceEvidence, load_evidence
from attest.policy import Policy, load_policy
from tests.appraise.test_composite import (
    SNP_CERTS,
    SNP_REPORT,
    emulated_context,
    gpu_policy,
)
from tests.conftest import NVIDIA, TODAY
from tests.nvidia.test_duplicate_devices import malleate

PPCIE_GPUS = load_evidence((NVIDIA / "ppcie/gpu_evidence.json").read_bytes())
PPCIE_SWITCHES = load_evidence((NVIDIA / "ppcie/switch_evidence.json").read_bytes())
PPCIE_NONCE = bytes.fromhex("4760e30534a0621357d458b1a7936551b5dc4cd1e69718adf7ed9fb0252a537e")
#: The fields of the rules under test (everything else about the real set is not at issue:
#: no RIMs or OCSP answers are shipped for it, so its devices are rejected for that anyway).
SET_FIELDS = ("gpu.count", "gpu.switch_count", "topology", "device")


@dataclass
class Emulated:
    pki: EmulationPki
    made: datetime

    def policy(self, **gpu: object) -> Policy:
        doc = demo_policy(list(self.pki.root_fingerprints().values()), "00" * 32)
        doc["gpu"] = gpu
        return load_policy(json.dumps(doc))

    def context(self) -> AppraisalContext:
        return emulated_context(self.pki)

    def gpu(self, index: int, nonce: bytes, chain: bytes | None = None) -> DeviceEvidenceIn:
        g = EmulatedGpu(self.pki, index=index)
        return DeviceEvidenceIn(
            "HOPPER",
            g.report(nonce),
            chain if chain is not None else g.certificate_chain_pem(),
            g.ocsp_responses(self.made),
            (g.driver_rim(), g.vbios_rim()),
        )

    def appraise(
        self,
        policy: Policy,
        binding: SessionBinding,
        gpus: Sequence[DeviceEvidenceIn],
        switches: Sequence[DeviceEvidenceIn] = (),
    ) -> tuple[Status, tuple[DeviceAppraisal, ...], tuple[Finding, ...]]:
        snp = EmulatedSnp(self.pki, measurement=EMULATED_LAUNCH_MEASUREMENT)
        cpu = SnpEvidenceIn(snp.report(binding.report_data), snp.certificates(), snp.crl(self.made))
        bundle = EvidenceBundle(
            cpu=cpu, gpus=tuple(gpus), switches=tuple(switches), cc_mode_on=True, devtools_on=False
        )
        devices, findings = appraise_bundle(
            bundle, binding, policy, datetime.now(UTC), context=self.context()
        )
        return appraisal_status(devices, findings), devices, findings


@pytest.fixture(scope="module")
def emu(pki: EmulationPki) -> Emulated:
    return Emulated(pki, datetime.now(UTC))


def _binding() -> SessionBinding:
    return SessionBinding(report_data=os.urandom(64), gpu_nonce=os.urandom(32))


def _enclave(findings: Sequence[Finding]) -> list[tuple[str, object, object, str]]:
    return [(f.field, f.expected, f.actual, f.severity.value) for f in findings]


def _device(d: DeviceAppraisal) -> list[tuple[str, object, object, str]]:
    return [(f.field, f.expected, f.actual, f.severity.value) for f in d.findings]


# --- one GPU counted twice --------------------------------------------------------------------


def test_two_gpus_meet_a_count_of_two(emu: Emulated) -> None:
    b = _binding()
    status, _, findings = emu.appraise(
        emu.policy(count=2), b, [emu.gpu(0, b.gpu_nonce), emu.gpu(1, b.gpu_nonce)]
    )
    assert (status, findings) == (Status.AFFIRMING, ())


def test_one_gpu_with_a_malleated_leaf_does_not_meet_a_count_of_two(emu: Emulated) -> None:
    b = _binding()
    chain = emu.pki.device_chain(0)
    twin = b"".join(
        c.public_bytes(Encoding.PEM) for c in (malleate(chain[0], chain[1]), *chain[1:])
    )
    status, devices, findings = emu.appraise(
        emu.policy(count=2), b, [emu.gpu(0, b.gpu_nonce), emu.gpu(0, b.gpu_nonce, twin)]
    )
    # each copy, on its own, is a perfectly good GPU
    assert [d.status for d in devices] == [Status.AFFIRMING] * 3
    assert _enclave(findings) == [
        ("device1.leaf_certificate", "a device given once", "same leaf as device0", "reject")
    ]
    assert status is Status.CONTRAINDICATED


# --- the bundle's lists -----------------------------------------------------------------------


def test_a_gpu_listed_under_switches_is_still_counted_as_a_gpu(emu: Emulated) -> None:
    b = _binding()
    status, devices, findings = emu.appraise(
        emu.policy(count=1), b, [emu.gpu(0, b.gpu_nonce)], [emu.gpu(1, b.gpu_nonce)]
    )
    assert [d.name for d in devices] == ["cpu0", "gpu0", "gpu1"]
    assert _device(devices[2]) == [("device.declared_kind", "gpu", "switch", "reject")]
    assert _enclave(findings) == [("gpu.count", 1, 2, "reject")]
    assert status is Status.CONTRAINDICATED


def test_a_gpu_listed_under_switches_is_no_nvswitch(emu: Emulated) -> None:
    b = _binding()
    policy = emu.policy(ppcie_topology_required=True, switch_count=1)
    status, devices, findings = emu.appraise(
        policy, b, [emu.gpu(0, b.gpu_nonce)], [emu.gpu(1, b.gpu_nonce)]
    )
    assert _device(devices[2]) == [("device.declared_kind", "gpu", "switch", "reject")]
    assert _enclave(findings) == [
        ("gpu.switch_count", 1, 0, "reject"),
        ("topology", "PPCIe set with NVSwitches", "no switch evidence", "reject"),
    ]
    assert status is Status.CONTRAINDICATED


# --- the real PPCIe set -----------------------------------------------------------------------


def _pem(ev: DeviceEvidence) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in ev.chain)


def _real(ev: DeviceEvidence, arch: str) -> DeviceEvidenceIn:
    return DeviceEvidenceIn(arch, ev.report_bytes, _pem(ev))


REAL_GPUS = tuple(_real(e, "HOPPER") for e in PPCIE_GPUS)
REAL_SWITCHES = tuple(_real(e, "LS10") for e in PPCIE_SWITCHES)


def _real_set(
    gpus: Sequence[DeviceEvidenceIn], switches: Sequence[DeviceEvidenceIn], **gpu: object
) -> tuple[tuple[DeviceAppraisal, ...], list[tuple[str, object, object, str]]]:
    from attest.snp.report import parse_report

    binding = SessionBinding(
        report_data=parse_report(SNP_REPORT).report_data, gpu_nonce=PPCIE_NONCE
    )
    bundle = EvidenceBundle(
        cpu=SnpEvidenceIn(SNP_REPORT, SNP_CERTS),
        gpus=tuple(gpus),
        switches=tuple(switches),
        cc_mode_on=True,
        devtools_on=False,
    )
    devices, findings = appraise_bundle(
        bundle, binding, gpu_policy(**gpu), TODAY, context=AppraisalContext()
    )
    return devices, [f for f in _enclave(findings) if f[0].startswith(SET_FIELDS)]


PPCIE_RULES = {"count": 8, "switch_count": 4, "ppcie_topology_required": True}


def test_real_ppcie_set_meets_its_counts_and_topology() -> None:
    devices, set_findings = _real_set(REAL_GPUS, REAL_SWITCHES, **PPCIE_RULES)
    assert [d.name for d in devices[1:]] == [f"gpu{i}" for i in range(8)] + [
        f"switch{i}" for i in range(4)
    ]
    assert set_findings == []
    assert not [f for d in devices for f in d.findings if f.field.startswith("device.")]


def test_real_ppcie_set_with_a_switch_listed_under_gpus() -> None:
    """The host moves an NVSwitch into the GPU list: it is counted as the NVSwitch it is, and
    refused for being listed as a GPU."""
    devices, set_findings = _real_set(
        (*REAL_GPUS, REAL_SWITCHES[0]), REAL_SWITCHES[1:], **PPCIE_RULES
    )
    assert set_findings == []  # still 8 GPUs, 4 switches, one consistent topology
    switch0 = next(d for d in devices if d.name == "switch0")
    assert ("device.declared_kind", "switch", "gpu", "reject") in _device(switch0)
    assert switch0.status is Status.CONTRAINDICATED


def test_real_ppcie_set_with_a_gpu_listed_under_switches() -> None:
    devices, set_findings = _real_set(REAL_GPUS[:7], (REAL_GPUS[7], *REAL_SWITCHES), **PPCIE_RULES)
    assert set_findings == []
    gpu7 = next(d for d in devices if d.name == "gpu7")
    assert ("device.declared_kind", "gpu", "switch", "reject") in _device(gpu7)


def test_real_ppcie_gpus_with_one_gpu_as_their_switch() -> None:
    """Eight PPCIe GPUs and, in the switch list, a ninth GPU (here gpu0's evidence): no NVSwitch
    is attested, so the switch count and the PPCIe rule fail (and gpu0 is given twice)."""
    _, set_findings = _real_set(
        REAL_GPUS, (REAL_GPUS[0],), switch_count=1, ppcie_topology_required=True
    )
    fields = [f[:3] for f in set_findings]
    assert ("gpu.switch_count", 1, 0) in fields
    assert ("topology", "PPCIe set with NVSwitches", "no switch evidence") in fields
    assert ("device8.leaf_certificate", "a device given once", "same leaf as device0") in fields


def test_real_switch_whose_report_does_not_parse_leaves_the_topology_unchecked() -> None:
    """An NVSwitch attested by its certificate whose report does not parse, next to a GPU not
    in PPCIe mode: no topology check ran, and the PPCIe rule says so (the switch is rejected
    on its own too)."""
    legacy = DeviceEvidenceIn(
        "HOPPER",
        bytes.fromhex((NVIDIA / "hopper_legacy/attestationReport.txt").read_text().strip()),
        (NVIDIA / "hopper_legacy/gpuAkCertChain.txt").read_bytes(),
    )
    broken = DeviceEvidenceIn(
        "LS10", REAL_SWITCHES[0].report[:100], REAL_SWITCHES[0].certificate_chain_pem
    )
    devices, set_findings = _real_set((legacy,), (broken,), ppcie_topology_required=True)
    assert [f[:3] for f in set_findings] == [("topology", "checked", "not checked")]
    assert devices[2].name == "switch0" and devices[2].status is Status.CONTRAINDICATED
