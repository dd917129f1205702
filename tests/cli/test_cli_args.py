"""What every command group shares: the seconds options' one argparse type (``--timeout``,
``--grace``, ``--ocsp-timeout``) and Ctrl-C before a command runs (``agent.cli.main``)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

import agent.cli.main as cli_main
from agent.cli import _common
from agent.cli.main import main
from attest.errors import InputError

REPO = Path(__file__).resolve().parents[2]

#: Each seconds option, in a command line that would otherwise parse (nothing runs: the value
#: is refused while parsing).
SECONDS_OPTIONS = {
    "broker fetch-amd-crls --timeout": ["broker", "fetch-amd-crls", "--dir", "d", "--timeout"],
    "broker register --timeout": [
        "broker", "register", "--target", "127.0.0.1:1", "--key-file", "k", "--policy", "p",
        "--timeout",
    ],
    "broker serve --grace": ["broker", "serve", "--state", "s", "--grace"],
    "agent --timeout": ["agent", "--broker", "127.0.0.1:1", "--model-id", "m", "--sealed", "s",
                        "--timeout"],
    "client generate --timeout": [
        "client", "generate", "--target", "127.0.0.1:1", "--broker-key", "k", "--prompt", "p",
        "--timeout",
    ],
    "gpu verify --ocsp-timeout": ["gpu", "verify", "e.json", "--ocsp-timeout"],
    "rim verify --ocsp-timeout": ["rim", "verify", "r.swidtag", "--ocsp-timeout"],
}  # fmt: skip
BAD_SECONDS = ["-1", "nan", "inf", "-inf", "1e308", "86400.5", "ten", ""]
#: Every option with every bad value; 0 is bad too, except as a grace period (stop at once).
CASES = [
    (option, bad)
    for option in sorted(SECONDS_OPTIONS)
    for bad in [*BAD_SECONDS, *(["0"] if "--grace" not in option else [])]
]


@pytest.mark.parametrize(("option", "bad"), CASES)
def test_bad_seconds_are_one_line_naming_the_option(
    capsys: pytest.CaptureFixture[str], option: str, bad: str
) -> None:
    """Review: -1, nan, inf and 1e308 reached the commands (ValueError/OverflowError as an
    "internal error", or a deadline already past sent to the broker, refused as
    DEADLINE_EXCEEDED). Now the option's type refuses them while parsing: exit 2, one line."""
    *argv, flag = SECONDS_OPTIONS[option]
    assert main([*argv, f"{flag}={bad}"]) == 2  # "=": argparse takes "-inf" for an option
    err = capsys.readouterr().err
    assert err.startswith(f"lessee: error: {flag} takes a number of seconds ")
    assert err.endswith(f", not {bad!r}\n") and err.count("\n") == 1, err


@pytest.mark.parametrize("good", ["0.5", "30", "86400", " 2 "])
def test_good_seconds_are_accepted(good: str) -> None:
    assert _common.seconds_type("--timeout")(good) == float(good)
    assert _common.seconds_type("--grace", allow_zero=True)(good) == float(good)


def test_zero_is_a_grace_but_not_a_timeout() -> None:
    assert _common.seconds_type("--grace", allow_zero=True)("0") == 0.0
    with pytest.raises(InputError, match="--timeout takes a number of seconds more than 0"):
        _common.seconds_type("--timeout")("0")


def test_the_bounds_are_the_ones_behind_the_options() -> None:
    """The CLI's bounds are the ones the code behind each option enforces."""
    from agent.cli._revocation import _MAX_OCSP_TIMEOUT_S
    from agent.client import MAX_TIMEOUT_S
    from agent.ocsp_fetch import OnlineOcsp

    assert _common.MAX_SECONDS == MAX_TIMEOUT_S
    OnlineOcsp(timeout=_MAX_OCSP_TIMEOUT_S)
    with pytest.raises(InputError):
        OnlineOcsp(timeout=_MAX_OCSP_TIMEOUT_S + 0.5)
    assert main(["gpu", "verify", "e.json", "--ocsp-timeout", "300.5"]) == 2


def test_ctrl_c_while_the_parser_is_built_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review: ``build_parser`` (which imports the group's module: grpc, torch...) ran outside
    the ``try`` that turns Ctrl-C into "interrupted", so an early Ctrl-C printed a traceback."""

    def interrupted(_selected: str | None) -> argparse.ArgumentParser:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main, "build_parser", interrupted)
    assert main(["broker", "keys", "--state", "s"]) == 130
    captured = capsys.readouterr()
    assert captured.err == "lessee: interrupted\n"
    assert captured.out == ""


def test_ctrl_c_in_a_command_is_still_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(_args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    def parser(_selected: str | None) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser()
        p.set_defaults(func=interrupted)
        return p

    monkeypatch.setattr(cli_main, "build_parser", parser)
    assert main([]) == 130
    assert capsys.readouterr().err == "lessee: interrupted\n"


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child is POSIX here")
def test_ctrl_c_during_the_import_exits_130_without_a_traceback() -> None:
    """The same through the real entry point: SIGINT raised while the group module imports."""
    code = (
        "import signal, sys, importlib\n"
        "import agent.cli.main as m\n"
        "real = importlib.import_module\n"
        "def slow(name, *a):\n"
        "    if name == 'agent.cli.threats':\n"
        "        signal.raise_signal(signal.SIGINT)\n"
        "    return real(name, *a)\n"
        "m.importlib.import_module = slow\n"
        "sys.exit(m.main(['threats']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "lessee: interrupted\n"
