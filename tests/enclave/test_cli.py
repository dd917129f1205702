"""``lessee client generate`` against a real enclave on loopback: output and exit codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.cli.main import main
from agent.enclave import ScriptedGenerator
from tests.enclave.conftest import (
    BROKER,
    OTHER_BROKER,
    Stack,
    StackFactory,
    enclave_key,
    make_bundle,
)
from tests.enclave.logproof import FORGER, LOG_SIGNER, Log, log, logged_bundle

__all__ = ["log"]  # the fixture, imported for pytest


def _pem(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def broker_pem(tmp_path: Path) -> Path:
    path = tmp_path / "broker.pem"
    path.write_bytes(_pem(BROKER.public_key()))
    return path


def _run(stack: Stack, key_file: Path, *extra: str, prompt: str = "hello there") -> int:
    return main(
        [
            "client",
            "generate",
            "--target",
            stack.target,
            "--broker-key",
            str(key_file),
            "--prompt",
            prompt,
            "--timeout",
            "20",
            *extra,
        ]
    )


def test_generate_prints_the_answer(
    stack: Stack, broker_pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(stack, broker_pem, prompt="the answer is 42") == 0
    out, err = capsys.readouterr()
    assert out == "the answer is 42\n" and err == ""


def test_generate_with_jwk_and_pinned_bundle(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = BROKER.public_key().public_bytes_raw()
    import base64

    jwk = {"kty": "OKP", "crv": "Ed25519", "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}
    key_file = tmp_path / "broker.jwk"
    key_file.write_text(json.dumps(jwk))
    bundle_file = tmp_path / "bundle.bin"
    bundle_file.write_bytes(make_bundle(stack.key).raw)
    assert _run(stack, key_file, "--bundle", str(bundle_file), "--max-new-tokens", "1") == 0
    assert capsys.readouterr().out == "hello\n"
    assert [e.method for e in stack.relay.exchanges] == ["Generate"]


def test_model_id_must_match_the_result(
    stack: Stack, broker_pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stack's bundle carries a result issued for no model: ``--model-id`` refuses it
    before anything is sent; it goes with --broker-key only."""
    assert _run(stack, broker_pem, "--model-id", "llama-70b") == 1
    err = capsys.readouterr().err
    assert err.startswith("lessee: rejected:") and "llama-70b" in err
    assert stack.relay.generate_exchanges() == []
    argv = ["client", "generate", "--target", stack.target, "--policy", str(broker_pem)]
    assert main([*argv, "--prompt", "p", "--model-id", "m"]) == 2
    assert "--model-id goes with --broker-key" in capsys.readouterr().err


