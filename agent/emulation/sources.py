"""Evidence sources backed by emulated hardware, behind the interfaces of agent.evidence.sources.

``EmulatedGpuSource`` answers ``collect(nonce)`` like ``NvmlGpuSource`` and adds the collateral a
machine without network access to NVIDIA would otherwise lack: each ``DeviceEvidenceIn`` carries
the device chain, stapled OCSP responses current at collection time, and the two signed RIMs.
``cc_state()`` reports CC on only when every GPU is in CC mode, DevTools on when any GPU is.
``EmulatedCpuSource`` likewise staples AMD's CRL (current at collection time) to the SNP report.

``non_cc_gpu_source`` builds the refusal case: a GPU whose ``cc_state`` says CC is off. Unlike
NVML, which refuses to produce a CC report then, the emulated GPU still answers, so that the
broker's refusal (policy: CC off) can be demonstrated and tested end to end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from agent.emulation.gpu import EmulatedGpu
from agent.emulation.pki import EmulationPki
from agent.emulation.snp import EmulatedSnp
from agent.evidence.sources import CcState
from attest.bundle import DeviceEvidenceIn, SnpEvidenceIn
from attest.errors import InputError
from attest.timeutil import require_aware

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class EmulatedGpuSource:
    """A ``GpuEvidenceSource`` over emulated GPUs (each a distinct PKI GPU identity)."""

    def __init__(self, gpus: Sequence[EmulatedGpu], *, clock: Clock = _utcnow) -> None:
        self._gpus = tuple(gpus)
        if not self._gpus:
            raise InputError("an emulated GPU source needs at least one GPU")
        indexes = [g.index for g in self._gpus]
        if len(set(indexes)) != len(indexes):
            raise InputError("two emulated GPUs share one identity (index); give each its own")
        self._clock = clock

    @property
    def gpus(self) -> tuple[EmulatedGpu, ...]:
        return self._gpus

    def cc_state(self) -> CcState:
        return CcState(
            cc_mode_on=all(g.cc_mode_on for g in self._gpus),
            devtools_on=any(g.devtools_on for g in self._gpus),
        )

    def gpu_count(self) -> int:
        return len(self._gpus)

    def collect(self, nonce: bytes) -> tuple[DeviceEvidenceIn, ...]:
        """One report per GPU over ``nonce``, with chain, stapled OCSP and RIMs."""
        if not isinstance(nonce, bytes) or len(nonce) != 32:
            raise InputError("GPU nonce must be 32 bytes")
        at = require_aware(self._clock(), name="clock()")
        return tuple(
            DeviceEvidenceIn(
                arch=g.arch,
                report=g.report(nonce),
                certificate_chain_pem=g.certificate_chain_pem(),
                ocsp_responses=g.ocsp_responses(at),
                rims=(g.driver_rim(), g.vbios_rim()),
            )
            for g in self._gpus
        )


class EmulatedCpuSource:
    """A ``CpuEvidenceSource`` over an emulated SEV-SNP guest.

    The evidence carries AMD's CRL (emulated, current at ``clock()``) next to the certificates,
    as a real agent given ``--amd-crl`` does: without it the default policy
    (``missing_revocation: reject``) refuses the CPU.
    """

    def __init__(self, snp: EmulatedSnp, *, clock: Clock = _utcnow) -> None:
        self._snp = snp
        self._clock = clock

    def collect(self, report_data: bytes) -> SnpEvidenceIn:
        at = require_aware(self._clock(), name="clock()")
        vcek, ask_ark = self._snp.certificates()
        return SnpEvidenceIn(
            report=self._snp.report(report_data),
            certificates=(vcek, ask_ark),
            crl=self._snp.crl(at),
        )


def non_cc_gpu_source(
    pki: EmulationPki, *, index: int = 0, clock: Clock = _utcnow
) -> EmulatedGpuSource:
    """One emulated GPU that is *not* in confidential-computing mode (a case to be refused)."""
    return EmulatedGpuSource([EmulatedGpu(pki, index=index, cc_mode_on=False)], clock=clock)
