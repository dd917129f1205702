"""``lessee agent --amd-crl``: the file is read bounded and handed to the real SNP source."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

import agent.evidence.sources as sources
from agent.cli import agent as agent_cli
from agent.cli.main import main
from attest.errors import InputError
from attest.snp.verify import MAX_CRL_BYTES


def _args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    agent_cli.register(parser)
    return parser.parse_args(["--broker", "b:1", "--model-id", "m", "--sealed", "s", *extra])


class _Recorder:
    """Stands in for TsmCpuSource / NvmlGpuSource (no hardware here) and records the CRL."""

    crl: bytes | None = None

    def __init__(self, *_: Any, crl: bytes | None = None) -> None:
        type(self).crl = crl


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> type[_Recorder]:
    _Recorder.crl = None
    monkeypatch.setattr(sources, "TsmCpuSource", _Recorder)
    monkeypatch.setattr(sources, "NvmlGpuSource", object)
    return _Recorder


def test_amd_crl_file_goes_to_the_snp_source(tmp_path: Path, recorded: type[_Recorder]) -> None:
    crl = tmp_path / "milan.crl"
    crl.write_bytes(b"\x30\x82" + b"c" * (MAX_CRL_BYTES - 2))  # the largest accepted
    cpu, _ = agent_cli._sources(_args("--amd-crl", str(crl)))
    assert isinstance(cpu, _Recorder)
    assert recorded.crl == crl.read_bytes()


def test_without_amd_crl_the_source_gets_none(recorded: type[_Recorder]) -> None:
    agent_cli._sources(_args())
    assert recorded.crl is None


@pytest.mark.parametrize(
    ("content", "match"), [(b"c" * (MAX_CRL_BYTES + 1), "larger than"), (b"", "empty")]
)
def test_oversize_or_empty_crl_file_is_bad_input(
    tmp_path: Path, recorded: type[_Recorder], content: bytes, match: str
) -> None:
    crl = tmp_path / "bad.crl"
    crl.write_bytes(content)
    with pytest.raises(InputError, match=match):
        agent_cli._sources(_args("--amd-crl", str(crl)))


def test_amd_crl_with_emulation_is_refused(tmp_path: Path) -> None:
    crl = tmp_path / "milan.crl"
    crl.write_bytes(b"x")
    with pytest.raises(InputError, match="--emulate makes its own"):
        agent_cli._sources(_args("--emulate", "--amd-crl", str(crl)))


def test_cli_exit_code_and_help(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sealed").mkdir()
    big = tmp_path / "big.crl"
    big.write_bytes(b"c" * (MAX_CRL_BYTES + 1))
    argv = ["agent", "--broker", "127.0.0.1:1", "--model-id", "m", "--sealed"]
    assert main([*argv, str(tmp_path / "sealed"), "--amd-crl", str(big)]) == 2
    assert "AMD CRL larger than" in capsys.readouterr().err
    assert main([*argv, str(tmp_path / "sealed"), "--amd-crl", str(tmp_path / "absent")]) == 2
    assert main(["agent", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "https://kdsintf.amd.com/vcek/v1/<product>/crl" in text
    assert "refuses the CPU" in text