def test_wrong_broker_key_is_rejected(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "other.pem"
    key_file.write_bytes(_pem(OTHER_BROKER.public_key()))
    assert _run(stack, key_file) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("lessee: rejected:") and "signature" in err
    assert stack.relay.generate_exchanges() == []


def test_a_prompt_that_is_not_utf8_exits_2_with_one_line(
    stack: Stack, broker_pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """argv bytes that are not UTF-8 reach Python as lone surrogates: once a bare
    UnicodeEncodeError (an internal error, exit 1), now a one-line input error, exit 2, that
    does not echo the prompt; nothing is sent to the enclave."""
    assert _run(stack, broker_pem, prompt="my secret \udc80") == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("lessee: error: prompt is not valid text")
    assert err.count("\n") == 1 and "secret" not in err
    assert stack.relay.generate_exchanges() == []


def test_abort_exits_3_and_manipulation_exits_1(
    stack_factory: StackFactory, broker_pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A script tells the enclave's own (authenticated) abort from a manipulated stream."""
    aborted = stack_factory(ScriptedGenerator(["partial", " answer"], fail_after=1))
    assert _run(aborted, broker_pem) == 3
    out, err = capsys.readouterr()
    assert out == "partial\n" and "aborted the stream (INTERNAL)" in err
    assert "authentic but incomplete" in err
    tampered = stack_factory()
    tampered.relay.rewrite = lambda r: r[:-1]  # truncation: the final record never arrives
    assert _run(tampered, broker_pem) == 1
    out, err = capsys.readouterr()
    assert out == "hello there\n" and err == "lessee: rejected: token stream rejected\n"


def test_replay_guard_refusals_exit_1_with_one_clear_line(
    stack_factory: StackFactory, broker_pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The enclave's clock 200 s ahead: the request's time is refused, and the line says to
    check the clock. A relay that replays the request first: the line says it was replayed."""
    skewed = stack_factory(clock=lambda: datetime.now(UTC) + timedelta(seconds=200))
    assert _run(skewed, broker_pem) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("lessee: rejected: Generate failed with OUT_OF_RANGE (unauthenticated)")
    assert "check this machine's clock" in err and err.count("\n") == 1
    replaying = stack_factory()
    replaying.relay.replay_first = True
    assert _run(replaying, broker_pem) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("lessee: rejected: Generate failed with ALREADY_EXISTS (unauthenticated)")
    assert "replayed or duplicated on the way" in err and err.count("\n") == 1


def test_bad_input_exit_2(
    stack: Stack, tmp_path: Path, broker_pem: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.pem"
    assert _run(stack, missing) == 2
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    assert _run(stack, junk) == 2
    p384 = tmp_path / "p384.pem"
    p384.write_bytes(_pem(ec.generate_private_key(ec.SECP384R1()).public_key()))
    assert _run(stack, p384) == 2
    bad_bundle = tmp_path / "bundle.bin"
    bad_bundle.write_bytes(b"LSKB\x02")
    assert _run(stack, broker_pem, "--bundle", str(bad_bundle)) == 2
    assert _run(stack, broker_pem, "--temperature", "nan") == 2
    assert _run(stack, broker_pem, "--max-new-tokens", "0") == 2
    assert main(["client", "generate", "--target", stack.target]) == 2  # usage
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert stack.relay.generate_exchanges() == []


def test_unreachable_target_exit_1(broker_pem: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(
        [
            "client",
            "generate",
            "--target",
            f"127.0.0.1:{port}",
            "--broker-key",
            str(broker_pem),
            "--prompt",
            "x",
            "--timeout",
            "3",
        ]
    )
    assert code == 1
    assert "unauthenticated" in capsys.readouterr().err


def test_generate_with_log_key(
    stack_factory: StackFactory,
    broker_pem: Path,
    tmp_path: Path,
    log: Log,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--log-key: the bundle's log proof must verify under that vkey, or nothing is sent."""
    key = enclave_key()
    vkey, forged = tmp_path / "log.vkey", tmp_path / "forged.vkey"
    vkey.write_text(LOG_SIGNER.verifier().vkey() + "\n")
    forged.write_text(FORGER.verifier().vkey() + "\n")
    stack = stack_factory(key=key, bundle=logged_bundle(log, key))
    assert _run(stack, broker_pem, "--log-key", str(vkey), prompt="logged") == 0
    assert capsys.readouterr().out == "logged\n"
    assert _run(stack, broker_pem, "--log-key", str(forged)) == 1
    assert "checkpoint does not verify" in capsys.readouterr().err

    # A bundle without a real proof passes on the broker key alone, never with --log-key.
    bare = stack_factory(key=key, bundle=make_bundle(key))
    assert _run(bare, broker_pem, "--log-key", str(vkey)) == 1
    assert "log proof is malformed" in capsys.readouterr().err
    assert _run(bare, broker_pem, prompt="unchecked") == 0
    assert capsys.readouterr().out == "unchecked\n"
    assert len(stack.relay.generate_exchanges()) == 1
    assert len(bare.relay.generate_exchanges()) == 1

    # A vkey file that is not one: bad input (exit 2), not a rejection.
    (tmp_path / "bad.vkey").write_text("not a vkey\n")
    assert _run(stack, broker_pem, "--log-key", str(tmp_path / "bad.vkey")) == 2


def test_help_says_the_log_proof_needs_the_log_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["client", "generate", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "VKEY_FILE" in out and "Without it the log proof is NOT checked" in out
