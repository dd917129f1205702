"""Emulated confidential-computing hardware for machines without it (docs/emulation.md).

Byte-exact evidence in the real formats (NVIDIA Hopper SPDM reports, signed SWID RIMs, OCSP
responses; AMD SEV-SNP reports and VCEK chains), signed by a PKI generated per installation
(``EmulationPki``) whose roots no default policy trusts.
"""

from agent.emulation.gpu import EmulatedGpu, default_measurements
from agent.emulation.pki import EmulationPki, EmulationPkiError, SnpTcb, default_pki_dir
from agent.emulation.snp import EmulatedSnp
from agent.emulation.sources import EmulatedCpuSource, EmulatedGpuSource, non_cc_gpu_source

__all__ = [
    "EmulatedCpuSource",
    "EmulatedGpu",
    "EmulatedGpuSource",
    "EmulatedSnp",
    "EmulationPki",
    "EmulationPkiError",
    "SnpTcb",
    "default_measurements",
    "default_pki_dir",
    "non_cc_gpu_source",
]
