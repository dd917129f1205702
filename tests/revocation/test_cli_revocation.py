"""The shared --revocation flags (agent.cli._revocation) that `gpu verify` and `rim verify` use."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agent.cli._revocation import add_revocation_args, revocation_from_args
from agent.ocsp_fetch import DEFAULT_OCSP_URL, DEFAULT_TIMEOUT_S, OnlineOcsp
from attest.errors import InputError, ParseError
from attest.revocation import RevocationMode, StapledOcsp, check_chain_revocation
from tests.revocation.pki import NOW, TestPki


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lessee gpu verify", exit_on_error=False)
    add_revocation_args(parser)
    return parser.parse_args(argv)


def test_defaults_are_online_to_nvidia() -> None:
    args = _parse([])
    mode, source = revocation_from_args(args)
    assert mode == RevocationMode.ONLINE and isinstance(source, OnlineOcsp)
    assert (source.url, source.timeout) == (DEFAULT_OCSP_URL, DEFAULT_TIMEOUT_S)
    assert args.allow_hold is False


def test_ocsp_files_imply_stapled(tmp_path: Path, pki: TestPki, cases: dict[str, bytes]) -> None:
    files = []
    for name in ("good", "intermediate_good"):
        path = tmp_path / f"{name}.der"
        path.write_bytes(cases[name])
        files += ["--ocsp", str(path)]
    args = _parse([*files, "--allow-hold"])
    mode, source = revocation_from_args(args)
    assert mode == RevocationMode.STAPLED and isinstance(source, StapledOcsp)
    assert len(source) == 2 and args.allow_hold is True
    checks = check_chain_revocation(pki.chain, indices=(0, 1), mode=mode, source=source, at=NOW)
    assert all(c.ok for c in checks)


def test_skip(tmp_path: Path) -> None:
    mode, source = revocation_from_args(_parse(["--revocation", "skip"]))
    assert (mode, source) == (RevocationMode.SKIP, None)


def test_online_options(tmp_path: Path) -> None:
    args = _parse(
        [
            "--ocsp-url",
            "https://ocsp.example/",
            "--ocsp-timeout",
            "2.5",
            "--ocsp-cache",
            str(tmp_path),
        ]
    )
    _mode, source = revocation_from_args(args)
    assert isinstance(source, OnlineOcsp)
    assert (source.url, source.timeout) == ("https://ocsp.example/", 2.5)


@pytest.mark.parametrize(
    "argv",
    [
        ["--revocation", "stapled"],
        ["--revocation", "skip", "--ocsp", "x.der"],
        ["--revocation", "online", "--ocsp", "x.der"],
        ["--ocsp-url", "http://plain.example/"],
        ["--ocsp-timeout", "0"],
    ],
)
def test_contradictions_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(InputError):
        revocation_from_args(_parse(argv))


def test_bad_ocsp_file_is_a_parse_error(tmp_path: Path, cases: dict[str, bytes]) -> None:
    bad = tmp_path / "bad.der"
    bad.write_bytes(b"not an OCSP response")
    with pytest.raises(ParseError) as e:
        revocation_from_args(_parse(["--ocsp", str(bad)]))
    assert "--ocsp" in str(e.value)


def test_unknown_mode_rejected_by_argparse() -> None:
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        _parse(["--revocation", "maybe"])
