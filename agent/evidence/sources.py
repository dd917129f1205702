"""Where evidence comes from, behind two small interfaces.

* ``GpuEvidenceSource.collect(nonce32)`` returns one ``DeviceEvidenceIn`` per GPU (report over
  the given SPDM nonce + device certificate chain) and ``cc_state()`` the CC / DevTools flags,
  which NVML reports outside the signed report.
* ``CpuEvidenceSource.collect(report_data64)`` returns the CPU TEE's report (SNP) or quote (TDX).

Real sources: NVML via ``nvidia-ml-py`` (the ``lessee[nvml]`` extra) and the Linux configfs-tsm
report interface (``/sys/kernel/config/tsm/report``, kernels >= 6.7; both SEV-SNP and TDX guests).
Each raises ``HardwareUnavailableError`` with one clear sentence when the hardware is absent or not
in confidential-computing mode, so ``lessee agent`` can say what is missing. Emulated sources for
machines without CC hardware live in ``agent.emulation``.
"""

from __future__ import annotations

import importlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from attest.bundle import DeviceEvidenceIn, SnpEvidenceIn, TdxEvidenceIn
from attest.errors import LesseeError

TSM_REPORT_DIR = Path("/sys/kernel/config/tsm/report")
#: configfs-tsm outblobs are a report (1184 B SNP) or a quote (~5-8 KiB TDX); certs up to 64 KiB.
MAX_TSM_BLOB_BYTES = 256 * 1024


class HardwareUnavailableError(LesseeError):
    """The requested evidence source is not present or not in CC mode here."""


@dataclass(frozen=True)
class CcState:
    cc_mode_on: bool
    devtools_on: bool


class GpuEvidenceSource(Protocol):
    def collect(self, nonce: bytes) -> tuple[DeviceEvidenceIn, ...]: ...
    def cc_state(self) -> CcState: ...


class CpuEvidenceSource(Protocol):
    def collect(self, report_data: bytes) -> SnpEvidenceIn | TdxEvidenceIn: ...


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise HardwareUnavailableError(message)


class NvmlGpuSource:
    """GPUs through NVML (``pip install 'lessee[nvml]'``), inside a CC VM with the GPUs in CC mode."""

    def __init__(self) -> None:
        try:
            self._nvml: Any = importlib.import_module("pynvml")
        except ImportError:
            raise HardwareUnavailableError(
                "NVML bindings not installed (pip install 'lessee[nvml]')"
            ) from None
        try:
            self._nvml.nvmlInit()
        except Exception as exc:  # NVMLError_* subclasses; no driver, no GPU
            raise HardwareUnavailableError(f"NVML could not start: {exc}") from None

    def cc_state(self) -> CcState:
        state = self._nvml.nvmlSystemGetConfComputeState()
        on = int(getattr(state, "ccFeature", 0)) == getattr(
            self._nvml, "NVML_CC_SYSTEM_FEATURE_ENABLED", 1
        )
        devtools = int(getattr(state, "devToolsMode", 1)) == getattr(
            self._nvml, "NVML_CC_SYSTEM_DEVTOOLS_MODE_ON", 1
        )
        return CcState(cc_mode_on=on, devtools_on=devtools)

    def collect(self, nonce: bytes) -> tuple[DeviceEvidenceIn, ...]:
        _require(len(nonce) == 32, "GPU nonce must be 32 bytes")
        state = self.cc_state()
        _require(
            state.cc_mode_on,
            "GPUs are not in confidential-computing mode (nvidia-smi conf-compute -f on)",
        )
        count = int(self._nvml.nvmlDeviceGetCount())
        _require(count > 0, "no NVIDIA GPU found")
        out = []
        for i in range(count):
            handle = self._nvml.nvmlDeviceGetHandleByIndex(i)
            report = self._nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
            certs = self._nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
            report_bytes = bytes(report.attestationReport[: report.attestationReportSize])
            chain = bytes(certs.attestationCertChain[: certs.attestationCertChainSize])
            arch_code = int(self._nvml.nvmlDeviceGetArchitecture(handle))
            arch = {9: "HOPPER", 10: "BLACKWELL"}.get(arch_code, f"ARCH{arch_code}")
            out.append(
                DeviceEvidenceIn(arch=arch, report=report_bytes, certificate_chain_pem=chain)
            )
        return tuple(out)


class TsmCpuSource:
    """SEV-SNP or TDX evidence through configfs-tsm (Linux >= 6.7)."""

    def __init__(self, root: Path = TSM_REPORT_DIR) -> None:
        _require(
            root.is_dir(),
            f"{root} not present: not a SEV-SNP/TDX guest, or the kernel lacks configfs-tsm",
        )
        self._root = root

    def collect(self, report_data: bytes) -> SnpEvidenceIn | TdxEvidenceIn:
        _require(len(report_data) == 64, "report data must be 64 bytes")
        entry = self._root / f"lessee-{secrets.token_hex(8)}"
        entry.mkdir()
        try:
            (entry / "inblob").write_bytes(report_data)
            provider = (entry / "provider").read_text().strip()
            outblob = _read_bounded(entry / "outblob")
            if provider.startswith("sev_guest"):
                aux = entry / "auxblob"
                certs = (_read_bounded(aux),) if aux.exists() and aux.stat().st_size else ()
                return SnpEvidenceIn(report=outblob, certificates=certs)
            if provider.startswith("tdx_guest"):
                return TdxEvidenceIn(quote=outblob)
            raise HardwareUnavailableError(f"unknown configfs-tsm provider {provider!r}")
        finally:
            os.rmdir(entry)


def _read_bounded(path: Path) -> bytes:
    with path.open("rb") as f:
        data = f.read(MAX_TSM_BLOB_BYTES + 1)
    _require(len(data) <= MAX_TSM_BLOB_BYTES, f"{path} is larger than {MAX_TSM_BLOB_BYTES} bytes")
    return data
