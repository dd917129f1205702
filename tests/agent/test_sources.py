"""Real evidence sources say clearly what is missing on a machine without CC hardware."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.evidence.sources import (
    TSM_REPORT_DIR,
    CcState,
    HardwareUnavailableError,
    NvmlGpuSource,
    TsmCpuSource,
)


@pytest.mark.skipif(TSM_REPORT_DIR.is_dir(), reason="this machine is a CC guest")
def test_tsm_absent_is_a_clear_error() -> None:
    with pytest.raises(HardwareUnavailableError, match="configfs-tsm"):
        TsmCpuSource()


def test_tsm_missing_root_named(tmp_path: Path) -> None:
    with pytest.raises(HardwareUnavailableError, match=str(tmp_path / "nope")):
        TsmCpuSource(tmp_path / "nope")


def test_nvml_absent_is_a_clear_error() -> None:
    try:
        import pynvml  # noqa: F401
    except ImportError:
        with pytest.raises(HardwareUnavailableError, match="nvml"):
            NvmlGpuSource()
    else:  # bindings present but no driver/GPU here: NVML cannot start
        with pytest.raises(HardwareUnavailableError):
            NvmlGpuSource()


class _NVMLError(Exception):
    """What pynvml raises (``NVMLError_NotSupported`` and the rest subclass it)."""


class _FakeNvml:
    """The few pynvml calls ``NvmlGpuSource`` makes; ``fail`` names one that raises."""

    NVML_CC_SYSTEM_FEATURE_ENABLED = 1
    NVML_CC_SYSTEM_DEVTOOLS_MODE_ON = 1

    def __init__(
        self,
        fail: str | None = None,
        cc: int = 1,
        report_size: int | None = None,
        chain_size: int | None = None,
    ) -> None:
        self.fail, self.cc = fail, cc
        self.report_size, self.chain_size = report_size, chain_size

    def _maybe_fail(self, name: str) -> None:
        if name == self.fail:
            raise _NVMLError("Not Supported")

    def nvmlInit(self) -> None:
        self._maybe_fail("nvmlInit")

    def nvmlSystemGetConfComputeState(self) -> object:
        self._maybe_fail("nvmlSystemGetConfComputeState")
        return SimpleNamespace(ccFeature=self.cc, devToolsMode=0)

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetArchitecture(self, handle: int) -> int:
        return 9

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: int, nonce: bytes) -> object:
        self._maybe_fail("nvmlDeviceGetConfComputeGpuAttestationReport")
        data = b"report" + nonce
        size = len(data) if self.report_size is None else self.report_size
        return SimpleNamespace(attestationReport=data + bytes(8), attestationReportSize=size)

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: int) -> object:
        self._maybe_fail("nvmlDeviceGetConfComputeGpuCertificate")
        size = 5 if self.chain_size is None else self.chain_size
        return SimpleNamespace(
            attestationCertChain=b"chain" + bytes(8), attestationCertChainSize=size
        )


def _nvml_source(monkeypatch: pytest.MonkeyPatch, fake: _FakeNvml) -> NvmlGpuSource:
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return NvmlGpuSource()


def test_nvml_source_collects_report_chain_and_cc_state(monkeypatch: pytest.MonkeyPatch) -> None:
    source = _nvml_source(monkeypatch, _FakeNvml())
    (item,) = source.collect(bytes(32))
    assert (item.arch, item.report, item.certificate_chain_pem) == (
        "HOPPER",
        b"report" + bytes(32),
        b"chain",
    )
    assert source.cc_state() == CcState(cc_mode_on=True, devtools_on=False)
    with pytest.raises(HardwareUnavailableError, match="confidential-computing mode"):
        _nvml_source(monkeypatch, _FakeNvml(cc=0)).collect(bytes(32))


@pytest.mark.parametrize(
    "call",
    [
        "nvmlSystemGetConfComputeState",
        "nvmlDeviceGetConfComputeGpuAttestationReport",
        "nvmlDeviceGetConfComputeGpuCertificate",
    ],
)
def test_nvml_call_failures_are_hardware_errors(monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    """A GPU or driver without confidential computing answers NVML's CC calls with an NVML
    error (NotSupported, FunctionNotFound); the agent must say so in one typed sentence, not
    end with an untyped exception ('internal error')."""
    source = _nvml_source(monkeypatch, _FakeNvml(fail=call))
    with pytest.raises(HardwareUnavailableError, match="NVML"):
        source.collect(bytes(32))
    if call == "nvmlSystemGetConfComputeState":
        with pytest.raises(HardwareUnavailableError, match="NVML"):
            source.cc_state()


@pytest.mark.parametrize(
    ("sizes", "what"),
    [
        ({"report_size": 0}, "attestation report of 0 bytes"),
        ({"report_size": 4096}, "attestation report of 4096 bytes"),
        ({"chain_size": 0}, "certificate chain of 0 bytes"),
        ({"chain_size": 65536}, "certificate chain of 65536 bytes"),
    ],
)
def test_nvml_sizes_outside_the_buffer_are_driver_faults(
    monkeypatch: pytest.MonkeyPatch, sizes: dict[str, int], what: str
) -> None:
    """An empty report or chain went to the broker (a nonce spent, a contraindicated entry
    logged) and a size past NVML's buffer was cut by the slice without a word."""
    source = _nvml_source(monkeypatch, _FakeNvml(**sizes))
    with pytest.raises(HardwareUnavailableError, match=f"{what} for GPU 0.*driver fault"):
        source.collect(bytes(32))
