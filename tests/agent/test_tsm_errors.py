"""configfs-tsm failures the kernel reports as errno values become one clear
``HardwareUnavailableError`` sentence, never a raw ``OSError``; the report entry is removed
either way.

The errno values are the kernel's: ``tsm_report_make_item`` answers ENXIO when no TEE provider
(sev-guest, tdx-guest) is registered; EACCES when the agent is not root; reading ``outblob``
returns EIO when the firmware or host refuses, EBUSY when another writer changed the entry.
"""

from __future__ import annotations

import errno
import logging
import os
import types
from pathlib import Path
from typing import Any

import pytest

import agent.evidence.sources as sources
from agent.evidence.sources import HardwareUnavailableError, TsmCpuSource
from attest.bundle import SnpEvidenceIn
from tests.agent.test_tsm_snp import REPORT_DATA, _fake, real_table
from tests.snp.helpers import virtee_report
from tests.tdx.helpers import DCAP


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "tsm" / "report"
    root.mkdir(parents=True)
    return root


def _os_error(code: int, path: object) -> OSError:
    return OSError(code, os.strerror(code), str(path))


@pytest.mark.parametrize(
    ("code", "match"),
    [
        (errno.ENXIO, "no confidential-computing provider registered.*sev-guest or tdx-guest"),
        (errno.ENODEV, "no confidential-computing provider registered"),
        (errno.EACCES, "permission denied.*run the agent as root"),
        (errno.EPERM, "permission denied.*run the agent as root"),
        (errno.ENOMEM, r"refused a report entry \(Cannot allocate memory\)"),
    ],
)
def test_an_entry_the_kernel_will_not_make(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, match: str
) -> None:
    root = _root(tmp_path)
    real_mkdir = Path.mkdir

    def mkdir(path: Path, *args: Any, **kwargs: Any) -> None:
        if path.parent == root:
            raise _os_error(code, path)
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(HardwareUnavailableError, match=match):
        TsmCpuSource(root)
    assert list(root.iterdir()) == []


def test_an_entry_without_a_provider_attribute(tmp_path: Path) -> None:
    """A plain directory: configfs-tsm populates nothing (no provider, or an old kernel)."""
    root = _root(tmp_path)
    with pytest.raises(HardwareUnavailableError, match="no provider attribute"):
        TsmCpuSource(root)
    assert list(root.iterdir()) == []  # the entry was removed


def test_a_provider_attribute_that_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, root = _fake(tmp_path, monkeypatch, provider="sev_guest", outblob=b"r", auxblob=None)
    real_read_text = Path.read_text

    def read_text(path: Path, *args: Any, **kwargs: Any) -> str:
        if path.name == "provider":
            raise _os_error(errno.EACCES, path)
        return real_read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(HardwareUnavailableError, match=r"permission denied.*run the agent as root"):
        TsmCpuSource(root)
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("provider", ["sev_guest", "tdx_guest"])
@pytest.mark.parametrize(("attribute", "code"), [("outblob", errno.EIO), ("inblob", errno.EBUSY)])
def test_an_io_error_while_the_report_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: str, attribute: str, code: int
) -> None:
    _, root = _fake(tmp_path, monkeypatch, provider=provider, outblob=virtee_report(), auxblob=None)
    kw: dict[str, Any] = {}
    if provider == "tdx_guest":
        kw["tdx_collateral"] = (DCAP / "tdx_quote_collateral.json").read_bytes()
    source = TsmCpuSource(root, **kw)
    real_open = Path.open

    def failing_open(path: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        # the source writes inblob and reads outblob (the fake writes outblob: let it)
        if path.name == attribute and mode[0] == ("w" if attribute == "inblob" else "r"):
            raise _os_error(code, path)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", failing_open)
    what = "TDX quote" if provider == "tdx_guest" else "SEV-SNP report"
    with pytest.raises(
        HardwareUnavailableError,
        match=f"could not produce the {what} \\({os.strerror(code)}\\).*try again",
    ):
        source.collect(REPORT_DATA)
    assert list(root.iterdir()) == []


def test_an_auxblob_that_cannot_be_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, root = _fake(
        tmp_path, monkeypatch, provider="sev_guest", outblob=virtee_report(), auxblob=real_table()
    )
    source = TsmCpuSource(root)
    real_open = Path.open

    def failing_open(path: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if path.name == "auxblob" and mode[0] == "r":
            raise _os_error(errno.EIO, path)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", failing_open)
    with pytest.raises(HardwareUnavailableError, match="certificate table"):
        source.collect(REPORT_DATA)


def test_an_entry_that_cannot_be_removed_does_not_replace_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _, root = _fake(
        tmp_path, monkeypatch, provider="sev_guest", outblob=virtee_report(), auxblob=None
    )

    def rmdir(path: Path) -> None:
        raise _os_error(errno.EBUSY, path)

    monkeypatch.setattr(sources, "os", types.SimpleNamespace(rmdir=rmdir))
    with caplog.at_level(logging.WARNING, logger="agent.evidence.sources"):
        ev = TsmCpuSource(root).collect(REPORT_DATA)
    assert isinstance(ev, SnpEvidenceIn) and ev.report == virtee_report()
    assert "could not remove configfs-tsm entry" in caplog.text
