"""Run the real NVIDIA pipeline on emulated evidence, with the emulation roots or the pinned ones.

The emulation roots go in the way the broker passes a policy's extra trusted roots:
``VerifierCaches(device_root=..., rim_root=...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from agent.emulation import EmulationPki
from attest.bundle import DeviceEvidenceIn
from attest.nvidia.evidence import Arch, DeviceEvidence
from attest.nvidia.rim import RimCollection
from attest.nvidia.verifier import EvidenceSetResult, VerifierCaches, verify_gpu_evidence
from attest.revocation.ocsp import StapledOcsp
from attest.x509chain import load_pem_chain


def emulation_caches(pki: EmulationPki) -> VerifierCaches:
    """Verifier caches whose device and RIM roots are the emulation's, not NVIDIA's."""
    return VerifierCaches(device_root=pki.gpu_root.cert, rim_root=pki.rim_root.cert)


def to_device_evidence(items: Sequence[DeviceEvidenceIn]) -> tuple[DeviceEvidence, ...]:
    return tuple(
        DeviceEvidence(
            index=i,
            arch=Arch(d.arch),
            report_bytes=d.report,
            chain=load_pem_chain(d.certificate_chain_pem),
        )
        for i, d in enumerate(items)
    )


def run_pipeline(
    items: Sequence[DeviceEvidenceIn],
    *,
    nonce: bytes,
    at: datetime,
    pki: EmulationPki | None,
) -> EvidenceSetResult:
    """The NVIDIA pipeline with stapled OCSP and the RIMs carried by the evidence.

    ``pki=None``: the default pinned NVIDIA roots (what any default deployment uses).
    """
    rims = [r for d in items for r in d.rims]
    responses = [r for d in items for r in d.ocsp_responses]
    return verify_gpu_evidence(
        to_device_evidence(items),
        at=at,
        expected_nonce=nonce,
        rim_source=RimCollection(rims),
        revocation_mode="stapled",
        ocsp_source=StapledOcsp(responses),
        caches=emulation_caches(pki) if pki is not None else None,
    )
