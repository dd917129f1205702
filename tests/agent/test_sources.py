"""Real evidence sources say clearly what is missing on a machine without CC hardware."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.evidence.sources import (
    TSM_REPORT_DIR,
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
