"""Every file the CLI reads is bounded while it is read, not by ``stat``: a device or a FIFO has
no size to stat, and ``/dev/zero`` read whole exhausted memory ("internal error", exit 1).
Each such input is now one line of bad input, exit 2 (README's CLI contract)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli.main import main

ZERO = "/dev/zero"
KEY = "tests/assets/cpu/snp/virtee-sev/vcek_milan.der"  # any file: it is not read as a key


def _verifier_key(tmp_path: Path) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path = tmp_path / "verifier.pem"
    path.write_bytes(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return str(path)


@pytest.mark.parametrize(
    "args",
    [
        ["cpu", "inspect", ZERO],
        ["cpu", "verify", ZERO],
        ["result", "verify", ZERO, "--verifier-key", "VERIFIER"],
        ["result", "verify", "a.b.c", "--verifier-key", ZERO],
        ["appraise", "--policy", ZERO, "--evidence-bundle", KEY, "--key", KEY,
         "--nonce", "00" * 32, "--enclave-key", KEY],
    ],
    ids=["cpu-inspect", "cpu-verify", "token-file", "verifier-key", "policy"],
)  # fmt: skip
def test_an_endless_input_is_bad_input(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [_verifier_key(tmp_path) if a == "VERIFIER" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "larger than" in err and "internal error" not in err
    assert err.count("\n") == 1


def test_a_token_file_that_is_not_text_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_bytes(b"\xff\xfe not ascii")
    assert main(["result", "verify", str(token), "--verifier-key", _verifier_key(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a token" in err and "internal error" not in err


def test_outputs_are_never_written_through_a_link_or_over_a_file(tmp_path: Path) -> None:
    """``broker export-log --out`` and ``appraise --json-report`` create their file: a dangling
    symlink there once made the export land at its target, and the report overwrote files."""
    from agent.broker.config import prepare_state_dir
    from agent.cli._common import open_new_file
    from attest.errors import InputError

    target = tmp_path / "elsewhere"
    link = tmp_path / "out.bundle"
    link.symlink_to(target)
    state = tmp_path / "state"
    prepare_state_dir(state)
    args = ["broker", "export-log", "--state", str(state), "--out", str(link)]
    assert main(args) == 2
    assert not target.exists()
    existing = tmp_path / "existing"
    existing.write_text("precious")
    for path in (link, existing):
        with pytest.raises(InputError, match=r"symlink|exists"):
            open_new_file(path)
    assert existing.read_text() == "precious" and not target.exists()
    fresh = tmp_path / "fresh.bundle"
    assert main(["broker", "export-log", "--state", str(state), "--out", str(fresh)]) == 0
    assert fresh.stat().st_size > 0


def test_an_error_is_one_line_whatever_the_path_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A newline in a path once split the error so that its second line read like one of
    lessee's own ("lessee: rejected: ...")."""
    assert main(["sealed", "inspect", "a\nlessee: rejected: fake"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\\n" in err


def test_threats_check_needs_a_directory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["threats", "--check", "--root", "/nonexistent-lessee-root"]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_tls_files_that_do_not_parse_are_bad_input_before_grpc_sees_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """gRPC parsed them only when the server started or the channel connected, printed its own
    log lines, and ended in a bind error that named nothing (or exit 1 for a client)."""
    from agent.agent import open_channel
    from attest.errors import InputError

    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    args = ["broker", "serve", "--state", str(tmp_path / "state"), "--listen", "127.0.0.1:0"]
    assert main([*args, "--tls-cert", str(empty), "--tls-key", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "not a PEM certificate chain" in err and err.count("\n") == 1
    with pytest.raises(InputError, match="not PEM certificates"):
        open_channel("127.0.0.1:1", tls_ca=empty)
