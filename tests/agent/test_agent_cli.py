"""``lessee agent --amd-crl`` / ``--tdx-collateral``: each file is read bounded (the collateral
also checked structurally) and handed to the real configfs-tsm source; misuse is exit 2."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

import agent.evidence.sources as sources
from agent.cli import agent as agent_cli
from agent.cli.main import main
from attest.errors import InputError
from attest.snp.verify import MAX_CRL_BYTES
from tests.tdx.helpers import DCAP

COLLATERAL = DCAP / "tdx_quote_collateral.json"


def _args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    agent_cli.register(parser)
    return parser.parse_args(["--broker", "b:1", "--model-id", "m", "--sealed", "s", *extra])


class _Recorder:
    """Stands in for TsmCpuSource / NvmlGpuSource (no hardware here) and records what the CLI
    hands the CPU source."""

    crl: bytes | None = None
    tdx_collateral: bytes | None = None

    def __init__(
        self, *_: Any, crl: bytes | None = None, tdx_collateral: bytes | None = None
    ) -> None:
        type(self).crl = crl
        type(self).tdx_collateral = tdx_collateral


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> type[_Recorder]:
    _Recorder.crl = _Recorder.tdx_collateral = None
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
    assert recorded.tdx_collateral is None


def test_tdx_collateral_file_goes_to_the_source_unchanged(recorded: type[_Recorder]) -> None:
    agent_cli._sources(_args("--tdx-collateral", str(COLLATERAL)))
    assert recorded.tdx_collateral == COLLATERAL.read_bytes()
    assert recorded.crl is None


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty"),
        (b" " * (sources.MAX_TDX_COLLATERAL_BYTES + 1), "larger than"),
        (b"{}", "QuoteCollateralV3"),  # JSON, but not collateral
        (b"\x30\x82\x01\x00", "QuoteCollateralV3"),  # a DER CRL given for the whole set
    ],
)
def test_bad_tdx_collateral_file_is_bad_input(
    tmp_path: Path, recorded: type[_Recorder], content: bytes, match: str
) -> None:
    path = tmp_path / "collateral.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match=match) as info:
        agent_cli._sources(_args("--tdx-collateral", str(path)))
    assert str(path) in str(info.value)
    assert recorded.tdx_collateral is None  # refused before any source was made


def test_truncated_tdx_collateral_is_bad_input(tmp_path: Path, recorded: type[_Recorder]) -> None:
    """One key of the real set missing: still JSON, no longer what the broker verifies."""

    doc = json.loads(COLLATERAL.read_bytes())
    del doc["qe_identity_signature"]
    path = tmp_path / "collateral.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="qe_identity_signature"):
        agent_cli._sources(_args("--tdx-collateral", str(path)))


def test_tdx_collateral_with_emulation_is_refused() -> None:
    with pytest.raises(InputError, match="--emulate is SEV-SNP"):
        agent_cli._sources(_args("--emulate", "--tdx-collateral", str(COLLATERAL)))


def test_help_states_the_real_collateral_bound() -> None:
    assert agent_cli.MAX_TDX_COLLATERAL_KIB * 1024 == sources.MAX_TDX_COLLATERAL_BYTES


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
    assert "--tdx-collateral FILE" in text
    assert "Intel PCS or the platform's PCCS" in text


def test_cli_tdx_collateral_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sealed").mkdir()
    argv = ["agent", "--broker", "127.0.0.1:1", "--model-id", "m", "--sealed"]
    argv += [str(tmp_path / "sealed")]
    wrong = tmp_path / "wrong.json"
    wrong.write_bytes(b'{"tcbInfo": {}}')
    assert main([*argv, "--tdx-collateral", str(wrong)]) == 2
    assert "QuoteCollateralV3" in capsys.readouterr().err
    assert main([*argv, "--tdx-collateral", str(tmp_path / "absent")]) == 2
    # one guest is one TEE: both supplements together are a usage error (argparse, exit 2)
    crl = tmp_path / "milan.crl"
    crl.write_bytes(b"x")
    assert main([*argv, "--tdx-collateral", str(COLLATERAL), "--amd-crl", str(crl)]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--generator", "no-colon"], "MODULE:FACTORY"),
        (["--generator", "lessee_no_such_module_xyz:make"], "cannot import"),
        (["--generator", "json:no_such_factory"], "cannot import"),
        (
            [
                "--generator",
                "echo",
                "--tls-cert",
                "/nonexistent/c.pem",
                "--tls-key",
                "/nonexistent/k.pem",
            ],
            "c.pem",
        ),
    ],
)
def test_serve_inputs_are_checked_before_the_broker_is_asked(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    match: str,
) -> None:
    """Review: a release is one-shot (the result is spent and logged), so a ``--serve`` input
    that cannot work (an engine that cannot be imported, a TLS file that cannot be read) must
    be exit 2 before the agent attests, not after the data key was released."""
    import agent.agent as agent_mod

    def no_broker(*_: object, **__: object) -> None:
        raise AssertionError("the broker was contacted before the --serve inputs were checked")

    monkeypatch.setattr(agent_cli, "_sources", lambda _args: (object(), object()))
    monkeypatch.setattr(agent_mod, "open_channel", no_broker)
    (tmp_path / "sealed").mkdir()
    argv = ["agent", "--broker", "127.0.0.1:1", "--model-id", "m", "--sealed"]
    argv += [str(tmp_path / "sealed"), "--serve", "127.0.0.1:0", *extra]
    assert main(argv) == 2
    assert match in capsys.readouterr().err
